"""The one execution path and the output policy."""

from __future__ import annotations

import numpy as np
import pytest

from fednb.errors import InvalidInput, ParamsOutOfSchema
from fednb.protocol import ParamSpec, TensorSpec, Update
from fednb.runtime import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    call_function,
    check_params,
    check_weights,
    compile_function,
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
