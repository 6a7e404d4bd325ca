"""Executing a remote function and applying the output policy: one path for all callers."""

from fednb.runtime._execute import call_function, compile_function, function_namespace
from fednb.runtime._params import check_params, check_weights, weight_specs
from fednb.runtime._policy import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    default_update,
    release,
    update_event,
)
from fednb.runtime._secagg_noise import SecAggInput, distributed_event, secagg_input

__all__ = [
    "OutputPolicy",
    "OutputRejected",
    "SecAggInput",
    "apply_output_policy",
    "call_function",
    "check_params",
    "check_weights",
    "compile_function",
    "default_update",
    "distributed_event",
    "function_namespace",
    "release",
    "secagg_input",
    "update_event",
    "weight_specs",
]
