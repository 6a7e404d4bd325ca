"""The hospital side: ``Domain`` (store, datasets, users, policy, requests) and its server.

Attributes load lazily, so ``python -m fednb.domain.runner._worker`` inside the sandbox
does not import the server stack. Other packages import from here (or from the public
:mod:`fednb.domain.runner`), never from the modules whose names start with ``_``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fednb.domain._audit import AuditReport
    from fednb.domain._domain import Domain
    from fednb.domain._nearest import run_nearest
    from fednb.domain._policy import Policy
    from fednb.domain._server import Server
    from fednb.domain._store import UserRow

__all__ = ["AuditReport", "Domain", "Policy", "Server", "UserRow", "run_nearest"]

_WHERE = {
    "AuditReport": "fednb.domain._audit",
    "Domain": "fednb.domain._domain",
    "Policy": "fednb.domain._policy",
    "Server": "fednb.domain._server",
    "UserRow": "fednb.domain._store",
    "run_nearest": "fednb.domain._nearest",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fednb.domain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
