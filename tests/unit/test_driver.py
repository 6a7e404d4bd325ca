"""The round driver: the one finiteness check, the training spec, resumes and tracebacks.

Participants that send NaN or infinity are test doubles of the ``Participant`` protocol
(a domain's output policy refuses such updates before they are sent, so only a
participant of one's own can hand them to the driver), or real virtual hospitals of
``simulate``, whose plain updates the driver's ``admit`` scans for them; everything above
them (the driver, its loops, the strategies, the kernels) is the real code.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.errors import InvalidInput
from fednb.protocol import Update
from fednb.scientist import Driver, RoundFailed, TrainingSpec
from fednb.scientist._participants import Outcome
from fednb.strategies import ClientUpdate, FedAvg, FedBuff, MeanStrategy, Median
from fednb.typing import FloatArray, Weights

W0 = {"w": np.zeros(4, np.float32)}


@fednb.remote
def _step(data, weights):
    return fednb.Update(weights={k: v + 1 for k, v in weights.items()})


class Poisoned:
    """Answers ``weights + 1``, or with ``bad`` in the update: NaN or infinity from the wire."""

    def __init__(self, name: str, bad: float | None = None) -> None:
        self.name, self.bad = name, bad

    def run(self, weights: Weights, params: dict[str, Any], run_id: str, timeout: float) -> Outcome:
        w = {k: v + 1 for k, v in weights.items()}
        if self.bad is not None:
            w["w"][1] = self.bad
        return Outcome("succeeded", "ok", Update(w, {}, num_examples=10))


class OwnAggregate(Median):
    """A custom strategy overriding ``aggregate`` (its own arithmetic, no check of its own)."""

    seen: list[int]

    def aggregate(self, global_vec: FloatArray, updates: Any) -> FloatArray:
        self.seen = [*getattr(self, "seen", []), len(updates)]
        return np.mean([u.vector for u in updates], axis=0, dtype=np.float64)


class OwnSum(FedAvg):
    """A custom strategy overriding ``aggregate_sum``."""

    def aggregate_sum(self, global_vec: FloatArray, weighted_sum: FloatArray, total_weight: float, *,
                      total_examples: float | None = None) -> FloatArray:
        return super().aggregate_sum(global_vec, weighted_sum, total_weight, total_examples=total_examples)


class OwnMean(MeanStrategy):
    """A custom member of the FedAvg family: a server step of its own."""

    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        return global_vec + 0.5 * delta


def drive(participants: dict[str, Any], strategy: Any, rounds: int = 2, **kw: Any) -> fednb.History:
    spec = TrainingSpec.build(_step, list(participants), initial=W0, strategy=strategy, rounds=rounds,
                              progress=False, **kw)
    return Driver(participants, spec, run_prefix="t").run()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("make", [FedAvg, OwnAggregate, OwnSum, OwnMean, Median,
                                  lambda: FedBuff(buffer_size=2)])
def test_a_non_finite_update_from_any_participant_is_dropped_whatever_the_strategy(
        make: Any, bad: float) -> None:
    strategy = make()
    parts = {n: Poisoned(n, bad if n == "b" else None) for n in ("a", "b", "c")}
    hist = drive(parts, strategy, rounds=2)
    assert np.isfinite(hist.weights["w"]).all()
    b = [(r.status, r.reason) for r in hist.records if r.domain == "b"]
    assert b and set(b) == {("failed", "nonfinite_update")}, strategy
    assert {r.status for r in hist.records if r.domain != "b"} == {"succeeded"}
    if not strategy.asynchronous:  # two rounds of the mean of the others' weights + 1 (OwnMean: half steps)
        np.testing.assert_allclose(hist.weights["w"], 1.0 if isinstance(strategy, OwnMean) else 2.0)
    if isinstance(strategy, OwnAggregate):
        assert strategy.seen == [2, 2]  # its aggregate saw only the admitted updates


def test_a_round_with_too_few_finite_updates_fails_and_names_the_floor() -> None:
    parts = {n: Poisoned(n, np.nan if n != "a" else None) for n in ("a", "b", "c")}
    with pytest.raises(RoundFailed, match="1 of 3 domains answered, fewer than min_domains=2"):
        drive(parts, FedAvg(), min_domains=2)


def test_the_training_spec_refuses_what_federation_and_simulate_would() -> None:
    names = ["a", "b", "c"]
    build = TrainingSpec.build
    for kw, match in (({"rounds": 0}, "rounds"), ({"min_domains": 4}, "min_domains"),
                      ({"compression": "zip"}, "compression"),
                      ({"secure_aggregation": True, "compression": "fp16"}, "without compression"),
                      ({"strategy": Median(), "secure_aggregation": True}, "single updates"),
                      ({"distributed_noise": True}, "distributed_noise"),
                      ({"strategy": FedBuff(buffer_size=5), "secure_aggregation": True}, "buffer_size"),
                      ({"strategy": fednb.strategies.Krum(f=1)}, "at least 5 updates"),
                      ({"strategy": fednb.strategies.FedProx(mu=0.1)}, "mu"),
                      ({"timeout": 0}, "timeout")):
        with pytest.raises(InvalidInput, match=match):
            build(_step, names, initial=W0, **kw)
    spec = build(_step, names, initial=W0, strategy=FedBuff(buffer_size=2))
    assert spec.asynchronous and spec.buffer_size == 2 and not spec.secure and spec.checkpoint is None
    # Federation and simulate refuse through the same spec, before anything runs
    parts = {n: xr.Dataset({"x": ("row", np.zeros(2))}) for n in names}
    with pytest.raises(InvalidInput, match="without compression"):
        fednb.simulate(_step, parts, initial=W0, secure_aggregation=True, compression="int8")
    with pytest.raises(InvalidInput, match="without compression"):
        fednb.Federation({}, _step, dataset="d", initial=W0, secure_aggregation=True, compression="int8")


def test_a_checkpoint_is_an_explicit_directory_and_a_resume_says_so(tmp_path: Path) -> None:
    parts = {n: xr.Dataset({"x": ("row", np.zeros(2))}) for n in ("a", "b")}
    with pytest.raises(InvalidInput, match="directory"):
        fednb.Federation({}, _step, dataset="d", initial=W0, checkpoint=True)  # type: ignore[arg-type]
    assert fednb.Federation({"a": None}, _step, dataset="d", initial=W0).checkpoint is None  # type: ignore[dict-item]
    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh start resumes nothing and says nothing
        first = fednb.simulate(_step, parts, initial=W0, rounds=2, checkpoint=folder, progress=False)
    assert (folder / "checkpoint.safetensors").exists()
    with pytest.warns(UserWarning, match=r"resuming from the checkpoint in .*ckpt after 2 of 3 rounds"):
        more = fednb.simulate(_step, parts, initial=W0, rounds=3, checkpoint=folder, progress=False)
    np.testing.assert_array_equal(first.weights["w"], 2.0)
    np.testing.assert_array_equal(more.weights["w"], 3.0)  # one more round, from the checkpoint
    assert more.settings["resumed_at_round"] == 2


@fednb.remote
def _raises_in_b(data, weights):
    if float(data["x"].values[0]) < 0:
        raise ZeroDivisionError("the scientist's own bug, on b's data")
    return fednb.Update(weights={k: v + 1 for k, v in weights.items()})


def test_simulate_shows_the_scientists_own_traceback() -> None:
    parts = {"a": xr.Dataset({"x": ("row", np.ones(2))}), "b": xr.Dataset({"x": ("row", -np.ones(2))})}
    with pytest.warns(RuntimeWarning, match="(?s)virtual hospital 'b'.*ZeroDivisionError.*own bug"):
        hist = fednb.simulate(_raises_in_b, parts, initial=W0, rounds=1, progress=False)
    assert {(r.domain, r.reason) for r in hist.records} == {("a", "ok"), ("b", "exception")}
    with pytest.warns(RuntimeWarning), pytest.raises(RoundFailed) as info:
        fednb.simulate(_raises_in_b, parts, initial=W0, rounds=1, progress=False, min_domains=2)
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # chained: the traceback is the scientist's


def test_secure_summing_needs_participants_that_can_keep_their_updates() -> None:
    parts = {n: Poisoned(n) for n in ("a", "b")}
    spec = TrainingSpec.build(_step, list(parts), initial=W0, secure_aggregation=True, progress=False)
    with pytest.raises(InvalidInput, match=r"\['a', 'b'\] cannot"):
        Driver(parts, spec, run_prefix="t")


def test_a_first_compile_says_so_and_precompile_makes_it_needless(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from fednb.kernels import _compile

    monkeypatch.setattr(_compile, "NOTICE_AFTER_S", 0.05)
    with _compile.first_use("test-kernel", 1, what="the test kernel"):
        time.sleep(0.5)  # as long as a compile
    with _compile.first_use("test-kernel", 1, what="the test kernel"):
        time.sleep(0.2)  # the second use says nothing
    with _compile.first_use("test-kernel", 2, what="a quick one"):
        pass  # loaded from the cache: nothing to say
    err = capsys.readouterr().err
    assert err.count("fednb: compiling") == 1 and "the test kernel" in err
    lines: list[str] = []
    assert _compile.precompile([3], log=lines.append) >= 0.0
    assert lines[-1].startswith("fednb.kernels:")
    assert "fednb: compiling" not in capsys.readouterr().err  # precompile reports its own progress


def test_client_update_is_admitted_once_per_round_not_where_it_is_made() -> None:
    # the proof that the one check ran travels with the updates: a strategy given them rescans nothing
    from fednb import kernels
    from fednb.strategies import admit

    ups = [ClientUpdate(np.full(3, float(i), np.float32), 1, f"h{i}") for i in range(3)]
    admitted, refused = admit(ups)
    scans: list[int] = []
    real = kernels.all_finite
    try:
        kernels.all_finite = lambda a: scans.append(a.size) or real(a)  # type: ignore[assignment]
        FedAvg().aggregate(np.zeros(3), admitted)
        Median().aggregate(np.zeros(3), admitted)
    finally:
        kernels.all_finite = real
    assert refused == [] and scans == [3, 3]  # the global vector only, once per call


@fednb.remote
def _bad_where_x(data, weights):
    # x = 1: a good update (weights + 1); NaN or infinity: that value in it; 1e300: a float64 update whose
    # cast to the approved float32 overflows to infinity (the policy's cast, then the scan)
    x = np.float64(data["x"].values[0])
    return fednb.Update(weights={k: v + x for k, v in weights.items()})


REFUSED = ("failed", "nonfinite_output")


def _hospitals(*values: float) -> dict[str, xr.Dataset]:
    return {f"h{i}": xr.Dataset({"x": ("row", np.array([v]))}) for i, v in enumerate(values)}


def _policy_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the output policy's own NaN/Inf scans (the real scan still runs)."""
    from fednb.runtime import _policy

    scans: list[int] = []
    real = _policy.all_finite
    monkeypatch.setattr(_policy, "all_finite", lambda a: scans.append(a.size) or real(a))
    return scans


def test_a_virtual_hospitals_update_is_scanned_once_by_admit_and_refused_as_its_policy_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # without DP, compression or secure aggregation the update goes unchanged into admit(),
    # whose pass that sums the round is the one scan; a refused update is recorded
    # nonfinite_output, as a domain's output policy records it, whatever the strategy
    scans = _policy_scans(monkeypatch)
    parts = _hospitals(1.0, np.nan, 1.0, np.inf, -np.inf, 1e300)
    bad = {"h1", "h3", "h4", "h5"}
    for strategy, kw in ((FedAvg(), {}), (FedAvg(), {"workers": 2}), (Median(), {}), (OwnAggregate(), {}),
                         (FedBuff(buffer_size=2), {})):
        hist = fednb.simulate(_bad_where_x, parts, initial=W0, rounds=2, progress=False, strategy=strategy,
                              **kw)
        assert {(r.status, r.reason) for r in hist.records if r.domain in bad} == {REFUSED}, strategy
        assert {(r.status, r.reason) for r in hist.records if r.domain not in bad} == {("succeeded", "ok")}
        assert np.isfinite(hist.weights["w"]).all(), strategy
        if not strategy.asynchronous:
            np.testing.assert_array_equal(hist.weights["w"], 2.0)  # the good ones' weights + 1, twice
    assert scans == []  # the policy scanned nothing: admit() did, once per round
    # compressed or masked, the update is scanned by the policy before it leaves, as in a domain
    for kw in ({"compression": "fp16"}, {"secure_aggregation": True}):
        hist = fednb.simulate(_bad_where_x, parts, initial=W0, rounds=1, progress=False, **kw)
        assert {(r.status, r.reason) for r in hist.records if r.domain in bad} == {REFUSED}, kw
        np.testing.assert_allclose(hist.weights["w"], 1.0, atol=1e-5)  # secure: quantised
    assert len(scans) == 2 * len(parts)


def test_an_asynchronous_virtual_hospital_whose_updates_are_refused_stops_as_a_failing_domain() -> None:
    # a refused update counts as a failed run: a hospital that only sends NaN is not restarted
    # for ever (it would keep every buffer from filling), as a domain whose policy refuses it
    from fednb.scientist._loops import MAX_FAILURES_IN_A_ROW

    with pytest.warns(RuntimeWarning, match=r"failed 3 runs in a row \(nonfinite_output\)"), \
            pytest.raises(RoundFailed, match="stopped after 0 of 3 aggregations"):
        fednb.simulate(_bad_where_x, _hospitals(np.nan, np.inf), initial=W0, rounds=3, progress=False,
                       strategy=FedBuff(buffer_size=2), history=(hist := fednb.History()))
    for name in ("h0", "h1"):
        assert [(r.status, r.reason) for r in hist.records if r.domain == name] == \
            [("failed", "nonfinite_output")] * MAX_FAILURES_IN_A_ROW


def test_check_structure_is_the_output_policy_without_the_value_scan() -> None:
    from fednb.protocol import ClientDP
    from fednb.runtime import OutputPolicy, OutputRejected, apply_output_policy, weight_specs
    from fednb.runtime._policy import check_structure

    policy = OutputPolicy(weights=weight_specs({"w": np.zeros(3, np.float32)}), metrics={"loss": (0.0, 1.0)},
                          max_bytes=12)
    out = check_structure(Update({"w": np.array([np.nan, 1.0, 1e300])}, {"loss": 5.0, "other": 1.0}), policy)
    assert out.weights["w"].dtype == np.float32  # cast to the approved dtype
    assert out.metrics == {"loss": 1.0}  # clipped; the undeclared one dropped
    assert np.isnan(out.weights["w"][0]) and np.isinf(out.weights["w"][2])  # left to admit()
    with pytest.raises(OutputRejected) as err:
        apply_output_policy(Update({"w": np.array([np.nan, 1.0, 1.0])}), policy)
    assert err.value.reason == "nonfinite_output"  # the full policy (a domain's) scans them
    for update, reason in ((Update({"w": np.zeros(4)}), "shape_mismatch"),
                           (Update({"v": np.zeros(3)}), "shape_mismatch"),
                           (Update({"w": np.array(["a", "b", "c"])}), "invalid_output"),
                           (Update({"w": np.zeros(3)}, {"loss": float("nan")}), "nonfinite_output")):
        for check in (check_structure, apply_output_policy):
            with pytest.raises(OutputRejected) as err:
                check(update, policy)
            assert err.value.reason == reason, (check, update)
    small = OutputPolicy(weights=None, max_bytes=8)
    for check in (check_structure, apply_output_policy):
        with pytest.raises(OutputRejected, match="size cap"):
            check(Update({"w": np.zeros(3)}), small)
    dp = OutputPolicy(weights=policy.weights, dp=ClientDP(clip=1.0, noise_multiplier=1.0))
    with pytest.raises(ValueError, match="apply_output_policy"):
        check_structure(Update({"w": np.zeros(3)}), dp)


class Remembering:
    """Answers ``weights + 1`` and notes, as each run starts, how many of its earlier
    updates are still alive somewhere."""

    def __init__(self, name: str) -> None:
        self.name, self.refs, self.alive = name, [], []  # type: ignore[var-annotated]

    def run(self, weights: Weights, params: dict[str, Any], run_id: str, timeout: float) -> Outcome:
        import weakref

        self.alive.append(sum(r() is not None for r in self.refs))
        w = {k: v + 1 for k, v in weights.items()}
        self.refs.append(weakref.ref(w["w"]))
        return Outcome("succeeded", "ok", Update(w, {}, num_examples=10))


@pytest.mark.parametrize("serial", [True, False])
def test_a_rounds_updates_are_freed_before_the_next_rounds_runs_start(serial: bool) -> None:
    # held over into the next round, they doubled a round's peak memory, and the allocator
    # gave the next round's updates memory no longer in the cache (10% of a round of 100)
    from fednb.scientist._driver import SerialExecutor

    parts = {n: Remembering(n) for n in ("a", "b", "c")}
    spec = TrainingSpec.build(_step, list(parts), initial=W0, rounds=4, progress=False)
    hist = Driver(parts, spec, run_prefix="t", executor=SerialExecutor() if serial else None).run()
    np.testing.assert_array_equal(hist.weights["w"], 4.0)
    assert all(p.alive == [0, 0, 0, 0] for p in parts.values()), {n: p.alive for n, p in parts.items()}
