"""GPU jobs in the real sandbox, on whatever this machine has: a domain whose policy turns
GPU jobs on runs approved code without an address-space limit, with its host memory
capped by the worker's cgroup (or refused where none can be written), the GPU settings
in the worker before user code runs, and the device each run used shown to the owner.
On a machine without a GPU the device is "cpu"; ``bench/gpu_check.sh`` runs a CuPy job on
one with a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain.runner import _sandbox
from fednb.protocol import RunInfo
from tests.adversarial.conftest import require_sandbox
from tests.conftest import Hospital, make_hospital


@pytest.fixture(scope="module", autouse=True)
def _sandbox_required() -> None:
    require_sandbox()  # fails under FEDNB_REQUIRE_SANDBOX=1 (CI) instead of skipping

GPU_MEMORY = 1 << 30


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("gpu") / "st-mary", run_timeout_s=60.0, gpu_jobs=True,
                      gpu_memory_bytes=GPU_MEMORY, worker_memory_bytes=512 << 20)
    yield h
    h.server.stop()


def attempt(h: Hospital, fn: fednb.RemoteFunction) -> RunInfo:
    req = fn.request(h.alice(), "breast-cancer")
    h.owner().requests.get(req.id).approve()
    return req.run().wait(120)


def test_a_gpu_job_runs_without_an_address_space_limit_and_with_the_gpu_settings(hospital: Hospital) -> None:
    if not _sandbox.memory_cgroup_works():
        pytest.skip("no memory cgroup here: GPU jobs are refused (test_gpu_jobs_are_refused_...)")

    @fednb.remote
    def settings(data):
        import mmap
        import os
        import resource

        if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
            raise RuntimeError("RLIMIT_AS is set: CUDA could not reserve its address space")
        # what CUDA does at start: reserve a large range it does not touch
        noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Python 3.13 names it
        mmap.mmap(-1, 64 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve,
                  prot=mmap.PROT_READ).close()
        env = {k: os.environ.get(k) for k in ("FEDNB_GPU", "FEDNB_GPU_MEMORY_BYTES", "CUPY_GPU_MEMORY_LIMIT")}
        if env != {"FEDNB_GPU": "1", "FEDNB_GPU_MEMORY_BYTES": "1073741824",
                   "CUPY_GPU_MEMORY_LIMIT": "1073741824"}:
            raise RuntimeError(f"GPU settings did not reach the worker: {env}")
        return np.zeros(1)

    info = attempt(hospital, settings)
    assert info.status == "succeeded", hospital.owner().runs.get(info.id).info.owner_log
    assert info.backend is None  # the scientist never sees it
    owner_view = hospital.owner().runs.get(info.id)
    assert owner_view.info.backend == "cpu"  # the job touched no GPU (there is none here anyway)
    assert "backend</th><td>cpu</td>" in owner_view._repr_html_()
    log = owner_view.info.owner_log or ""
    assert "fednb: cupy:" in log and "fednb: torch:" in log  # what the runtime did before the code ran


def test_a_gpu_jobs_host_memory_is_capped_by_its_cgroup(hospital: Hospital) -> None:
    @fednb.remote
    def allocate(data):
        big = np.ones(1 << 30, dtype=np.uint8)  # 1 GiB touched: twice the worker's memory cap
        return np.asarray(big.sum())

    info = attempt(hospital, allocate)
    if _sandbox.memory_cgroup_works():
        assert (info.status, info.reason) == ("killed", "memory_limit"), info
    else:
        assert (info.status, info.reason) == ("refused", "sandbox_unavailable"), info
    assert hospital.alice().info.name == "St Mary"  # the domain keeps serving


def test_gpu_jobs_are_refused_where_no_memory_cgroup_can_be_written(
        hospital: Hospital, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_sandbox, "_CGROUP_ROOT", tmp_path / "no-cgroups")  # as on a machine without

    @fednb.remote
    def honest(data):
        return np.asarray(data.sizes["patient"])

    info = attempt(hospital, honest)
    assert (info.status, info.reason) == ("refused", "sandbox_unavailable"), info
    assert "gpu_without_host_memory_cap" in (hospital.owner().runs.get(info.id).info.owner_log or "")
    hospital.dom.policy.update(gpu_without_host_memory_cap=True)  # the owner accepts no host memory cap
    try:
        again = attempt(hospital, honest)
        assert again.status == "succeeded", again
    finally:
        hospital.dom.policy.update(gpu_without_host_memory_cap=False)


def test_a_cpu_domain_records_the_backend_of_its_runs(hospital: Hospital) -> None:
    @fednb.remote
    def honest(data):
        return np.asarray(data.sizes["patient"])

    hospital.dom.policy.update(gpu_jobs=False)
    try:
        info = attempt(hospital, honest)
    finally:
        hospital.dom.policy.update(gpu_jobs=True)
    assert info.status == "succeeded"
    run = hospital.owner().runs.get(info.id).info
    assert run.backend == "cpu"
    assert "fednb: cupy" not in (run.owner_log or "")  # GPU settings only for GPU jobs


def test_the_gpu_check_scripts_run_here_and_say_when_there_is_no_gpu() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True, timeout=300,
                              check=False)

    job = run("bench/gpu_job.py", "--allow-cpu")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "cupy.arange(10).sum() = 45" in job.stdout
    assert "backend the owner sees: " in job.stdout
    from fednb.kernels._backend import _has_cupy

    if not _has_cupy():
        assert "backend the owner sees: cpu" in job.stdout and "no GPU" in job.stdout
        assert run("bench/gpu_job.py").returncode == 2
        bench = run("bench/kernels.py", "--backend", "cupy")
        assert bench.returncode == 2 and "no GPU" in bench.stderr
        leftovers = run("bench/gpu_leftovers.py")  # device memory from one process to the next
        assert leftovers.returncode == 2 and "no GPU" in leftovers.stdout
    check = root / "bench/gpu_check.sh"
    assert "bench/gpu_leftovers.py" in check.read_text()
    assert subprocess.run(["bash", "-n", str(check)], capture_output=True, check=False).returncode == 0
