"""Trusted DP-SGD training of a model sent as data (the ``dp-sgd`` request kind).

The domain runs this code, not the scientist: it builds the ``torch.nn.Sequential`` a
:class:`~fednb.protocol._dpsgd.DPSGDSpec` describes and trains it with Opacus's
per-sample gradients (``GradSampleModule``) and clipping (``DPOptimizer``), following
Abadi et al. (2016), "Deep Learning with Differential Privacy". Each of
``spec.steps(n)`` steps takes a Poisson sample (every example joins with probability
``spec.sampling_rate(n)``), clips each example's gradient to ``max_grad_norm`` and adds
Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` to their sum,
so the run is exactly the mechanism the domain accounts. These are the pieces
``PrivacyEngine.make_private`` wires; they are wired here by hand because
``make_private`` samples at ``1 / ceil(n / batch_size)`` rather than the accounted
``batch_size / n``, and without ``secure_mode`` draws its Poisson samples from PyTorch's
global generator.

Randomness. Opacus's ``secure_mode`` needs ``torchcsprng``, which has no build for
current PyTorch, and a seeded ``torch.Generator`` is Mersenne Twister whose CPU seed
keeps only 32 bits. So the Poisson sampling and the noise here come from
:class:`fednb.privacy.SecureNoise` (ChaCha20 keyed with 256 bits from ``os.urandom``), a
fresh instance for every call, never a fixed or global seed. The noise on the summed
clipped gradients is :func:`fednb.privacy.grid_gaussian` (a discrete Gaussian on a
power-of-two grid, no floating-point attack), its grid chosen from one record's bound
``max_grad_norm``; the domain records each step as a
``ReplaceOneSubsampledGaussianEvent`` with ``sensitivity_factor=GRID_SLACK``.
The default initialisation and dropout masks, which need no secrecy, run on PyTorch's
CPU generator forked for the call and seeded from ``os.urandom``: a caller's global seed
neither fixes them nor is advanced by a run.

Nothing inside a run fails on the data. What could be checked from the public card
(variables, dims, fit, label range) is checked at submission
(:meth:`~fednb.protocol._dpsgd.DPSGDSpec.check_card`); inside a run a fixed per-record
rule applies instead:

- features: the rule of :func:`fednb.runtime._query.missing_rule`, with the card's bounds
  where it declares them (values clamped into them, infinities included); a missing (NaN)
  feature becomes its ``feature_shift`` (0 after standardisation: the public centre);
- target: missing becomes class 0 (``cross_entropy``), 0.5 (``bce_with_logits``) or the
  midpoint of its declared bounds (``mse``, else 0); otherwise rounded and clamped to
  0..k-1 (``cross_entropy``), clamped into [0, 1] (``bce_with_logits``) or into the
  declared bounds (``mse``);
- a per-sample gradient holding NaN or infinity (overflow, say, from the starting
  weights) is replaced by zero before clipping, never rejected;
- after each step the parameters are kept within +-1e30 (NaN to 0), a post-processing of
  the noised gradients that keeps the released weights finite whatever the data.

Torch and Opacus are imported inside the functions, so importing this module costs
nothing where no DP-SGD runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput
from fednb.privacy import (
    GRID_SLACK,
    Event,
    RepeatedEvent,
    ReplaceOneSubsampledGaussianEvent,
    SecureNoise,
    grid_gaussian,
)
from fednb.protocol import DPSGDSpec, LayerSpec
from fednb.runtime._query import missing_rule
from fednb.typing import Array, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["DPSGDResult", "build_model", "dpsgd_event", "train_dpsgd"]

MAX_TORCH_THREADS = 2
"""Intra-op threads torch may use while training (the workers share small machines)."""
WEIGHT_LIMIT = 1e30
"""Parameters are kept within +-WEIGHT_LIMIT after each step (float32 ends near 3.4e38)."""

Bounds = Mapping[str, tuple[float, float] | None]
"""Declared bounds per variable (from the dataset card), None where none are declared."""


@dataclass(frozen=True)
class DPSGDResult:
    """What one DP-SGD run produced.

    Attributes
    ----------
    weights
        The trained model's ``state_dict`` as float32 arrays (names like ``"0.weight"``).
    steps
        Noisy optimiser steps taken, ``spec.steps(num_examples)``.
    sampling_rate
        Poisson sampling rate of each step, ``spec.sampling_rate(num_examples)``.
    noise_multiplier
        Noise standard deviation over the clipping bound, as in the spec.
    num_examples
        Examples in the training data (rows along the first dimension).
    train_loss
        Mean loss of the trained model over all training examples. Not private: the
        domain must noise it as a declared metric or hold it for the owner.
    """

    weights: Weights
    steps: int
    sampling_rate: float
    noise_multiplier: float
    num_examples: int
    train_loss: float


def dpsgd_event(spec: DPSGDSpec, n: int) -> Event:
    """The DP event of one training on ``n`` examples: ``spec.steps(n)`` replace-one
    Poisson-subsampled Gaussian steps, the noise grid's rounding charged (``GRID_SLACK``)."""
    step = ReplaceOneSubsampledGaussianEvent(spec.sampling_rate(n), spec.noise_multiplier, GRID_SLACK)
    return RepeatedEvent(step, spec.steps(n))


def build_model(spec: DPSGDSpec) -> torch.nn.Sequential:
    """The ``torch.nn.Sequential`` that ``spec.layers`` describes.

    Parameters are initialised by PyTorch's defaults (data-independent); load weights
    with ``load_state_dict`` or pass them to :func:`train_dpsgd` to start elsewhere.
    """
    import torch

    return torch.nn.Sequential(*(_layer(layer) for layer in spec.layers))


def _layer(layer: LayerSpec) -> torch.nn.Module:
    import torch

    if layer.type == "linear":
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if layer.type == "dropout":
        return torch.nn.Dropout(layer.p)
    simple: dict[str, type[torch.nn.Module]] = {
        "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
        "flatten": torch.nn.Flatten}
    return simple[layer.type]()


def train_dpsgd(spec: DPSGDSpec, data: xr.Dataset, weights: Weights | None = None, *,
                bounds: Bounds | None = None, example_dim: str | None = None) -> DPSGDResult:
    """Train the model ``spec`` describes on ``data`` with DP-SGD.

    Parameters
    ----------
    spec
        The model, loss and hyper-parameters (already approved by the owner).
    data
        A dataset holding ``spec.features`` and ``spec.target``, both with the example
        dimension (anywhere among their dims: it is moved first).
    weights
        Starting weights, the model's ``state_dict`` names and shapes; None keeps the
        default initialisation.
    bounds
        The card's declared bounds of the features and target (None: none declared).
    example_dim
        The card's example dimension; None takes the features' first dimension.

    Returns
    -------
    DPSGDResult
        The weights after ``spec.steps(n)`` noisy steps and what the accountant needs.

    Raises
    ------
    InvalidInput
        Only on structure (public): missing variables, shapes that do not fit the model,
        or starting weights whose names or shapes differ or that are not finite. Values
        never raise (the per-record rule of the module docstring).
    """
    import torch

    threads = torch.get_num_threads()  # process-wide: put back on return (a notebook's, a test's)
    torch.set_num_threads(min(threads, MAX_TORCH_THREADS))
    try:
        x, y = _inputs(spec, data, bounds or {}, example_dim)
        n = int(x.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(os.urandom(8), "little"))
            model = build_model(spec)
            if weights is not None:
                _load_weights(model, weights)
            _check_fits(spec, model, x, y)
            _dp_steps(spec, model, x, y)
    finally:
        torch.set_num_threads(threads)
    return DPSGDResult(
        weights={k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()},
        steps=spec.steps(n), sampling_rate=spec.sampling_rate(n),
        noise_multiplier=spec.noise_multiplier, num_examples=n,
        train_loss=_mean_loss(spec, model, x, y))


def _dp_steps(spec: DPSGDSpec, model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> None:
    """Run ``spec.steps(n)`` Poisson-sampled, clipped, noised steps on ``model`` in place."""
    import torch
    from opacus import GradSampleModule  # type: ignore[import-untyped]
    from opacus.validators import ModuleValidator  # type: ignore[import-untyped]

    model.train()
    ModuleValidator.validate(model, strict=True)
    n = int(x.shape[0])
    rate = spec.sampling_rate(n)
    rng = SecureNoise()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    gsm.forbid_grad_accumulation()  # as make_private does under Poisson sampling
    optimizer = _dp_optimizer(spec, model, rng, expected_batch_size=min(spec.batch_size, n))
    loss_fn = _loss(spec)
    with warnings.catch_warnings():
        # Opacus's backward hooks on a first layer whose input needs no gradient: harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        try:
            for _ in range(spec.steps(n)):
                # Never skip a step, even on an empty sample: the noise is what DP rests on.
                idx = torch.from_numpy(np.flatnonzero(rng.uniform(n) < rate))
                optimizer.zero_grad()
                loss_fn(gsm(x[idx]), y[idx]).backward()
                optimizer.step()
                with torch.no_grad():  # post-processing of the noised step: keeps weights finite
                    for p in model.parameters():
                        p.nan_to_num_(0.0, WEIGHT_LIMIT, -WEIGHT_LIMIT).clamp_(-WEIGHT_LIMIT, WEIGHT_LIMIT)
        finally:
            gsm.to_standard_module()  # removes Opacus's hooks and attributes


def _dp_optimizer(spec: DPSGDSpec, model: torch.nn.Module, rng: SecureNoise, expected_batch_size: int) -> Any:
    """Opacus's ``DPOptimizer`` over SGD or Adam, drawing its noise from ``rng``."""
    import torch
    from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]
    from opacus.optimizers.optimizer import (  # type: ignore[import-untyped]
        _check_processed_flag,
        _mark_as_processed,
    )

    class _NoiseFromCSPRNG(DPOptimizer):  # type: ignore[misc]
        def clip_and_accumulate(self) -> None:
            # a per-sample gradient with NaN or infinity becomes zero, all its parameters at once
            samples = [p.grad_sample for p in self.params]
            if samples and len(samples[0]):
                bad = torch.zeros(len(samples[0]), dtype=torch.bool, device=samples[0].device)
                for g in samples:
                    bad |= ~torch.isfinite(g.reshape(len(g), -1)).all(dim=1)
                for g in samples:
                    g[bad] = 0.0
            super().clip_and_accumulate()

        def add_noise(self) -> None:
            # one replace-one release of all summed gradients: a record moves the sum by 2C
            for p in self.params:
                _check_processed_flag(p.summed_grad)
            c = self.max_grad_norm
            sums = {str(i): p.summed_grad.detach().cpu().numpy().astype(np.float64)
                    for i, p in enumerate(self.params)}
            # the grid from one record's bound C: a record's term moves the rounded sum by at
            # most C + gamma sqrt(d) <= C (1 + 2^-10), which the event's GRID_SLACK charges
            noised = grid_gaussian(sums, c, self.noise_multiplier * c, rng)
            for i, p in enumerate(self.params):
                p.grad = torch.from_numpy(np.asarray(noised[str(i)])).to(p.summed_grad).view_as(p)
                _mark_as_processed(p.summed_grad)

    base: torch.optim.Optimizer
    if spec.optimizer == "adam":
        base = torch.optim.Adam(model.parameters(), lr=spec.lr)
    else:
        base = torch.optim.SGD(model.parameters(), lr=spec.lr)
    return _NoiseFromCSPRNG(base, noise_multiplier=spec.noise_multiplier, max_grad_norm=spec.max_grad_norm,
                            expected_batch_size=expected_batch_size, loss_reduction="mean")


def _loss(spec: DPSGDSpec) -> torch.nn.Module:
    import torch

    losses: dict[str, type[torch.nn.Module]] = {
        "bce_with_logits": torch.nn.BCEWithLogitsLoss, "cross_entropy": torch.nn.CrossEntropyLoss,
        "mse": torch.nn.MSELoss}
    return losses[spec.loss]()


def _mean_loss(spec: DPSGDSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float(_loss(spec)(model(x), y))


def _load_weights(model: torch.nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into ``model``, refusing other names, shapes or non-finite values."""
    import torch

    state = model.state_dict()
    if set(weights) != set(state):
        raise InvalidInput(f"weights are named {sorted(weights)}; this model has {sorted(state)}")
    for name, have in state.items():
        got = np.asarray(weights[name])
        if tuple(got.shape) != tuple(have.shape):
            raise InvalidInput(f"weight {name!r} has shape {list(got.shape)}; the model needs "
                               f"{list(have.shape)}")
        if not np.issubdtype(got.dtype, np.number) or not np.all(np.isfinite(got)):
            raise InvalidInput(f"weight {name!r} must hold finite numbers")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()})


def _inputs(spec: DPSGDSpec, data: xr.Dataset, bounds: Bounds,
            example_dim: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and target as tensors, brought into range by the per-record rule."""
    import torch

    for name in (spec.features, spec.target):
        if name not in data.data_vars:
            have = sorted(map(str, data.data_vars))
            raise InvalidInput(f"the dataset has no variable {name!r}; it has {have}")
    feats, target = data[spec.features], data[spec.target]
    ex = example_dim or (str(feats.dims[0]) if feats.dims else "")
    for var in (feats, target):
        if ex not in var.dims:
            raise InvalidInput(f"{var.name!r} has dims {var.dims}, without the example dimension {ex!r}")
    feats = feats.transpose(ex, ...)
    target = target.transpose(ex, ...)
    if feats.shape[0] == 0:
        raise InvalidInput("the dataset has no examples")
    lo, hi = bounds.get(spec.features) or (-np.inf, np.inf)
    x, present = missing_rule(np.asarray(feats.values), lo, hi, np.nan)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    x = np.where(present.reshape(x.shape), _standardise(spec, x), 0.0)  # missing: the public centre
    return torch.from_numpy(x.astype(np.float32)), _target(spec, np.asarray(target.values),
                                                          bounds.get(spec.target))


def _standardise(spec: DPSGDSpec, x: Array) -> Array:
    """``(x - shift) / scale`` along the last dimension, with the spec's public constants."""
    for name, values in (("feature_shift", spec.feature_shift), ("feature_scale", spec.feature_scale)):
        if values is not None and len(values) not in (1, x.shape[-1]):
            raise InvalidInput(f"{name} has {len(values)} values; the features have {x.shape[-1]} "
                               "along their last dimension (give that many, or one)")
    shift = np.asarray(spec.feature_shift if spec.feature_shift is not None else [0.0])
    scale = np.asarray(spec.feature_scale if spec.feature_scale is not None else [1.0])
    with np.errstate(all="ignore"):  # infinities without declared bounds: their gradients become 0
        out: Array = (x - shift) / scale
    return out


def _target(spec: DPSGDSpec, y: Array, bounds: tuple[float, float] | None) -> torch.Tensor:
    """The target by the fixed rule: missing to a fixed value, the rest into the loss's range."""
    import torch

    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise InvalidInput(f"target {spec.target!r} must be numeric, not {y.dtype}")
    if spec.loss == "cross_entropy":
        k = spec.output_width or 0
        if y.ndim != 1:
            raise InvalidInput(f"cross_entropy needs target {spec.target!r} of dims (example,)")
        values, _ = missing_rule(y, 0.0, k - 1.0, 0.0)
        return torch.from_numpy(np.round(values).astype(np.int64))
    if spec.loss == "bce_with_logits":
        values, _ = missing_rule(y, 0.0, 1.0, 0.5)
    else:
        lo, hi = bounds or (-np.inf, np.inf)
        values, _ = missing_rule(y, lo, hi, (lo + hi) / 2.0 if bounds else 0.0)
    return torch.from_numpy((values.reshape(-1, 1) if values.ndim == 1 else values).astype(np.float32))


def _check_fits(spec: DPSGDSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse data the model cannot take, by a forward pass on one example."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as e:
        raise InvalidInput(f"features {spec.features!r} of shape (example, {tuple(x.shape[1:])}) per "
                           "example do not fit the model's first layer") from e
    want = tuple(out.shape[1:-1]) if spec.loss == "cross_entropy" else tuple(out.shape[1:])
    if tuple(y.shape[1:]) != want:
        raise InvalidInput(f"target {spec.target!r} has shape (example, {tuple(y.shape[1:])}) per example; "
                           f"the model's output needs {want} for {spec.loss}")
