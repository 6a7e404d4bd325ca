"""GPU jobs, the pieces: which paths the sandbox binds (over a fake tree of empty files),
the launcher's memory caps and refusal, the runtime's allocator caps with CuPy and
PyTorch absent or stubbed, and the device a worker reports. A real sandboxed GPU-mode job
runs in tests/integration/test_gpu_jobs.py."""

from __future__ import annotations

import importlib.machinery
import resource
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fednb.domain.runner import _sandbox
from fednb.domain.runner._gpu import GpuBinds, driver_libraries, nvidia_devices
from fednb.domain.runner._pool import RawOutcome, parse_outcome
from fednb.errors import SandboxUnavailable
from fednb.protocol import encode_message
from fednb.runtime import _gpu


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).touch()


def test_only_the_nvidia_device_nodes_cuda_needs_are_found(tmp_path: Path) -> None:
    touch(tmp_path, "dev/nvidia0", "dev/nvidia1", "dev/nvidia12", "dev/nvidiactl", "dev/nvidia-uvm",
          "dev/nvidia-uvm-tools", "dev/nvidia-modeset", "dev/nvidia-caps/nvidia-cap1",
          "dev/nvidia-caps/nvidia-cap2", "dev/nvidia-caps/nvidia-cap3", "dev/nvidia-caps/nvidia-cap12",
          "dev/nvidia-caps/nvidia-cap21", "dev/nvidia-caps/nvidia-capx", "dev/nvidia-caps/other",
          "dev/nvidia-foo", "dev/nvidiax", "dev/dri/renderD128", "dev/dri/card0", "dev/null", "dev/sda")
    # no modeset (display), no uvm-tools (profiling), never MIG's config and monitor caps
    # (nvidia-cap1, nvidia-cap2): only the GPU and compute instances' access caps
    assert nvidia_devices(tmp_path) == [
        "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap3",
        "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia12", "/dev/nvidiactl"]
    assert nvidia_devices(tmp_path / "nowhere") == []


def test_the_driver_libraries_come_from_ldconfig_and_the_driver_directories(tmp_path: Path) -> None:
    touch(tmp_path, "opt/drv/libcuda.so.1", "opt/drv/libnvidia-ml.so.550.54", "opt/drv/libcudart.so.12",
          "usr/lib/x86_64-linux-gnu/libcuda.so", "usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
          "usr/lib/x86_64-linux-gnu/libfoo.so", "usr/lib/x86_64-linux-gnu/libnvidiafoo.so",
          "usr/local/nvidia/lib64/libnvidia-ml.so.1", "proc/driver/nvidia/params")
    ldconfig = """3 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,x86-64) => /opt/drv/libcuda.so.1
\tlibnvidia-ml.so.1 (libc6,x86-64) => /opt/drv/libnvidia-ml.so.550.54
\tlibcudart.so.12 (libc6,x86-64) => /opt/drv/libcudart.so.12
\tlibnvidia-gone.so.1 (libc6,x86-64) => /opt/drv/libnvidia-gone.so.1
"""
    assert driver_libraries(tmp_path, ldconfig) == [
        "/opt/drv/libcuda.so.1", "/opt/drv/libnvidia-ml.so.550.54", "/proc/driver/nvidia",
        "/usr/lib/x86_64-linux-gnu/libcuda.so", "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
        "/usr/local/nvidia/lib64/libnvidia-ml.so.1"]
    assert driver_libraries(tmp_path / "nowhere", "") == []


def test_devices_are_dev_bound_and_only_libraries_outside_the_system_dirs_are_bound() -> None:
    libs = ["/opt/drv/libcuda.so.1", "/proc/driver/nvidia", "/usr/lib/libcuda.so", "/usrx/libcuda.so"]
    binds = GpuBinds(["/dev/nvidia0", "/dev/nvidiactl"], libs)
    assert binds.argv(("/usr", "/lib", "/proc")) == [
        "--dev-bind", "/dev/nvidia0", "/dev/nvidia0", "--dev-bind", "/dev/nvidiactl", "/dev/nvidiactl",
        "--ro-bind", "/opt/drv/libcuda.so.1", "/opt/drv/libcuda.so.1",
        "--ro-bind", "/usrx/libcuda.so", "/usrx/libcuda.so"]


def test_the_sandbox_binds_the_gpu_only_for_gpu_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = GpuBinds(["/dev/nvidia0"], ["/opt/drv/libcuda.so.1"])
    monkeypatch.setattr(_sandbox, "gpu_binds", lambda: fake)
    spec = _sandbox.SandboxSpec(["/bin/true"], Path("/tmp/w"))
    assert "--dev-bind" not in _sandbox.bwrap_argv(spec)
    argv = _sandbox.bwrap_argv(_sandbox.SandboxSpec(["/bin/true"], Path("/tmp/w"),
                                                    limits=_sandbox.Limits(gpu=True)))
    i = argv.index("--dev-bind")
    assert argv[i : i + 6] == ["--dev-bind", "/dev/nvidia0", "/dev/nvidia0",
                               "--ro-bind", "/opt/drv/libcuda.so.1", "/opt/drv/libcuda.so.1"]
    assert argv.index("--dev") < i and argv.index("--proc") < i < argv.index("--remount-ro")


def rlimit_as(tmp_path: Path, limits: _sandbox.Limits) -> str:
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"
    spec = _sandbox.SandboxSpec([sys.executable, "-c", code], tmp_path, limits=limits)
    proc = _sandbox.launch(spec, "insecure-demo")
    out, _ = proc.communicate(timeout=60)
    proc.cleanup()
    return out.decode().strip()


def test_gpu_workers_get_no_address_space_limit(tmp_path: Path) -> None:
    assert rlimit_as(tmp_path, _sandbox.Limits(memory_bytes=1 << 30)) == str(1 << 30)
    ok = _sandbox.Limits(memory_bytes=1 << 30, gpu=True, host_memory_uncapped_ok=True)
    assert rlimit_as(tmp_path, ok) == str(resource.RLIM_INFINITY)


def test_gpu_workers_are_refused_where_no_memory_cgroup_caps_them(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sandbox, "_CGROUP_ROOT", tmp_path / "no-cgroups")  # nothing can be made there
    assert not _sandbox.memory_cgroup_works()
    spec = _sandbox.SandboxSpec(["/bin/true"], tmp_path, limits=_sandbox.Limits(gpu=True))
    with pytest.raises(SandboxUnavailable, match="gpu_without_host_memory_cap"):
        _sandbox.launch(spec, "insecure-demo")
    assert rlimit_as(tmp_path, _sandbox.Limits(gpu=True, host_memory_uncapped_ok=True)) == \
        str(resource.RLIM_INFINITY)
    assert rlimit_as(tmp_path, _sandbox.Limits(memory_bytes=1 << 30)) == str(1 << 30)  # CPU jobs: rlimits


# -- the cgroups a worker was in: was it OOM-killed? ------------------------------------


def oom_dir(root: Path, name: str, **files: str) -> Path:
    d = root / name
    d.mkdir()
    for k, v in files.items():
        (d / k.replace("_", ".", 1)).write_text(v)
    return d


def test_an_oom_kill_is_read_from_the_oom_kill_count_not_failcnt(tmp_path: Path) -> None:
    from fednb.domain.runner._pool import JobSpec, _Worker

    v1_hit = oom_dir(tmp_path, "v1-hit", memory_failcnt="5\n",
                     memory_oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    v1_kill = oom_dir(tmp_path, "v1-kill", memory_failcnt="5\n",
                      memory_oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    v2_hit = oom_dir(tmp_path, "v2-hit",
                     memory_events="low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
    v2_kill = oom_dir(tmp_path, "v2-kill",
                      memory_events="low 0\nhigh 0\nmax 40\noom 2\noom_kill 10\noom_group_kill 0\n")
    empty = oom_dir(tmp_path, "pids")
    worker = _Worker(JobSpec("r", "", "f", {}, tmp_path), "insecure-demo", _sandbox.Limits(), 1)
    for dirs, killed in [([v1_hit], False), ([v1_kill], True), ([v2_hit], False), ([v2_kill], True),
                         ([empty, v1_hit], False), ([empty, v1_kill], True), ([], False)]:
        worker.proc = types.SimpleNamespace(cgroup=types.SimpleNamespace(dirs=dirs))  # type: ignore[assignment]
        assert worker._oom_seen() is killed, dirs


# -- the runtime: allocator caps before user code, the device a run used -------------------


def test_prepare_gpu_does_nothing_unless_gpu_jobs_are_on() -> None:
    assert _gpu.prepare_gpu({}) == []
    assert _gpu.gpu_settings({"FEDNB_GPU": "1", "FEDNB_GPU_MEMORY_BYTES": "4096"}) == (True, 4096)
    assert _gpu.gpu_settings({"FEDNB_GPU": "1", "FEDNB_GPU_MEMORY_BYTES": "-3"}) == (True, None)


def test_prepare_gpu_without_cupy_or_a_gpu_says_so_and_keeps_the_numpy_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")  # the CPU build: torch.cuda.is_available() is False here
    monkeypatch.setenv("FEDNB_BACKEND", "numpy")
    monkeypatch.setitem(sys.modules, "cupy", None)  # an import of cupy fails, as where it is absent
    lines = _gpu.prepare_gpu({"FEDNB_GPU": "1", "FEDNB_GPU_MEMORY_BYTES": str(1 << 30)})
    assert lines[0].startswith("cupy: ") and "capped" not in lines[0]
    assert lines[1] == "torch: no GPU"
    assert _gpu.device_in_use() == "cpu"
    import os

    assert os.environ["FEDNB_BACKEND"] == "numpy"


class _Pool:
    def __init__(self) -> None:
        self.limit: int | None = None
        self.total = 0

    def set_limit(self, size: int) -> None:
        self.limit = size

    def total_bytes(self) -> int:
        return self.total


def stub_cupy(pool: _Pool, name: bytes) -> types.ModuleType:
    cp: Any = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cp.get_default_memory_pool = lambda: pool
    cp.cuda = types.SimpleNamespace(
        is_available=lambda: True, Device=lambda: types.SimpleNamespace(id=0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": name}))
    return cp  # type: ignore[no-any-return]


def test_prepare_gpu_caps_cupy_and_torch_before_user_code(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pool = _Pool()
    monkeypatch.setitem(sys.modules, "cupy", stub_cupy(pool, b"NVIDIA H100 80GB HBM3"))
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(total_memory=8 << 30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.setenv("FEDNB_BACKEND", "numpy")
    lines = _gpu.prepare_gpu({"FEDNB_GPU": "1", "FEDNB_GPU_MEMORY_BYTES": str(2 << 30)})
    assert pool.limit == 2 << 30 and calls == [(0.25, 0)]
    assert lines == ["cupy: memory pool capped at 2147483648 bytes",
                     "torch: caching allocator capped at 0.2500 of 8589934592 bytes"]
    import os

    assert os.environ["FEDNB_BACKEND"] == "cupy"  # the worker's kernels run on the GPU too
    assert _gpu.device_in_use() == "cpu"  # no device memory held yet
    pool.total = 512
    assert _gpu.device_in_use() == "cuda:NVIDIA H100 80GB HBM3"


def test_the_device_label_is_printable_and_short(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _Pool()
    pool.total = 1
    monkeypatch.setitem(sys.modules, "cupy", stub_cupy(pool, b"A\x00very long GPU \xffname " * 4))
    label = _gpu.device_in_use()
    assert label.startswith("cuda:A") and len(label) == _gpu.BACKEND_LABEL_MAX
    assert all(" " <= c <= "~" for c in label)


@pytest.mark.parametrize(("reported", "recorded"), [
    ("cpu", "cpu"), ("cuda:NVIDIA H100 80GB HBM3", "cuda:NVIDIA H100 80GB HBM3"), ("cuda", "cuda"),
    ("cuda:" + "x" * 28, None), ("patient 17 has cancer", None), (17, None), ("cuda:\n", None)])
def test_the_parent_records_only_a_well_formed_backend(reported: object, recorded: str | None) -> None:
    reply = encode_message({"status": "ok", "metrics": {}, "backend": reported})
    assert parse_outcome(RawOutcome("succeeded", "ok", reply=reply)).backend == recorded
    failed = encode_message({"status": "error", "reason": "exception", "backend": reported})
    assert parse_outcome(RawOutcome("succeeded", "ok", reply=failed)).backend == recorded
