"""NumPy references of the kernels: what every backend is tested against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from fednb.typing import FloatArray

__all__ = ["box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "distances_from_gram",
           "quantile_pick", "sq_distances", "stochastic_round", "trimmed_mean", "weighted_sum"]


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float],
                 dtype: DTypeLike | None = None) -> FloatArray:
    """``sum_i weights[i] * vectors[i]``: one BLAS axpy per vector on one thread, in
    ``dtype`` (by default float32 when every vector is float32, else float64)."""
    from scipy.linalg.blas import daxpy, saxpy

    from fednb.kernels._blas import one_blas_thread

    if dtype is None:
        dtype = np.float32 if all(v.dtype == np.float32 for v in vectors) else np.float64
    f32 = np.dtype(dtype) == np.float32
    axpy = saxpy if f32 else daxpy
    total: FloatArray = np.zeros(vectors[0].shape[0], dtype=np.float32 if f32 else np.float64)
    with one_blas_thread():
        for vec, w in zip(vectors, weights, strict=True):
            total = axpy(np.ascontiguousarray(vec, dtype=total.dtype), total, a=w)
    return total


def coordinate_median(stacked: FloatArray) -> FloatArray:
    """The coordinate-wise median of the rows of (N, P) (mean of the middle two for even N)."""
    return np.asarray(np.median(stacked, axis=0), dtype=np.float64)


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    """The coordinate-wise mean after dropping the ``k`` lowest and ``k`` highest values."""
    n = stacked.shape[0]
    if k == 0:
        return np.asarray(stacked.mean(axis=0), dtype=np.float64)
    part = np.partition(stacked, (k, n - k - 1), axis=0)
    return np.asarray(part[k : n - k].mean(axis=0), dtype=np.float64)


def distances_from_gram(gram: FloatArray, rate: float, tiny: float) -> tuple[FloatArray, FloatArray]:
    """``(d, err)``: squared distances from a Gram matrix whose entries are within
    ``rate |x_i| |x_j| + tiny / 4`` of the exact ones, and ``err``, a bound on each
    distance's error."""
    sq = np.diag(gram).copy()
    with np.errstate(invalid="ignore"):  # inf - inf where float32 products overflowed
        dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    norm = np.sqrt(np.maximum(sq, 0.0) * (1.0 + 2.0 * rate))
    err = rate * (norm[:, None] + norm[None, :]) ** 2 + tiny
    if not np.isfinite(gram).all():  # float32 overflow: nothing can be decided from these
        err[:] = np.inf
    np.fill_diagonal(err, 0.0)
    return dist, err


_BLOCK = 4096


def sq_distances(rows: Sequence[FloatArray]) -> tuple[FloatArray, FloatArray]:
    """Squared Euclidean distances (N, N) between N flat vectors and a bound on each one's
    absolute error: ``sum_k (x_ik - x_jk)^2`` in float64, pair by pair over blocks of
    coordinates, so no cancellation (nearby updates far from the others keep their
    precision) and identical rows have bitwise-equal distances (ties stay ties)."""
    flat = [np.asarray(r).reshape(-1) for r in rows]
    n, p = len(flat), flat[0].size
    dist = np.zeros((n, n))
    buf = np.empty((n, min(_BLOCK, p)))
    for lo in range(0, p, _BLOCK):
        block = buf[:, : min(lo + _BLOCK, p) - lo]
        for i, r in enumerate(flat):
            block[i] = r[lo : lo + block.shape[1]]
        for i in range(n - 1):
            diff = block[i + 1 :] - block[i]
            dist[i, i + 1 :] += np.einsum("ij,ij->i", diff, diff)
    dist += dist.T
    return dist, dist * ((_BLOCK + p // _BLOCK + 4) * 2.0**-53)  # sums of non-negative terms


def stochastic_round(x: FloatArray, scale: float, bound: float, bits: np.ndarray) -> np.ndarray:
    """``floor(clip(x, -bound, bound) * scale + bits / 2^32)`` as uint32 two's complement:
    unbiased rounding onto the integer grid, driven by the uniform ``bits`` (uint32) the
    caller draws from a cryptographic stream."""
    y = np.clip(np.asarray(x, dtype=np.float64), -bound, bound)
    y *= scale
    frac = bits.astype(np.float64)
    frac *= 2.0**-32
    y += frac
    return np.floor(y, out=y).astype(np.int64).astype(np.int32).view(np.uint32)


def box_muller(u: FloatArray, sigma: float, cos_out: FloatArray, sin_out: FloatArray) -> None:
    """Normals N(0, sigma^2) from uniforms on (0, 1): with ``m = len(u) // 2``,
    ``r = sigma * sqrt(-2 ln u[:m])`` and ``theta = 2 pi u[m:]``, write ``r cos theta`` to
    ``cos_out`` and ``r sin theta`` to ``sin_out`` (each of length m)."""
    m = u.shape[0] // 2
    r = np.sqrt(-2.0 * np.log(u[:m]))
    r *= sigma
    theta = u[m : 2 * m] * (2.0 * np.pi)
    np.multiply(r, np.cos(theta), out=cos_out)
    np.multiply(r, np.sin(theta), out=sin_out)


def clipped_sum(x: FloatArray, lo: float, hi: float) -> FloatArray:
    """The sum over the first axis (patients) of ``x`` clipped into ``[lo, hi]``, float64."""
    return np.asarray(np.clip(np.asarray(x, dtype=np.float64), lo, hi).sum(axis=0), dtype=np.float64)


def clipped_histogram(x: FloatArray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts (int64) of ``x`` clipped into ``[lo, hi]`` over ``bins`` equal bins (NumPy's
    binning: the last bin is closed)."""
    counts, _ = np.histogram(np.clip(np.asarray(x, dtype=np.float64), lo, hi), bins=bins, range=(lo, hi))
    return counts.astype(np.int64)


def quantile_pick(v: FloatArray, lo: float, hi: float, target: float, eps: float, u: float) -> int:
    """The exponential mechanism's draw for a quantile (Smith 2011): over the ``len(v) + 1``
    gaps between ``lo``, the sorted clipped values ``v`` and ``hi``, gap ``i`` has weight
    ``width_i * exp(-eps * |i - target| / 2)``; returns the gap the uniform ``u`` picks."""
    edges = np.concatenate([[lo], v, [hi]])
    widths = np.diff(edges)
    ranks = np.arange(len(widths))
    logw = np.where(widths > 0, np.log(np.maximum(widths, 1e-300)), -np.inf)
    score = logw - eps * np.abs(ranks - target) / 2
    p = np.exp(score - score.max())
    cdf = np.cumsum(p / p.sum())
    return min(int(np.searchsorted(cdf, u)), len(widths) - 1)
