"""The relay: domains dial out to it and keep a control WebSocket open; a client's
WebSocket at ``/connect/<domain>`` makes the relay ask that domain for a data connection
(``/accept/<id>``), and the relay then copies messages between the two.

The bytes it copies are the records of a TLS 1.3 session between the client and the
domain, which the relay never terminates: it learns who talks to whom, when and how much,
and nothing else. It keeps no state that matters: after a restart domains register again
and clients reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from fednb.relay._limits import Limits, Metrics, RateLimiter
from fednb.relay._wire import NAME_RE, registration_payload, weak_ed25519

__all__ = ["Direction", "Relay"]

log = logging.getLogger("fednb.relay")
Direction = Literal["to_domain", "to_client"]
Scope = Literal["domain", "client"]
# close codes (4000-4999 are the application's): the client's error names the reason
_GONE, _REFUSED, _BUSY = 4404, 4403, 1013


@dataclass
class _Domain:
    name: str
    identity: str
    control: ServerConnection
    open: int = 0


@dataclass
class _Conn:
    id: str
    domain: _Domain
    client: str
    accepted: asyncio.Future[ServerConnection] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    buckets: list[tuple[Scope, str]] = field(default_factory=list)


class Relay:
    """The routing logic of a relay: one instance per listening server.

    Parameters
    ----------
    limits
        Connections and byte rates per domain and per client address.
    allow
        ``{domain name: Ed25519 public key (hex)}``: only these domains may register, each
        with its key. None (default): any domain may take a free name, proving its key;
        the clients' pins, not the relay, decide whom they trust.
    metrics_token
        The bearer token ``/metrics`` asks for. None (default): ``/metrics`` answers
        clients on the relay's own machine (loopback) only.

    Subclasses may override :meth:`route` and :meth:`forward` (the tests' dishonest relays).
    """

    def __init__(self, limits: Limits | None = None, allow: Mapping[str, str] | None = None,
                 metrics_token: str | None = None) -> None:
        self.limits = limits or Limits()
        self.metrics_token = metrics_token
        self.allow = dict(allow) if allow is not None else None
        self.metrics = Metrics()
        self._domains: dict[str, _Domain] = {}
        self._pending: dict[str, _Conn] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._clients: collections.Counter[str] = collections.Counter()
        # buckets by (scope, domain name or client address): they outlive a connection
        # while in debt, so closing and reopening one does not refill them
        self._buckets: dict[tuple[Scope, str], RateLimiter] = {}
        self._bucket_users: collections.Counter[tuple[Scope, str]] = collections.Counter()
        self._clock: Callable[[], float] = time.monotonic  # the buckets' clock (tests set theirs)

    # -- hooks ----------------------------------------------------------------------
    def route(self, name: str) -> str:
        """The domain a client asking for ``name`` is sent to (an honest relay: ``name``)."""
        return name

    def forward(self, data: bytes, conn_id: str, direction: Direction) -> bytes:
        """The bytes passed on for ``data`` (an honest relay: ``data``)."""
        return data

    # -- HTTP ----------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer ``/health`` and ``/metrics`` over plain HTTP; let WebSockets through."""
        if request.path == "/health":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if request.path == "/metrics":
            if not self._may_read_metrics(conn, request):
                return conn.respond(HTTPStatus.UNAUTHORIZED, "/metrics needs the relay's metrics "
                                    "token (Authorization: Bearer ...) or a client on loopback\n")
            return conn.respond(HTTPStatus.OK, self.metrics.render())
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    def _may_read_metrics(self, conn: ServerConnection, request: Request) -> bool:
        if self.metrics_token is None:
            host = str(conn.remote_address[0]) if conn.remote_address else ""
            with contextlib.suppress(ValueError):
                return ipaddress.ip_address(host).is_loopback
            return False
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.metrics_token.encode())

    async def handle(self, conn: ServerConnection) -> None:
        """Route one WebSocket by its path."""
        assert conn.request is not None
        kind, _, arg = conn.request.path.lstrip("/").partition("/")
        if kind == "domain" and NAME_RE.match(arg):
            await self._control(conn, arg)
        elif kind == "accept":
            await self._accept(conn, arg)
        elif kind == "connect" and NAME_RE.match(arg):
            await self._connect(conn, arg)
        else:
            await conn.close(_GONE, "unknown path")

    # -- domains ---------------------------------------------------------------------
    async def _control(self, conn: ServerConnection, name: str) -> None:
        ident = await self._register(conn, name)
        if ident is None:
            return
        dom = _Domain(name, ident, conn)
        old = self._domains.get(name)
        self._domains[name] = dom
        self.metrics.domains = len(self._domains)
        if old is not None:  # the same key reconnecting: its old channel is stale
            # closed aside: a half-open old channel would hold the new one up for the
            # whole closing handshake's timeout
            closing = asyncio.ensure_future(old.control.close(1000, "replaced by a newer connection"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        await conn.send(json.dumps({"registered": name}))
        log.info("domain %s registered (identity %s…)", name, ident[:16])
        try:
            async for _ in conn:  # domains send nothing after registering; pings keep it alive
                pass
        except ConnectionClosed:
            pass
        finally:
            if self._domains.get(name) is dom:
                del self._domains[name]
                self.metrics.domains = len(self._domains)
            log.info("domain %s left", name)

    async def _register(self, conn: ServerConnection, name: str) -> str | None:
        challenge = secrets.token_hex(16)
        await conn.send(json.dumps({"challenge": challenge}))
        try:
            hello = json.loads(await asyncio.wait_for(conn.recv(), self.limits.open_timeout_s))
            ident, sig = str(hello["identity"]), bytes.fromhex(str(hello["signature"]))
            if weak_ed25519(bytes.fromhex(ident)):  # a key anyone can sign for proves nothing
                raise ValueError("a small-order Ed25519 key")
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(ident)).verify(
                sig, registration_payload(name, challenge))
        except (ValueError, KeyError, TypeError, InvalidSignature, asyncio.TimeoutError, ConnectionClosed):
            self.metrics.refused_total["bad_registration"] += 1
            await conn.close(_REFUSED, "registration needs the domain's signature of the challenge")
            return None
        wanted = self.allow.get(name) if self.allow is not None else None
        held = self._domains.get(name)
        if (self.allow is not None and wanted != ident) or (held is not None and held.identity != ident):
            self.metrics.refused_total["name_taken"] += 1
            await conn.close(_REFUSED, f"the name {name!r} belongs to another identity on this relay")
            return None
        return ident

    async def _accept(self, conn: ServerConnection, conn_id: str) -> None:
        pending = self._pending.pop(conn_id, None)
        if pending is None or pending.accepted.done():
            await conn.close(_GONE, "no client waits for this connection")
            return
        pending.accepted.set_result(conn)
        await conn.wait_closed()  # the client's task splices and closes it

    # -- clients ---------------------------------------------------------------------
    async def _connect(self, client: ServerConnection, asked: str) -> None:
        addr = str(client.remote_address[0]) if client.remote_address else "?"
        dom = self._domains.get(self.route(asked))
        refusal = self._refusal(dom, addr, asked)
        if refusal is not None:
            code, reason, why = refusal
            self.metrics.refused_total[why] += 1
            await client.close(code, reason)
            return
        assert dom is not None
        conn = _Conn(secrets.token_hex(16), dom, addr)
        self._pending[conn.id] = conn
        dom.open += 1
        self._clients[addr] += 1
        self.metrics.open_connections += 1
        self.metrics.connections_total += 1
        try:
            await dom.control.send(json.dumps({"open": conn.id}))
            upstream = await asyncio.wait_for(conn.accepted, self.limits.open_timeout_s)
        except (asyncio.TimeoutError, ConnectionClosed):  # not TimeoutError before Python 3.11
            self.metrics.refused_total["domain_unreachable"] += 1
            await client.close(_GONE, f"domain {asked!r} did not answer through this relay")
            self._release(conn)
            return
        try:
            await self._splice(client, upstream, conn)
        finally:
            self._release(conn)

    def _refusal(self, dom: _Domain | None, addr: str, asked: str) -> tuple[int, str, str] | None:
        if dom is None:
            return _GONE, f"no domain called {asked!r} is connected to this relay", "no_domain"
        if dom.open >= self.limits.domain_connections:
            return _BUSY, f"domain {asked!r} has too many open connections", "domain_limit"
        if self._clients[addr] >= self.limits.client_connections:
            return _BUSY, "this client address has too many open connections", "client_limit"
        return None

    def _release(self, conn: _Conn) -> None:
        self._pending.pop(conn.id, None)
        conn.domain.open -= 1
        self._clients[conn.client] -= 1
        if self._clients[conn.client] <= 0:
            del self._clients[conn.client]
        self.metrics.open_connections -= 1
        for key in conn.buckets:
            self._bucket_users[key] -= 1
            if self._bucket_users[key] <= 0:
                del self._bucket_users[key]
        # an unused full bucket is what a new one would be: forgetting it forgives nothing
        for key in [k for k, b in self._buckets.items() if k not in self._bucket_users and b.idle()]:
            del self._buckets[key]

    def _rates(self, conn: _Conn) -> list[tuple[Scope, RateLimiter]]:
        """The buckets a connection's bytes are taken from: its domain's and its client's."""
        out: list[tuple[Scope, RateLimiter]] = []
        scopes: tuple[tuple[Scope, str, float | None], ...] = (
            ("domain", conn.domain.name, self.limits.domain_bytes_per_s),
            ("client", conn.client, self.limits.client_bytes_per_s))
        for scope, key, rate in scopes:
            if rate is not None:
                bucket = self._buckets.get((scope, key))
                if bucket is None:
                    bucket = self._buckets[scope, key] = RateLimiter(rate, self._clock)
                self._bucket_users[scope, key] += 1
                conn.buckets.append((scope, key))
                out.append((scope, bucket))
        return out

    async def _splice(self, client: ServerConnection, upstream: ServerConnection, conn: _Conn) -> None:
        rates = self._rates(conn)
        pumps = [asyncio.ensure_future(self._pump(client, upstream, conn.id, "to_domain", rates)),
                 asyncio.ensure_future(self._pump(upstream, client, conn.id, "to_client", rates))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await asyncio.gather(client.close(), upstream.close(), return_exceptions=True)

    async def _pump(self, src: ServerConnection, dst: ServerConnection, conn_id: str,
                    direction: Direction, rates: list[tuple[Scope, RateLimiter]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in src:
                if isinstance(msg, str):  # a byte stream carries no text frames
                    return
                data = self.forward(msg, conn_id, direction)
                for scope, bucket in rates:
                    self.metrics.throttled_seconds_total[scope] += await bucket.take(len(data))
                self.metrics.bytes_total[direction] += len(data)
                await dst.send(data)
