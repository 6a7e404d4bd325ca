"""The worker pool's own contract, on real sandboxes: a warm zygote per (request, dataset)
that forks a fresh process per run, a run's time limit enforced without losing the zygote,
and job slots held to a schedule. Assertions are on mechanisms (pids, slots, files), never
on how long anything took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

REPO = Path(__file__).resolve().parents[2]

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


# -- a domain running as an ordinary user, with no pids cgroup (issue 18) -----------------
NPROC_SOURCE = '''
import os
import signal


def f(data, mode=0):
    if mode == 1:  # a fork bomb: fork until refused, keep them all, then stop for the test to see
        n = 0
        while True:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                signal.pause()
                os._exit(0)
            n += 1
        os.kill(os.getpid(), signal.SIGSTOP)
        return np.asarray(float(n))
    got = 0
    for _ in range(5):
        try:
            pid = os.fork()
        except OSError:
            continue
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        got += 1
    return np.asarray(float(got))
'''

NPROC_SCENARIO = '''
import json, os, sys, threading, time
from pathlib import Path
from fednb.domain.runner import JobSpec, Limits, WorkerPool
from tests.integration.test_worker_isolation import NPROC_SOURCE, states_under

max_procs, work = int(sys.argv[1]), Path(sys.argv[2])
# the domain's user already runs more tasks than a sandbox may: they must not count against one
idle = threading.Event()
for _ in range(max_procs + 8):
    threading.Thread(target=idle.wait, daemon=True).start()
pool = WorkerPool("bubblewrap", Limits(max_procs=max_procs), max_concurrent=2)
jobs = {k: JobSpec(k, NPROC_SOURCE, "f", {"d": work / "d.zarr"}, work / k) for k in ("a", "b")}

def run(k, mode):
    out = pool.run(jobs[k], "d", {"mode": mode}, None, 600.0)
    return float(out.update.weights["result"][()]) if out.status == "succeeded" else out.log[-400:]

seen = {"warm": [run("a", 0), run("b", 0)]}
seen["pids_cgroups"] = [bool(w.proc.cgroup.caps_pids) for w in pool._workers.values()]
a_pid = next(w.pid for w in pool.workers() if w.request_id == "a")
bomber = threading.Thread(target=run, args=("a", 1))
bomber.start()
deadline = time.monotonic() + 300
while "T" not in states_under(a_pid).values() and time.monotonic() < deadline:
    time.sleep(0.05)
seen["a_processes"] = len(states_under(a_pid))
seen["b_during_the_bomb"] = run("b", 0)
pool.discard("a")
bomber.join()
pool.shutdown()
print(json.dumps(seen))
'''

REACHABLE = '''
import json, os, subprocess, sys
from pathlib import Path

spec = json.loads(sys.argv[1])
paths = [Path(p) for p in spec["paths"]]
# directories the uid cannot enter on the way to what it needs (root's home, pytest's 0700
# base): in this private mount namespace, a 0755 tmpfs over each, what is needed bound back
# from the directory underneath (held open: the tmpfs hides its path)
done = set()
for path in paths:
    for depth in range(1, len(path.parts)):
        d = Path(*path.parts[:depth])
        if d in done or os.stat(d).st_mode & 0o001:
            continue
        done.add(d)
        under = os.open(d, os.O_PATH | os.O_DIRECTORY)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(d)], check=True)
        for name in sorted({p.parts[depth] for p in paths if p.parts[:depth] == path.parts[:depth]}):
            (d / name).mkdir()
            subprocess.run(["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{under}/{name}",
                            str(d / name)], check=True, pass_fds=(under,))
        os.close(under)
os.setgroups([])
os.setgid(spec["uid"])
os.setuid(spec["uid"])
os.execv(spec["argv"][0], spec["argv"])
'''


def states_under(pid: int) -> dict[int, str]:
    """The process states (``R``, ``S``, ``T`` ...) of ``pid``'s descendants on this host."""
    parent, state = {}, {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        state[int(p)], parent[int(p)] = fields[0], int(fields[1])
    return {p: s for p, s in state.items() if p != pid and _ancestor(p, pid, parent)}


def _ancestor(p: int, pid: int, parent: dict[int, int]) -> bool:
    for _ in range(64):
        p = parent.get(p, 0)
        if p == pid:
            return True
        if p <= 1:
            return False
    return False


def as_ordinary_user(argv: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as a uid other than root (this one, or, for a root test process, a spare
    uid in a private mount namespace where it can reach Python, the checkout and ``work``)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONPATH": str(REPO),
           "PYTHONDONTWRITEBYTECODE": "1"}
    if os.geteuid() != 0:
        return subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    uid = 60000 + os.getpid() % 5000  # one no other process of the machine runs as
    for p in (work, *work.rglob("*")):
        os.chown(p, uid, uid)
    paths = sorted({str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix, sys.executable,
                                                       REPO, work)})
    spec = {"uid": uid, "paths": paths, "argv": argv}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-s",
                           "-c", REACHABLE, json.dumps(spec)],
                          env=env, cwd=work, capture_output=True, text=True, timeout=600)


def test_a_fork_bomb_leaves_the_other_workers_of_an_unprivileged_domain_room(tmp_path: Path) -> None:
    """A domain running as an ordinary user, with no pids cgroup: RLIMIT_NPROC counted all
    its user's tasks, so one worker's fork bomb left the others no fork at all, and a user
    already running more tasks than ``max_procs`` could start no worker. Each sandbox now
    counts its own (the zygote sets ``max_procs`` on itself; Linux counts it per user
    namespace), under a backstop over the whole uid."""
    require_sandbox()
    work = tmp_path / "work"
    work.mkdir()
    xr.Dataset({"x": ("patient", np.ones(4))}).to_zarr(work / "d.zarr")
    out = as_ordinary_user([sys.executable, "-s", "-c", NPROC_SCENARIO, "24", str(work)], work)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["pids_cgroups"] == [False, False]  # the case at hand: no cgroup caps them
    assert seen["warm"] == [5.0, 5.0], seen  # both start beside the user's many tasks
    assert 0 < seen["a_processes"] <= 24, seen  # the bomb stops at its own sandbox's cap
    assert seen["b_during_the_bomb"] == 5.0, seen  # and the other sandbox forks freely


def test_the_sandboxs_own_process_cap_needs_a_kernel_that_counts_per_user_namespace() -> None:
    """Linux 5.14 moved RLIMIT_NPROC to per-user-namespace counts: before it, a sandbox's cap
    is a share of its host uid's count (the uid's tasks now plus ``max_procs``)."""
    from fednb.domain.runner import _nproc

    assert [_nproc.per_userns_count(r) for r in ("4.18.0-553.el8_10.x86_64", "5.10.0-28-amd64",
                                                 "5.13.19", "5.14.0-427.el9", "6.18.44-fc-v1252")] \
        == [False, False, False, True, True]
    assert _nproc.sandbox_limit(24, os.getuid(), own_userns=True, per_userns=True) == 24
    for own, per in ((True, False), (False, True)):
        assert _nproc.sandbox_limit(24, os.getuid(), own_userns=own, per_userns=per) > 24
    assert _nproc.host_limit(24, os.getuid()) >= 24 * 64


def test_a_domain_that_shares_its_process_with_torch_still_makes_sandboxes() -> None:
    """PyTorch's at-fork handler starts a thread in every fork of a process that used its
    thread pool, and unshare(CLONE_NEWUSER) refuses a multithreaded caller (EINVAL): made in
    a pre-exec step, every sandbox of such a domain was refused ("Exception occurred in
    preexec_fn"), as in an xdist worker after the DP-SGD unit tests. The namespace holder is
    a fresh interpreter now."""
    require_sandbox()
    code = """
import os, torch
from fednb.domain.runner import _sandbox
torch.set_num_threads(2)
x = torch.randn(256, 256)
x @ x  # the intra-op pool is up: a fork of this process is multithreaded
pid = os.fork()
if pid == 0:
    threads = [l for l in open("/proc/self/status") if l.startswith("Threads")][0].split()[1]
    os.write(1, f"threads-in-fork {threads}\\n".encode())
    os._exit(0)
os.waitpid(pid, 0)
if _sandbox._as_root():
    os.close(_sandbox._sandbox_userns())
print("sandbox namespace made")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    threads = int(out.stdout.split("threads-in-fork ")[1].split()[0])
    assert threads > 1, "the precondition: a fork of this process is multithreaded"
    assert "sandbox namespace made" in out.stdout
