"""Immutable records of privacy releases (DP events).

An event says which mechanism ran with which parameters, nothing else; an accountant
composes events into (epsilon, delta). What a kind means never changes once it has
shipped: a ledger written years ago must be read the same way. A new mechanism gets a
new kind (compare dp-accounting's ``dp_event.py``).

All noise parameters are *relative to the sensitivity* of the released quantity, so an
event is free of units: a noise multiplier of 4 means a standard deviation four times
the L2 sensitivity, whatever the clipping norm was.

Neighbouring relation: **replace-one**. Two datasets are neighbours when they have the
same number of patients and differ in the records of one patient (any values,
missing ones included). That is the relation that holds while the exact patient
count n is public, and fednb publishes it (dataset cards, result headers), so every
mechanism is calibrated and accounted under it:

- an ``update`` release, whose clipped output moves by up to 2C when one patient is
  replaced, is a :class:`GaussianEvent` with ``sensitivity_factor=2``;
- a ``query``'s Gaussian releases are :class:`GaussianEvent` whose noise is calibrated
  to the replace-one sensitivity (a sum of values in [lo, hi] moves by hi - lo, a
  histogram by sqrt(2)); a count of all patients is n itself, public, and no release;
- a quantile's exponential mechanism is :class:`PureDPEvent` (its utility, a rank,
  moves by at most 1 when a patient is replaced);
- one DP-SGD step is :class:`ReplaceOneSubsampledGaussianEvent`.

:class:`SubsampledGaussianEvent` keeps its shipped meaning (add-or-remove-one, as
Opacus accounts); ledgers written before the switch are read as they were, and new
DP-SGD runs record the replace-one kind instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from fednb.errors import InvalidInput
from fednb.typing import JSON

__all__ = [
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "Event",
    "GaussianEvent",
    "LaplaceEvent",
    "PureDPEvent",
    "RepeatedEvent",
    "ReplaceOneSubsampledGaussianEvent",
    "SubsampledGaussianEvent",
    "event_from_json",
    "to_dp_accounting",
]


_MAX_PURE_EPSILON = 100.0


def _positive(name: str, value: object, *, upper: float = math.inf, closed_upper: bool = False) -> float:
    """``value`` as a float in (0, upper) (or (0, upper]), else InvalidInput naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    x = float(value)
    ok = math.isfinite(x) and x > 0 and (x <= upper if closed_upper else x < upper)
    if not ok:
        bound = f"<= {upper:g}" if closed_upper else ("finite" if upper == math.inf else f"< {upper:g}")
        raise InvalidInput(f"{name} must be > 0 and {bound}, got {value!r}")
    return x


class Event:
    """Base class of every DP event; use one of its subclasses.

    Subclasses are frozen dataclasses, hashable and comparable by value, so equal
    releases group together when an accountant composes them.
    """

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, JSON]:
        """A plain JSON object with a ``"kind"`` key; :func:`event_from_json` reads it back."""
        raise NotImplementedError

    def leaves(self) -> Iterable[tuple[Event, int]]:
        """The single releases this event is made of, each with how often it occurs."""
        yield self, 1


@dataclass(frozen=True)
class GaussianEvent(Event):
    """Gaussian noise added to a quantity of bounded L2 sensitivity.

    The noise has standard deviation ``noise_multiplier * C`` and the quantity's L2
    sensitivity is ``sensitivity_factor * C``, so the effective noise multiplier (noise
    standard deviation over sensitivity) is ``noise_multiplier / sensitivity_factor``.

    Parameters
    ----------
    noise_multiplier
        Noise standard deviation over the clipping norm C (unitless, > 0).
    sensitivity_factor
        L2 sensitivity over C (unitless, > 0); default 1. The ``update`` kind clips to C
        and is recorded with 2 (any change of the dataset moves a clipped update by at
        most 2C).

    Examples
    --------
    >>> GaussianEvent(8.0, sensitivity_factor=2.0).effective_noise_multiplier
    4.0
    """

    noise_multiplier: float
    sensitivity_factor: float = 1.0
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier))
        object.__setattr__(
            self, "sensitivity_factor", _positive("sensitivity_factor", self.sensitivity_factor)
        )

    @property
    def effective_noise_multiplier(self) -> float:
        """Noise standard deviation over L2 sensitivity (unitless)."""
        return self.noise_multiplier / self.sensitivity_factor

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "noise_multiplier": self.noise_multiplier,
                "sensitivity_factor": self.sensitivity_factor}


@dataclass(frozen=True)
class LaplaceEvent(Event):
    """Laplace noise of scale b added to a quantity of L1 sensitivity Δ1.

    Parameters
    ----------
    scale_over_sensitivity
        b / Δ1 (unitless, > 0); the release is (1 / (b / Δ1))-DP with delta 0.
    """

    scale_over_sensitivity: float
    kind: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "scale_over_sensitivity", _positive("scale_over_sensitivity", self.scale_over_sensitivity)
        )

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "scale_over_sensitivity": self.scale_over_sensitivity}


@dataclass(frozen=True)
class PureDPEvent(Event):
    """Any epsilon-DP release (delta 0), accounted by its worst case.

    For mechanisms known only by their pure-DP guarantee, such as the exponential
    mechanism for a quantile or report-noisy-max. Accountants compose it as binary
    randomized response at ``epsilon``, the least private epsilon-DP mechanism (its
    privacy loss is +-epsilon), so the result holds whatever the mechanism was. For
    Laplace noise use :class:`LaplaceEvent`, which composes more tightly.

    Parameters
    ----------
    epsilon
        The release's privacy loss bound (nats, in (0, 100]; beyond 100 nats a release
        protects nothing, and dp-accounting's arithmetic overflows past about 700).
    """

    epsilon: float
    kind: ClassVar[str] = "pure_dp"

    def __post_init__(self) -> None:
        eps = _positive("epsilon", self.epsilon, upper=_MAX_PURE_EPSILON, closed_upper=True)
        object.__setattr__(self, "epsilon", eps)

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "epsilon": self.epsilon}


@dataclass(frozen=True)
class SubsampledGaussianEvent(Event):
    """One DP-SGD step: Poisson sampling, then a Gaussian sum of per-sample clipped terms.

    Each record enters the batch independently with probability ``sampling_rate``; the
    sum of per-sample gradients clipped to C gets N(0, (noise_multiplier * C)^2) noise.
    Accounted under add-or-remove-one adjacency (sensitivity C), as Opacus does.

    Parameters
    ----------
    sampling_rate
        Poisson sampling probability q, in (0, 1].
    noise_multiplier
        Noise standard deviation over C (unitless, > 0).
    """

    sampling_rate: float
    noise_multiplier: float
    kind: ClassVar[str] = "subsampled_gaussian"

    def __post_init__(self) -> None:
        q = _positive("sampling_rate", self.sampling_rate, upper=1.0, closed_upper=True)
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier))

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "sampling_rate": self.sampling_rate,
                "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class ReplaceOneSubsampledGaussianEvent(Event):
    """One DP-SGD step under replace-one adjacency: Poisson sampling, then a Gaussian sum.

    Each record enters the batch independently with probability ``sampling_rate``; each
    sampled record adds a term of L2 norm at most ``sensitivity_factor * C`` (C the
    clipping norm; a factor above 1 covers the rounding of the noise grid), and the sum
    gets noise of standard deviation ``noise_multiplier * C``. Neighbours differ in one
    record replaced by another, so the two outputs are mixtures
    ``q N(a) + (1 - q) N(0)`` and ``q N(b) + (1 - q) N(0)`` with ``|a|, |b| <= factor * C``:
    dp-accounting's ``from_gaussian_mechanism(..., sampling_prob=q,
    neighboring_relation=REPLACE_ONE)``. At ``q = 1`` it is a Gaussian of sensitivity
    2 * factor * C.

    Parameters
    ----------
    sampling_rate
        Poisson sampling probability q, in (0, 1].
    noise_multiplier
        Noise standard deviation over C (unitless, > 0).
    sensitivity_factor
        Bound on one record's term over C (unitless, > 0); default 1.
    """

    sampling_rate: float
    noise_multiplier: float
    sensitivity_factor: float = 1.0
    kind: ClassVar[str] = "subsampled_gaussian_replace_one"

    def __post_init__(self) -> None:
        q = _positive("sampling_rate", self.sampling_rate, upper=1.0, closed_upper=True)
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "sensitivity_factor",
                           _positive("sensitivity_factor", self.sensitivity_factor))

    @property
    def effective_noise_multiplier(self) -> float:
        """Noise standard deviation over one record's bound (unitless)."""
        return self.noise_multiplier / self.sensitivity_factor

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "sampling_rate": self.sampling_rate,
                "noise_multiplier": self.noise_multiplier, "sensitivity_factor": self.sensitivity_factor}


@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent(Event):
    """A sum carrying at least ``shares`` independent discrete Gaussian shares N_Z(0, s^2).

    Secure aggregation's distributed noise (Kairouz, Liu & Steinke 2021, "The Distributed
    Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML): each
    member adds one share to its quantised update; the sum of t shares is close to, but not
    exactly, N_Z(0, t s^2). Accounted in Rényi DP by their Proposition 14: for an integer
    shift of L2 norm Δ2 and L1 norm Δ1 <= sqrt(d) Δ2,

        eps(a) = min(a/2 r2^2 + tau d,  a/2 (r2^2 + 2 r1 tau + tau^2 d),  a/2 (r2 + sqrt(d) tau)^2)

    with r2 = Δ2 / (sqrt(t) s), r1 = Δ1 / (sqrt(t) s) and
    tau = 10 sum_{k=1}^{t-1} exp(-2 pi^2 s^2 k / (k + 1)). Shares beyond t only add noise.

    Parameters are relative to C, the clipping norm in integer units *including* the
    rounding: a member whose clipped update has norm at most C_0 quantised units enters the
    sum within C = C_0 + sqrt(d) of it (stochastic rounding moves each coordinate by less
    than one unit), so any two of its possible inputs differ by at most 2C.

    Parameters
    ----------
    noise_multiplier
        Standard deviation of the sum of ``shares`` shares (sqrt(t) s) over C (unitless, > 0).
    shares
        t, the fewest shares the sum is guaranteed to carry (the round's threshold), >= 1.
    share_sigma
        s, one share's scale in integer units (> 0); tau depends on it.
    dimension
        d, the number of coordinates (>= 1).
    sensitivity_factor
        L2 sensitivity over C (default 2: replace-one, as ``update`` releases).
    """

    noise_multiplier: float
    shares: int
    share_sigma: float
    dimension: int
    sensitivity_factor: float = 2.0
    kind: ClassVar[str] = "distributed_discrete_gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "share_sigma", _positive("share_sigma", self.share_sigma))
        if self.share_sigma < 0.5:  # Proposition 14 holds for s >= 1/2 only
            raise InvalidInput(f"share_sigma must be >= 0.5 (Kairouz et al., Prop. 14), "
                               f"not {self.share_sigma!r}")
        object.__setattr__(self, "sensitivity_factor",
                           _positive("sensitivity_factor", self.sensitivity_factor))
        for name in ("shares", "dimension"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise InvalidInput(f"{name} must be an integer >= 1, got {v!r}")
            object.__setattr__(self, name, int(v))

    @property
    def tau(self) -> float:
        """Kairouz et al.'s tau: how far the sum of t shares is from one discrete Gaussian."""
        s2 = self.share_sigma**2
        return 10.0 * math.fsum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, self.shares))

    def rdp(self, orders: Iterable[float]) -> list[float]:
        """The Rényi divergence bound (nats) at each order (> 1), Proposition 14."""
        r2 = self.sensitivity_factor / self.noise_multiplier
        d, tau = self.dimension, self.tau
        r1 = math.sqrt(d) * r2
        out = []
        for a in orders:
            out.append(min(a / 2 * r2**2 + tau * d, a / 2 * (r2**2 + 2 * r1 * tau + tau**2 * d),
                           a / 2 * (r2 + math.sqrt(d) * tau) ** 2))
        return out

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "noise_multiplier": self.noise_multiplier, "shares": self.shares,
                "share_sigma": self.share_sigma, "dimension": self.dimension,
                "sensitivity_factor": self.sensitivity_factor}


@dataclass(frozen=True)
class ComposedEvent(Event):
    """Several releases on the same data, possibly chosen adaptively.

    Parameters
    ----------
    events
        The releases, in order (a list is stored as a tuple); may be empty.
    """

    events: tuple[Event, ...]
    kind: ClassVar[str] = "composed"

    def __post_init__(self) -> None:
        events = self.events
        if isinstance(events, Event) or not isinstance(events, (tuple, list)):
            raise InvalidInput(f"ComposedEvent needs a tuple of events, got {events!r}")
        for e in events:
            if not isinstance(e, Event) or type(e) is Event:
                raise InvalidInput(f"ComposedEvent holds only DP events, got {e!r}")
        object.__setattr__(self, "events", tuple(events))

    def leaves(self) -> Iterable[tuple[Event, int]]:
        for e in self.events:
            yield from e.leaves()

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "events": [e.to_json() for e in self.events]}


@dataclass(frozen=True)
class RepeatedEvent(Event):
    """The same release made ``count`` times (adaptively chosen queries allowed).

    Parameters
    ----------
    event
        The release that is repeated.
    count
        How many times, >= 1.
    """

    event: Event
    count: int
    kind: ClassVar[str] = "repeated"

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event) or type(self.event) is Event:
            raise InvalidInput(f"RepeatedEvent repeats a DP event, got {self.event!r}")
        c = self.count
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1:
            raise InvalidInput(f"count must be an integer >= 1, got {c!r}")
        object.__setattr__(self, "count", int(c))

    def leaves(self) -> Iterable[tuple[Event, int]]:
        for e, n in self.event.leaves():
            yield e, n * self.count

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "event": self.event.to_json(), "count": self.count}


def _fields(obj: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    keys = set(obj) - {"kind"}
    missing = [k for k in required if k not in keys]
    extra = sorted(keys - set(required) - set(optional))
    if missing or extra:
        raise InvalidInput(
            f"event of kind {obj.get('kind')!r} needs fields {list(required)}"
            + (f" (optional {list(optional)})" if optional else "")
            + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else "")
        )


def _gaussian(obj: dict[str, Any]) -> Event:
    _fields(obj, ("noise_multiplier",), ("sensitivity_factor",))
    return GaussianEvent(obj["noise_multiplier"], obj.get("sensitivity_factor", 1.0))


def _laplace(obj: dict[str, Any]) -> Event:
    _fields(obj, ("scale_over_sensitivity",))
    return LaplaceEvent(obj["scale_over_sensitivity"])


def _pure_dp(obj: dict[str, Any]) -> Event:
    _fields(obj, ("epsilon",))
    return PureDPEvent(obj["epsilon"])


def _subsampled(obj: dict[str, Any]) -> Event:
    _fields(obj, ("sampling_rate", "noise_multiplier"))
    return SubsampledGaussianEvent(obj["sampling_rate"], obj["noise_multiplier"])


def _subsampled_replace(obj: dict[str, Any]) -> Event:
    _fields(obj, ("sampling_rate", "noise_multiplier"), ("sensitivity_factor",))
    return ReplaceOneSubsampledGaussianEvent(obj["sampling_rate"], obj["noise_multiplier"],
                                             obj.get("sensitivity_factor", 1.0))


def _distributed(obj: dict[str, Any]) -> Event:
    _fields(obj, ("noise_multiplier", "shares", "share_sigma", "dimension"), ("sensitivity_factor",))
    return DistributedDiscreteGaussianEvent(obj["noise_multiplier"], obj["shares"], obj["share_sigma"],
                                            obj["dimension"], obj.get("sensitivity_factor", 2.0))


def _composed(obj: dict[str, Any]) -> Event:
    _fields(obj, ("events",))
    if not isinstance(obj["events"], list):
        raise InvalidInput(f"'events' of a composed event must be a list, got {obj['events']!r}")
    return ComposedEvent(tuple(event_from_json(e) for e in obj["events"]))


def _repeated(obj: dict[str, Any]) -> Event:
    _fields(obj, ("event", "count"))
    return RepeatedEvent(event_from_json(obj["event"]), obj["count"])


_READERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    GaussianEvent.kind: _gaussian,
    LaplaceEvent.kind: _laplace,
    PureDPEvent.kind: _pure_dp,
    SubsampledGaussianEvent.kind: _subsampled,
    ReplaceOneSubsampledGaussianEvent.kind: _subsampled_replace,
    DistributedDiscreteGaussianEvent.kind: _distributed,
    ComposedEvent.kind: _composed,
    RepeatedEvent.kind: _repeated,
}


def event_from_json(obj: JSON) -> Event:
    """Read back an event written by ``Event.to_json``.

    Parameters
    ----------
    obj
        A JSON object with a ``"kind"`` key.

    Raises
    ------
    fednb.errors.InvalidInput
        Unknown kind, missing or unknown fields, or parameters out of range.

    Examples
    --------
    >>> e = RepeatedEvent(GaussianEvent(8.0, 2.0), 3)
    >>> event_from_json(e.to_json()) == e
    True
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise InvalidInput(f"a DP event is a JSON object with a 'kind' key, got {obj!r}")
    reader = _READERS.get(obj["kind"])
    if reader is None:
        raise InvalidInput(f"unknown DP event kind {obj['kind']!r}; known kinds: {sorted(_READERS)}")
    return reader(obj)


def to_dp_accounting(event: Event) -> Any:
    """The ``dp_accounting.dp_event.DpEvent`` that means the same as ``event``.

    ``GaussianEvent`` becomes a ``GaussianDpEvent`` with the effective noise multiplier
    (noise standard deviation over sensitivity); ``LaplaceEvent`` a ``LaplaceDpEvent``;
    ``SubsampledGaussianEvent`` a ``PoissonSampledDpEvent`` of a ``GaussianDpEvent``
    (add-or-remove); ``ReplaceOneSubsampledGaussianEvent`` has no dp-accounting event
    (its ``PoissonSampledDpEvent`` means add-or-remove) and raises InvalidInput: the PLD
    accountant builds its PLD with ``neighboring_relation=REPLACE_ONE`` itself;
    composed and repeated events become ``ComposedDpEvent`` and ``SelfComposedDpEvent``.
    ``PureDPEvent`` becomes binary ``RandomizedResponseDpEvent`` with epsilon
    ln((2 - p) / p), its worst case; dp-accounting composes that event only under
    replace-one adjacency, so fednb's accountants compose pure-DP releases themselves.
    ``DistributedDiscreteGaussianEvent`` has no dp-accounting kind (InvalidInput): the
    accountants compose its Rényi curve themselves.
    """
    from dp_accounting import dp_event as dpe  # type: ignore[import-untyped]  # slow import, done lazily

    if isinstance(event, GaussianEvent):
        return dpe.GaussianDpEvent(event.effective_noise_multiplier)
    if isinstance(event, LaplaceEvent):
        return dpe.LaplaceDpEvent(event.scale_over_sensitivity)
    if isinstance(event, PureDPEvent):
        tail = math.exp(-event.epsilon)
        return dpe.RandomizedResponseDpEvent(noise_parameter=2.0 * tail / (1.0 + tail), num_buckets=2)
    if isinstance(event, SubsampledGaussianEvent):
        return dpe.PoissonSampledDpEvent(event.sampling_rate, dpe.GaussianDpEvent(event.noise_multiplier))
    if isinstance(event, ComposedEvent):
        return dpe.ComposedDpEvent([to_dp_accounting(e) for e in event.events])
    if isinstance(event, RepeatedEvent):
        return dpe.SelfComposedDpEvent(to_dp_accounting(event.event), event.count)
    if isinstance(event, DistributedDiscreteGaussianEvent):
        raise InvalidInput(f"{event!r} has no dp-accounting kind: accountants compose its Rényi curve")
    if isinstance(event, ReplaceOneSubsampledGaussianEvent):
        raise InvalidInput(f"{event!r} has no dp-accounting event kind (PoissonSampledDpEvent is "
                           "add-or-remove): accountants build its replace-one PLD themselves")
    raise InvalidInput(f"not a DP event: {event!r}")
