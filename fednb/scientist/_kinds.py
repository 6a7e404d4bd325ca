"""Requests sent as data, not code: ``fednb.Query`` and ``fednb.DPSGD``.

Both file their spec as canonical JSON, so the owner reviews (and the audit log hashes)
exactly what the domain will run. ``preview_epsilon`` only previews: the domain
recomputes and charges the epsilon where the noise is added, from the same event
(:meth:`fednb.runtime.Kind.event`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fednb.client import DomainClient, RemoteRequest
from fednb.errors import InvalidInput
from fednb.privacy import Event, RepeatedEvent, accountant_for
from fednb.protocol import Aggregation, DPSGDSpec, QuerySpec, RequestCreate, Update, code_hash
from fednb.runtime import KINDS, Kind, Spec, check_query, run_query
from fednb.typing import Weights

__all__ = ["DPSGD", "DPSGDSpec", "Query"]


_QUERY, _DPSGD = KINDS["query"], KINDS["dp-sgd"]


def _epsilon(event: Event | None, runs: int, delta: float) -> float:
    assert event is not None  # a query and a DP-SGD training are always DP
    return float(accountant_for("pld").epsilon([RepeatedEvent(event, runs)], delta))


def _file(client: DomainClient, kind: Kind, spec: Spec, source: str, dataset: str | list[str],
          runs: int, weights: Weights | None = None, description: str = "",
          request_id: str | None = None, slot_s: float | None = None) -> RemoteRequest:
    from fednb.runtime import weight_specs

    body = RequestCreate(id=request_id or uuid.uuid4().hex, function_name=kind.function_name(spec),
                         kind=kind.name, source=source, code_hash=code_hash(source),
                         datasets=[dataset] if isinstance(dataset, str) else list(dataset),
                         weights=None if weights is None else weight_specs(weights), runs=runs,
                         description=description, slot_s=slot_s)
    return client.requests.submit(body)


class Query:
    """Declared aggregations over variables with declared bounds; no code.

    Examples
    --------
    >>> q = Query(Query.count(), Query.mean("x"), Query.quantile("age", [0.5]),
    ...           noise_multiplier=2.0)                                  # doctest: +SKIP
    >>> req = q.request(h, "breast-cancer")                              # doctest: +SKIP
    """

    def __init__(self, *aggregations: Aggregation | dict[str, Any], noise_multiplier: float,
                 quantile_epsilon: float = 0.1) -> None:
        self.spec = QuerySpec(aggregations=[Aggregation.model_validate(a) for a in aggregations],
                              noise_multiplier=noise_multiplier, quantile_epsilon=quantile_epsilon)
        self.source = _QUERY.source(self.spec)

    @staticmethod
    def count() -> Aggregation:
        return Aggregation(op="count")

    @staticmethod
    def sum(variable: str) -> Aggregation:
        return Aggregation(op="sum", variable=variable)

    @staticmethod
    def mean(variable: str) -> Aggregation:
        return Aggregation(op="mean", variable=variable)

    @staticmethod
    def histogram(variable: str, bins: int) -> Aggregation:
        return Aggregation(op="histogram", variable=variable, bins=bins)

    @staticmethod
    def quantile(variable: str, quantiles: list[float]) -> Aggregation:
        return Aggregation(op="quantile", variable=variable, quantiles=quantiles)

    def preview_epsilon(self, *, runs: int = 1, delta: float = 1e-6) -> float:
        """Epsilon of ``runs`` runs at ``delta`` (the domain uses its own delta and charges)."""
        return _epsilon(_QUERY.event(self.spec), runs, delta)

    def run_on_mock(self, client: DomainClient, dataset: str) -> Update:
        """The same mechanism on the mock, here (noise included)."""
        from fednb.privacy import SecureNoise

        handle = client.datasets[dataset]
        check_query(self.spec, handle.card)
        return Update(weights=run_query(self.spec, handle.mock, handle.card, SecureNoise()))

    def request(self, client: DomainClient, dataset: str | list[str], *, runs: int = 1,
                description: str = "", request_id: str | None = None,
                slot_s: float | None = None) -> RemoteRequest:
        """File the query; re-using ``request_id`` finds the same request again. ``slot_s``
        proposes the release slot (seconds from a run's start to its result; the owner
        approves it; default: the domain's ``dp_slot_s``)."""
        return _file(client, _QUERY, self.spec, self.source, dataset, runs, description=description,
                     request_id=request_id, slot_s=slot_s)


class DPSGD:
    """A model trained with DP-SGD inside the hospital, sent as data (layers, loss, settings).

    Parameters
    ----------
    spec
        A :class:`fednb.scientist.DPSGDSpec` (the public name of the spec type), or a dict
        of its fields; or leave it out and pass the fields as keyword arguments:
        ``DPSGD(features=[...], label="y", ...)``. ``DPSGDSpec.model_fields`` lists them
        with their defaults; a wrong one is refused with the field named.
    """

    def __init__(self, spec: DPSGDSpec | Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        if spec is not None and fields:
            raise InvalidInput("DPSGD takes a spec or its fields as keywords, not both")
        self.spec = spec if isinstance(spec, DPSGDSpec) else DPSGDSpec.model_validate(dict(spec or fields))
        self.source = _DPSGD.source(self.spec)

    def preview_epsilon(self, num_examples: int, *, runs: int = 1, delta: float = 1e-6) -> float:
        """Epsilon of ``runs`` trainings on ``num_examples`` examples at ``delta`` (replace-one,
        as the domain charges it)."""
        return _epsilon(_DPSGD.event(self.spec, num_examples=num_examples), runs, delta)

    def request(self, client: DomainClient, dataset: str | list[str], *, runs: int = 1,
                weights: Weights | None = None, description: str = "",
                request_id: str | None = None, slot_s: float | None = None) -> RemoteRequest:
        """File the request; re-using ``request_id`` finds the same request again. ``slot_s``
        proposes the release slot: each run's result appears this long after the run
        started, and a training not done by then releases zeros -- time a run on the mock
        and leave room (the owner approves it; default: the domain's ``dp_slot_s``)."""
        return _file(client, _DPSGD, self.spec, self.source, dataset, runs, weights, description,
                     request_id, slot_s)
