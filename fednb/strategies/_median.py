"""Coordinate-wise median: each parameter is the median of the clients' values.

Yin, Chen, Ramchandran and Bartlett (2018), "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML, Option I (median-based gradient descent),
applied to the clients' new weights as in Flower's FedMedian.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fednb.strategies._base import ClientUpdate, Strategy, check_global, check_updates
from fednb.strategies._ops import coordinate_median
from fednb.typing import FloatArray

__all__ = ["Median"]


class Median(Strategy):
    """Coordinate-wise median of the updates (Yin et al. 2018).

    Robust to fewer than half of the updates being arbitrary. It ignores
    ``num_examples`` (a Byzantine domain could claim any size) and needs the single
    updates, so it does not compose with secure aggregation; under asynchronous rounds
    it aggregates the driver's buffer.

    Parameters
    ----------
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    secure_aggregation = False
    robust = True

    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        check_updates(check_global(global_vec), updates)
        return coordinate_median(np.stack([u.vector for u in updates]))  # float32 if all are
