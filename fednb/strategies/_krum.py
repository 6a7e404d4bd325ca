"""Krum and multi-Krum: keep the updates closest to their neighbours.

Blanchard, El Mhamdi, Guerraoui and Stainer (2017), "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS. Each of N updates is scored by the sum
of squared distances to its ``N - f - 2`` nearest neighbours; Krum keeps the update of
lowest score, multi-Krum averages the ``m`` of lowest scores. Requires ``N > 2 f + 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fednb.errors import InvalidInput
from fednb.strategies._base import (
    ClientUpdate,
    Strategy,
    check_global,
    check_int,
    check_updates,
    weighted_sum,
)
from fednb.strategies._ops import krum_select
from fednb.typing import FloatArray

__all__ = ["Krum"]


class Krum(Strategy):
    """Krum (``m=1``) and multi-Krum (``m > 1``) of Blanchard et al. (2017).

    Distances come from one Gram matrix, O(N^2 P): for float32 updates in float32 with
    a bound on each distance's error, falling back to float64 where the bounds leave the
    choice open (``_ops.krum_select``). The kept updates are averaged with
    equal weights: ``num_examples`` is ignored, since a Byzantine domain could claim any
    size. Needs the single updates (no secure aggregation); under asynchronous rounds it
    aggregates the driver's buffer, which must then hold more than ``2 f + 2`` updates.

    Parameters
    ----------
    f
        Number of Byzantine updates to tolerate, >= 0; default 1.
    m
        Number of updates kept and averaged, >= 1 and at most ``N - f``; default 1 (Krum).
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    secure_aggregation = False
    robust = True

    def __init__(self, *, f: int = 1, m: int = 1, fraction: float = 1.0) -> None:
        super().__init__(fraction=fraction)
        self.f = check_int("f", f, 0)
        self.m = check_int("m", m, 1)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"f": self.f, "m": self.m, **super().hyperparameters}

    @property
    def min_updates(self) -> int:
        """``2 f + 3``: Krum needs ``N > 2 f + 2``."""
        return 2 * self.f + 3

    def select(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> list[int]:
        """Indices of the kept updates, best score first (ties by input order)."""
        check_updates(check_global(global_vec), updates)  # no (N, P) copy: distances go by blocks
        n = len(updates)
        if n <= 2 * self.f + 2:
            raise InvalidInput(
                f"Krum(f={self.f}) needs more than 2f + 2 = {2 * self.f + 2} updates per round, got {n}; "
                "lower f or add domains"
            )
        if self.m > n - self.f:
            raise InvalidInput(f"Krum(m={self.m}) keeps more than N - f = {n - self.f} updates; lower m")
        return krum_select([u.vector for u in updates], self.f, self.m)

    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        chosen = self.select(global_vec, updates)
        kept = [updates[i].vector for i in chosen]
        return np.asarray(weighted_sum(kept, [1.0 / len(kept)] * len(kept)), dtype=np.float64)
