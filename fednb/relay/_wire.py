"""The relay's wire contract: its paths, its control messages and a domain's registration."""

from __future__ import annotations

import re

from fednb.errors import InvalidInput

__all__ = ["NAME_RE", "check_name", "registration_payload", "ws_url"]

#: a domain's name on a relay: a DNS label, so ``<name>.relay`` is a host name too
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a domain on a relay (a lower-case DNS label)."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"{name!r} cannot name a domain on a relay: use lower-case letters, "
                           "digits and inner hyphens (a DNS label, e.g. 'st-mary')")
    return name


def registration_payload(name: str, challenge: str) -> bytes:
    """What a domain signs with its Ed25519 identity to hold ``name`` on a relay: the relay's
    fresh challenge binds it to this connection (a recorded one cannot be replayed)."""
    return f"fednb-relay-register-v1|{name}|{challenge}".encode()


def ws_url(relay: str, path: str) -> str:
    """``http(s)://relay[:port][/prefix]`` plus ``path`` as a ``ws(s)://`` URL."""
    relay = relay.rstrip("/")
    if relay.startswith("https://"):
        return "wss://" + relay[len("https://"):] + path
    if relay.startswith("http://"):
        return "ws://" + relay[len("http://"):] + path
    if relay.startswith(("ws://", "wss://")):
        return relay + path
    raise InvalidInput(f"{relay!r} is not a relay URL: use https://host[:port] (or http:// on a "
                       "trusted network; the relay never sees the inner TLS either way)")
