"""The weighted sum of N flat updates at memory speed on one core (Numba).

It reads four updates per pass and adds them into the total in one read-modify-write (a
BLAS axpy per update reads and writes the total N times: half the traffic again). It runs
on the calling thread (``nogil``): a second thread gains little on a memory-bound loop
and loses much when other processes keep the cores busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from fednb.typing import FloatArray

__all__ = ["weighted_sum"]


@njit(nogil=True, cache=True)
def _add4(total: Any, w0: float, x0: Any, w1: float, x1: Any, w2: float, x2: Any, w3: float,
          x3: Any) -> None:  # pragma: no cover - compiled
    for i in range(total.size):
        total[i] += w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i]


@njit(nogil=True, cache=True)
def _add1(total: Any, w0: float, x0: Any) -> None:  # pragma: no cover - compiled
    for i in range(total.size):
        total[i] += w0 * x0[i]


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float]) -> FloatArray:
    """``sum_i weights[i] * vectors[i]`` for contiguous vectors of one dtype (float32 or
    float64), in that dtype: four updates per pass over the total."""
    dtype = vectors[0].dtype
    total: FloatArray = np.zeros(vectors[0].shape[0], dtype=dtype)
    ws = [dtype.type(w) for w in weights]
    i, n = 0, len(vectors)
    while i + 4 <= n:
        _add4(total, ws[i], vectors[i], ws[i + 1], vectors[i + 1], ws[i + 2], vectors[i + 2],
              ws[i + 3], vectors[i + 3])
        i += 4
    for j in range(i, n):
        _add1(total, ws[j], vectors[j])
    return total
