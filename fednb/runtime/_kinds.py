"""The request kinds, one :class:`Kind` each: ``update`` (code), ``query``, ``dp-sgd`` and
``stats`` (data).

A data kind's request carries its spec as JSON in ``source``, so the owner approves (and
the audit log hashes) exactly what will run, as for code. The domain and the scientist's
library read what differs between kinds here, never by comparing kind names: how a spec
is parsed and filed, the DP event one run releases (the same construction for the
domain's charge and the scientist's preview), what the sandbox runs, the output policy,
and the properties the domain's release path switches on (:attr:`Kind.trusted`,
:attr:`Kind.disclosure_controlled`, ...).

The heavy parts (queries, DP-SGD, the stats steps) are imported when a method needs
them: ``import fednb.runtime`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from fednb.errors import InvalidInput
from fednb.privacy import GRID_SLACK, ComposedEvent, Event, GaussianEvent
from fednb.protocol import ClientDP, DatasetCard, DPSGDSpec, QuerySpec, RequestKind, StatsSpec, TensorSpec
from fednb.runtime._policy import OutputPolicy, update_event

__all__ = ["KINDS", "Kind", "RequestSpec", "Spec", "kind_of"]

Spec = QuerySpec | DPSGDSpec | StatsSpec
"""The spec a data kind's request files as JSON."""
RequestSpec = Spec | ClientDP
"""What a request's DP event derives from: a data kind's spec, or an update's ``dp=``."""

_DPSGD_SOURCE = '''def __fednb_dpsgd__(data, weights=None):
    from fednb.protocol import DPSGDSpec
    from fednb.runtime import train_dpsgd

    spec = DPSGDSpec.model_validate_json({spec!r})
    return fednb.Update(weights=train_dpsgd(spec, data, weights or None, bounds={bounds!r},
                                            example_dim={example_dim!r}).weights)
'''
"""The source a ``dp-sgd`` run compiles in the sandbox: the approved spec and the dataset's
declared bounds filled in, nothing of the scientist's but the spec."""


@dataclass(frozen=True)
class Kind:
    """What one request kind is and how its requests are read.

    Attributes
    ----------
    name
        The ``RequestCreate.kind`` it answers to.
    code
        The request is code that the sandbox runs (``update``); otherwise it is a spec, data.
    trusted
        The domain's trusted process computes its runs itself (no sandbox, no worker, no
        code of the scientist's): a ``query`` or a ``stats`` step. Such a request takes no
        ``weights=``.
    disclosure_controlled
        Its runs are checked against the dataset's disclosure policy when they are created,
        and without DP they release exact values under the owner's disclosure rules (not
        under ``allow_no_dp``), automatically when approved with ``release="auto"``.
    templated
        An owner's template may approve a request of this kind when it is filed.
    event_uses_card
        Its DP event depends on the dataset (its size, or the card's bounds).
    spec_type
        The pydantic model of its spec; None for code.
    filed_with
        How a scientist files one (for messages).
    function
        The function name its requests file under (a stats step adds ``_<op>``); empty
        for code, whose function names itself.
    """

    name: RequestKind
    code: bool
    trusted: bool
    disclosure_controlled: bool
    templated: bool
    event_uses_card: bool
    spec_type: type[QuerySpec] | type[DPSGDSpec] | type[StatsSpec] | None
    filed_with: str
    function: str = ""

    def __post_init__(self) -> None:
        # what the domain does with a flag relies on the spec it implies: a trusted run is
        # computed from a query's or a stats spec, a disclosure-controlled one from a stats
        # spec (a DP run whose default could not be built would never be committed)
        if self.code != (self.spec_type is None):
            raise TypeError(f"kind {self.name}: code kinds have no spec type, data kinds one")
        if self.trusted and self.spec_type not in (QuerySpec, StatsSpec):
            raise TypeError(f"kind {self.name}: the trusted runtime computes query and stats specs only")
        if self.disclosure_controlled and self.spec_type is not StatsSpec:
            raise TypeError(f"kind {self.name}: disclosure control reads stats specs only")

    # -- the spec --------------------------------------------------------------------
    def parse(self, source: str) -> Spec:
        """The spec a data kind's request filed as ``source``.

        Raises
        ------
        InvalidInput
            The JSON is not a valid spec (the first error, with where it is), or the kind
            is code (it has no spec).
        """
        if self.spec_type is None:
            raise InvalidInput(f"a {self.name} request is code, not a spec: it has nothing to parse")
        try:
            return self.spec_type.model_validate_json(source)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(map(str, e["loc"]))
            raise InvalidInput(f"invalid {self.name} spec: {e['msg']}"
                               + (f" ({where})" if where else "")) from None

    def spec(self, source: str, dp: ClientDP | Mapping[str, Any] | None) -> RequestSpec | None:
        """What a request's DP derives from: an update's ``dp`` (None without DP), a data
        kind's spec parsed from ``source``."""
        if self.code:
            return None if dp is None else ClientDP.model_validate(dp)
        return self.parse(source)

    def source(self, spec: Spec) -> str:
        """The JSON text a request of ``spec`` files (what the owner reviews)."""
        return self._own(spec).model_dump_json(indent=1)

    def function_name(self, spec: Spec) -> str:
        """The function name a request of ``spec`` files under (``stats_<op>`` for a step)."""
        own = self._own(spec)
        return f"{self.function}_{own.op}" if isinstance(own, StatsSpec) else self.function

    def _own(self, spec: object) -> Spec:
        if self.spec_type is None or not isinstance(spec, self.spec_type):
            raise TypeError(f"a {self.name} request's spec is a {self.spec_type}, not {type(spec).__name__}")
        return spec

    # -- privacy ---------------------------------------------------------------------
    def is_dp(self, spec: RequestSpec | None) -> bool:
        """Whether a request of ``spec`` releases with DP (and is charged): a query and a
        DP-SGD training always; an update with ``dp=``; a stats step with noise."""
        if self.code:
            return isinstance(spec, ClientDP)
        own = self._own(spec)
        return bool(own.dp) if isinstance(own, StatsSpec) else True

    def event(self, spec: RequestSpec | None, card: DatasetCard | None = None, *,
              num_examples: int | None = None, has_metrics: bool = False) -> Event | None:
        """The DP event of one run of a request of ``spec`` (None: no DP), the one the
        domain charges and the scientist previews.

        Parameters
        ----------
        card
            The dataset's card, where :attr:`event_uses_card` (a ``stats`` step needs it;
            a DP-SGD training needs only its size).
        num_examples
            A DP-SGD training's number of examples, in place of the card's.
        has_metrics
            An update's result carries declared metrics (noised too).
        """
        if not self.is_dp(spec):
            return None
        if isinstance(spec, ClientDP):
            return update_event(spec, has_metrics)
        own = self._own(spec)
        if isinstance(own, QuerySpec):
            from fednb.runtime._query import query_events

            return ComposedEvent(tuple(query_events(own)))
        if isinstance(own, DPSGDSpec):
            from fednb.runtime._dpsgd import dpsgd_event

            n = num_examples if num_examples is not None else None if card is None else card.num_examples
            if n is None:
                raise TypeError("a dp-sgd event needs the dataset's card or num_examples")
            return dpsgd_event(own, n)
        if card is None:
            raise TypeError("a stats event needs the dataset's card")
        return _stats_event(own, card)

    # -- what runs and what leaves ---------------------------------------------------
    def run_source(self, spec: RequestSpec | None, source: str, function_name: str,
                   card: DatasetCard | None = None) -> tuple[str, str]:
        """The source text and function name the sandbox runs for a request (on the dataset
        of ``card``: a DP-SGD run brings values into the card's declared bounds)."""
        if not isinstance(spec, DPSGDSpec):
            return source, function_name
        bounds = {} if card is None else {
            name: card.variables[name].bounds for name in (spec.features, spec.target)
            if name in card.variables}
        return _DPSGD_SOURCE.format(spec=spec.model_dump_json(), bounds=bounds,
                                    example_dim=None if card is None else card.example_dim), "__fednb_dpsgd__"

    def output_policy(self, spec: RequestSpec | None, *, weights: dict[str, TensorSpec] | None,
                      metrics: Mapping[str, tuple[float, float]], max_bytes: int) -> OutputPolicy:
        """The output policy of a request's runs: the approved weights and metrics, with an
        update's DP. A DP-SGD training releases its model's structure, whatever the request
        said, and a failed run releases the default (it was trained with its own noise; no
        metrics leave)."""
        if isinstance(spec, DPSGDSpec):
            return OutputPolicy(weights=spec.weight_specs(), max_bytes=max_bytes, fallback=True)
        return OutputPolicy(weights=weights, max_bytes=max_bytes, metrics=dict(metrics),
                            dp=spec if isinstance(spec, ClientDP) else None)


def _stats_event(spec: StatsSpec, card: DatasetCard) -> Event:
    """One ``GaussianEvent(z, GRID_SLACK)`` per array the step noises (those of nonzero
    sensitivity in the data-independent default, from the spec and the card only)."""
    from fednb.runtime._stats import default

    assert spec.noise_multiplier is not None
    noised = [s for s in default(spec, card).sensitivity.values() if s > 0]
    return ComposedEvent(tuple(GaussianEvent(spec.noise_multiplier, sensitivity_factor=GRID_SLACK)
                               for _ in noised))


KINDS: Mapping[RequestKind, Kind] = MappingProxyType({
    "update": Kind("update", code=True, trusted=False, disclosure_controlled=False, templated=False,
                   event_uses_card=False, spec_type=None, filed_with="@fednb.remote"),
    "query": Kind("query", code=False, trusted=True, disclosure_controlled=False, templated=False,
                  event_uses_card=False, spec_type=QuerySpec, filed_with="fednb.Query(...)",
                  function="query"),
    "dp-sgd": Kind("dp-sgd", code=False, trusted=False, disclosure_controlled=False, templated=False,
                   event_uses_card=True, spec_type=DPSGDSpec, filed_with="fednb.DPSGD(...)",
                   function="dpsgd"),
    "stats": Kind("stats", code=False, trusted=True, disclosure_controlled=True, templated=True,
                  event_uses_card=True, spec_type=StatsSpec, filed_with="fednb.stats (describe, glm, ...)",
                  function="stats"),
})
"""Every request kind, by name."""


_BY_NAME: dict[str, Kind] = {name: kind for name, kind in KINDS.items()}


def kind_of(name: str) -> Kind:
    """The kind called ``name`` (a request row's ``kind``)."""
    kind = _BY_NAME.get(name)
    if kind is None:
        raise InvalidInput(f"unknown request kind {name!r}; the kinds are {sorted(_BY_NAME)}")
    return kind
