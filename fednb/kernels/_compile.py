"""Compiling the Numba kernels ahead of use, and saying so when a compile cannot be avoided.

Numba compiles a kernel on its first call with each input type and caches the machine
code on disk (``cache=True``; the selection networks of :mod:`._select` are generated per
N and cached beside their source). A first call on a fresh machine can take long: Krum's
float32 Gram kernel and a median network of dozens of rows take tens of seconds.
:func:`precompile` (``python -m fednb.kernels --precompile``, run by ``make install`` and
Binder's ``postBuild``) pays that once, at install; :func:`first_use` tells the user,
on stderr, when a kernel's first call in a process runs longer than
:data:`NOTICE_AFTER_S` (that is a compile: cached code loads in milliseconds).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["NOTICE_AFTER_S", "first_use", "precompile"]

NOTICE_AFTER_S = 2.0
"""A kernel's first call running this long is compiling: the user is told why it waits."""

_seen: set[tuple[object, ...]] = set()
_seen_lock = threading.Lock()
_quiet = threading.Event()  # set while precompile() reports its own progress


@contextlib.contextmanager
def first_use(*key: object, what: str) -> Iterator[None]:
    """Around a kernel call: the first time ``key`` is used in this process, print a notice
    on stderr if the call is still running after :data:`NOTICE_AFTER_S` (a compile)."""
    with _seen_lock:
        fresh = key not in _seen
        _seen.add(key)
    if not fresh:
        yield
        return
    timer = threading.Timer(NOTICE_AFTER_S, _notice, (what,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _notice(what: str) -> None:
    if _quiet.is_set():
        return
    print(f"fednb: compiling {what} on its first use on this machine (once: the machine code is "
          "cached; `python -m fednb.kernels --precompile` does this at install)", file=sys.stderr,
          flush=True)


def precompile(median_sizes: Sequence[int] = tuple(range(2, 17)), *,
               log: Callable[[str], None] = print) -> float:
    """Compile (or load from the cache) every CPU kernel for float32 and float64 input, and
    the median and trimmed-mean networks of ``median_sizes`` rows; returns the seconds taken.

    Nothing is compiled where the backend is not Numba's (``FEDNB_BACKEND=numpy``, no
    Numba): the NumPy references need no compiling.
    """
    from fednb import kernels

    if kernels.backend() == "numpy":
        log("fednb.kernels: backend numpy, nothing to compile")
        return 0.0
    t0 = time.perf_counter()
    _quiet.set()
    try:
        _precompile(median_sizes, log)
    finally:
        _quiet.clear()
    total = time.perf_counter() - t0
    log(f"fednb.kernels: {kernels.backend()} kernels ready in {total:.1f} s")
    return total


def _precompile(median_sizes: Sequence[int], log: Callable[[str], None]) -> None:
    from fednb import kernels

    for dtype in (np.float32, np.float64):
        x = np.linspace(-1.0, 1.0, 4096, dtype=dtype)
        rows = [x, x[::-1].copy(), x * 2]

        def summed(x: np.ndarray = x) -> None:
            kernels.weighted_sum_checked([x, x], [0.5, 0.5])

        def distances(rows: list[np.ndarray] = rows) -> None:
            kernels.sq_distances(rows)
            kernels.sq_distances(rows, exact=True)

        _timed(log, f"weighted sum ({np.dtype(dtype).name})", summed)
        _timed(log, f"Krum's distances ({np.dtype(dtype).name})", distances)
        for n in median_sizes:
            _timed(log, f"median and trimmed mean of {n} rows ({np.dtype(dtype).name})",
                   _middle(np.stack([x * (i + 1) for i in range(n)])))
    u = np.random.default_rng(0).uniform(0.01, 0.99, 256)
    q = np.linspace(0.0, 1.0, 64).reshape(32, 2)

    def noise() -> None:
        kernels.box_muller(u, 1.0, np.empty(128), np.empty(128))
        kernels.stochastic_round(u, 4.0, 1.0, np.arange(256, dtype=np.uint32))

    def query() -> None:
        kernels.clipped_sum(q, 0.0, 1.0)
        kernels.clipped_histogram(q, 0.0, 1.0, 4)
        kernels.quantile_pick(np.sort(q[:, 0]), 0.0, 1.0, 16.0, 1.0, 0.5)

    _timed(log, "DP noise and secure rounding", noise)
    _timed(log, "query statistics", query)


def _middle(stacked: np.ndarray) -> Callable[[], None]:
    """Every network of ``stacked``'s row count: the median and each trimmed mean."""
    from fednb import kernels

    def run() -> None:
        kernels.coordinate_median(stacked)
        for k in range(1, (stacked.shape[0] + 1) // 2):
            kernels.trimmed_mean(stacked, k)

    return run


def _timed(log: Callable[[str], None], what: str, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    log(f"  {what}: {time.perf_counter() - t0:.1f} s")
