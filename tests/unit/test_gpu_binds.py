"""GPU jobs, the pieces: which paths the sandbox binds (over a fake tree of empty files),
the launcher's memory caps and refusal, worker cgroups over fake cgroup trees (swap
capped, the domain's delegated v2 cgroup, OOM kills read from the oom_kill count, removed
once empty, the sweep of those a dead domain left), the
runtime's allocator caps with CuPy and PyTorch absent or stubbed, and the device a worker
reports. A real sandboxed GPU-mode job runs in tests/integration/test_gpu_jobs.py."""

from __future__ import annotations

import errno
import importlib.machinery
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
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


# -- worker cgroups, over fake cgroup trees: swap capped, the delegated subtree, OOM kills ---


V2_FILES = ("cgroup.procs", "cgroup.controllers", "cgroup.subtree_control", "pids.max", "memory.max",
            "memory.events")
V1_FILES = ("cgroup.procs", "pids.max", "memory.limit_in_bytes", "memory.failcnt", "memory.oom_control")


@pytest.fixture
def fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake cgroup tree at ``tmp_path / "cg"``: a new cgroup directory gets the control
    files of ``files`` (what the kernel would show), no others, and its ``rmdir`` fails with
    EBUSY while its ``cgroup.procs`` lists a process; ``/proc/swaps`` and
    ``/proc/self/cgroup`` are files of the test's."""
    state: dict[str, Any] = {"files": V2_FILES}
    root = tmp_path / "cg"
    root.mkdir()

    def mkdir(path: Path) -> None:
        path.mkdir()
        for name in state["files"]:
            (path / name).write_text("")

    def rmdir(path: Path) -> None:
        procs = path / "cgroup.procs"
        if procs.exists() and procs.read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy")
        shutil.rmtree(path)

    swaps, self_cgroup = tmp_path / "swaps", tmp_path / "self-cgroup"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swapfile file 4194300 0 -2\n")
    self_cgroup.write_text("0::/\n")
    monkeypatch.setattr(_sandbox, "_CGROUP_ROOT", root)
    for name, value in [("_make_cgroup_dir", mkdir), ("_remove_cgroup_dir", rmdir), ("_PROC_SWAPS", swaps),
                        ("_PROC_SELF_CGROUP", self_cgroup), ("_V2_PARENTS", {}), ("_KEPT", set()),
                        ("_SWEPT", False)]:
        monkeypatch.setattr(_sandbox, name, value, raising=False)  # raising: the test fails, not errs
    return types.SimpleNamespace(root=root, state=state, swaps=swaps, self_cgroup=self_cgroup)


def v2_tree(fk: Any, swap_accounting: bool = True) -> None:
    (fk.root / "cgroup.controllers").write_text("cpu memory pids\n")
    fk.state["files"] = V2_FILES + (("memory.swap.max",) if swap_accounting else ())


def v1_tree(fk: Any, swap_accounting: bool = True) -> None:
    (fk.root / "memory").mkdir()
    (fk.root / "pids").mkdir()
    fk.state["files"] = V1_FILES + (("memory.memsw.limit_in_bytes",) if swap_accounting else ())


def test_v2_worker_cgroups_cap_swap_at_zero(fake_kernel: Any) -> None:
    v2_tree(fake_kernel)
    cg = _sandbox._Cgroup(_sandbox.Limits(memory_bytes=1 << 30, max_procs=7))
    (d,) = cg.dirs
    assert d.parent == fake_kernel.root and d.name.startswith(f"fednb-{os.getpid()}-")
    assert [(d / f).read_text() for f in ("memory.max", "memory.swap.max", "pids.max")] == \
        [str(1 << 30), "0", "7"]
    assert cg.caps_memory


def test_v1_worker_cgroups_cap_memory_and_swap_together(fake_kernel: Any) -> None:
    v1_tree(fake_kernel)
    cg = _sandbox._Cgroup(_sandbox.Limits(memory_bytes=1 << 30))
    pids, mem = cg.dirs
    assert (pids.parent.name, mem.parent.name) == ("pids", "memory")
    assert (mem / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(1 << 30)  # RAM + swap
    assert cg.caps_memory


@pytest.mark.parametrize("tree", [v1_tree, v2_tree])
def test_without_swap_accounting_memory_is_capped_only_where_there_is_no_swap(
        fake_kernel: Any, tree: Any, tmp_path: Path) -> None:
    tree(fake_kernel, swap_accounting=False)
    cg = _sandbox._Cgroup(_sandbox.Limits())
    assert cg.dirs and not cg.caps_memory  # the RAM cap took, but swap would add to it
    assert not _sandbox.memory_cgroup_works()
    spec = _sandbox.SandboxSpec(["/bin/true"], tmp_path / "w", limits=_sandbox.Limits(gpu=True))
    with pytest.raises(SandboxUnavailable, match="caps swap"):
        _sandbox.launch(spec, "insecure-demo")
    fake_kernel.swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n")  # no swap on the host
    assert _sandbox._Cgroup(_sandbox.Limits()).caps_memory
    assert _sandbox.memory_cgroup_works()


def test_a_swap_cap_the_kernel_refuses_is_no_memory_cap(fake_kernel: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    v1_tree(fake_kernel)
    real = _sandbox._write

    def refuse_memsw(path: Path, value: object) -> None:
        if path.name == "memory.memsw.limit_in_bytes":
            raise OSError(22, "Invalid argument")
        real(path, value)

    monkeypatch.setattr(_sandbox, "_write", refuse_memsw)
    assert not _sandbox._Cgroup(_sandbox.Limits()).caps_memory


def test_the_hosts_swap_is_read_from_proc_swaps() -> None:
    assert not _sandbox.host_has_swap("Filename\tType\tSize\tUsed\tPriority\n")
    assert not _sandbox.host_has_swap("")
    assert _sandbox.host_has_swap("Filename Type Size Used Priority\n/dev/sda2 partition 8388604 0 -2\n")


def test_the_domains_own_v2_cgroup_is_read_from_proc_self_cgroup() -> None:
    assert _sandbox.own_cgroup("0::/user.slice/user-1000.slice/fednb.service\n") == \
        "/user.slice/user-1000.slice/fednb.service"
    hybrid = "12:memory:/x\n1:name=systemd:/y\n0::/user.slice/app.scope\n"
    assert _sandbox.own_cgroup(hybrid) == "/user.slice/app.scope"
    assert _sandbox.own_cgroup("0::/\n") == "/"
    assert _sandbox.own_cgroup("4:memory:/docker/abc\n") is None  # v1 only
    assert _sandbox.own_cgroup("0::/a/../../etc\n") is None
    assert _sandbox.own_cgroup("") is None


def delegated(root: Path, procs: str, controllers: str = "cpu memory pids", subtree: str = "") -> Path:
    own = root / "user.slice/user-1000.slice/user@1000.service/app.slice/fednb.service"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    for name, text in [("cgroup.controllers", controllers), ("cgroup.subtree_control", subtree),
                       ("cgroup.procs", procs)]:
        (own / name).write_text(text)
    return own


SELF = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/fednb.service\n"


def test_v2_worker_cgroups_go_under_the_domains_delegated_cgroup(fake_kernel: Any) -> None:
    v2_tree(fake_kernel)
    own = delegated(fake_kernel.root, "4242\n")
    # the domain moves into a leaf first (no internal processes), then enables the controllers
    assert _sandbox.delegated_parent(fake_kernel.root, SELF, 4242) == own
    assert (own / "fednb-domain/cgroup.procs").read_text() == "4242"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    # as the kernel then shows it: this process in the leaf, the controllers on
    (own / "cgroup.procs").write_text("")
    (own / "cgroup.subtree_control").write_text("memory pids")
    assert _sandbox.delegated_parent(fake_kernel.root, SELF, 4242) == own
    leaf_self = SELF.rstrip("\n") + "/fednb-domain\n"  # a restart in the leaf, or a child process
    assert _sandbox.delegated_parent(fake_kernel.root, leaf_self, 777) == own


def test_the_launcher_makes_worker_cgroups_in_the_delegated_cgroup_once(fake_kernel: Any) -> None:
    v2_tree(fake_kernel)
    own = delegated(fake_kernel.root, f"{os.getpid()}\n")
    fake_kernel.self_cgroup.write_text(SELF)
    first = _sandbox._Cgroup(_sandbox.Limits(memory_bytes=1 << 29))
    (d,) = first.dirs
    assert d.parent == own and (d / "memory.max").read_text() == str(1 << 29) and first.caps_memory
    fake_kernel.self_cgroup.write_text(SELF.rstrip("\n") + "/fednb-domain\n")  # where it is now
    (own / "cgroup.subtree_control").write_text("garbage")  # prepared once: not looked at again
    (second,) = _sandbox._Cgroup(_sandbox.Limits()).dirs
    assert second.parent == own and second != d


@pytest.mark.parametrize(("procs", "controllers"), [
    ("4242\n31\n", "cpu memory pids"),  # another process shares the cgroup: moving this one cannot empty it
    ("4242\n", "cpu pids"),  # the memory controller is not delegated
])
def test_an_undelegated_cgroup_is_left_alone_and_the_root_used(fake_kernel: Any, procs: str,
                                                              controllers: str) -> None:
    v2_tree(fake_kernel)
    own = delegated(fake_kernel.root, procs, controllers)
    assert _sandbox.delegated_parent(fake_kernel.root, SELF, 4242) is None
    assert not (own / "fednb-domain").exists() and (own / "cgroup.subtree_control").read_text() == ""
    fake_kernel.self_cgroup.write_text(SELF)
    (d,) = _sandbox._Cgroup(_sandbox.Limits()).dirs
    assert d.parent == fake_kernel.root  # the fallback, as before
    assert _sandbox.delegated_parent(fake_kernel.root, "0::/\n", 4242) is None  # the root is the root
    assert _sandbox.delegated_parent(fake_kernel.root, "0::/nowhere\n", 4242) is None


def test_a_failed_enable_moves_the_domain_back(fake_kernel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    v2_tree(fake_kernel)
    own = delegated(fake_kernel.root, "4242\n")
    real = _sandbox._write

    def busy(path: Path, value: object) -> None:
        if path.name == "cgroup.subtree_control":
            raise OSError(16, "Device or resource busy")
        real(path, value)

    monkeypatch.setattr(_sandbox, "_write", busy)
    assert _sandbox.delegated_parent(fake_kernel.root, SELF, 4242) is None
    assert (own / "cgroup.procs").read_text() == "4242"  # moved back


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def worker_dir(parent: Path, name: str, procs: str = "", age: float = 0.0) -> Path:
    """A cgroup as the kernel shows it: control files, ``procs`` in cgroup.procs, its mtime
    ``age`` seconds ago."""
    d = parent / name
    d.mkdir(parents=True)
    for f in V1_FILES:
        (d / f).write_text("")
    (d / "cgroup.procs").write_text(procs)
    os.utime(d, (time.time() - age, time.time() - age))
    return d


@pytest.mark.parametrize("tree", ["v1", "v2", "v2-delegated"])
def test_the_sweep_takes_empty_cgroups_of_dead_domains_only(fake_kernel: Any, tree: str) -> None:
    if tree == "v1":
        v1_tree(fake_kernel)
        parents = [fake_kernel.root / "pids", fake_kernel.root / "memory"]
    else:
        v2_tree(fake_kernel)
        parents = [fake_kernel.root]
        if tree == "v2-delegated":  # the domain's own delegated cgroup, and the root as the fallback
            own = delegated(fake_kernel.root, f"{os.getpid()}\n")
            fake_kernel.self_cgroup.write_text(SELF)
            parents.insert(0, own)
    dead, live, hour = dead_pid(), os.getpid(), 3600.0
    gone, kept = [], []
    for parent in parents:
        gone += [worker_dir(parent, f"fednb-{dead}-0123456789ab"),  # a domain killed with kill -9
                 worker_dir(parent, "fednb-00112233aabb", age=2 * hour)]  # old-style name, long empty
        kept += [worker_dir(parent, f"fednb-{live}-0123456789ab"),  # a live domain's (this one)
                 worker_dir(parent, f"fednb-{dead}-ffffffffffff", procs="4242\n"),  # still has a process
                 worker_dir(parent, "fednb-ccddeeff0011"),  # old-style, owner unknown, recent
                 worker_dir(parent, "fednb-445566778899", procs="4242\n", age=2 * hour),
                 worker_dir(parent, "fednb-domain"), worker_dir(parent, "other-service")]
    assert sorted(_sandbox.sweep_stale_cgroups()) == sorted(gone)
    assert not [d for d in gone if d.exists()] and all(d.is_dir() for d in kept)
    assert _sandbox.sweep_stale_cgroups() == []


def test_a_worker_pool_sweeps_once_per_process(fake_kernel: Any, tmp_path: Path) -> None:
    from fednb.domain.runner._pool import WorkerPool

    v1_tree(fake_kernel)
    first = worker_dir(fake_kernel.root / "memory", f"fednb-{dead_pid()}-0123456789ab")
    WorkerPool("insecure-demo").shutdown()
    assert not first.exists()
    second = worker_dir(fake_kernel.root / "memory", f"fednb-{dead_pid()}-0123456789ab")
    WorkerPool("insecure-demo").shutdown()
    assert second.exists()  # once per process: the next domain start takes it


def test_removal_waits_for_the_killed_workers_processes_to_leave(fake_kernel: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    v1_tree(fake_kernel)
    cg = _sandbox._Cgroup(_sandbox.Limits())
    for d in cg.dirs:
        (d / "cgroup.procs").write_text("4242\n")  # pid 1 of the sandbox, still exiting

    def exits() -> None:
        time.sleep(0.2)
        for d in cg.dirs:
            (d / "cgroup.procs").write_text("")

    t = threading.Thread(target=exits)
    t.start()
    cg.remove()
    t.join()
    assert cg.dirs and not [d for d in cg.dirs if d.exists()]
    # one still busy after the wait is kept, and the next removal takes it once it is empty
    monkeypatch.setattr(_sandbox, "_REMOVE_WAIT", 0.05)
    stuck = _sandbox._Cgroup(_sandbox.Limits())
    for d in stuck.dirs:
        (d / "cgroup.procs").write_text("4242\n")
    stuck.remove()
    assert all(d.is_dir() for d in stuck.dirs) and set(stuck.dirs) == _sandbox._KEPT
    for d in stuck.dirs:
        (d / "cgroup.procs").write_text("")
    _sandbox._Cgroup(_sandbox.Limits()).remove()
    assert not [d for d in stuck.dirs if d.exists()] and not _sandbox._KEPT


def test_a_launch_that_fails_removes_its_cgroup(fake_kernel: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    v1_tree(fake_kernel)

    def fork_fails(*args: object, **kwargs: object) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(_sandbox, "SandboxedProcess", fork_fails)
    spec = _sandbox.SandboxSpec(["/bin/true"], tmp_path / "w")
    with pytest.raises(BlockingIOError):
        _sandbox.launch(spec, "insecure-demo")
    assert not list(fake_kernel.root.glob("*/fednb-*"))
    fake_kernel.state["files"] = V1_FILES  # no memsw and the host has swap: a GPU job is refused
    gpu = _sandbox.SandboxSpec(["/bin/true"], tmp_path / "w", limits=_sandbox.Limits(gpu=True))
    with pytest.raises(SandboxUnavailable):
        _sandbox.launch(gpu, "insecure-demo")
    assert not list(fake_kernel.root.glob("*/fednb-*"))


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
    job = JobSpec("r", "", "f", {"d": tmp_path / "d"}, tmp_path)  # a worker holds one dataset
    worker = _Worker(job, "insecure-demo", _sandbox.Limits(), 1)
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
