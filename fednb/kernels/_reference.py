"""NumPy references of the kernels: what every backend is tested against."""

from __future__ import annotations

import numpy as np

from fednb.typing import FloatArray

__all__ = ["coordinate_median", "trimmed_mean"]


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
