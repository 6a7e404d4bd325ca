"""Runs of approved requests through the release path, and the release of their results."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fednb.domain import _lifecycle as life
from fednb.domain._disclosure import ExactStats, prepare_exact_stats, settle_exact, stats_facts
from fednb.domain._faults import fault
from fednb.domain._kinds import (
    check_stats_run,
    default_trusted,
    kind_source,
    output_policy,
    request_kind,
    run_trusted,
)
from fednb.domain._store import RequestRow, RunRow, UserRow, utcnow
from fednb.domain.runner import JobSpec, WorkerOutcome
from fednb.errors import (
    Conflict,
    FednbError,
    InvalidInput,
    NotFound,
    ParamsOutOfSchema,
    RequestNotApproved,
    ResultNotReady,
    RunRefused,
    SandboxUnavailable,
)
from fednb.protocol import (
    Compression,
    ParamSpec,
    RunInfo,
    TensorSpec,
    Update,
    compress,
    decode_message,
    encode_message,
)
from fednb.runtime import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    check_params,
    check_weights,
    release,
)
from fednb.typing import Weights

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["RunBook"]

_DONE = life.DONE
_MARGIN_S = 1.0
"""At most this long (a fifth of the slot below 5 s) is kept between a DP run's cut-off and
its scheduled release, for the noise and the commit: a release later than its schedule
would only show at the next multiple of the slot."""


def _interrupted(row: RunRow) -> bool:
    """A run the domain failed on restart: it was in flight when the process died."""
    return row.status == life.Run.FAILED and row.reason == "domain_restarted"


def _seconds_until(t: datetime) -> float:
    return (t - utcnow()).total_seconds()


class RunBook:
    """``dom.runs``: queue, execute, finish and release runs."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain
        self._events: dict[str, threading.Event] = {}
        self._guard = threading.Lock()

    def event(self, run_id: str) -> threading.Event:
        with self._guard:
            return self._events.setdefault(run_id, threading.Event())

    def info(self, row: RunRow, owner: bool) -> RunInfo:
        """The run as the owner sees it (the real outcome), or as its scientist may
        (:func:`fednb.domain._lifecycle.scientist_view`)."""
        if owner:
            return RunInfo.model_validate({c: getattr(row, c) for c in RunInfo.model_fields})
        return life.scientist_view(row, utcnow(), self._d.card(row.dataset).num_examples)

    def _refuse_early(self, user: UserRow, req: RequestRow, dp: bool) -> None:
        if req.status != "approved":
            raise RequestNotApproved(f"request {req.id!r} is {req.status}; it cannot run")
        # an exact stats release is the owner's choice for the dataset (stats_protection),
        # made under its disclosure rules
        if not dp and not request_kind(req).disclosure_controlled \
                and user.name not in self._d.policy.get().allow_no_dp:
            raise RunRefused(f"{user.name!r} may not run code without differential privacy on "
                             "this domain; the owner can add them to policy.allow_no_dp")
        if self._d.sandbox_mode is None:
            raise SandboxUnavailable("this domain has no sandbox (bubblewrap) and was not started "
                                     "with --insecure-demo, so it refuses private runs")

    def create(self, user: UserRow, request_id: str, run_id: str, dataset: str | None,
               params: dict[str, Any], weights: Weights | None,
               compression: Compression = "none", secure: bool = False) -> RunInfo:
        """Check everything, reserve one run atomically, queue it; idempotent on ``run_id``."""
        req = self._d.requests.row(request_id, scientist=user.name)
        with self._d.store.session() as s:
            old = s.get(RunRow, run_id)
        if old is not None:
            if old.request_id != request_id or old.scientist != user.name:
                raise Conflict(f"run id {run_id!r} is taken: use a new id")
            if not _interrupted(old):
                return self.info(old, owner=False)
        if secure and compression != "none":
            raise InvalidInput("a run for secure aggregation is quantised by the protocol; "
                               "leave compression at 'none'")
        name = dataset or req.datasets[0]
        if name not in req.datasets:
            raise ParamsOutOfSchema(f"dataset {name!r} is not among the approved {req.datasets}")
        dp_event = self._d.ledger.run_event(req, name)  # parsed once per run, used below and in _finish
        self._refuse_early(user, req, dp_event is not None)
        check_params({k: ParamSpec.model_validate(v) for k, v in req.params.items()}, params)
        check_weights(None if req.weights is None else
                      {k: TensorSpec.model_validate(v) for k, v in req.weights.items()}, weights)
        for k, w in (weights or {}).items():
            if w.dtype.kind == "f" and not np.isfinite(w).all():
                raise InvalidInput(f"weight {k!r} holds NaN or Inf: send finite numbers")
        kind = request_kind(req)
        if dp_event is not None and not kind.trusted:
            # a DP run's slot counts from its creation: start its worker first (a fact of
            # the request and the domain, not of the data), so the slot is the run's own
            self._d.pool().ensure_warm(self._job(req, name))
        exact: ExactStats | None = None
        if kind.disclosure_controlled:  # today's disclosure policy, which may have changed
            check_stats_run(self._d, req, name)
            if dp_event is None:  # disclosure control: computed and checked before it is queued
                exact = prepare_exact_stats(self._d, req, name)
        refused: FednbError | None = None
        with self._d.transaction() as tx:
            if exact is not None:
                refused = settle_exact(self._d, tx.s, req, name, exact)
                if refused is not None:
                    tx.log(user.name, "stats.refused", run=run_id, request=req.id, code_hash=req.code_hash,
                           dataset=name, refusal=refused.message)
            if refused is None:
                row, queued = self._take_run(tx.s, req, run_id, user.name, name, params)
                if not queued:  # a concurrent call with this id got there first
                    return self.info(row, owner=False)
                if dp_event is not None:
                    tx.s.flush()
                    row.epsilon = self._d.ledger.reserve(tx.s, run_id, req, name, dp_event)
                    # the schedule: the result shows this long after the run was created, however
                    # long it takes; a run still going at the cut-off releases the default
                    row.release_at = row.created + timedelta(seconds=self._d.ledger.slot(req))
                tx.log(user.name, "run.queued", run=run_id, request=request_id, code_hash=req.code_hash,
                       dataset=name, charge=None if dp_event is None else dp_event.to_json(),
                       epsilon_after=row.epsilon, requeued=old is not None, release_at=row.release_at,
                       **stats_facts(self._d, req, name))
        if refused is not None:
            raise refused
        if old is not None:
            with self._guard:  # a waiter must not see the interrupted run's end as this one's
                self._events.pop(run_id, None)
        fault("after_reserve")
        if exact is not None:
            # computed and checked already: nothing is left to run, so it ends in this call and
            # the reply carries its end (no round trip of the scientist's to wait for it)
            self._execute(run_id, req, name, params, weights, compression, row.release_at, secure, exact)
            return self.get(run_id, user)
        self._d._executor().submit(self._execute, run_id, req, name, params, weights, compression,
                                   row.release_at, secure, exact)
        return self.info(row, owner=False)

    @staticmethod
    def _take_run(s: Session, req: RequestRow, run_id: str, scientist: str, dataset: str,
                  params: dict[str, Any]) -> tuple[RunRow, bool]:
        """Queue ``run_id`` inside the caller's write transaction: a new run takes one of the
        approved runs; a run a crash interrupted (nothing of it was released, its charge
        freed) is queued again in the run it already took. Returns (row, queued); False
        when the id is already queued or done, by a concurrent call."""
        row = s.get(RunRow, run_id)
        if row is not None:
            if not _interrupted(row):
                return row, False
            row.status = life.check_move("run", row.status, life.Run.QUEUED)
            row.dataset, row.params, row.reason, row.created = dataset, params, None, utcnow()
            row.owner_log, row.finished, row.epsilon, row.release_at = None, None, None, None
            return row, True
        took: int = s.execute(  # type: ignore[attr-defined]
            update(RequestRow)
            .where(RequestRow.id == req.id, RequestRow.status == "approved",
                   RequestRow.runs_used < RequestRow.runs)
            .values(runs_used=RequestRow.runs_used + 1)
        ).rowcount
        if took != 1:
            raise RunRefused(f"all {req.runs} approved runs of request {req.id!r} are used")
        row = RunRow(id=run_id, request_id=req.id, scientist=scientist, dataset=dataset,
                     params=params, status="queued", created=utcnow())
        s.add(row)
        return row, True

    def _job(self, req: RequestRow, dataset: str) -> JobSpec:
        """The worker job of ``req``'s runs on ``dataset``: a run sees only the dataset it is
        charged to, so a request over several datasets has a worker per dataset."""
        source, name = kind_source(req, self._d.card(dataset))  # dp-sgd: the dataset's bounds
        return JobSpec(request_id=req.id, source=source, function_name=name,
                       datasets={dataset: self._d.private_path(dataset)},
                       workdir=self._d.home / "work" / req.id / dataset)

    def _outcome(self, req: RequestRow, dataset: str, params: dict[str, Any],
                 weights: Weights | None, release_at: datetime | None,
                 exact: ExactStats | None = None) -> WorkerOutcome:
        if exact is not None:  # computed and checked when the run was created
            return exact.outcome
        if request_kind(req).trusted:  # no code: the trusted runtime computes it here, never cut
            try:
                return run_trusted(self._d, req, dataset)
            except Exception as exc:  # a fault of the domain's (trusted kinds are total on any data)
                return default_trusted(self._d, req, dataset, f"domain error: {exc!r}")
        timeout, hold = self._d.policy.get().run_timeout_s, None
        if release_at is not None:
            slot = self._d.ledger.slot(req)
            left = _seconds_until(release_at)
            timeout = min(timeout, left - min(_MARGIN_S, slot / 5))
            if timeout <= 0:
                return WorkerOutcome("timeout", "wall_clock", log="the run's release slot passed before "
                                     "it could start (the domain's job slots were busy)\n")
            # the job slot stays taken until the schedule, so when other runs start never
            # depends on how long this one took; waiting and the worker's start count too
            hold = time.monotonic() + left
            return self._d.pool().run(self._job(req, dataset), dataset, params, weights, timeout,
                                      hold_until=hold, cut_at=time.monotonic() + timeout)
        return self._d.pool().run(self._job(req, dataset), dataset, params, weights, timeout)

    def _execute(self, run_id: str, req: RequestRow, dataset: str, params: dict[str, Any],
                 weights: Weights | None, compression: Compression, release_at: datetime | None,
                 secure: bool, exact: ExactStats | None = None) -> None:
        try:
            with self._d.store.write() as s:
                started = s.execute(  # type: ignore[attr-defined]
                    update(RunRow).where(RunRow.id == run_id, RunRow.status == life.Run.QUEUED)
                    .values(status=life.Run.RUNNING.value)).rowcount
            if started != 1:  # ended meanwhile (a restart's recovery): it runs nowhere, is charged nothing
                return
            outcome = self._outcome(req, dataset, params, weights, release_at, exact)
            self._finish(run_id, req, dataset, outcome, output_policy(req, self._d.policy.get()),
                         compression, release_at is not None, secure)
        except Exception as exc:  # the run must end in a fixed category whatever happens
            crashed = WorkerOutcome("failed", "worker_crashed", log=f"domain error: {exc!r}")
            try:
                policy = output_policy(req, self._d.policy.get())
            except Exception:
                policy = OutputPolicy()
            if request_kind(req).trusted:
                with contextlib.suppress(Exception):  # the run is finished below whatever happens
                    crashed = default_trusted(self._d, req, dataset, crashed.log)
            self._finish(run_id, req, dataset, crashed, policy, "none", release_at is not None, secure)
        finally:
            self.event(run_id).set()
            self._retire_if_done(req.id)

    def _retire_if_done(self, request_id: str) -> None:
        """Stop the request's warm worker once every approved run is used and finished."""
        with self._d.store.session() as s:
            row = s.get(RequestRow, request_id)
            busy = s.execute(select(RunRow.id).where(RunRow.request_id == request_id,
                                                     RunRow.status.in_(("queued", "running")))).first()
        if row is not None and row.runs_used >= row.runs and busy is None and self._d._pool is not None:
            self._d._pool.discard(request_id)

    def _released(self, outcome: WorkerOutcome, req: RequestRow, policy: OutputPolicy,
                  dp: bool) -> tuple[Update | None, WorkerOutcome]:
        """What leaves this run (None: nothing), and the real outcome for the owner.

        A DP run always releases: what the code returned, validated, clipped and noised, or,
        when the run failed, was cut or returned anything outside the approved spec, the
        data-independent default put through the same path (:func:`fednb.runtime.release`).
        A query or a stats step was protected by the trusted runtime (a failed DP one
        carries its default)."""
        if request_kind(req).trusted:
            return outcome.update, outcome
        if dp:
            ok = outcome.status == life.Run.SUCCEEDED.value
            upd, reason = release(outcome.update if ok else None, policy, self._d.noise,
                                  reason=outcome.reason)
            if ok and reason != "ok":
                outcome = WorkerOutcome("failed", reason, log=outcome.log, backend=outcome.backend)
            return upd, outcome
        if outcome.status != life.Run.SUCCEEDED.value or outcome.update is None:
            return None, outcome
        try:
            return apply_output_policy(outcome.update, policy, self._d.noise), outcome
        except OutputRejected as rej:
            return None, WorkerOutcome("failed", rej.reason, log=outcome.log + f"\n{rej.detail}",
                                       backend=outcome.backend)

    def _finish(self, run_id: str, req: RequestRow, dataset: str, outcome: WorkerOutcome,
                policy: OutputPolicy, compression: Compression, dp: bool, secure: bool = False) -> None:
        result, state = None, None
        n = self._d.card(dataset).num_examples
        # distributed noise: the update is noised in the secure round (SecAggDesk.masked)
        kind = request_kind(req)
        defer = (secure and not kind.trusted and policy.dp is not None
                 and self._d.policy.get().secagg_distributed_noise)
        if defer:
            policy = dataclasses.replace(policy, defer_noise=True)
        upd, outcome = self._released(outcome, req, policy, dp)
        if upd is not None:
            try:
                sent, meta = compress(upd.weights, compression, self._d.noise.uniform)
                result = encode_message({"metrics": upd.metrics, "num_examples": n, "secure": secure,
                                         **({"noise_deferred": True} if defer else {}), **meta}, sent)
                # no-DP results are always held, but for stats under the owner's disclosure
                # rules; the others follow the approval's release mode; a released secure
                # result is kept to leave masked (SecAggDesk)
                auto = req.release == "auto" and (dp or kind.disclosure_controlled)
                state = (life.Release.HELD if not auto
                         else life.Release.SECAGG if secure else life.Release.RELEASED)
            except InvalidInput as exc:  # float16 overflow: refused here, not infinity on the wire
                # whether it overflows is a function of the noised update: the refusal the
                # scientist sees (at the run's scheduled time) is a release of it
                outcome = WorkerOutcome("failed", "compression_overflow", log=outcome.log + f"\n{exc}",
                                        backend=outcome.backend)
        with self._d.transaction() as tx:
            row = tx.s.get(RunRow, run_id)
            assert row is not None
            row.status = life.check_move("run", row.status, outcome.status)
            row.release_state = None if state is None else life.check_move("release", None, state)
            row.reason, row.result = outcome.reason, result
            row.owner_log, row.finished, row.backend = outcome.log[-20_000:], utcnow(), outcome.backend
            row.num_examples = n if result is not None else None
            # a DP run is charged whatever happened (its failure would be a free channel)
            if dp and self._d.ledger.settle(tx.s, run_id, life.Charge.COMMITTED):
                tx.log("domain", "charge.committed", run=run_id, request=req.id, scientist=req.scientist,
                       dataset=dataset, epsilon_after=row.epsilon)
            tx.log("domain", "run.finished", run=run_id, request=req.id, code_hash=req.code_hash,
                   status=outcome.status, reason=outcome.reason, release=state,
                   default_released=dp and outcome.status != life.Run.SUCCEEDED.value)
            fault("mid_commit")
        if state == life.Release.RELEASED:
            fault("after_release")

    def get(self, run_id: str, user: UserRow) -> RunInfo:
        with self._d.store.session() as s:
            row = s.get(RunRow, run_id)
        if row is None or (user.role != "owner" and row.scientist != user.name):
            raise NotFound(f"no run {run_id!r}")
        return self.info(row, owner=user.role == "owner")

    def owner_view(self, run_id: str) -> RunInfo:
        """The run with its owner-only log (for the owner's tools on the domain's machine)."""
        with self._d.store.session() as s:
            row = s.get(RunRow, run_id)
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return self.info(row, owner=True)

    def wait(self, run_id: str, user: UserRow, timeout: float) -> RunInfo:
        """The run, after waiting up to ``timeout`` seconds for it to finish.

        A scientist waiting on a DP run returns at its scheduled release, not when it
        ended: the long poll is part of what they observe."""
        end = time.monotonic() + timeout
        while True:
            info = self.get(run_id, user)
            left = end - time.monotonic()
            if info.status in _DONE or left <= 0:
                return info
            with self._d.store.session() as s:
                row = s.get(RunRow, run_id)
            shown = None if row is None else life.visible_at(row)
            if shown is not None:  # finished: it shows at its slot
                time.sleep(max(0.0, min(left, _seconds_until(shown))) + 0.001)
            else:
                self.event(run_id).wait(left)

    def list(self, *, scientist: str | None = None, request_id: str | None = None,
             release_state: str | None = None) -> builtins.list[RunInfo]:
        q = select(RunRow).order_by(RunRow.created)
        if scientist is not None:
            q = q.where(RunRow.scientist == scientist)
        if request_id is not None:
            q = q.where(RunRow.request_id == request_id)
        if release_state is not None and scientist is None:
            q = q.where(RunRow.release_state == release_state)
        with self._d.store.session() as s:
            rows = list(s.execute(q).scalars())
        infos = [self.info(r, owner=scientist is None) for r in rows]
        if scientist is not None and release_state is not None:  # as they may see it, not as it is
            infos = [i for i in infos if i.release_state == release_state]
        return infos

    def held(self) -> builtins.list[RunInfo]:
        """Results waiting for the owner's release."""
        return self.list(release_state=life.Release.HELD)

    def _decide(self, run_id: str, reviewer: str, state: str) -> RunInfo:
        with self._d.transaction() as tx:
            row = tx.s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            if row.release_state != life.Release.HELD:
                raise Conflict(f"run {run_id!r} has no held result (state: {row.release_state})")
            if state == life.Release.RELEASED and row.result is not None \
                    and decode_message(row.result)[0].get("secure"):
                state = life.Release.SECAGG  # released to leave the domain masked, by secure aggregation
            state = row.release_state = life.check_move("release", row.release_state, state)
            if state == life.Release.WITHHELD:
                row.result = None
            # a DP run's charge was committed when it ended, and stays so when withheld: the
            # scientist learns of the decision, which may depend on the values
            if self._d.ledger.settle(tx.s, run_id, life.Charge.COMMITTED):
                tx.log(reviewer, "charge.committed", run=run_id, request=row.request_id,
                       scientist=row.scientist, dataset=row.dataset, epsilon_after=row.epsilon)
            tx.log(reviewer, f"result.{state}", run=run_id, request=row.request_id)
        if state == life.Release.RELEASED:
            fault("after_release")
        return self.info(row, owner=True)

    def release(self, run_id: str, reviewer: str = "owner") -> RunInfo:
        """Release a held result to the scientist."""
        return self._decide(run_id, reviewer, life.Release.RELEASED)

    def withhold(self, run_id: str, reviewer: str = "owner") -> RunInfo:
        """Withhold a held result for good (it is deleted; a DP run's charge stays)."""
        return self._decide(run_id, reviewer, life.Release.WITHHELD)

    def result(self, run_id: str, user: UserRow) -> bytes:
        """The result's bytes (safetensors + JSON): a scientist's once released; the owner's
        also while held, so that they see what they release."""
        with self._d.store.session() as s:
            row = s.get(RunRow, run_id)
        owner = user.role == "owner"
        if row is None or (not owner and row.scientist != user.name):
            raise NotFound(f"no run {run_id!r}")
        info = self.info(row, owner=owner)
        readable = {life.Release.RELEASED.value} | ({life.Release.HELD.value} if owner else set())
        if info.release_state not in readable or row.result is None:
            state = info.release_state or info.status
            raise ResultNotReady(f"run {run_id!r} has no released result (state: {state})")
        return row.result
