"""Start an untrusted worker process inside bubblewrap, with cgroup and rlimit caps.

The worker sees a read-only root made of the system's library directories and the
Python installation, the datasets of one approved request (read-only), a private
``/tmp``, a work directory ``/job`` and ``/dev/shm``, all three tmpfs of a capped size,
and a read-only ``/dev`` (device nodes still work on it). It runs as uid 65534 with no
capabilities, in its own user, pid, network, ipc, uts and cgroup namespaces, so it has
no network at all (its loopback is its own) and sees no other process, under the seccomp
filter of :mod:`._seccomp` (no namespaces, mounts, bpf, io_uring, keyrings, ptrace,
netlink ...), and with no way to make a user namespace of its own (bubblewrap's
``--disable-userns``, or ``user.max_user_namespaces`` 0 in its namespace).

Its uid is never root outside. Where the domain runs as an ordinary user, bubblewrap maps
65534 inside to that user. Where the domain runs as root, bubblewrap alone would map 65534
to root (uid 0), and every root-owned file under a bound path would be readable; so the
domain makes the sandbox's user namespace itself (:func:`_sandbox_userns`), mapping 0 to
0 (bubblewrap sets up the mounts as root there: the Python installation and the datasets
may sit under directories only root can enter) and 65534 to the host's ``SANDBOX_UID``
(65534, nobody), and hands it over with ``--userns``; the first program inside,
``setpriv``, drops to 65534 before it executes the worker. bubblewrap 0.8's
``--ro-bind-fd`` is no way around this: it resolves the descriptor back to a path and
opens that with the sandbox's credentials.

Resource caps:

- rlimits always: address space, file size, open files, CPU seconds, and processes
  (``RLIMIT_NPROC``: a backstop over the sandbox's host uid on bubblewrap, and the
  sandbox's own ``max_procs``, which the zygote sets on itself and which the kernel counts
  per sandbox from Linux 5.14, see :mod:`._nproc`);
- cgroups where the machine lets the domain write them: ``pids.max``, ``memory.max``
  and ``memory.swap.max=0`` (cgroup v2: under the domain's own cgroup where that is
  delegated to it, see :func:`delegated_parent`, else under the hierarchy's root) or
  ``pids.max``, ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (cgroup
  v1: under the domain's own cgroup of each controller where it can write that, see
  :func:`v1_parent`, else under the controller's root), which also bind when the domain
  runs as root;
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fednb.domain.runner._gpu import gpu_binds
from fednb.domain.runner._nproc import host_limit
from fednb.domain.runner._seccomp import SeccompUnsupported, filter_fd
from fednb.errors import SandboxUnavailable

__all__ = ["SANDBOX_UID", "Limits", "SandboxMode", "SandboxSpec", "bwrap_available", "launch",
           "memory_cgroup_works"]

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
SANDBOX_UID = 65534
"""The host uid and gid (nobody, nogroup) of the sandbox's uid 65534 where the domain runs as
root; elsewhere the sandbox maps to the domain's own user."""
_INSIDE_UID = "65534"
_SHIM_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")  # what setpriv needs to drop to 65534


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
        Size of each writable tmpfs, ``/tmp``, ``/job`` and ``/dev/shm`` (default 256 MiB),
        where bubblewrap can size one (without, ``/dev/shm`` is read-only like the rest of
        ``/dev``): a job cannot fill the domain's disk or memory with files.
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
    """True when bubblewrap exists and can build the sandbox :func:`launch` builds (its user
    namespace, seccomp filter and, where the domain is root, the drop to ``SANDBOX_UID``)."""
    if shutil.which("bwrap") is None:
        return False
    spec = SandboxSpec(["/bin/true"], Path("/nonexistent"))
    try:
        with _host_side(spec) as (argv, fds):
            return subprocess.run(argv, pass_fds=fds, capture_output=True, timeout=20,
                                  preexec_fn=_drop_groups if _as_root() else None).returncode == 0
    except (OSError, subprocess.SubprocessError, SandboxUnavailable):
        return False


@functools.lru_cache(maxsize=1)
def _bwrap_help() -> str:
    try:
        out = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout + out.stderr


def _bwrap_sizes_tmpfs() -> bool:
    """True when this bubblewrap has ``--size`` (0.8 and later) to cap a tmpfs."""
    return "--size" in _bwrap_help()


def _bwrap_disables_userns() -> bool:
    """True when this bubblewrap has ``--disable-userns`` (0.8 and later)."""
    return "--disable-userns" in _bwrap_help()


def _as_root() -> bool:
    return os.geteuid() == 0


def host_uid(mode: SandboxMode) -> int:
    """The host uid a worker's tasks are counted under: ``SANDBOX_UID`` where the domain is
    root and bubblewrap runs the worker, else the domain's own."""
    return SANDBOX_UID if mode == "bubblewrap" and _as_root() else os.getuid()


def _parents(dests: list[str], made: set[str]) -> list[str]:
    """``--dir`` for each directory above ``dests`` not made yet: bubblewrap 0.8 makes the
    parents of a bind's destination mode 0700, which only its owner (root, where the domain
    is root) may enter; these are 0755."""
    args: list[str] = []
    for dest in dests:
        parts = Path(dest).parts[1:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                args += ["--dir", d]
    return args


def _system_binds(made: set[str] | None = None) -> list[str]:
    made = set() if made is None else made
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        if os.path.exists(f):
            args += [*_parents([f], made), "--ro-bind", f, f]
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


def _namespaces(userns_fd: int | None) -> list[str]:
    """The namespace and identity arguments: bubblewrap's own user namespace (uid 65534 inside,
    the domain's user outside), or the one the domain made (``--userns``, see the module's
    docstring), where bubblewrap stays root until ``setpriv`` drops to 65534."""
    if userns_fd is None:
        args = ["--unshare-all", "--uid", _INSIDE_UID, "--gid", _INSIDE_UID, "--cap-drop", "ALL"]
        if _bwrap_disables_userns():  # nor can a forked child make a user namespace of its own
            args += ["--unshare-user", "--disable-userns"]
        return args
    args = ["--userns", str(userns_fd), "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup", "--uid", "0", "--gid", "0", "--cap-drop", "ALL"]
    for cap in _SHIM_CAPS:
        args += ["--cap-add", cap]
    return args


def _setpriv() -> list[str]:
    """The first program inside where the domain is root: drop to 65534 (groups were cleared
    before bubblewrap started, and ``setgroups`` is denied in the namespace), every
    capability with it, and keep the parent-death signal that a change of uid clears."""
    exe = shutil.which("setpriv", path="/usr/bin:/bin")
    if exe is None:
        raise SandboxUnavailable("the domain runs as root and util-linux's setpriv is missing: "
                                 "apt-get install util-linux (or run the domain as a non-root user)")
    return [exe, "--reuid", _INSIDE_UID, "--regid", _INSIDE_UID, "--keep-groups", "--inh-caps", "-all",
            "--bounding-set", "-all", "--pdeathsig", "keep", "--"]


def bwrap_argv(spec: SandboxSpec, userns_fd: int | None = None, seccomp_fd: int | None = None) -> list[str]:
    """The full bubblewrap command line for ``spec``; ``userns_fd``: the user namespace of
    :func:`_sandbox_userns` (a domain running as root), ``seccomp_fd``: the filter of
    :func:`._seccomp.filter_fd` (:func:`launch` always hands both it needs)."""
    exe = shutil.which("bwrap") or "bwrap"
    args = [exe, *_namespaces(userns_fd)]
    # --as-pid-1: the worker is the namespace's init, with no bubblewrap reaper beside it
    # that the job could ptrace or whose command line names the domain's paths
    args += ["--die-with-parent", "--new-session", "--clearenv", "--as-pid-1"]
    made: set[str] = set()
    args += _system_binds(made)
    # the scratch tmpfs: sized, and 1777 (where the domain is root, bubblewrap mounts them as
    # uid 0 of the namespace, and the worker, 65534, must write them); 0.8 has both options
    size = ["--perms", "1777", "--size", str(spec.limits.scratch_bytes)] if _bwrap_sizes_tmpfs() else []
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp"]
    # /dev/shm: a sized tmpfs (after --dev, which made the directory); without --size it
    # stays a directory of the read-only /dev
    args += [*size, "--tmpfs", "/dev/shm"] if size else []
    binds = [*python_binds(), *spec.ro_binds]
    for host, inside in binds:
        args += [*_parents([inside], made), "--ro-bind", str(host), inside]
    if spec.limits.gpu:  # after --dev and --proc; /proc/driver/nvidia shows in every procfs
        gpu = gpu_binds()
        args += _parents([*gpu.devices, *gpu.libraries], made)
        args += gpu.argv((*_SYSTEM_DIRS, "/proc"))
    # /job: a sized tmpfs, so a job cannot fill the domain's disk (the owner's log reaches
    # the work dir through the worker's stderr); without --size, the work dir itself
    args += [*size, "--tmpfs", "/job"] if size else ["--bind", str(spec.workdir), "/job"]
    args += ["--chdir", "/job"]
    for k, v in spec.env.items():
        args += ["--setenv", k, v]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    # /dev read-only last: bubblewrap's remount is not recursive, so /dev/shm, /dev/pts and
    # the GPU's --dev-bind nodes keep their own flags (a device node works on a read-only mount)
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--"]
    return [*args, *(_setpriv() if userns_fd is not None else []), *spec.argv]


def _drop_groups() -> None:
    """In the child before bubblewrap starts (root only): no supplementary groups (root's
    would follow the sandbox to uid 65534, and ``setgroups`` is denied inside)."""
    os.setgroups([])


# The namespace holder: a fresh interpreter, not a pre-exec step in a fork of this process.
# A fork of a process whose libraries registered at-fork handlers that start a thread in the
# child (PyTorch's thread pool does) is multithreaded, and unshare(CLONE_NEWUSER) refuses a
# multithreaded caller with EINVAL: every sandbox of a domain that shares its process with
# torch was refused. It makes the namespace in which no further one can be made (what
# ``--disable-userns`` does where bubblewrap makes the namespace), says "ready", and holds
# it until its stdin closes.
_HOLDER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    sys.stderr.write("unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno()))
    sys.exit(1)
try:
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
except OSError as exc:
    sys.stderr.write("user.max_user_namespaces: " + str(exc))
    sys.exit(1)
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def _sandbox_userns(tries: int = 3) -> int:
    """:func:`_make_userns`, tried up to ``tries`` times: on a loaded machine the holder may
    fail to start or die before its maps are written; a failure of all the tries stands."""
    for attempt in range(tries):
        try:
            return _make_userns()
        except SandboxUnavailable:
            if attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _make_userns() -> int:
    """A user namespace for a sandbox of a domain running as root (see the module's
    docstring), as an open descriptor: 0 is 0 (bubblewrap's setup), 65534 is ``SANDBOX_UID``,
    ``setgroups`` denied, ``user.max_user_namespaces`` 0 inside. A short-lived holder
    (:data:`_HOLDER`) keeps it while the maps are written; the descriptor keeps it alive after."""
    try:
        holder = subprocess.Popen([sys.executable, "-I", "-S", "-c", _HOLDER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot make the sandbox's user namespace: {exc}") from exc
    assert holder.stdin is not None and holder.stdout is not None and holder.stderr is not None
    try:
        if holder.stdout.readline() != b"ready\n":  # it exited: its stderr says why
            holder.wait()
            why = holder.stderr.read(500).decode(errors="replace").strip() or f"exit {holder.returncode}"
            raise SandboxUnavailable(f"cannot make the sandbox's user namespace: {why}")
        maps = f"0 0 1\n{_INSIDE_UID} {SANDBOX_UID} 1\n"
        for name, text in (("setgroups", "deny"), ("uid_map", maps), ("gid_map", maps)):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(text)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot map the sandbox's user namespace: {exc}") from exc
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
        holder.stderr.close()


@contextlib.contextmanager
def _host_side(spec: SandboxSpec) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """bubblewrap's command line for ``spec`` and the descriptors it reads (the seccomp filter
    and, where the domain is root, the user namespace), closed again on leaving."""
    fds: list[int] = []
    try:
        try:
            fds.append(filter_fd())
        except SeccompUnsupported as exc:
            raise SandboxUnavailable(str(exc)) from exc
        userns = _sandbox_userns() if _as_root() else None
        if userns is not None:
            fds.append(userns)
        yield bwrap_argv(spec, userns_fd=userns, seccomp_fd=fds[0]), tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


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


def v1_parent(root: Path, controller: str, proc_self_cgroup: str) -> Path | None:
    """Where this process's worker cgroups of the v1 ``controller`` go (``root``: the v1
    mounts' parent, ``root/controller`` the hierarchy): its own cgroup of that controller,
    from ``proc_self_cgroup`` (``/proc/self/cgroup``'s text), where that is not the
    hierarchy's root and this process may make cgroups in it; else None (the caller uses the
    hierarchy's root). v1 has no rule against processes beside child cgroups, so nothing
    moves; workers then count against whatever caps the domain's own cgroup carries."""
    for line in proc_self_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller not in controllers.split(","):
            continue
        parts = path.strip().strip("/").split("/")
        if not path.startswith("/") or parts == [""] or ".." in parts:
            return None
        own = root / controller / "/".join(parts)
        writable = own.is_dir() and os.access(own, os.W_OK) and os.access(own / "cgroup.procs", os.W_OK)
        return own if writable else None
    return None


def _v1_parents(root: Path) -> dict[str, list[Path]]:
    """For the v1 controllers pids and memory: the domain's own cgroup (:func:`v1_parent`),
    where usable, then the controller's root."""
    try:
        text = _PROC_SELF_CGROUP.read_text()
    except OSError:
        text = ""
    return {c: list(dict.fromkeys([p for p in (v1_parent(root, c, text), root / c) if p is not None]))
            for c in ("pids", "memory")}


def _worker_parents(root: Path) -> list[Path]:
    """Where worker cgroups are made under the mount ``root``: v2, the domain's delegated
    cgroup (:func:`_v2_parent`) and then the root; v1, for pids and for memory, the domain's
    own cgroup (:func:`v1_parent`) and then the controller's root."""
    if _is_v2(root):
        return list(dict.fromkeys([_v2_parent(root), root]))
    return [p for parents in _v1_parents(root).values() for p in parents]


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
    pids+memory, each under the domain's own cgroup or the controller's root), where
    writable, named ``fednb-<this process's pid>-<12 hex>``."""

    def __init__(self, limits: Limits, root: Path | None = None) -> None:
        root = _CGROUP_ROOT if root is None else root
        self.dirs: list[Path] = []
        # the memory limit took, and swap cannot add to it (capped at 0 extra, or no swap)
        self.caps_memory = False
        self.caps_pids = False  # a pids.max of this worker's own took
        name = f"fednb-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if _is_v2(root):
            settings = {"pids.max": limits.max_procs, "memory.max": limits.memory_bytes}
            for parent in _worker_parents(root):
                if self._try(parent / name, settings, ("memory.swap.max", 0)):
                    break
        else:
            parents = _v1_parents(root)
            for parent in parents["pids"]:
                if self._try(parent / name, {"pids.max": limits.max_procs}):
                    break
            # memsw (RAM + swap) must not be below the RAM limit: written after it
            for parent in parents["memory"]:
                if self._try(parent / name, {"memory.limit_in_bytes": limits.memory_bytes},
                             ("memory.memsw.limit_in_bytes", limits.memory_bytes)):
                    break

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
        if "pids.max" in settings:
            self.caps_pids = True
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


def oom_kill_count(dirs: list[Path]) -> int:
    """How many processes the OOM killer killed in these cgroups: the ``oom_kill`` count of
    ``memory.events`` (v2) or ``memory.oom_control`` (v1, Linux 4.13 and later). Not
    ``memory.failcnt``: that counts every time usage hit the limit, page cache reclaimed
    included, which a job that writes much and then fails does without any kill."""
    total = 0
    for d in dirs:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (d / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    total += int(value)
    return total


def oom_killed(dirs: list[Path]) -> bool:
    """True when the OOM killer killed a process in one of these cgroups (:func:`oom_kill_count`)."""
    return oom_kill_count(dirs) > 0


def memory_cgroup_works() -> bool:
    """True when this process can make a worker cgroup whose memory cap holds (swap capped
    too, or no swap) here: what GPU jobs need unless the owner accepts no host memory cap."""
    cgroup = _Cgroup(Limits())
    cgroup.remove()
    return cgroup.caps_memory


def _preexec(limits: Limits, cgroup: _Cgroup, drop_groups: bool, nproc: int) -> None:
    cgroup.enter()
    if drop_groups:
        _drop_groups()
    caps = {
        # a backstop over the sandbox's host uid (see ._nproc): the zygote sets its sandbox's
        # own cap on itself before any run
        resource.RLIMIT_NPROC: nproc,
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
    cgroup = _Cgroup(spec.limits)
    try:
        nproc = host_limit(spec.limits.max_procs, host_uid(mode))
        if mode != "bubblewrap":
            return _start(spec, spec.argv, {**spec.env, "PATH": "/usr/bin:/bin"}, cgroup, nproc)
        with _host_side(spec) as (argv, fds):
            return _start(spec, argv, {"PATH": "/usr/bin:/bin"}, cgroup, nproc, fds)
    except BaseException:  # refused, or the fork or exec failed: no worker in the cgroup
        cgroup.remove()
        raise


def _start(spec: SandboxSpec, argv: list[str], env: dict[str, str], cgroup: _Cgroup, nproc: int,
           pass_fds: tuple[int, ...] = ()) -> SandboxedProcess:
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
            preexec_fn=functools.partial(_preexec, spec.limits, cgroup, bool(pass_fds) and _as_root(),
                                         nproc),
            close_fds=True,
            pass_fds=pass_fds,  # bubblewrap reads the seccomp filter and user namespace from these
        )
    finally:
        os.close(log)
    proc.cgroup = cgroup
    return proc
