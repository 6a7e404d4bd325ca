"""Load: 50 concurrent scientists, each with its own token, against one domain process on
loopback for a few seconds (bench/load.py runs the full figure). Zero errors, and the
ledger and the audit chain consistent after."""

from __future__ import annotations

from pathlib import Path

from bench.load import Load, check_books, make_home, serve

SCIENTISTS, SECONDS, CODE, TIGHT = 50, 6.0, 6, 5


def test_fifty_scientists_list_request_and_run_without_an_error(tmp_path: Path) -> None:
    home = make_home(tmp_path / "loaded", SCIENTISTS, TIGHT)
    with serve(home.path) as url:
        stats = Load(url, home, SECONDS, CODE).run()
    print(stats.table())  # shown with -s; the full figure is bench/load.py's
    assert not stats.errors, stats.errors[:5]
    assert check_books(home, stats) == []  # no 5xx, no 4xx but the refusals, the ledger holds
    starved = [i for i in range(SCIENTISTS) if not stats.runs_by[i]]
    assert not starved, starved  # every scientist got through, not a few of them
    assert stats.refused >= 1  # the tight budgets bound (check_books: none ran past its budget)
    assert set(stats.latency) >= {"list datasets", "file a request", "owner: approve", "run: fetch result"}
