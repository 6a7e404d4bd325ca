"""Runs of approved requests through the release path, and the release of their results."""

from __future__ import annotations

import builtins
import dataclasses
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fednb.domain._faults import fault
from fednb.domain._kinds import kind_source, output_policy, run_query_kind
from fednb.domain._store import RequestRow, RunRow, UserRow, utcnow
from fednb.domain.runner import JobSpec, WorkerOutcome
from fednb.errors import (
    Conflict,
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
)
from fednb.typing import Weights

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["RunBook"]

_DONE = ("succeeded", "failed", "refused", "timeout", "killed")


def _interrupted(row: RunRow) -> bool:
    """A run the domain failed on restart: it was in flight when the process died."""
    return row.status == "failed" and row.reason == "domain_restarted"


class RunBook:
    """``dom.runs``: queue, execute, finish and release runs."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain
        self._events: dict[str, threading.Event] = {}
        self._guard = threading.Lock()

    def event(self, run_id: str) -> threading.Event:
        with self._guard:
            return self._events.setdefault(run_id, threading.Event())

    @staticmethod
    def info(row: RunRow, owner: bool) -> RunInfo:
        fields = {c: getattr(row, c) for c in RunInfo.model_fields}
        if not owner:  # the backend is the job's report: code could spell data into it
            fields["owner_log"] = fields["backend"] = None
        return RunInfo.model_validate(fields)

    def _refuse_early(self, user: UserRow, req: RequestRow, dp: bool) -> None:
        if req.status != "approved":
            raise RequestNotApproved(f"request {req.id!r} is {req.status}; it cannot run")
        if not dp and user.name not in self._d.policy.get().allow_no_dp:
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
        dp_event = self._d.ledger.run_event(req)  # parsed once per run, used below and in _finish
        self._refuse_early(user, req, dp_event is not None)
        name = dataset or req.datasets[0]
        if name not in req.datasets:
            raise ParamsOutOfSchema(f"dataset {name!r} is not among the approved {req.datasets}")
        check_params({k: ParamSpec.model_validate(v) for k, v in req.params.items()}, params)
        check_weights(None if req.weights is None else
                      {k: TensorSpec.model_validate(v) for k, v in req.weights.items()}, weights)
        for k, w in (weights or {}).items():
            if w.dtype.kind == "f" and not np.isfinite(w).all():
                raise InvalidInput(f"weight {k!r} holds NaN or Inf: send finite numbers")
        with self._d.transaction() as tx:
            row, queued = self._take_run(tx.s, req, run_id, user.name, name, params)
            if not queued:  # a concurrent call with this id got there first
                return self.info(row, owner=False)
            if dp_event is not None:
                tx.s.flush()
                row.epsilon = self._d.ledger.reserve(tx.s, run_id, req, name, dp_event)
            tx.log(user.name, "run.queued", run=run_id, request=request_id, code_hash=req.code_hash,
                   dataset=name, charge=None if dp_event is None else dp_event.to_json(),
                   epsilon_after=row.epsilon, requeued=old is not None)
        if old is not None:
            with self._guard:  # a waiter must not see the interrupted run's end as this one's
                self._events.pop(run_id, None)
        fault("after_reserve")
        self._d._executor().submit(self._execute, run_id, req, name, params, weights, compression,
                                   dp_event is not None, secure)
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
            row.dataset, row.params, row.status, row.reason = dataset, params, "queued", None
            row.owner_log, row.finished, row.epsilon = None, None, None
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

    def _job(self, req: RequestRow) -> JobSpec:
        source, name = kind_source(req)
        return JobSpec(request_id=req.id, source=source, function_name=name,
                       datasets={n: self._d.private_path(n) for n in req.datasets},
                       workdir=self._d.home / "work" / req.id)

    def _outcome(self, req: RequestRow, dataset: str, params: dict[str, Any],
                 weights: Weights | None) -> WorkerOutcome:
        if req.kind == "query":  # no code: the trusted runtime computes it here
            return run_query_kind(self._d, req, dataset)
        return self._d.pool().run(self._job(req), dataset, params, weights,
                                  self._d.policy.get().run_timeout_s)

    def _execute(self, run_id: str, req: RequestRow, dataset: str, params: dict[str, Any],
                 weights: Weights | None, compression: Compression, dp: bool, secure: bool) -> None:
        try:
            with self._d.store.write() as s:
                started = s.execute(  # type: ignore[attr-defined]
                    update(RunRow).where(RunRow.id == run_id, RunRow.status == "queued")
                    .values(status="running")).rowcount
            if started != 1:  # ended meanwhile (a restart's recovery): it runs nowhere, is charged nothing
                return
            outcome = self._outcome(req, dataset, params, weights)
            self._finish(run_id, req, dataset, outcome, output_policy(req, self._d.policy.get()),
                         compression, dp, secure)
        except Exception as exc:  # the run must end in a fixed category whatever happens
            self._finish(run_id, req, dataset,
                         WorkerOutcome("failed", "worker_crashed", log=f"domain error: {exc!r}"),
                         OutputPolicy(), "none", dp, secure)
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

    def _finish(self, run_id: str, req: RequestRow, dataset: str, outcome: WorkerOutcome,
                policy: OutputPolicy, compression: Compression, dp: bool, secure: bool = False) -> None:
        result, state = None, None
        spent = False  # a refusal that depends on the noised update: its charge is not freed
        n = self._d.card(dataset).num_examples
        if outcome.status == "succeeded" and outcome.update is not None:
            try:
                # distributed noise: the update is noised in the secure round (SecAggDesk.masked)
                defer = (secure and req.kind != "query" and policy.dp is not None
                         and self._d.policy.get().secagg_distributed_noise)
                if defer:
                    policy = dataclasses.replace(policy, defer_noise=True)
                upd = (outcome.update if req.kind == "query"  # noised by the query mechanism
                       else apply_output_policy(outcome.update, policy, self._d.noise))
                try:
                    sent, meta = compress(upd.weights, compression, self._d.noise.uniform)
                except InvalidInput as exc:  # float16 overflow: refused here, not infinity on the wire
                    # whether it overflows is a function of the noised update, so the refusal
                    # the scientist sees is a release of it: with DP its charge stays committed
                    spent = policy.dp is not None
                    raise OutputRejected("compression_overflow", str(exc)) from None
                result = encode_message({"metrics": upd.metrics, "num_examples": n, "secure": secure,
                                         **({"noise_deferred": True} if defer else {}), **meta}, sent)
                # no-DP results are always held; DP results follow the approval's release mode;
                # a released secure result is kept to leave masked (SecAggDesk)
                state = "held" if not (dp and req.release == "auto") else "secagg" if secure else "released"
            except OutputRejected as rej:
                outcome = WorkerOutcome("failed", rej.reason, log=outcome.log + f"\n{rej.detail}")
        with self._d.transaction() as tx:
            row = tx.s.get(RunRow, run_id)
            assert row is not None
            row.status, row.reason, row.result, row.release_state = (
                outcome.status, outcome.reason, result, state)
            row.owner_log, row.finished, row.backend = outcome.log[-20_000:], utcnow(), outcome.backend
            row.num_examples = n if result is not None else None
            charge = ("committed" if state in ("released", "secagg") or spent
                      else "freed" if result is None else None)
            if charge is not None and self._d.ledger.settle(tx.s, run_id, charge):
                tx.log("domain", f"charge.{charge}", run=run_id, request=req.id, scientist=req.scientist,
                       dataset=dataset, epsilon_after=row.epsilon)
            tx.log("domain", "run.finished", run=run_id, request=req.id, code_hash=req.code_hash,
                   status=outcome.status, reason=outcome.reason, release=state)
            fault("mid_commit")
        if state == "released":
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
        """The run, after waiting up to ``timeout`` seconds for it to finish."""
        info = self.get(run_id, user)
        if info.status not in _DONE and timeout > 0:
            self.event(run_id).wait(timeout)
            info = self.get(run_id, user)
        return info

    def list(self, *, scientist: str | None = None, request_id: str | None = None,
             release_state: str | None = None) -> builtins.list[RunInfo]:
        q = select(RunRow).order_by(RunRow.created)
        if scientist is not None:
            q = q.where(RunRow.scientist == scientist)
        if request_id is not None:
            q = q.where(RunRow.request_id == request_id)
        if release_state is not None:
            q = q.where(RunRow.release_state == release_state)
        with self._d.store.session() as s:
            rows = list(s.execute(q).scalars())
        return [self.info(r, owner=scientist is None) for r in rows]

    def held(self) -> builtins.list[RunInfo]:
        """Results waiting for the owner's release."""
        return self.list(release_state="held")

    def _decide(self, run_id: str, reviewer: str, state: str) -> RunInfo:
        with self._d.transaction() as tx:
            row = tx.s.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            if row.release_state != "held":
                raise Conflict(f"run {run_id!r} has no held result (state: {row.release_state})")
            if state == "released" and row.result is not None and decode_message(row.result)[0].get("secure"):
                state = "secagg"  # released to leave the domain masked, by secure aggregation
            row.release_state = state
            if state == "withheld":
                row.result = None
            charge = "freed" if state == "withheld" else "committed"
            if self._d.ledger.settle(tx.s, run_id, charge):
                tx.log(reviewer, f"charge.{charge}", run=run_id, request=row.request_id,
                       scientist=row.scientist, dataset=row.dataset, epsilon_after=row.epsilon)
            tx.log(reviewer, f"result.{state}", run=run_id, request=row.request_id)
        if state == "released":
            fault("after_release")
        return self.info(row, owner=True)

    def release(self, run_id: str, reviewer: str = "owner") -> RunInfo:
        """Release a held result to the scientist."""
        return self._decide(run_id, reviewer, "released")

    def withhold(self, run_id: str, reviewer: str = "owner") -> RunInfo:
        """Withhold a held result for good (it is deleted)."""
        return self._decide(run_id, reviewer, "withheld")

    def result(self, run_id: str, user: UserRow) -> bytes:
        """The released result's bytes (safetensors + JSON)."""
        with self._d.store.session() as s:
            row = s.get(RunRow, run_id)
        if row is None or (user.role != "owner" and row.scientist != user.name):
            raise NotFound(f"no run {run_id!r}")
        if row.release_state != "released" or row.result is None:
            state = row.release_state or row.status
            raise ResultNotReady(f"run {run_id!r} has no released result (state: {state})")
        return row.result
