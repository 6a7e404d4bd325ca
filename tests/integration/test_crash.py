"""Crash safety under a real ``kill -9``: a ``fednb domain serve`` process is SIGKILLed from
outside at moments the fault points (test_faults.py) do not pick, and restarted on the
same home. Nothing acknowledged is lost, no charge is counted twice or left reserved, the
audit chain verifies, and a checkpointed Federation resumes against the restarted domain.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.domain._store import ChargeRow, RequestRow, RunRow
from fednb.errors import ConnectionFailed
from fednb.scientist import RoundFailed
from tests.conftest import BC_BOUNDS, breast_cancer_dataset, worker_cgroups
from tests.integration.test_faults import served

DP = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)


@fednb.remote(params={"lr": (float, 0.0, 1.0)})
def step(data, weights, lr=0.1):
    import time

    time.sleep(float(data.attrs.get("delay", 0.0)))  # long enough for a kill to land mid-run
    return fednb.Update(weights={"w": weights["w"] + lr})


W0 = {"w": np.zeros(10)}


@fednb.remote
def quick(data, weights):
    return fednb.Update(weights={"w": np.full(10, 1.0)})


def make_home(tmp: Path, scientists: int, delay: float = 0.0) -> tuple[Path, str, list[str]]:
    dom = Domain.create(tmp / "h", name="Crashy")
    owner = dom.add_user("olivia", role="owner")
    tokens = [dom.add_user(f"s{i}", epsilon=1e6) for i in range(scientists)]
    # DP results show 0.5 s after their run started (a run cut by it releases its default:
    # these tests are about the books, not the values); no cap across the load's scientists
    dom.policy.update(dp_slot_s=0.5, dataset_epsilon_cap=None)
    dom.add_dataset("bc", breast_cancer_dataset().assign_attrs(delay=delay), bounds=BC_BOUNDS)
    dom.close()
    return tmp / "h", owner, tokens


def kill9(proc: object) -> None:
    proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    assert proc.wait(30) == -signal.SIGKILL  # type: ignore[attr-defined]


def sandbox_orphans(home: Path) -> list[int]:
    """Processes still naming the domain's home (its sandboxed workers), other than ours."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(home).encode() in cmd and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def check_books(home: Path) -> Domain:
    """The ledger after a crash: one charge per run, committed when its run ended whatever
    the outcome or the owner's decision, freed only for a run the crash interrupted; the
    requests' run counts match their runs; the audit chain verifies. Returns the domain."""
    dom = Domain.open(home)
    report = dom.verify_audit()
    assert report.ok, report.problems
    with dom.store.session() as s:
        runs = {r.id: r for r in s.query(RunRow).all()}
        charges = s.query(ChargeRow).all()
        requests = s.query(RequestRow).all()
    for c in charges:
        run = runs[c.run_id]  # no charge without its run
        assert run.status not in ("queued", "running"), (run.id, run.status)
        want = "freed" if (run.status, run.reason) == ("failed", "domain_restarted") else "committed"
        assert c.state == want, (run.id, run.status, run.release_state, c.state)
    assert len(charges) == len({c.run_id for c in charges})
    for req in requests:
        mine = [r for r in runs.values() if r.request_id == req.id]
        assert req.runs_used == len(mine) <= req.runs, (req.id, req.runs_used, len(mine))
    for b in dom.budgets():
        assert b.epsilon_budget is None or b.epsilon_spent + b.epsilon_reserved <= b.epsilon_budget + 1e-9
        assert b.epsilon_reserved == 0
    return dom


def test_a_federation_resumes_against_a_domain_killed_mid_run(tmp_path: Path) -> None:
    """kill -9 while a round's run is in the sandbox; restart; a new Federation (a restarted
    notebook, with the same checkpoint) finishes every round, each charged once."""
    home, owner_tok, (sci_tok,) = make_home(tmp_path, 1, delay=0.3)
    rounds, ckpt = 6, tmp_path / "ckpt"

    def federation(url: str) -> fednb.Federation:
        return fednb.Federation({"crashy": fednb.connect(url, token=sci_tok)}, step, dataset="bc",
                                initial={"w": np.zeros(10)}, params={"lr": 0.1}, rounds=rounds, dp=DP,
                                timeout=60, checkpoint=ckpt, progress=False)

    with served(home) as (url, proc, _log):
        fed = federation(url)
        fed.request()
        fednb.connect(url, token=owner_tok).requests.pending()[0].approve(release="auto")
        owner = fednb.connect(url, token=owner_tok)
        killed: list[str] = []

        def killer() -> None:  # the third round's run is in the sandbox: kill -9 the domain
            wait_until(lambda: any(r.status == "running" and "-r2-" in r.id for r in owner.runs.list()),
                       60, "round 2 to run")
            killed.append(next(r.id for r in owner.runs.list() if "-r2-" in r.id))
            kill9(proc)

        t = threading.Thread(target=killer)
        t.start()
        with pytest.raises((RoundFailed, ConnectionFailed)):
            fed.run()
        t.join()
    wait_until(lambda: not sandbox_orphans(home), 10, "the sandboxed worker to die with the domain")
    left = worker_cgroups(proc.pid)  # the killed domain removed none of its workers' cgroups
    with served(home) as (url, _, _log):
        history = federation(url).run()  # resumes at round 2 with the same run ids
        assert history.num_rounds == rounds
        np.testing.assert_allclose(history.weights["w"].shape, (10,))
        assert not [d for d in left if d.exists()]  # the restarted domain's pool swept them
    dom = check_books(home)
    with dom.store.session() as s:
        charges = {c.run_id: c.state for c in s.query(ChargeRow).all()}
        (req,) = s.query(RequestRow).all()
    dom.close()
    assert killed and charges[killed[0]] == "committed"  # the interrupted run ran again, charged once
    assert sorted(charges.values()) == ["committed"] * rounds and req.runs_used == rounds


def test_a_domain_stopped_with_sigterm_stops_its_workers_and_removes_their_cgroups(tmp_path: Path) -> None:
    """``systemctl stop`` sends SIGTERM. uvicorn shut down on it and raised it again with the
    default handler, which ended the process before the domain closed: every warm worker's
    cgroup stayed behind (its worker died with the domain)."""
    home, owner_tok, (sci_tok,) = make_home(tmp_path, 1)
    with served(home) as (url, proc, log):
        req = quick.request(fednb.connect(url, token=sci_tok), "bc", runs=5, dp=DP, weights=W0)
        fednb.connect(url, token=owner_tok).requests.get(req.id).approve(release="auto")
        assert req.run(W0).wait(60).status == "succeeded"
        made = worker_cgroups(proc.pid)  # the request's warm worker (none where cgroups are not writable)
        proc.terminate()
        proc.wait(30)
    out = log.read_text(errors="replace")  # the server's output and errors
    assert proc.returncode == 0 and "stopped" in out, out[-4000:]
    assert not [d for d in made if d.exists()]
    wait_until(lambda: not sandbox_orphans(home), 10, "the sandboxed worker to stop")


class Load:
    """Scientists running approved requests, filing new ones, and an owner approving and
    releasing, against one domain process, until it dies. Records what the domain
    acknowledged, to hold it to that after the restart."""

    def __init__(self, url: str, owner_tok: str, tokens: list[str], reqs: dict[str, str], cycle: int,
                 resend: list[str]) -> None:
        self.url, self.owner_tok, self.tokens, self.reqs, self.cycle = url, owner_tok, tokens, reqs, cycle
        self.resend = resend  # runs a kill left unfinished, as their notebooks saw them
        self.acked: dict[str, str] = {}  # run id -> last status seen
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.approved: set[str] = set()  # requests whose approval was acknowledged
        self.released: set[str] = set()  # runs whose manual release was acknowledged
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.guard, args=(self.scientist, i))
                        for i in range(len(tokens))]
        self.threads.append(threading.Thread(target=self.guard, args=(self.owner,)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            t.join(60)

    def guard(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except ConnectionFailed:
            pass  # the domain was killed
        except Exception as exc:  # anything else is a finding
            self.errors.append(repr(exc))

    def scientist(self, i: int) -> None:
        sci = fednb.connect(self.url, token=self.tokens[i])
        req = sci.requests.get(self.reqs[f"s{i}"])
        again = [r for r in self.resend if r.startswith(f"s{i}-")]
        for n in range(10_000):
            if self.stop.is_set():
                return
            rid = again[n] if n < len(again) else f"s{i}-c{self.cycle}-{n:05d}"
            if n % 7 == 3:  # now and then a new request for the owner to approve
                quick.request(sci, "bc", runs=2, dp=DP, weights=W0)
            run = req.run(W0, run_id=rid)
            with self.lock:
                self.acked[rid] = "queued"
            info = run.wait(30)
            with self.lock:
                self.acked[rid] = f"{info.status}/{info.release_state}"
            if info.status != "succeeded":  # an interrupted run resumes when re-sent
                self.errors.append(f"{rid}: {info.status} {info.reason}")

    def owner(self) -> None:
        owner = fednb.connect(self.url, token=self.owner_tok)
        while not self.stop.is_set():
            for r in owner.requests.pending():
                r.approve(release="auto")
                with self.lock:
                    self.approved.add(r.id)
            for run in owner.results.held():
                run.release()
                with self.lock:
                    self.released.add(run.id)
            time.sleep(0.05)


def check_acknowledged(home: Path, load: Load) -> None:
    """What the killed domain acknowledged is still there after the kill."""
    dom = Domain.open(home)
    with dom.store.session() as s:
        runs = {r.id: r for r in s.query(RunRow).all()}
        requests = {r.id: r for r in s.query(RequestRow).all()}
    dom.close()
    assert not load.errors, load.errors
    for rid, seen in load.acked.items():
        assert rid in runs, f"run {rid} was acknowledged and is lost"
        if seen == "succeeded/released":  # a DP run the schedule cut released its default
            assert runs[rid].release_state == "released" and runs[rid].status in ("succeeded", "timeout")
    for req_id in load.approved:
        assert requests[req_id].status == "approved", f"approval of {req_id} is lost"
    for rid in load.released:
        assert runs[rid].release_state == "released", f"release of {rid} is lost"


def test_kill_9_at_random_moments_under_load_loses_nothing(tmp_path: Path) -> None:
    """Three times: scientists run, file and get approved, the owner approves and releases
    held results, and the domain is SIGKILLed at a (seeded) random moment, in a run, a
    charge or a release as it falls; each time the restarted domain holds what it
    acknowledged, every charge matches its run, and the interrupted runs resume."""
    home, owner_tok, tokens = make_home(tmp_path, 3, delay=0.02)
    rng = random.Random(1009)
    reqs: dict[str, str] = {}
    unfinished: list[str] = []
    for cycle in range(3):
        with served(home) as (url, proc, _log):
            if cycle:  # restarted: the runs the kill caught were failed and their charges freed
                check_books(home).close()
            else:  # s2's results are held for the owner's manual release
                owner = fednb.connect(url, token=owner_tok)
                for i, tok in enumerate(tokens):
                    sci = fednb.connect(url, token=tok)
                    reqs[f"s{i}"] = quick.request(sci, "bc", runs=10_000, dp=DP, weights=W0).id
                    owner.requests.get(reqs[f"s{i}"]).approve(release="manual" if i == 2 else "auto")
            with Load(url, owner_tok, tokens, reqs, cycle, unfinished) as load:
                wait_until(lambda: len(load.acked) >= 3, 60, "the load to start")
                time.sleep(rng.uniform(0.5, 2.5))
                kill9(proc)
        wait_until(lambda: not sandbox_orphans(home), 10, "the sandboxed workers to die with the domain")
        check_acknowledged(home, load)
        unfinished = sorted(r for r, seen in load.acked.items() if seen == "queued")
    with served(home) as (url, _, _log):
        check_books(home).close()
        with Load(url, owner_tok, tokens, reqs, 3, unfinished) as load:  # the last runs resume
            wait_until(lambda: all(load.acked.get(r, "queued") != "queued" for r in unfinished), 60,
                       "the interrupted runs to finish")
            load.stop.set()
        check_acknowledged(home, load)
        owner = fednb.connect(url, token=owner_tok)
        for run in owner.results.held():
            run.release()
    check_books(home).close()  # everything released: nothing left reserved
