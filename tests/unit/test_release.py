"""The default release: what a DP run releases when its code fails or breaks the spec.

For a DP request the scientist must not learn from a status or a reason what the code did,
so ``release`` replaces a missing or rejected result by ``default_update`` (zeros of the
approved shapes, metric midpoints), clipped and noised like any other, and hands the real
reason to its caller (the owner's side) only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.errors import InvalidInput
from fednb.privacy import SecureNoise
from fednb.protocol import ClientDP, ReasonCode, TensorSpec, Update
from fednb.runtime import OutputPolicy, OutputRejected, default_update, release
from fednb.scientist._participants import LocalParticipant

SPEC = {"w": TensorSpec(shape=[3, 2], dtype="float32"), "b": TensorSpec(shape=[4], dtype="float64")}
BOUNDS = {"loss": (0.0, 2.0), "acc": (-1.0, 1.0)}
DP = ClientDP(clip=1.0, noise_multiplier=3.0)


class Silent(SecureNoise):
    """No noise at all, so that a test can see which update was released."""

    def discrete_gaussian(self, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
        return np.zeros(shape, dtype=np.int64)


def good() -> Update:
    return Update({"w": np.full((3, 2), 0.1, np.float32), "b": np.full(4, 0.2)}, {"loss": 1.5, "acc": 0.5})


REJECTED: list[tuple[Update, ReasonCode]] = [
    (Update({"w": np.zeros((2, 3)), "b": np.zeros(4)}), "shape_mismatch"),
    (Update({"w": np.zeros((3, 2))}), "shape_mismatch"),
    (Update({"w": np.zeros((3, 2)), "b": np.zeros(4), "patient_0_is_93": np.zeros(1)}), "shape_mismatch"),
    (Update({"w": np.array([["a", "b"]] * 3), "b": np.zeros(4)}), "invalid_output"),
    (Update({"w": np.zeros((3, 2), complex), "b": np.zeros(4)}), "invalid_output"),
    (Update({"w": np.full((3, 2), np.nan), "b": np.zeros(4)}), "nonfinite_output"),
    (Update({"w": np.zeros((3, 2)), "b": np.array([0, 0, np.inf, 0])}), "nonfinite_output"),
    (Update({"w": np.full((3, 2), 1e300), "b": np.zeros(4)}), "nonfinite_output"),  # inf in float32
    (Update({"w": np.zeros((3, 2)), "b": np.zeros(4)}, {"loss": float("nan")}), "nonfinite_output"),
]


def assert_structure(update: Update) -> None:
    """Names, shapes and dtypes of the approved spec; every declared metric."""
    assert set(update.weights) == set(SPEC)
    for name, spec in SPEC.items():
        assert list(update.weights[name].shape) == spec.shape and update.weights[name].dtype == spec.dtype
    assert set(update.metrics) == set(BOUNDS)


def test_default_update_is_zeros_of_the_spec_and_metric_midpoints() -> None:
    default = default_update(OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP))
    assert_structure(default)
    assert all(not a.any() for a in default.weights.values())
    assert default.metrics == {"loss": 1.0, "acc": 0.0}
    with pytest.raises(ValueError, match="weight spec"):
        default_update(OutputPolicy())


@pytest.mark.parametrize(("update", "reason"), REJECTED)
def test_a_rejected_dp_result_releases_the_default_and_returns_the_real_reason(update: Update,
                                                                               reason: ReasonCode) -> None:
    policy = OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP)
    out, why = release(update, policy, Silent())
    assert why == reason
    assert_structure(out)
    assert all(not a.any() for a in out.weights.values()) and out.metrics == {"loss": 1.0, "acc": 0.0}
    with pytest.raises(OutputRejected) as info:  # without a fallback, the same result is refused
        release(update, OutputPolicy(weights=SPEC, metrics=BOUNDS), None)
    assert info.value.reason == reason


@pytest.mark.parametrize("reason", ["exception", "wall_clock", "memory_limit", "worker_crashed"])
def test_a_dp_run_without_a_result_releases_the_default(reason: ReasonCode) -> None:
    out, why = release(None, OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP), Silent(), reason)
    assert why == reason
    assert_structure(out)
    assert all(not a.any() for a in out.weights.values())


def test_the_default_is_noised_like_any_release() -> None:
    policy = OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP)
    noise = SecureNoise()
    values, metrics = [], []
    for _ in range(400):
        out, why = release(None, policy, noise, "exception")
        assert why == "exception"
        assert_structure(out)
        values.append(np.concatenate([out.weights["w"].ravel().astype(np.float64), out.weights["b"]]))
        metrics.append([out.metrics["loss"] - 1.0, out.metrics["acc"]])
    # the noise of a success: zC per coordinate on the update, z |ranges| on the metrics
    assert np.std(values) == pytest.approx(DP.noise_multiplier * DP.clip, rel=0.05)
    assert np.std(metrics) == pytest.approx(DP.noise_multiplier * math.sqrt(2**2 + 2**2), rel=0.08)
    ok, why = release(good(), policy, noise)
    assert why == "ok"
    assert_structure(ok)


def test_a_successful_release_is_the_policys_output() -> None:
    policy = OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP)
    out, why = release(good(), policy, Silent())
    assert why == "ok"
    np.testing.assert_allclose(out.weights["w"], 0.1, atol=2e-3)  # within the grid's step (2^-11)
    np.testing.assert_allclose(out.weights["b"], 0.2, atol=2e-3)
    assert out.metrics["loss"] == pytest.approx(1.5, abs=2e-3)
    backwards = Update({"b": np.zeros(4), "w": np.zeros((3, 2))}, {"acc": 0.0, "loss": 0.0})
    out, _ = release(backwards, policy, Silent())
    assert list(out.weights) == list(SPEC)  # the order is the spec's, not the code's


def test_the_default_is_released_even_when_the_spec_exceeds_the_size_cap() -> None:
    policy = OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP, max_bytes=16)  # the spec is 56 bytes
    out, why = release(good(), policy, Silent())
    assert why == "output_too_large"
    assert_structure(out)


def test_dp_sgd_fallback_without_noise_here_releases_plain_zeros() -> None:
    # dp-sgd: its noise is added during training; a failed training releases the zeros
    policy = OutputPolicy(weights=SPEC, fallback=True)
    out, why = release(None, policy, None, "exception")
    assert why == "exception" and all(not a.any() for a in out.weights.values())
    assert_structure(Update(out.weights, {k: 0.0 for k in BOUNDS}))
    good_out, why = release(Update({"w": np.ones((3, 2)), "b": np.ones(4)}), policy, None)
    assert why == "ok" and good_out.weights["w"].dtype == np.float32 and good_out.weights["w"].all()


def test_without_a_fallback_release_is_apply_output_policy() -> None:
    policy = OutputPolicy(weights=SPEC, metrics=BOUNDS)
    out, why = release(good(), policy, None)
    assert why == "ok" and out.metrics == {"loss": 1.5, "acc": 0.5}
    with pytest.raises(OutputRejected) as info:
        release(None, policy, None, "exception")
    assert info.value.reason == "exception"


# -- the scientist's side: run_on_mock and simulate take the same path -------------------
@fednb.remote(metrics={"loss": (0.0, 2.0)})
def fails_on_b(data, weights):
    if float(data.x.values.sum()) > 0:
        raise ValueError("hospital b's data")
    return fednb.Update(weights={"w": weights["w"] + 0.1}, metrics={"loss": 1.0})


def test_run_on_mock_with_dp_needs_a_weight_spec() -> None:
    with pytest.raises(InvalidInput, match="names, shapes and dtypes come from it, never from the code"):
        fails_on_b.run_on_mock(None, "any", dp=DP)  # type: ignore[arg-type]  # refused before any call


def test_a_failing_dp_virtual_hospital_releases_the_default_and_says_why() -> None:
    data = xr.Dataset({"x": ("row", np.ones(20))})
    part = LocalParticipant("b", fails_on_b.source, fails_on_b.name, data, "row", dp=DP,
                            metrics=fails_on_b.metrics)
    w0 = {"w": np.zeros(3, np.float32)}
    with pytest.warns(RuntimeWarning, match="(?s)virtual hospital 'b'.*'exception'.*hospital b's data"):
        out = part.run(w0, {}, "r1", 10.0)
    assert (out.status, out.reason) == ("succeeded", "exception")  # as a DP domain shows it, plus the reason
    assert out.update is not None and list(out.update.weights) == ["w"]
    assert out.update.weights["w"].shape == (3,) and out.update.weights["w"].dtype == np.float32
    assert out.epsilon is not None and out.epsilon > 0  # charged like a success
    parts = {"a": xr.Dataset({"x": ("row", np.zeros(20))}), "b": data}
    with pytest.warns(RuntimeWarning, match="hospital b's data"):
        hist = fednb.simulate(fails_on_b, parts, initial=w0, rounds=2, dp=DP, progress=False)
    assert {(r.domain, r.status, r.reason) for r in hist.records} == {("a", "succeeded", "ok"),
                                                                      ("b", "succeeded", "exception")}
