"""The model behind the owner's console (``fednb dashboard``): the inbox and the budgets
of :mod:`fednb.ui._models`, plus users and the audit log with its chain status."""

from __future__ import annotations

from fednb.client import DomainClient
from fednb.client._html import CSS, esc, table_html
from fednb.ui._models import BudgetModel, InboxModel, _label, _Observable, _owner

__all__ = ["ConsoleModel"]


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
