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
fresh instance for every call, never a fixed or global seed; each noise coordinate is
the sum of four Gaussians halved, as Opacus's ``secure_mode`` draws it against
floating-point attacks (Holohan & Braghin 2021).
The default initialisation and dropout masks, which need no secrecy, run on PyTorch's
CPU generator forked for the call and seeded from ``os.urandom``: a caller's global seed
neither fixes them nor is advanced by a run.

Torch and Opacus are imported inside the functions, so importing this module costs
nothing where no DP-SGD runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput
from fednb.privacy import SecureNoise
from fednb.protocol._dpsgd import DPSGDSpec, LayerSpec
from fednb.typing import Array, Weights

if TYPE_CHECKING:
    import torch

__all__ = ["DPSGDResult", "build_model", "train_dpsgd"]

MAX_TORCH_THREADS = 2
"""Intra-op threads torch may use while training (the workers share small machines)."""


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


def train_dpsgd(spec: DPSGDSpec, data: xr.Dataset, weights: Weights | None = None) -> DPSGDResult:
    """Train the model ``spec`` describes on ``data`` with DP-SGD.

    Parameters
    ----------
    spec
        The model, loss and hyper-parameters (already approved by the owner).
    data
        A dataset holding ``spec.features`` (dims ``(example, ...)``) and ``spec.target``
        (dims ``(example,)`` or the output's shape), sharing their first dimension.
    weights
        Starting weights, the model's ``state_dict`` names and shapes; None keeps the
        default initialisation.

    Returns
    -------
    DPSGDResult
        The weights after ``spec.steps(n)`` noisy steps and what the accountant needs.

    Raises
    ------
    InvalidInput
        Missing variables, shapes that do not fit the model, non-finite values, targets
        outside what the loss accepts, or weights whose names or shapes differ.
    """
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), MAX_TORCH_THREADS))
    x, y = _inputs(spec, data)
    n = int(x.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(os.urandom(8), "little"))
        model = build_model(spec)
        if weights is not None:
            _load_weights(model, weights)
        _check_fits(spec, model, x, y)
        _dp_steps(spec, model, x, y)
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
        def add_noise(self) -> None:
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                shape = tuple(p.summed_grad.shape)
                noise = torch.from_numpy(sum(rng.gaussian(shape, std) for _ in range(4)) / 2.0)
                p.grad = (p.summed_grad + noise.to(p.summed_grad)).view_as(p)
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


def _inputs(spec: DPSGDSpec, data: xr.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The preprocessed features and the target as tensors, checked but never echoed."""
    import torch

    for name in (spec.features, spec.target):
        if name not in data.data_vars:
            have = sorted(map(str, data.data_vars))
            raise InvalidInput(f"the dataset has no variable {name!r}; it has {have}")
    feats, target = data[spec.features], data[spec.target]
    if not feats.dims or not target.dims or feats.dims[0] != target.dims[0]:
        raise InvalidInput(f"{spec.features!r} {feats.dims} and {spec.target!r} {target.dims} must share "
                           "their first (example) dimension")
    if feats.shape[0] == 0:
        raise InvalidInput("the dataset has no examples")
    x = np.asarray(feats.values, dtype=np.float64)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    x = _standardise(spec, x)
    if not np.all(np.isfinite(x)):
        raise InvalidInput(f"{spec.features!r} holds NaN or infinite values; impute or drop them first")
    return torch.from_numpy(x.astype(np.float32)), _target(spec, np.asarray(target.values))


def _standardise(spec: DPSGDSpec, x: Array) -> Array:
    """``(x - shift) / scale`` along the last dimension, with the spec's public constants."""
    for name, values in (("feature_shift", spec.feature_shift), ("feature_scale", spec.feature_scale)):
        if values is not None and len(values) not in (1, x.shape[-1]):
            raise InvalidInput(f"{name} has {len(values)} values; the features have {x.shape[-1]} "
                               "along their last dimension (give that many, or one)")
    shift = np.asarray(spec.feature_shift if spec.feature_shift is not None else [0.0])
    scale = np.asarray(spec.feature_scale if spec.feature_scale is not None else [1.0])
    out: Array = (x - shift) / scale
    return out


def _target(spec: DPSGDSpec, y: Array) -> torch.Tensor:
    import torch

    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise InvalidInput(f"target {spec.target!r} must be numeric, not {y.dtype}")
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise InvalidInput(f"target {spec.target!r} holds NaN or infinite values")
    if spec.loss == "cross_entropy":
        width = spec.output_width or 0
        if y.ndim != 1 or not np.all((y == np.round(y)) & (y >= 0) & (y < width)):
            raise InvalidInput(f"cross_entropy needs target {spec.target!r} of dims (example,) holding "
                               f"class indices 0..{width - 1}")
        return torch.from_numpy(y.astype(np.int64))
    if spec.loss == "bce_with_logits" and not np.all((y >= 0) & (y <= 1)):
        raise InvalidInput(f"bce_with_logits needs target {spec.target!r} in [0, 1]")
    return torch.from_numpy((y.reshape(-1, 1) if y.ndim == 1 else y).astype(np.float32))


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
