"""NumPy references of the kernels: what every backend is tested against."""

from __future__ import annotations

import numpy as np

from fednb.typing import FloatArray

__all__ = ["box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "quantile_pick",
           "stochastic_round", "trimmed_mean"]


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
