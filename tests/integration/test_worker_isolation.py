"""The worker pool's own contract, on real sandboxes: a warm zygote per (request, dataset)
that forks a fresh process per run, a run's time limit enforced without losing the zygote,
and job slots held to a schedule. Assertions are on mechanisms (pids, slots, files), never
on how long anything took."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from fednb.domain.runner import JobSpec, WorkerPool
from fednb.domain.runner._sandbox import SandboxMode
from fednb.protocol import decode_message
from tests.adversarial.conftest import require_sandbox

SOURCE = '''
import os


def probe(data, mode=0):
    if mode == 1:
        while True:
            pass
    if mode == 2:
        os.kill(os.getpid(), 9)
    if mode == 3:
        import subprocess

        subprocess.Popen(["sleep", "600"])
        with open("planted", "w") as f:
            f.write("x")
    names = sorted(os.listdir("/data")) if os.path.isdir("/data") else []
    return np.asarray([float(data.x.values.sum()), len(names), os.path.exists("planted")])
'''


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for i, name in enumerate(("alpha", "beta", "gamma")):
        out[name] = tmp_path / f"{name}.zarr"
        xr.Dataset({"x": ("patient", np.full(4, float(i + 1)))}).to_zarr(out[name])
    return out


@pytest.fixture(params=["bubblewrap", "insecure-demo"])
def pool(request: pytest.FixtureRequest) -> Iterator[WorkerPool]:
    mode: SandboxMode = request.param
    if mode == "bubblewrap":
        require_sandbox()
    p = WorkerPool(mode, max_concurrent=1, max_warm=2)
    yield p
    p.shutdown()


def job(datasets: dict[str, Path], tmp_path: Path, rid: str = "req-1") -> JobSpec:
    return JobSpec(rid, SOURCE, "probe", datasets, tmp_path / "work" / rid)


def result(pool: WorkerPool, j: JobSpec, dataset: str, **params: object) -> list[float]:
    raw = pool.run_raw(j, dataset, params, None, 300.0)
    assert (raw.status, raw.reason) == ("succeeded", "ok"), raw.log
    header, tensors = decode_message(raw.reply or b"")
    assert header["status"] == "ok", raw.log
    return [float(v) for v in tensors["result"]]


def pids(pool: WorkerPool) -> dict[tuple[str, str], int]:
    return {(w.request_id, w.dataset): w.pid for w in pool.workers()}


def test_a_worker_per_dataset_stays_warm_across_switches(pool: WorkerPool, datasets: dict[str, Path],
                                                         tmp_path: Path) -> None:
    j = job({k: datasets[k] for k in ("alpha", "beta")}, tmp_path)
    seen = [result(pool, j, ds)[0] for ds in ("alpha", "beta", "alpha", "beta")]
    assert seen == [4.0, 8.0, 4.0, 8.0]
    first = pids(pool)
    assert set(first) == {("req-1", "alpha"), ("req-1", "beta")}
    result(pool, j, "alpha")
    assert pids(pool) == first  # no restart on a switch
    assert {w.dataset: w.runs for w in pool.workers()} == {"alpha": 3, "beta": 2}
    pool.discard("req-1")
    assert pool.workers() == [] and pool.warm() == []


def test_a_sandboxed_run_sees_its_own_dataset_only(datasets: dict[str, Path], tmp_path: Path) -> None:
    require_sandbox()
    p = WorkerPool("bubblewrap")
    try:
        assert result(p, job(datasets, tmp_path), "beta")[1] == 1.0  # /data holds beta alone
    finally:
        p.shutdown()


def test_the_lru_cap_counts_workers(pool: WorkerPool, datasets: dict[str, Path], tmp_path: Path) -> None:
    j = job(datasets, tmp_path)
    for ds in ("alpha", "beta", "gamma"):
        result(pool, j, ds)
    assert sorted(w.dataset for w in pool.workers()) == ["beta", "gamma"]  # max_warm=2


def test_a_dataset_outside_the_job_is_refused(pool: WorkerPool, datasets: dict[str, Path],
                                              tmp_path: Path) -> None:
    out = pool.run(job({"alpha": datasets["alpha"]}, tmp_path), "beta", {}, None, 300.0)
    assert (out.status, out.reason) == ("failed", "exception")
    assert pool.workers() == []


def test_timeouts_and_crashes_keep_the_zygote(pool: WorkerPool, datasets: dict[str, Path],
                                             tmp_path: Path) -> None:
    j = job({"alpha": datasets["alpha"]}, tmp_path)
    result(pool, j, "alpha")
    before = pids(pool)
    cut = pool.run(j, "alpha", {"mode": 1}, None, 0.5)  # an endless loop outlasts any limit
    assert (cut.status, cut.reason) == ("timeout", "wall_clock")
    killed = pool.run(j, "alpha", {"mode": 2}, None, 300.0)
    assert (killed.status, killed.reason) == ("killed", "worker_crashed")
    result(pool, j, "alpha")
    assert pids(pool) == before
    assert pool.workers()[0].runs == 4


def test_processes_and_files_of_a_run_are_gone_before_the_next(pool: WorkerPool, datasets: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """In insecure-demo mode too: the run's process group is killed and the work directory emptied."""
    j = job({"alpha": datasets["alpha"]}, tmp_path)
    assert result(pool, j, "alpha", mode=3)[2] == 1.0
    assert result(pool, j, "alpha")[2] == 0.0  # the file is gone
    host_pid = pool.workers()[0].pid
    deadline = time.monotonic() + 60
    while _sleepers_under(host_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sleepers_under(host_pid)


def _sleepers_under(pid: int) -> list[int]:
    """``sleep 600`` processes among the descendants of ``pid`` on this host."""
    found = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cmd[:2] == [b"sleep", b"600"] and _descends(ppid, pid):
            found.append(int(p))
    return found


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def test_hold_until_keeps_the_slot_after_the_run(pool: WorkerPool, datasets: dict[str, Path],
                                                 tmp_path: Path) -> None:
    j = job({"alpha": datasets["alpha"]}, tmp_path)
    out = pool.run(j, "alpha", {}, None, 300.0, hold_until=time.monotonic() + 3600)
    assert out.status == "succeeded"
    assert not pool._slots.acquire(blocking=False)  # max_concurrent=1: still held
    started = threading.Event()

    def other() -> None:
        pool.run(j, "alpha", {}, None, 300.0)
        started.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    assert not started.wait(1.0)  # waits for the slot whatever the first run took
    pool._slots.release()  # as the timer would at the held moment
    assert started.wait(300)
    out = pool.run(j, "alpha", {}, None, 300.0, hold_until=time.monotonic() - 1)  # passed: freed now
    assert out.status == "succeeded" and pool._slots.acquire(blocking=False)
    pool._slots.release()
