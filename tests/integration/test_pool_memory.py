"""Warm workers stay within their caps, in number and in memory (issue 22, item 4).

A warm worker is a sandboxed zygote holding NumPy, xarray and one dataset (about 90 MB of
PSS). A tutorial session once kept 20 of them (3.1 GB, over a Binder session's 1-2 GB):
now each pool keeps ``max_warm``, every pool of a process together keeps the process's
cap, idle ones go after ``idle_s``, and a worker a DP run made warm for its slot stays
until the run takes it. The memory is measured as the kernel reports it: the sum of
``Pss`` in ``/proc/<pid>/smaps_rollup`` over each sandbox's process tree (bubblewrap, the
zygote, the next run's child). Real sandboxes, real domains; eviction is driven by
``trim(now=...)`` where a test is about the rule, not the clock.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain.runner import JobSpec, WorkerPool, _warm, set_process_max_warm
from tests.adversarial.conftest import require_sandbox
from tests.conftest import Hospital, breast_cancer_dataset, make_hospital

SOURCE = "def mean(data, col=0):\n    return np.asarray(data.x.values[:, col].mean())\n"
PSS_PER_WORKER = 150 << 20
"""What one warm worker without PyTorch may hold, bytes of PSS (about 90 MiB measured on
the CI machine; the rest is headroom for other library builds)."""


@pytest.fixture(scope="module")
def bc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pool-memory") / "bc.zarr"
    breast_cancer_dataset().to_zarr(path)
    return path


@pytest.fixture
def process_cap() -> Iterator[None]:
    """The process's cap is process-wide: each test sets its own and puts the old one back."""
    require_sandbox()
    old = _warm.PROCESS_MAX_WARM
    yield
    set_process_max_warm(old)


def job(bc: Path, tmp: Path, i: int | str) -> JobSpec:
    return JobSpec(f"req-{i}", SOURCE, "mean", {"bc": bc}, tmp / "work" / f"req-{i}")


def ok(pool: WorkerPool, j: JobSpec, **kw: float) -> None:
    out = pool.run(j, "bc", {}, None, 300.0, **kw)
    assert (out.status, out.reason) == ("succeeded", "ok"), out.log


def pid_of(pool: WorkerPool, request_id: str) -> int | None:
    return next((w.pid for w in pool.workers() if w.request_id == request_id), None)


def drain() -> None:
    """Wait until the stopper thread has stopped (killed, reaped) every evicted worker."""
    _warm._STOPPER.submit(lambda: None).result(timeout=300)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants on this host."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pss(pid: int) -> int:
    """Bytes of PSS of ``pid``'s process tree (``smaps_rollup``); 0 for processes gone."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) << 10 for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    return total


def test_many_requests_on_two_pools_stay_under_the_caps(bc: Path, tmp_path: Path, process_cap: None) -> None:
    """Two pools in one process, as ``fednb demo`` serves three domains: each keeps at most
    ``max_warm`` workers, both together at most the process's cap, whatever the requests."""
    set_process_max_warm(3)
    pools = [WorkerPool("bubblewrap", max_warm=2), WorkerPool("bubblewrap", max_warm=2)]
    seen: set[int] = set()
    try:
        for i in range(6):
            pool = pools[i % 2]
            ok(pool, job(bc, tmp_path, i))
            counts = [len(p.workers()) for p in pools]
            assert max(counts) <= 2 and sum(counts) <= 3, counts
            seen |= {w.pid for p in pools for w in p.workers()}
        drain()
        warm = {w.pid for p in pools for w in p.workers()}
        assert len(seen) == 6 and len(warm) == 3
        assert {p for p in seen if alive(p)} == warm  # the evicted sandboxes are gone
        sizes = {p: pss(p) for p in warm}
        assert all(0 < s <= PSS_PER_WORKER for s in sizes.values()), sizes
        assert sum(sizes.values()) <= 3 * PSS_PER_WORKER
        print(f"PSS of the warm workers, MiB: {[s >> 20 for s in sizes.values()]}")
        # an evicted worker's request runs again: cold, in a new sandbox, still within the caps
        assert pid_of(pools[0], "req-0") is None
        ok(pools[0], job(bc, tmp_path, 0))
        assert pid_of(pools[0], "req-0") not in seen
        assert sum(len(p.workers()) for p in pools) <= 3
    finally:
        for p in pools:
            p.shutdown()
    assert not [p for p in seen if alive(p)]


def test_idle_workers_are_stopped_but_not_before_their_slot_ends(bc: Path, tmp_path: Path,
                                                                 process_cap: None) -> None:
    pool = WorkerPool("bubblewrap", idle_s=30.0)
    try:
        plain, scheduled = job(bc, tmp_path, "plain"), job(bc, tmp_path, "dp")
        ok(pool, plain)
        ok(pool, scheduled, hold_until=time.monotonic() + 3600)  # a DP run's slot, not over yet
        _warm.trim(now=time.monotonic() + 60)  # both ran more than idle_s ago
        assert [w.request_id for w in pool.workers()] == ["req-dp"]
        ok(pool, plain)  # cold again, and fine
        assert sorted(pool.warm()) == ["req-dp", "req-plain"]
    finally:
        pool.shutdown()


def test_the_reaper_stops_idle_workers_by_itself(bc: Path, tmp_path: Path, process_cap: None) -> None:
    pool = WorkerPool("bubblewrap", idle_s=0.5)
    try:
        ok(pool, job(bc, tmp_path, 0))
        pid = pid_of(pool, "req-0")
        assert pid is not None
        deadline = time.monotonic() + 120
        while (pool.workers() or alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pool.workers() and not alive(pid)
        ok(pool, job(bc, tmp_path, 0))
    finally:
        pool.shutdown()


def test_a_worker_made_warm_for_a_dp_run_outlives_the_caps_until_the_run(bc: Path, tmp_path: Path,
                                                                        process_cap: None) -> None:
    """``ensure_warm`` before a DP run's slot pins the worker: others starting meanwhile do
    not push it out, and the run (``cut_at``: its schedule) takes the same zygote."""
    set_process_max_warm(1)
    pool = WorkerPool("bubblewrap", max_warm=1)
    try:
        dp, other = job(bc, tmp_path, "dp"), job(bc, tmp_path, "other")
        pool.ensure_warm(dp)
        pinned = pid_of(pool, "req-dp")
        ok(pool, other)
        _warm.trim()
        drain()
        assert pid_of(pool, "req-dp") == pinned and pid_of(pool, "req-other") is None
        now = time.monotonic()
        ok(pool, dp, hold_until=now + 1.0, cut_at=now + 300.0)
        assert pid_of(pool, "req-dp") == pinned
        ok(pool, other)  # the run took its pin: now it goes like any other
        assert pid_of(pool, "req-dp") is None
    finally:
        pool.shutdown()


def test_a_worker_lost_before_its_dp_run_starts_again_inside_the_schedule(bc: Path, tmp_path: Path,
                                                                          process_cap: None) -> None:
    """The zygote died, or the run came after its pin ran out and the worker was evicted:
    the run starts a new one within its schedule and succeeds; a schedule already spent
    cuts it (``timeout``/``wall_clock``, which the domain releases as its default)."""
    pool = WorkerPool("bubblewrap", idle_s=30.0)
    try:
        dp = job(bc, tmp_path, "dp")
        pool.ensure_warm(dp)
        first = pid_of(pool, "req-dp")
        assert first is not None
        _warm.trim(now=time.monotonic() + _warm.PIN_S + 60)  # the pin ran out: idle, evicted
        drain()
        assert pid_of(pool, "req-dp") is None and not alive(first)
        now = time.monotonic()
        ok(pool, dp, hold_until=now + 1.0, cut_at=now + 300.0)
        second = pid_of(pool, "req-dp")
        assert second not in (None, first)
        pool.ensure_warm(dp)
        os.kill(second, signal.SIGKILL)  # the zygote dies between ensure_warm and the run
        deadline = time.monotonic() + 60
        while alive(second) and time.monotonic() < deadline:
            time.sleep(0.02)
        now = time.monotonic()
        ok(pool, dp, hold_until=now + 1.0, cut_at=now + 300.0)
        assert pid_of(pool, "req-dp") not in (None, first, second)
        pool.discard("req-dp")
        cut = pool.run(dp, "bc", {}, None, 300.0, cut_at=time.monotonic())
        assert (cut.status, cut.reason) == ("timeout", "wall_clock")
    finally:
        pool.shutdown()


# -- live domains: two hospitals in one process, DP and non-DP requests over HTTP ----------
@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[Hospital, str]]]:
    """Two live hospitals in this process, each with a DP scientist (her token beside it)."""
    require_sandbox()
    hs = [make_hospital(tmp_path_factory.mktemp("pool-memory") / name, dp_slot_s=1.0)
          for name in ("st-mary", "st-john")]
    yield [(h, h.dom.add_user("eve", epsilon=50.0)) for h in hs]
    for h in hs:
        h.server.stop()


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):  # type: ignore[no-untyped-def]
    return np.asarray(data.x.values[:, col].mean())


@fednb.remote(params={"col": (int, 0, 29)})
def dp_column_mean(data, weights, col=0):  # type: ignore[no-untyped-def]
    return {"m": np.asarray([data.x.values[:, col].mean() / 5000.0])}


def domain_workers(hs: list[tuple[Hospital, str]]) -> list[int]:
    pools = [h.dom.pool() for h, _ in hs]
    assert all(isinstance(p, WorkerPool) for p in pools)
    return [w.pid for p in pools if isinstance(p, WorkerPool) for w in p.workers()]


def test_live_domains_in_one_process_keep_the_process_cap(hospitals: list[tuple[Hospital, str]],
                                                           process_cap: None) -> None:
    """Non-DP requests on both hospitals, then DP runs (each made warm before its slot)
    while the cap is full: every run succeeds, and the warm set stays at the cap."""
    set_process_max_warm(2)
    requests = []
    for i in range(2):
        for h, _ in hospitals:
            req = column_mean.request(h.alice(), "breast-cancer", runs=2)
            h.owner().requests.get(req.id).approve()
            requests.append(req)
            info = req.run(col=i).wait(300)
            assert info.status == "succeeded", info
            assert len(domain_workers(hospitals)) <= 2
    h, eve = hospitals[0]
    w0 = {"m": np.zeros(1)}
    dp = dp_column_mean.request(fednb.connect(h.url, token=eve), "breast-cancer", runs=2, weights=w0,
                                dp=fednb.ClientDP(clip=1.0, noise_multiplier=8.0))
    h.owner().requests.get(dp.id).approve(release="auto", slot_s=1.0)
    for col in (0, 1):
        run = dp.run(w0, col=col)
        run.result(timeout=300)
        assert h.owner().runs.get(run.id).info.status == "succeeded"
    assert requests[0].run(col=5).wait(300).status == "succeeded"  # evicted long ago: cold
    drain()
    warm = domain_workers(hospitals)
    assert len(warm) <= 2
    assert sum(pss(p) for p in warm) <= 2 * PSS_PER_WORKER
