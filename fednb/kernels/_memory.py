"""Keep freed memory in the process while a simulation runs (glibc only).

A simulated round allocates the same large arrays every round: each hospital's copy of the
weights, what its code returns, the sum. glibc gives freed memory above its trim threshold
back to the kernel at once (and serves allocations above its mmap threshold by a fresh
mapping each time), so every round pays a page fault for each 4 KiB page again: about 2 ms
per 4 MB array on the virtual machines we measured, as much as the arithmetic of a whole
no-op round at N=10, P=1e6 (``bench/rounds.py``). :func:`keep_freed_memory` raises both
thresholds for the run, so that freed arrays are reused, and gives the memory back at the
end (``malloc_trim``).

What it does not do: arrays above 32 MiB (glibc's ceiling for the mmap threshold) are
still mapped afresh each time; memory freed during the run stays in the process until it
ends (a function's one-off large temporaries too); and after the first run glibc's own
dynamic thresholds stay off for the process (they are left where that rule would put them).

It cannot be undone: glibc has no call that reads the thresholds back, and no call that
turns its dynamic rule on again once ``mallopt`` has set one. So it is made only where
asked for: ``simulate`` (the user's notebook kernel) enters :func:`keep_freed_memory_if_asked`,
which does nothing unless ``FEDNB_KEEP_FREED_MEMORY=1`` (``bench/rounds.py``, or a
scientist who accepts the process-wide change for faster large-model rounds).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["KEEP_FREED_MEMORY_ENV", "keep_freed_memory", "keep_freed_memory_if_asked"]

KEEP_FREED_MEMORY_ENV = "FEDNB_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit systems
AFTER_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's dynamic rule sets beside that threshold
DURING_TRIM_THRESHOLD = 2**31 - 1  # the most a C int holds: in effect, no trim during the run
_lock = threading.Lock()
_active = 0  # runs inside the context now: the first sets the thresholds, the last restores them


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """A context in which glibc keeps freed memory for reuse instead of returning it to the
    kernel; yields whether it could (False off glibc, where it does nothing).

    On exit, memory not in use is returned (``malloc_trim(0)``), and the thresholds are left
    where glibc's own dynamic rule puts them once a 32 MiB array has been freed (mmap above
    32 MiB, trim above 64 MiB): setting them turns that rule off for the process.
    """
    global _active
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        _active += 1
        if _active == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, DURING_TRIM_THRESHOLD)
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:  # nested or concurrent runs: only the last one out gives memory back
                libc.mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                libc.malloc_trim(0)


@contextlib.contextmanager
def keep_freed_memory_if_asked() -> Iterator[bool]:
    """:func:`keep_freed_memory` where ``FEDNB_KEEP_FREED_MEMORY=1`` (read on entry), else a
    context that changes nothing and yields False: the process's allocator stays as it was."""
    if os.environ.get(KEEP_FREED_MEMORY_ENV) != "1":
        yield False
        return
    with keep_freed_memory() as kept:
        yield kept
