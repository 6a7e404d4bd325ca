"""The output policy: what may leave a run, checked in the trusted process.

validate (names, shapes, dtypes, finiteness, size) → clip (declared metrics into their
bounds; with DP the update to L2 norm C) → noise (with DP: N(0, (zC)^2) on the update, and
N(0, (z Δm)^2) on the metric vector, Δm the norm of the metrics' ranges, from a CSPRNG).

The domain's parent applies it to what a sandboxed worker returned; ``run_on_mock`` and
``simulate`` apply the very same function to what the code returned in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fednb.kernels import all_finite
from fednb.privacy import ComposedEvent, Event, GaussianEvent, SecureNoise, clip_l2, gaussian_mechanism
from fednb.protocol import ClientDP, ReasonCode, TensorSpec, Update

__all__ = ["OutputPolicy", "OutputRejected", "apply_output_policy", "update_event"]


def update_event(dp: ClientDP, has_metrics: bool) -> Event:
    """The DP event of one ``update`` release under :func:`apply_output_policy`: the clipped
    update (sensitivity 2C, replace-one) and, when metrics are declared, the clipped metric
    vector (sensitivity: the norm of the metrics' ranges), both at noise multiplier z."""
    update = GaussianEvent(dp.noise_multiplier, sensitivity_factor=2.0)
    if not has_metrics:
        return update
    return ComposedEvent((update, GaussianEvent(dp.noise_multiplier, sensitivity_factor=1.0)))


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
    dp
        Client-level DP: clip the update to ``dp.clip`` and add Gaussian noise; None: no DP.
    defer_noise
        With ``dp``, for a result that leaves only through secure aggregation with
        distributed noise allowed: clip the update but add no noise to it here;
        :func:`fednb.runtime.secagg_input` adds the round's distributed share, or this
        full noise if the round cannot carry it. Metrics are noised here all the same.
    check_finite
        False only in ``simulate``, without ``dp``, where the round's mean checks the
        values of the update for NaN and infinity instead (one pass fewer over each update);
        a domain always checks them here.
    """

    weights: dict[str, TensorSpec] | None = None
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_bytes: int = 64 << 20
    dp: ClientDP | None = None
    defer_noise: bool = False
    check_finite: bool = True

    def __post_init__(self) -> None:
        if not self.check_finite and self.dp is not None:
            raise ValueError("a DP output policy checks the values itself: clipping NaN spreads it")


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
        if policy.check_finite and arr.dtype.kind == "f" and not all_finite(arr):
            raise OutputRejected("nonfinite_output", f"tensor {name!r} holds NaN or Inf")
        out[name] = np.asarray(arr, order="C")
    if sum(a.nbytes for a in out.values()) > policy.max_bytes:
        raise OutputRejected("output_too_large", "returned tensors exceed the size cap")
    return out


def _noise_metrics(metrics: dict[str, float], bounds: dict[str, tuple[float, float]], z: float,
                   noise: SecureNoise) -> dict[str, float]:
    # A missing metric would reveal something: every declared metric is released, at its
    # bound's midpoint when absent, so the released vector has a fixed shape.
    names = sorted(bounds)
    sens = math.sqrt(sum((bounds[k][1] - bounds[k][0]) ** 2 for k in names))
    noisy = noise.gaussian((len(names),), z * sens) if sens > 0 else np.zeros(len(names))
    values = [metrics.get(k, (bounds[k][0] + bounds[k][1]) / 2) for k in names]
    return {k: float(v + e) for k, v, e in zip(names, values, noisy, strict=True)}


def apply_output_policy(update: Update, policy: OutputPolicy,
                        noise: SecureNoise | None = None) -> Update:
    """Validate, clip and (with DP) noise ``update``; raise :class:`OutputRejected` with a
    reason code. ``noise`` is required when ``policy.dp`` is set."""
    weights = _check_weights(update, policy)
    metrics: dict[str, float] = {}
    for name, (lo, hi) in policy.metrics.items():
        if name in update.metrics:
            value = update.metrics[name]
            if not math.isfinite(value):
                raise OutputRejected("nonfinite_output", f"metric {name!r} is NaN or Inf")
            metrics[name] = min(max(value, lo), hi)
    if policy.dp is None:
        return Update(weights=weights, metrics=metrics)
    if noise is None:
        raise ValueError("a DP output policy needs a SecureNoise source")
    z = policy.dp.noise_multiplier
    if policy.defer_noise:
        noised = clip_l2(weights, policy.dp.clip)[0] if weights else {}
    else:
        noised = gaussian_mechanism(weights, policy.dp.clip, z, noise) if weights else {}
    if metrics or policy.metrics:
        metrics = _noise_metrics(metrics, policy.metrics, z, noise)
    return Update(weights={k: np.asarray(v) for k, v in noised.items()}, metrics=metrics)
