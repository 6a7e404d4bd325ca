"""Hospitals behind real firewalls: three domains, each in a network namespace of its own
that nothing can connect into and that reaches the outside only through a real HTTP
CONNECT proxy (tinyproxy), serve a scientist through a relay.

The scientist and the relay sit in the root namespace; the relay listens on the root
namespace's loopback, which no domain can reach except through its hospital's tinyproxy
(on the root side of the domain's veth). Each domain is its own process, started inside
its namespace with ``fednb domain serve --relay``, with its bubblewrap sandbox. The
scientist runs the README's round trip, a DP query and a three-domain secure Federation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.relay import RelayServer
from tests.adversarial.conftest import require_sandbox
from tests.integration.test_federation import PARAMS, W0, accuracy, split, train

# RFC 2544's benchmarking block: a /28 per test run, one /30 per domain's veth
_NET = ipaddress.ip_network("198.18.0.0/15")
_RUN = itertools.count()
_PROXY_PORT = 3128  # on an address unique to this run, so no other run can hold it
_TOOLS = ("ip", "tinyproxy")


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):
    return np.asarray(data.x.values[:, col].mean() * 1.0)


def _need_tools() -> None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if not missing and os.geteuid() == 0:
        return
    why = (f"missing {', '.join(missing)} (apt-get install iproute2 tinyproxy; "
           "scripts/test-deps.sh does)" if missing else "network namespaces need root")
    if os.environ.get("FEDNB_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"the relay's network-namespace test cannot run: {why}")
    pytest.skip(why)


def _sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_block() -> ipaddress.IPv4Network:
    """A /28 of 198.18.0.0/15 that no interface or route of this machine overlaps."""
    used = [ipaddress.ip_network(m, strict=False) for m in re.findall(
        r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", _sh("ip", "-o", "-4", "addr") + _sh("ip", "-4", "route"))]
    blocks = list(_NET.subnets(new_prefix=28))
    start = (os.getpid() * 8 + next(_RUN)) % len(blocks)
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if not any(block.overlaps(u) for u in used if u.prefixlen > 0):
            return block
    raise RuntimeError("no free /28 in 198.18.0.0/15 for the test's veths")


@dataclass
class Hospital:
    """One domain's namespace, its veth, its tinyproxy and its domain process."""

    name: str
    netns: str
    host_if: str
    host_ip: str  # the root side of the veth: where the hospital's proxy listens
    ns_ip: str  # the domain's side
    home: Path
    identity: str
    owner: str
    scientist: str
    proxy: subprocess.Popen[bytes] | None = None
    domain: subprocess.Popen[bytes] | None = None

    @property
    def proxy_log(self) -> Path:
        return self.home.parent / f"{self.name}-tinyproxy.log"

    @property
    def domain_log(self) -> Path:
        return self.home.parent / f"{self.name}-domain.log"

    def in_netns(self, *argv: str) -> list[str]:
        # nsenter switches the network namespace only: the domain keeps the machine's
        # mounts (its cgroups among them; `ip netns exec` remounts /sys without them), as
        # on a hospital's server behind a firewall
        if shutil.which("nsenter"):
            return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        return ["ip", "netns", "exec", self.netns, *argv]

    def make_netns(self, block: ipaddress.IPv4Network, i: int) -> None:
        net = list(block.subnets(new_prefix=30))[i]
        self.host_ip, self.ns_ip = str(net[1]), str(net[2])
        peer = self.host_if[:-1] + "n"
        _sh("ip", "netns", "add", self.netns)
        _sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", peer, "netns", self.netns)
        _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _sh("ip", "link", "set", self.host_if, "up")
        # the namespace's only routes: its loopback and the /30 to its proxy; no default route
        _sh("ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/30", "dev", peer)
        _sh("ip", "-n", self.netns, "link", "set", peer, "up")
        _sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def start_proxy(self, relay_port: int) -> None:
        # docs/deployment.md's hospital proxy: CONNECT to the relay's host and port only
        conf = self.home.parent / f"{self.name}-tinyproxy.conf"
        allowed = self.home.parent / f"{self.name}-tinyproxy.filter"
        allowed.write_text("^127\\.0\\.0\\.1$\n")
        conf.write_text("\n".join([
            f"Port {_PROXY_PORT}", f"Listen {self.host_ip}", "Timeout 600",
            f'LogFile "{self.proxy_log}"', "LogLevel Connect", "MaxClients 100",
            f"Allow {self.ns_ip}", f"ConnectPort {relay_port}", f'Filter "{allowed}"',
            "FilterType ere", "FilterDefaultDeny Yes", "DisableViaHeader Yes", ""]))
        self.proxy = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host_ip, _PROXY_PORT), 1):
                return
            assert self.proxy.poll() is None, f"tinyproxy exited: {self.proxy_log.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"tinyproxy did not listen on {self.host_ip}:{_PROXY_PORT}")

    def start_domain(self, relay_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["HTTPS_PROXY"] = f"http://{self.host_ip}:{_PROXY_PORT}"
        argv = self.in_netns(sys.executable, "-m", "fednb.cli", "domain", "--home", str(self.home),
                             "serve", "--relay", relay_url, "--relay-name", self.name)
        with self.domain_log.open("wb") as log:
            self.domain = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def loopback_port(self) -> int:
        found = re.search(r"serving at https://127\.0\.0\.1:(\d+)", self.domain_log.read_text())
        assert found, f"{self.name} did not say where it serves:\n{self.domain_log.read_text()}"
        return int(found.group(1))

    def stop(self) -> None:
        for proc in (self.domain, self.proxy):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        # deleting the namespace (its processes gone) deletes the veth pair with it
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)


@dataclass
class World:
    relay: RelayServer
    sites: dict[str, Hospital]

    def client(self, name: str, token: str) -> fednb.DomainClient:
        return fednb.connect(relay=self.relay.url, domain=name, identity=self.sites[name].identity,
                             token=token)

    def approve_all(self, release: str = "auto") -> None:
        for name, s in self.sites.items():
            for r in self.client(name, s.owner).requests.pending():
                r.approve(release=release)


def _make_home(home: Path, name: str, data: object) -> tuple[str, str, str]:
    dom = Domain.create(home, name=name)
    try:
        owner, sci = dom.add_user("owner", role="owner"), dom.add_user("alice", epsilon=1e12)
        dom.policy.update(min_noise_multiplier=0.0, dataset_epsilon_cap=None, dp_slot_s=1.0,
                          allow_no_dp=["alice"])
        dom.add_dataset("bc", data, bounds={"x": (-20.0, 20.0), "y": (0.0, 1.0)})  # type: ignore[arg-type]
        return dom.identity.public, owner, sci
    finally:
        dom.close()


def _trust_each_other(sites: dict[str, Hospital]) -> None:
    for name, s in sites.items():
        dom = Domain.open(s.home)
        try:
            for other, o in sites.items():
                if other != name:
                    dom.peers.trust(other, o.identity)
        finally:
            dom.close()


def _wait_registered(w: World, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"fednb_relay_domains {len(w.sites)}\n" in httpx.get(w.relay.url + "/metrics").text:
            return
        for s in w.sites.values():
            assert s.domain is not None and s.domain.poll() is None, \
                f"domain {s.name} exited:\n{s.domain_log.read_text()}"
        time.sleep(0.2)
    logs = "\n".join(f"--- {s.name}\n{s.domain_log.read_text()}" for s in w.sites.values())
    raise AssertionError(f"the domains did not register through their proxies:\n{logs}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _need_tools()
    require_sandbox()
    base = tmp_path_factory.mktemp("netns")
    parts, _, _ = split()
    run = f"{os.getpid():x}x{next(_RUN)}"
    sites = {}
    for i, (name, data) in enumerate(parts.items()):
        ident, owner, sci = _make_home(base / name, name, data)
        sites[name] = Hospital(name, f"fednb-{run}-{name}", f"fn{run}{i}h", "", "", base / name,
                               ident, owner, sci)
    _trust_each_other(sites)
    relay = RelayServer.start("127.0.0.1", 0)
    w = World(relay, sites)
    with pytest.MonkeyPatch.context() as mp:
        for var in [k for k in os.environ if "proxy" in k.lower()]:
            mp.delenv(var)  # the scientist reaches the relay directly
        try:
            block = _free_block()
            for i, s in enumerate(sites.values()):
                s.make_netns(block, i)
                s.start_proxy(relay.port)
                s.start_domain(relay.url)
            _wait_registered(w)
            yield w
        finally:
            for s in sites.values():
                s.stop()
            relay.stop()


def _listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of each TCP socket listening in ``pid``'s network namespace."""
    out = []
    for table, size in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # TCP_LISTEN
                addr, port = local.split(":")
                raw = bytes.fromhex(addr)
                # /proc prints each 32-bit word in host (little-endian) order
                step = -1 if sys.byteorder == "little" else 1
                words = b"".join(raw[j:j + 4][::step] for j in range(0, size // 2, 4))
                out.append((str(ipaddress.ip_address(words)), int(port, 16)))
    return out


_PROBE = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 3).close()
        out[target] = "connected"
    except OSError as exc:
        out[target] = type(exc).__name__
print(json.dumps(out))
"""

_CONNECT_PROBE = """
import json, socket, sys
proxy, out = sys.argv[1].rsplit(":", 1), {}
for target in sys.argv[2:]:
    with socket.create_connection((proxy[0], int(proxy[1])), 5) as c:
        c.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
        out[target] = c.recv(200).split(b" ")[1].decode()
print(json.dumps(out))
"""


def test_a_domain_accepts_no_connection_and_reaches_out_only_through_its_proxy(world: World) -> None:
    for s in world.sites.values():
        assert s.domain is not None
        port = s.loopback_port()
        listening = _listening(s.domain.pid)
        assert ("127.0.0.1", port) in listening  # the domain's own namespace, its TLS server
        assert all(ipaddress.ip_address(a).is_loopback for a, _ in listening), listening
        # the scientist (the root namespace) cannot connect to the domain's address
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((s.ns_ip, port), 3)
        # from inside, the relay (on the root namespace's loopback) and the world are out of
        # reach; only the proxy answers
        targets = [f"127.0.0.1:{world.relay.port}", f"{s.host_ip}:{world.relay.port}",
                   f"192.0.2.1:{world.relay.port}", f"{s.host_ip}:{_PROXY_PORT}"]
        probe = subprocess.run(s.in_netns(sys.executable, "-c", _PROBE, *targets),
                               capture_output=True, text=True, timeout=30, check=True)
        got = json.loads(probe.stdout)
        assert got[targets[-1]] == "connected"
        assert all(got[t] != "connected" for t in targets[:-1]), got
        # and the proxy tunnels nowhere but to the relay (whose tunnels the last test counts)
        elsewhere = ["127.0.0.1:22", f"192.0.2.1:{world.relay.port}", f"{s.host_ip}:{world.relay.port}"]
        probe = subprocess.run(s.in_netns(sys.executable, "-c", _CONNECT_PROBE,
                                          f"{s.host_ip}:{_PROXY_PORT}", *elsewhere),
                               capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(probe.stdout) == dict.fromkeys(elsewhere, "403")
        assert "sandbox: bubblewrap" in s.domain_log.read_text()


def test_the_readme_round_trip_through_proxies_and_the_relay(world: World) -> None:
    s = world.sites["h0"]
    alice = world.client("h0", s.scientist)
    on_mock = column_mean.run_on_mock(alice, "bc", col=3)
    req = column_mean.request(alice, "bc", runs=1)
    world.approve_all(release="manual")
    run = req.run(col=3)
    assert run.wait(120).release_state == "held"
    (held,) = world.client("h0", s.owner).results.held()
    held.release()
    got = float(run.result(timeout=60).weights["result"])
    parts, _, _ = split()
    private = float(parts["h0"].x.values[:, 3].mean())
    assert got == pytest.approx(private) and got != pytest.approx(float(on_mock.weights["result"]))


def test_a_dp_query_through_proxies_and_the_relay(world: World) -> None:
    s = world.sites["h1"]
    sci = world.client("h1", s.scientist)
    q = fednb.Query(fednb.Query.count(), fednb.Query.mean("y"), noise_multiplier=2.0)
    req = q.request(sci, "bc")
    world.approve_all()
    out = req.run().result(timeout=120).weights
    assert abs(float(out["0:count:"]) - sci.datasets["bc"].card.num_examples) < 6 * 2.0
    assert next(b.epsilon_spent for b in sci.budget if b.dataset == "bc") > 0


def test_a_secure_federation_of_three_firewalled_domains(world: World) -> None:
    clients = {n: world.client(n, s.scientist) for n, s in world.sites.items()}
    _, xte, yte = split()
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=3,
                           dp=fednb.ClientDP(clip=100.0, noise_multiplier=1e-3), checkpoint=None,
                           progress=False, secure_aggregation=True, secure_bound=50.0)
    fed.request()
    world.approve_all()
    history = fed.run()
    assert (history.metrics["status"] == "succeeded").all()
    assert accuracy(history.weights, xte, yte) > 0.9
    for name, s in world.sites.items():
        runs = world.client(name, s.owner).runs.list(request_id=fed.requests[name].id)
        assert len(runs) == 3 and all(r.info.release_state == "masked" for r in runs)


def test_every_domain_connection_went_through_its_tinyproxy(world: World) -> None:
    for name, s in world.sites.items():
        before = _tunnels(s, world.relay.port)
        assert before >= 1  # its control channel
        assert world.client(name, s.owner).me.role == "owner"  # a data connection of its own
        assert _tunnels(s, world.relay.port) > before, s.proxy_log.read_text()[-2000:]
        accepted = re.findall(r"Connect \(file descriptor \d+\): ([\d.]+)", s.proxy_log.read_text())
        assert s.ns_ip in accepted
    # every connection the relay spliced for a client was dialled by a domain through a proxy
    spliced = world.relay.relay.metrics.connections_total
    assert sum(_tunnels(s, world.relay.port) for s in world.sites.values()) >= len(world.sites) + spliced


def _tunnels(s: Hospital, relay_port: int) -> int:
    """How many CONNECTs to the relay the hospital's tinyproxy has logged (it logs a request
    before it connects upstream, so before the relay sees the connection)."""
    pattern = rf"Request \(file descriptor \d+\): CONNECT 127\.0\.0\.1:{relay_port} "
    return len(re.findall(pattern, s.proxy_log.read_text()))
