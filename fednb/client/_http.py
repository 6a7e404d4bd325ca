"""The HTTP transport: one httpx client per domain, errors turned back into fednb's.

A domain is reached directly (``https://host:port``) or through an untrusted relay
(``relay=..., domain=...``): then TLS 1.3 runs end to end inside a WebSocket to the
relay, and the client pins the domain's Ed25519 identity (the key its certificate
carries) before anything, the token included, is sent. See docs/deployment.md.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpcore
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
from fednb.relay import ChannelTampered, IdentityMismatch, Pin, PinnedBackend, relay_url

__all__ = ["ChannelTampered", "IdentityMismatch", "Transport", "is_loopback"]

BINARY = "application/octet-stream"
# GET and PUT are idempotent here (a run's id is chosen by the client), so a busy domain's 503
# is retried after these pauses; POSTs are not retried
_BUSY_BACKOFF_S = (0.1, 0.3, 1.0, 3.0)
# through a relay a lost connection (a relay restarting, a domain reconnecting) is retried
# for idempotent calls, and for filing a request (idempotent on its client-chosen id)
_LOST_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # about 30 s in all


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _pinned_context() -> ssl.SSLContext:
    # the pin on the identity replaces the CA check: the handshake's CertificateVerify
    # still proves the peer holds the certificate's key, which is then compared
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, backend: PinnedBackend) -> None:
        ctx = _pinned_context()
        super().__init__(verify=ctx)
        self._pool = httpcore.ConnectionPool(ssl_context=ctx, network_backend=backend,
                                             max_connections=100, max_keepalive_connections=20,
                                             keepalive_expiry=5.0)


class Transport:
    """Authenticated calls to one domain's API.

    Parameters
    ----------
    url
        The domain's base URL; None with ``relay``.
    relay, domain
        A relay's URL and the domain's name on it, instead of ``url``.
    identity
        The domain's Ed25519 public key (hex) to pin; through a relay without one, the key
        remembered from the first connection (``~/.config/fednb/known_domains.json``).
    """

    def __init__(self, url: str | None, token: str, *, insecure: bool = False, timeout: float = 60.0,
                 verify: bool | str = True, relay: str | None = None, domain: str | None = None,
                 identity: str | None = None) -> None:
        self.relayed = relay is not None
        if relay is not None:
            if domain is None or url is not None:
                raise InvalidInput("through a relay, give relay= and domain= (the domain's name "
                                   "on the relay), and no url")
            self.url = relay_url(relay, domain)
            pin = Pin.for_relay(relay, domain, identity)
            base = f"https://{domain}.relay"
            tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else None
            transport: httpx.BaseTransport = _PinnedTransport(PinnedBackend(pin, relay, tls, domain))
        else:
            if url is None:
                raise InvalidInput("give the domain's url, or relay= and domain=")
            self.url = base = url.rstrip("/")
            self._check_scheme(url, insecure, identity)
            if identity is not None:
                pin = Pin(identity, f"the domain at {self.url}")
                transport = _PinnedTransport(PinnedBackend(pin))
            else:
                # a CA bundle path becomes an SSL context (httpx deprecates verify=<str>)
                tls_v = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
                transport = httpx.HTTPTransport(verify=tls_v)
        self._http = httpx.Client(base_url=base + API_PREFIX, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})

    @staticmethod
    def _check_scheme(url: str, insecure: bool, identity: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"{url!r} is not an http(s) URL of a domain")
        if parts.scheme == "http" and identity is not None:
            raise InvalidInput(f"identity= pins a TLS key: use https:// for {url!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not insecure:
            raise InsecureSetting(
                f"refusing to send a token over plain HTTP to {parts.hostname}: use https://, "
                "or pass insecure=True if you accept that anyone on the path can read it")

    def _retryable(self, method: str, path: str) -> bool:
        return self.relayed and (method in ("GET", "PUT") or (method == "POST" and path == "/requests"))

    def call(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
             params: dict[str, Any] | None = None, timeout: float | None = None) -> httpx.Response:
        headers = {"Content-Type": BINARY} if content is not None else None
        pauses = _BUSY_BACKOFF_S if method in ("GET", "PUT") else ()
        lost: tuple[float, ...] = _LOST_BACKOFF_S if self._retryable(method, path) else ()
        attempt = lost_tries = 0
        while True:
            try:
                resp = self._http.request(
                    method, path, json=json, content=content, params=params, headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            except httpx.HTTPError as exc:
                if lost_tries >= len(lost):
                    raise ConnectionFailed(f"could not reach {self.url}: {type(exc).__name__}: "
                                           f"{exc}") from None
                time.sleep(lost[lost_tries])
                lost_tries += 1
                continue
            if resp.status_code < 400:
                return resp
            err = self._error(resp)
            if not isinstance(err, DomainBusy) or attempt == len(pauses):
                raise err
            time.sleep(pauses[attempt])
            attempt += 1

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
