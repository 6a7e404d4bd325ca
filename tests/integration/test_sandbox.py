"""Hostile jobs in the real sandbox: each one fails with a reason code and the domain
keeps serving. Every job is approved by the owner first, as a careless owner would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

import fednb
from fednb.domain.runner import bwrap_available
from fednb.protocol import RunInfo
from tests.conftest import Hospital, make_hospital

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap (apt bubblewrap)")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("sandbox") / "st-mary", run_timeout_s=4.0)
    yield h
    h.server.stop()


def attempt(h: Hospital, fn: fednb.RemoteFunction, **params: object) -> RunInfo:
    req = fn.request(h.alice(), "breast-cancer")
    h.owner().requests.get(req.id).approve()
    return req.run(**params).wait(120)


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
                                    "domain.json"])
def test_domain_files_are_unreadable(hospital: Hospital, target: str) -> None:
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
    @fednb.remote
    def fork_bomb(data):
        import os

        while True:
            if os.fork() == 0:
                import time

                time.sleep(60)
                os._exit(0)

    info = attempt(hospital, fork_bomb)
    assert_stopped(hospital, info, "process_limit", "exception", "wall_clock")


def test_a_4gib_allocation_fails(hospital: Hospital) -> None:
    @fednb.remote
    def allocate(data):
        big = np.ones(4 << 30, dtype=np.uint8)
        return np.asarray(big.sum())

    assert_stopped(hospital, attempt(hospital, allocate), "memory_limit")


def test_an_endless_loop_times_out(hospital: Hospital) -> None:
    @fednb.remote
    def forever(data):
        while True:
            pass

    info = attempt(hospital, forever)
    assert_stopped(hospital, info, "wall_clock")
    assert info.status == "timeout"


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

    assert_stopped(hospital, attempt(hospital, forge), "output_too_large", "wall_clock")


def test_exception_text_reaches_only_the_owner(hospital: Hospital) -> None:
    @fednb.remote
    def smuggle(data):
        raise ValueError(f"SMUGGLED mean radius = {data.x.values[:, 0].mean():.6f}")

    info = attempt(hospital, smuggle)
    assert_stopped(hospital, info, "exception")
    owner_view = hospital.owner().runs.get(info.id).info
    assert "SMUGGLED mean radius = 14.127292" in (owner_view.owner_log or "")


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
