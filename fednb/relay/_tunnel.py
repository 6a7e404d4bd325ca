"""The client's end of a relayed connection: a byte stream inside a WebSocket to the
relay, TLS 1.3 over it, and the check of the domain's pinned Ed25519 identity.

These are httpcore network streams, so httpx runs HTTP/1.1 over them unchanged.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpcore
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from fednb.errors import ChannelTampered, IdentityMismatch, InvalidInput
from fednb.relay._wire import check_name, weak_ed25519, ws_url

__all__ = ["ChannelTampered", "IdentityMismatch", "Pin", "PinnedBackend", "relay_url"]

_CHUNK = 1 << 18  # bytes per message: under the relay's 1 MiB cap
_KNOWN_LOCK = threading.Lock()


def relay_url(relay: str, domain: str) -> str:
    """Where a client reaches ``domain`` through ``relay`` (its ``/connect`` endpoint)."""
    return relay.rstrip("/") + f"/connect/{check_name(domain)}"


def _known_path() -> Path:
    return Path(os.environ.get("FEDNB_KNOWN_DOMAINS", "~/.config/fednb/known_domains.json")).expanduser()


class Pin:
    """The Ed25519 public key (hex) a domain's TLS certificate must carry.

    ``expected=None`` pins on first use: the key seen first is remembered under ``remember``
    (in ``~/.config/fednb/known_domains.json`` or ``$FEDNB_KNOWN_DOMAINS``) and required after.
    """

    def __init__(self, expected: str | None, label: str, remember: str | None = None) -> None:
        if expected is not None:
            try:
                if weak_ed25519(bytes.fromhex(expected)):
                    raise ValueError("a small-order key anyone can sign for")
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(expected))
            except ValueError:
                raise InvalidInput(f"identity={expected!r} is not an Ed25519 public key in hex (64 "
                                   "digits; the domain's owner reads it with `fednb domain peers`)") from None
        self.expected, self.label, self.remember = expected, label, remember

    @classmethod
    def for_relay(cls, relay: str, domain: str, identity: str | None) -> Pin:
        key = f"{domain}@{relay.rstrip('/')}"
        if identity is None:
            identity = _read_known().get(key)
        return cls(identity, f"domain {domain!r} through relay {relay}", key)

    def check(self, der: bytes | None) -> None:
        """Raise :class:`IdentityMismatch` unless the certificate ``der`` carries the pin."""
        got = _ed25519_of(der)
        if got is not None and weak_ed25519(bytes.fromhex(got)):
            raise IdentityMismatch(
                f"{self.label} answered with the identity {got}, a degenerate key anyone can sign "
                "for: the relay or the path is impersonating it; nothing was sent")
        if self.expected is None and got is not None and self.remember is not None:
            _remember(self.remember, got)
            warnings.warn(f"pinned {self.label} to identity {got} on first use: check it with the "
                          "domain's owner (`fednb domain peers` shows it)", stacklevel=2)
            self.expected = got
            return
        if got is None or self.expected is None or not hmac.compare_digest(got, self.expected):
            raise IdentityMismatch(
                f"{self.label} answered with identity {got or 'none (not an Ed25519 key)'}, not the "
                f"pinned {self.expected}: the relay or the path sent you to another party; nothing "
                "was sent. If the domain's owner confirms a new key, pass identity=<new key>")


def _ed25519_of(der: bytes | None) -> str | None:
    if not der:
        return None
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _read_known() -> dict[str, str]:
    try:
        return dict(json.loads(_known_path().read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _remember(key: str, identity: str) -> None:
    with _KNOWN_LOCK:
        known = _read_known()
        known[key] = identity
        path = _known_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=2, sort_keys=True))


class _WsStream(httpcore.NetworkStream):
    """A byte stream carried by binary WebSocket messages."""

    def __init__(self, ws: ClientConnection, pin: Pin) -> None:
        self._ws, self._pin, self._buf = ws, pin, b""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._buf:
            try:
                msg = self._ws.recv(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("no answer through the relay in time") from None
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code >= 4000:  # the relay's refusal, in words
                    raise httpcore.ConnectError(f"the relay says: {exc.rcvd.reason}") from None
                return b""
            self._buf = msg.encode() if isinstance(msg, str) else msg
        out, self._buf = self._buf[:max_bytes], self._buf[max_bytes:]
        return out

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            for i in range(0, len(buffer), _CHUNK):
                self._ws.send(buffer[i:i + _CHUNK])
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code >= 4000:
                raise httpcore.ConnectError(f"the relay says: {exc.rcvd.reason}") from None
            raise httpcore.WriteError("the relay closed the connection") from None

    def close(self) -> None:
        self._ws.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            tls = _TlsStream(self, ssl_context, server_hostname, timeout, self._pin.label)
            self._pin.check(tls.ssl_obj.getpeercert(True))
        except BaseException:
            self.close()
            raise
        return tls

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # a dead relay connection must not be reused
            return bool(self._buf) or self._ws.protocol.state is not State.OPEN
        return None


class _TlsStream(httpcore.NetworkStream):
    """TLS over another stream (a memory-BIO ``SSLObject``), as httpcore does TLS in TLS."""

    def __init__(self, raw: httpcore.NetworkStream, ctx: ssl.SSLContext, hostname: str | None,
                 timeout: float | None, label: str) -> None:
        self._raw, self._label = raw, label
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl_obj = ctx.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._io(self.ssl_obj.do_handshake, timeout)

    def _io(self, func: Callable[[], Any], timeout: float | None) -> Any:
        while True:
            try:
                ret = func()
            except ssl.SSLWantReadError:
                self._flush(timeout)
                data = self._raw.read(_CHUNK, timeout)
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
                continue
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
                raise httpcore.ReadError(f"the connection through the relay ended: {exc}") from None
            except ssl.SSLError as exc:
                raise ChannelTampered(
                    f"the end-to-end TLS channel to {self._label} failed its integrity check "
                    f"({exc.reason or exc}): something on the path (the relay?) altered the bytes; "
                    "nothing it changed was accepted") from None
            self._flush(timeout)
            return ret

    def _flush(self, timeout: float | None) -> None:
        out = self._out.read()
        if out:
            self._raw.write(out, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return bytes(self._io(functools.partial(self.ssl_obj.read, max_bytes), timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            n = int(self._io(functools.partial(self.ssl_obj.write, view), timeout))
            view = view[n:]

    def close(self) -> None:
        self._raw.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        raise NotImplementedError("TLS is already on")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self.ssl_obj
        return self._raw.get_extra_info(info)


class _PinnedDirect(httpcore.NetworkStream):
    """A direct TCP stream whose TLS must carry the pinned identity."""

    def __init__(self, raw: httpcore.NetworkStream, pin: Pin) -> None:
        self._raw, self._pin = raw, pin

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._raw.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._raw.write(buffer, timeout)

    def close(self) -> None:
        self._raw.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._raw.start_tls(ssl_context, server_hostname, timeout)
        try:
            self._pin.check(tls.get_extra_info("ssl_object").getpeercert(True))
        except IdentityMismatch:
            tls.close()
            raise
        return tls

    def get_extra_info(self, info: str) -> Any:
        return self._raw.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connections for httpcore that check ``pin``: through ``relay`` when given (the
    host httpcore asks for is ignored: the relay is told the domain's name), else direct.

    Parameters
    ----------
    relay_tls
        The SSL context for a ``https://`` relay (default: the system's CAs).
    """

    def __init__(self, pin: Pin, relay: str | None = None, relay_tls: ssl.SSLContext | None = None,
                 domain: str | None = None) -> None:
        self.pin, self.relay, self.relay_tls, self.domain = pin, relay, relay_tls, domain
        self._direct = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if self.relay is None:
            return _PinnedDirect(self._direct.connect_tcp(host, port, timeout, local_address,
                                                          socket_options), self.pin)
        domain = self.domain or host.removesuffix(".relay")
        url = ws_url(self.relay, f"/connect/{check_name(domain)}")
        kw: dict[str, Any] = {"ssl": self.relay_tls} if url.startswith("wss:") and self.relay_tls else {}
        try:
            # entered, not used in a with block: httpcore owns and closes the connection
            ws = connect(url, compression=None, max_size=1 << 20, open_timeout=timeout,
                         close_timeout=2, **kw).__enter__()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise httpcore.ConnectError(f"could not reach the relay {self.relay}: {exc}") from None
        return _WsStream(ws, self.pin)

    def sleep(self, seconds: float) -> None:
        self._direct.sleep(seconds)
