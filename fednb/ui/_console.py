"""The model behind the owner's console (``fednb dashboard``): the inbox and the budgets
of :mod:`fednb.ui._models`, plus users, stats templates with the disclosure refusals, and
the audit log with its chain status."""

from __future__ import annotations

import json

from fednb.client import DomainClient, template_row
from fednb.client.html import CSS, esc, table_html
from fednb.ui._models import BudgetModel, InboxModel, _label, _Observable, _owner

__all__ = ["ConsoleModel", "approved_by"]

_TEMPLATE = "template:"
"""A template-approved request's ``reviewed_by`` prefix (fednb.domain._templates)."""


def approved_by(reviewed_by: str | None) -> str:
    """Who approved a request, as the console says it: ``approved by template <name>`` for
    one approved by a stats template, with no owner action."""
    if reviewed_by and reviewed_by.startswith(_TEMPLATE):
        return f"approved by template {reviewed_by[len(_TEMPLATE):]}"
    return f"approved by {reviewed_by or '-'}"


class ConsoleModel(_Observable):
    """The owner's console (``fednb dashboard``): the inbox and budgets, plus users and the
    audit log with its chain status."""

    def __init__(self, owner: DomainClient) -> None:
        super().__init__()
        self.client = _owner(owner, "the console")
        self.inbox = InboxModel(owner)
        self.budget = BudgetModel(owner)

    def refresh(self) -> bool:
        a = self.inbox.refresh()
        b = self.budget.refresh()
        return a or b

    def users_html(self) -> str:
        return f"<div class='fednb-ui'>{CSS}" + table_html(
            ("user", "role", "since", "revoked"),
            [
                (u.name, u.role, u.created.strftime("%Y-%m-%d %H:%M"), "yes" if u.revoked else "")
                for u in self.client.users()
            ],
            "Users",
        ) + "</div>"

    def audit_html(self, limit: int = 50) -> str:
        a = self.client.audit(limit)
        ok = bool(a.get("ok"))
        badge = (
            "<div class='fednb-audit-ok fednb-decision fednb-tone-ok' style='color:#116329'>"
            "<b>audit chain verifies</b></div>"
            if ok
            else "<div class='fednb-audit-bad fednb-decision fednb-tone-danger' role='alert' "
            "style='color:#a40e26'><b>audit chain BROKEN: "
            + esc("; ".join(map(str, a.get("problems", []))))
            + "</b></div>"
        )
        rows = [
            (e["seq"], e["ts"], e["actor"], e["action"], _label(str(e["details"]), 120))
            for e in a.get("entries", [])
        ]
        return f"<div class='fednb-ui'>{CSS}" + badge + table_html(
            ("#", "time", "actor", "action", "details"), rows, "Audit log (newest first)"
        ) + "</div>"

    def templates_html(self, limit: int = 500) -> str:
        """The stats templates (limits, protection, reviewers, active or waiting), the
        requests they approved, and the disclosure refusals among the newest ``limit``
        audit entries."""
        t_rows = [tuple(template_row(i).values()) for i in self.client.templates.list()]
        templates = table_html(
            ("template", "functions", "datasets", "scientists", "limits", "protection", "reviewers", "state"),
            t_rows, "Stats templates (approve once, run many)")
        if not t_rows:
            templates += ("<div class='fednb-templates-empty'>no stats templates: add one with "
                          "<code>fednb domain templates add FILE.json</code></div>")
        by_template = [r for r in self.client.requests.list("approved")
                       if (r.info.reviewed_by or "").startswith(_TEMPLATE)]
        approved = table_html(
            ("request", "scientist", "function", "datasets", "runs", "approval"),
            [(r.id, r.info.scientist, r.info.function_name, ", ".join(r.info.datasets),
              f"{r.info.runs_used}/{r.info.runs}", approved_by(r.info.reviewed_by))
             for r in by_template[-50:]],
            "Requests approved by a template")
        refused = []
        for e in self.client.audit(limit).get("entries", []):
            if e["action"] != "stats.refused":
                continue
            d = e["details"] if isinstance(e["details"], dict) else json.loads(e["details"])
            refused.append((e["ts"][:19].replace("T", " "), e["actor"], d.get("request", ""),
                            d.get("dataset", ""), _label(str(d.get("refusal", "")), 240)))
        refusals = table_html(("time", "scientist", "request", "dataset", "rule and message"), refused,
                              "Disclosure refusals (newest first)")
        return (f"<div class='fednb-ui fednb-templates'>{CSS}{templates}{approved}"
                f"<div class='fednb-refusals'>{refusals}</div></div>")
