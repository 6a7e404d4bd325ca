"""Escapes from the worker sandbox, tried from inside real bubblewrap sandboxes.

Each test starts a real sandbox with :func:`fednb.domain.runner._sandbox.launch` (the path
every worker takes) running a small script that tries several escapes and prints one JSON
line of verdicts (errno names), or, in the last two, submits the attack as an approved run
to a live domain over HTTP and reads the verdicts from the owner's log. Every assertion
names the defence itself: the seccomp verdict (a call the kernel would answer with EBADF,
EFAULT or success answers EPERM or ENOSYS), the mount being read-only, a tmpfs's size, the
uid the host sees. None waits for a timeout.

==  ============================================  ==================================  =========
#   attempt                                       defence                             verdict
==  ============================================  ==================================  =========
1   forked child: unshare(NEWUSER|NEWNET), then   seccomp: unshare denied             EPERM
    mount tmpfs + NETLINK_NETFILTER socket
2   clone(CLONE_NEWUSER)                          seccomp: clone's CLONE_NEW* flags   EPERM
3   clone3(CLONE_NEWUSER)                         seccomp: clone3 (flags in memory)   ENOSYS
4   setns(-1, CLONE_NEWNET)                       seccomp (the kernel says EBADF)     EPERM
5   unshare(0)                                    seccomp (the kernel says success)   EPERM
6   bpf(BPF_MAP_CREATE, NULL)                     seccomp                             EPERM
7   io_uring_setup(1, NULL)                       seccomp (the kernel says EFAULT)    EPERM
8   keyctl(GET_KEYRING_ID, session)               seccomp (the kernel says success)   EPERM
9   perf_event_open(NULL)                         seccomp (the kernel says EFAULT)    EPERM
10  userfaultfd(UFFD_USER_MODE_ONLY)              seccomp                             EPERM
11  name_to_handle_at("/usr")                     seccomp                             EPERM
12  open_by_handle_at(-1, NULL)                   seccomp                             EPERM
13  personality(READ_IMPLIES_EXEC)                seccomp (the kernel says success)   EPERM
14  kexec_load                                    seccomp                             EPERM
15  init_module                                   seccomp                             EPERM
16  mount(NULL, NULL)                             seccomp (the kernel says EFAULT)    EPERM
17  umount2(NULL)                                 seccomp (the kernel says EFAULT)    EPERM
18  chroot(NULL)                                  seccomp (the kernel says EFAULT)    EPERM
19  pivot_root(NULL, NULL)                        seccomp                             EPERM
20  ptrace(SEIZE) of pid 1 from a child           seccomp                             EPERM
21  ptrace(SEIZE) of a sibling                    seccomp                             EPERM
22  process_vm_readv of pid 1 from a child        seccomp                             EPERM
23  pidfd_getfd of pid 1's stdin from a child     seccomp                             EPERM
24  socket(AF_NETLINK, NETLINK_NETFILTER)         seccomp: socket families            EPERM
25  socket(AF_PACKET), socket(AF_VSOCK)           seccomp: socket families            EPERM
26  connect to a port on the host's 127.0.0.1     own network namespace               ECONNREFUSED
27  connect to an outside address (192.0.2.1)     own network namespace: no route     ENETUNREACH
28  create a file in /dev                         /dev remounted read-only            EROFS
29  mknod a file in /dev                          /dev remounted read-only            EROFS
30  mknod a character device in /tmp              no CAP_MKNOD                        EPERM
31  write to / and to /usr                        read-only root and binds            EROFS
32  fill /dev/shm past the scratch cap            sized tmpfs (8 MiB here)            ENOSPC
33  read a root-owned 0600 file in a bound dir    sandbox runs as host uid 65534      EACCES
34  the worker's uid as the host sees it          unprivileged host uid               65534
35  setuid(0), capset(all)                        no capabilities, uid 65534          EPERM
36  HTTP run: unshare(NEWUSER) from a child       seccomp, in the domain's worker     EPERM
37  HTTP run: ptrace / write /proc/1/mem of the   seccomp; the zygote non-dumpable    EPERM,
    zygote                                                                            EACCES
38  HTTP run: /dev, /dev/shm, uid map             read-only /dev, sized shm, uid      EROFS
==  ============================================  ==================================  =========

Out of scope here (docs/reliability.md): bugs in the kernel code of system calls the
filter allows, and side channels (cache timing, ``/proc`` counters of the sandbox's own
processes).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.domain.runner import _sandbox
from fednb.domain.runner._sandbox import Limits, SandboxSpec, launch
from tests.adversarial.conftest import DPDomain, require_sandbox
from tests.conftest import BC_BOUNDS, breast_cancer_dataset

SCRATCH = 8 << 20  # bytes: each writable tmpfs of these sandboxes

_NR = {  # system call numbers: asm/unistd_64.h (x86_64), asm-generic/unistd.h (aarch64)
    "x86_64": {"unshare": 272, "clone": 56, "clone3": 435, "setns": 308, "bpf": 321,
               "io_uring_setup": 425, "keyctl": 250, "perf_event_open": 298, "userfaultfd": 323,
               "name_to_handle_at": 303, "open_by_handle_at": 304, "personality": 135,
               "kexec_load": 246, "init_module": 175, "mount": 165, "umount2": 166, "chroot": 161,
               "pivot_root": 155, "ptrace": 101, "process_vm_readv": 310, "pidfd_open": 434,
               "pidfd_getfd": 438, "capset": 126, "setuid": 105},
    "aarch64": {"unshare": 97, "clone": 220, "clone3": 435, "setns": 268, "bpf": 280,
                "io_uring_setup": 425, "keyctl": 219, "perf_event_open": 241, "userfaultfd": 282,
                "name_to_handle_at": 264, "open_by_handle_at": 265, "personality": 92,
                "kexec_load": 104, "init_module": 105, "mount": 40, "umount2": 39, "chroot": 51,
                "pivot_root": 41, "ptrace": 117, "process_vm_readv": 270, "pidfd_open": 434,
                "pidfd_getfd": 438, "capset": 91, "setuid": 146},
}

# the tools every attack script starts with: raw system calls, forked children, verdicts
PRELUDE = """
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(sys.argv[1])
V = {}

def sc(name, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return ret if ret >= 0 else errno.errorcode[ctypes.get_errno()]

def ok(ret):
    return "OK" if isinstance(ret, int) else ret

def call(f):
    try:
        f()
        return "OK"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            out = fn()
        except BaseException as exc:
            out = "raised " + repr(exc)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)

def forked(ret):
    # a raw clone/clone3 that made a child: the child leaves at once, the parent reaps it
    if ret == 0:
        os._exit(0)
    if isinstance(ret, int):
        os.waitpid(ret, 0)
        return "OK"
    return ret
"""


def nr_table() -> dict[str, int]:
    try:
        return _NR[platform.machine()]
    except KeyError:
        pytest.fail(f"no system call table for {platform.machine()} in this test")


def start(tmp_path: Path, script: str, ro_binds: list[tuple[Path, str]] | None = None) -> Any:
    """A real sandbox (the workers' launch path) running ``script`` after the prelude."""
    require_sandbox()
    code = PRELUDE + textwrap.dedent(script)
    spec = SandboxSpec([sys.executable, "-I", "-c", code, json.dumps(nr_table())], tmp_path / "work",
                       ro_binds or [], limits=Limits(scratch_bytes=SCRATCH))
    return launch(spec, "bubblewrap")


def finish(tmp_path: Path, proc: Any, stdin: bytes = b"") -> dict[str, Any]:
    try:
        out, _ = proc.communicate(stdin, timeout=300)
    finally:
        proc.cleanup()
    log = (tmp_path / "work" / "log.txt").read_text(errors="replace")
    lines = out.decode().strip().splitlines()
    assert lines, f"the sandbox printed nothing (exit {proc.returncode}); its log:\n{log}"
    verdicts: dict[str, Any] = json.loads(lines[-1])
    return verdicts


def sandboxed(tmp_path: Path, script: str, ro_binds: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
    """Run ``script`` in a real sandbox and return the verdicts it printed."""
    return finish(tmp_path, start(tmp_path, script, ro_binds))


NAMESPACES = """
def nested():
    got = ok(sc("unshare", 0x10000000 | 0x40000000))  # CLONE_NEWUSER | CLONE_NEWNET
    if got != "OK":
        return [got]
    # the attack of issue 18: capabilities inside the new namespace open the kernel's surface
    mounted = ok(sc("mount", b"none", b"/tmp", b"tmpfs", 0, None))
    netfilter = call(lambda: socket.socket(16, socket.SOCK_RAW, 12))
    return [got, mounted, netfilter]

V["unshare_in_child"] = in_child(nested)[0]
V["clone_newuser"] = forked(sc("clone", 0x10000000 | 17, 0, 0, 0, 0))  # | SIGCHLD
args = (ctypes.c_uint64 * 8)(0x10000000, 0, 0, 0, 17, 0, 0, 0)  # flags, ..., exit_signal
V["clone3_newuser"] = forked(sc("clone3", ctypes.byref(args), ctypes.sizeof(args)))
V["setns_bad_fd"] = ok(sc("setns", -1, 0x40000000))
V["unshare_nothing"] = ok(sc("unshare", 0))
V["seccomp_mode"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
import threading
t = threading.Thread(target=lambda: V.__setitem__("thread", "OK"))
t.start(); t.join()
print(json.dumps(V))
"""


def test_nested_user_namespaces_are_refused_by_the_seccomp_filter(tmp_path: Path) -> None:
    v = sandboxed(tmp_path, NAMESPACES)
    assert v["seccomp_mode"] == "2"  # SECCOMP_MODE_FILTER
    assert v["unshare_in_child"] == "EPERM"
    assert v["clone_newuser"] == "EPERM"
    assert v["clone3_newuser"] == "ENOSYS"  # glibc falls back to clone, whose flags are checked
    assert v["setns_bad_fd"] == "EPERM"  # the kernel would have said EBADF: the filter answered
    assert v["unshare_nothing"] == "EPERM"  # the kernel would have said yes
    assert v["thread"] == "OK"  # clone without CLONE_NEW* flags: threads still work


KERNEL_SURFACE = """
V["bpf"] = ok(sc("bpf", 0, None, 0))
V["io_uring_setup"] = ok(sc("io_uring_setup", 1, None))
V["keyctl"] = ok(sc("keyctl", 0, -3, 1))  # KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create
V["perf_event_open"] = ok(sc("perf_event_open", None, 0, -1, -1, 0))
V["userfaultfd"] = ok(sc("userfaultfd", 1))  # UFFD_USER_MODE_ONLY: allowed to anyone otherwise
handle = ctypes.create_string_buffer(b"\\x40" + b"\\0" * 127)  # handle_bytes = 64
mount_id = ctypes.c_int()
V["name_to_handle_at"] = ok(sc("name_to_handle_at", -100, b"/usr", handle, ctypes.byref(mount_id), 0))
V["open_by_handle_at"] = ok(sc("open_by_handle_at", -1, None, 0))
V["personality"] = ok(sc("personality", 0x0400000))  # READ_IMPLIES_EXEC
sc("personality", 0)
V["kexec_load"] = ok(sc("kexec_load", 0, 0, None, 0))
V["init_module"] = ok(sc("init_module", None, 0, b""))
V["mount"] = ok(sc("mount", None, None, None, 0, None))
V["umount2"] = ok(sc("umount2", None, 0))
V["chroot"] = ok(sc("chroot", None))
V["pivot_root"] = ok(sc("pivot_root", None, None))
print(json.dumps(V))
"""


def test_the_kernels_attack_surface_is_filtered(tmp_path: Path) -> None:
    v = sandboxed(tmp_path, KERNEL_SURFACE)
    assert v == dict.fromkeys(["bpf", "io_uring_setup", "keyctl", "perf_event_open", "userfaultfd",
                               "name_to_handle_at", "open_by_handle_at", "personality", "kexec_load",
                               "init_module", "mount", "umount2", "chroot", "pivot_root"], "EPERM")


OTHER_PROCESSES = """
secret = ctypes.create_string_buffer(b"pid 1's secret")

class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def seize(pid):
    return ok(sc("ptrace", 0x4206, pid, 0, 0))  # PTRACE_SEIZE: the tracee is not stopped

def read_parent():
    mine = ctypes.create_string_buffer(64)
    local = IOVec(ctypes.cast(mine, ctypes.c_void_p), 14)
    remote = IOVec(ctypes.cast(secret, ctypes.c_void_p), 14)
    return ok(sc("process_vm_readv", os.getppid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))

def steal_fd():
    pidfd = sc("pidfd_open", os.getppid(), 0)
    return ok(sc("pidfd_getfd", pidfd, 0, 0)) if isinstance(pidfd, int) else "pidfd_open " + pidfd

V["ptrace_pid1"] = in_child(lambda: seize(1))
r, w = os.pipe()
sibling = os.fork()
if sibling == 0:
    os.read(r, 1)
    os._exit(0)
V["ptrace_sibling"] = in_child(lambda: seize(sibling))
os.write(w, b"x")
os.waitpid(sibling, 0)
V["process_vm_readv"] = in_child(read_parent)
V["pidfd_getfd"] = in_child(steal_fd)
print(json.dumps(V))
"""


def test_other_processes_of_the_sandbox_are_out_of_reach(tmp_path: Path) -> None:
    v = sandboxed(tmp_path, OTHER_PROCESSES)
    assert v == {"ptrace_pid1": "EPERM", "ptrace_sibling": "EPERM", "process_vm_readv": "EPERM",
                 "pidfd_getfd": "EPERM"}


NETWORK = """
host_port = int(sys.argv[2])
def connect(addr):
    s = socket.socket()
    s.settimeout(60)
    return call(lambda: s.connect(addr))
V["host_loopback"] = connect(("127.0.0.1", host_port))
V["outside"] = connect(("192.0.2.1", 80))
V["netlink_netfilter"] = call(lambda: socket.socket(16, socket.SOCK_RAW, 12))
V["packet"] = call(lambda: socket.socket(17, socket.SOCK_RAW, 0))
V["vsock"] = call(lambda: socket.socket(40, socket.SOCK_STREAM, 0))
V["unix"] = call(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
print(json.dumps(V))
"""


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A port listening on the host's loopback (what the sandbox must not reach)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_the_network_is_the_sandboxs_own_and_netlink_is_refused(tmp_path: Path, host_listener: int) -> None:
    require_sandbox()
    code = PRELUDE + textwrap.dedent(NETWORK)
    spec = SandboxSpec([sys.executable, "-I", "-c", code, json.dumps(nr_table()), str(host_listener)],
                       tmp_path / "work", limits=Limits(scratch_bytes=SCRATCH))
    v = finish(tmp_path, launch(spec, "bubblewrap"))
    assert v["host_loopback"] == "ECONNREFUSED"  # its 127.0.0.1 is its own, with nothing listening
    assert v["outside"] == "ENETUNREACH"  # no route at all: refused at once, no timeout
    assert v["netlink_netfilter"] == v["packet"] == v["vsock"] == "EPERM"
    assert v["unix"] == "OK"


FILESYSTEM = """
import stat
V["dev_create"] = call(lambda: open("/dev/evil", "w"))
V["dev_mknod"] = call(lambda: os.mknod("/dev/evil2", stat.S_IFREG | 0o644))
V["tmp_chardev"] = call(lambda: os.mknod("/tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
V["dev_read_only"] = bool(os.statvfs("/dev").f_flag & os.ST_RDONLY)
V["root_write"] = call(lambda: open("/evil", "w"))
V["usr_write"] = call(lambda: open("/usr/evil", "w"))
def null():
    with open("/dev/null", "w") as f:
        f.write("still a device")
V["dev_null"] = call(null)
print(json.dumps(V))
"""


def test_dev_and_the_root_are_read_only(tmp_path: Path) -> None:
    v = sandboxed(tmp_path, FILESYSTEM)
    assert v["dev_read_only"] is True
    assert v["dev_create"] == v["dev_mknod"] == "EROFS"
    assert v["tmp_chardev"] == "EPERM"  # no CAP_MKNOD
    assert v["root_write"] == v["usr_write"] == "EROFS"
    assert v["dev_null"] == "OK"  # device nodes on a read-only /dev still work


SHM = """
st = os.statvfs("/dev/shm")
V["size"] = st.f_blocks * st.f_frsize
written, chunk = 0, b"x" * (1 << 20)
def fill():
    global written
    with open("/dev/shm/fill", "wb", buffering=0) as f:
        for _ in range(min(64, 2 * V["size"] // len(chunk))):
            written += f.write(chunk)
V["fill"] = call(fill)
V["written"] = written
print(json.dumps(V))
"""


def test_dev_shm_is_a_tmpfs_capped_at_the_scratch_size(tmp_path: Path) -> None:
    v = sandboxed(tmp_path, SHM)
    assert v["size"] == SCRATCH
    assert v["fill"] == "ENOSPC" and v["written"] <= SCRATCH


ROOT_FILES = """
V["public"] = call(lambda: open("/data/probe/public").read())
V["secret"] = call(lambda: open("/data/probe/secret").read())
V["uid"], V["gid"], V["groups"] = os.getuid(), os.getgid(), os.getgroups()
V["setuid0"] = ok(sc("setuid", 0))
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
data = (ctypes.c_uint32 * 6)(*([0xFFFFFFFF] * 6))  # effective, permitted, inheritable x 2
V["capset_all"] = ok(sc("capset", ctypes.byref(header), ctypes.byref(data)))
print("ready", flush=True)
sys.stdin.read()  # the test looks at this process from the host meanwhile
print(json.dumps(V))
"""


def host_uids(bwrap_pid: int) -> dict[int, int]:
    """The real uid of every process below ``bwrap_pid``, as the host's /proc shows it."""
    uids, todo = {}, [bwrap_pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        todo += [int(c) for c in children]
        if pid != bwrap_pid:
            uids[pid] = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    return uids


def test_root_owned_files_under_a_bound_path_are_unreadable(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the domain runs as a non-root user here: the sandbox's uid is that user's already")
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o755)
    probe.chmod(0o755)
    (probe / "public").write_text("anyone may read this")
    (probe / "public").chmod(0o644)
    (probe / "secret").write_text("root's only")
    (probe / "secret").chmod(0o600)
    proc = start(tmp_path, ROOT_FILES, [(probe, "/data/probe")])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        outside = host_uids(proc.pid)
    finally:
        v = finish(tmp_path, proc, b"go")
    assert outside and 0 not in outside.values(), outside  # no process of the sandbox is root outside
    assert set(outside.values()) == {_sandbox.SANDBOX_UID}
    assert v["public"] == "OK"
    assert v["secret"] == "EACCES"
    assert (v["uid"], v["gid"], v["groups"]) == (65534, 65534, [])
    assert v["setuid0"] == v["capset_all"] == "EPERM"


# -- the same walls from a run on a live domain, over HTTP ---------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DPDomain, str]]:
    """A live bubblewrap domain with a no-DP scientist ``mallory`` (whose results the owner
    holds; the verdicts come back through the owner's log)."""
    require_sandbox()
    dom = Domain.create(tmp_path_factory.mktemp("escapes") / "home", name="Adversarial General")
    owner, eve = dom.add_user("olivia", role="owner"), dom.add_user("eve")
    token = dom.add_user("mallory")
    dom.policy.update(allow_no_dp=["mallory"], run_timeout_s=120.0)
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds=BC_BOUNDS)
    domain = DPDomain(dom, dom.serve(port=0), owner, eve)
    assert dom.sandbox_mode == "bubblewrap"
    yield domain, token
    domain.server.stop()


def run_and_read_log(live: tuple[DPDomain, str], fn: fednb.RemoteFunction) -> dict[str, Any]:
    domain, token = live
    req = fn.request(fednb.connect(domain.url, token=token), "breast-cancer")
    domain.owner().requests.get(req.id).approve()
    info = req.run().wait(300)
    log = domain.dom.runs.owner_view(info.id).owner_log or ""
    lines = [line for line in log.splitlines() if line.startswith("VERDICTS ")]
    assert lines, f"run {info.status}/{info.reason}; owner log:\n{log}"
    verdicts: dict[str, Any] = json.loads(lines[-1][len("VERDICTS "):])
    return verdicts


@fednb.remote
def process_escapes(data):
    import ctypes
    import errno
    import json
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr = {"x86_64": (272, 101), "aarch64": (97, 117)}[os.uname().machine]
    verdicts = {}

    def child(fn):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, fn().encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        return out

    def raw(n, *args):
        ret = libc.syscall(n, *[ctypes.c_long(a) for a in args])
        return "OK" if ret >= 0 else errno.errorcode[ctypes.get_errno()]

    def poke_mem():
        try:
            os.close(os.open("/proc/1/mem", os.O_RDWR))
            return "OK"
        except OSError as exc:
            return errno.errorcode[exc.errno]

    verdicts["unshare"] = child(lambda: raw(nr[0], 0x10000000 | 0x40000000))
    verdicts["ptrace_pid1"] = child(lambda: raw(nr[1], 0x4206, 1, 0, 0))
    verdicts["proc1_mem"] = child(poke_mem)
    print("VERDICTS " + json.dumps(verdicts), flush=True)
    return np.zeros(1)


def test_a_run_on_a_live_domain_meets_the_filter(live: tuple[DPDomain, str]) -> None:
    v = run_and_read_log(live, process_escapes)
    assert v["unshare"] == "EPERM"
    assert v["ptrace_pid1"] == "EPERM"
    assert v["proc1_mem"] in ("EACCES", "EPERM")  # pid 1 is the warm worker: never writable


@fednb.remote
def filesystem_escapes(data):
    import errno
    import json
    import os

    def attempt(fn):
        try:
            fn()
            return "OK"
        except OSError as exc:
            return errno.errorcode[exc.errno]

    shm, tmp = os.statvfs("/dev/shm"), os.statvfs("/tmp")
    verdicts = {
        "dev_create": attempt(lambda: open("/dev/evil", "w")),
        "shm_size": shm.f_blocks * shm.f_frsize,
        "tmp_size": tmp.f_blocks * tmp.f_frsize,
        "uid_map": open("/proc/self/uid_map").read().split(),
    }
    print("VERDICTS " + json.dumps(verdicts), flush=True)
    return np.zeros(1)


def test_a_run_on_a_live_domain_sees_a_read_only_dev_and_a_capped_shm(live: tuple[DPDomain, str]) -> None:
    v = run_and_read_log(live, filesystem_escapes)
    assert v["dev_create"] == "EROFS"
    assert v["shm_size"] == v["tmp_size"] > 0  # /dev/shm sized like the other scratch tmpfs
    if os.geteuid() == 0:  # the sandbox's uid 65534 is the host's 65534, never root (0)
        assert v["uid_map"][v["uid_map"].index("65534") + 1] == str(_sandbox.SANDBOX_UID)

