"""Checks of run inputs against what the owner approved (shared by domain and notebook)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from fednb.errors import ParamsOutOfSchema
from fednb.protocol import ParamSpec, TensorSpec
from fednb.typing import Weights

__all__ = ["check_params", "check_weights", "dtype_name", "weight_specs"]


def check_params(schema: Mapping[str, ParamSpec], params: Mapping[str, Any]) -> None:
    """Refuse parameters that are unknown or outside their approved type and bounds."""
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ParamsOutOfSchema(f"parameters {unknown} were not approved; approved: {sorted(schema)}")
    for name, value in params.items():
        why = schema[name].check(name, value)
        if why is not None:
            raise ParamsOutOfSchema(why)


def check_weights(specs: Mapping[str, TensorSpec] | None, weights: Weights | None) -> None:
    """Refuse weights whose names, shapes or dtypes differ from the approved ones."""
    if specs is None:
        if weights:
            raise ParamsOutOfSchema("this request was approved without weights; file a new "
                                    "request with weights=... to send them")
        return
    if weights is None:
        raise ParamsOutOfSchema("this request was approved with weights: send them")
    if set(weights) != set(specs):
        raise ParamsOutOfSchema(f"weight names {sorted(weights)} differ from the approved "
                                f"{sorted(specs)}")
    for name, want in specs.items():
        got = weights[name]
        if list(got.shape) != want.shape or dtype_name(got.dtype) != want.dtype:
            raise ParamsOutOfSchema(f"weight {name!r} is {got.dtype}{list(got.shape)}; approved "
                                    f"{want.dtype}{want.shape}")


def weight_specs(weights: Weights) -> dict[str, TensorSpec]:
    """The shape and dtype of each tensor, as a request declares them."""
    return {k: TensorSpec(shape=list(v.shape), dtype=dtype_name(v.dtype)) for k, v in weights.items()}


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: np.dtype[Any]) -> str:
    """``str(dtype)`` ("float32" ...), cached: NumPy 2 spends tens of microseconds on it,
    which per run and tensor adds up to milliseconds a round over many hospitals."""
    return str(dtype)
