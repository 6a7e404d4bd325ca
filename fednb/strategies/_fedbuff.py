"""FedBuff: buffered asynchronous aggregation with staleness-weighted updates.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek and Huba (2022), "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS, Algorithm 1: clients train asynchronously;
the server buffers their updates and, once it holds ``K`` of them, moves the global
model by the server learning rate times their staleness-discounted average. The
staleness functions (constant, polynomial, hinge) are those of Xie, Koyejo and Gupta
(2019), "Asynchronous Federated Optimization", section 5.2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from fednb.errors import InvalidInput
from fednb.strategies._base import ClientUpdate, MeanStrategy, check_int, check_real
from fednb.typing import FloatArray

__all__ = ["FedBuff", "StalenessFunction"]

StalenessFunction = Literal["constant", "polynomial", "hinge"]
"""How an update's weight falls with its staleness ``tau`` (rounds)."""


class FedBuff(MeanStrategy):
    """FedBuff-style asynchronous aggregation (Nguyen et al. 2022).

    The driver fills a buffer with up to ``buffer_size`` updates as they arrive, each
    rebased onto the current global vector (``global + new - start``) with its
    ``staleness`` set, then calls :meth:`aggregate` on the buffer::

        global = global + server_lr * sum_i s(tau_i) n_i (v_i - global) / sum_i n_i

    A stale update thus counts less than a fresh one, and a buffer of stale updates moves
    the model less. With staleness 0 and ``server_lr=1`` it is FedAvg. It composes with
    secure aggregation: the driver multiplies each vector by :meth:`weight` before the
    secure sum and passes ``total_examples`` to :meth:`aggregate_sum`.

    Parameters
    ----------
    buffer_size
        K, the number of updates per server step, >= 1; default 10.
    server_lr
        Server learning rate, > 0; default 1.0.
    staleness
        ``"polynomial"`` (default): ``(1 + tau) ** -a``; ``"constant"``: 1;
        ``"hinge"``: 1 up to ``tau = b``, then ``1 / (a (tau - b) + 1)``.
    a
        Exponent of the polynomial, or slope of the hinge, >= 0; default 0.5, which
        gives FedBuff's ``1 / sqrt(1 + tau)``.
    b
        Staleness (rounds) the hinge tolerates undiscounted, >= 0; default 4.
    fraction
        Fraction of the domains asked to train concurrently, in (0, 1]; default 1.0.
    """

    asynchronous = True

    def __init__(
        self, *, buffer_size: int = 10, server_lr: float = 1.0, staleness: StalenessFunction = "polynomial",
        a: float = 0.5, b: int = 4, fraction: float = 1.0,
    ) -> None:
        super().__init__(fraction=fraction)
        self.buffer_size = check_int("buffer_size", buffer_size, 1)
        self.server_lr = check_real("server_lr", server_lr, 0.0, open_low=True)
        if staleness not in ("constant", "polynomial", "hinge"):
            raise InvalidInput(f"staleness must be 'constant', 'polynomial' or 'hinge', got {staleness!r}")
        self.staleness: StalenessFunction = staleness
        self.a = check_real("a", a, 0.0)
        self.b = check_int("b", b, 0)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer_size, "server_lr": self.server_lr, "staleness": self.staleness,
                "a": self.a, "b": self.b, **super().hyperparameters}

    def staleness_weight(self, tau: int) -> float:
        """``s(tau)``, the discount of an update ``tau`` rounds stale, in (0, 1].

        Examples
        --------
        >>> FedBuff().staleness_weight(3)
        0.5
        """
        tau = check_int("staleness", tau, 0)
        if self.staleness == "constant":
            return 1.0
        if self.staleness == "polynomial":
            return math.pow(1.0 + tau, -self.a)
        return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)

    def weight(self, update: ClientUpdate) -> float:
        """``s(staleness) * num_examples``."""
        return self.staleness_weight(update.staleness) * update.num_examples

    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        """One server step on a buffer of at most ``buffer_size`` updates.

        The driver may flush a partly filled buffer at the end of training.
        """
        if len(updates) > self.buffer_size:
            raise InvalidInput(
                f"FedBuff(buffer_size={self.buffer_size}) got a buffer of {len(updates)} updates"
            )
        return super().aggregate(global_vec, updates)

    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        return global_vec + self.server_lr * delta
