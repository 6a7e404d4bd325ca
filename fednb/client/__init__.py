"""The HTTP client of a domain, for every role.

Besides ``connect`` and the handles, it offers what the other desks (the widgets, the
Panel console, the lab extension, the command line) build on: the ``Transport`` to one
domain, the HTML reprs of requests, runs, budgets and dataset cards, and the rows of the
owner's stats templates. Its public modules are :mod:`fednb.client.html` (the escaping
HTML blocks) and :mod:`fednb.client.review` (the review of a held result); modules whose
names start with ``_`` are its own.
"""

from fednb.client._client import DatasetHandle, DomainClient, connect
from fednb.client._handles import RemoteRequest, RemoteRun
from fednb.client._html import (
    budget_html,
    card_html,
    request_decision_html,
    request_html,
    run_html,
    spec_rows,
)
from fednb.client._http import Transport, is_loopback
from fednb.client._secagg import RemoteSecAggPeer
from fednb.client._templates import (
    TEMPLATE_REVIEWER,
    Refusal,
    Templates,
    TemplatesOverview,
    read_overview,
    template_limits,
    template_row,
)

__all__ = [
    "TEMPLATE_REVIEWER",
    "DatasetHandle",
    "DomainClient",
    "Refusal",
    "RemoteRequest",
    "RemoteRun",
    "RemoteSecAggPeer",
    "Templates",
    "TemplatesOverview",
    "Transport",
    "budget_html",
    "card_html",
    "connect",
    "is_loopback",
    "read_overview",
    "request_decision_html",
    "request_html",
    "run_html",
    "spec_rows",
    "template_limits",
    "template_row",
]
