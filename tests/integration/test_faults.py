"""Crash safety: kill the domain (FEDNB_FAULT) at each fault point, restart it, and check
that no budget is charged twice or lost, the audit chain verifies, and runs resume."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.domain._faults import FAULT_POINTS
from fednb.errors import ConnectionFailed
from tests.browser.conftest import tail
from tests.conftest import BC_BOUNDS, breast_cancer_dataset

DP = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)


W0 = {"w": np.zeros(10)}


@fednb.remote
def fixed_update(data, weights):
    return fednb.Update(weights={"w": np.full(10, 1.0)})


@contextmanager
def served(home: Path, fault: str | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Serve the domain at ``home`` in a child process; yields its URL, the process and its log.

    The server writes to a log file, not to a pipe nobody reads after the first line (a
    full pipe would block the server in its next write)."""
    env = {**os.environ, "FEDNB_FAULT": fault or ""}
    log = home.parent / f"serve-{fault or 'plain'}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fednb.cli", "domain", "serve", "--home", str(home),
                                 "--port", "0"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"(http://\S+)\s", tail(log))):  # the whole URL, not half
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"the domain did not start (exit status {proc.poll()}):\n{tail(log)}"
            time.sleep(0.05)
        yield m.group(1), proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


def setup_home(tmp: Path) -> tuple[Path, str, str]:
    dom = Domain.create(tmp / "h", name="Crashy")
    owner, alice = dom.add_user("olivia", role="owner"), dom.add_user("alice", epsilon=100.0)
    dom.policy.update(dp_slot_s=2.0)  # DP results show 2 s after their run started
    dom.add_dataset("bc", breast_cancer_dataset(), bounds=BC_BOUNDS)
    dom.close()
    return tmp / "h", owner, alice


def check_books(home: Path, run_id: str, interrupted: bool) -> None:
    dom = Domain.open(home)
    report = dom.verify_audit()
    assert report.ok, report.problems
    from fednb.domain._store import ChargeRow

    with dom.store.session() as s:
        charges = s.query(ChargeRow).all()
    assert [(c.run_id, c.state) for c in charges] == [(run_id, "committed")]  # one charge, linked to its run
    (b,) = [b for b in dom.budgets("alice") if b.dataset == "bc"]
    assert b.epsilon_spent > 0 and b.epsilon_reserved == 0
    actions = [e.action for e in dom.audit.entries()]
    assert actions.count("charge.committed") == 1
    # a run the crash interrupted was failed and its charge freed on restart, then run again
    assert actions.count("run.interrupted") == int(interrupted)
    dom.close()


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_crash_at_each_fault_point_loses_nothing_and_charges_nothing_twice(tmp_path: Path,
                                                                             point: str) -> None:
    home, owner_tok, alice_tok = setup_home(tmp_path)
    with served(home, fault=point) as (url, proc, log):
        alice, owner = fednb.connect(url, token=alice_tok), fednb.connect(url, token=owner_tok)
        req = fixed_update.request(alice, "bc", runs=3, dp=DP, weights=W0)
        owner.requests.get(req.id).approve(release="auto")
        with contextlib.suppress(ConnectionFailed):  # the domain dies under us, as intended
            req.run(W0, run_id="crash-run-0001").wait(60)
        assert proc.wait(60) == 137, tail(log)
    with served(home) as (url, _, _log):
        alice = fednb.connect(url, token=alice_tok)
        again = alice.requests.get(req.id).run(W0, run_id="crash-run-0001")  # the orchestrator resumes
        info = again.wait(60)
        # released before the crash: the same result; interrupted: it runs again, in the same slot
        assert info.status == "succeeded" and again.result(timeout=30).weights["w"].shape == (10,)
        assert alice.requests.get(req.id).info.runs_used == 1  # the resend did not take a new run
    check_books(home, "crash-run-0001", interrupted=point != "after_release")


def test_a_run_queued_again_on_another_dataset_is_charged_to_that_one(tmp_path: Path) -> None:
    home, owner_tok, alice_tok = setup_home(tmp_path)
    dom = Domain.open(home)
    dom.add_dataset("bc2", breast_cancer_dataset(), bounds=BC_BOUNDS)
    dom.close()
    with served(home, fault="after_reserve") as (url, proc, log):
        alice, owner = fednb.connect(url, token=alice_tok), fednb.connect(url, token=owner_tok)
        req = fixed_update.request(alice, ["bc", "bc2"], runs=2, dp=DP, weights=W0)
        owner.requests.get(req.id).approve(release="auto")
        with contextlib.suppress(ConnectionFailed):
            req.run(W0, run_id="moved-run-0001", dataset="bc").wait(60)
        assert proc.wait(60) == 137, tail(log)
    with served(home) as (url, _, _log):
        alice = fednb.connect(url, token=alice_tok)
        again = alice.requests.get(req.id).run(W0, run_id="moved-run-0001", dataset="bc2")
        assert again.wait(60).status == "succeeded" and again.info.dataset == "bc2"
        spent = {b.dataset: b.epsilon_spent for b in alice.budget}
    assert spent.get("bc", 0.0) == 0.0 and spent["bc2"] > 0  # the charge followed the run
    from fednb.domain._store import ChargeRow

    dom = Domain.open(home)
    with dom.store.session() as s:
        (charge,) = s.query(ChargeRow).all()
    assert (charge.dataset, charge.state) == ("bc2", "committed")
    dom.close()
