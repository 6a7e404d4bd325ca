"""What the sidebar's "Templates" section shows of one domain (its owner only): the stats
templates, the requests they approved with no owner action, and the disclosure refusals
among the newest audit entries. The one reading of :func:`fednb.client.read_overview`,
which the console's and the Inbox's Templates tabs show too, as JSON for the lab extension."""

from __future__ import annotations

from typing import Any

from fednb.client import TEMPLATE_REVIEWER, Transport, read_overview, template_row
from fednb.protocol import RequestInfo, TemplateInfo

__all__ = ["AUDIT_LIMIT", "template_json", "templates_overview"]

AUDIT_LIMIT = 500
"""How many of the newest audit entries are searched for disclosure refusals."""

_RECENT = 50
"""The most template-approved requests and refusals one answer lists (the newest)."""


def template_json(raw: Any) -> dict[str, Any]:
    """A template as the domain answers it (``TemplateInfo`` JSON), as one row of the section."""
    return _row(TemplateInfo.model_validate(raw))


def _row(info: TemplateInfo) -> dict[str, Any]:
    row: dict[str, Any] = template_row(info)
    return {**row, "active": info.active, "approved_by": list(info.approved_by),
            "needed": info.template.reviewers}


def _approved(r: RequestInfo) -> dict[str, Any]:
    return {"request": r.id, "scientist": r.scientist, "function": r.function_name,
            "datasets": ", ".join(r.datasets), "runs": f"{r.runs_used}/{r.runs}",
            "template": str(r.reviewed_by)[len(TEMPLATE_REVIEWER):]}


def templates_overview(t: Transport, limit: int = AUDIT_LIMIT) -> dict[str, Any]:
    """(Owner) ``{"templates": [...], "approved": [...], "refusals": [...]}`` of one domain.

    Each template row holds ``template_row``'s text cells (name, functions, datasets,
    scientists, limits, protection, reviewers, state) and ``active``, ``approved_by`` and
    ``needed`` (1 or 2 approvals: the two-person rule). ``approved`` lists the newest
    requests a template approved, ``refusals`` the newest disclosure refusals (newest first)
    among the ``limit`` newest audit entries. A scientist's token is refused by the domain.
    """
    o = read_overview(t, limit)
    return {"templates": [_row(i) for i in o.templates],
            "approved": [_approved(r) for r in o.approved[-_RECENT:][::-1]],
            "refusals": [{"time": x.time, "scientist": x.scientist, "request": x.request,
                          "dataset": x.dataset, "refusal": x.refusal} for x in o.refusals[:_RECENT]]}
