"""Coordinate-wise trimmed mean: drop the extremes of each parameter, average the rest.

Yin, Chen, Ramchandran and Bartlett (2018), "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML, Option II (trimmed-mean-based gradient
descent): for each coordinate remove the largest and smallest ``beta`` fraction and
average the remaining values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fednb.errors import InvalidInput
from fednb.strategies._base import ClientUpdate, Strategy, check_global, check_real, check_updates
from fednb.strategies._ops import trimmed_mean
from fednb.typing import FloatArray

__all__ = ["TrimmedMean"]


class TrimmedMean(Strategy):
    """Coordinate-wise ``beta``-trimmed mean of the updates (Yin et al. 2018).

    Each round drops the ``floor(beta * N)`` smallest and largest values of every
    parameter over the N updates (as ``scipy.stats.trim_mean``) and averages the rest;
    it tolerates up to that many arbitrary updates. A round in which ``beta`` would trim
    nothing is refused rather than silently averaged. Ignores ``num_examples`` and needs
    the single updates (no secure aggregation).

    Parameters
    ----------
    beta
        Fraction trimmed from each side, in (0, 0.5); default 0.2 (one of five updates).
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    secure_aggregation = False
    robust = True

    def __init__(self, *, beta: float = 0.2, fraction: float = 1.0) -> None:
        super().__init__(fraction=fraction)
        self.beta = check_real("beta", beta, 0.0, 0.5, open_low=True, open_high=True)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, **super().hyperparameters}

    @property
    def min_updates(self) -> int:
        """The fewest updates from which ``beta`` trims at least one value per side."""
        n = max(1, math.ceil(1.0 / self.beta) - 1)
        while math.floor(self.beta * n) == 0:
            n += 1
        return n

    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        check_updates(check_global(global_vec), updates)
        stacked = np.stack([u.vector for u in updates])  # float32 if every update is
        n = stacked.shape[0]
        if n < self.min_updates:
            raise InvalidInput(
                f"TrimmedMean(beta={self.beta!r}) trims nothing from {n} updates; "
                f"use beta >= {1 / n:.3g} or at least {self.min_updates} domains per round"
            )
        return trimmed_mean(stacked, self.beta)
