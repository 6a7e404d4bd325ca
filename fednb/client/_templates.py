"""``DomainClient.templates``: the owner's stats templates over HTTP (approve once, run many)."""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fednb.protocol import RequestInfo, StatsTemplate, TemplateInfo

if TYPE_CHECKING:
    from fednb.client._client import DomainClient
    from fednb.client._http import Transport

__all__ = ["TEMPLATE_REVIEWER", "Refusal", "Templates", "TemplatesOverview", "read_overview",
           "template_limits", "template_row"]

TEMPLATE_REVIEWER = "template:"
"""The prefix of a template-approved request's ``reviewed_by`` (``template:<name>``)."""


@dataclass(frozen=True)
class Refusal:
    """A disclosure refusal as the audit log records it (``stats.refused``); no count in it."""

    time: str
    scientist: str
    request: str
    dataset: str
    refusal: str


@dataclass(frozen=True)
class TemplatesOverview:
    """What an owner's review desks show of the templates: every template, the requests a
    template approved with no owner action (newest last) and the disclosure refusals among
    the newest audit entries (newest first)."""

    templates: builtins.list[TemplateInfo]
    approved: builtins.list[RequestInfo]
    refusals: builtins.list[Refusal]


def _refusal(entry: dict[str, Any]) -> Refusal | None:
    if entry.get("action") != "stats.refused":
        return None
    d = entry.get("details")
    if isinstance(d, str):
        try:
            d = json.loads(d)
        except ValueError:
            d = {}
    d = d if isinstance(d, dict) else {}
    return Refusal(str(entry.get("ts", ""))[:19].replace("T", " "), str(entry.get("actor", "")),
                   str(d.get("request", "")), str(d.get("dataset", "")), str(d.get("refusal", "")))


def read_overview(t: Transport, audit_limit: int = 500) -> TemplatesOverview:
    """(Owner) read a domain's :class:`TemplatesOverview` over ``t``: the console, the Inbox
    and the JupyterLab sidebar all show this one reading. A scientist's token is refused by
    the domain."""
    templates = [TemplateInfo.model_validate(i) for i in t.json("GET", "/templates")]
    listed = t.json("GET", "/requests", params={"status": "approved"})
    approved = [RequestInfo.model_validate(r) for r in listed
                if str(r.get("reviewed_by") or "").startswith(TEMPLATE_REVIEWER)]
    entries = t.json("GET", "/audit", params={"limit": audit_limit}).get("entries", [])
    return TemplatesOverview(templates, approved, [x for x in map(_refusal, entries) if x is not None])


def template_limits(t: StatsTemplate) -> str:
    """A template's limits in one line, as the owner's tools show them."""
    parts = [f"max params {t.max_params}" if t.max_params is not None else "",
             f"variables {', '.join(t.variables)}" if t.variables is not None else "",
             f"{t.max_iterations} iterations/model", f"{t.max_runs} run(s)/request",
             f"noise multiplier >= {t.min_noise_multiplier:g}" if t.min_noise_multiplier else "",
             f"release {t.release}"]
    return "; ".join(p for p in parts if p)


def template_row(info: TemplateInfo) -> dict[str, str]:
    """One template as a row of text cells (name, functions, ..., state)."""
    t = info.template
    return {"name": t.name, "functions": ", ".join(t.functions), "datasets": ", ".join(t.datasets),
            "scientists": ", ".join(t.scientists), "limits": template_limits(t),
            "protection": t.protection or "policy's",
            "reviewers": f"{', '.join(info.approved_by)} ({len(info.approved_by)}/{t.reviewers})",
            "state": "active" if info.active else "waiting for a second owner"}


class Templates:
    """(Owner) list, add, approve and remove the domain's ``stats`` templates.

    A ``stats`` request within an active template's limits is approved on submission; the
    domain keeps the templates and audits every change (docs/stats-domain.md).
    """

    def __init__(self, client: DomainClient) -> None:
        self._c = client

    def overview(self, audit_limit: int = 500) -> TemplatesOverview:
        """The templates, the requests they approved and the disclosure refusals among the
        newest ``audit_limit`` audit entries (:func:`read_overview`)."""
        return read_overview(self._c._t, audit_limit)

    def list(self) -> builtins.list[TemplateInfo]:
        """Every template, active or waiting for its second reviewer."""
        return [TemplateInfo.model_validate(t) for t in self._c._t.json("GET", "/templates")]

    def get(self, name: str) -> TemplateInfo:
        """The template called ``name``.

        Raises
        ------
        KeyError
            No template has that name.
        """
        for t in self.list():
            if t.template.name == name:
                return t
        raise KeyError(name)

    def add(self, template: StatsTemplate | dict[str, Any]) -> TemplateInfo:
        """Add a template; you approve it first. It is active at once, or, with
        ``reviewers=2``, once another owner :meth:`approve`\\ s it."""
        t = template if isinstance(template, StatsTemplate) else StatsTemplate.model_validate(template)
        return TemplateInfo.model_validate(
            self._c._t.json("POST", "/templates", json=t.model_dump(mode="json")))

    def approve(self, name: str) -> TemplateInfo:
        """Approve a two-reviewer template as the second owner, which makes it active."""
        return TemplateInfo.model_validate(
            self._c._t.json("POST", f"/templates/{quote(name, safe='')}/approve"))

    def remove(self, name: str) -> None:
        """Remove a template: requests it approved keep their approval; new ones go to review."""
        self._c._t.call("DELETE", f"/templates/{quote(name, safe='')}")

    def __repr__(self) -> str:
        rows = [f"{r['name']}: {r['functions']} on {r['datasets']} for {r['scientists']} ({r['state']})"
                for r in map(template_row, self.list())]
        return "\n".join(rows) or "(no stats templates)"
