"""The ``dp-sgd`` request kind: a model sent as data, trained by the domain with DP-SGD.

The scientist sends no code. A :class:`DPSGDSpec` names a ``torch.nn.Sequential`` of
standard layers (:data:`LayerSpec`), a loss from a fixed list and the hyper-parameters;
the domain's runtime builds the model and trains it with Opacus: Poisson sampling at
rate ``q = batch_size / n`` and per-sample clipping to ``max_grad_norm``, with Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` added to the sum of
clipped gradients at each of ``steps(n)`` steps (Abadi et al. 2016, "Deep Learning with
Differential Privacy"). The domain accounts the run as ``steps(n)`` compositions of the
Poisson-subsampled Gaussian mechanism with ``sampling_rate(n)`` and ``noise_multiplier``.

Seeds are refused: the noise and the sampling draw fresh entropy from the operating
system for every run, so nobody can replay or predict them.

Examples
--------
>>> spec = DPSGDSpec.model_validate({
...     "layers": [{"type": "linear", "in_features": 30, "out_features": 1}],
...     "loss": "bce_with_logits", "features": "x", "target": "y", "epochs": 10,
...     "batch_size": 64, "lr": 0.5, "optimizer": "sgd", "max_grad_norm": 1.0,
...     "noise_multiplier": 1.1})
>>> spec.sampling_rate(455), spec.steps(455)
(0.14065934065934066, 80)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fednb.errors import InvalidInput
from fednb.protocol._models import DatasetCard, TensorSpec

__all__ = [
    "MAX_FEATURES",
    "MAX_LAYERS",
    "MAX_PARAMETERS",
    "DPSGDSpec",
    "DropoutLayer",
    "FlattenLayer",
    "LayerSpec",
    "LinearLayer",
    "ReluLayer",
    "SigmoidLayer",
    "TanhLayer",
]

MAX_FEATURES = 65536
"""Largest ``in_features`` / ``out_features`` of one linear layer."""
MAX_LAYERS = 32
"""Most layers in one model."""
MAX_PARAMETERS = 2**24
"""Most trainable parameters in one model (64 MiB of float32)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinearLayer(_Model):
    """``torch.nn.Linear(in_features, out_features, bias)``."""

    type: Literal["linear"]
    in_features: int = Field(ge=1, le=MAX_FEATURES)
    out_features: int = Field(ge=1, le=MAX_FEATURES)
    bias: bool = True

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of this layer."""
        return self.out_features * (self.in_features + int(self.bias))


class ReluLayer(_Model):
    """``torch.nn.ReLU()``."""

    type: Literal["relu"]


class TanhLayer(_Model):
    """``torch.nn.Tanh()``."""

    type: Literal["tanh"]


class SigmoidLayer(_Model):
    """``torch.nn.Sigmoid()``."""

    type: Literal["sigmoid"]


class DropoutLayer(_Model):
    """``torch.nn.Dropout(p)``: ``p`` is the probability of zeroing a unit, in [0, 1)."""

    type: Literal["dropout"]
    p: float = Field(ge=0.0, lt=1.0)


class FlattenLayer(_Model):
    """``torch.nn.Flatten()``: keeps the example dimension, flattens the rest."""

    type: Literal["flatten"]


LayerSpec = Annotated[
    LinearLayer | ReluLayer | TanhLayer | SigmoidLayer | DropoutLayer | FlattenLayer,
    Field(discriminator="type"),
]
"""One layer of a model sent as data; ``type`` selects which."""

_Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class DPSGDSpec(_Model):
    """A model as data and the hyper-parameters of its DP-SGD training.

    Parameters
    ----------
    layers
        The layers of a ``torch.nn.Sequential``, first to last (1 to 32, at least one
        linear; widths of consecutive linear layers must agree).
    loss
        ``bce_with_logits`` (target in [0, 1], same shape as the output),
        ``cross_entropy`` (target: class indices 0..out_features-1) or ``mse``.
    features, target
        Dataset variables holding the inputs, dims ``(example, ...)``, and the target,
        dims ``(example,)`` or the output's shape.
    epochs
        Passes over the data, 1 to 1000; one epoch is ``ceil(n / batch_size)`` steps.
    batch_size
        Expected Poisson batch size, examples (each example joins a step's batch with
        probability ``batch_size / n``).
    lr
        Learning rate of ``optimizer``.
    optimizer
        ``sgd`` (plain SGD) or ``adam`` (default betas).
    max_grad_norm
        Per-sample L2 clipping bound C of the gradient (over all parameters).
    noise_multiplier
        Noise standard deviation divided by C; fixes epsilon together with the sampling
        rate and the number of steps.
    feature_shift, feature_scale
        Public preprocessing constants (for example from a DP query): inputs become
        ``(x - shift) / scale`` along their last dimension. One value applies to all.
        Default: no shift (0), no scaling (1).
    """

    layers: list[LayerSpec] = Field(min_length=1, max_length=MAX_LAYERS)
    loss: Literal["bce_with_logits", "cross_entropy", "mse"]
    features: str = Field(min_length=1, max_length=256)
    target: str = Field(min_length=1, max_length=256)
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=1_000_000)
    lr: float = Field(gt=0.0, le=100.0, allow_inf_nan=False)
    optimizer: Literal["sgd", "adam"] = "sgd"
    max_grad_norm: float = Field(gt=0.0, le=1e6, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0.0, le=1e4, allow_inf_nan=False)
    feature_shift: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None, min_length=1, max_length=MAX_FEATURES)
    feature_scale: list[_Positive] | None = Field(default=None, min_length=1, max_length=MAX_FEATURES)

    @model_validator(mode="before")
    @classmethod
    def _refuse_seed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "seed" in data:
            raise ValueError("'seed' is not accepted: DP-SGD noise and sampling draw fresh entropy "
                             "from the operating system's CSPRNG for every run; remove the field")
        return data

    @model_validator(mode="after")
    def _check(self) -> DPSGDSpec:
        _check_widths(self.layers)
        total = sum(layer.num_parameters for layer in self.layers if isinstance(layer, LinearLayer))
        if total > MAX_PARAMETERS:
            raise ValueError(f"the model has {total} parameters; at most {MAX_PARAMETERS} are allowed")
        if self.loss == "cross_entropy" and self.output_width == 1:
            raise ValueError("cross_entropy needs an output of at least 2 classes; use "
                             "bce_with_logits for a single logit")
        if self.feature_shift is not None and self.feature_scale is not None:
            a, b = len(self.feature_shift), len(self.feature_scale)
            if a != b and 1 not in (a, b):
                raise ValueError(f"feature_shift has {a} values and feature_scale {b}; give the "
                                 "same number (or one value for all features)")
        return self

    @property
    def output_width(self) -> int | None:
        """Width of the model's output: the last linear layer's ``out_features``."""
        linears = [layer for layer in self.layers if isinstance(layer, LinearLayer)]
        return linears[-1].out_features if linears else None

    def weight_specs(self) -> dict[str, TensorSpec]:
        """The trained model's tensors as ``state_dict`` names them (``"0.weight"``, ...),
        float32: the released structure, fixed by the spec alone."""
        out: dict[str, TensorSpec] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, LinearLayer):
                out[f"{i}.weight"] = TensorSpec(shape=[layer.out_features, layer.in_features],
                                                dtype="float32")
                if layer.bias:
                    out[f"{i}.bias"] = TensorSpec(shape=[layer.out_features], dtype="float32")
        return out

    def check_card(self, card: DatasetCard) -> None:
        """Refuse, from the public card alone, what could not train on its dataset.

        Checks what used to fail inside a run according to the data: missing variables,
        dims without the example dimension, features that do not fit the first layer,
        a target of the wrong shape, and a target whose declared bounds exceed what the
        loss takes (``cross_entropy`` over k classes: within [0, k - 1], declared;
        ``bce_with_logits``: within [0, 1] when declared). Inside a run, values are then
        brought into range by a fixed rule instead (:func:`fednb.runtime.train_dpsgd`).

        Raises
        ------
        InvalidInput
            Naming the variable, its dims or bounds, and what the spec needs.
        """
        shapes = {}
        for name in (self.features, self.target):
            var = card.variables.get(name)
            if var is None:
                raise InvalidInput(f"dataset {card.name!r} has no variable {name!r}; it has "
                                   f"{sorted(card.variables)}")
            if card.example_dim not in var.dims:
                raise InvalidInput(f"variable {name!r} has dims {var.dims}, without the example "
                                   f"dimension {card.example_dim!r} that DP-SGD samples over")
            if var.dtype not in _NUMERIC_DTYPES:
                raise InvalidInput(f"variable {name!r} has dtype {var.dtype}; DP-SGD needs numbers")
            shapes[name] = tuple(card.dims[d] for d in var.dims if d != card.example_dim)
        features = shapes[self.features] or (1,)
        for field, values in (("feature_shift", self.feature_shift), ("feature_scale", self.feature_scale)):
            if values is not None and len(values) not in (1, features[-1]):
                raise InvalidInput(f"{field} has {len(values)} values; the features have {features[-1]} "
                                   "along their last dimension (give that many, or one)")
        out = _output_shape(self.layers, features, self.features)
        self._check_target(card, shapes[self.target], out)

    def _check_target(self, card: DatasetCard, per_example: tuple[int, ...], out: tuple[int, ...]) -> None:
        want = out[:-1] if self.loss == "cross_entropy" else out
        have = per_example if self.loss == "cross_entropy" else (per_example or (1,))
        if have != want:
            raise InvalidInput(f"target {self.target!r} has shape (example, {have}) per example; the "
                               f"model's output needs {want} for {self.loss}")
        bounds = card.variables[self.target].bounds
        if self.loss == "cross_entropy":
            k = self.output_width or 0
            if bounds is None or bounds[0] < 0 or bounds[1] > k - 1:
                raise InvalidInput(f"cross_entropy over {k} classes needs target {self.target!r} declared "
                                   f"within [0, {k - 1}]; its declared bounds are {bounds}: use a "
                                   "target of class indices or as many classes as its bounds allow")
        if self.loss == "bce_with_logits" and bounds is not None and (bounds[0] < 0 or bounds[1] > 1):
            raise InvalidInput(f"bce_with_logits needs target {self.target!r} in [0, 1]; its declared "
                               f"bounds are {bounds}")

    def sampling_rate(self, n_examples: int) -> float:
        """Poisson sampling rate ``q = batch_size / n`` (at most 1) of a dataset of ``n`` examples."""
        _check_n(n_examples)
        return min(1.0, self.batch_size / n_examples)

    def steps(self, n_examples: int) -> int:
        """Number of noisy steps, ``epochs * ceil(n / batch_size)``, on ``n`` examples."""
        _check_n(n_examples)
        return self.epochs * math.ceil(n_examples / self.batch_size)


def _check_widths(layers: list[LayerSpec]) -> None:
    """Refuse a model without linear layer or with consecutive widths that disagree."""
    width: int | None = None  # None: unknown (the input, or after a flatten)
    seen_linear = False
    for i, layer in enumerate(layers):
        if isinstance(layer, LinearLayer):
            if width is not None and layer.in_features != width:
                raise ValueError(f"layer {i} expects in_features={layer.in_features} but the layer "
                                 f"before it gives {width}")
            width, seen_linear = layer.out_features, True
        elif isinstance(layer, FlattenLayer):
            width = None
    if not seen_linear:
        raise ValueError("the model has no linear layer, so nothing to train; add one")


_NUMERIC_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"])


def _output_shape(layers: list[LayerSpec], shape: tuple[int, ...], features: str) -> tuple[int, ...]:
    """One example's output shape through ``layers``, or InvalidInput if it does not fit."""
    for i, layer in enumerate(layers):
        if isinstance(layer, LinearLayer):
            if shape[-1] != layer.in_features:
                raise InvalidInput(f"features {features!r} of shape (example, {shape}) per example do not "
                                   f"fit the model's layer {i} (in_features={layer.in_features})")
            shape = (*shape[:-1], layer.out_features)
        elif isinstance(layer, FlattenLayer):
            shape = (math.prod(shape),)
    return shape


def _check_n(n_examples: int) -> None:
    if n_examples < 1:
        raise InvalidInput(f"the dataset has {n_examples} examples; DP-SGD needs at least one")
