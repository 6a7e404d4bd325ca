"""Start an untrusted worker process inside bubblewrap, with cgroup and rlimit caps.

The worker sees a read-only root made of the system's library directories and the
Python installation, the datasets of one approved request (read-only), a writable work
directory (``/job``) and a private ``/tmp``, both tmpfs of a capped size. It runs as uid
65534 with no capabilities, in its own user, pid, network, ipc, uts and cgroup
namespaces, so it has no network at all (its loopback is its own) and sees no other
process. Resource caps:

- rlimits always: address space, file size, open files, CPU seconds, and processes
  (``RLIMIT_NPROC`` binds only where the domain runs as a non-root user: the kernel
  exempts processes whose real uid maps to root);
- cgroups where the machine lets the domain write them: ``pids.max``, ``memory.max``
  and ``memory.swap.max=0`` (cgroup v2: under the domain's own cgroup where that is
  delegated to it, see :func:`delegated_parent`, else under the hierarchy's root) or
  ``pids.max``, ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (cgroup
  v1), which also bind when the domain runs as root;
- a nice level and a CPU affinity mask, so jobs never take every core from the
  hospital's other systems.

GPU jobs (``Limits.gpu``, the domain policy's ``gpu_jobs``) also see the NVIDIA device
nodes (``--dev-bind``) and driver libraries (read-only), found by :mod:`._gpu`. CUDA
reserves far more address space than it touches, so a GPU worker gets no ``RLIMIT_AS``:
its host memory is capped by its memory cgroup alone, and where no memory cgroup can be
written, or its swap cannot be capped on a host with swap, it is refused
(:class:`~fednb.errors.SandboxUnavailable`) unless the owner accepted running it without
a host memory cap (``host_memory_uncapped_ok``).

Worker cgroups are named ``fednb-<pid>-<12 hex>``, ``pid`` the domain process that made
them. They go when their worker is stopped (:meth:`_Cgroup.remove` waits up to
``_REMOVE_WAIT`` for the killed worker's processes to leave first), or, where the domain
died first (``kill -9``) or a busy one outlived that wait, in :func:`sweep_stale_cgroups`,
which each process runs once when it starts a worker pool.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fednb.domain.runner._gpu import gpu_binds
from fednb.errors import SandboxUnavailable

__all__ = ["Limits", "SandboxMode", "SandboxSpec", "bwrap_available", "launch", "memory_cgroup_works"]

SandboxMode = Literal["bubblewrap", "insecure-demo"]
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_SWAPS = Path("/proc/swaps")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_DOMAIN_LEAF = "fednb-domain"  # cgroup v2: the leaf the domain moves into (delegated_parent)
_V2_PARENTS: dict[Path, Path] = {}
_V2_LOCK = threading.Lock()
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf")
# worker cgroups: fednb-<pid of the domain process that made it>-<12 hex>; the name before
# that, fednb-<12 hex>, has no owner in it (see sweep_stale_cgroups)
_WORKER_NAME = re.compile(r"fednb-([1-9][0-9]{0,9})-[0-9a-f]{12}")
_OLD_WORKER_NAME = re.compile(r"fednb-[0-9a-f]{12}")
_OLD_SWEEP_AGE = 3600.0  # seconds an empty old-style cgroup must be untouched before a sweep takes it
_REMOVE_WAIT = 2.0  # seconds remove() waits for a killed worker's processes to leave its cgroup
_REMOVE_POLL = 0.01
_KEPT: set[Path] = set()  # this process's cgroups still busy after the wait: retried later
_KEPT_LOCK = threading.Lock()
_SWEPT = False
_SWEEP_LOCK = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """Caps for one worker.

    Parameters
    ----------
    memory_bytes
        Address space and cgroup memory cap, bytes (default 3 GiB).
    max_procs
        Processes and threads in the sandbox (default 64).
    cpu_seconds
        CPU time over the worker's life, seconds (default 3600).
    file_bytes
        Largest file the worker may write, bytes (default 256 MiB).
    open_files
        Open file descriptors (default 256).
    scratch_bytes
        Size of each writable tmpfs, ``/tmp`` and ``/job`` (default 256 MiB), where
        bubblewrap can size one: a job cannot fill the domain's disk or memory with files.
    cpus
        Cores the worker may run on (default: all but one, at least one).
    nice
        Scheduling niceness added to the worker (default 10).
    gpu
        Bind the NVIDIA devices and driver libraries; host memory capped by the cgroup
        only, never ``RLIMIT_AS`` (default False).
    gpu_memory_bytes
        GPU memory cap handed to the worker's allocators (CuPy, PyTorch), bytes (default
        None: no cap).
    host_memory_uncapped_ok
        With ``gpu``, start the worker even where no memory cgroup can be written (no cap
        on its host memory at all); default False refuses such a start.
    """

    memory_bytes: int = 3 << 30
    max_procs: int = 64
    cpu_seconds: int = 3600
    file_bytes: int = 256 << 20
    open_files: int = 256
    scratch_bytes: int = 256 << 20
    cpus: int = field(default_factory=lambda: max(1, (os.cpu_count() or 1) - 1))
    nice: int = 10
    gpu: bool = False
    gpu_memory_bytes: int | None = None
    host_memory_uncapped_ok: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """What one worker may see: read-only binds, one writable work dir, its argv."""

    argv: list[str]
    workdir: Path
    ro_binds: list[tuple[Path, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


@functools.lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """True when bubblewrap exists and can create the namespaces the sandbox needs."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    probe = [exe, "--unshare-all", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    probe += [*_system_binds(), "--", "/bin/true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def _bwrap_sizes_tmpfs() -> bool:
    """True when this bubblewrap has ``--size`` (0.8 and later) to cap a tmpfs."""
    try:
        out = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in out.stdout + out.stderr


def _system_binds() -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    return args


def python_binds() -> list[tuple[Path, str]]:
    """The Python installation and fednb itself, bound read-only at their own paths."""
    paths = {Path(sys.base_prefix), Path(sys.prefix)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]))
    paths.add(Path(__file__).resolve().parents[2])  # the fednb package (editable installs)
    real = {p.resolve() for p in paths if p.exists()}
    # drop paths nested inside another bound path
    top = [p for p in real if not any(q != p and q in p.parents for q in real)]
    return [(p, str(p)) for p in sorted(top)]


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    """The full bubblewrap command line for ``spec``."""
    exe = shutil.which("bwrap") or "bwrap"
    args = [exe, "--unshare-all", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    # --as-pid-1: the worker is the namespace's init, with no bubblewrap reaper beside it
    # that the job could ptrace or whose command line names the domain's paths
    args += ["--die-with-parent", "--new-session", "--clearenv", "--as-pid-1"]
    args += _system_binds()
    size = ["--size", str(spec.limits.scratch_bytes)] if _bwrap_sizes_tmpfs() else []
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp"]
    for host, inside in [*python_binds(), *spec.ro_binds]:
        args += ["--ro-bind", str(host), inside]
    if spec.limits.gpu:  # after --dev and --proc; /proc/driver/nvidia shows in every procfs
        args += gpu_binds().argv((*_SYSTEM_DIRS, "/proc"))
    # /job: a sized tmpfs, so a job cannot fill the domain's disk (the owner's log reaches
    # the work dir through the worker's stderr); without --size, the work dir itself
    args += [*size, "--tmpfs", "/job"] if size else ["--bind", str(spec.workdir), "/job"]
    args += ["--chdir", "/job"]
    for k, v in spec.env.items():
        args += ["--setenv", k, v]
    args += ["--remount-ro", "/", "--", *spec.argv]
    return args


def _make_cgroup_dir(path: Path) -> None:
    """``mkdir`` of a cgroup (the kernel fills in its control files); tests swap in a fake."""
    path.mkdir()


def _remove_cgroup_dir(path: Path) -> None:
    """``rmdir`` of a cgroup (the kernel drops its control files; ``EBUSY`` while it has
    processes); tests swap in a fake."""
    path.rmdir()


def _write(path: Path, value: object) -> None:
    """Write a control file that must exist already: never create one (a cgroup's files are
    the kernel's, so a file that is not there is a controller that is not there)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def host_has_swap(swaps: str) -> bool:
    """True when ``/proc/swaps`` (its text) lists a swap area below its header."""
    return any(line.strip() for line in swaps.splitlines()[1:])


def _swap_on() -> bool:
    try:
        return host_has_swap(_PROC_SWAPS.read_text())
    except OSError:
        return True  # cannot tell: assume swap


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The cgroup v2 path (``0::/path``) in ``/proc/self/cgroup``'s text, or None."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return None if ".." in path.split("/") else path.strip()
    return None


_NEEDED = {"memory", "pids"}


def _enabled(cg: Path) -> bool:
    """True when ``cg`` hands memory and pids to its children and this process may write it."""
    try:
        enabled = set((cg / "cgroup.subtree_control").read_text().split())
    except OSError:
        return False
    return enabled >= _NEEDED and os.access(cg, os.W_OK) and os.access(cg / "cgroup.procs", os.W_OK)


def delegated_parent(root: Path, proc_self_cgroup: str, pid: int) -> Path | None:
    """Where this process's worker cgroups go on cgroup v2 (``root``: the v2 mount): its own
    cgroup from ``proc_self_cgroup`` (``/proc/self/cgroup``'s text), where that is delegated to
    it (writable, with the memory and pids controllers), or None (the caller uses ``root``).

    cgroup v2 lets a non-root cgroup either hold processes or hand controllers to children,
    not both. So, once, where this process is the only one in its cgroup ``own``: it moves
    itself into the leaf ``own/fednb-domain`` and then enables memory and pids in
    ``own/cgroup.subtree_control``; workers are made beside that leaf. Where anything fails
    it moves back and returns None. A process already in such a leaf (a domain restarted
    there, a child of one) uses the leaf's parent as it is.
    """
    rel = own_cgroup(proc_self_cgroup)
    if rel is None or not rel.strip("/"):
        return None  # the root itself: the caller's fallback
    own = root / rel.strip("/")
    if own.name == _DOMAIN_LEAF and _enabled(own.parent):
        return own.parent
    try:
        controllers = set((own / "cgroup.controllers").read_text().split())
        procs = (own / "cgroup.procs").read_text().split()
    except OSError:
        return None
    writable = all(os.access(p, os.W_OK) for p in (own, own / "cgroup.procs", own / "cgroup.subtree_control"))
    if not (writable and controllers >= _NEEDED):
        return None
    if _enabled(own):
        return own
    if procs and procs != [str(pid)]:
        return None  # other processes share it: moving this one cannot empty it
    leaf, moved = own / _DOMAIN_LEAF, False
    try:
        if procs:
            if not leaf.is_dir():
                _make_cgroup_dir(leaf)
            _write(leaf / "cgroup.procs", pid)
            moved = True
        _write(own / "cgroup.subtree_control", "+memory +pids")
        return own
    except OSError:
        if moved:
            with contextlib.suppress(OSError):
                _write(own / "cgroup.procs", pid)
        with contextlib.suppress(OSError):
            leaf.rmdir()
        return None


def _v2_parent(root: Path) -> Path:
    """Where worker cgroups go under the v2 mount ``root``: the domain's delegated cgroup
    (:func:`delegated_parent`, prepared once per process), else ``root`` itself."""
    with _V2_LOCK:
        parent = _V2_PARENTS.get(root)
        if parent is None:
            try:
                text = _PROC_SELF_CGROUP.read_text()
            except OSError:
                text = ""
            parent = delegated_parent(root, text, os.getpid())
            if parent is not None:
                _V2_PARENTS[root] = parent
    return parent or root


def _is_v2(root: Path) -> bool:
    return (root / "cgroup.controllers").exists()


def _worker_parents(root: Path) -> list[Path]:
    """Where worker cgroups are made under the mount ``root``: v2, the domain's delegated
    cgroup (:func:`_v2_parent`) and then the root; v1, the ``pids`` and ``memory`` roots."""
    if _is_v2(root):
        return list(dict.fromkeys([_v2_parent(root), root]))
    return [root / "pids", root / "memory"]


def _rmdir_when_empty(path: Path, deadline: float) -> bool:
    """Remove the cgroup ``path`` once ``cgroup.procs`` is empty, polling until ``deadline``
    (``time.monotonic``); True when it is gone (or was already)."""
    while True:
        try:
            busy = bool((path / "cgroup.procs").read_text().strip())
        except OSError:
            busy = False  # gone already, or no such file: the rmdir below says which
        if not busy:
            try:
                _remove_cgroup_dir(path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:  # EBUSY: its last process is still on its way out
                if exc.errno != errno.EBUSY:
                    return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REMOVE_POLL)


def _retry_kept() -> None:
    """One more try at this process's cgroups that were still busy when their worker stopped."""
    with _KEPT_LOCK:
        kept = list(_KEPT)
    for d in kept:
        if _rmdir_when_empty(d, 0.0):
            with _KEPT_LOCK:
                _KEPT.discard(d)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _stale(d: Path, now: float) -> bool:
    """True for a worker cgroup with no process in it whose maker is gone: its pid (from the
    name) is not alive here, or, for an old-style name without a pid, it is older than
    ``_OLD_SWEEP_AGE``."""
    m = _WORKER_NAME.fullmatch(d.name)
    if m is None and _OLD_WORKER_NAME.fullmatch(d.name) is None:
        return False  # not a worker cgroup (fednb-domain, say)
    try:
        if (d / "cgroup.procs").read_text().strip():
            return False
        if m is not None:
            return not _pid_alive(int(m.group(1)))
        return now - d.stat().st_mtime > _OLD_SWEEP_AGE
    except OSError:
        return False


def sweep_stale_cgroups(root: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the worker cgroups that no running domain process will remove: under the
    parents where this process makes them (:func:`_worker_parents`), every ``fednb-<pid>-*``
    with no process in it whose ``pid`` is not alive (a domain killed with ``kill -9``, or
    one whose busy cgroup outlived :meth:`_Cgroup.remove`'s wait), and every old-style
    ``fednb-<12 hex>`` (no owner in the name) with no process in it, untouched for an hour.
    Never a cgroup of a live pid: another domain on the same host may own it. Pids are
    looked up in this process's pid namespace: domains that share a cgroup hierarchy are
    expected to share that too. Returns the cgroups removed."""
    root = _CGROUP_ROOT if root is None else root
    now = time.time() if now is None else now
    _retry_kept()
    removed = []
    for parent in _worker_parents(root):
        try:
            entries = sorted(parent.iterdir())
        except OSError:
            continue
        for d in entries:
            if _stale(d, now) and _rmdir_when_empty(d, 0.0):
                removed.append(d)
    return removed


def sweep_once() -> None:
    """:func:`sweep_stale_cgroups`, the first time this process calls it (a worker pool starting)."""
    global _SWEPT
    with _SWEEP_LOCK:
        if _SWEPT:
            return
        _SWEPT = True
    sweep_stale_cgroups()


class _Cgroup:
    """A per-worker cgroup (v2, under the domain's delegated cgroup or the root; or v1
    pids+memory), where writable, named ``fednb-<this process's pid>-<12 hex>``."""

    def __init__(self, limits: Limits, root: Path | None = None) -> None:
        root = _CGROUP_ROOT if root is None else root
        self.dirs: list[Path] = []
        # the memory limit took, and swap cannot add to it (capped at 0 extra, or no swap)
        self.caps_memory = False
        name = f"fednb-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if _is_v2(root):
            settings = {"pids.max": limits.max_procs, "memory.max": limits.memory_bytes}
            for parent in _worker_parents(root):
                if self._try(parent / name, settings, ("memory.swap.max", 0)):
                    break
        else:
            self._try(root / "pids" / name, {"pids.max": limits.max_procs})
            # memsw (RAM + swap) must not be below the RAM limit: written after it
            self._try(root / "memory" / name, {"memory.limit_in_bytes": limits.memory_bytes},
                      ("memory.memsw.limit_in_bytes", limits.memory_bytes))

    def _try(self, path: Path, settings: dict[str, int], swap: tuple[str, int] | None = None) -> bool:
        try:
            _make_cgroup_dir(path)
        except OSError:
            return False
        try:
            for k, v in settings.items():
                _write(path / k, v)
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return False
        self.dirs.append(path)
        if swap is not None:
            self.caps_memory = self._cap_swap(path / swap[0], swap[1])
        return True

    @staticmethod
    def _cap_swap(path: Path, value: int) -> bool:
        if not path.exists():  # no swap accounting: the memory cap holds only without swap
            return not _swap_on()
        try:
            _write(path, value)
        except OSError:
            return False
        return True

    def enter(self) -> None:
        """Move the calling process in (runs in the child before exec)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Remove the cgroups once their processes are gone: a killed worker (pid 1 of its
        namespace, killed with bubblewrap by ``PR_SET_PDEATHSIG``) may still be exiting when
        bubblewrap has been reaped, and ``rmdir`` of a cgroup with processes fails (EBUSY).
        Waits up to ``_REMOVE_WAIT`` for that; one still busy is kept and tried again by this
        process's next :meth:`remove`, and by the sweep of the next domain on this machine."""
        _retry_kept()
        deadline = time.monotonic() + _REMOVE_WAIT
        for d in self.dirs:
            if not _rmdir_when_empty(d, deadline):
                with _KEPT_LOCK:
                    _KEPT.add(d)


def oom_killed(dirs: list[Path]) -> bool:
    """True when the OOM killer killed a process in one of these cgroups: the ``oom_kill``
    count of ``memory.events`` (v2) or ``memory.oom_control`` (v1, Linux 4.13 and later).
    Not ``memory.failcnt``: that counts every time usage hit the limit, page cache
    reclaimed included, which a job that writes much and then fails does without any kill."""
    for d in dirs:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (d / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                    return True
    return False


def memory_cgroup_works() -> bool:
    """True when this process can make a worker cgroup whose memory cap holds (swap capped
    too, or no swap) here: what GPU jobs need unless the owner accepts no host memory cap."""
    cgroup = _Cgroup(Limits())
    cgroup.remove()
    return cgroup.caps_memory


def _preexec(limits: Limits, cgroup: _Cgroup) -> None:
    cgroup.enter()
    caps = {
        resource.RLIMIT_NPROC: limits.max_procs,
        resource.RLIMIT_CPU: limits.cpu_seconds,
        resource.RLIMIT_FSIZE: limits.file_bytes,
        resource.RLIMIT_NOFILE: limits.open_files,
        resource.RLIMIT_CORE: 0,
    }
    if not limits.gpu:  # CUDA reserves address space far beyond what it uses: the cgroup caps it
        caps[resource.RLIMIT_AS] = limits.memory_bytes
    for which, value in caps.items():
        resource.setrlimit(which, (value, value))
    os.nice(limits.nice)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[-limits.cpus :])


class SandboxedProcess(subprocess.Popen[bytes]):
    """A worker process with its cgroup, removed when the process is reaped."""

    cgroup: _Cgroup

    def cleanup(self) -> None:
        self.cgroup.remove()


# --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that forked the worker
# ends, so every worker is forked from this one long-lived thread.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fednb-spawner")


def launch(spec: SandboxSpec, mode: SandboxMode) -> SandboxedProcess:
    """Start a worker from the spawner thread (see :func:`_launch`)."""
    return _SPAWNER.submit(_launch, spec, mode).result()


def _launch(spec: SandboxSpec, mode: SandboxMode) -> SandboxedProcess:
    """Start the worker; its stdin and stdout are the frame pipes, stderr goes to ``log.txt``.

    ``mode="insecure-demo"`` runs it without bubblewrap (rlimits and cgroups only), for
    domains started with ``--insecure-demo`` on machines without bubblewrap.
    """
    spec.workdir.mkdir(parents=True, exist_ok=True)
    if mode == "bubblewrap":
        argv = bwrap_argv(spec)
        env = {"PATH": "/usr/bin:/bin"}
    else:
        argv = spec.argv
        env = {**spec.env, "PATH": "/usr/bin:/bin"}
    cgroup = _Cgroup(spec.limits)
    try:
        return _start(spec, argv, env, cgroup)
    except BaseException:  # refused, or the fork or exec failed: no worker in the cgroup
        cgroup.remove()
        raise


def _start(spec: SandboxSpec, argv: list[str], env: dict[str, str], cgroup: _Cgroup) -> SandboxedProcess:
    if spec.limits.gpu and not cgroup.caps_memory and not spec.limits.host_memory_uncapped_ok:
        raise SandboxUnavailable(
            "GPU jobs run without RLIMIT_AS (CUDA reserves more address space than it uses), so "
            "their host memory needs a memory cgroup that caps swap too, and this domain cannot "
            f"write one under {_CGROUP_ROOT} or its own cgroup (delegate cgroup v2 with the memory "
            "and pids controllers to the domain's user, e.g. systemd Delegate=yes, with swap "
            "accounting on or no swap; or run it where cgroup v1 memory and memsw are writable); "
            "or set policy gpu_without_host_memory_cap=true to run GPU jobs with no host memory cap")
    log = os.open(spec.workdir / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = SandboxedProcess(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,  # bubblewrap's own errors reach the owner's log
            cwd=spec.workdir,
            env=env,
            preexec_fn=functools.partial(_preexec, spec.limits, cgroup),
            close_fds=True,
        )
    finally:
        os.close(log)
    proc.cgroup = cgroup
    return proc
