"""The output policy: what may leave a run, checked in the trusted process.

validate (names, shapes, dtypes, finiteness, size) → clip (declared metrics into their
bounds; with DP the update to L2 norm C) → noise (with DP: the update released on a grid
with discrete Gaussian noise of standard deviation zC, sensitivity 2C; the metric vector
likewise at z Δm, Δm the norm of the metrics' ranges; see ``fednb.privacy.grid_gaussian``)
→ cast to the approved dtypes.

For a DP request (``OutputPolicy.fallback``) nothing the code does may show through a
status or a reason: :func:`release` replaces a missing or rejected result by
:func:`default_update` (zeros of the approved shapes, metric midpoints), clipped and noised
like any other, and hands the real reason to the caller for the owner's eyes only.

The domain's parent applies it to what a sandboxed worker returned; ``run_on_mock`` and
``simulate`` apply the very same functions to what the code returned in-process, with one
step moved: a virtual hospital's update without DP, compression or secure aggregation goes
through :func:`check_structure` (everything but the scan of its values) straight into the
driver's :func:`fednb.strategies.admit`, whose pass over the round is then its one scan.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fednb.errors import InvalidInput
from fednb.kernels import all_finite
from fednb.privacy import (
    GRID_SLACK,
    ComposedEvent,
    Event,
    GaussianEvent,
    SecureNoise,
    clip_l2,
    gaussian_mechanism,
    grid_gaussian,
)
from fednb.protocol import ClientDP, ReasonCode, TensorSpec, Update

__all__ = ["OutputPolicy", "OutputRejected", "apply_output_policy", "check_structure", "default_update",
           "release", "update_event"]

NEEDS_WEIGHT_SPEC = ("a DP output policy needs the approved weight spec: the released names, shapes and "
                     "dtypes come from it, never from the code")


def update_event(dp: ClientDP, has_metrics: bool) -> Event:
    """The DP event of one ``update`` release under :func:`apply_output_policy`: the clipped
    update (sensitivity 2C, replace-one) and, when metrics are declared, the clipped metric
    vector (sensitivity: the norm of the metrics' ranges), both at noise multiplier z, each
    sensitivity times ``GRID_SLACK`` for the rounding to the noise grid."""
    update = GaussianEvent(dp.noise_multiplier, sensitivity_factor=2.0 * GRID_SLACK)
    if not has_metrics:
        return update
    return ComposedEvent((update, GaussianEvent(dp.noise_multiplier, sensitivity_factor=GRID_SLACK)))


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
        Client-level DP: clip the update to ``dp.clip`` and add Gaussian noise on a grid;
        None: no DP. Needs ``weights`` (else ValueError): the released structure comes from
        the approved spec.
    defer_noise
        With ``dp``, for a result that leaves only through secure aggregation with
        distributed noise allowed: clip the update but add no noise to it here;
        :func:`fednb.runtime.secagg_input` adds the round's distributed share, or this
        full noise if the round cannot carry it. Metrics are noised here all the same.
    fallback
        A DP request: a missing or rejected result is replaced by the default release
        (:func:`release`). Implied (forced True) by ``dp``; the ``dp-sgd`` kind sets it
        without ``dp`` (its noise is added during training). Needs ``weights``.
    """

    weights: dict[str, TensorSpec] | None = None
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_bytes: int = 64 << 20
    dp: ClientDP | None = None
    defer_noise: bool = False
    fallback: bool = False

    def __post_init__(self) -> None:
        if self.dp is not None and self.weights is None:
            raise ValueError(NEEDS_WEIGHT_SPEC)
        if self.dp is not None:
            object.__setattr__(self, "fallback", True)
        if self.fallback and self.weights is None:
            raise ValueError("a fallback output policy needs the approved weight spec: the default "
                             "release is zeros of its shapes and dtypes")


def _tensors(update: Update, policy: OutputPolicy) -> Iterator[tuple[str, np.ndarray]]:
    """The update's tensors in the spec's order (not one the code chose), each checked for
    its name, numeric dtype and shape and cast to its approved dtype; values not scanned."""
    if policy.weights is not None and set(update.weights) != set(policy.weights):
        raise OutputRejected("shape_mismatch", "returned tensor names differ from the approved")
    for name in policy.weights or update.weights:
        arr = update.weights[name]
        if arr.dtype.kind not in "biuf":
            raise OutputRejected("invalid_output", f"tensor {name!r} is not numeric")
        if policy.weights is not None:
            spec = policy.weights[name]
            if list(arr.shape) != spec.shape:
                raise OutputRejected("shape_mismatch", f"tensor {name!r} has another shape")
            with np.errstate(over="ignore"):  # a value beyond the dtype becomes Inf: refused by the scan
                arr = arr.astype(spec.dtype, copy=False)
        yield name, np.asarray(arr, order="C")


def _capped(weights: dict[str, np.ndarray], policy: OutputPolicy) -> dict[str, np.ndarray]:
    if sum(a.nbytes for a in weights.values()) > policy.max_bytes:
        raise OutputRejected("output_too_large", "returned tensors exceed the size cap")
    return weights


def _check_weights(update: Update, policy: OutputPolicy) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, arr in _tensors(update, policy):
        if arr.dtype.kind == "f" and not all_finite(arr):
            raise OutputRejected("nonfinite_output", f"tensor {name!r} holds NaN or Inf")
        out[name] = arr
    return _capped(out, policy)


def _checked_metrics(update: Update, policy: OutputPolicy) -> dict[str, float]:
    """The declared metrics present, finite and clipped into their bounds."""
    metrics: dict[str, float] = {}
    for name, (lo, hi) in policy.metrics.items():
        if name in update.metrics:
            value = update.metrics[name]
            if not math.isfinite(value):
                raise OutputRejected("nonfinite_output", f"metric {name!r} is NaN or Inf")
            metrics[name] = min(max(value, lo), hi)
    return metrics


def check_structure(update: Update, policy: OutputPolicy) -> Update:
    """What :func:`apply_output_policy` releases under a policy without DP or fallback,
    except for one step: the tensors' values are not scanned for NaN and infinity.

    Names, numeric dtypes and shapes are checked and each tensor cast to its approved
    dtype, the size cap applies, and the declared metrics are checked finite and clipped,
    with the same reason codes. For an update whose values go, unchanged, straight into
    the round's one finiteness check, :func:`fednb.strategies.admit`, in the same process:
    a virtual hospital's in ``simulate`` without DP, compression or secure aggregation
    (``LocalParticipant.run``). There the scan is admit's, made once in the pass that also
    sums the round (an update it refuses is recorded ``nonfinite_output``, as a domain's
    policy refuses it). Anything that leaves a process, is clipped, noised, compressed or
    masked goes through :func:`apply_output_policy`.

    Raises
    ------
    OutputRejected
        As :func:`apply_output_policy`, but never for NaN or infinity in a tensor.
    ValueError
        ``policy`` has DP or a fallback: a DP release scans the values itself (clipping NaN
        spreads it, and a default release must never carry one).
    """
    if policy.dp is not None or policy.fallback:
        raise ValueError("a DP or fallback output policy goes through apply_output_policy, which scans "
                         "the values before it clips and releases them")
    weights = _capped(dict(_tensors(update, policy)), policy)
    return Update(weights=weights, metrics=_checked_metrics(update, policy))


def _noise_metrics(metrics: dict[str, float], bounds: dict[str, tuple[float, float]], z: float,
                   noise: SecureNoise) -> dict[str, float]:
    # A missing metric would reveal something: every declared metric is released, at its
    # bound's midpoint when absent, so the released vector has a fixed shape.
    names = sorted(bounds)
    sens = math.sqrt(sum((bounds[k][1] - bounds[k][0]) ** 2 for k in names))
    values = np.array([metrics.get(k, (bounds[k][0] + bounds[k][1]) / 2) for k in names], dtype=np.float64)
    # with every bound a single point (sens 0) the values are public constants
    out = grid_gaussian({"m": values}, sens, z * sens, noise)["m"] if sens > 0 else values
    return {k: float(v) for k, v in zip(names, out, strict=True)}


def apply_output_policy(update: Update, policy: OutputPolicy,
                        noise: SecureNoise | None = None) -> Update:
    """Validate, clip and (with DP) noise ``update``; raise :class:`OutputRejected` with a
    reason code. ``noise`` is required when ``policy.dp`` is set.

    With DP the update is clipped to C and released by ``fednb.privacy.grid_gaussian``
    (sensitivity 2C, standard deviation zC), then each tensor is cast to its approved
    dtype (post-processing of a grid value); the metric vector is released the same way.
    The release is accounted by :func:`update_event`.
    """
    weights = _check_weights(update, policy)
    metrics = _checked_metrics(update, policy)
    if policy.dp is None:
        return Update(weights=weights, metrics=metrics)
    if noise is None:
        raise ValueError("a DP output policy needs a SecureNoise source")
    assert policy.weights is not None  # __post_init__
    z = policy.dp.noise_multiplier
    if policy.defer_noise:
        noised = clip_l2(weights, policy.dp.clip)[0] if weights else {}
    else:
        noised = gaussian_mechanism(weights, policy.dp.clip, z, noise) if weights else {}
    if metrics or policy.metrics:
        metrics = _noise_metrics(metrics, policy.metrics, z, noise)
    return Update(weights={k: np.asarray(v, dtype=policy.weights[k].dtype) for k, v in noised.items()},
                  metrics=metrics)


def default_update(policy: OutputPolicy) -> Update:
    """The data-independent stand-in for a DP run's result: zeros of the approved weight
    spec's shapes and dtypes, each declared metric at its bounds' midpoint.

    Raises
    ------
    ValueError
        ``policy.weights`` is None.
    """
    if policy.weights is None:
        raise ValueError("the default release needs the approved weight spec")
    return Update(weights={k: np.zeros(spec.shape, dtype=spec.dtype) for k, spec in policy.weights.items()},
                  metrics={k: (lo + hi) / 2 for k, (lo, hi) in policy.metrics.items()})


def release(update: Update | None, policy: OutputPolicy, noise: SecureNoise | None,
            reason: ReasonCode = "ok") -> tuple[Update, ReasonCode]:
    """What leaves a run: ``update`` through the output policy, or with ``policy.fallback``
    the default release in its place when it is missing or rejected.

    Parameters
    ----------
    update
        The run's result, or None when the run produced none (it raised, timed out,
        crashed).
    policy
        The output policy of the request.
    noise
        The secure noise source (required with ``policy.dp``).
    reason
        Why ``update`` is None (a fixed reason code).

    Returns
    -------
    released : Update
        With ``policy.fallback``, always a release of the approved structure:
        ``apply_output_policy(update)``, or ``apply_output_policy(default_update(policy))``
        (clipped and noised like any other) if ``update`` is None or rejected.
    reason : ReasonCode
        The real outcome: ``"ok"``, ``reason`` when ``update`` is None, or the rejection's
        reason. For the owner and the audit log only: with DP it must not reach the scientist.

    Raises
    ------
    OutputRejected
        Without ``policy.fallback`` only, as :func:`apply_output_policy` (and for a missing
        ``update``, with ``reason``).
    """
    if not policy.fallback:
        if update is None:
            raise OutputRejected("invalid_output" if reason == "ok" else reason, "the run returned no result")
        return apply_output_policy(update, policy, noise), "ok"
    if update is not None:
        try:
            return apply_output_policy(update, policy, noise), "ok"
        except OutputRejected as rej:
            reason = rej.reason
        except InvalidInput:  # values clipping cannot take: a rejection like any other
            reason = "invalid_output"
    # the default is the parent's own, of the approved size: the cap on what code returns
    # does not apply to it, so that it is never refused (a spec above the cap is a request
    # to refuse when it is filed, not a run to fail)
    uncapped = dataclasses.replace(policy, max_bytes=sys.maxsize)
    return apply_output_policy(default_update(policy), uncapped, noise), reason
