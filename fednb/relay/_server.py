"""Run a relay: in a background thread (tests, benchmarks) or in the foreground
(``fednb relay serve``)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import threading
from typing import Any

from websockets.asyncio.server import Server, serve

from fednb.relay._relay import Relay

__all__ = ["RelayServer"]

# TLS records are at most 16 KiB; a client's write is split into messages of this size,
# so the default 1 MiB cap is never reached by an honest peer
MAX_MESSAGE = 1 << 20


class RelayServer:
    """A listening relay; ``url`` is what domains and clients are given, ``stop()`` ends it.

    Examples
    --------
    >>> srv = RelayServer.start("127.0.0.1", 0)   # doctest: +SKIP
    >>> srv.url                                    # doctest: +SKIP
    'http://127.0.0.1:41234'
    """

    def __init__(self, relay: Relay, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.relay, self.host, self.port, self._tls = relay, host, port, tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{shown}:{self.port}"

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, *, relay: Relay | None = None,
              certfile: str | None = None, keyfile: str | None = None,
              background: bool = True) -> RelayServer:
        """Listen on ``host:port`` (0: any free port), with TLS when ``certfile`` is given.

        With ``background=True`` it serves from a daemon thread and returns once it
        listens; otherwise call :meth:`run_forever`.
        """
        tls = None
        if certfile is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(certfile, keyfile)
        srv = cls(relay or Relay(), host, port, tls)
        if background:
            srv._thread = threading.Thread(target=srv._run, name=f"fednb-relay-{port}", daemon=True)
            srv._thread.start()
            srv._ready.wait(30)
            if srv._error is not None or srv._server is None:
                raise RuntimeError(f"the relay failed to start: {srv._error}")
        return srv

    async def _listen(self) -> Server:
        kw: dict[str, Any] = {"compression": None, "max_size": MAX_MESSAGE, "ping_interval": 20,
                              "process_request": self.relay.process_request}
        server: Server = await serve(self.relay.handle, self.host, self.port, ssl=self._tls, **kw)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._server.wait_closed())
        finally:
            loop.close()

    def run_forever(self) -> None:
        """Serve in the calling thread until Ctrl-C or SIGTERM."""
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._server = await self._listen()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, stop.set)
            print(f"fednb relay listening on {self.url}", flush=True)
            await stop.wait()
            self._server.close()
            await self._server.wait_closed()

        asyncio.run(main())

    def stop(self) -> None:
        """Close every connection and stop listening (what a crash looks like to peers)."""
        if self._loop is not None and self._server is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def __enter__(self) -> RelayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RelayServer(url={self.url!r})"
