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
from fednb.typing import FloatArray

__all__ = ["coordinate_median", "krum_scores", "krum_select", "pairwise_sq_distances", "trimmed_mean",
           "weighted_mean"]


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


def pairwise_sq_distances(stacked: FloatArray | Sequence[FloatArray]) -> FloatArray:
    """Squared Euclidean distances between all rows, shape (N, N), in float64.

    ``sum_k (a_k - b_k)^2`` pair by pair over blocks of coordinates, O(N^2 P)
    (:func:`fednb.kernels.sq_distances` with ``exact=True``): no cancellation, so nearby
    updates keep their precision beside far ones, and identical rows tie exactly.
    ``stacked`` may be an (N, P) array or N flat vectors.
    """
    return kernels.sq_distances([np.asarray(r).reshape(-1) for r in stacked], exact=True)[0]


def _scores(dist: FloatArray, f: int) -> FloatArray:
    dist = dist.copy()
    np.fill_diagonal(dist, np.inf)
    k = dist.shape[0] - f - 2
    return np.asarray(np.partition(dist, k - 1, axis=1)[:, :k].sum(axis=1), dtype=np.float64)


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
    return _scores(pairwise_sq_distances(stacked), f)


def krum_select(vectors: Sequence[FloatArray], f: int, m: int) -> list[int]:
    """The ``m`` rows of lowest Krum score, best first (ties by input order), as
    :func:`krum_scores` ranks them.

    Float32 rows are ranked from the fast distances of :func:`fednb.kernels.sq_distances`
    when their error bounds settle the ranking: every kept row's score interval lies below
    the next one's and below every dropped row's. Otherwise (near ties, huge values) the
    float64 distances rank them.
    """
    rows = [np.asarray(v).reshape(-1) for v in vectors]
    dist, err = kernels.sq_distances(rows)
    order = np.argsort(_scores(dist, f), kind="stable")
    lo, hi = _scores(dist - err, f), _scores(dist + err, f)
    top, rest = order[:m], order[m:]
    settled = bool((hi[top[:-1]] < lo[top[1:]]).all()) and (rest.size == 0 or hi[top[-1]] < lo[rest].min())
    if not settled:
        order = np.argsort(krum_scores(rows, f), kind="stable")
    return [int(i) for i in order[:m]]
