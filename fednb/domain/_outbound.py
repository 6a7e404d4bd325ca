"""An outbound-only domain: its API on loopback under TLS keyed by its identity, bridged
to the clients a relay sends it.

The domain opens a control WebSocket to the relay (through the HTTP CONNECT proxy named
by ``HTTPS_PROXY``/``NO_PROXY``, as websockets reads them), proves its Ed25519 identity,
and, for each ``{"open": id}`` the relay sends, dials a data WebSocket back to the relay
and splices it with a TCP connection to its own loopback TLS server. Nothing listens
beyond loopback. The TLS certificate is self-signed by the identity key, which is what
clients pin: a relay that swaps domains or changes a byte breaks the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fednb.domain._server import Server
from fednb.errors import InvalidInput
from fednb.relay import check_name, registration_payload, ws_url

if TYPE_CHECKING:
    from fednb.domain._domain import Domain
    from fednb.secagg import Identity

__all__ = ["Outbound", "RelayedServer", "relay_name_of", "write_certificate"]

log = logging.getLogger("fednb.domain.outbound")
_CHUNK = 1 << 18  # bytes per data message (under the relay's 1 MiB cap)
# a relay that accepts the WebSocket but never answers must not hold the connector
_REGISTER_TIMEOUT_S = 30.0
_WS: dict[str, Any] = {"compression": None, "max_size": 1 << 20, "open_timeout": 10,
                       "ping_interval": 20}


def relay_name_of(domain_name: str) -> str:
    """The default name of a domain on a relay: ``"St Mary"`` -> ``"st-mary"``."""
    return check_name(re.sub(r"[^a-z0-9]+", "-", domain_name.lower()).strip("-")[:63])


def write_certificate(identity: Identity, name: str, folder: Path) -> tuple[str, str]:
    """Write a TLS certificate self-signed by the domain's Ed25519 identity key, and the key,
    to ``folder`` (0700; the key 0600); returns their paths.

    Clients pin the certificate's public key (the identity), not the certificate, so one
    made afresh at every start is as good as the last one.
    """
    cert, key = identity.tls_certificate(name, f"{name}.relay")
    folder.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return str(cert_path), str(key_path)


class Outbound:
    """The connector: a thread that keeps this domain registered on a relay.

    Parameters
    ----------
    relay
        The relay's URL (``https://relay.example`` or, on a trusted network, ``http://``).
    name
        This domain's name on the relay (a DNS label).
    identity
        The domain's Ed25519 identity: it signs the relay's challenge.
    port
        The loopback port of the domain's TLS server.
    backoff_s
        First and largest pause (seconds) between reconnections; doubled each failure.
    """

    def __init__(self, relay: str, name: str, identity: Identity, port: int, *,
                 backoff_s: tuple[float, float] = (0.25, 30.0)) -> None:
        ws_url(relay, "/")  # a bad URL fails here, not in the thread
        self.relay, self.name, self.identity, self.port = relay, check_name(name), identity, port
        self.backoff_s = backoff_s
        self.registered = threading.Event()
        self.last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fednb-outbound-{name}", daemon=True)

    def start(self) -> Outbound:
        self._thread.start()
        return self

    def wait_registered(self, timeout: float = 30.0) -> bool:
        """True once the relay holds this domain's name (False after ``timeout`` seconds)."""
        return self.registered.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()  # a stop before the thread made its task cancels it there
        loop, main = self._loop, self._main
        if loop is not None and main is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(main.cancel)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._main = loop.create_task(self._control_forever())
        if self._stopping.is_set():
            self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(self._main)
        loop.close()

    async def _control_forever(self) -> None:
        pause = self.backoff_s[0]
        bridges: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async with connect(ws_url(self.relay, f"/domain/{self.name}"), **_WS) as ws:
                        await self._register(ws)
                        pause = self.backoff_s[0]
                        async for msg in ws:
                            conn_id = _open_id(msg)
                            if conn_id is not None:
                                task = asyncio.create_task(self._bridge(conn_id))
                                bridges.add(task)
                                task.add_done_callback(bridges.discard)
                        self._lost(f"the relay closed the control channel ({ws.close_code} "
                                   f"{ws.close_reason})")
                except Exception as exc:
                    # the relay is untrusted: a malformed message or a proxy's refusal must
                    # not end the connector, only this connection
                    self._lost(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 (jitter spreads domains out)
                pause = min(pause * 2, self.backoff_s[1])
        finally:
            for task in bridges:
                task.cancel()
            await asyncio.gather(*bridges, return_exceptions=True)

    def _lost(self, why: str) -> None:
        if self.registered.is_set() or why != self.last_error:
            log.warning("relay %s: %s; reconnecting", self.relay, why)
        self.registered.clear()
        self.last_error = why

    async def _register(self, ws: ClientConnection) -> None:
        hello = json.loads(await asyncio.wait_for(ws.recv(), _REGISTER_TIMEOUT_S))
        challenge = hello.get("challenge") if isinstance(hello, dict) else None
        if not isinstance(challenge, str) or not re.fullmatch(r"[0-9a-f]{32}", challenge):
            raise ValueError("the relay sent no challenge to sign")
        signature = self.identity.sign(registration_payload(self.name, challenge))
        await ws.send(json.dumps({"identity": self.identity.public, "signature": signature}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), _REGISTER_TIMEOUT_S))
        if not isinstance(answer, dict) or answer.get("registered") != self.name:
            raise ValueError("the relay did not confirm the registration")
        self.registered.set()
        self.last_error = None
        log.info("registered as %r on relay %s", self.name, self.relay)

    async def _bridge(self, conn_id: str) -> None:
        try:
            async with connect(ws_url(self.relay, f"/accept/{conn_id}"), **_WS) as ws:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    await _splice(ws, reader, writer)
                finally:
                    writer.close()
        except (OSError, ConnectionClosed, InvalidHandshake, asyncio.TimeoutError) as exc:
            log.info("data connection %s… ended: %s", conn_id[:8], exc)


def _open_id(msg: str | bytes) -> str | None:
    """The connection id in the relay's ``{"open": id}``; None for anything else."""
    try:
        conn_id = json.loads(msg).get("open")
    except (ValueError, AttributeError):
        return None
    return conn_id if isinstance(conn_id, str) and re.fullmatch(r"[0-9a-f]{32}", conn_id) else None


async def _splice(ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def inbound() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in ws:
                if isinstance(msg, str):
                    return
                writer.write(msg)
                await writer.drain()

    async def outbound() -> None:
        while data := await reader.read(_CHUNK):
            await ws.send(data)

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RelayedServer(Server):
    """A domain server reachable only through a relay: ``url`` is its loopback address (for
    the owner on the same machine, pinning ``identity``); ``relay`` and ``relay_name`` are
    what scientists pass to ``fednb.connect``."""

    outbound: Outbound

    @classmethod
    def through(cls, dom: Domain, relay: str, name: str | None = None, *,
                background: bool = True) -> RelayedServer:
        """Serve ``dom`` on loopback under its identity's TLS and register it on ``relay``."""
        name = check_name(name) if name is not None else relay_name_of(dom.name)
        ws_url(relay, "/")
        cert, key = write_certificate(dom.identity, name, dom.home / "relay-tls")
        srv = cls.start(dom, "127.0.0.1", 0, certfile=cert, keyfile=key, background=background)
        assert isinstance(srv, RelayedServer)
        srv.outbound = Outbound(relay, name, dom.identity, srv.port).start()
        return srv

    @property
    def relay(self) -> str:
        return self.outbound.relay

    @property
    def relay_name(self) -> str:
        return self.outbound.name

    @property
    def identity(self) -> str:
        """The public key (hex) clients pin."""
        return self.outbound.identity.public

    def run_forever(self) -> None:
        try:
            super().run_forever()
        finally:
            self.outbound.stop()

    def stop(self) -> None:
        self.outbound.stop()
        super().stop()

    def __repr__(self) -> str:
        return f"RelayedServer(relay={self.relay!r}, name={self.relay_name!r}, domain={self.domain.name!r})"


def check_relay_host(host: str) -> None:
    """A relayed domain listens on loopback only: refuse any other host."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInput(f"a domain served through a relay listens on loopback only, not {host!r}: "
                           "drop --host (nothing outside this machine needs to reach it)")
