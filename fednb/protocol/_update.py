"""``fednb.Update``: what a remote function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fednb.errors import InvalidInput
from fednb.typing import Weights

__all__ = ["Update", "as_update"]


@dataclass(frozen=True)
class Update:
    """The output of a remote function: named tensors plus scalar metrics.

    Parameters
    ----------
    weights
        Named arrays (new model weights, or any statistic). Converted with ``np.asarray``.
    metrics
        Scalar metrics such as ``{"loss": 0.3}``; only those the request declares,
        with bounds, ever leave the domain.
    num_examples
        Set by the domain's runtime from the dataset card; a value the code sets is ignored.
    """

    weights: Weights = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.weights, dict) or not isinstance(self.metrics, dict):
            raise InvalidInput("Update(weights=..., metrics=...) takes two dicts")
        object.__setattr__(self, "weights", {str(k): np.asarray(v) for k, v in self.weights.items()})
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.weights.items())
        return f"Update(weights=[{shapes}], metrics={self.metrics}, num_examples={self.num_examples})"


def as_update(value: Any) -> Update:
    """Normalise what a function returned: an Update, a dict of arrays, or one array/scalar."""
    if isinstance(value, Update):
        return value
    if isinstance(value, dict):
        return Update(weights=value)
    if value is None:
        raise InvalidInput("the function returned None; return fednb.Update(...) or arrays")
    return Update(weights={"result": np.asarray(value)})
