"""Numba kernels on the CPU, in parallel (``prange``) over both cores or more.

The median and trimmed mean are selection networks in :mod:`._select`, Krum's distances
a blocked Gram matrix in :mod:`._gram`; the rest are one fused pass each over their input.
"""

from __future__ import annotations

import numpy as np

from fednb.kernels._compat import require_tested_numba

require_tested_numba()  # a clear error on an untested Numba, before any kernel compiles

from numba import njit, prange  # noqa: E402

from fednb.kernels._gram import sq_distances, sq_distances_exact  # noqa: E402
from fednb.kernels._launch import serialised_on_workqueue  # noqa: E402
from fednb.kernels._select import coordinate_median, trimmed_mean  # noqa: E402
from fednb.typing import FloatArray  # noqa: E402

__all__ = ["box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "quantile_pick",
           "sq_distances", "sq_distances_exact", "stochastic_round", "trimmed_mean"]


@njit(parallel=True, cache=True)
def _round(x, scale, bound, bits, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for i in prange(x.shape[0]):
        v = min(max(x[i], -bound), bound) * scale + bits[i] * 2.3283064365386963e-10  # 2^-32
        out[i] = np.uint32(np.int64(np.floor(v)) & 0xFFFFFFFF)


@serialised_on_workqueue
def stochastic_round(x: FloatArray, scale: float, bound: float, bits: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.uint32)
    _round(np.ascontiguousarray(x, dtype=np.float64), float(scale), float(bound), bits, out)
    return out


@njit(parallel=True, cache=True)
def _box_muller(u, sigma, cos_out, sin_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    m = u.shape[0] // 2
    for i in prange(m):
        r = sigma * np.sqrt(-2.0 * np.log(u[i]))
        theta = u[m + i] * (2.0 * np.pi)
        cos_out[i] = r * np.cos(theta)
        sin_out[i] = r * np.sin(theta)


@serialised_on_workqueue
def box_muller(u: FloatArray, sigma: float, cos_out: FloatArray, sin_out: FloatArray) -> None:
    _box_muller(u, float(sigma), cos_out, sin_out)


_PARTS = 16  # row ranges summed apart, then added: parallel without atomics


@njit(parallel=True, cache=True)
def _clipped_sum(x, lo, hi):  # type: ignore[no-untyped-def]  # pragma: no cover
    n, m = x.shape
    step = (n + _PARTS - 1) // _PARTS
    acc = np.zeros((_PARTS, m))
    for t in prange(_PARTS):
        for i in range(t * step, min(n, (t + 1) * step)):
            for j in range(m):
                v = x[i, j]
                acc[t, j] += lo if v < lo else (hi if v > hi else v)
    out = np.zeros(m)
    for t in range(_PARTS):
        for j in range(m):
            out[j] += acc[t, j]
    return out


@njit(parallel=True, cache=True, fastmath=False)
def _clipped_sum1(x, lo, hi):  # type: ignore[no-untyped-def]  # pragma: no cover
    n = x.shape[0]
    parts = _PARTS * 4
    step = (n + parts - 1) // parts
    acc = np.zeros(parts)
    for t in prange(parts):
        s0 = s1 = s2 = s3 = 0.0  # four chains: the adds overlap in the pipeline
        a, b = t * step, min(n, (t + 1) * step)
        i = a
        while i + 4 <= b:
            s0 += min(max(x[i], lo), hi) if x[i] == x[i] else x[i]
            s1 += min(max(x[i + 1], lo), hi) if x[i + 1] == x[i + 1] else x[i + 1]
            s2 += min(max(x[i + 2], lo), hi) if x[i + 2] == x[i + 2] else x[i + 2]
            s3 += min(max(x[i + 3], lo), hi) if x[i + 3] == x[i + 3] else x[i + 3]
            i += 4
        while i < b:
            s0 += min(max(x[i], lo), hi) if x[i] == x[i] else x[i]
            i += 1
        acc[t] = (s0 + s1) + (s2 + s3)
    return acc.sum()


@serialised_on_workqueue
def clipped_sum(x: FloatArray, lo: float, hi: float) -> FloatArray:
    if x.ndim == 1:
        return np.asarray(_clipped_sum1(np.ascontiguousarray(x, dtype=np.float64), float(lo), float(hi)))
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1))
    return np.asarray(_clipped_sum(flat, float(lo), float(hi)).reshape(x.shape[1:]))


@njit(parallel=True, cache=True)
def _histogram(x, lo, hi, edges):  # type: ignore[no-untyped-def]  # pragma: no cover
    n, bins = x.shape[0], edges.shape[0] - 1
    norm = bins / (hi - lo)
    step = (n + _PARTS - 1) // _PARTS
    acc = np.zeros((_PARTS, bins), dtype=np.int64)
    for t in prange(_PARTS):
        for i in range(t * step, min(n, (t + 1) * step)):
            v = x[i]
            if v != v:  # NaN: NumPy drops it
                continue
            v = lo if v < lo else (hi if v > hi else v)
            k = min(int((v - lo) * norm), bins - 1)
            if v < edges[k]:  # NumPy's correction of the float bin index against the edges
                k -= 1
            elif k + 1 < bins and v >= edges[k + 1]:
                k += 1
            acc[t, k] += 1
    return acc.sum(axis=0)


@serialised_on_workqueue
def clipped_histogram(x: FloatArray, lo: float, hi: float, bins: int) -> np.ndarray:
    flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
    return np.asarray(_histogram(flat, float(lo), float(hi), np.linspace(lo, hi, bins + 1)))


@njit(cache=True)
def _quantile_pick(v, lo, hi, target, eps, u):  # type: ignore[no-untyped-def]  # pragma: no cover
    n = v.shape[0]
    k = n + 1
    s = np.empty(k)
    best, prev = -np.inf, lo
    for i in range(k):
        nxt = v[i] if i < n else hi
        w = nxt - prev
        prev = nxt
        s[i] = (np.log(max(w, 1e-300)) if w > 0 else -np.inf) - eps * abs(i - target) / 2
        best = max(best, s[i])
    total = 0.0
    for i in range(k):
        s[i] = np.exp(s[i] - best)
        total += s[i]
    acc = 0.0
    for i in range(k):
        acc += s[i] / total
        if acc >= u:
            return i
    return k - 1


def quantile_pick(v: FloatArray, lo: float, hi: float, target: float, eps: float, u: float) -> int:
    return int(_quantile_pick(np.ascontiguousarray(v, dtype=np.float64), float(lo), float(hi), float(target),
                              float(eps), float(u)))
