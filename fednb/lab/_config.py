"""Where the lab extension's domains and tokens come from: traitlets config or a file
only the user can read."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, List, Unicode
from traitlets.config import Configurable

from fednb.errors import FednbError, InsecureSetting, InvalidInput
from fednb.relay import check_name

__all__ = ["DomainEntry", "FednbLab", "load_tokens_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IDENTITY = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class DomainEntry:
    """One domain the sidebar shows. ``token`` never leaves the server.

    A domain is reached at ``url``, or, behind a relay, as ``relay_name`` on ``relay``
    (``url`` is then empty). ``identity`` (64 hex digits) pins the domain's TLS key:
    through a relay None pins the key seen first (see :class:`fednb.relay.Pin`); with an
    https ``url`` it replaces the CA check.
    """

    name: str
    url: str
    token: str = ""
    relay: str | None = None
    relay_name: str | None = None
    identity: str | None = None

    @property
    def address(self) -> str:
        """Where the domain is reached, as the sidebar shows it."""
        return f"{self.relay_name} via {self.relay}" if self.relay else self.url

    def __repr__(self) -> str:  # never print a token
        return f"DomainEntry({self.name!r}, {self.address!r})"


def _entry(d: Any, i: int, where: str) -> DomainEntry:
    if not isinstance(d, dict) or not {"name", "token"} <= set(d) or ("url" in d) == ("relay" in d):
        raise InvalidInput(f"{where}: domain {i} needs 'name', 'token', and 'url' or 'relay' (not both)")
    name, token = str(d["name"]), str(d["token"])
    if not _NAME.match(name):
        raise InvalidInput(f"{where}: domain name {name[:64]!r} is not a valid name")
    identity = None if d.get("identity") is None else str(d["identity"])
    if identity is not None and not _IDENTITY.match(identity):
        raise InvalidInput(f"{where}: domain {name!r}: 'identity' must be the domain's Ed25519 "
                           "public key, 64 hex digits (`fednb domain peers` shows it)")
    if "url" in d:
        if "relay_name" in d:
            raise InvalidInput(f"{where}: domain {name!r}: 'relay_name' goes with 'relay', not 'url'")
        return DomainEntry(name, str(d["url"]), token, identity=identity)
    relay, relay_name = str(d["relay"]), str(d.get("relay_name") or name)
    try:
        check_name(relay_name)
    except FednbError as exc:
        raise InvalidInput(f"{where}: domain {name!r}: {exc.message}") from None
    return DomainEntry(name, "", token, relay=relay, relay_name=relay_name, identity=identity)


def _entries(raw: Any, where: str) -> list[DomainEntry]:
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}: 'domains' must be a list of {{name, url, token}}")
    return [_entry(d, i, where) for i, d in enumerate(raw)]


def load_tokens_file(path: str | os.PathLike[str]) -> list[DomainEntry]:
    """Read ``{"domains": [{"name", "url", "token"}]}``; refuse a file others may read.

    A domain behind a relay has ``"relay"`` (the relay's URL) instead of ``"url"``, and
    optionally ``"relay_name"`` (its name on the relay; default ``name``) and
    ``"identity"`` (its Ed25519 public key in hex, pinned).
    """
    p = Path(path).expanduser()
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureSetting(f"{p} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{p} is not JSON: {exc}") from None
    return _entries(data.get("domains") if isinstance(data, dict) else None, str(p))


class FednbLab(Configurable):
    """The domains JupyterLab's "Federated requests" sidebar shows, and how to reach them."""

    domains = List(
        Dict(),
        default_value=[],
        help="""Domains to show: a list of {"name": ..., "url": ..., "token": ...}. The token is
        the owner's (the review desk) or a scientist's (their own requests, runs and
        budgets); it stays on the server. A domain behind a relay has "relay" (the relay's
        URL) instead of "url", and "relay_name" (its name there; default "name") and
        "identity" (its Ed25519 key in hex, pinned). Prefer tokens_file, so tokens stay out
        of config files others may read.""",
    ).tag(config=True)

    tokens_file = Unicode(
        os.environ.get("FEDNB_LAB_TOKENS", ""),
        help="""A JSON file {"domains": [{"name", "url", "token"}]} readable only by you (mode
        0600; refused otherwise). Default: $FEDNB_LAB_TOKENS. `fednb demo` writes one.""",
    ).tag(config=True)

    insecure = Bool(
        False, help="Allow plain HTTP to a domain that is not on loopback (tokens travel in clear)."
    ).tag(config=True)

    timeout = Float(30.0, help="Seconds per call to a domain.").tag(config=True)

    def entries(self) -> list[DomainEntry]:
        """The configured domains, the file's after the config's (a name once)."""
        out = _entries(list(self.domains), "c.FednbLab.domains")
        if self.tokens_file:
            out += load_tokens_file(self.tokens_file)
        seen: dict[str, DomainEntry] = {}
        for e in out:
            seen.setdefault(e.name, e)
        return list(seen.values())
