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

from fednb.errors import InsecureSetting, InvalidInput

__all__ = ["DomainEntry", "FednbLab", "load_tokens_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DomainEntry:
    """One domain the sidebar shows. ``token`` never leaves the server."""

    name: str
    url: str
    token: str = ""

    def __repr__(self) -> str:  # never print a token
        return f"DomainEntry({self.name!r}, {self.url!r})"


def _entries(raw: Any, where: str) -> list[DomainEntry]:
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}: 'domains' must be a list of {{name, url, token}}")
    out: list[DomainEntry] = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or not {"name", "url", "token"} <= set(d):
            raise InvalidInput(f"{where}: domain {i} needs 'name', 'url' and 'token'")
        name, url, token = str(d["name"]), str(d["url"]), str(d["token"])
        if not _NAME.match(name):
            raise InvalidInput(f"{where}: domain name {name[:64]!r} is not a valid name")
        out.append(DomainEntry(name, url, token))
    return out


def load_tokens_file(path: str | os.PathLike[str]) -> list[DomainEntry]:
    """Read ``{"domains": [{"name", "url", "token"}]}``; refuse a file others may read."""
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
        budgets); it stays on the server. Prefer tokens_file, so tokens stay out of
        config files others may read.""",
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
