"""The one execution path and the output policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fednb.errors import InvalidInput, ParamsOutOfSchema
from fednb.privacy import GRID_SLACK, ComposedEvent, GaussianEvent, SecureNoise
from fednb.protocol import ClientDP, ParamSpec, TensorSpec, Update
from fednb.runtime import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    call_function,
    check_params,
    check_weights,
    compile_function,
    update_event,
)
from tests.conftest import breast_cancer_dataset


def test_compile_and_call_with_and_without_weights() -> None:
    ds = breast_cancer_dataset()
    f = compile_function("def f(data, k=1):\n    return np.asarray(data.sizes['patient'] * k)\n", "f")
    assert int(call_function(f, ds, None, {"k": 2}).weights["result"]) == 1138
    g = compile_function("def g(data, weights, lr=0.1):\n"
                         "    return fednb.Update(weights={'w': weights['w'] - lr})\n", "g")
    w = {"w": np.ones(3)}
    out = call_function(g, ds, w, {"lr": 0.5})
    np.testing.assert_allclose(out.weights["w"], 0.5)
    np.testing.assert_allclose(w["w"], 1.0)  # the caller's weights are not mutated
    with pytest.raises(InvalidInput, match="does not define a function"):
        compile_function("x = 1\n", "f")


def test_output_policy_checks_shapes_finiteness_and_size() -> None:
    spec = {"w": TensorSpec(shape=[3], dtype="float32")}
    pol = OutputPolicy(weights=spec, metrics={"loss": (0.0, 1.0)}, max_bytes=100)
    ok = apply_output_policy(Update({"w": np.ones(3)}, {"loss": 3.0, "x": 1.0}), pol)
    assert ok.weights["w"].dtype == np.float32 and ok.metrics == {"loss": 1.0}
    cases = [
        (Update({"w": np.ones(4)}), "shape_mismatch"),
        (Update({"v": np.ones(3)}), "shape_mismatch"),
        (Update({"w": np.array([1.0, np.nan, 0])}), "nonfinite_output"),
        (Update({"w": np.ones(3)}, {"loss": float("inf")}), "nonfinite_output"),
        (Update({"w": np.array(["a", "b", "c"])}), "invalid_output"),
    ]
    for update, reason in cases:
        with pytest.raises(OutputRejected) as info:
            apply_output_policy(update, pol)
        assert info.value.reason == reason
    with pytest.raises(OutputRejected) as info:
        apply_output_policy(Update({"big": np.zeros(100)}), OutputPolicy(max_bytes=100))
    assert info.value.reason == "output_too_large"


def test_param_and_weight_checks() -> None:
    schema = {"lr": ParamSpec(type="float", low=0.0, high=1.0)}
    check_params(schema, {"lr": 0.5})
    with pytest.raises(ParamsOutOfSchema):
        check_params(schema, {"lr": 0.5, "x": 1})
    specs = {"w": TensorSpec(shape=[2], dtype="float64")}
    check_weights(specs, {"w": np.zeros(2)})
    with pytest.raises(ParamsOutOfSchema):
        check_weights(specs, None)
    with pytest.raises(ParamsOutOfSchema):
        check_weights(None, {"w": np.zeros(2)})


DP = ClientDP(clip=1.0, noise_multiplier=2.0)


def test_update_event_accounts_the_grid_rounding() -> None:
    assert update_event(DP, False) == GaussianEvent(2.0, sensitivity_factor=2.0 * GRID_SLACK)
    assert update_event(DP, True) == ComposedEvent((GaussianEvent(2.0, sensitivity_factor=2.0 * GRID_SLACK),
                                                    GaussianEvent(2.0, sensitivity_factor=GRID_SLACK)))


def test_a_dp_policy_needs_the_approved_weight_spec() -> None:
    with pytest.raises(ValueError, match="names, shapes and dtypes come from it, never from the code"):
        OutputPolicy(dp=DP)
    spec = {"w": TensorSpec(shape=[2], dtype="float32")}
    assert OutputPolicy(weights=spec, dp=DP).fallback  # implied by dp
    assert OutputPolicy(weights=spec, fallback=True).dp is None  # dp-sgd: noised in training
    assert not OutputPolicy(weights=spec).fallback
    with pytest.raises(ValueError, match="default release"):
        OutputPolicy(fallback=True)


def _on_grid(values: np.ndarray, sensitivity: float, d: int) -> bool:
    gamma = 2.0 ** math.floor(math.log2(sensitivity * 2.0**-10 / math.sqrt(d)))
    k = values.astype(np.float64) / gamma
    return bool(np.array_equal(k, np.rint(k)))


def test_dp_policy_releases_on_the_grid_in_the_approved_dtypes() -> None:
    spec = {"w": TensorSpec(shape=[3], dtype="float32"), "v": TensorSpec(shape=[2, 2], dtype="float64")}
    bounds = {"loss": (0.0, 4.0), "acc": (0.0, 3.0)}
    pol = OutputPolicy(weights=spec, metrics=bounds, dp=DP)
    raw = Update({"w": np.array([0.1, 0.2, 0.3]), "v": np.ones((2, 2), np.float32)}, {"loss": 1.0})
    out = apply_output_policy(raw, pol, SecureNoise())
    assert out.weights["w"].dtype == np.float32 and out.weights["v"].dtype == np.float64
    assert out.weights["v"].shape == (2, 2)
    assert _on_grid(out.weights["v"], 2 * DP.clip, 7)  # the update: sensitivity 2C over 7 values
    metrics = np.array([out.metrics["acc"], out.metrics["loss"]])
    assert _on_grid(metrics, 5.0, 2)  # the metric vector: sensitivity |(4, 3)| = 5
    deferred = OutputPolicy(weights=spec, dp=DP, defer_noise=True)  # secure aggregation noises it later
    clipped = apply_output_policy(raw, deferred, SecureNoise())
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in clipped.weights.values()))
    assert norm <= DP.clip
    assert clipped.weights["w"][0] == pytest.approx(0.1 * DP.clip / math.sqrt(4.14), rel=1e-6)
