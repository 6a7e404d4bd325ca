"""The seccomp filter of every sandboxed worker: a classic BPF program assembled here.

bubblewrap loads it (``--seccomp FD``) after it has built the sandbox, with
``PR_SET_NO_NEW_PRIVS`` set, just before it executes the worker; every process the worker
forks inherits it and none can remove it. No library is needed: the program is a list of
``struct sock_filter`` packed with :mod:`struct`, built the way the kernel's
``samples/seccomp/bpf-direct.c`` builds one.

What it does, in order:

1. **Architecture.** ``seccomp_data.arch`` must be this machine's native one
   (``AUDIT_ARCH_X86_64`` or ``AUDIT_ARCH_AARCH64``), else the process is killed: the
   32-bit entry points (``int 0x80`` on x86_64, AArch32 on arm64) number their system
   calls differently, so a deny list of native numbers would not cover them. On x86_64
   the x32 ABI (numbers with bit 30 set, same ``arch``) is killed too.
2. **Denied outright with EPERM** (:data:`DENIED`), each for a reason:

   - ``unshare``, ``setns``: a new user namespace hands its creator every capability
     inside it, and with them the kernel code behind them (nf_tables, mounts, ...): the
     attack surface of most container escapes. Nothing a data-science job does needs
     one; ``unshare(CLONE_FILES)`` and the like go too, which nothing here uses.
   - ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API
     (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``,
     ``mount_setattr``): the sandbox's file system is fixed by the domain.
   - ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_setup``,
     ``io_uring_enter``, ``io_uring_register``: large kernel interfaces with a long list of
     privilege escalations (eBPF verifier bugs, perf races, io_uring use-after-frees;
     userfaultfd makes kernel races easy to win), and side channels (perf counters).
   - ``keyctl``, ``add_key``, ``request_key``: kernel keyrings are not namespaced.
   - ``ptrace``, ``process_vm_readv``, ``process_vm_writev``, ``pidfd_getfd``,
     ``process_madvise``, ``kcmp``: one process reading, writing or stealing from another
     inside the sandbox (a run reaching the warm worker that outlives it, or its sibling).
   - ``kexec_load``, ``kexec_file_load``, ``init_module``, ``finit_module``,
     ``delete_module``, ``reboot``, ``swapon``, ``swapoff``, ``acct``, ``quotactl``,
     ``quotactl_fd``, ``syslog``, ``lookup_dcookie``, ``settimeofday``, ``clock_settime``,
     ``clock_adjtime``, ``adjtimex``, ``vhangup``, ``fanotify_init``: administration of the
     host; the kernel asks for capabilities the worker lacks, and the filter says no
     before any of that code runs.
   - ``open_by_handle_at``, ``name_to_handle_at``: file handles open files by inode,
     around the mount tree (the "shocker" escape).
   - x86_64 only: ``iopl``, ``ioperm`` (I/O ports), ``modify_ldt`` (segment descriptors,
     CVE-2015-5157 and kin), ``uselib``.
3. ``clone3`` fails with **ENOSYS**: its flags live in memory, which seccomp cannot read,
   so it cannot be checked; ENOSYS makes glibc (2.34 and later) fall back to ``clone``.
4. ``clone`` with any ``CLONE_NEW*`` flag (namespace creation; the flags are a register:
   the low 32 bits of the first argument, all the kernel reads) fails with EPERM;
   threads and ``fork`` pass.
5. ``socket`` is allowed for ``AF_UNIX``, ``AF_INET`` and ``AF_INET6`` only (the
   sandbox's network namespace holds a loopback of its own): ``AF_NETLINK`` (routing,
   nf_tables, audit), ``AF_PACKET``, ``AF_VSOCK`` (a path to the hypervisor's host that
   no network namespace closes), ``AF_ALG`` (kernel crypto), ``AF_KEY`` and the rest fail
   with EPERM.
6. ``personality`` is allowed only to query (``0xffffffff``) or to set ``PER_LINUX``
   (0): ``READ_IMPLIES_EXEC`` makes every readable mapping executable and
   ``ADDR_NO_RANDOMIZE`` turns off address-space randomisation.
7. ``ioctl`` ``TIOCSTI`` and ``TIOCLINUX`` (typing into a terminal) fail with EPERM.

Everything else is allowed: the filter is a deny list (a list of what to allow breaks
with every new NumPy, BLAS or glibc). Kernel bugs in allowed system calls stay out of
scope (docs/reliability.md).
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass

__all__ = ["DENIED", "ArchTable", "SeccompUnsupported", "arch_table", "filter_fd", "filter_program"]

# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24  # args: low 32 bits (little-endian)

_CLONE_NEW = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
_PERSONALITIES = (0xFFFFFFFF, 0)  # query, PER_LINUX
_TTY_IOCTLS = (0x5412, 0x541C)  # TIOCSTI, TIOCLINUX
_X32_BIT = 0x40000000

DENIED = (
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
    "keyctl", "add_key", "request_key",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise", "kcmp",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "modify_ldt", "uselib",
)
"""System calls that fail with EPERM whatever their arguments (those a machine lacks are skipped)."""

# numbers from the kernel's uapi headers: asm/unistd_64.h (x86_64), asm-generic/unistd.h (arm64)
_X86_64 = {
    "unshare": 272, "setns": 308, "clone": 56, "clone3": 435, "mount": 165, "umount2": 166,
    "pivot_root": 155, "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 250, "add_key": 248, "request_key": 249, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "process_madvise": 440,
    "kcmp": 312, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179,
    "quotactl_fd": 443, "syslog": 103, "lookup_dcookie": 212, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "vhangup": 153,
    "fanotify_init": 300, "open_by_handle_at": 304, "name_to_handle_at": 303, "iopl": 172,
    "ioperm": 173, "modify_ldt": 154, "uselib": 134, "socket": 41, "personality": 135, "ioctl": 16,
}
_AARCH64 = {
    "unshare": 97, "setns": 268, "clone": 220, "clone3": 435, "mount": 40, "umount2": 39,
    "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 280,
    "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 219, "add_key": 217, "request_key": 218, "ptrace": 117,
    "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438, "process_madvise": 440,
    "kcmp": 272, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60,
    "quotactl_fd": 443, "syslog": 116, "lookup_dcookie": 18, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "vhangup": 58,
    "fanotify_init": 262, "open_by_handle_at": 265, "name_to_handle_at": 264, "socket": 198,
    "personality": 92, "ioctl": 29,
}


class SeccompUnsupported(RuntimeError):
    """This machine's architecture has no filter here (only x86_64 and arm64 do)."""


@dataclass(frozen=True)
class ArchTable:
    """One architecture: its ``AUDIT_ARCH_*`` value, system call numbers, and whether the
    x32 ABI shares its ``arch`` value (x86_64)."""

    audit_arch: int
    numbers: dict[str, int]
    x32: bool


_ARCHES = {
    "x86_64": ArchTable(0xC000003E, _X86_64, x32=True),  # AUDIT_ARCH_X86_64
    "aarch64": ArchTable(0xC00000B7, _AARCH64, x32=False),  # AUDIT_ARCH_AARCH64
}
_ARCHES["amd64"], _ARCHES["arm64"] = _ARCHES["x86_64"], _ARCHES["aarch64"]


def arch_table(machine: str | None = None) -> ArchTable:
    """The :class:`ArchTable` of ``machine`` (default: this one's ``platform.machine()``)."""
    machine = platform.machine() if machine is None else machine
    try:
        return _ARCHES[machine.lower()]
    except KeyError:
        raise SeccompUnsupported(
            f"no seccomp filter for the {machine} architecture (x86_64 and aarch64 only): "
            "run the domain on one of those, or with --insecure-demo on a test machine") from None


class _Asm:
    """A tiny assembler: instructions with symbolic jump targets, resolved on ``bytes()``."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def _offset(self, i: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        off = self.labels[target] - (i + 1)
        if not 0 <= off <= 255:
            raise ValueError(f"jump to {target} out of reach ({off})")  # classic BPF: 8-bit forward jumps
        return off

    def assemble(self) -> bytes:
        return b"".join(struct.pack("=HBBI", code, self._offset(i, jt), self._offset(i, jf), k)
                        for i, (code, jt, jf, k) in enumerate(self.code))


def filter_program(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this one) as bytes, ready for ``--seccomp FD``.

    Raises
    ------
    SeccompUnsupported
        On an architecture other than x86_64 and aarch64.
    """
    table = arch_table(machine)
    nr = table.numbers
    a = _Asm()
    a.op(_LD_W_ABS, _OFF_ARCH)
    a.op(_JEQ_K, table.audit_arch, 0, "kill")
    a.op(_LD_W_ABS, _OFF_NR)
    if table.x32:
        a.op(_JGE_K, _X32_BIT, "kill", 0)
    for name in DENIED:
        if name in nr:
            a.op(_JEQ_K, nr[name], "eperm", 0)
    a.op(_JEQ_K, nr["clone3"], "enosys", 0)
    a.op(_JEQ_K, nr["clone"], "clone", 0)
    a.op(_JEQ_K, nr["socket"], "socket", 0)
    a.op(_JEQ_K, nr["personality"], "personality", 0)
    a.op(_JEQ_K, nr["ioctl"], "ioctl", "allow")
    a.label("clone")
    a.op(_LD_W_ABS, _OFF_ARG0)
    a.op(_JSET_K, _CLONE_NEW, "eperm", "allow")
    a.label("socket")
    a.op(_LD_W_ABS, _OFF_ARG0)
    for family in _SOCKET_FAMILIES:
        a.op(_JEQ_K, family, "allow", 0)
    a.op(_RET_K, _RET_ERRNO | errno.EPERM)
    a.label("personality")
    a.op(_LD_W_ABS, _OFF_ARG0)
    for persona in _PERSONALITIES:
        a.op(_JEQ_K, persona, "allow", 0)
    a.op(_RET_K, _RET_ERRNO | errno.EPERM)
    a.label("ioctl")
    a.op(_LD_W_ABS, _OFF_ARG1)
    for request in _TTY_IOCTLS:
        a.op(_JEQ_K, request, "eperm", 0)
    a.label("allow")
    a.op(_RET_K, _RET_ALLOW)
    a.label("eperm")
    a.op(_RET_K, _RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(_RET_K, _RET_ERRNO | errno.ENOSYS)
    a.label("kill")
    a.op(_RET_K, _RET_KILL_PROCESS)
    return a.assemble()


def filter_fd(machine: str | None = None) -> int:
    """A memory file holding :func:`filter_program`, read from its start: the caller hands it
    to bubblewrap (``pass_fds``) and closes it once bubblewrap has started."""
    fd = os.memfd_create("fednb-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, filter_program(machine))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
