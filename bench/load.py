"""Load on one domain: N concurrent scientists listing, requesting and running, for T seconds.

    .venv/bin/python bench/load.py [--scientists 50] [--seconds 60] [--code 6] [--tight 5]

A real ``fednb domain serve`` process (SQLite, bubblewrap sandbox) on 127.0.0.1 with the
breast cancer set. Each scientist is a thread with its own token and client. At start
each files one request: ``--code`` of them a DP ``update`` function (run in the sandbox),
the rest a DP query (count and mean, computed by the trusted runtime); an owner thread
approves whatever is pending. Then, until the time is up, each scientist loops: list the
datasets, run its approved request (PUT, wait, fetch the released result), every 5th
turn file a new query request (the owner approves it) and every 10th read its budget.
``--tight`` scientists get a budget for exactly 2 query runs, so the ledger refuses the rest
under concurrency (an expected 403, counted apart).

Prints throughput and p50/p99 latency per operation, every HTTP status seen, and the
ledger checks afterwards: no 5xx, no unexpected 4xx, each committed charge a released
run, spent epsilon equal to the composition of the committed charges, nothing reserved,
every scientist within budget, the audit chain verified.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import xarray as xr
from sklearn.datasets import load_breast_cancer

import fednb
from fednb.domain import Domain
from fednb.errors import FednbError, RunRefused

QUERY = fednb.Query(fednb.Query.count(), fednb.Query.mean("y"), noise_multiplier=2.0)
DP = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)
TIGHT_RUNS = 2


@fednb.remote
def update(data, weights):
    return fednb.Update(weights={"w": weights["w"] + float(data.y.values.mean())})


def dataset() -> xr.Dataset:
    bc = load_breast_cancer()
    return xr.Dataset({"x": (("patient", "feature"), bc.data), "y": ("patient", bc.target.astype(float))})


@dataclass
class Home:
    path: Path
    owner: str
    tokens: list[str]
    tight: set[int]


def make_home(path: Path, scientists: int, tight: int) -> Home:
    """A domain with ``scientists`` scientists; the last ``tight`` may afford 2 query runs."""
    dom = Domain.create(path, name="Loaded Hospital")
    owner = dom.add_user("owner", role="owner")
    # load, not privacy: DP results show 0.2 s after their run started (a run cut by it
    # releases its default), and no cap across the fifty scientists
    dom.policy.update(dp_slot_s=0.2, dataset_epsilon_cap=None)
    dom.add_dataset("bc", dataset(), bounds={"x": (0.0, 5000.0), "y": (0.0, 1.0)})
    delta = dom.ledger.delta(dom.card("bc"))
    tight_eps = QUERY.preview_epsilon(delta=delta, runs=TIGHT_RUNS) * 1.0001
    few = set(range(scientists - tight, scientists))
    tokens = [dom.add_user(f"sci{i:02d}", epsilon=tight_eps if i in few else 1e6) for i in range(scientists)]
    dom.close()
    return Home(path, owner, tokens, few)


@contextmanager
def serve(home: Path) -> Iterator[str]:
    """``fednb domain serve`` in its own process; yields its URL and stops it after."""
    proc = subprocess.Popen([sys.executable, "-m", "fednb.cli", "domain", "serve", "--home", str(home),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        found = re.search(r"(http://\S+)", proc.stdout.readline())
        if not found:
            raise RuntimeError("the domain did not start")
        yield found.group(1)
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class Stats:
    """What the scientists and the owner measured, merged across threads."""

    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    refused: int = 0
    runs_by: collections.Counter[int] = field(default_factory=collections.Counter)  # scientist -> runs
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, op: str, fn: object, *args: object, **kw: object) -> object:
        t0 = time.perf_counter()
        out = fn(*args, **kw)  # type: ignore[operator]
        dt = time.perf_counter() - t0
        with self.lock:
            self.latency[op].append(dt)
        return out

    def count(self, resp: httpx.Response) -> None:
        with self.lock:
            self.statuses[resp.status_code] += 1

    def connect(self, url: str, token: str) -> fednb.DomainClient:
        client = fednb.connect(url, token=token)
        client._t._http.event_hooks["response"].append(self.count)  # every status, retries too
        return client

    def table(self) -> str:
        total = sum(len(v) for v in self.latency.values())
        lines = [f"{'operation':<26}{'calls':>8}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
        for op in sorted(self.latency):
            v = np.asarray(self.latency[op]) * 1e3
            lines.append(f"{op:<26}{v.size:>8}{v.size / self.seconds:>9.1f}"
                         f"{np.percentile(v, 50):>9.1f}{np.percentile(v, 99):>9.1f}")
        lines.append(f"{'all operations':<26}{total:>8}{total / self.seconds:>9.1f}")
        http = sum(self.statuses.values())
        lines.append(f"HTTP calls {http} ({http / self.seconds:.1f}/s); statuses "
                     f"{dict(sorted(self.statuses.items()))}; expected refusals {self.refused}; "
                     f"errors {len(self.errors)}")
        return "\n".join(lines)


class Load:
    """The scientists' and the owner's threads against one URL for ``seconds``."""

    def __init__(self, url: str, home: Home, seconds: float, code: int) -> None:
        self.url, self.home, self.seconds, self.code = url, home, seconds, code
        self.stats = Stats()
        self.done = threading.Event()
        self.stop_at = 0.0

    def run(self) -> Stats:
        owner = threading.Thread(target=self._guard, args=(self.owner,))
        owner.start()
        t0 = [0.0]

        def start_clock() -> None:  # every scientist connected, approved and warm
            t0[0], self.stop_at = time.perf_counter(), time.monotonic() + self.seconds

        ready = threading.Barrier(len(self.home.tokens), action=start_clock)
        threads = [threading.Thread(target=self._guard, args=(self.scientist, i, ready))
                   for i in range(len(self.home.tokens))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.stats.seconds = time.perf_counter() - t0[0]
        self.done.set()
        owner.join()
        return self.stats

    def _guard(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except (FednbError, httpx.HTTPError, AssertionError) as exc:
            with self.stats.lock:
                self.stats.errors.append(f"{type(exc).__name__}: {exc}")

    def owner(self) -> None:
        owner = self.stats.connect(self.url, self.home.owner)
        while not self.done.is_set():
            for r in self.stats.timed("owner: list pending", owner.requests.pending):  # type: ignore[attr-defined]
                self.stats.timed("owner: approve", r.approve, release="auto")
            time.sleep(0.05)

    def _approved(self, sci: fednb.DomainClient, i: int) -> fednb.client.RemoteRequest:
        if i < self.code:
            req = update.request(sci, "bc", runs=100_000, weights={"w": np.zeros(4)}, dp=DP)
        else:
            req = QUERY.request(sci, "bc", runs=100_000)
        while req.refresh().status != "approved":
            time.sleep(0.5)
        return req

    def scientist(self, i: int, ready: threading.Barrier) -> None:
        s, tight = self.stats, i in self.home.tight
        sci = s.connect(self.url, self.home.tokens[i])
        req = self._approved(sci, i)
        if i < self.code:  # its sandboxed worker warm (queries need none), unmeasured
            req.run(weights={"w": np.zeros(4)}).wait(120)
        ready.wait(300)
        turn = 0
        while time.monotonic() < self.stop_at:
            turn += 1
            s.timed("list datasets", list, sci.datasets)
            if turn % 5 == 1:  # from the first turn on, so a short window files some too
                s.timed("file a request", QUERY.request, sci, "bc", runs=1)
            if turn % 10 == 0:
                s.timed("read budget", lambda: sci.budget)
            t0 = time.perf_counter()
            try:
                w0 = {"w": np.zeros(4)} if i < self.code else None
                run = s.timed("run: start (PUT)", req.run, weights=w0)
            except RunRefused as exc:
                if not (tight and "over the budget" in str(exc)):
                    raise
                with s.lock:
                    s.refused += 1
                continue
            info = s.timed("run: wait", run.wait, 60)  # type: ignore[attr-defined]
            assert info.status == "succeeded", f"run {info.id}: {info.status} {info.reason}"
            s.timed("run: fetch result", run.result, timeout=30)  # type: ignore[attr-defined]
            with s.lock:
                s.latency["run: start to result"].append(time.perf_counter() - t0)
                s.runs_by[i] += 1


def check_books(home: Home, stats: Stats) -> list[str]:
    """The ledger and the audit chain after the load; returns what is wrong (empty: all holds)."""
    from fednb.domain._store import ChargeRow, RunRow
    from fednb.privacy import event_from_json

    problems = [f"HTTP {code} x{n}" for code, n in stats.statuses.items() if code >= 500]
    client_errors = sum(n for code, n in stats.statuses.items() if 400 <= code < 500)
    if client_errors != stats.refused:
        problems.append(f"{client_errors} 4xx answers, {stats.refused} of them expected refusals")
    problems += stats.errors[:10]
    dom = Domain.open(home.path)
    try:
        report = dom.verify_audit()
        if not report.ok:
            problems += report.problems
        with dom.store.session() as s:
            runs = {r.id: r for r in s.query(RunRow).all()}
            charges = s.query(ChargeRow).all()
        card = dom.card("bc")
        for b in dom.budgets():
            mine = [event_from_json(c.event) for c in charges
                    if c.scientist == b.scientist and c.state == "committed"]
            want = dom.ledger.epsilon(mine, card)  # independent of the ledger's own query
            if abs(b.epsilon_spent - want) > 1e-6 * max(1.0, want):
                problems.append(f"{b.scientist}: spent {b.epsilon_spent} but the charges compose to {want}")
            if b.epsilon_reserved != 0:
                problems.append(f"{b.scientist}: {b.epsilon_reserved} left reserved")
            if b.epsilon_budget is not None and b.epsilon_spent > b.epsilon_budget + 1e-9:
                problems.append(f"{b.scientist}: spent {b.epsilon_spent} over the budget {b.epsilon_budget}")
        for c in charges:
            run = runs.get(c.run_id)
            if run is None or (c.state == "committed") != (run.release_state == "released"):
                problems.append(f"charge of {c.run_id} is {c.state}, its run {run and run.release_state}")
        tight = {f"sci{i:02d}" for i in home.tight}
        for name in tight:
            n = sum(1 for c in charges if c.scientist == name and c.state == "committed")
            if n > TIGHT_RUNS:
                problems.append(f"{name} ran {n} times on a budget for {TIGHT_RUNS}")
    finally:
        dom.close()
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scientists", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--code", type=int, default=6, help="scientists running sandboxed code")
    ap.add_argument("--tight", type=int, default=5, help="scientists with a budget for 2 runs")
    args = ap.parse_args()
    home = make_home(Path(tempfile.mkdtemp()) / "loaded", args.scientists, args.tight)
    with serve(home.path) as url:
        stats = Load(url, home, args.seconds, args.code).run()
    print(f"{args.scientists} scientists ({args.code} running sandboxed code, {args.tight} on a tight "
          f"budget), {stats.seconds:.1f} s, {os.cpu_count()} cores")
    print(stats.table())
    problems = check_books(home, stats)
    print("ledger and audit: " + ("consistent" if not problems else "PROBLEMS\n  " + "\n  ".join(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
