"""How many processes a sandbox may run: ``RLIMIT_NPROC`` where no pids cgroup caps it.

``RLIMIT_NPROC`` counts the tasks (processes and threads) of a real uid, and a fork fails
with ``EAGAIN`` past it. Since Linux 5.14 the count is kept per user namespace, in a chain:
a fork inside a sandbox is checked against the forking task's own limit for the tasks of
its uid *in its user namespace* (this sandbox's only: each sandbox has its own), and then,
one level up for each namespace above, against the limit its creator had when that
namespace was made, for all the tasks of the owner's uid there (``ucount_max``, see the
kernel's ``kernel/ucount.c``).

So where a domain runs as an ordinary user, a limit set on bubblewrap before it starts
becomes the cap on *all* the tasks of the domain's user, the domain's own threads and every
other sandbox included: with the per-worker value there, one fork bomb took the whole
allowance and every other worker's fork failed, and a user with more tasks than that (a
JupyterLab session beside the demo) could not start a worker at all. Hence two values:

- :func:`host_limit`, set before bubblewrap starts: the tasks the domain's user has now
  plus room for ``_WORKERS`` full sandboxes, a host-wide backstop only;
- :func:`sandbox_limit`, which the zygote sets on itself before any run
  (:mod:`._worker`), so it binds every process of every run: ``Limits.max_procs`` for its
  own sandbox alone, where the kernel counts per user namespace.

Before Linux 5.14 the count is the host uid's alone, shared by every sandbox of that uid;
there the zygote's limit is the backstop's share (the tasks of the uid now plus
``max_procs``), and only a pids cgroup keeps one sandbox from starving another. A domain
running as root is exempt from the limit itself (the kernel never applies it to uid 0),
while its sandboxes run as ``SANDBOX_UID`` and are counted like any other user.
"""

from __future__ import annotations

import os

__all__ = ["host_limit", "per_userns_count", "sandbox_limit", "uid_tasks"]

_WORKERS = 64
"""How many sandboxes' worth of tasks the backstop leaves room for, beyond what the
domain's user already runs."""
_PER_USERNS = (5, 14)  # the kernel that counts RLIMIT_NPROC per user namespace (ucounts)


def per_userns_count(release: str | None = None) -> bool:
    """True when this kernel (``release``, default ``os.uname().release``) counts
    ``RLIMIT_NPROC`` per user namespace, so a sandbox's limit binds its own tasks only."""
    text = os.uname().release if release is None else release
    parts = text.split(".")
    try:
        version = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return False
    return version >= _PER_USERNS


def uid_tasks(uid: int) -> int:
    """The tasks (threads of every process) whose real uid is ``uid`` on this host, as
    ``/proc`` shows them now."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def host_limit(max_procs: int, uid: int) -> int:
    """``RLIMIT_NPROC`` for bubblewrap (or the worker itself, without it) as it starts, its
    sandbox counted under the host ``uid``: a backstop over that whole uid, which never stops
    a sandbox because of the tasks the uid already had."""
    return uid_tasks(uid) + max_procs * _WORKERS


def sandbox_limit(max_procs: int, uid: int, own_userns: bool, per_userns: bool | None = None) -> int:
    """``RLIMIT_NPROC`` the zygote sets on itself before its first run: ``max_procs`` where
    the kernel counts its sandbox's tasks alone (``own_userns``: bubblewrap made the sandbox a
    user namespace; on Linux 5.14 and later, ``per_userns`` to override the probe), else
    ``max_procs`` beyond the host ``uid``'s tasks now (a share of the uid's count, which
    every process of that uid takes from)."""
    own = per_userns_count() if per_userns is None else per_userns
    if own_userns and own:
        return max_procs
    return uid_tasks(uid) + max_procs
