"""Executing a remote function and applying the output policy: one path for all callers;
the request kinds (:data:`KINDS`); queries, DP-SGD training and the stats steps.

``import fednb.runtime`` runs in the sandbox's worker and in the scientist's kernel, so it
stays light: queries, DP-SGD (torch), the stats steps (pandas, formulaic, scipy) and the
GPU helpers load on first use of one of their names (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fednb.runtime._execute import call_function, compile_function, function_namespace
from fednb.runtime._kinds import KINDS, Kind, RequestSpec, Spec, kind_of
from fednb.runtime._params import check_params, check_weights, weight_specs
from fednb.runtime._policy import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    check_structure,
    default_update,
    release,
    update_event,
)
from fednb.runtime._secagg_noise import SecAggInput, distributed_event, secagg_input

if TYPE_CHECKING:
    from fednb.runtime._dpsgd import DPSGDResult, build_model, dpsgd_event, train_dpsgd
    from fednb.runtime._gpu import device_in_use, kernels_device, prepare_gpu
    from fednb.runtime._query import check_query, default_query_release, query_events, run_query
    from fednb.runtime._stats import StatsPart, check_stats, compute, default, row_mask
    from fednb.runtime._stats_cox import efron
    from fednb.runtime._stats_glm import design_columns

__all__ = [
    "KINDS",
    "DPSGDResult",
    "Kind",
    "OutputPolicy",
    "OutputRejected",
    "RequestSpec",
    "SecAggInput",
    "Spec",
    "StatsPart",
    "apply_output_policy",
    "build_model",
    "call_function",
    "check_params",
    "check_query",
    "check_stats",
    "check_structure",
    "check_weights",
    "compile_function",
    "compute",
    "default",
    "default_query_release",
    "default_update",
    "design_columns",
    "device_in_use",
    "distributed_event",
    "dpsgd_event",
    "efron",
    "function_namespace",
    "kernels_device",
    "kind_of",
    "prepare_gpu",
    "query_events",
    "release",
    "row_mask",
    "run_query",
    "secagg_input",
    "train_dpsgd",
    "update_event",
    "weight_specs",
]

_LAZY = {
    "fednb.runtime._dpsgd": ("DPSGDResult", "build_model", "dpsgd_event", "train_dpsgd"),
    "fednb.runtime._gpu": ("device_in_use", "kernels_device", "prepare_gpu"),
    "fednb.runtime._query": ("check_query", "default_query_release", "query_events", "run_query"),
    "fednb.runtime._stats": ("StatsPart", "check_stats", "compute", "default", "row_mask"),
    "fednb.runtime._stats_cox": ("efron",),
    "fednb.runtime._stats_glm": ("design_columns",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fednb.runtime' has no attribute {name!r}")
