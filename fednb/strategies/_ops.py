"""The arithmetic of aggregation: pure NumPy functions over stacked (N, P) updates.

N is the number of updates (hospitals), P the number of parameters. Every function is
vectorised over P (no Python loop over parameters), so a later ``fednb.kernels`` backend
can replace one function at a time and be tested against these references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.strategies._base import weighted_sum
from fednb.typing import FloatArray

__all__ = ["coordinate_median", "krum_scores", "pairwise_sq_distances", "trimmed_mean", "weighted_mean"]


def weighted_mean(stacked: FloatArray, weights: FloatArray) -> FloatArray:
    """``sum_i w_i x_i / sum_i w_i`` over the rows of ``stacked`` (one matrix-vector product).

    Parameters
    ----------
    stacked
        Updates, shape (N, P).
    weights
        Non-negative weights, shape (N,), with a positive sum.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if w.shape != (stacked.shape[0],) or (w < 0).any() or not total > 0.0:
        raise InvalidInput(f"weights must be {stacked.shape[0]} non-negative numbers with a positive sum")
    return np.asarray(w @ stacked / total, dtype=np.float64)


def coordinate_median(stacked: FloatArray) -> FloatArray:
    """The coordinate-wise median of the rows (the mean of the two middle values for even N),
    by :func:`fednb.kernels.coordinate_median`."""
    return kernels.coordinate_median(stacked)


def trimmed_mean(stacked: FloatArray, beta: float) -> FloatArray:
    """The coordinate-wise mean after dropping the ``floor(beta * N)`` lowest and highest values.

    Equal to ``scipy.stats.trim_mean(stacked, beta, axis=0)``; computed by
    :func:`fednb.kernels.trimmed_mean`.
    """
    n = stacked.shape[0]
    k = int(np.floor(beta * n))
    if not 0 <= 2 * k < n:
        raise InvalidInput(f"beta={beta!r} trims all {n} updates; beta must be in [0, 0.5)")
    return kernels.trimmed_mean(stacked, k)


_GRAM_BLOCK = 8192


def pairwise_sq_distances(stacked: FloatArray | Sequence[FloatArray]) -> FloatArray:
    """Squared Euclidean distances between all rows, shape (N, N), via one Gram matrix.

    ``||a - b||^2 = |a|^2 + |b|^2 - 2 a.b``: one (N, P) x (P, N) product, O(N^2 P). The
    rows are first centred on their mean (distances do not change) so that the cancellation
    in the formula does not eat the precision of nearby updates. ``stacked`` may be an
    (N, P) array or N flat vectors (float32 ones are widened block by block, in cache):
    the Gram matrix is summed over blocks of coordinates, in float64.
    """
    rows = [np.asarray(r).reshape(-1) for r in stacked]
    n, p = len(rows), rows[0].size
    centre = np.asarray(weighted_sum(rows, [1.0 / n] * n))
    gram = np.zeros((n, n), dtype=np.float64)
    buf = np.empty((n, min(_GRAM_BLOCK, p)), dtype=np.float64)
    for lo in range(0, p, _GRAM_BLOCK):
        hi = min(lo + _GRAM_BLOCK, p)
        block = buf[:, : hi - lo]
        for i, row in enumerate(rows):
            block[i] = row[lo:hi]
        block -= centre[lo:hi]
        gram += block @ block.T
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return np.asarray(dist, dtype=np.float64)


def krum_scores(stacked: FloatArray | Sequence[FloatArray], f: int) -> FloatArray:
    """Krum's score of every row: the sum of squared distances to its ``N - f - 2`` nearest others.

    Parameters
    ----------
    stacked
        Updates, shape (N, P) or N flat vectors, with ``N > 2 f + 2``.
    f
        Number of Byzantine updates tolerated.
    """
    n = len(stacked)
    if n <= 2 * f + 2:
        raise InvalidInput(f"Krum with f={f} needs more than 2f + 2 = {2 * f + 2} updates, got {n}")
    dist = pairwise_sq_distances(stacked)
    np.fill_diagonal(dist, np.inf)
    k = n - f - 2
    nearest = np.partition(dist, k - 1, axis=1)[:, :k]
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)
