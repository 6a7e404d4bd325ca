"""Domains behind a relay they dial out to: the README's round trip, a DP query and a
secure three-domain Federation through it, and a relay that misbehaves (it records
everything, flips a byte, swaps two domains, dies mid-round)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import fednb
from fednb.domain import Domain, Server
from fednb.domain._store import ChargeRow
from fednb.relay import ChannelTampered, IdentityMismatch, Limits, Relay, RelayServer
from fednb.relay._relay import Direction
from tests.adversarial.conftest import require_sandbox
from tests.integration.test_federation import PARAMS, W0, accuracy, split, train


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):
    return np.asarray(data.x.values[:, col].mean() * 1.0)


class DishonestRelay(Relay):
    """A relay that records every byte it forwards, and can flip one or swap domains."""

    def __init__(self, capture: bytearray, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.capture = capture
        self.tamper: Direction | None = None
        self.swap: dict[str, str] = {}

    def route(self, name: str) -> str:
        return self.swap.get(name, name)

    def forward(self, data: bytes, conn_id: str, direction: Direction) -> bytes:
        self.capture += data
        if self.tamper == direction and len(data) > 40:
            self.tamper = None
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x01
            return bytes(flipped)
        return data


@dataclass
class Site:
    dom: Domain
    server: Server
    owner: str
    scientist: str


@dataclass
class World:
    relay: RelayServer
    sites: dict[str, Site]
    capture: bytearray = field(default_factory=bytearray)
    known: list[bytes] = field(default_factory=list)  # values the relay must never see

    @property
    def dishonest(self) -> DishonestRelay:
        assert isinstance(self.relay.relay, DishonestRelay)
        return self.relay.relay

    def client(self, name: str, token: str, **kw: object) -> fednb.DomainClient:
        ident = self.sites[name].dom.identity.public
        return fednb.connect(relay=self.relay.url, domain=name, identity=ident, token=token, **kw)  # type: ignore[arg-type]

    def restart_relay(self) -> None:
        port = self.relay.port
        self.relay.stop()
        self.relay = RelayServer.start("127.0.0.1", port, relay=DishonestRelay(self.capture))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_sandbox()
    capture = bytearray()
    relay = RelayServer.start("127.0.0.1", 0, relay=DishonestRelay(capture))
    parts, _, _ = split()
    sites: dict[str, Site] = {}
    base = tmp_path_factory.mktemp("relay")
    for name, data in parts.items():
        dom = Domain.create(base / name, name=name)
        owner, sci = dom.add_user("owner", role="owner"), dom.add_user("alice", epsilon=1e12)
        dom.policy.update(min_noise_multiplier=0.0, dataset_epsilon_cap=None, dp_slot_s=1.0,
                          allow_no_dp=["alice"])
        dom.add_dataset("bc", data, bounds={"x": (-20.0, 20.0), "y": (0.0, 1.0)})
        sites[name] = Site(dom, dom.serve(relay=relay.url), owner, sci)
    for name, s in sites.items():
        for other, o in sites.items():
            if other != name:
                s.dom.peers.trust(other, o.dom.identity.public)
    w = World(relay, sites, capture)
    w.known += [t.encode() for s in sites.values() for t in (s.owner, s.scientist)]
    for s in sites.values():
        assert s.server.outbound.wait_registered(30)  # type: ignore[attr-defined]
    yield w
    for s in sites.values():
        s.server.stop()
    w.relay.stop()


def approve_all(w: World, release: str = "auto") -> None:
    for name, s in w.sites.items():
        for r in w.client(name, s.owner).requests.pending():
            r.approve(release=release)


def test_the_domain_listens_on_loopback_only_under_its_identity(world: World) -> None:
    s = world.sites["h0"]
    assert s.server.host == "127.0.0.1"
    # the owner on the hospital's machine pins the same identity on the loopback address
    local = fednb.connect(s.server.url, token=s.owner, identity=s.dom.identity.public)
    assert local.me.role == "owner"


def test_the_readme_round_trip_through_the_relay(world: World) -> None:
    s = world.sites["h0"]
    alice = world.client("h0", s.scientist)
    on_mock = column_mean.run_on_mock(alice, "bc", col=3)
    req = column_mean.request(alice, "bc", runs=1)
    approve_all(world, release="manual")
    run = req.run(col=3)
    assert run.wait(120).release_state == "held"
    owner = world.client("h0", s.owner)
    (held,) = owner.results.held()
    held.release()
    got = float(run.result(timeout=30).weights["result"])
    private = float(s.dom.private("bc").x.values[:, 3].mean())
    assert got == pytest.approx(private) and got != pytest.approx(float(on_mock.weights["result"]))
    world.known += [repr(got).encode(), np.float64(got).tobytes(), b"data.x.values[:, col].mean()"]


def test_a_dp_query_through_the_relay(world: World) -> None:
    s = world.sites["h1"]
    sci = world.client("h1", s.scientist)
    q = fednb.Query(fednb.Query.count(), fednb.Query.mean("y"), noise_multiplier=2.0)
    req = q.request(sci, "bc")
    approve_all(world)
    out = req.run().result(timeout=120).weights
    assert abs(float(out["0:count:"]) - s.dom.card("bc").num_examples) < 6 * 2.0
    assert next(b.epsilon_spent for b in sci.budget if b.dataset == "bc") > 0
    world.known += [np.asarray(out["1:mean:y"]).tobytes(), repr(float(out["1:mean:y"])).encode()]


def test_a_secure_federation_of_three_domains_behind_the_relay(world: World) -> None:
    clients = {n: world.client(n, s.scientist) for n, s in world.sites.items()}
    _, xte, yte = split()
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=3,
                           dp=fednb.ClientDP(clip=100.0, noise_multiplier=1e-3), checkpoint=None,
                           progress=False, secure_aggregation=True, secure_bound=50.0)
    fed.request()
    approve_all(world)
    history = fed.run()
    assert (history.metrics["status"] == "succeeded").all()
    assert accuracy(history.weights, xte, yte) > 0.9
    for name, s in world.sites.items():
        runs = [r for r in s.dom.runs.list() if r.request_id == fed.requests[name].id]
        assert len(runs) == 3 and all(r.release_state == "masked" for r in runs)
    world.known += [history.weights["w"].astype(np.float64).tobytes()[:32],
                    history.weights["w"].astype(np.float32).tobytes()[:16],
                    b"p = 1 / (1 + np.exp(-(x @ w + b[0])))"]


def test_a_relay_that_flips_a_byte_is_caught(world: World) -> None:
    s = world.sites["h2"]
    world.dishonest.tamper = "to_client"  # in the handshake of a new connection
    with pytest.raises(ChannelTampered, match=r"h2.*altered the bytes"):
        world.client("h2", s.owner)
    owner = world.client("h2", s.owner)
    world.dishonest.tamper = "to_client"  # in a response on an established connection
    with pytest.raises(ChannelTampered, match="integrity"):
        owner.users()
    world.dishonest.tamper = None


def test_a_relay_that_swaps_two_domains_is_caught(world: World) -> None:
    world.dishonest.swap = {"h0": "h1", "h1": "h0"}
    try:
        with pytest.raises(IdentityMismatch) as err:
            world.client("h0", world.sites["h0"].owner)
    finally:
        world.dishonest.swap = {}
    msg = str(err.value)
    assert "'h0'" in msg and world.sites["h1"].dom.identity.public in msg
    assert world.sites["h0"].dom.identity.public in msg


def test_the_relay_killed_mid_round_the_federation_resumes_and_charges_once(world: World) -> None:
    clients = {n: world.client(n, s.scientist) for n, s in world.sites.items()}
    rounds = 4
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params={**PARAMS, "epochs": 6},
                           rounds=rounds, dp=fednb.ClientDP(clip=100.0, noise_multiplier=1e-3),
                           checkpoint=None, progress=False)
    fed.request()
    approve_all(world)
    out: dict[str, object] = {}
    runner = threading.Thread(target=lambda: out.update(history=fed.run()))
    runner.start()
    before = {n: sum(1 for _ in s.dom.runs.list()) for n, s in world.sites.items()}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once every domain has a run of this federation
        if all(any(r.request_id == fed.requests[n].id for r in s.dom.runs.list())
               for n, s in world.sites.items()):
            break
        time.sleep(0.05)
    assert runner.is_alive()  # the relay dies mid-federation
    world.restart_relay()
    runner.join(300)
    assert not runner.is_alive()
    history = out["history"]
    assert (history.metrics["status"] == "succeeded").all()  # type: ignore[attr-defined]
    for name, s in world.sites.items():
        req = s.dom.requests.get(fed.requests[name].id)
        assert req.runs_used == rounds  # a retried PUT of a run did not run it again
        runs = [r for r in s.dom.runs.list() if r.request_id == req.id]
        assert len(runs) == rounds and sum(1 for _ in s.dom.runs.list()) - before[name] == rounds
        with s.dom.store.session() as sess:
            charges = [c for c in sess.query(ChargeRow).all() if c.run_id in {r.id for r in runs}]
        assert len(charges) == rounds and all(c.state == "committed" for c in charges)
        assert s.dom.verify_audit().ok


def test_health_metrics_and_connection_limits(world: World) -> None:
    limited = RelayServer.start(relay=Relay(limits=Limits(client_connections=1)))
    try:
        assert httpx.get(limited.url + "/health").text == "ok\n"
        s = world.sites["h0"]
        srv = s.dom  # a second registration of h0, on the limited relay, with the same key
        from fednb.domain._outbound import Outbound

        ob = Outbound(limited.url, "h0", srv.identity, s.server.port).start()
        assert ob.wait_registered(30)
        ws_url = limited.url.replace("http://", "ws://")
        with ws_connect(ws_url + "/connect/h0") as first, ws_connect(ws_url + "/connect/h0") as second:
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert "too many open connections" in closed.value.rcvd.reason
            first.close()
        with ws_connect(ws_url + "/connect/nobody") as ws, pytest.raises(ConnectionClosed) as gone:
            ws.recv(10)
        assert gone.value.rcvd is not None and "no domain called 'nobody'" in gone.value.rcvd.reason
        metrics = httpx.get(limited.url + "/metrics").text
        assert "fednb_relay_domains 1" in metrics
        assert 'fednb_relay_refused_total{reason="client_limit"} 1' in metrics
        ob.stop()
    finally:
        limited.stop()


def test_a_name_is_held_by_one_identity(world: World, tmp_path: Path) -> None:
    from fednb.domain._outbound import Outbound
    from fednb.secagg import Identity

    impostor = Outbound(world.relay.url, "h1", Identity.generate(), 1).start()
    try:
        assert not impostor.wait_registered(2)
        assert impostor.last_error is not None and "another identity" in impostor.last_error
    finally:
        impostor.stop()


def test_the_relay_saw_no_token_no_source_no_result_no_weight(world: World) -> None:
    # last in the module: the capture holds every byte of every test above
    assert len(world.capture) > 100_000 and len(world.known) >= 12
    seen = bytes(world.capture)
    for value in world.known:
        assert value not in seen, f"the relay saw {value[:40]!r}"
    assert json.dumps(W0["w"].tolist()).encode()[:40] not in seen
