"""Load: 50 concurrent scientists, each with its own token, against one domain process on
loopback for a few seconds (bench/load.py runs the full figure). Zero errors, and the
ledger and the audit chain consistent after."""

from __future__ import annotations

from pathlib import Path

import fednb
from bench.load import TIGHT_RUNS, Load, check_books, make_home, serve
from fednb.errors import RunRefused

SCIENTISTS, SECONDS, CODE, TIGHT = 50, 6.0, 6, 5


def test_fifty_scientists_list_request_and_run_without_an_error(tmp_path: Path) -> None:
    home = make_home(tmp_path / "loaded", SCIENTISTS, TIGHT)
    with serve(home.path) as url:
        stats = Load(url, home, SECONDS, CODE).run()
        # the tight budgets bind: a tight scientist the load window left short of its budget
        # (a slow machine) runs on until refused, and is refused at exactly its budget
        extra_refused = 0
        for i in sorted(home.tight):
            sci = fednb.connect(url, token=home.tokens[i])
            (req,) = [r for r in sci.requests.list("approved") if r.info.runs == 100_000]
            ran = stats.runs_by[i]
            while ran <= TIGHT_RUNS:
                try:
                    assert req.run().wait(60).status == "succeeded"
                except RunRefused as exc:
                    assert "over the budget" in str(exc)
                    extra_refused += 1
                    break
                ran += 1
            assert ran == TIGHT_RUNS, (i, ran)
    print(stats.table())  # shown with -s; the full figure is bench/load.py's
    assert not stats.errors, stats.errors[:5]
    assert check_books(home, stats) == []  # no 5xx, no 4xx but the refusals, the ledger holds
    starved = [i for i in range(SCIENTISTS) if not stats.runs_by[i]]
    assert not starved, starved  # every scientist got through, not a few of them
    assert extra_refused == TIGHT  # every tight budget bound, at its budget (check_books: none ran past it)
    assert set(stats.latency) >= {"list datasets", "file a request", "owner: approve", "run: fetch result"}
