"""The one finiteness check of a round: which client updates may be aggregated.

Every update a strategy aggregates has been through :func:`admit`, whoever sent it (a
domain over HTTP, a virtual hospital, a participant of one's own) and whatever the
strategy (its own ``aggregate`` included): the round driver admits each round's (or
buffer's) updates before it calls the strategy, and a strategy called directly with a
plain list admits them itself (:func:`fednb.strategies._base.check_updates`). What comes
out is a :class:`RoundUpdates`, which only :func:`admit` makes, so holding one is the
proof that the check ran: nothing downstream scans the values again, and no flag can
skip the check.

The check is one pass over the updates: their example-weighted mean, accumulated in
float64 by :func:`fednb.kernels.weighted_sum_checked`, which reports whether every value
it stored is finite. With positive weights, a NaN or an infinity in any update makes the
mean NaN or infinite, and a mean of finite values is finite (no sum is stored to
overflow), so one check of the mean covers every input. Only when it fails are the
updates scanned one by one, to name those to drop. The mean is kept: the FedAvg family's
``aggregate`` takes it (:meth:`RoundUpdates.take_mean`) instead of a second pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from fednb import kernels
from fednb.typing import FloatArray

if TYPE_CHECKING:
    from fednb.strategies._base import ClientUpdate

__all__ = ["RoundUpdates", "admit"]

_KEY = object()  # only admit() makes a RoundUpdates


class RoundUpdates(Sequence["ClientUpdate"]):
    """A round's client updates whose every value is finite (made by :func:`admit` only).

    A read-only sequence of :class:`~fednb.strategies.ClientUpdate`; strategies take it
    wherever they take a list of updates.
    """

    __slots__ = ("_mean", "_updates")

    def __init__(self, updates: tuple[ClientUpdate, ...], mean: FloatArray | None, key: object) -> None:
        if key is not _KEY:
            raise TypeError("RoundUpdates are made by fednb.strategies.admit, which checks them")
        self._updates = updates
        self._mean = mean

    @overload
    def __getitem__(self, index: int) -> ClientUpdate: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ClientUpdate, ...]: ...

    def __getitem__(self, index: int | slice) -> ClientUpdate | tuple[ClientUpdate, ...]:
        return self._updates[index]

    def __len__(self) -> int:
        return len(self._updates)

    def __iter__(self) -> Iterator[ClientUpdate]:
        return iter(self._updates)

    def __repr__(self) -> str:
        return f"RoundUpdates({[u.domain for u in self._updates]})"

    def take_mean(self) -> FloatArray | None:
        """The example-weighted mean ``sum_i n_i v_i / sum_i n_i`` (float64) the check
        computed, handed over once (the caller may change it in place); None after that,
        or when the check could not keep one (an overflow of finite float64 values)."""
        mean, self._mean = self._mean, None
        return mean


def admit(updates: Sequence[ClientUpdate]) -> tuple[RoundUpdates, list[ClientUpdate]]:
    """Split ``updates`` into those whose every value is finite and those that are not.

    Parameters
    ----------
    updates
        Client updates of one round (or one asynchronous buffer), their vectors all of one
        length (the caller checks the length against the model first).

    Returns
    -------
    admitted : RoundUpdates
        The updates holding neither NaN nor infinity, in their order.
    refused : list of ClientUpdate
        The others, in their order: the driver records them as ``nonfinite_update``.
    """
    ups = tuple(updates)
    if not ups:
        return RoundUpdates((), None, _KEY), []
    total = float(sum(u.num_examples for u in ups))
    mean, finite = kernels.weighted_sum_checked([u.vector for u in ups],
                                                [u.num_examples / total for u in ups], dtype=np.float64)
    if finite:
        return RoundUpdates(ups, mean, _KEY), []
    refused = [u for u in ups if not kernels.all_finite(u.vector)]
    if not refused:  # finite float64 values whose mean overflowed: admitted, no mean kept
        return RoundUpdates(ups, None, _KEY), []
    kept, _ = admit([u for u in ups if all(u is not r for r in refused)])
    return kept, refused
