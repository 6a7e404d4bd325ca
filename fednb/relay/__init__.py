"""The relay that lets hospitals behind firewalls serve without an inbound port.

A domain dials out to the relay (``fednb domain serve --relay URL``) and a scientist's
client reaches it through the relay (``fednb.connect(relay=URL, domain=NAME,
identity=KEY)``); the TLS 1.3 session between them runs end to end, keyed by the
domain's Ed25519 identity, so the relay routes bytes it can neither read nor change.
The relay imports nothing of the domain or the client. See docs/deployment.md.
"""

from fednb.relay._limits import Limits
from fednb.relay._relay import Relay
from fednb.relay._server import RelayServer
from fednb.relay._tunnel import ChannelTampered, IdentityMismatch, Pin, PinnedBackend, relay_url
from fednb.relay._wire import check_name, registration_payload, ws_url

__all__ = [
    "ChannelTampered",
    "IdentityMismatch",
    "Limits",
    "Pin",
    "PinnedBackend",
    "Relay",
    "RelayServer",
    "check_name",
    "registration_payload",
    "relay_url",
    "ws_url",
]
