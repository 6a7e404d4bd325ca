"""The weighted sum of N flat updates in one pass over them (Numba, one core).

The output is built a block of 2048 coordinates at a time: a float64 accumulator the size
of the block stays in the L1 cache while every update's slice of the block is added into
it, and the block is written out once. Memory traffic is one read of each update and one
write of the total, whatever N: a BLAS axpy per update reads and writes the whole total
N times. Accumulating in float64 costs nothing here (the loop is memory-bound), so a sum
of float32 updates is as exact as a float64 one before it is stored in the output dtype.

The kernel reaches the N updates through their addresses (an int64 array), so one
compiled function serves every N: the caller keeps the arrays alive and checks that they
are C-contiguous, of one length, float32 or float64. It also says whether every output
value is finite, from the block while it is in the cache.

It runs on the calling thread (``nogil``): a second thread gains little on a memory-bound
loop and loses much when other processes keep the cores busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import carray, njit, types  # type: ignore[attr-defined]
from numba.core import cgutils
from numba.extending import intrinsic

from fednb.typing import FloatArray

__all__ = ["weighted_sum"]

_BLOCK = 2048


def _pointer_typed(typingctx: Any, address: Any) -> Any:  # pragma: no cover - compiled
    """The int64 ``address`` as a ``void*`` for ``numba.carray``."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


_pointer: Any = intrinsic(_pointer_typed)


@njit(nogil=True, cache=True)
def _sum_blocks(out: Any, addresses: Any, is64: Any, weights: Any) -> bool:  # pragma: no cover - compiled
    size = out.size
    acc = np.empty(_BLOCK, np.float64)
    nonfinite = 0
    for start in range(0, size, _BLOCK):
        m = min(_BLOCK, size - start)
        acc[:m] = 0.0
        for j in range(addresses.size):
            w = weights[j]
            if is64[j]:
                x64 = carray(_pointer(addresses[j] + 8 * start), (m,), np.float64)
                for i in range(m):
                    acc[i] += w * x64[i]
            else:
                x32 = carray(_pointer(addresses[j] + 4 * start), (m,), np.float32)
                for i in range(m):
                    acc[i] += w * x32[i]
        for i in range(m):
            out[start + i] = acc[i]
            v = out[start + i]  # as stored: a float32 output may overflow where acc did not
            nonfinite += (v - v) != 0.0  # v - v is 0 for a finite v, NaN for NaN and infinity
    return nonfinite == 0


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float],
                 dtype: np.dtype[Any]) -> tuple[FloatArray, bool]:
    """``sum_i weights[i] * vectors[i]`` in ``dtype`` (float32 or float64), accumulated in
    float64, and whether every value of it is finite. The vectors are C-contiguous, of one
    length, each float32 or float64 (the caller checks)."""
    out: FloatArray = np.empty(vectors[0].shape[0], dtype=dtype)
    addresses = np.fromiter((v.ctypes.data for v in vectors), np.int64, len(vectors))
    is64 = np.fromiter((v.dtype == np.float64 for v in vectors), np.bool_, len(vectors))
    finite = _sum_blocks(out, addresses, is64, np.asarray(weights, dtype=np.float64))
    return out, bool(finite)
