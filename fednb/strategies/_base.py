"""What every strategy shares: client updates, round configs, argument checks, the hook base.

A strategy sees a model only as one flat float64 vector. The round driver turns named
weights into that vector (:mod:`fednb.strategies._layout`) and calls the hooks of a
:class:`Strategy`:

1. :meth:`Strategy.configure_round` before a round: the parameters every client function
   receives (FedProx adds ``mu``);
2. :meth:`Strategy.aggregate` after it, on the single client updates, every one of them
   admitted by the one finiteness check (:func:`fednb.strategies.admit`); or, under secure
   aggregation, :meth:`Strategy.aggregate_sum` on the masked sum alone, whose terms the
   driver weights with :meth:`Strategy.weight`;
3. :meth:`Strategy.state_dict` / :meth:`Strategy.load_state_dict` to checkpoint the
   server optimiser between rounds.

The arithmetic lives in :mod:`fednb.strategies._ops`; the hooks only validate and call it.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.kernels import one_blas_thread
from fednb.strategies._admit import RoundUpdates, admit
from fednb.typing import FloatArray

__all__ = [
    "ClientUpdate",
    "MeanStrategy",
    "ParamValue",
    "RoundConfig",
    "StateDict",
    "Strategy",
    "as_flat",
    "check_flat",
    "check_global",
    "check_int",
    "check_real",
    "check_updates",
    "stack_updates",
    "weighted_sum",
]

ParamValue = float | int | str | bool
"""A run parameter a client function may receive (the request's schema bounds it)."""
StateDict = dict[str, FloatArray | float | int]
"""Server-optimiser state: flat arrays and scalars, safetensors- and JSON-friendly."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a float after checking that it is a real number in the given interval.

    Raises
    ------
    InvalidInput
        Naming ``name``, the bad value and the interval it must lie in.
    """
    ok = _is_real(value) and math.isfinite(float(cast(float, value)))
    x = float(cast(float, value)) if ok else math.nan
    ok = ok and (low < x if open_low else low <= x) and (x < high if open_high else x <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise InvalidInput(f"{name} must be a finite number in {interval}, got {value!r}")
    return x


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an int after checking that it is an integer >= ``low`` (bools refused)."""
    if not _is_int(value) or cast(int, value) < low:
        raise InvalidInput(f"{name} must be an integer >= {low}, got {value!r}")
    return int(cast(int, value))


def as_flat(vec: object, what: str) -> FloatArray:
    """``vec`` as a 1-D float32 or float64 array, its values not scanned (float32 and float64
    stay as they are, uncopied; other real dtypes become float64).

    Raises
    ------
    InvalidInput
        If ``vec`` is not a 1-D array of real numbers.
    """
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":
        raise InvalidInput(
            f"{what} must be a flat (1-D) array of real numbers, got shape {arr.shape} and dtype "
            f"{arr.dtype}; flatten named weights with fednb.strategies.flatten"
        )
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def check_flat(vec: object, what: str, *, keep_float32: bool = False) -> FloatArray:
    """``vec`` as a 1-D finite float64 array (no copy when it already is one; with
    ``keep_float32``, a float32 array stays float32, uncopied).

    Raises
    ------
    InvalidInput
        If ``vec`` is not a 1-D array of real numbers, or holds NaN or infinity.
    """
    arr = as_flat(vec, what)
    out = arr if keep_float32 and arr.dtype == np.float32 else arr.astype(np.float64, copy=False)
    if not kernels.all_finite(out):
        raise InvalidInput(f"{what} holds NaN or infinity")
    return out


def check_global(global_vec: object) -> FloatArray:
    """The current global model as a 1-D finite float64 array (see :func:`check_flat`)."""
    return check_flat(global_vec, "the global vector")


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """One client's answer to a round, as a strategy sees it.

    Parameters
    ----------
    vector
        The client's new weights, flattened (1-D, finite; float32 stays float32, any
        other real dtype is stored as float64). For an
        asynchronous run the driver rebases a stale update onto the current global
        vector: ``global + (new - weights the client started from)``.
    num_examples
        Rows the client trained on (set by the domain's runtime, not by the client code).
    domain
        Name of the domain (hospital) that sent it.
    staleness
        Rounds since the global weights the client started from; 0 in synchronous runs.
    metrics
        Released metrics of the run (loss, accuracy ...), by name.

    The values are not scanned here: the round driver admits a round's updates through
    :func:`fednb.strategies.admit`, the one finiteness check, before any strategy sees
    them, and a strategy given a plain list admits it itself.
    """

    vector: FloatArray
    num_examples: int
    domain: str
    staleness: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", as_flat(self.vector, f"the update of {self.domain!r}"))
        check_int("num_examples", self.num_examples, 1)
        if not isinstance(self.domain, str):
            raise InvalidInput(f"domain must be a domain name (str), got {self.domain!r}")
        check_int("staleness", self.staleness, 0)
        if not all(isinstance(k, str) and _is_real(v) for k, v in self.metrics.items()):
            raise InvalidInput(f"metrics must map names to numbers, got {self.metrics!r}")


@dataclass(frozen=True)
class RoundConfig:
    """What the driver sends to the clients of one round.

    Parameters
    ----------
    params
        Keyword parameters of the client function this round: the scientist's own
        ones plus those the strategy adds (FedProx's ``mu``). The global weights travel
        beside them as the function's ``weights`` argument.
    fraction
        Fraction of the available domains to sample this round, in (0, 1].
    """

    params: dict[str, ParamValue]
    fraction: float = 1.0

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)


def _check_fraction(fraction: object) -> float:
    return check_real("fraction", fraction, 0.0, 1.0, open_low=True)


def weighted_add(total: FloatArray, vec: FloatArray, weight: float) -> FloatArray:
    """``total += weight * vec`` in place, without a temporary (BLAS axpy, one thread)."""
    from scipy.linalg.blas import daxpy, saxpy

    if total.flags.c_contiguous and vec.flags.c_contiguous and vec.dtype == total.dtype:
        axpy = {np.dtype(np.float64): daxpy, np.dtype(np.float32): saxpy}.get(total.dtype)
        if axpy is not None:
            with one_blas_thread():
                return np.asarray(axpy(vec, total, a=weight))
    total += weight * vec
    return total


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float]) -> FloatArray:
    """``sum_i weights[i] * vectors[i]`` (:func:`fednb.kernels.weighted_sum`): float32 when
    every vector is float32 (models trained in float32, as in Flower and PyTorch), else
    float64; accumulated in float64 either way on the CPU kernels."""
    return kernels.weighted_sum(list(vectors), weights)


def check_updates(global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> RoundUpdates:
    """``updates`` admitted (:func:`fednb.strategies.admit`, the one finiteness check;
    updates the driver admitted already pass as they are), after refusing an empty round,
    anything not a ClientUpdate and vectors of another size.

    Raises
    ------
    InvalidInput
        Naming the update at fault: of another size, or holding NaN or infinity.
    """
    if isinstance(updates, RoundUpdates) and updates:
        if updates[0].vector.shape != global_vec.shape:
            _refuse_size(global_vec, updates[0])
        return updates
    if not updates:
        raise InvalidInput("no client updates to aggregate; the driver needs at least one per round")
    for u in updates:
        if not isinstance(u, ClientUpdate):
            raise InvalidInput(f"strategies aggregate ClientUpdate objects, got {type(u).__name__}")
        if u.vector.shape != global_vec.shape:
            _refuse_size(global_vec, u)
    admitted, refused = admit(updates)
    if refused:
        raise InvalidInput(f"the updates of {[u.domain for u in refused]} hold NaN or infinity; the round "
                           "driver drops such updates before a strategy sees them")
    return admitted


def _refuse_size(global_vec: FloatArray, u: ClientUpdate) -> None:
    raise InvalidInput(
        f"the update of {u.domain!r} has {u.vector.size} parameters, the global model "
        f"{global_vec.size}; every domain must train the same architecture"
    )


def stack_updates(global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
    """The updates' vectors as one (N, P) float64 array, after checking their shapes."""
    check_updates(global_vec, updates)
    return np.stack([u.vector for u in updates], dtype=np.float64)


class Strategy(abc.ABC):
    """Base of every aggregation strategy: a few hooks, no loop, no transport.

    Parameters
    ----------
    fraction
        Fraction of the domains the driver samples each round, in (0, 1]; default 1.0
        (every hospital, every round).

    Attributes
    ----------
    secure_aggregation
        True when the strategy can work from the sum of weighted updates alone
        (:meth:`aggregate_sum`), so it composes with secure aggregation.
    robust
        True for Byzantine-robust rules, which need the single updates.
    asynchronous
        True for strategies made for buffered asynchronous rounds (FedBuff).
    """

    secure_aggregation: ClassVar[bool]
    robust: ClassVar[bool]
    asynchronous: ClassVar[bool] = False

    def __init__(self, *, fraction: float = 1.0) -> None:
        self.fraction = _check_fraction(fraction)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, by name (shown by ``repr`` and kept in histories)."""
        return {"fraction": self.fraction}

    @property
    def min_updates(self) -> int:
        """The fewest updates :meth:`aggregate` accepts in one round (or buffer); 1 by default.

        The driver should compare it with the number of domains (or its buffer size)
        before the first round rather than fail in the middle of a run.
        """
        return 1

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({args})"

    def configure_round(self, server_round: int, params: Mapping[str, ParamValue]) -> RoundConfig:
        """The configuration the driver sends to the clients of round ``server_round``.

        Parameters
        ----------
        server_round
            Index of the round about to start, from 0.
        params
            The scientist's parameters of the client function.

        Returns
        -------
        RoundConfig
            By default the parameters unchanged (copied) and the strategy's ``fraction``.
        """
        check_int("server_round", server_round, 0)
        return RoundConfig(dict(params), self.fraction)

    def weight(self, update: ClientUpdate) -> float:
        """The factor the driver multiplies ``update.vector`` by before summing securely.

        ``num_examples`` by default; FedBuff multiplies it by the staleness weight.
        """
        return float(update.num_examples)

    @abc.abstractmethod
    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        """The new global vector from the current one and this round's client updates."""

    def aggregate_sum(
        self,
        global_vec: FloatArray,
        weighted_sum: FloatArray,
        total_weight: float,
        *,
        total_examples: float | None = None,
    ) -> FloatArray:
        """The new global vector from the secure sum of the updates alone.

        Parameters
        ----------
        global_vec
            The current global vector.
        weighted_sum
            ``sum_i weight(u_i) * u_i.vector`` over the round's updates.
        total_weight
            ``sum_i weight(u_i)``.
        total_examples
            ``sum_i u_i.num_examples``; defaults to ``total_weight``, which it equals
            unless :meth:`weight` is not ``num_examples`` (FedBuff).

        Raises
        ------
        InvalidInput
            For strategies that need the single updates (``secure_aggregation`` False).
        """
        raise InvalidInput(
            f"{type(self).__name__} needs single updates and cannot aggregate a secure sum; "
            "under secure aggregation the domains' norm clipping is the defence — use FedAvg"
        )

    def state_dict(self) -> StateDict:
        """Server-optimiser state to checkpoint; empty for stateless strategies."""
        return {}

    def load_state_dict(self, state: Mapping[str, FloatArray | float | int]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises
        ------
        InvalidInput
            If ``state`` holds keys this strategy does not keep.
        """
        if state:
            raise InvalidInput(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class MeanStrategy(Strategy):
    """Base of the FedAvg family: a server step on the weighted mean of the updates.

    Everything is computed from ``sum_i weight(u_i) * u_i.vector`` and the totals, so
    secure aggregation composes. Two entries, one step: :meth:`aggregate` (single
    updates, admitted by the driver's finiteness check) and :meth:`aggregate_sum` (a
    secure sum) both hand the round's weighted mean to :meth:`aggregate_mean`, which every
    round goes through. A subclass defines only :meth:`server_step`; one that logs or
    alters rounds extends :meth:`aggregate_mean` (or :meth:`server_step`).
    """

    secure_aggregation = True
    robust = False
    plain_mean: ClassVar[bool] = False
    """True when :meth:`server_step` is ``global_vec + delta``: the new model is then the
    weighted mean itself whenever the weights are the example counts."""

    def aggregate(self, global_vec: FloatArray, updates: Sequence[ClientUpdate]) -> FloatArray:
        g = check_global(global_vec)
        ups = check_updates(g, updates)  # the same clear errors as the robust strategies
        # positive weights: a weight of 0 would let BLAS (the reference path) skip a value
        weights = [check_real(f"the weight of {u.domain!r}", self.weight(u), 0.0, open_low=True)
                   for u in ups]
        t, n = float(sum(weights)), float(sum(u.num_examples for u in ups))
        # the admission check computed the example-weighted mean: it is this round's mean
        # unless weight() is not the example count (FedBuff's staleness)
        by_examples = all(w == u.num_examples for w, u in zip(weights, ups, strict=True))
        mean = ups.take_mean() if by_examples else None
        if mean is None:  # one pass, accumulated in float64
            mean, finite = kernels.weighted_sum_checked([u.vector for u in ups], [w / n for w in weights],
                                                        dtype=np.float64)
            if not finite:  # the updates are finite (admitted): only weights this large overflow
                raise InvalidInput(f"the weighted mean overflows: {type(self).__name__}.weight() gives "
                                   f"weights up to {max(weights):g} for {n:g} examples")
        return self.aggregate_mean(g, mean, t, total_examples=n)

    def aggregate_sum(
        self,
        global_vec: FloatArray,
        weighted_sum: FloatArray,
        total_weight: float,
        *,
        total_examples: float | None = None,
    ) -> FloatArray:
        g = check_global(global_vec)
        s = check_flat(weighted_sum, "the weighted sum", keep_float32=True)
        if s.shape != g.shape:
            raise InvalidInput(f"the weighted sum has {s.size} parameters, the global model {g.size}")
        t = check_real("total_weight", total_weight, 0.0, open_low=True)
        n = t if total_examples is None else check_real("total_examples", total_examples, 0.0, open_low=True)
        mean = np.multiply(s, 1.0 / n, dtype=np.float64)  # new: the caller's sum stays
        return self.aggregate_mean(g, mean, t, total_examples=n)

    def aggregate_mean(self, global_vec: FloatArray, mean: FloatArray, total_weight: float, *,
                       total_examples: float) -> FloatArray:
        """The new global vector from a round's weighted mean: the one step every round goes
        through, from single updates (:meth:`aggregate`) or a secure sum
        (:meth:`aggregate_sum`); a subclass that logs or alters rounds extends this
        (extending :meth:`aggregate_sum` sees secure rounds only).

        Parameters
        ----------
        global_vec
            The current global vector (checked, float64).
        mean
            ``sum_i weight(u_i) * u_i.vector / total_examples``, float64: a new array the
            strategy may change in place.
        total_weight
            ``sum_i weight(u_i)``.
        total_examples
            ``sum_i u_i.num_examples``.
        """
        g, t, n = global_vec, total_weight, total_examples
        if self.plain_mean and t == n:
            return mean  # g + (mean - g): the same up to rounding, two passes over the model fewer
        # sum_i w_i (v_i - g) / n: the pseudo-gradient of Reddi et al. (2021), negated.
        return self.server_step(g, weighted_add(mean, g, -t / n))

    @abc.abstractmethod
    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        """The new global vector from the current one and the mean update ``delta``.

        ``delta`` is the weighted mean of ``u_i.vector - global_vec``; plain FedAvg
        returns ``global_vec + delta``.
        """
