"""The weighted sum of N flat updates in one pass over them (Numba, split over the cores).

The output is built a block of 2048 coordinates at a time: a float64 accumulator the size
of the block stays in the L1 cache while the updates' slices of the block are added into
it, eight updates at a time (then four, two, one); the last group stores the block into
the output as it adds (a separate pass to write the block was 5-10% slower).
Memory traffic is one read of each update and one write of the total, whatever N: a BLAS
axpy per update reads and writes the whole total N times. Reading eight updates together
keeps eight memory streams in flight: one stream at a time reads at about half the
bandwidth on one core. Accumulating in float64 costs nothing here (the loop is
memory-bound), so a sum of float32 updates is as exact as a float64 one before it is
stored in the output dtype.

The kernel reaches the updates through their addresses (an int64 array per input dtype),
so one compiled function serves every N: the caller keeps the arrays alive and checks that
they are C-contiguous, of one length, float32 or float64. It also says whether every output
value is finite, as it stores them.

Against the float32 sum it replaces (four updates per pass over a float32 total, then a
multiply into the float64 mean and a finiteness scan), the whole mean takes 0.75-0.95x the
time here: 59 against 77 ms at N=10, P=1e7; 37 against 39 ms at N=100, P=1e6.

From :data:`PARALLEL_MIN` values read (N x P), the coordinates are split into one range per
core (up to :data:`MAX_THREADS`), summed at once by the calling thread and a small pool
(the kernel is ``nogil``): one core alone does not reach the memory's bandwidth. Here, on
2 cores, that is 1.5-2.1x faster (timed apart from the bench, one thread against two:
N=10, P=1e6: 1.6 against 0.9 ms; N=100, P=1e6: 30 against 14 ms). Below it, one thread
is faster than handing work to another. The calling thread, once its own range is done,
takes back every range no pool thread has started (the pool is busy with another call's,
or its core with another process), and the call returns only when every range is done:
the vectors it reads stay alive until then. A forked child starts a pool of its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from fednb.kernels._compat import require_tested_numba

require_tested_numba()  # before the internals below: a clear error on an untested Numba

from numba import carray, njit, types  # type: ignore[attr-defined]  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from fednb.kernels._blas import usable_cores  # noqa: E402
from fednb.typing import FloatArray  # noqa: E402

__all__ = ["MAX_THREADS", "PARALLEL_MIN", "weighted_sum"]

_BLOCK = 2048
PARALLEL_MIN = 1 << 21  # values read (N x P) from which the sum is split over the cores
MAX_THREADS = 8  # past a few cores, a memory-bound sum gains nothing more


def _pointer_typed(typingctx: Any, address: Any) -> Any:  # pragma: no cover - compiled
    """The int64 ``address`` as a ``void*`` for ``numba.carray``."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


_pointer: Any = intrinsic(_pointer_typed)


@njit(nogil=True, cache=True, inline="always")
def _put(acc: Any, out: Any, start: int, i: int, v: float, last: bool) -> int:  # pragma: no cover
    """Keep ``v`` in the accumulator, or store it (the block's last group): then 1 if the
    stored value is not finite (``v - v`` is 0 for a finite value, NaN otherwise)."""
    if not last:
        acc[i] = v
        return 0
    out[start + i] = v
    stored = out[start + i]  # as stored: a float32 output may overflow where v did not
    return 1 if (stored - stored) != 0.0 else 0


@njit(nogil=True, cache=True, inline="always")
def _view(address: int, offset: int, m: int, like: Any) -> Any:  # pragma: no cover - compiled
    """The ``m`` values of ``like``'s dtype from byte ``offset`` of the vector at ``address``."""
    return carray(_pointer(address + offset), (m,), like.dtype)


@njit(nogil=True, cache=True, inline="always")
def _add(acc: Any, out: Any, addresses: Any, weights: Any, start: int, m: int, like: Any,
         final: bool) -> int:  # pragma: no cover - compiled
    """``acc[:m] += sum_j weights[j] * x_j[start:start + m]`` over the vectors of ``like``'s
    dtype at ``addresses``, eight at a time, then four, two, one; with ``final``, the last
    group stores ``acc + its sum`` into ``out`` instead (no separate pass over the block)
    and the number of values stored that are not finite comes back."""
    offset = like.itemsize * start
    n, j, bad = addresses.size, 0, 0
    while j + 8 <= n:
        last = final and j + 8 == n
        x0 = _view(addresses[j], offset, m, like)
        x1 = _view(addresses[j + 1], offset, m, like)
        x2 = _view(addresses[j + 2], offset, m, like)
        x3 = _view(addresses[j + 3], offset, m, like)
        x4 = _view(addresses[j + 4], offset, m, like)
        x5 = _view(addresses[j + 5], offset, m, like)
        x6 = _view(addresses[j + 6], offset, m, like)
        x7 = _view(addresses[j + 7], offset, m, like)
        w0, w1, w2, w3 = weights[j], weights[j + 1], weights[j + 2], weights[j + 3]
        w4, w5, w6, w7 = weights[j + 4], weights[j + 5], weights[j + 6], weights[j + 7]
        for i in range(m):
            v = ((w0 * x0[i] + w1 * x1[i]) + (w2 * x2[i] + w3 * x3[i])) + \
                ((w4 * x4[i] + w5 * x5[i]) + (w6 * x6[i] + w7 * x7[i]))
            bad += _put(acc, out, start, i, acc[i] + v, last)
        j += 8
    if j + 4 <= n:
        last = final and j + 4 == n
        x0 = _view(addresses[j], offset, m, like)
        x1 = _view(addresses[j + 1], offset, m, like)
        x2 = _view(addresses[j + 2], offset, m, like)
        x3 = _view(addresses[j + 3], offset, m, like)
        w0, w1, w2, w3 = weights[j], weights[j + 1], weights[j + 2], weights[j + 3]
        for i in range(m):
            v = (w0 * x0[i] + w1 * x1[i]) + (w2 * x2[i] + w3 * x3[i])
            bad += _put(acc, out, start, i, acc[i] + v, last)
        j += 4
    if j + 2 <= n:
        last = final and j + 2 == n
        x0 = _view(addresses[j], offset, m, like)
        x1 = _view(addresses[j + 1], offset, m, like)
        w0, w1 = weights[j], weights[j + 1]
        for i in range(m):
            bad += _put(acc, out, start, i, acc[i] + (w0 * x0[i] + w1 * x1[i]), last)
        j += 2
    if j < n:
        x0 = _view(addresses[j], offset, m, like)
        w0 = weights[j]
        for i in range(m):
            bad += _put(acc, out, start, i, acc[i] + w0 * x0[i], final)
    return bad


@njit(nogil=True, cache=True)
def _sum_blocks(out: Any, a32: Any, w32: Any, a64: Any, w64: Any) -> bool:  # pragma: no cover - compiled
    """The weighted sum of the vectors at ``a32`` (float32) and ``a64`` (float64) into
    ``out``; True when every stored value is finite."""
    size = out.size
    acc = np.empty(_BLOCK, np.float64)
    like32, like64 = np.empty(0, np.float32), np.empty(0, np.float64)
    nonfinite = 0
    for start in range(0, size, _BLOCK):
        m = min(_BLOCK, size - start)
        acc[:m] = 0.0
        if a64.size:
            _add(acc, out, a32, w32, start, m, like32, False)
            nonfinite += _add(acc, out, a64, w64, start, m, like64, True)
        else:
            nonfinite += _add(acc, out, a32, w32, start, m, like32, True)
    return nonfinite == 0


_KINDS = (np.dtype(np.float32), np.dtype(np.float64))


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float],
                 dtype: np.dtype[Any]) -> tuple[FloatArray, bool]:
    """``sum_i weights[i] * vectors[i]`` in ``dtype`` (float32 or float64), accumulated in
    float64, and whether every value of it is finite.

    The kernel reads raw addresses, so what it is given is checked here (O(N)): one or
    more flat, C-contiguous, aligned vectors of one length, each native float32 or
    float64; they are held in a tuple of this call's own while it runs (the caller's list
    may change in another thread).
    """
    vectors = tuple(vectors)
    if not vectors or len(weights) != len(vectors) or np.dtype(dtype) not in _KINDS:
        raise ValueError("weighted_sum takes one or more vectors, a weight each, and a float output dtype")
    size = vectors[0].shape
    for v in vectors:
        if (not isinstance(v, np.ndarray) or v.shape != size or len(size) != 1 or v.dtype not in _KINDS
                or not (v.flags.c_contiguous and v.flags.aligned)):
            raise ValueError("the weighted_sum kernel takes flat, contiguous, aligned float32 or float64 "
                             "vectors of one length")
    out: FloatArray = np.empty(size[0], dtype=dtype)
    groups = []
    for kind in (np.float32, np.float64):
        pick = [i for i, v in enumerate(vectors) if v.dtype == kind]
        groups += [np.fromiter((vectors[i].ctypes.data for i in pick), np.int64, len(pick)),
                   np.fromiter((weights[i] for i in pick), np.float64, len(pick))]
    a32, w32, a64, w64 = groups
    parts = _threads() if len(vectors) * out.size >= PARALLEL_MIN else 1
    cuts = [out.size * k // parts // _BLOCK * _BLOCK for k in range(parts)] + [out.size]

    def part(k: int, keep: tuple[FloatArray, ...]) -> bool:
        """Coordinates cuts[k]..cuts[k+1] (the addresses move by as many values); ``keep``
        holds the vectors while a pool thread reads them."""
        lo, hi = cuts[k], cuts[k + 1]
        return bool(_sum_blocks(out[lo:hi], a32 + 4 * lo, w32, a64 + 8 * lo, w64))

    ranges = [k for k in range(parts) if cuts[k] < cuts[k + 1]] or [0]
    others: list[tuple[int, Future[bool]]] = []
    finite = True
    try:
        for k in ranges[1:]:
            try:
                others.append((k, _pool().submit(part, k, vectors)))
            except RuntimeError:  # the interpreter is shutting down: no new threads
                finite &= part(k, vectors)
        finite &= part(ranges[0], vectors)
        for k, fut in others:
            finite &= part(k, vectors) if fut.cancel() else fut.result()
    finally:  # no thread reads the vectors after this call returns (after an error too)
        for _, fut in others:
            fut.cancel()
        wait([f for _, f in others if not f.cancelled()])
    return out, finite


_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _threads() -> int:
    return min(usable_cores(), MAX_THREADS)


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=MAX_THREADS - 1, thread_name_prefix="fednb-sum")
        return _executor


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _executor, _lock
    _executor, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
