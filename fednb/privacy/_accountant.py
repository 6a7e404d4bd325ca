"""Accountants: compose DP events and answer epsilon for a delta (or delta for an epsilon).

Spent privacy is always recomputed by composing *all* events of a ledger, never by
adding epsilons (which overstates the loss badly under composition). Before composing,
an accountant groups the events: identical releases become one release with a count,
and all plain Gaussian releases merge into one Gaussian with
``1 / sigma^2 = sum_i count_i / sigma_i^2`` (exact for both PLD and RDP: a composition
of Gaussian mechanisms is a Gaussian mechanism, Dong, Roth & Su 2019). A ledger of a
thousand ``update`` runs is thus one Gaussian, answered in closed form in under a millisecond.

Results are cached per (grouped events, delta); composed PLDs per grouped events.

Examples
--------
>>> from fednb.privacy import GaussianEvent, accountant_for
>>> acc = accountant_for("pld")
>>> round(acc.epsilon([GaussianEvent(8.0, sensitivity_factor=2.0)] * 4, 1e-6), 3)
2.254
"""

from __future__ import annotations

import abc
import functools
import math
import numbers
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fednb.errors import InvalidInput
from fednb.privacy._analytic import analytic_gaussian_delta, analytic_gaussian_epsilon
from fednb.privacy._events import (
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    LaplaceEvent,
    PureDPEvent,
    ReplaceOneSubsampledGaussianEvent,
    SubsampledGaussianEvent,
    to_dp_accounting,
)

__all__ = ["Accountant", "EventsLike", "PLDAccountant", "RDPAccountant", "accountant_for"]

EventsLike = Event | Iterable[Event]
"""One event, or any iterable of events (a ledger), composed in any order."""


@dataclass(frozen=True)
class _Grouped:
    """A ledger reduced to what its privacy depends on; hashable, so it keys the caches."""

    gaussian_mu_sq: float
    """Sum over plain Gaussian releases of count * (sensitivity / sigma)^2."""
    others: tuple[tuple[Event, int], ...]
    """Every other distinct single release with its count, in a canonical order."""

    @property
    def empty(self) -> bool:
        return self.gaussian_mu_sq == 0.0 and not self.others

    @property
    def pure_gaussian(self) -> bool:
        return self.gaussian_mu_sq > 0.0 and not self.others

    @property
    def rdp_only(self) -> bool:
        """Holds a release known only by its Rényi curve (distributed discrete Gaussian)."""
        return any(isinstance(e, DistributedDiscreteGaussianEvent) for e, _ in self.others)


def _sort_key(item: tuple[Event, int]) -> tuple[str, str, int]:
    event, count = item
    return event.kind, repr(sorted(event.to_json().items())), count


def _group(events: EventsLike) -> _Grouped:
    counts: Counter[Event] = Counter()
    for top in [events] if isinstance(events, Event) else events:
        if not isinstance(top, Event) or type(top) is Event:
            raise InvalidInput(f"an accountant composes DP events, got {top!r}")
        for leaf, n in top.leaves():
            counts[leaf] += n
    mu_sq_terms: list[float] = []
    others: list[tuple[Event, int]] = []
    for leaf, n in sorted(counts.items(), key=_sort_key):
        if isinstance(leaf, GaussianEvent):
            mu_sq_terms.append(n / leaf.effective_noise_multiplier**2)
        elif isinstance(leaf, SubsampledGaussianEvent) and leaf.sampling_rate == 1.0:
            mu_sq_terms.append(n / leaf.noise_multiplier**2)
        elif isinstance(leaf, ReplaceOneSubsampledGaussianEvent) and leaf.sampling_rate == 1.0:
            # unsampled, a replaced record moves the sum by twice its bound
            mu_sq_terms.append(n * (2.0 / leaf.effective_noise_multiplier) ** 2)
        else:
            others.append((leaf, n))
    return _Grouped(math.fsum(mu_sq_terms), tuple(others))


def _dp_accounting_event(grouped: _Grouped) -> Any:
    """The ledger minus its pure-DP, distributed and replace-one subsampled releases, as one
    dp-accounting event (those three the RDP accountant adds itself)."""
    from dp_accounting import dp_event as dpe  # type: ignore[import-untyped]  # slow import, done lazily

    parts: list[Any] = []
    if grouped.gaussian_mu_sq > 0.0:
        parts.append(dpe.GaussianDpEvent(1.0 / math.sqrt(grouped.gaussian_mu_sq)))
    for event, n in grouped.others:
        if not isinstance(event, (PureDPEvent, DistributedDiscreteGaussianEvent,
                                  ReplaceOneSubsampledGaussianEvent)):
            parts.append(dpe.SelfComposedDpEvent(to_dp_accounting(event), n))
    return dpe.ComposedDpEvent(parts)


def _randomized_response_rdp(epsilon: float, orders: Any) -> Any:
    """Rényi divergence of binary randomized response at ``epsilon``, the worst epsilon-DP pair.

    D_a = ln(p^a (1-p)^(1-a) + (1-p)^a p^(1-a)) / (a - 1) with p = e^eps / (1 + e^eps),
    evaluated in log space; it never exceeds epsilon.
    """
    a = np.asarray(orders, dtype=np.float64)
    log_p = -math.log1p(math.exp(-epsilon))
    log_q = log_p - epsilon
    log_sum = np.logaddexp(a * log_p + (1 - a) * log_q, a * log_q + (1 - a) * log_p)
    return np.minimum(log_sum / (a - 1), epsilon)


def _replace_one_subsampled_rdp(event: ReplaceOneSubsampledGaussianEvent, orders: Any) -> Any:
    """A valid but loose Rényi bound of one replace-one subsampled Gaussian step.

    dp-accounting's RDP accountant has no Poisson-subsampled Gaussian under replace-one.
    Rényi divergence is jointly quasi-convex, so the divergence between the mixtures
    ``q N(a) + (1 - q) N(0)`` and ``q N(b) + (1 - q) N(0)`` is at most that between N(a)
    and N(b): the unsampled Gaussian of sensitivity 2 * factor * C, ``a (2 / z_eff)^2 / 2``.
    It ignores amplification by sampling, so it overstates epsilon (several times for
    small q); the PLD accountant, exact for this kind, is the one fednb charges with.
    """
    a = np.asarray(orders, dtype=np.float64)
    return a * (2.0 / event.effective_noise_multiplier) ** 2 / 2.0


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not (0 < delta < 1):
        raise InvalidInput(f"delta must be a probability in (0, 1), e.g. 1e-6; got {delta!r}")
    return float(delta)


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
        math.isfinite(epsilon) and epsilon >= 0
    ):
        raise InvalidInput(f"epsilon must be finite and >= 0 (nats), got {epsilon!r}")
    return float(epsilon)


class Accountant(abc.ABC):
    """Composes DP events into a privacy guarantee.

    Subclasses implement ``_epsilon`` and ``_delta`` on a grouped ledger; grouping,
    validation and caching live here, so every accountant composes the same way.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._epsilon_cached = functools.lru_cache(maxsize=4096)(self._epsilon)
        self._delta_cached = functools.lru_cache(maxsize=4096)(self._delta)

    def epsilon(self, events: EventsLike, delta: float) -> float:
        """The epsilon spent by all ``events`` together, at ``delta``.

        Parameters
        ----------
        events
            One event or a ledger of events (any order; empty means nothing spent).
        delta
            Target delta (probability, in (0, 1)).

        Returns
        -------
        float
            Epsilon (nats, >= 0); ``math.inf`` if no finite epsilon reaches ``delta``.
        """
        d = _check_delta(delta)
        grouped = _group(events)
        return 0.0 if grouped.empty else self._epsilon_cached(grouped, d)

    def delta(self, events: EventsLike, epsilon: float) -> float:
        """The delta of all ``events`` together, at ``epsilon``.

        Parameters
        ----------
        events
            One event or a ledger of events.
        epsilon
            Privacy loss bound (nats, >= 0).

        Returns
        -------
        float
            Delta (probability, in [0, 1]).
        """
        e = _check_epsilon(epsilon)
        grouped = _group(events)
        return 0.0 if grouped.empty else self._delta_cached(grouped, e)

    def epsilon_grouped(self, grouped: _Grouped, delta: float) -> float:
        """:meth:`epsilon` of an already grouped ledger (cached)."""
        return self._epsilon_cached(grouped, delta)

    def delta_grouped(self, grouped: _Grouped, epsilon: float) -> float:
        """:meth:`delta` of an already grouped ledger (cached)."""
        return self._delta_cached(grouped, epsilon)

    @abc.abstractmethod
    def _epsilon(self, grouped: _Grouped, delta: float) -> float: ...

    @abc.abstractmethod
    def _delta(self, grouped: _Grouped, epsilon: float) -> float: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PLDAccountant(Accountant):
    """Privacy loss distribution accounting, with dp-accounting's PLD library.

    The default accountant of fednb: tight for Gaussian, Laplace and subsampled
    Gaussian releases. Ledgers made only of plain Gaussian releases are answered in
    closed form (:func:`analytic_gaussian_epsilon`, Balle & Wang 2018), which is exact
    for them; everything else is composed from dp-accounting's PLD builders, with
    pessimistic discretization (an upper bound on the true epsilon), exactly as
    dp-accounting's ``pld.PLDAccountant`` builds them, plus the worst-case PLD of an
    epsilon-DP release for :class:`PureDPEvent` (which that accountant does not take
    under add-or-remove adjacency), and the replace-one PLD
    (``neighboring_relation=REPLACE_ONE``) for :class:`ReplaceOneSubsampledGaussianEvent`,
    which its ``PoissonSampledDpEvent`` cannot express. A ledger holding a
    :class:`DistributedDiscreteGaussianEvent`, whose bound is a Rényi curve with no PLD, is
    composed whole by the RDP accountant (an upper bound, a few percent above PLD's).

    Parameters
    ----------
    value_discretization_interval
        Grid step of the privacy loss (nats, > 0). The default 1e-3 is within 0.05% of
        1e-4 on 10,000 DP-SGD steps (epsilon 6.191 vs 6.188) and about 10 times faster.
    """

    name = "pld"

    def __init__(self, value_discretization_interval: float = 1e-3) -> None:
        v = value_discretization_interval
        if not (math.isfinite(v) and 0 < v <= 0.1):
            raise InvalidInput(f"value_discretization_interval must be in (0, 0.1] nats, got {v!r}")
        super().__init__()
        self.value_discretization_interval = float(v)
        self._pld = functools.lru_cache(maxsize=32)(self._compose)

    def _compose(self, grouped: _Grouped) -> Any:
        # dp-accounting's PLD builders, as its PLDAccountant calls them (add-or-remove
        # adjacency), plus the pessimistic PLD of an epsilon-DP release for PureDPEvent.
        from dp_accounting.pld import common  # type: ignore[import-untyped]
        from dp_accounting.pld import privacy_loss_distribution as pld

        v = self.value_discretization_interval
        parts: list[Any] = []
        if grouped.gaussian_mu_sq > 0.0:
            sigma = 1.0 / math.sqrt(grouped.gaussian_mu_sq)
            parts.append(pld.from_gaussian_mechanism(sigma, value_discretization_interval=v))
        for event, n in grouped.others:
            if isinstance(event, LaplaceEvent):
                b = event.scale_over_sensitivity
                one = pld.from_laplace_mechanism(b, value_discretization_interval=v)
            elif isinstance(event, SubsampledGaussianEvent):
                one = pld.from_gaussian_mechanism(
                    event.noise_multiplier, value_discretization_interval=v, sampling_prob=event.sampling_rate
                )
            elif isinstance(event, ReplaceOneSubsampledGaussianEvent):
                one = pld.from_gaussian_mechanism(
                    event.noise_multiplier, sensitivity=event.sensitivity_factor,
                    value_discretization_interval=v, sampling_prob=event.sampling_rate,
                    neighboring_relation=pld.NeighborRel.REPLACE_ONE)
            elif isinstance(event, PureDPEvent):
                params = common.DifferentialPrivacyParameters(event.epsilon, 0.0)
                one = pld.from_privacy_parameters(params, value_discretization_interval=v)
            else:  # pragma: no cover - every kind is handled above; a new kind must be added here
                raise InvalidInput(f"the PLD accountant cannot compose {event!r}")
            parts.append(one.self_compose(n) if n > 1 else one)
        composed = parts[0]
        for part in parts[1:]:
            composed = composed.compose(part)
        return composed

    def _epsilon(self, grouped: _Grouped, delta: float) -> float:
        if grouped.pure_gaussian:
            return analytic_gaussian_epsilon(1.0 / math.sqrt(grouped.gaussian_mu_sq), delta)
        if grouped.rdp_only:
            return accountant_for("rdp").epsilon_grouped(grouped, delta)
        return max(0.0, float(self._pld(grouped).get_epsilon_for_delta(delta)))

    def _delta(self, grouped: _Grouped, epsilon: float) -> float:
        if grouped.pure_gaussian:
            return analytic_gaussian_delta(1.0 / math.sqrt(grouped.gaussian_mu_sq), epsilon)
        if grouped.rdp_only:
            return accountant_for("rdp").delta_grouped(grouped, epsilon)
        return min(1.0, max(0.0, float(self._pld(grouped).get_delta_for_epsilon(epsilon))))

    def __repr__(self) -> str:
        return f"PLDAccountant(value_discretization_interval={self.value_discretization_interval!r})"


class RDPAccountant(Accountant):
    """Rényi DP accounting (dp-accounting's ``rdp.RdpAccountant``).

    Looser than PLD (about 8% more epsilon for typical DP-SGD runs), kept for
    comparison with tools that report RDP, such as older Opacus versions. Pure-DP
    releases add the exact Rényi divergence of binary randomized response;
    :class:`ReplaceOneSubsampledGaussianEvent` adds a valid but loose bound that ignores
    sampling (:func:`_replace_one_subsampled_rdp`), as dp-accounting's RDP accountant has
    none for it.

    Parameters
    ----------
    orders
        Rényi orders to optimise over; ``None`` uses dp-accounting's default set.
    """

    name = "rdp"

    def __init__(self, orders: tuple[float, ...] | None = None) -> None:
        if orders is not None and (not orders or any(not (o > 1 and math.isfinite(o)) for o in orders)):
            raise InvalidInput(f"RDP orders must be finite numbers > 1, got {orders!r}")
        super().__init__()
        self.orders = None if orders is None else tuple(float(o) for o in orders)
        self._rdp = functools.lru_cache(maxsize=32)(self._compose)

    def _compose(self, grouped: _Grouped) -> tuple[Any, Any]:
        """The RDP orders and the ledger's Rényi divergence at each."""
        from dp_accounting.rdp import rdp_privacy_accountant as rdp  # type: ignore[import-untyped]

        acc = rdp.RdpAccountant(orders=None if self.orders is None else list(self.orders))
        acc.compose(_dp_accounting_event(grouped))
        orders, divergence = acc.orders, acc.rdp
        for event, n in grouped.others:
            if isinstance(event, PureDPEvent):
                divergence = divergence + n * _randomized_response_rdp(event.epsilon, orders)
            elif isinstance(event, DistributedDiscreteGaussianEvent):
                divergence = divergence + n * np.asarray(event.rdp(orders))
            elif isinstance(event, ReplaceOneSubsampledGaussianEvent):
                divergence = divergence + n * _replace_one_subsampled_rdp(event, orders)
        return orders, divergence

    def _epsilon(self, grouped: _Grouped, delta: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        return max(0.0, float(rdp.compute_epsilon(*self._rdp(grouped), delta)[0]))

    def _delta(self, grouped: _Grouped, epsilon: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        return min(1.0, max(0.0, float(rdp.compute_delta(*self._rdp(grouped), epsilon)[0])))

    def __repr__(self) -> str:
        return f"RDPAccountant(orders={self.orders!r})"


_ACCOUNTANTS: dict[str, type[Accountant]] = {
    PLDAccountant.name: PLDAccountant,
    RDPAccountant.name: RDPAccountant,
}
_SHARED: dict[str, Accountant] = {}


def accountant_for(name: str = "pld") -> Accountant:
    """The shared accountant of a given name, with default settings.

    Parameters
    ----------
    name
        ``"pld"`` (default, tight) or ``"rdp"``.

    Returns
    -------
    Accountant
        One instance per name for the whole process, so its caches are shared.

    Raises
    ------
    fednb.errors.InvalidInput
        For an unknown name.
    """
    cls = _ACCOUNTANTS.get(name)
    if cls is None:
        raise InvalidInput(f"unknown accountant {name!r}; choose one of {sorted(_ACCOUNTANTS)}")
    if name not in _SHARED:
        _SHARED[name] = cls()
    return _SHARED[name]
