"""The relay that lets hospitals behind firewalls serve without an inbound port.

A domain dials out to the relay (``fednb domain serve --relay URL``) and a scientist's
client reaches it through the relay (``fednb.connect(relay=URL, domain=NAME,
identity=KEY)``); the TLS 1.3 session between them runs end to end, keyed by the
domain's Ed25519 identity, so the relay routes bytes it can neither read nor change.
The relay imports nothing of the domain or the client. See docs/deployment.md.

``add_relay_parser`` (``fednb relay serve`` for :mod:`fednb.cli`) loads on first use, so
the client, which imports this package, does not import ``argparse``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fednb.relay._limits import Limits
from fednb.relay._relay import Relay
from fednb.relay._server import RelayServer
from fednb.relay._tunnel import ChannelTampered, IdentityMismatch, Pin, PinnedBackend, relay_url
from fednb.relay._wire import check_name, registration_payload, ws_url

if TYPE_CHECKING:
    from fednb.relay._cli import add_relay_parser

__all__ = [
    "ChannelTampered",
    "IdentityMismatch",
    "Limits",
    "Pin",
    "PinnedBackend",
    "Relay",
    "RelayServer",
    "add_relay_parser",
    "check_name",
    "registration_payload",
    "relay_url",
    "ws_url",
]


def __getattr__(name: str) -> Any:
    if name == "add_relay_parser":
        from fednb.relay._cli import add_relay_parser

        return add_relay_parser
    raise AttributeError(f"module 'fednb.relay' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "add_relay_parser"})
