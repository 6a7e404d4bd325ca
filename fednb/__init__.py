"""fednb: notebook-native federated data science for healthcare.

Code travels to hospitals as reviewed source text; data stays. The top-level names load
lazily (PEP 562), so ``import fednb.domain`` loads no client code and a sandboxed worker
imports only what it uses.

>>> import fednb                                          # doctest: +SKIP
>>> h = fednb.connect("http://127.0.0.1:8000", token="...")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fednb import errors, strategies
    from fednb.client import DomainClient, connect
    from fednb.protocol import FEDNB_VERSION as __version__
    from fednb.protocol import ClientDP, Update
    from fednb.scientist import (
        DPSGD,
        Federation,
        History,
        Query,
        RemoteFunction,
        load_ipython_extension,
        remote,
        simulate,
    )

__all__ = [
    "DPSGD",
    "ClientDP",
    "DomainClient",
    "Federation",
    "History",
    "Query",
    "RemoteFunction",
    "Update",
    "__version__",
    "connect",
    "errors",
    "load_ipython_extension",
    "remote",
    "simulate",
    "strategies",
]

_WHERE = {
    "ClientDP": ("fednb.protocol", "ClientDP"),
    "DPSGD": ("fednb.scientist", "DPSGD"),
    "DomainClient": ("fednb.client", "DomainClient"),
    "Federation": ("fednb.scientist", "Federation"),
    "History": ("fednb.scientist", "History"),
    "Query": ("fednb.scientist", "Query"),
    "RemoteFunction": ("fednb.scientist", "RemoteFunction"),
    "Update": ("fednb.protocol", "Update"),
    "__version__": ("fednb.protocol", "FEDNB_VERSION"),
    "connect": ("fednb.client", "connect"),
    "errors": ("fednb.errors", None),
    "load_ipython_extension": ("fednb.scientist", "load_ipython_extension"),
    "remote": ("fednb.scientist", "remote"),
    "simulate": ("fednb.scientist", "simulate"),
    "strategies": ("fednb.strategies", None),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fednb' has no attribute {name!r}")
    module, attr = _WHERE[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


def __dir__() -> list[str]:
    return sorted(__all__)
