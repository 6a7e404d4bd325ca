"""Asynchronous FedBuff rounds under secure aggregation: in simulate and over real domains."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.errors import InvalidInput
from fednb.scientist import Driver, TrainingSpec, dirichlet_split
from fednb.scientist._participants import LocalParticipant
from fednb.secagg import Identity, Roster
from fednb.strategies import ClientUpdate, FedBuff, flatten, unflatten
from tests.integration.test_federation import (  # noqa: F401  (sites: the fixture)
    DP,
    PARAMS,
    W0,
    Site,
    accuracy,
    approve_all,
    sites,
    split,
    train,
    trust_each_other,
)


def slowed(parts: dict[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    """h0 five times slower than the others (as in the plain asynchronous test)."""
    return {n: d.assign_attrs(delay=0.25 if n == "h0" else 0.05) for n, d in parts.items()}


def replay(history: fednb.History, parts: dict[str, xr.Dataset], strategy: FedBuff) -> np.ndarray:
    """What plain FedBuff computes from the recorded buffers: each round's members, retrained
    from the model of the round they started in (round - staleness), rebased onto the
    current model and aggregated with their staleness, by ``strategy.aggregate``."""
    hospitals = {n: LocalParticipant(n, train.source, train.name, d.assign_attrs(delay=0.0), "patient")
                 for n, d in parts.items()}
    members: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for r in history.records:
        if r.status == "succeeded":
            members[r.round].append((r.domain, r.staleness))
    vec, layout = flatten(W0)
    models = [vec]
    for rnd in range(history.num_rounds):
        updates = []
        for name, tau in members.get(rnd, []):
            start = models[rnd - tau]
            out = hospitals[name].run(unflatten(start, layout), dict(PARAMS), f"replay-{rnd}-{name}", 60)
            assert out.update is not None
            new = flatten(out.update.weights)[0]
            updates.append(ClientUpdate(models[rnd] + (new - start), out.update.num_examples or 0, name, tau))
        models.append(strategy.aggregate(models[rnd], updates) if updates else models[rnd])
    return models[-1]


def test_async_secure_simulate_with_a_slow_hospital_is_fedbuff_up_to_quantisation() -> None:
    parts, xte, yte = split()
    buff = FedBuff(buffer_size=2)
    history = fednb.simulate(train, slowed(parts), initial=W0, params=PARAMS, strategy=buff, rounds=8,
                             progress=False, secure_aggregation=True, secure_bound=50.0)
    assert history.num_rounds == 8 and history.settings["secure_aggregation"] is True
    ok = [r for r in history.records if r.status == "succeeded"]
    assert len(ok) == 16  # every round summed its buffer of 2 domains
    for rnd in range(8):  # distinct domains per buffer: a domain waits until its update was summed
        names = [r.domain for r in ok if r.round == rnd]
        assert len(names) == len(set(names)) == 2
    assert {r.bytes_up for r in ok} == {4 * 31}  # uint32 masked vectors, never the update
    stale = [r.staleness for r in ok if r.domain == "h0"]
    assert stale and max(stale) >= 1  # the slow hospital's updates arrive stale
    assert accuracy(history.weights, xte, yte) > 0.9
    got = flatten(history.weights)[0]
    # plain FedBuff on the same buffers: equal up to a quantisation step (50 / 2^31) per member
    # and round, carried through the retraining
    np.testing.assert_allclose(got, replay(history, parts, buff), atol=1e-5)
    # ... and the staleness weights mattered: without them the model is another one
    undiscounted = replay(history, parts, FedBuff(buffer_size=2, staleness="constant"))
    assert np.abs(got - undiscounted).max() > 1e-3


def test_async_secure_simulate_with_distributed_noise_trains_and_charges_the_shares() -> None:
    parts, xte, yte = split()
    common: dict = {"initial": W0, "params": PARAMS, "rounds": 4, "progress": False, "dp": DP,
                    "strategy": FedBuff(buffer_size=3), "secure_aggregation": True, "secure_bound": 50.0}
    local = fednb.simulate(train, parts, **common)
    dist = fednb.simulate(train, parts, distributed_noise=True, **common)
    assert all(r.status == "succeeded" for r in dist.records) and dist.num_rounds == 4
    assert accuracy(dist.weights, xte, yte) > 0.9

    def spent(h: fednb.History, name: str) -> float:
        return float(next(r.epsilon for r in h.records if r.domain == name and r.round == 3))

    for name in ("h1", "h2"):  # small shares of the examples: the round's shares cover them
        assert spent(dist, name) < 0.5 * spent(local, name)


def test_async_secure_refusals() -> None:
    parts, _, _ = split()
    common: dict = {"initial": W0, "params": PARAMS, "rounds": 1, "progress": False,
                    "secure_aggregation": True, "asynchronous": True}
    with pytest.raises(InvalidInput, match="need single updates"):  # robust rules stay refused
        fednb.simulate(train, parts, strategy=fednb.strategies.Median(), **common)
    with pytest.raises(InvalidInput, match="buffer_size must be between 2 and 3"):
        fednb.simulate(train, parts, strategy=FedBuff(buffer_size=4), **common)
    with pytest.raises(InvalidInput, match="buffer_size must be between 2 and 3"):
        fednb.simulate(train, parts, strategy=FedBuff(buffer_size=1), **common)
    with pytest.raises(InvalidInput, match="FedAvg is synchronous"):
        fednb.simulate(train, parts, strategy=fednb.strategies.FedAvg(), **common)


class Vanishing:
    """A hospital's round side that loses its connection while masking, in chosen rounds."""

    def __init__(self, peer, rounds: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        self.peer, self.rounds = peer, rounds

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.peer, name)

    def masked(self, round_id, shares):  # type: ignore[no-untyped-def]
        if any(f"-{r}-" in round_id for r in self.rounds):
            raise ConnectionError("gone")
        return self.peer.masked(round_id, shares)


def secure_hospitals(vanish: dict[str, tuple[str, ...]], n: int = 3) -> dict[str, LocalParticipant]:
    parts = split()[0] if n == 3 else dirichlet_split(xr.concat(list(split()[0].values()), "patient"), n,
                                                      label="y", alpha=1.0, seed=3, prefix="h")
    local = {n: LocalParticipant(n, train.source, train.name, d, "patient") for n, d in slowed(parts).items()}
    ids = {n: Identity.generate() for n in local}
    for n, p in local.items():
        p.join_secure_aggregation(ids[n], Roster({o: i.public for o, i in ids.items() if o != n}))
    for n, rounds in vanish.items():
        original = local[n].secagg_peer
        local[n].secagg_peer = (  # type: ignore[method-assign]
            lambda run_id, f=original, r=rounds: Vanishing(f(run_id), r))
    return local


def secure_spec(local: dict[str, LocalParticipant], strategy: FedBuff, rounds: int) -> TrainingSpec:
    return TrainingSpec.build(train, list(local), initial=W0, params=PARAMS, strategy=strategy, rounds=rounds,
                              secure_aggregation=True, secure_bound=50.0, progress=False)


def test_an_abandoned_buffer_leaves_the_model_and_async_training_goes_on() -> None:
    _, xte, yte = split()
    # buffers of 2: in round a1 at least one member is h1 or h2, which vanish; 1 < 2 left
    local = secure_hospitals({"h1": ("a1",), "h2": ("a1",)})
    driver = Driver(local, secure_spec(local, FedBuff(buffer_size=2), 5), run_prefix="abandon-async")
    models: list[np.ndarray] = []
    driver.history.watch(lambda h: models.append(driver.vec.copy()))
    with pytest.warns(RuntimeWarning, match="secure round a1 abandoned"):
        history = driver.run()
    assert history.num_rounds == 5
    assert {r.reason for r in history.records if r.round == 1} == {"secagg_abandoned"}
    assert len([r for r in history.records if r.round == 1]) == 2
    np.testing.assert_array_equal(models[1], models[0])  # nothing unmasked: the model did not move
    for rnd in (0, 2, 3, 4):  # the next buffers go on
        assert [r.status for r in history.records if r.round == rnd] == ["succeeded"] * 2
    assert accuracy(history.weights, xte, yte) > 0.85
    assert all(not p._held for p in local.values())  # no kept update left behind


def test_a_straggler_still_running_at_the_end_keeps_nothing_behind() -> None:
    # h0 is still training when the last buffer is summed: its run finishes after the loop
    # and what it keeps for a round that never comes must be forgotten all the same
    local = secure_hospitals({})
    last_summed = threading.Event()
    run0 = local["h0"].run

    def late(*a, **k):  # type: ignore[no-untyped-def]
        last_summed.wait(60)  # h0 answers only once the last buffer was summed
        return run0(*a, **k)

    local["h0"].run = late  # type: ignore[method-assign]
    driver = Driver(local, secure_spec(local, FedBuff(buffer_size=2), 2), run_prefix="straggler-async")
    driver.history.watch(lambda h: h.num_rounds == 2 and last_summed.set())
    history = driver.run()
    assert history.num_rounds == 2
    assert not [r for r in history.records if r.domain == "h0"]  # it never answered in time
    assert all(not p._held for p in local.values())


def test_a_member_dropping_from_a_buffer_round_is_recorded_and_the_rest_summed() -> None:
    # buffers of all 4: h2 vanishes while masking in round a1, three of four survive (t = 2;
    # with 3 members t = 2 too, but one dropout leaves each survivor's secret with one share)
    local = secure_hospitals({"h2": ("a1",)}, n=4)
    driver = Driver(local, secure_spec(local, FedBuff(buffer_size=4), 3), run_prefix="drop-async")
    models: list[np.ndarray] = []
    driver.history.watch(lambda h: models.append(driver.vec.copy()))
    history = driver.run()
    got = {r.domain: (r.status, r.reason) for r in history.records if r.round == 1}
    assert got == {"h0": ("succeeded", "ok"), "h1": ("succeeded", "ok"), "h2": ("failed", "secagg_dropped"),
                   "h3": ("succeeded", "ok")}
    assert not np.array_equal(models[1], models[0])  # the survivors' sum moved the model


def test_an_async_secure_federation_over_real_domains(sites: dict[str, Site]) -> None:  # noqa: F811
    trust_each_other(sites)
    for name, s in sites.items():
        dom = s.server.domain
        dom.policy.update(secagg_min_members=2)  # buffers of 2 of the 3 domains
        # h0 five times slower than the others
        dom.add_dataset("bc", dom.private("bc").assign_attrs(delay=1.0 if name == "h0" else 0.2),
                        bounds={"x": (-20.0, 20.0), "y": (0.0, 1.0)})
    clients = {n: fednb.connect(s.server.url, token=s.scientist) for n, s in sites.items()}
    _, xte, yte = split()
    rounds = 6
    fed = fednb.Federation(clients, train, dataset="bc", initial=W0, params=PARAMS, rounds=rounds, dp=DP,
                           strategy=FedBuff(buffer_size=2), checkpoint=None, progress=False,
                           secure_aggregation=True, secure_bound=50.0, timeout=60)
    fed.request()
    approve_all(sites)
    t0 = time.monotonic()
    history = fed.run()
    assert time.monotonic() - t0 < 120
    assert history.num_rounds == rounds and history.settings["secure_aggregation"] is True
    ok = [r for r in history.records if r.status == "succeeded"]
    assert len(ok) == 2 * rounds and {r.bytes_up for r in ok} == {4 * 31}
    assert any(r.staleness >= 1 for r in ok)  # the third domain's update joins a later buffer, stale
    assert accuracy(history.weights, xte, yte) > 0.85
    for name, s in sites.items():
        dom = s.server.domain
        runs = [r for r in dom.runs.list() if r.request_id == fed.requests[name].id]
        summed = sum(1 for r in ok if r.domain == name)
        masked = [r for r in runs if r.release_state == "masked"]
        assert len(masked) == summed  # every run a round took left masked, once
        # the rest (a straggler at the end) stays kept for a round, never released in clear
        assert all(r.release_state in ("masked", "secagg") for r in runs)
        for r in runs:
            with pytest.raises(fednb.errors.ResultNotReady):
                clients[name].runs.get(r.id).result(timeout=0)
        actions = [e.action for e in dom.audit.entries()]
        assert actions.count("result.masked") == summed and actions.count("secagg.unmasked") == summed
        entered = [json.loads(e.details) for e in dom.audit.entries() if e.action == "result.masked"]
        factors = sorted(d["staleness_factor"] for d in entered)  # shown to the owner, as signed
        want = sorted(FedBuff().staleness_weight(r.staleness) for r in ok if r.domain == name)
        assert factors == pytest.approx(want) and all(0 < d["weight"] < 1 for d in entered)
        assert dom.verify_audit().ok
