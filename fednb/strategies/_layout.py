"""Named weights to one flat float64 vector and back: what the driver does around a strategy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fednb.errors import InvalidInput
from fednb.typing import Array, FloatArray, Weights

__all__ = ["Layout", "flatten", "unflatten"]


@dataclass(frozen=True)
class Layout:
    """How named tensors map onto a flat vector: names in order, shapes and dtypes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each tensor."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)


def flatten(weights: Mapping[str, Array], *, copy: bool = True) -> tuple[FloatArray, Layout]:
    """Concatenate named tensors into one float64 vector, in sorted name order.

    Sorting makes the layout independent of the order in which a client built its dict.

    Parameters
    ----------
    weights
        Named real-valued tensors (float, integer or bool dtypes).
    copy
        False: tensors that are all float32 (or all float64) keep their dtype, and a single
        contiguous tensor comes back as a view of itself (no copy): for read-only use,
        such as an update on its way into a sum.

    Returns
    -------
    vector, layout
        The flat vector (float64 unless ``copy=False`` kept float32) and the layout
        :func:`unflatten` needs.

    Examples
    --------
    >>> vec, layout = flatten({"w": np.ones((2, 2)), "b": np.zeros(2)})
    >>> vec.tolist(), layout.names
    ([0.0, 0.0, 1.0, 1.0, 1.0, 1.0], ('b', 'w'))
    """
    if not isinstance(weights, Mapping) or not weights:
        raise InvalidInput(f"weights must be a non-empty dict of named arrays, got {type(weights).__name__}")
    names = tuple(sorted(weights))
    arrays = [np.asarray(weights[n]) for n in names]
    for name, arr in zip(names, arrays, strict=True):
        if arr.dtype.kind not in "fiub":
            raise InvalidInput(f"weight {name!r} has dtype {arr.dtype}; only real numeric tensors flatten")
    layout = Layout(names, tuple(a.shape for a in arrays), tuple(a.dtype.str for a in arrays))
    if not arrays or layout.size == 0:
        return np.zeros(0, dtype=np.float64), layout
    kept = {a.dtype for a in arrays}
    if not copy and len(kept) == 1 and kept <= {np.dtype(np.float32), np.dtype(np.float64)}:
        if len(arrays) == 1:
            return arrays[0].reshape(-1), layout  # a view when contiguous
        return np.concatenate([a.reshape(-1) for a in arrays]), layout
    out = np.empty(layout.size, dtype=np.float64)  # one pass: convert while copying in
    offset = 0
    for arr, n in zip(arrays, layout.sizes, strict=True):
        np.copyto(out[offset : offset + n], arr.reshape(-1), casting="unsafe")
        offset += n
    return out, layout


def unflatten(vec: Array, layout: Layout) -> Weights:
    """Split a flat vector back into named tensors of the layout's shapes and dtypes.

    Integer and bool tensors are rounded to the nearest value of their dtype.

    Raises
    ------
    InvalidInput
        If ``vec`` is not 1-D or its length differs from ``layout.size``.
    """
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.size != layout.size:
        raise InvalidInput(f"a vector of shape {arr.shape} does not fit a layout of {layout.size} elements")
    out: Weights = {}
    offsets = np.cumsum((0, *layout.sizes))
    for i, (name, shape, dtype) in enumerate(zip(layout.names, layout.shapes, layout.dtypes, strict=True)):
        part = arr[offsets[i] : offsets[i + 1]].reshape(shape)
        kind = np.dtype(dtype).kind
        if kind in "iub":
            part = np.rint(part)
        out[name] = part.astype(dtype) if kind != "b" else part != 0
    return out
