"""Shared type aliases."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["JSON", "Array", "FloatArray", "Weights"]

Array = npt.NDArray[Any]
"""Any NumPy array."""
FloatArray = npt.NDArray[np.floating[Any]]
"""A floating-point NumPy array."""
Weights = dict[str, Array]
"""Named tensors: a model's weights or an update."""
JSON = Any
"""A value that ``json.dumps`` accepts."""
