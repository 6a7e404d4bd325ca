"""The model behind the owner's console (``fednb dashboard``): the inbox and the budgets
of :mod:`fednb.ui._models`, plus users, stats templates with the disclosure refusals, and
the audit log with its chain status."""

from __future__ import annotations

from fednb.client import TEMPLATE_REVIEWER, DomainClient, template_row
from fednb.client.html import CSS, esc, table_html
from fednb.errors import FednbError
from fednb.protocol import RequestInfo, TemplateInfo
from fednb.ui._models import BudgetModel, InboxModel, _label, _locked, _Observable, _owner

__all__ = ["ConsoleModel", "TemplatesModel", "approved_by"]

def approved_by(reviewed_by: str | None) -> str:
    """Who approved a request, as the console says it: ``approved by template <name>`` for
    one approved by a stats template, with no owner action."""
    if reviewed_by and reviewed_by.startswith(TEMPLATE_REVIEWER):
        return f"approved by template {reviewed_by[len(TEMPLATE_REVIEWER):]}"
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
        audit entries (:class:`TemplatesModel`, which the Inbox's Templates tab shows too)."""
        return TemplatesModel(self.client, limit).html()


class TemplatesModel(_Observable):
    """The owner's stats templates, the requests they approved with no owner action, and
    the disclosure refusals among the newest ``limit`` audit entries (newest first).

    ``refresh()`` reads the domain; ``approve(name)`` is a second owner's approval of a
    template waiting under the two-person rule; a refused approval leaves the domain's
    message in ``message`` instead of raising, so a view can show it.
    """

    def __init__(self, owner: DomainClient, limit: int = 500) -> None:
        super().__init__()
        self.client = _owner(owner, "the stats templates")
        self.limit = limit
        self.templates: list[TemplateInfo] = []
        self.approved: list[RequestInfo] = []  # newest last
        self.refusals: list[tuple[str, str, str, str, str]] = []  # newest first
        self.refresh()

    @_locked
    def refresh(self) -> bool:
        """Re-read the templates, the template-approved requests and the refusals; True
        when something changed."""
        o = self.client.templates.overview(self.limit)
        templates, approved = o.templates, o.approved
        refusals = [(x.time, x.scientist, x.request, x.dataset, _label(x.refusal, 240)) for x in o.refusals]
        changed = (templates, approved, refusals) != (self.templates, self.approved, self.refusals)
        self.templates, self.approved, self.refusals = templates, approved, refusals
        if changed:
            self._changed()
        return changed

    def rows(self) -> list[dict[str, str]]:
        """One row of text cells per template (:func:`fednb.client.template_row`)."""
        return [template_row(i) for i in self.templates]

    def waiting(self) -> list[str]:
        """Templates waiting for a second owner that this owner has not approved yet."""
        me = self.client.me.name
        return [i.template.name for i in self.templates if not i.active and me not in i.approved_by]

    @_locked
    def approve(self, name: str) -> bool:
        """Approve the template ``name`` as its second owner, which makes it active."""
        try:
            info = self.client.templates.approve(name)
        except FednbError as exc:
            self.message = f"approve refused: {exc}"
            ok = False
        else:
            self.message = f"approved template {name}: {template_row(info)['state']}"
            ok = True
        self.refresh()
        self._changed()
        return ok

    def html(self) -> str:
        """The three tables, every cell escaped."""
        t_rows = [tuple(r.values()) for r in self.rows()]
        templates = table_html(
            ("template", "functions", "datasets", "scientists", "limits", "protection", "reviewers", "state"),
            t_rows, "Stats templates (approve once, run many)")
        if not t_rows:
            templates += ("<div class='fednb-templates-empty'>no stats templates: add one with "
                          "<code>fednb domain templates add FILE.json</code></div>")
        approved = table_html(
            ("request", "scientist", "function", "datasets", "runs", "approval"),
            [(r.id, r.scientist, r.function_name, ", ".join(r.datasets), f"{r.runs_used}/{r.runs}",
              approved_by(r.reviewed_by)) for r in self.approved[-50:]],
            "Requests approved by a template")
        refusals = table_html(("time", "scientist", "request", "dataset", "rule and message"),
                              self.refusals, "Disclosure refusals (newest first)")
        return (f"<div class='fednb-ui fednb-templates'>{CSS}{templates}{approved}"
                f"<div class='fednb-refusals'>{refusals}</div></div>")
