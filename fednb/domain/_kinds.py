"""The domain's side of the request kinds (:data:`fednb.runtime.KINDS` describes each):
checks at submission, and the runs the trusted parent computes itself.

A ``query`` and a ``stats`` step (:attr:`~fednb.runtime.Kind.trusted`) run in the domain's
trusted parent, no sandbox; a ``stats`` request is DP or disclosure-controlled as the
dataset's policy says (:mod:`fednb.domain._disclosure`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fednb.domain import _disclosure as dc
from fednb.domain._policy import Policy
from fednb.domain._store import RequestRow
from fednb.domain.runner import WorkerOutcome
from fednb.errors import InvalidInput
from fednb.privacy import Event, accountant_for
from fednb.protocol import (
    DatasetCard,
    DPSGDSpec,
    QuerySpec,
    RequestCreate,
    StatsSpec,
    TensorSpec,
    Update,
)
from fednb.runtime import (
    KINDS,
    Kind,
    OutputPolicy,
    RequestSpec,
    StatsPart,
    check_query,
    compute,
    default,
    default_query_release,
    kernels_device,
    kind_of,
    run_query,
)

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["check_stats_run", "check_submission", "default_trusted", "kind_event", "kind_source",
           "output_policy", "request_kind", "request_spec", "run_trusted", "stats_spec"]


def request_kind(req: RequestRow) -> Kind:
    """The kind of ``req``."""
    return kind_of(req.kind)


def request_spec(req: RequestRow) -> RequestSpec | None:
    """What ``req``'s DP derives from: its spec (a data kind), its ``dp`` (an update)."""
    return kind_of(req.kind).spec(req.source, req.dp)


def stats_spec(req: RequestRow) -> StatsSpec:
    """The spec of a ``stats`` request."""
    spec = KINDS["stats"].parse(req.source)
    assert isinstance(spec, StatsSpec)
    return spec


def kind_event(dom: Domain, req: RequestRow, dataset: str) -> Event | None:
    """The DP event of one run of ``req`` on ``dataset`` (a DP-SGD run's steps and sampling
    rate follow that dataset's size); None for a request without DP (code without ``dp=``,
    a disclosure-controlled ``stats`` request)."""
    kind = kind_of(req.kind)
    spec = kind.spec(req.source, req.dp)
    if not kind.is_dp(spec):
        return None
    card = dom.card(dataset) if kind.event_uses_card else None
    return kind.event(spec, card, has_metrics=bool(req.metrics))


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
    kind = kind_of(body.kind)
    spec: RequestSpec
    n_params = 0
    if kind.code:
        if body.dp is None:
            return 0
        spec, z, clip = body.dp, body.dp.noise_multiplier, body.dp.clip
    else:
        if body.dp is not None or (body.weights is not None and kind.trusted) or body.params:
            raise InvalidInput(f"a {body.kind} request takes no dp=, params= or (for queries and stats) "
                               "weights=: its spec says everything")
        spec = kind.parse(body.source)
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
        event = kind.event(spec, card, has_metrics=bool(body.metrics))
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
    return kind_of(req.kind).run_source(request_spec(req), req.source, req.function_name, card)


def output_policy(req: RequestRow, policy: Policy) -> OutputPolicy:
    """The output policy of this request's runs."""
    weights = None if req.weights is None else {k: TensorSpec.model_validate(v)
                                                for k, v in req.weights.items()}
    return kind_of(req.kind).output_policy(
        request_spec(req), weights=weights, max_bytes=policy.max_result_bytes,
        metrics={k: (float(v[0]), float(v[1])) for k, v in req.metrics.items()})


def _trusted_spec(req: RequestRow) -> QuerySpec | StatsSpec:
    spec = request_spec(req)
    if not isinstance(spec, (QuerySpec, StatsSpec)):
        raise TypeError(f"a {req.kind} request is not computed by the trusted runtime")
    return spec


def run_trusted(dom: Domain, req: RequestRow, dataset: str) -> WorkerOutcome:
    """Run a ``query`` or a DP ``stats`` request in the trusted parent (no code of the
    scientist's): noised, total on any data."""
    spec = _trusted_spec(req)
    if isinstance(spec, StatsSpec):
        return _run_stats_dp(dom, spec, dataset)
    weights = run_query(spec, dom.private(dataset), dom.card(dataset), dom.noise)
    return WorkerOutcome("succeeded", "ok", Update(weights=weights), log=json.dumps(
        {"query": [a.model_dump() for a in spec.aggregations]}), backend=kernels_device())


def default_trusted(dom: Domain, req: RequestRow, dataset: str, log: str) -> WorkerOutcome:
    """A trusted run the domain failed to compute: for DP, the data-independent default
    release (the same query or step over n rows whose every value is missing, noised
    alike) for the scientist; the failure for the owner. A disclosure-controlled ``stats``
    run releases nothing."""
    spec = _trusted_spec(req)
    if isinstance(spec, StatsSpec):
        if not spec.dp:
            return WorkerOutcome("failed", "worker_crashed", log=log)
        return _stats_outcome(dom, spec, dataset, None, log)
    weights = default_query_release(spec, dom.card(dataset), dom.noise)
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


def _run_stats_dp(dom: Domain, spec: StatsSpec, dataset: str) -> WorkerOutcome:
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
