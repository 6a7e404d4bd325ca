"""The output policy: what may leave a run, checked in the trusted process.

The domain's parent applies it to what a sandboxed worker returned; ``run_on_mock`` and
``simulate`` apply the very same function to what the code returned in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fednb.protocol import ReasonCode, TensorSpec, Update

__all__ = ["OutputPolicy", "OutputRejected", "apply_output_policy"]


class OutputRejected(Exception):
    """A result failed the output policy; ``reason`` is a fixed reason code."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason: ReasonCode = reason
        self.detail = detail


@dataclass(frozen=True)
class OutputPolicy:
    """What a run may return.

    Parameters
    ----------
    weights
        The approved tensors (names, shapes, dtypes); None allows any numeric arrays.
    metrics
        Declared metrics and their bounds; undeclared metrics are dropped, declared ones
        clipped into their bounds.
    max_bytes
        Cap on the total size of returned tensors, bytes (default 64 MiB).
    """

    weights: dict[str, TensorSpec] | None = None
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_bytes: int = 64 << 20


def _check_weights(update: Update, policy: OutputPolicy) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if policy.weights is not None and set(update.weights) != set(policy.weights):
        raise OutputRejected("shape_mismatch", "returned tensor names differ from the approved")
    for name, arr in update.weights.items():
        if arr.dtype.kind not in "biuf":
            raise OutputRejected("invalid_output", f"tensor {name!r} is not numeric")
        if policy.weights is not None:
            spec = policy.weights[name]
            if list(arr.shape) != spec.shape:
                raise OutputRejected("shape_mismatch", f"tensor {name!r} has another shape")
            arr = arr.astype(spec.dtype, copy=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise OutputRejected("nonfinite_output", f"tensor {name!r} holds NaN or Inf")
        out[name] = np.asarray(arr, order="C")
    if sum(a.nbytes for a in out.values()) > policy.max_bytes:
        raise OutputRejected("output_too_large", "returned tensors exceed the size cap")
    return out


def apply_output_policy(update: Update, policy: OutputPolicy) -> Update:
    """Validate and clip ``update``; raise :class:`OutputRejected` with a reason code."""
    weights = _check_weights(update, policy)
    metrics: dict[str, float] = {}
    for name, (lo, hi) in policy.metrics.items():
        if name in update.metrics:
            value = update.metrics[name]
            if not math.isfinite(value):
                raise OutputRejected("nonfinite_output", f"metric {name!r} is NaN or Inf")
            metrics[name] = min(max(value, lo), hi)
    return Update(weights=weights, metrics=metrics)
