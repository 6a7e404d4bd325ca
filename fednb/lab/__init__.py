"""The jupyter_server extension behind the JupyterLab extension ("Federated requests").

The browser talks to these handlers (authenticated by Jupyter, under ``/fednb/``); they
call the configured domains with the user's domain tokens, which live only here:
in traitlets config (``c.FednbLab.domains``) or in a JSON file only the user can read
(``c.FednbLab.tokens_file``). No response ever carries a domain token.

Enable with ``jupyter server extension enable fednb.lab`` (the wheel ships that
config); configure with::

    c.FednbLab.tokens_file = "~/.fednb/lab-tokens.json"   # mode 0600
    # {"domains": [{"name": "st-mary", "url": "https://st-mary.example", "token": "fednb_..."}]}
"""

from __future__ import annotations

from typing import Any

from fednb.lab._config import DomainEntry, FednbLab, load_tokens_file
from fednb.lab._handlers import setup_handlers

__all__ = ["DomainEntry", "FednbLab", "load_tokens_file"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "fednb.lab"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "../labextensions/fednb-labextension", "dest": "fednb-labextension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    config = FednbLab(parent=serverapp)
    setup_handlers(serverapp.web_app, config, serverapp.log)
    serverapp.log.info(
        "fednb.lab: %d domain(s) configured: %s",
        len(config.entries()),
        ", ".join(e.name for e in config.entries()) or "none",
    )
