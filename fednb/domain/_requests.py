"""Code requests: filed by scientists, reviewed by the owner."""

from __future__ import annotations

import builtins
import difflib
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fednb.domain._kinds import check_submission, request_kind, stats_spec
from fednb.domain._store import DatasetRow, RequestRow, UserRow, utcnow
from fednb.domain._templates import TEMPLATE_REVIEWER
from fednb.errors import Conflict, InvalidInput, NotFound
from fednb.protocol import ReleaseMode, RequestCreate, RequestInfo, RequestStatus
from fednb.runtime import kind_of

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["RequestBook"]


def _diff(old: str, new: str, old_hash: str, new_hash: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"approved {old_hash[:12]}",
                                        tofile=f"requested {new_hash[:12]}"))


class RequestBook:
    """``dom.requests``: the request lifecycle (pending → approved | denied)."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    def info(self, row: RequestRow) -> RequestInfo:
        """The request with the diff against the last approved one of the same function."""
        with self._d.store.session() as s:
            prev = s.execute(
                select(RequestRow)
                .where(RequestRow.scientist == row.scientist,
                       RequestRow.function_name == row.function_name,
                       RequestRow.status == "approved", RequestRow.id != row.id,
                       RequestRow.created <= row.created)
                .order_by(RequestRow.created.desc()).limit(1)
            ).scalar()
        fields: dict[str, Any] = {c: getattr(row, c) for c in RequestInfo.model_fields
                                  if hasattr(RequestRow, c)}
        if prev is not None:
            fields["previous_hash"] = prev.code_hash
            fields["diff"] = _diff(prev.source, row.source, prev.code_hash, row.code_hash)
        fields.update(self._d.ledger.projected(row))  # nothing for a request without DP
        return RequestInfo.model_validate(fields)

    def submit(self, scientist: UserRow, body: RequestCreate) -> RequestInfo:
        """File a request; re-sending the same id with the same content is a no-op."""
        with self._d.transaction() as tx:
            old = tx.s.get(RequestRow, body.id)
            if old is not None:
                if old.scientist != scientist.name or old.code_hash != body.code_hash:
                    raise Conflict(f"request id {body.id!r} is taken: use a new id")
                return self.info(old)
            for name in body.datasets:
                if tx.s.get(DatasetRow, name) is None:
                    raise NotFound(f"no dataset called {name!r} on this domain")
            kind = kind_of(body.kind)
            if kind.code and body.dp is not None and body.weights is None:
                raise InvalidInput("a DP update request needs weights= (the approved names, shapes and "
                                   "dtypes of what it returns): what is released takes its structure "
                                   "from the approved spec, never from the code")
            n_params = check_submission(self._d, body)
            row = RequestRow(
                id=body.id, scientist=scientist.name, function_name=body.function_name,
                kind=body.kind, source=body.source, code_hash=body.code_hash,
                datasets=list(body.datasets),
                params={k: v.model_dump() for k, v in body.params.items()},
                weights=None if body.weights is None
                else {k: v.model_dump() for k, v in body.weights.items()},
                metrics={k: list(v) for k, v in body.metrics.items()}, runs=body.runs,
                dp=None if body.dp is None else body.dp.model_dump(),
                runs_used=0, description=body.description, status="pending", created=utcnow(),
                slot_s=body.slot_s)
            tx.s.add(row)
            tx.log(scientist.name, "request.submitted", request=body.id, kind=body.kind,
                   function=body.function_name, code_hash=body.code_hash,
                   datasets=body.datasets, runs=body.runs,
                   dp=None if body.dp is None else body.dp.model_dump())
            if kind.templated:
                self._match_template(tx, row, body, n_params)
        return self.info(row)

    def _match_template(self, tx: Any, row: RequestRow, body: RequestCreate, n_params: int) -> None:
        """Approve a ``stats`` request within an active template's limits, in the submitting
        transaction, naming the template in the audit log; any other waits for review."""
        tx.s.flush()
        info = self._d.policy.templates.match(tx.s, row.scientist, body, stats_spec(row), n_params)
        if info is not None:
            self._approve_row(tx, row, TEMPLATE_REVIEWER + info.template.name, info.template.release,
                              None, template=info.template.name, template_approved_by=info.approved_by)

    def list(self, *, scientist: str | None = None,
             status: RequestStatus | None = None) -> builtins.list[RequestInfo]:
        """Requests, oldest first; ``scientist`` limits them to one user's."""
        q = select(RequestRow).order_by(RequestRow.created)
        if scientist is not None:
            q = q.where(RequestRow.scientist == scientist)
        if status is not None:
            q = q.where(RequestRow.status == status)
        with self._d.store.session() as s:
            rows = list(s.execute(q).scalars())
        return [self.info(r) for r in rows]

    def pending(self) -> builtins.list[RequestInfo]:
        """Requests waiting for review."""
        return self.list(status="pending")

    def row(self, request_id: str, scientist: str | None = None) -> RequestRow:
        """The request, if it exists and (for a scientist) is theirs."""
        with self._d.store.session() as s:
            row = s.get(RequestRow, request_id)
        if row is None or (scientist is not None and row.scientist != scientist):
            raise NotFound(f"no request {request_id!r}")
        return row

    def get(self, request_id: str, scientist: str | None = None) -> RequestInfo:
        return self.info(self.row(request_id, scientist))

    def _review(self, request_id: str, reviewer: str, status: RequestStatus,
                release: ReleaseMode | None, reason: str | None, slot_s: float | None = None) -> RequestRow:
        with self._d.transaction() as tx:
            row = tx.s.get(RequestRow, request_id)
            if row is None:
                raise NotFound(f"no request {request_id!r}")
            if row.status != "pending":
                raise Conflict(f"request {request_id!r} is already {row.status}")
            if status == "approved":
                self._approve_row(tx, row, reviewer, release, slot_s)
                return row
            row.status, row.release, row.review_reason = status, release, reason
            row.reviewed_by, row.reviewed = reviewer, utcnow()
            tx.log(reviewer, f"request.{status}", request=request_id, code_hash=row.code_hash,
                   scientist=row.scientist, release=release, reason=reason)
        return row

    def _approve_row(self, tx: Any, row: RequestRow, reviewer: str, release: ReleaseMode | None,
                     slot_s: float | None, **audit: Any) -> None:
        """Approve ``row`` inside ``tx``; ``audit`` adds to the ``request.approved`` entry."""
        row.status, row.release, row.review_reason = "approved", release, None
        row.reviewed_by, row.reviewed = reviewer, utcnow()
        if self._d.ledger.run_event(row) is not None:
            row.slot_s = self._d.ledger.slot(row) if slot_s is None else float(slot_s)
        tx.log(reviewer, "request.approved", request=row.id, code_hash=row.code_hash,
               scientist=row.scientist, release=release, reason=None, slot_s=row.slot_s, **audit)

    def approve(self, request_id: str, release: ReleaseMode = "manual",
                reviewer: str = "owner", slot_s: float | None = None) -> RequestInfo:
        """Approve the exact source text the request holds (its hash is audited).

        ``slot_s`` (DP requests): seconds from a run's creation to its scheduled release;
        None keeps the scientist's proposal, else the policy's ``dp_slot_s``.
        """
        if release not in ("auto", "manual"):
            raise InvalidInput(f"release must be 'auto' or 'manual', not {release!r}")
        if slot_s is not None and not (0 < slot_s <= 86_400):
            raise InvalidInput(f"slot_s is seconds in (0, 86400], not {slot_s!r}")
        row = self._review(request_id, reviewer, "approved", release, None, slot_s)
        if not request_kind(row).trusted:  # computed in this process: no worker to start
            self._d._prewarm(row)
        return self.info(row)

    def deny(self, request_id: str, reason: str, reviewer: str = "owner") -> RequestInfo:
        """Deny with a reason the scientist sees."""
        if not reason.strip():
            raise InvalidInput("a denial needs a reason the scientist can act on")
        row = self._review(request_id, reviewer, "denied", None, reason.strip())
        return self.info(row)
