"""What people look at: notebook widgets (``Inbox``, ``BudgetMeter``, ``ResultsViewer``)
and the Panel console behind ``fednb dashboard``.

The widgets are thin views over the models (``InboxModel``, ``BudgetModel``,
``ResultsModel``, ``ConsoleModel``), which are plain Python and tested without a browser.
The views need the ``ui`` extra (``pip install fednb[ui]``: ipywidgets, Panel); the
Panel apps are in :mod:`fednb.ui.dashboard`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fednb.ui._console import ConsoleModel, TemplatesModel
from fednb.ui._models import BudgetModel, Gauge, InboxModel, ResultsModel

if TYPE_CHECKING:
    from fednb.ui._widgets import BudgetMeter, Inbox, ResultsViewer

__all__ = [
    "BudgetMeter",
    "BudgetModel",
    "ConsoleModel",
    "Gauge",
    "Inbox",
    "InboxModel",
    "ResultsModel",
    "ResultsViewer",
    "TemplatesModel",
]


def __getattr__(name: str) -> Any:
    if name in ("BudgetMeter", "Inbox", "ResultsViewer"):
        try:
            module = importlib.import_module("fednb.ui._widgets")
        except ModuleNotFoundError as exc:
            raise ImportError(f"fednb.ui.{name} needs ipywidgets: pip install 'fednb[ui]'") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'fednb.ui' has no attribute {name!r}")
