"""The HTTP transport: one httpx client per domain, errors turned back into fednb's."""

from __future__ import annotations

import ipaddress
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from fednb.errors import (
    ConnectionFailed,
    DomainBusy,
    FednbError,
    InsecureSetting,
    InvalidInput,
    from_wire,
)
from fednb.protocol import API_PREFIX

__all__ = ["Transport", "is_loopback"]

BINARY = "application/octet-stream"
# GET and PUT are idempotent here (a run's id is chosen by the client), so a busy domain's 503
# is retried after these pauses; POSTs are not retried
_BUSY_BACKOFF_S = (0.1, 0.3, 1.0, 3.0)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Transport:
    """Authenticated calls to one domain's API."""

    def __init__(self, url: str, token: str, *, insecure: bool = False, timeout: float = 60.0,
                 verify: bool | str = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"{url!r} is not an http(s) URL of a domain")
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not insecure:
            raise InsecureSetting(
                f"refusing to send a token over plain HTTP to {parts.hostname}: use https://, "
                "or pass insecure=True if you accept that anyone on the path can read it")
        self.url = url.rstrip("/")
        # a CA bundle path becomes an SSL context (httpx deprecates verify=<str>)
        tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self._http = httpx.Client(base_url=self.url + API_PREFIX, timeout=timeout, verify=tls,
                                  headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
             params: dict[str, Any] | None = None, timeout: float | None = None) -> httpx.Response:
        headers = {"Content-Type": BINARY} if content is not None else None
        pauses = _BUSY_BACKOFF_S if method in ("GET", "PUT") else ()
        for attempt in range(len(pauses) + 1):
            try:
                resp = self._http.request(
                    method, path, json=json, content=content, params=params, headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            except httpx.HTTPError as exc:
                raise ConnectionFailed(f"could not reach {self.url}: {type(exc).__name__}: {exc}") from None
            if resp.status_code < 400:
                return resp
            err = self._error(resp)
            if not isinstance(err, DomainBusy) or attempt == len(pauses):
                raise err
            time.sleep(pauses[attempt])
        raise AssertionError("unreachable")

    @staticmethod
    def _error(resp: httpx.Response) -> FednbError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        return from_wire(body, resp.status_code)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.call(method, path, **kw).json()

    def close(self) -> None:
        self._http.close()
