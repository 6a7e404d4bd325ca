"""What a relay costs: a warm run, a Federation round (N=3, P=1e6) and one connection's
throughput through ``fednb relay`` beside the direct connection, same machine, same run.

    .venv/bin/python bench/relay.py [--runs 30] [--mb 256]

Every domain is served through a relay on loopback (``Domain.serve(relay=...)``); its
loopback TLS server, reached with the same pinned identity, is the direct baseline, so
the two paths differ by the relay hop alone (TLS 1.3 inside a WebSocket, two splices).
Throughput: one TLS connection reads ``--mb`` MB from a loopback TLS server keyed by a
domain identity, once directly and once through the relay and a domain-side connector.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import xarray as xr
from sklearn.datasets import load_breast_cancer

import fednb
from fednb.domain import Domain
from fednb.domain._outbound import Outbound, write_certificate
from fednb.domain.runner import bwrap_available
from fednb.relay import Pin, PinnedBackend, RelayServer
from fednb.secagg import Identity

P = 1_000_000


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):
    return np.asarray(data.x.values[:, col].mean())


@fednb.remote(params={"lr": (float, 0.0, 1.0)})
def nudge(data, weights, lr=0.1):
    return fednb.Update(weights={"w": weights["w"] + lr}, num_examples=int(data.sizes["patient"]))


def dataset() -> xr.Dataset:
    bc = load_breast_cancer()
    return xr.Dataset({"x": (("patient", "feature"), bc.data), "y": ("patient", bc.target)})


def warm_runs(pairs: dict[str, tuple[fednb.DomainClient, fednb.DomainClient]],
              runs: int) -> dict[str, list[float]]:
    """Warm runs of one approved request per path, interleaved (a busy machine slows both)."""
    reqs = {}
    for label, (sci, owner) in pairs.items():
        # a run count of its own per path: two requests, not one filed twice
        reqs[label] = column_mean.request(sci, "bc", runs=runs + 1 + len(reqs))
        owner.requests.get(reqs[label].id).approve()
        reqs[label].run(col=0).wait(120)  # its worker is up: warm from here on
    seen: dict[str, list[float]] = {label: [] for label in pairs}
    for i in range(runs):
        for label, req in reqs.items():
            t0 = time.perf_counter()
            info = req.run(col=i % 30).wait(60)
            seen[label].append(time.perf_counter() - t0)
            assert info.status == "succeeded", info
    return seen


def federation_round(clients: dict[str, fednb.DomainClient], owners: dict[str, fednb.DomainClient],
                     lr: float, rounds: int = 3) -> float:
    fed = fednb.Federation(clients, nudge, dataset="bc", initial={"w": np.zeros(P, np.float32)},
                           params={"lr": lr}, rounds=rounds, checkpoint=None, progress=False,
                           dp=fednb.ClientDP(clip=1e6, noise_multiplier=1e-6))
    fed.request()
    for name, o in owners.items():
        o.requests.get(fed.requests[name].id).approve(release="auto", slot_s=0.25)
    t0 = time.perf_counter()
    history = fed.run()
    assert (history.metrics["status"] == "succeeded").all()
    return (time.perf_counter() - t0) / rounds


def _bulk_server(cert: str, key: str, nbytes: int) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))
    block = b"\0" * (1 << 20)

    def send(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            for _ in range(0, nbytes, len(block)):
                tls.sendall(block)

    def serve() -> None:
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=send, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(lsock.getsockname()[1])


def _drain(stream: object, nbytes: int) -> float:
    got, t0 = 0, time.perf_counter()
    while got < nbytes:
        data = stream.read(1 << 18)  # type: ignore[attr-defined]
        if not data:
            break
        got += len(data)
    assert got >= nbytes, got
    return got / (time.perf_counter() - t0) / 1e6


def throughput(relay_url: str, mb: int) -> tuple[float, float]:
    ident = Identity.generate()
    cert, key = write_certificate(ident, "bulk", Path(tempfile.mkdtemp()) / "tls")
    port = _bulk_server(cert, key, mb << 20)
    ob = Outbound(relay_url, "bulk", ident, port).start()
    assert ob.wait_registered(30)
    from fednb.client._http import _pinned_context

    pin = Pin(ident.public, "bulk")
    direct = PinnedBackend(pin).connect_tcp("127.0.0.1", port, 10).start_tls(_pinned_context(), "bulk", 10)
    relayed = PinnedBackend(pin, relay_url, domain="bulk").connect_tcp("bulk.relay", 443, 10)
    relayed = relayed.start_tls(_pinned_context(), "bulk.relay", 10)
    rates = (_drain(direct, mb << 20), _drain(relayed, mb << 20))
    ob.stop()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--mb", type=int, default=256)
    args = ap.parse_args()
    relay = RelayServer.start()
    base = Path(tempfile.mkdtemp())
    servers, toks = {}, {}
    for i in range(3):
        dom = Domain.create(base / f"h{i}", name=f"h{i}")
        toks[f"h{i}"] = (dom.add_user("owner", role="owner"), dom.add_user("alice", epsilon=1e15))
        dom.policy.update(allow_no_dp=["alice"], dataset_epsilon_cap=None, min_noise_multiplier=0.0)
        dom.add_dataset("bc", dataset(), bounds={"x": (0, 5000), "y": (0, 1)})
        servers[f"h{i}"] = dom.serve(relay=relay.url, insecure_demo=not bwrap_available())
    for s in servers.values():
        assert s.outbound.wait_registered(30)  # type: ignore[attr-defined]

    def clients(via_relay: bool, who: int) -> dict[str, fednb.DomainClient]:
        out = {}
        for name, s in servers.items():
            ident = s.domain.identity.public
            if via_relay:
                out[name] = fednb.connect(relay=relay.url, domain=name, identity=ident, token=toks[name][who])
            else:
                out[name] = fednb.connect(s.url, identity=ident, token=toks[name][who])
        return out

    try:
        res: dict[str, dict[str, float]] = {"direct": {}, "relay": {}}
        sci = {"direct": clients(False, 1), "relay": clients(True, 1)}
        own = {"direct": clients(False, 0), "relay": clients(True, 0)}
        warm = warm_runs({k: (sci[k]["h0"], own[k]["h0"]) for k in res}, args.runs)
        for label, via in (("direct", False), ("relay", True)):
            calls = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sci[label]["h0"].info  # noqa: B018 (one warm API call)
                calls.append(time.perf_counter() - t0)
            res[label] = {"warm_run_median_ms": 1e3 * statistics.median(warm[label]),
                          "warm_run_p90_ms": 1e3 * float(np.percentile(warm[label], 90)),
                          "api_call_median_ms": 1e3 * statistics.median(calls),
                          "fed_round_s": federation_round(sci[label], own[label], 0.2 if via else 0.1)}
        d_mb, r_mb = throughput(relay.url, args.mb)
        for group in (*sci.values(), *own.values()):
            for c in group.values():
                c.close()
    finally:
        for s in servers.values():
            s.stop()
        relay.stop()
    print(f"sandbox: {'bubblewrap' if bwrap_available() else 'insecure-demo'}; DP slot 0.25 s in the rounds")
    print(f"{'':34s} {'direct':>10s} {'relay':>10s} {'added':>10s}")
    for key, unit in (("warm_run_median_ms", "ms"), ("warm_run_p90_ms", "ms"),
                      ("api_call_median_ms", "ms"), ("fed_round_s", "s")):
        d, r = res["direct"][key], res["relay"][key]
        print(f"{key + f' ({unit})':34s} {d:10.2f} {r:10.2f} {r - d:10.2f}")
    print(f"{'one connection, MB/s':34s} {d_mb:10.0f} {r_mb:10.0f}")


if __name__ == "__main__":
    main()
