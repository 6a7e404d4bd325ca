"""Federated training over real domains on loopback, and simulate() over virtual ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import fednb
from fednb.domain import Domain, Server
from fednb.errors import InvalidInput
from fednb.scientist import dirichlet_split


@fednb.remote(params={"lr": (float, 1e-3, 5.0), "epochs": (int, 1, 100), "mu": (float, 0.0, 10.0)},
              metrics={"loss": (0.0, 10.0)})
def train(data, weights, lr=0.5, epochs=5, mu=0.0):
    import time

    time.sleep(float(data.attrs.get("delay", 0.0)))
    x, y = data.x.values, data.y.values
    w, b = weights["w"].copy(), weights["b"].copy()
    for _ in range(epochs):
        p = 1 / (1 + np.exp(-(x @ w + b[0])))
        w -= lr * (x.T @ (p - y) / len(y) + mu * (w - weights["w"]))
        b -= lr * (np.array([np.mean(p - y)]) + mu * (b - weights["b"]))
    p = np.clip(1 / (1 + np.exp(-(x @ w + b[0]))), 1e-7, 1 - 1e-7)
    return fednb.Update(weights={"w": w, "b": b},
                        metrics={"loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))})


W0 = {"w": np.zeros(30), "b": np.zeros(1)}
PARAMS = {"lr": 0.5, "epochs": 5}


def split() -> tuple[dict[str, xr.Dataset], np.ndarray, np.ndarray]:
    bc = load_breast_cancer()
    x = (bc.data - bc.data.mean(0)) / bc.data.std(0)
    xtr, xte, ytr, yte = train_test_split(x, bc.target, test_size=0.2, stratify=bc.target, random_state=0)
    ds = xr.Dataset({"x": (("patient", "feature"), xtr), "y": ("patient", ytr.astype(float))})
    return dirichlet_split(ds, 3, label="y", alpha=1.0, seed=3, prefix="h"), xte, yte


def accuracy(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(((x @ w["w"] + w["b"][0]) > 0) == y))


@dataclass
class Site:
    server: Server
    owner: str
    scientist: str


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[dict[str, Site]]:
    parts, _, _ = split()
    out = {}
    for name, data in parts.items():
        dom = Domain.create(tmp_path / name, name=name)
        owner, sci = dom.add_user("owner", role="owner"), dom.add_user("alice", epsilon=1e12)
        # the tests charge DP with negligible noise (no cap across scientists); DP results
        # show 2 s after their run started
        dom.policy.update(min_noise_multiplier=0.0, dataset_epsilon_cap=None, dp_slot_s=2.0)
        dom.add_dataset("bc", data, bounds={"x": (-20.0, 20.0), "y": (0.0, 1.0)})
        out[name] = Site(dom.serve(port=0), owner, sci)
    yield out
    for s in out.values():
        s.server.stop()


def approve_all(sites: dict[str, Site]) -> None:
    for s in sites.values():
        for r in fednb.connect(s.server.url, token=s.owner).requests.pending():
            r.approve(release="auto")


DP = fednb.ClientDP(clip=100.0, noise_multiplier=1e-3)  # DP accounting on, negligible noise


def test_federation_over_three_domains_survives_a_dead_domain(sites: dict[str, Site], tmp_path: Path) -> None:
    _, xte, yte = split()
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=10, dp=DP,
                           min_domains=2, timeout=60, checkpoint=tmp_path / "ckpt", progress=False)
    fed.request()
    assert sorted(fed.pending()) == ["h0", "h1", "h2"]
    approve_all(sites)
    fed.wait_for_approval(timeout=10)

    def kill_h2() -> None:  # a hospital goes down mid-run
        while not (tmp_path / "ckpt" / "checkpoint.safetensors").exists():
            time.sleep(0.01)
        time.sleep(0.3)
        sites["h2"].server.stop()

    killer = threading.Thread(target=kill_h2)
    killer.start()
    history = fed.run()
    killer.join()
    status = history.metrics["status"]
    assert history.num_rounds == 10
    assert (status.sel(domain=["h0", "h1"]) == "succeeded").all()
    assert (status.sel(domain="h2") != "succeeded").any()  # dropped after it died
    assert accuracy(history.weights, xte, yte) > 0.9
    assert "loss" in history.rounds
    # each round records the epsilon the domain's ledger shows after it, as it grows
    eps = history.metrics["epsilon"].sel(domain="h0").values
    assert (np.diff(eps) > 0).all()
    (ledger,) = [b for b in clients["h0"].budget if b.dataset == "bc"]
    assert eps[-1] == pytest.approx(ledger.epsilon_spent + ledger.epsilon_reserved)
    assert fed.history is history  # a live view made before run() watched this very object


def test_mismatched_cards_are_refused_before_round_one(sites: dict[str, Site]) -> None:
    s = sites["h0"]
    dom = s.server.domain
    data = dom.private("bc").rename({"x": "features"})
    dom.add_dataset("bc", data, bounds={"features": (-20.0, 20.0), "y": (0.0, 1.0)})
    clients = {n: fednb.connect(x.server.url, token=x.scientist) for n, x in sites.items()}
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=2, progress=False)
    with pytest.raises(InvalidInput, match="differ") as info:
        fed.request()
    assert "features" in str(info.value)
    assert all(not fednb.connect(x.server.url, token=x.owner).requests.pending() for x in sites.values())


NOTEBOOK = '''
import json, sys, numpy as np, fednb
from fednb.runtime import compile_function
cfg = json.loads(sys.argv[1])
src = cfg["source"]
train = fednb.RemoteFunction(compile_function(src, "train"), source=src, params=cfg["params"],
                             metrics={{"loss": (0.0, 10.0)}})
clients = {{n: fednb.connect(u, token=t) for n, (u, t) in cfg["sites"].items()}}
fed = fednb.Federation(clients, train, dataset="bc", initial={{"w": np.zeros(30), "b": np.zeros(1)}},
                       params={{"lr": 0.5, "epochs": 5}}, rounds=cfg["rounds"],
                       dp=fednb.ClientDP(clip=100.0, noise_multiplier=1e-3), checkpoint=cfg["ckpt"],
                       progress=False)
fed.request()
fed.wait_for_approval(timeout=60)
h = fed.run()
print("DONE", h.num_rounds, flush=True)
'''


def test_a_killed_notebook_resumes_without_charging_twice(sites: dict[str, Site], tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK.format())
    rounds, ckpt = 8, tmp_path / "ckpt"
    params = {k: [v.type, v.low, v.high] for k, v in train.params.items()}
    cfg = json.dumps({"rounds": rounds, "ckpt": str(ckpt), "source": train.source, "params": params,
                      "sites": {n: [s.server.url, s.scientist] for n, s in sites.items()}})
    for s in sites.values():  # slow runs down so that the kill lands mid-federation
        dom = s.server.domain
        dom.add_dataset("bc", dom.private("bc").assign_attrs(delay=0.2),
                        bounds={"x": (-20.0, 20.0), "y": (0.0, 1.0)})
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.Popen([sys.executable, str(script), cfg], env=env, stdout=subprocess.PIPE, text=True)
    def approver_loop() -> None:  # the owners approve as the requests arrive
        approved: set[str] = set()
        deadline = time.monotonic() + 90
        while len(approved) < len(sites) and time.monotonic() < deadline:
            for n, s in sites.items():
                for r in fednb.connect(s.server.url, token=s.owner).requests.pending():
                    r.approve(release="auto")
                    approved.add(n)
            time.sleep(0.1)

    approver = threading.Thread(target=approver_loop)
    approver.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a few rounds are checkpointed
        hist = ckpt / "history" / "records.json"
        if hist.exists() and len({r["round"] for r in json.loads(hist.read_text())["records"]}) >= 3:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    approver.join()
    done = len({r["round"] for r in json.loads((ckpt / "history" / "records.json").read_text())["records"]})
    assert 3 <= done < rounds  # killed mid-federation
    second = subprocess.run([sys.executable, str(script), cfg], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"DONE {rounds}" in second.stdout
    for s in sites.values():
        dom = s.server.domain
        (req,) = dom.requests.list()
        assert req.runs_used == rounds  # one run per round: the resumed round was not run twice
        from fednb.domain._store import ChargeRow

        with dom.store.session() as sess:
            charges = sess.query(ChargeRow).all()
        assert len(charges) == rounds and all(c.state == "committed" for c in charges)
        assert dom.verify_audit().ok


def test_simulate_matches_a_federation_and_runs_async_with_a_slow_hospital() -> None:
    parts, xte, yte = split()
    history = fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=10, progress=False)
    assert history.num_rounds == 10 and accuracy(history.weights, xte, yte) > 0.9
    parts = {n: d.assign_attrs(delay=0.25 if n == "h0" else 0.05) for n, d in parts.items()}
    buff = fednb.strategies.FedBuff(buffer_size=2)
    history = fednb.simulate(train, parts, initial=W0, params=PARAMS, strategy=buff, rounds=12,
                             progress=False)
    m = history.metrics
    assert history.num_rounds == 12 and accuracy(history.weights, xte, yte) > 0.9
    slow = m["staleness"].sel(domain="h0").dropna("round")
    fast = m["staleness"].sel(domain=["h1", "h2"]).stack(k=("round", "domain")).dropna("k")
    assert float(slow.mean()) > float(fast.mean())  # the slow hospital's updates arrive stale
    assert buff.staleness_weight(int(slow.max())) < buff.staleness_weight(0)  # ... and count less


@fednb.remote
def step(data, weights):
    return {"w": weights["w"] + 1.0}


def test_compressed_updates_on_the_wire(sites: dict[str, Site]) -> None:
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    w0 = {"w": np.zeros(20_000)}  # float64: 160 kB
    dp = fednb.ClientDP(clip=1e4, noise_multiplier=1e-5)  # charged, noise std 0.1
    fed = fednb.Federation(clients, step, dataset="bc", initial=w0, rounds=3, compression="int8", dp=dp,
                           checkpoint=None, progress=False)
    fed.request()
    approve_all(sites)
    history = fed.run()
    sent = history.metrics["bytes_up"]
    assert float(sent.max()) < 160_000 / 7  # int8: 20 kB and a header
    assert float(history.rounds["bytes"].sum()) > 0
    assert abs(float(history.weights["w"].mean()) - 3.0) < 0.01  # unbiased rounding and noise
    parts, _, _ = split()
    sim = fednb.simulate(step, parts, initial=w0, rounds=2, compression="fp16", progress=False)
    assert float(sim.metrics["bytes_up"].max()) == 2 * 20_000  # float16 tensors
    np.testing.assert_allclose(sim.weights["w"], 2.0)


@fednb.remote
def far_out(data, weights):
    return {k: v + 1e5 for k, v in weights.items()}  # beyond float16's range


def test_a_domain_refuses_an_update_float16_cannot_carry_and_keeps_its_charge(sites: dict[str, Site]) -> None:
    from fednb.domain._store import ChargeRow

    s = sites["h0"]
    alice = fednb.connect(s.server.url, token=s.scientist)
    dp = fednb.ClientDP(clip=1e6, noise_multiplier=1e-3)  # 31 values of 1e5: a norm of 5.6e5, unclipped
    req = far_out.request(alice, "bc", runs=2, weights=W0, dp=dp)
    # a slot the run fits on a loaded machine: a run cut by its slot releases the (noised)
    # default, which float16 carries, and this test is about what the code returned
    fednb.connect(s.server.url, token=s.owner).requests.get(req.id).approve(slot_s=10.0)
    run = req.run(W0, compression="fp16")
    info = run.wait(90)
    real = s.server.domain.runs.owner_view(run.id)
    assert real.reason not in ("timeout", "wall_clock"), "the run overran its 10 s slot"
    assert (info.status, info.reason) == ("failed", "compression_overflow")
    owner = s.server.domain.runs.owner_view(run.id)
    assert "float16" in (owner.owner_log or "")
    with s.server.domain.store.session() as db:
        (charge,) = [c for c in db.query(ChargeRow).all() if c.request_id == req.id]
    # whether the noised update overflows is itself a release of it: the charge is spent
    assert charge.state == "committed"
    ok = req.run(W0)  # the same update uncompressed goes
    assert ok.wait(90).status == "succeeded"


def test_simulate_on_a_dask_cluster() -> None:
    pytest.importorskip("distributed")
    parts, xte, yte = split()
    history = fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=5, backend="dask",
                             progress=False, dp=fednb.ClientDP(clip=100.0, noise_multiplier=1e-4))
    assert history.num_rounds == 5 and history.settings["backend"] == "dask"
    assert (history.metrics["status"] == "succeeded").all()
    assert accuracy(history.weights, xte, yte) > 0.9
    with pytest.raises(InvalidInput, match="backend"):
        fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=1, backend="spark")


def test_simulate_with_secure_aggregation_trains_the_same_model_up_to_quantisation() -> None:
    parts, xte, yte = split()
    plain = fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=5, progress=False)
    secure = fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=5, progress=False,
                            secure_aggregation=True, secure_bound=50.0)
    assert secure.settings["secure_aggregation"] is True
    assert (secure.metrics["status"] == "succeeded").all()
    # each round adds at most one quantisation step (50 / 2^31) per hospital and coordinate
    for k in ("w", "b"):
        np.testing.assert_allclose(secure.weights[k], plain.weights[k], atol=1e-6)
    assert accuracy(secure.weights, xte, yte) > 0.9
    assert float(secure.metrics["bytes_up"].max()) == 4 * 31  # uint32: the float32 size
    with pytest.raises(InvalidInput, match="need single updates"):
        fednb.simulate(train, parts, initial=W0, params=PARAMS, rounds=1, progress=False,
                       secure_aggregation=True, strategy=fednb.strategies.Median())


def test_simulate_with_distributed_noise_charges_the_small_hospitals_less_and_trains() -> None:
    parts, xte, yte = split()
    common: dict = {"initial": W0, "params": PARAMS, "rounds": 5, "progress": False, "dp": DP,
                    "secure_aggregation": True, "secure_bound": 50.0}
    local = fednb.simulate(train, parts, **common)
    dist = fednb.simulate(train, parts, distributed_noise=True, **common)
    assert (dist.metrics["status"] == "succeeded").all()
    assert accuracy(dist.weights, xte, yte) > 0.9
    for k in ("w", "b"):  # the same model up to DP noise (std about 0.1) and quantisation
        np.testing.assert_allclose(dist.weights[k], local.weights[k], atol=1.0)

    def spent(h: fednb.History, name: str) -> float:
        return float(next(r.epsilon for r in h.records if r.domain == name and r.round == 4))

    for name in ("h1", "h2"):  # a small share of the examples: the shares cover them well
        assert spent(dist, name) < 0.5 * spent(local, name)
    with pytest.raises(InvalidInput, match="distributed_noise needs"):
        fednb.simulate(train, parts, initial=W0, rounds=1, progress=False, dp=DP, distributed_noise=True)


def trust_each_other(sites: dict[str, Site]) -> None:
    for name, s in sites.items():
        for other, o in sites.items():
            if other != name:
                s.server.domain.peers.trust(other, o.server.domain.identity.public)


def test_a_federation_with_secure_aggregation_over_real_domains(sites: dict[str, Site]) -> None:
    trust_each_other(sites)
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    _, xte, yte = split()
    common = {"dataset": "bc", "initial": W0, "params": PARAMS, "rounds": 3, "dp": DP,
              "checkpoint": None, "progress": False}
    plain = fednb.Federation(clients, train, **common)
    plain.request()
    approve_all(sites)
    expected = plain.run()
    fed = fednb.Federation(clients, train, secure_aggregation=True, secure_bound=50.0, **common)
    fed.request()
    approve_all(sites)
    history = fed.run()
    assert history.settings["secure_aggregation"] is True
    assert (history.metrics["status"] == "succeeded").all()
    assert float(history.metrics["bytes_up"].max()) == 4 * 31  # the float32 size
    for k in ("w", "b"):  # the same model up to DP noise (std 0.1) and quantisation
        np.testing.assert_allclose(history.weights[k], expected.weights[k], atol=1.0)
    assert accuracy(history.weights, xte, yte) > 0.9
    for name, s in sites.items():
        dom = s.server.domain
        runs = [r for r in dom.runs.list() if r.request_id == fed.requests[name].id]
        assert len(runs) == 3 and all(r.release_state == "masked" for r in runs)  # nothing in clear
        with pytest.raises(fednb.errors.ResultNotReady):
            clients[name].runs.get(runs[0].id).result(timeout=0)
        actions = [e.action for e in dom.audit.entries()]
        assert actions.count("result.masked") == 3 and actions.count("secagg.unmasked") == 3
        assert dom.verify_audit().ok


def test_distributed_noise_over_real_domains_charges_less_and_trains(sites: dict[str, Site]) -> None:
    from fednb.domain._store import ChargeRow
    from fednb.runtime import update_event

    trust_each_other(sites)
    for s in sites.values():
        s.server.domain.policy.update(secagg_distributed_noise=True)
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    _, xte, yte = split()
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=3, dp=DP,
                           checkpoint=None, progress=False, secure_aggregation=True, secure_bound=50.0,
                           distributed_noise=True)
    fed.request()
    approve_all(sites)
    history = fed.run()
    assert (history.metrics["status"] == "succeeded").all()
    assert accuracy(history.weights, xte, yte) > 0.9  # the unmasked mean trains the model
    kinds = {}
    for name, s in sites.items():
        dom = s.server.domain
        with dom.store.session() as db:
            charges = [c for c in db.query(ChargeRow).all() if c.request_id == fed.requests[name].id]
        assert len(charges) == 3 and {c.state for c in charges} == {"committed"}
        kinds[name] = {c.event["events"][0]["kind"] for c in charges}  # the update's, then the metrics'
        local = dom.ledger.epsilon([update_event(DP, True)] * 3, dom.card("bc"))
        spent = dom.ledger.info("alice", "bc").epsilon_spent
        assert spent <= local * (1 + 1e-9)
        last = next(r.epsilon for r in history.records if r.domain == name and r.round == 2)
        assert last == pytest.approx(spent)  # the history shows the charge after the round
        actions = [e.action for e in dom.audit.entries()]
        if kinds[name] == {"distributed_discrete_gaussian"}:
            assert spent < 0.5 * local and actions.count("charge.rebooked") == 3
        assert dom.verify_audit().ok
    # the smaller hospitals (a small share of the examples) rely on the shares; the largest,
    # whose update the shares barely cover, adds its full noise where that charges less
    assert kinds["h1"] == kinds["h2"] == {"distributed_discrete_gaussian"}


def test_a_domain_refuses_a_secure_round_with_a_member_off_its_roster(sites: dict[str, Site]) -> None:
    trust_each_other(sites)
    sites["h0"].server.domain.peers.forget("h2")
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=1, dp=DP,
                           checkpoint=None, progress=False, secure_aggregation=True, min_domains=2)
    fed.request()
    approve_all(sites)
    with pytest.warns(RuntimeWarning, match="off this domain's roster"):
        history = fed.run()
    assert {r.reason for r in history.records} == {"secagg_abandoned"}  # nothing unmasked
    np.testing.assert_array_equal(history.weights["w"], W0["w"])  # the model did not move


def test_a_domain_allowing_distributed_noise_refuses_a_stranger_and_keeps_its_full_charge(
        sites: dict[str, Site]) -> None:
    from fednb.domain._store import ChargeRow

    trust_each_other(sites)
    for s in sites.values():
        s.server.domain.policy.update(secagg_distributed_noise=True)
    sites["h0"].server.domain.peers.forget("h2")
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=1, dp=DP,
                           checkpoint=None, progress=False, secure_aggregation=True, min_domains=2,
                           distributed_noise=True)
    fed.request()
    approve_all(sites)
    with pytest.warns(RuntimeWarning, match="off this domain's roster"):
        history = fed.run()
    assert {r.reason for r in history.records} == {"secagg_abandoned"}
    with sites["h0"].server.domain.store.session() as db:
        (charge,) = [c for c in db.query(ChargeRow).all() if c.request_id == fed.requests["h0"].id]
    assert charge.state == "committed" and charge.event["events"][0]["kind"] == "gaussian"  # full noise's


def test_only_the_scientist_whose_run_it_is_drives_its_secure_round(sites: dict[str, Site]) -> None:
    from fednb.client import RemoteSecAggPeer
    from fednb.errors import NotFound, ResultNotReady
    from fednb.secagg import propose

    trust_each_other(sites)
    s = sites["h0"]
    dom = s.server.domain
    alice = fednb.connect(s.server.url, token=s.scientist)
    req = train.request(alice, "bc", runs=2, weights=W0, dp=DP)
    fednb.connect(s.server.url, token=s.owner).requests.get(req.id).approve(release="auto")
    run = req.run(W0, secure=True, **PARAMS)
    assert run.wait(60).status == "succeeded"
    deadline = time.monotonic() + 30
    while run.refresh().info.release_state != "secagg" and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(ResultNotReady):  # kept for the round, never downloadable
        run.result(timeout=0)
    with pytest.raises(InvalidInput, match="compression"):
        req.run(W0, secure=True, compression="fp16", **PARAMS)
    counts = {o.server.domain.identity.public: 100 for o in sites.values()}
    counts[dom.identity.public] = int(run.info.num_examples or 0)
    cfg = propose("auth-round-1", counts, 31, 50.0)
    mallory = fednb.connect(s.server.url, token=dom.add_user("mallory", epsilon=10.0))
    with pytest.raises(NotFound):  # not her run
        RemoteSecAggPeer(mallory, run.id).advertise(cfg)
    advert = RemoteSecAggPeer(alice, run.id).advertise(cfg)
    assert advert.name == dom.identity.public == alice.info.identity
    with pytest.raises(NotFound):  # not her round
        RemoteSecAggPeer(mallory, run.id).share(cfg.round_id, [advert])


def test_an_abandoned_secure_round_leaves_the_model_and_the_next_round_goes_on() -> None:
    from fednb.scientist import Driver, TrainingSpec
    from fednb.scientist._participants import LocalParticipant
    from fednb.secagg import Identity, Roster

    parts, xte, yte = split()
    local = {n: LocalParticipant(n, train.source, train.name, d, "patient") for n, d in parts.items()}
    ids = {n: Identity.generate() for n in local}
    for n, p in local.items():
        p.join_secure_aggregation(ids[n], Roster({o: i.public for o, i in ids.items() if o != n}))

    class Vanishing:  # two hospitals lose their connection while masking, in round 0 only
        def __init__(self, peer):  # type: ignore[no-untyped-def]
            self.peer = peer

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.peer, name)

        def masked(self, round_id, shares):  # type: ignore[no-untyped-def]
            if "-r0-" in round_id:
                raise ConnectionError("gone")
            return self.peer.masked(round_id, shares)

    for n in ("h1", "h2"):
        original = local[n].secagg_peer
        local[n].secagg_peer = lambda run_id, f=original: Vanishing(f(run_id))  # type: ignore[method-assign]
    spec = TrainingSpec.build(train, list(local), initial=W0, params=PARAMS, rounds=3, min_domains=2,
                              secure_aggregation=True, secure_bound=50.0, progress=False)
    driver = Driver(local, spec, run_prefix="abandon")
    with pytest.warns(RuntimeWarning, match="abandoned"):
        history = driver.run()
    m = history.metrics
    assert (m["status"].sel(round=0) == "failed").all()
    assert {r.reason for r in history.records if r.round == 0} == {"secagg_abandoned"}
    assert (m["status"].sel(round=[1, 2]) == "succeeded").all()
    assert accuracy(history.weights, xte, yte) > 0.9  # rounds 1 and 2 trained on
