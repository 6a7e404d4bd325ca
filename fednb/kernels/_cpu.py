"""Numba kernels on the CPU: sorting networks run on blocks of coordinates.

A block of coordinates (one row of ``_BLOCK`` values per update, 100 KB at N=50) stays
in cache while Batcher's odd-even merge network sorts every column of it at once: each
comparator is a branch-free min/max over the block's row pair, which the compiler turns
into SIMD. Comparators that only ever meet the +inf padding up to a power of two are
dropped, and so are those that cannot reach the output rows (a median needs the middle
ones only). Blocks run in parallel (``prange``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
from numba import njit, prange

from fednb.typing import FloatArray

__all__ = ["box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "network", "quantile_pick",
           "stochastic_round", "trimmed_mean"]

_BLOCK = 256


def _merge(lo: int, n: int, r: int) -> Iterator[tuple[int, int]]:
    step = r * 2
    if step < n:
        yield from _merge(lo, n, step)
        yield from _merge(lo + r, n, step)
        yield from ((i, i + r) for i in range(lo + r, lo + n - r, step))
    else:
        yield (lo, lo + r)


def _sort(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from _sort(lo, mid)
        yield from _sort(mid + 1, hi)
        yield from _merge(lo, hi - lo + 1, 1)


@functools.lru_cache(maxsize=64)
def network(n: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators (low index, high index) that sort ``n`` values as far as rows
    ``first..last`` of the output need: Batcher's network on the next power of two,
    without the comparators that touch padding or cannot reach those rows."""
    m = 1
    while m < n:
        m *= 2
    pairs = [(a, d) for a, d in _sort(0, m - 1) if d < n]
    needed, kept = set(range(first, last + 1)), []
    for a, d in reversed(pairs):
        if a in needed or d in needed:
            kept.append((a, d))
            needed |= {a, d}
    kept.reverse()
    return (np.array([p[0] for p in kept], dtype=np.int64), np.array([p[1] for p in kept], dtype=np.int64))


@njit(parallel=True, cache=True, fastmath=True)
def _middle_mean(x, lows, highs, first, last):  # type: ignore[no-untyped-def]  # pragma: no cover
    n, p = x.shape
    out = np.empty(p, dtype=np.float64)
    for b in prange((p + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        w = min(_BLOCK, p - lo)
        buf = np.empty((n, _BLOCK), dtype=np.float64)
        for i in range(n):
            for j in range(w):
                buf[i, j] = x[i, lo + j]
        for c in range(lows.shape[0]):
            ra, rd = buf[lows[c]], buf[highs[c]]
            for j in range(w):
                u, v = ra[j], rd[j]
                ra[j] = u if u < v else v
                rd[j] = v if u < v else u
        for j in range(w):
            s = 0.0
            for i in range(first, last + 1):
                s += buf[i, j]
            out[lo + j] = s / (last - first + 1)
    return out


def _run(stacked: FloatArray, first: int, last: int) -> FloatArray:
    x = np.ascontiguousarray(stacked, dtype=np.float64)
    lows, highs = network(x.shape[0], first, last)
    return np.asarray(_middle_mean(x, lows, highs, first, last))


def coordinate_median(stacked: FloatArray) -> FloatArray:
    n = stacked.shape[0]
    return _run(stacked, (n - 1) // 2, n // 2)


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    return _run(stacked, k, stacked.shape[0] - k - 1)


@njit(parallel=True, cache=True)
def _round(x, scale, bound, bits, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for i in prange(x.shape[0]):
        v = min(max(x[i], -bound), bound) * scale + bits[i] * 2.3283064365386963e-10  # 2^-32
        out[i] = np.uint32(np.int64(np.floor(v)) & 0xFFFFFFFF)


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
