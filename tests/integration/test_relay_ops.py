"""Operating a relay: pinning a domain's identity on first use, byte-rate limits per
domain and per client that hold, and the counters ``/metrics`` exports."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import fednb
from fednb.domain import Domain, Server
from fednb.domain._outbound import Outbound
from fednb.errors import InvalidInput
from fednb.relay import IdentityMismatch, Limits, Pin, Relay, RelayServer
from fednb.relay._limits import RateLimiter
from fednb.relay._relay import _Conn, _Domain
from tests.conftest import BC_BOUNDS, breast_cancer_dataset

RATE = 48 * 1024  # bytes per second: the breast cancer mock (~150 kB) needs ~2 s of waiting
TOKEN = "metrics-token-for-the-tests"
DEGENERATE = "01" + "00" * 31  # the Ed25519 encoding of the identity point: order 1


class GarbledRelay(Relay):
    """What an untrusted relay may send a domain's connector: junk instead of a challenge,
    then junk among its ``open`` messages."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0
        self.accepted = threading.Event()

    async def handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        kind, _, name = conn.request.path.lstrip("/").partition("/")
        if kind == "accept":
            self.accepted.set()
            return
        self.tries += 1
        if self.tries == 1:
            await conn.send("[]")  # no challenge at all
            return
        await conn.send(json.dumps({"challenge": "ab" * 16}))
        await conn.recv()
        await conn.send(json.dumps({"registered": name}))
        for junk in ("[1]", '{"open": 5}', '"open"', b"\xff", '{"open": "../x"}'):
            await conn.send(junk)
        await conn.send(json.dumps({"open": "cd" * 16}))
        await conn.wait_closed()


@dataclass
class Site:
    dom: Domain
    server: Server
    owner: str


@dataclass
class World:
    relay: RelayServer  # honest, unlimited: the domains' own registrations
    alpha: Site
    beta: Site

    def outbound(self, relay: RelayServer, name: str, site: Site) -> Outbound:
        """Register ``site`` on ``relay`` as ``name`` too (its loopback server, its key)."""
        ob = Outbound(relay.url, name, site.dom.identity, site.server.port).start()
        assert ob.wait_registered(30), ob.last_error
        return ob


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("relay-ops")
    relay = RelayServer.start("127.0.0.1", 0)
    sites = []
    for name in ("alpha", "beta"):
        dom = Domain.create(base / name, name=name)
        owner = dom.add_user("owner", role="owner")
        dom.add_dataset("bc", breast_cancer_dataset(), bounds=BC_BOUNDS)
        sites.append(Site(dom, dom.serve(relay=relay.url), owner))
    w = World(relay, *sites)
    try:
        for s in sites:
            assert s.server.outbound.wait_registered(30)  # type: ignore[attr-defined]
        yield w
    finally:
        for s in sites:
            s.server.stop()
        relay.stop()


def metrics(relay: RelayServer, token: str | None = None) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(relay.url + "/metrics", headers=headers)
    resp.raise_for_status()
    return {k: float(v) for k, v in re.findall(r"^(\S+) (\S+)$", resp.text, re.M) if k != "#"}


def wait_for(pred: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_first_connection_pins_and_a_later_key_is_refused(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    known = tmp_path / "known_domains.json"
    monkeypatch.setenv("FEDNB_KNOWN_DOMAINS", str(known))
    a, b = world.alpha, world.beta
    first = world.outbound(world.relay, "site", a)
    try:
        with pytest.warns(UserWarning, match=f"pinned .*'site'.* {a.dom.identity.public} on first use"):
            assert fednb.connect(relay=world.relay.url, domain="site", token=a.owner).me.role == "owner"
        assert json.loads(known.read_text()) == {f"site@{world.relay.url}": a.dom.identity.public}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pinned now: no second warning
            fednb.connect(relay=world.relay.url, domain="site", token=a.owner)
    finally:
        first.stop()
    wait_for(lambda: metrics(world.relay)["fednb_relay_domains"] == 2)  # alpha and beta
    second = world.outbound(world.relay, "site", b)  # another key takes the freed name
    try:
        with pytest.raises(IdentityMismatch) as err:
            fednb.connect(relay=world.relay.url, domain="site", token=a.owner)
        assert a.dom.identity.public in str(err.value) and b.dom.identity.public in str(err.value)
        assert json.loads(known.read_text()) == {f"site@{world.relay.url}": a.dom.identity.public}
        # the owner confirms the new key out of band: the scientist passes it
        c = fednb.connect(relay=world.relay.url, domain="site", token=b.owner,
                          identity=b.dom.identity.public)
        assert c.me.role == "owner"
    finally:
        second.stop()


def test_a_key_anyone_can_sign_for_is_never_an_identity(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(DEGENERATE))
    key.verify(bytes.fromhex("01" + "00" * 63), b"any message at all")  # OpenSSL accepts it
    with pytest.raises(InvalidInput, match="not an Ed25519 public key"):
        Pin(DEGENERATE, "domain 'site'")
    # a relay presenting a certificate for that key (signed by any key of its own)
    issuer = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key)
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(issuer, None))
    monkeypatch.setenv("FEDNB_KNOWN_DOMAINS", str(tmp_path / "known.json"))
    pin = Pin.for_relay("http://relay.example", "site", None)
    with pytest.raises(IdentityMismatch, match="degenerate key"):
        pin.check(cert.public_bytes(serialization.Encoding.DER))
    assert not (tmp_path / "known.json").exists() and pin.expected is None


def test_a_relay_sending_junk_does_not_stop_the_domains_connector(world: World) -> None:
    garbled = RelayServer.start(relay=GarbledRelay())
    a = world.alpha
    ob = Outbound(garbled.url, "alpha", a.dom.identity, a.server.port, backoff_s=(0.05, 0.2)).start()
    try:
        assert ob.wait_registered(30), ob.last_error  # it reconnected after the junk challenge
        assert isinstance(garbled.relay, GarbledRelay) and garbled.relay.tries >= 2
        assert garbled.relay.accepted.wait(30)  # and still dials the one valid "open"
    finally:
        ob.stop()
        garbled.stop()


def test_the_token_bucket_computes_the_wait_for_each_chunk() -> None:
    now = [100.0]
    bucket = RateLimiter(1000.0, clock=lambda: now[0])
    assert bucket.debit(600) == 0.0  # a full bucket holds one second's bytes
    assert bucket.debit(900) == pytest.approx(0.5)  # 400 left: 500 bytes of debt
    assert not bucket.idle()
    now[0] += 0.5  # the wait the relay slept
    assert bucket.debit(0) == 0.0 and not bucket.idle()
    now[0] += 10.0  # a long pause refills one second's worth, no more
    assert bucket.idle()
    assert bucket.debit(3000) == pytest.approx(2.0)
    now[0] += 2.0
    assert asyncio.run(bucket.take(10)) == pytest.approx(0.01)  # take waits what debit computed


def test_one_bucket_per_client_shared_and_kept_while_in_use_or_in_debt() -> None:
    now = [0.0]
    relay = Relay(limits=Limits(client_bytes_per_s=1000.0))
    relay._clock = lambda: now[0]
    key = ("client", "192.0.2.7")

    async def scenario() -> None:
        dom = _Domain("site", "ab" * 32, cast(ServerConnection, None))
        first, second, third = (_Conn(i, dom, "192.0.2.7") for i in ("1", "2", "3"))
        for conn in (first, second, third):
            dom.open += 1
            relay._clients[conn.client] += 1
        ((_, a),), ((_, b),) = relay._rates(first), relay._rates(second)
        assert a is b  # two connections of one address draw on one bucket
        assert a.debit(3000) == pytest.approx(2.0)
        now[0] += 10.0  # full again, but still in use: a new connection must not get a new one
        relay._release(first)
        assert relay._buckets[key] is a
        a.debit(3000)
        relay._release(second)  # unused now, but in debt: reconnecting must not refill it
        assert relay._buckets[key] is a
        ((_, c),) = relay._rates(third)
        assert c is a and c.debit(0) == pytest.approx(2.0)
        now[0] += 10.0
        relay._release(third)  # unused and full: forgotten
        assert key not in relay._buckets

    asyncio.run(scenario())


@pytest.mark.parametrize("scope", ["domain", "client"])
def test_a_byte_rate_limit_holds_the_traffic_back(world: World, scope: str) -> None:
    limits = Limits(domain_bytes_per_s=RATE) if scope == "domain" else Limits(client_bytes_per_s=RATE)
    limited = RelayServer.start(relay=Relay(limits=limits))
    ob = world.outbound(limited, "alpha", world.alpha)
    try:
        start = time.monotonic()
        c = fednb.connect(relay=limited.url, domain="alpha", token=world.alpha.owner,
                          identity=world.alpha.dom.identity.public)
        assert c.datasets["bc"].mock.sizes["patient"] == 569
        elapsed = time.monotonic() - start
        m = metrics(limited)
        moved = m['fednb_relay_bytes_total{direction="to_domain"}'] + \
            m['fednb_relay_bytes_total{direction="to_client"}']
        waited = m[f'fednb_relay_throttled_seconds_total{{scope="{scope}"}}']
        other = "client" if scope == "domain" else "domain"
        assert moved > 3 * RATE
        # the bucket held one second's worth and let RATE bytes a second through after it
        assert waited > 0 and m[f'fednb_relay_throttled_seconds_total{{scope="{other}"}}'] == 0
        assert moved <= RATE * (1 + elapsed)
        c.close()
    finally:
        ob.stop()
        limited.stop()


def test_metrics_count_domains_connections_bytes_and_refusals(world: World) -> None:
    relay = RelayServer.start(relay=Relay(metrics_token=TOKEN))
    ws = relay.url.replace("http://", "ws://")
    try:
        assert httpx.get(relay.url + "/metrics").status_code == 401  # a token is set: even loopback
        assert httpx.get(relay.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(relay.url + "/health").text == "ok\n"
        m = metrics(relay, TOKEN)
        assert m["fednb_relay_domains"] == 0 and m["fednb_relay_connections_total"] == 0
        ob = world.outbound(relay, "alpha", world.alpha)
        c = fednb.connect(relay=relay.url, domain="alpha", token=world.alpha.owner,
                          identity=world.alpha.dom.identity.public)
        m = metrics(relay, TOKEN)
        assert m["fednb_relay_domains"] == 1
        assert m["fednb_relay_connections_total"] == 1 and m["fednb_relay_open_connections"] == 1
        sent = m['fednb_relay_bytes_total{direction="to_client"}']
        assert sent > 0 and m['fednb_relay_bytes_total{direction="to_domain"}'] > 0
        c.datasets["bc"].mock  # noqa: B018 (fetching it is the point)
        assert metrics(relay, TOKEN)['fednb_relay_bytes_total{direction="to_client"}'] > sent + 100_000
        c.close()
        wait_for(lambda: metrics(relay, TOKEN)["fednb_relay_open_connections"] == 0)
        with ws_connect(ws + "/connect/nobody") as conn, pytest.raises(ConnectionClosed):
            conn.recv(10)
        with ws_connect(ws + "/domain/squatter") as conn:
            conn.recv(10)  # the challenge
            # the identity point's key: R = identity, S = 0 "signs" every challenge for it
            conn.send(json.dumps({"identity": DEGENERATE, "signature": "01" + "00" * 63}))
            with pytest.raises(ConnectionClosed) as refused:
                conn.recv(10)
            assert refused.value.rcvd is not None and refused.value.rcvd.code == 4403
        ob.stop()
        wait_for(lambda: metrics(relay, TOKEN)["fednb_relay_domains"] == 0)
        m = metrics(relay, TOKEN)
        assert m['fednb_relay_refused_total{reason="no_domain"}'] == 1
        assert m['fednb_relay_refused_total{reason="bad_registration"}'] == 1
        assert m["fednb_relay_connections_total"] == 1
    finally:
        relay.stop()
