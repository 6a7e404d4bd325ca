"""Squared distances between float32 updates on the CPU, with a bound on their error.

Krum needs the N x N squared distances of N updates of P parameters: ``|x_i|^2 + |x_j|^2 -
2 x_i.x_j`` from one Gram matrix, O(N^2 P). The kernel reads each update once, in
blocks of :data:`BLOCK` coordinates gathered into a scratch that stays in L1, centred on
the block's mean over the updates (distances do not change when every update moves by
the same vector, and centring keeps the cancellation small). Tiles of 4 x 4 rows then
accumulate float32 products over the block (SIMD over coordinates) and add the tile to a
float64 Gram matrix: no sum runs over more than ``BLOCK`` float32 terms, so each entry's
error is at most ``gamma(BLOCK) |x_i| |x_j|`` in any summation order the compiler picks
(Higham, "Accuracy and Stability of Numerical Algorithms", 2002, section 3.1). The
distances come back with that bound, for callers that must decide exactly (Krum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange
from numba.typed import List

from fednb.kernels._launch import serialised_on_workqueue
from fednb.kernels._reference import distances_from_gram
from fednb.typing import FloatArray

__all__ = ["BLOCK", "sq_distances", "sq_distances_exact"]

BLOCK = 256  # float32 products summed before they go to float64: the error bound's length
_GATHER = 4  # blocks read at once: 4 KB runs of each update, and a list item per 4 blocks
_U32 = 2.0**-24  # unit roundoff of float32
_RATE = BLOCK * _U32 / (1 - BLOCK * _U32) + 2.01 * _U32 + 1e-12  # sums, centring, float64 rest


_FAST = {"reassoc", "contract"}  # reorder the sums (SIMD), never assume away inf and NaN


@njit(parallel=True, cache=True, fastmath=_FAST, nogil=True)
def _gram(rows, p, parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    n = len(rows)
    n4 = (n + 3) // 4 * 4
    wide = BLOCK * _GATHER
    nb = (p + wide - 1) // wide
    per = (nb + parts - 1) // parts
    grams = np.zeros((parts, n4, n4))
    for t in prange(parts):
        bufs = np.zeros((_GATHER, n4, BLOCK), dtype=np.float32)
        centre = np.empty(wide, dtype=np.float32)
        g = grams[t]
        inv = np.float32(1.0 / n)
        for b in range(t * per, min(nb, (t + 1) * per)):
            lo = b * wide
            w = min(wide, p - lo)
            centre[:] = 0
            # unsigned offsets: a signed index r[lo + k] gets a wraparound check, and LLVM
            # then gathers where it could load
            ulo = np.uint64(lo)
            for i in range(n):
                r = rows[i]  # a typed list's item costs ~50 ns
                for k in range(w):
                    centre[k] += r[ulo + np.uint64(k)]
            for i in range(n):
                r = rows[i]
                for s in range(_GATHER):
                    buf = bufs[s]
                    base = s * BLOCK
                    cnt = max(0, min(BLOCK, w - base))
                    for k in range(cnt):
                        buf[i, k] = r[ulo + np.uint64(base + k)] - centre[base + k] * inv
                    for k in range(cnt, BLOCK):
                        buf[i, k] = 0
            for s in range(_GATHER):
                if s * BLOCK < w:
                    for ti in range(0, n4, 4):
                        for tj in range(ti, n4, 4):
                            _tile(bufs[s], ti, tj, g)
    return grams.sum(axis=0)[:n, :n]


@njit(inline="always", fastmath=_FAST)
def _tile(buf, ti, tj, g):  # type: ignore[no-untyped-def]  # pragma: no cover
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0)
    r0, r1, r2, r3 = buf[ti], buf[ti + 1], buf[ti + 2], buf[ti + 3]
    s0, s1, s2, s3 = buf[tj], buf[tj + 1], buf[tj + 2], buf[tj + 3]
    for k in range(BLOCK):
        x0, x1, x2, x3 = r0[k], r1[k], r2[k], r3[k]
        y0, y1, y2, y3 = s0[k], s1[k], s2[k], s3[k]
        a00 += x0 * y0
        a01 += x0 * y1
        a02 += x0 * y2
        a03 += x0 * y3
        a10 += x1 * y0
        a11 += x1 * y1
        a12 += x1 * y2
        a13 += x1 * y3
        a20 += x2 * y0
        a21 += x2 * y1
        a22 += x2 * y2
        a23 += x2 * y3
        a30 += x3 * y0
        a31 += x3 * y1
        a32 += x3 * y2
        a33 += x3 * y3
    g[ti, tj] += a00
    g[ti, tj + 1] += a01
    g[ti, tj + 2] += a02
    g[ti, tj + 3] += a03
    g[ti + 1, tj] += a10
    g[ti + 1, tj + 1] += a11
    g[ti + 1, tj + 2] += a12
    g[ti + 1, tj + 3] += a13
    g[ti + 2, tj] += a20
    g[ti + 2, tj + 1] += a21
    g[ti + 2, tj + 2] += a22
    g[ti + 2, tj + 3] += a23
    g[ti + 3, tj] += a30
    g[ti + 3, tj + 1] += a31
    g[ti + 3, tj + 2] += a32
    g[ti + 3, tj + 3] += a33


@njit(parallel=True, cache=True, fastmath=_FAST, nogil=True)
def _direct(rows, p, parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    n = len(rows)
    nb = (p + BLOCK - 1) // BLOCK
    per = (nb + parts - 1) // parts
    dists = np.zeros((parts, n, n))
    for t in prange(parts):
        buf = np.empty((n, BLOCK))
        d = dists[t]
        for b in range(t * per, min(nb, (t + 1) * per)):
            lo = b * BLOCK
            w = min(BLOCK, p - lo)
            ulo = np.uint64(lo)
            for i in range(n):
                r = rows[i]
                for k in range(w):
                    buf[i, k] = r[ulo + np.uint64(k)]
            for i in range(n - 1):
                for j in range(i + 1, n):
                    s = 0.0
                    for k in range(w):
                        e = buf[i, k] - buf[j, k]
                        s += e * e
                    d[i, j] += s
    out = dists.sum(axis=0)
    return out + out.T


def _typed(rows: Sequence[FloatArray], dtype: type) -> List:
    return List([np.ascontiguousarray(r, dtype=dtype).reshape(-1) for r in rows])


@serialised_on_workqueue
def sq_distances_exact(rows: Sequence[FloatArray]) -> tuple[FloatArray, FloatArray]:
    """What :func:`fednb.kernels._reference.sq_distances` returns (differences summed in
    float64, pair by pair), in parallel: the float64 fallback of Krum."""
    wide = all(r.dtype == np.float64 for r in rows)
    typed = _typed(rows, np.float64 if wide else np.float32)
    dist = _direct(typed, typed[0].shape[0], numba.get_num_threads() * 4)
    return dist, dist * ((BLOCK + typed[0].shape[0] // BLOCK + 4) * 2.0**-53)


@serialised_on_workqueue
def sq_distances(rows: Sequence[FloatArray]) -> tuple[FloatArray, FloatArray]:
    """Squared distances (N, N) float64 between N float32 vectors, and a bound on the
    absolute error of each (the rows must be float32 and contiguous)."""
    typed = _typed(rows, np.float32)
    gram = _gram(typed, typed[0].shape[0], numba.get_num_threads() * 8)
    upper = np.triu(gram)
    full = upper + np.triu(gram, 1).T  # tiles fill the upper triangle (and the diagonal tiles in full)
    return distances_from_gram(full, _RATE, 4.0 * typed[0].shape[0] * 2.0**-126)  # + underflow
