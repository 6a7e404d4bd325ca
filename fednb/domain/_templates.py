"""Templates for ``stats`` requests: approve once, run many.

The owner allows a :mod:`fednb.stats` function (or an op) on datasets for scientists, with
limits (variables, model parameters, iterations of one model, runs, protection, noise).
A ``stats`` request within an active template's limits is approved on submission, with no
owner action, and the audit log's ``request.approved`` entry names the template; any
other request waits for review as usual. A template may need two distinct owners'
approval before it is active (the two-person rule).

Templates live in the store apart from the policy (key ``stats_templates``), so that
changing a policy field never rewrites them, and every change is audited
(``template.added``, ``template.approved``, ``template.removed``).
"""

from __future__ import annotations

import builtins
import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from fednb.domain._store import RequestRow, SettingRow, UserRow, utcnow
from fednb.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from fednb.protocol import RequestCreate, StatsSpec, StatsTemplate, TemplateInfo, template_ops

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["TEMPLATE_REVIEWER", "TemplateBook", "model_key"]

_KEY = "stats_templates"
TEMPLATE_REVIEWER = "template:"
"""A template-approved request's ``reviewed_by`` is this prefix and the template's name."""


def model_key(spec: StatsSpec, datasets: list[str]) -> str:
    """What identifies one model across its Newton/IRLS steps: the spec without its
    coefficients, and the datasets (SHA-256 hex)."""
    body = {"spec": spec.model_dump(mode="json", exclude={"beta"}), "datasets": sorted(datasets)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _covers(names: list[str], name: str) -> bool:
    return "*" in names or name in names


class TemplateBook:
    """``dom.policy.templates``: add, approve, remove and list templates; match requests."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    # -- storage ---------------------------------------------------------------------
    @staticmethod
    def _load(s: Session) -> builtins.list[TemplateInfo]:
        row = s.get(SettingRow, _KEY)
        return [] if row is None else [TemplateInfo.model_validate(t) for t in row.value]

    @staticmethod
    def _save(s: Session, infos: builtins.list[TemplateInfo]) -> None:
        value = [t.model_dump(mode="json") for t in infos]
        row = s.get(SettingRow, _KEY)
        if row is None:
            s.add(SettingRow(key=_KEY, value=value))
        else:
            row.value = value

    def list(self) -> builtins.list[TemplateInfo]:
        """Every template, active or waiting for its second reviewer."""
        with self._d.store.session() as s:
            return self._load(s)

    def get(self, name: str) -> TemplateInfo:
        for t in self.list():
            if t.template.name == name:
                return t
        raise NotFound(f"no stats template called {name!r}")

    # -- the owner's changes -----------------------------------------------------------
    def _check_reviewer(self, s: Session, reviewer: str, template: StatsTemplate) -> None:
        """Under the two-person rule, approvals count only from the domain's owner accounts
        (two strings typed by one person are not two people)."""
        if template.reviewers < 2:
            return
        row = s.get(UserRow, reviewer)
        if row is None or row.role != "owner" or row.revoked:
            raise PermissionDenied(f"template {template.name!r} needs two owners' approval: "
                                   f"{reviewer!r} is not an owner account of this domain")

    def add(self, template: StatsTemplate | dict[str, Any], reviewer: str = "owner") -> TemplateInfo:
        """Add a template; ``reviewer`` approves it first. It is active at once, or, with
        ``reviewers=2``, once a second owner :meth:`approve`\\ s it."""
        try:
            t = template if isinstance(template, StatsTemplate) else StatsTemplate.model_validate(template)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(map(str, e["loc"]))
            raise InvalidInput(f"invalid stats template: {e['msg']} ({where})") from None
        with self._d.transaction() as tx:
            infos = self._load(tx.s)
            if any(i.template.name == t.name for i in infos):
                raise Conflict(f"a stats template called {t.name!r} exists: remove it first, or "
                               "choose another name")
            self._check_reviewer(tx.s, reviewer, t)
            info = TemplateInfo(template=t, approved_by=[reviewer], active=t.reviewers <= 1, added=utcnow())
            self._save(tx.s, [*infos, info])
            tx.log(reviewer, "template.added", template=t.model_dump(mode="json"), active=info.active)
        return info

    def approve(self, name: str, reviewer: str) -> TemplateInfo:
        """A second owner's approval of a two-reviewer template, which makes it active."""
        with self._d.transaction() as tx:
            infos = self._load(tx.s)
            i = next((k for k, t in enumerate(infos) if t.template.name == name), None)
            if i is None:
                raise NotFound(f"no stats template called {name!r}")
            old = infos[i]
            if reviewer in old.approved_by:
                raise Conflict(f"{reviewer!r} already approved template {name!r}: the two-person "
                               "rule needs another owner")
            if old.active:
                raise Conflict(f"template {name!r} is already active")
            self._check_reviewer(tx.s, reviewer, old.template)
            approved = [*old.approved_by, reviewer]
            infos[i] = old.model_copy(update={"approved_by": approved,
                                              "active": len(approved) >= old.template.reviewers})
            self._save(tx.s, infos)
            tx.log(reviewer, "template.approved", template=name, approved_by=approved,
                   active=infos[i].active)
        return infos[i]

    def remove(self, name: str, reviewer: str = "owner") -> None:
        """Remove a template: requests it approved keep their approval; new ones go to review."""
        with self._d.transaction() as tx:
            infos = self._load(tx.s)
            kept = [t for t in infos if t.template.name != name]
            if len(kept) == len(infos):
                raise NotFound(f"no stats template called {name!r}")
            self._save(tx.s, kept)
            tx.log(reviewer, "template.removed", template=name)

    # -- matching --------------------------------------------------------------------
    def match(self, s: Session, scientist: str, body: RequestCreate, spec: StatsSpec,
              n_params: int) -> TemplateInfo | None:
        """The first active template ``body`` (filed by ``scientist``) stays within, or None.

        ``n_params`` is the most model parameters the request fits on any of its datasets
        (from the card and the spec alone). Iterations are counted in the store (``s``, the
        submitting transaction), so two concurrent submissions cannot both take the last.
        """
        for info in self._load(s):
            if info.active and self._within(s, info.template, scientist, body, spec, n_params):
                return info
        return None

    def _within(self, s: Session, t: StatsTemplate, scientist: str, body: RequestCreate, spec: StatsSpec,
                n_params: int) -> bool:
        if not (_covers(t.scientists, scientist) and all(_covers(t.datasets, d) for d in body.datasets)
                and spec.op in template_ops(t.functions) and body.runs <= t.max_runs):
            return False
        if t.variables is not None and not set(spec.variables) <= set(t.variables):
            return False
        if t.max_params is not None and n_params > t.max_params:
            return False
        if t.protection is not None and spec.protection != t.protection:
            return False
        if (t.min_noise_multiplier is not None and spec.noise_multiplier is not None
                and spec.noise_multiplier < t.min_noise_multiplier):
            return False
        return self._iterations(s, t.name, scientist, model_key(spec, body.datasets)) < t.max_iterations

    @staticmethod
    def _iterations(s: Session, name: str, scientist: str, key: str) -> int:
        """Requests of the model ``key`` this template already approved for ``scientist``."""
        rows = s.execute(select(RequestRow).where(
            RequestRow.scientist == scientist, RequestRow.kind == "stats",
            RequestRow.reviewed_by == TEMPLATE_REVIEWER + name)).scalars()
        return sum(model_key(StatsSpec.model_validate_json(r.source), r.datasets) == key for r in rows)
