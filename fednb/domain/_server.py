"""Run a domain's API with uvicorn: in a background thread (tests, notebooks, the demo)
or in the foreground (``fednb domain serve``)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from fednb.domain._app import create_app

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["Server"]


def _config(dom: Domain, certfile: str | None, keyfile: str | None) -> uvicorn.Config:
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    return uvicorn.Config(create_app(dom), log_level="warning", access_log=False,
                          ssl_certfile=certfile, ssl_keyfile=keyfile, timeout_keep_alive=30,
                          limit_concurrency=512, timeout_graceful_shutdown=3)


class Server:
    """A running domain server; ``url`` is where clients connect, ``stop()`` ends it."""

    def __init__(self, dom: Domain, server: uvicorn.Server, sock: socket.socket, tls: bool) -> None:
        self.domain, self._server, self._sock = dom, server, sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{port}"
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, dom: Domain, host: str, port: int, *, certfile: str | None = None,
              keyfile: str | None = None, background: bool = True) -> Server:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it Nagle and delayed ACKs add ~40 ms per call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
        srv = cls(dom, uvicorn.Server(_config(dom, certfile, keyfile)), sock, certfile is not None)
        if background:
            srv._thread = threading.Thread(target=srv._server.run, kwargs={"sockets": [sock]},
                                           name=f"fednb-domain-{port}", daemon=True)
            srv._thread.start()
            deadline = time.monotonic() + 30
            while not srv._server.started:
                if not srv._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the domain server failed to start")
                time.sleep(0.005)
        return srv

    def run_forever(self) -> None:
        """Serve in the calling thread until interrupted: Ctrl-C, or SIGTERM (``systemctl stop``).

        uvicorn shuts down on either and then raises the signal again with the handler it
        found. SIGTERM's default would end the process there, before the domain is closed (its
        workers stopped and their cgroups removed), so in the main thread SIGTERM is handled
        as SIGINT is, by a ``KeyboardInterrupt``, while this serves."""
        term = threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        if term:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            self._server.run(sockets=[self._sock])
        finally:
            try:
                self.domain.close()
            finally:
                if term:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def stop(self) -> None:
        """Stop serving and close the domain (workers, store)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._sock.close()
        self.domain.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Server(url={self.url!r}, domain={self.domain.name!r})"
