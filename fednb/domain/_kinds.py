"""What differs between request kinds: ``update`` (code), ``query``, ``stats`` and
``dp-sgd`` (data).

A ``query``, ``stats`` or ``dp-sgd`` request carries its spec as JSON in ``source``, so the
owner approves (and the audit log hashes) exactly what will run, as for code. ``query``
and ``stats`` (:data:`TRUSTED_KINDS`) run in the domain's trusted parent, no sandbox;
a ``stats`` request is DP or disclosure-controlled as the dataset's policy says
(:mod:`fednb.domain._disclosure`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fednb.domain import _disclosure as dc
from fednb.domain._policy import Policy
from fednb.domain._store import RequestRow
from fednb.domain.runner import WorkerOutcome
from fednb.errors import InvalidInput
from fednb.privacy import ComposedEvent, Event, accountant_for
from fednb.protocol import (
    ClientDP,
    DatasetCard,
    DPSGDSpec,
    QuerySpec,
    RequestCreate,
    StatsSpec,
    TensorSpec,
    Update,
)
from fednb.runtime import OutputPolicy, update_event
from fednb.runtime._dpsgd import dpsgd_event
from fednb.runtime._gpu import kernels_device
from fednb.runtime._query import check_query, default_query_release, query_events, run_query
from fednb.runtime._stats import StatsPart, compute, default

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["TRUSTED_KINDS", "check_stats_run", "check_submission", "default_trusted", "kind_event",
           "kind_source", "output_policy", "run_trusted", "stats_spec"]

TRUSTED_KINDS = frozenset({"query", "stats"})
"""Kinds the domain's trusted runtime computes in its own process: no code of the
scientist's, no sandbox, no worker."""

Spec = QuerySpec | DPSGDSpec | StatsSpec

_DPSGD_SOURCE = '''def __fednb_dpsgd__(data, weights=None):
    from fednb.protocol import DPSGDSpec
    from fednb.runtime._dpsgd import train_dpsgd

    spec = DPSGDSpec.model_validate_json({spec!r})
    return fednb.Update(weights=train_dpsgd(spec, data, weights or None, bounds={bounds!r},
                                            example_dim={example_dim!r}).weights)
'''


def parse_spec(kind: str, source: str) -> Spec:
    try:
        if kind == "query":
            return QuerySpec.model_validate_json(source)
        if kind == "stats":
            return StatsSpec.model_validate_json(source)
        return DPSGDSpec.model_validate_json(source)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(map(str, e["loc"]))
        raise InvalidInput(f"invalid {kind} spec: {e['msg']}" + (f" ({where})" if where else "")) from None


def stats_spec(req: RequestRow) -> StatsSpec:
    """The spec of a ``stats`` request."""
    spec = parse_spec("stats", req.source)
    assert isinstance(spec, StatsSpec)
    return spec


def _event(kind: str, spec: Spec | ClientDP, card: DatasetCard, has_metrics: bool = False) -> Event | None:
    if isinstance(spec, StatsSpec):
        return dc.stats_event(spec, card)
    if isinstance(spec, QuerySpec):
        return ComposedEvent(tuple(query_events(spec)))
    if isinstance(spec, DPSGDSpec):
        return dpsgd_event(spec, card.num_examples)
    return update_event(spec, has_metrics)


def kind_event(dom: Domain, req: RequestRow, dataset: str) -> Event | None:
    """The DP event of one run of a ``query``, ``stats`` or ``dp-sgd`` request on ``dataset``
    (a DP-SGD run's steps and sampling rate follow that dataset's size); None for a
    disclosure-controlled ``stats`` request."""
    return _event(req.kind, parse_spec(req.kind, req.source), dom.card(dataset))


def _floors(policy: Policy, z: float, clip: float | None, event: Event, delta: float) -> None:
    if z < policy.min_noise_multiplier:
        raise InvalidInput(f"noise multiplier {z:g} is below this domain's minimum of "
                           f"{policy.min_noise_multiplier:g}")
    if clip is not None and policy.max_clip is not None and clip > policy.max_clip:
        raise InvalidInput(f"clipping bound {clip:g} exceeds this domain's maximum of {policy.max_clip:g}")
    if policy.max_epsilon_per_run is not None:
        eps = accountant_for("pld").epsilon([event], delta)
        if eps > policy.max_epsilon_per_run:
            raise InvalidInput(f"one run would cost epsilon {eps:.3f}, over this domain's maximum of "
                               f"{policy.max_epsilon_per_run:g} per run: add noise")


def check_submission(dom: Domain, body: RequestCreate) -> int:
    """Refuse at submission what the policy floors or the kind forbid; the most model
    parameters a ``stats`` request fits on one of its datasets (0 otherwise)."""
    policy = dom.policy.get()
    cards = [dom.card(d) for d in body.datasets]
    spec: Spec | ClientDP
    n_params = 0
    if body.kind == "update":
        if body.dp is None:
            return 0
        spec, z, clip = body.dp, body.dp.noise_multiplier, body.dp.clip
    else:
        if body.dp is not None or (body.weights is not None and body.kind in TRUSTED_KINDS) or body.params:
            raise InvalidInput(f"a {body.kind} request takes no dp=, params= or (for queries and stats) "
                               "weights=: its spec says everything")
        spec = parse_spec(body.kind, body.source)
        if isinstance(spec, StatsSpec):
            n_params = dc.check_stats_request(policy, spec, cards)
            if spec.noise_multiplier is None:
                return n_params
            z, clip = spec.noise_multiplier, None
        elif isinstance(spec, QuerySpec):
            for card in cards:
                check_query(spec, card)
            z, clip = spec.noise_multiplier, None
        else:
            _check_dpsgd(spec, cards, body.weights)
            z, clip = spec.noise_multiplier, spec.max_grad_norm
    for card in cards:
        event = _event(body.kind, spec, card, bool(body.metrics))
        assert event is not None
        _floors(policy, z, clip, event, dom.ledger.delta(card))
    return n_params


def _check_dpsgd(spec: DPSGDSpec, cards: list[DatasetCard], weights: dict[str, TensorSpec] | None) -> None:
    """What a DP-SGD run could otherwise only find out from the data, refused from the cards."""
    for card in cards:
        spec.check_card(card)
    want = spec.weight_specs()
    if weights is not None and weights != want:
        raise InvalidInput(f"a dp-sgd request's weights are the model's: "
                           f"{ {k: (v.shape, v.dtype) for k, v in want.items()} }")


def kind_source(req: RequestRow, card: DatasetCard | None = None) -> tuple[str, str]:
    """The source text and function name the worker runs for this request (on the dataset
    of ``card``: a DP-SGD run brings values into its declared bounds)."""
    if req.kind == "dp-sgd":
        spec = parse_spec("dp-sgd", req.source)
        assert isinstance(spec, DPSGDSpec)
        bounds = {} if card is None else {
            name: card.variables[name].bounds for name in (spec.features, spec.target)
            if name in card.variables}
        return _DPSGD_SOURCE.format(spec=spec.model_dump_json(), bounds=bounds,
                                    example_dim=None if card is None else card.example_dim), "__fednb_dpsgd__"
    return req.source, req.function_name


def output_policy(req: RequestRow, policy: Policy) -> OutputPolicy:
    """The output policy of this request's runs."""
    weights = None if req.weights is None else {k: TensorSpec.model_validate(v)
                                                for k, v in req.weights.items()}
    if req.kind == "dp-sgd":  # trained by the runtime with DP-SGD's own noise; no metrics leave
        spec = parse_spec("dp-sgd", req.source)
        assert isinstance(spec, DPSGDSpec)
        # the released structure is the spec's; a failed run releases the default
        return OutputPolicy(weights=spec.weight_specs(), max_bytes=policy.max_result_bytes,
                            fallback=True)
    return OutputPolicy(weights=weights, max_bytes=policy.max_result_bytes,
                        metrics={k: (float(v[0]), float(v[1])) for k, v in req.metrics.items()},
                        dp=None if req.dp is None else ClientDP.model_validate(req.dp))


def run_trusted(dom: Domain, req: RequestRow, dataset: str) -> WorkerOutcome:
    """Run a ``query`` or a DP ``stats`` request in the trusted parent (no code of the
    scientist's): noised, total on any data."""
    if req.kind == "stats":
        return _run_stats_dp(dom, req, dataset)
    spec = parse_spec("query", req.source)
    assert isinstance(spec, QuerySpec)
    weights = run_query(spec, dom.private(dataset), dom.card(dataset), dom.noise)
    return WorkerOutcome("succeeded", "ok", Update(weights=weights), log=json.dumps(
        {"query": [a.model_dump() for a in spec.aggregations]}), backend=kernels_device())


def default_trusted(dom: Domain, req: RequestRow, dataset: str, log: str) -> WorkerOutcome:
    """A trusted run the domain failed to compute: for DP, the data-independent default
    release (the same query or step over n rows whose every value is missing, noised
    alike) for the scientist; the failure for the owner. A disclosure-controlled ``stats``
    run releases nothing."""
    if req.kind == "stats":
        spec = stats_spec(req)
        if not spec.dp:
            return WorkerOutcome("failed", "worker_crashed", log=log)
        return _stats_outcome(dom, spec, dataset, None, log)
    spec_q = parse_spec("query", req.source)
    assert isinstance(spec_q, QuerySpec)
    weights = default_query_release(spec_q, dom.card(dataset), dom.noise)
    return WorkerOutcome("failed", "worker_crashed", Update(weights=weights), log=log,
                         backend=kernels_device())


def _stats_outcome(dom: Domain, spec: StatsSpec, dataset: str, part: StatsPart | None,
                   log: str) -> WorkerOutcome:
    card = dom.card(dataset)
    weights, why = dc.dp_arrays(part, spec, card, dom.noise)
    if spec.protection == "both":
        weights = dc.suppress_noisy_cells(weights, default(spec, card), dom.policy.get().rules_for(dataset))
    ok = why is None
    return WorkerOutcome("succeeded" if ok else "failed", "ok" if ok else "worker_crashed",
                         Update(weights=weights, metrics=dc.public_metrics(dom, dataset)),
                         log=log + ("" if ok else f"\nreleased the default: {why}"), backend=kernels_device())


def _run_stats_dp(dom: Domain, req: RequestRow, dataset: str) -> WorkerOutcome:
    spec = stats_spec(req)
    log = json.dumps({"stats": spec.op, "protection": spec.protection})
    part: StatsPart | None = None
    try:
        part = compute(spec, dc.stats_data(dom, dataset, spec.variables), dom.card(dataset))
    except Exception as exc:  # whatever the data: the default is released, the reason logged
        log = f"{log}\ndomain error: {exc!r}"
    return _stats_outcome(dom, spec, dataset, part, log)


def check_stats_run(dom: Domain, req: RequestRow, dataset: str) -> None:
    """A run of an approved ``stats`` request under today's policy: the dataset's protection
    and variable lists may have changed since the approval."""
    spec, policy = stats_spec(req), dom.policy.get()
    dc.check_protection(policy, spec, dataset)
    dc.check_variables(policy.rules_for(dataset), spec, dataset)
