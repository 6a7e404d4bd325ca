"""The relay's wire contract: its paths, its control messages and a domain's registration."""

from __future__ import annotations

import re

from fednb.errors import InvalidInput

__all__ = ["NAME_RE", "check_name", "registration_payload", "weak_ed25519", "ws_url"]

#: a domain's name on a relay: a DNS label, so ``<name>.relay`` is a host name too
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


_P = 2**255 - 19
#: the y coordinate of a point of order 8 on edwards25519 (libsodium's blocklist)
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
#: the y coordinates of every point of order 1, 2, 4 and 8
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})


def weak_ed25519(public: bytes) -> bool:
    """True for an Ed25519 public key that anyone can sign for: a point of small order
    (order 1, 2, 4 or 8, with either sign) or a non-canonical encoding.

    OpenSSL's verification is cofactorless and accepts such keys: for the identity point,
    the signature R = identity, S = 0 verifies every message. No generated key is one.
    """
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    return len(public) != 32 or y >= _P or y in _SMALL_ORDER_Y


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
