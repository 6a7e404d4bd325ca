"""Update compression on the wire: float16, or int8 with stochastic rounding.

int8 keeps one float32 scale per tensor (``max |x| / 127``) and rounds ``x / scale`` up or
down at random with the probabilities that make it unbiased (``E[q * scale] = x``), so
averages over many updates lose nothing systematic. The caller supplies the uniform
numbers (the domain draws them from its CSPRNG).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from fednb.errors import InvalidInput
from fednb.typing import Array, Weights

__all__ = ["Compression", "compress", "decompress"]

Compression = Literal["none", "fp16", "int8"]


def compress(tensors: Weights, kind: Compression,
             uniform: Callable[[int], Array]) -> tuple[Weights, dict[str, Any]]:
    """Compress float tensors; returns the tensors to send and the header to send beside them.

    Raises
    ------
    InvalidInput
        With ``fp16``, for a tensor holding a value beyond float16's range (about 65504 in
        magnitude), which float16 would turn into infinity; the message names the tensor,
        not its values.
    """
    if kind == "none":
        return tensors, {}
    out: Weights = {}
    meta: dict[str, Any] = {"compression": kind, "dtypes": {}, "scales": {}}
    for name, arr in tensors.items():
        if arr.dtype.kind != "f":
            out[name] = arr
            continue
        meta["dtypes"][name] = str(arr.dtype)
        if kind == "fp16":
            with np.errstate(over="ignore"):
                half = arr.astype(np.float16)
            if not np.isfinite(half).all() and np.isfinite(arr).all():
                raise InvalidInput(f"tensor {name!r} holds values beyond float16's range (about 65504): "
                                   "send it with compression='none' or 'int8'")
            out[name] = half
            continue
        x = arr.astype(np.float64)
        scale = float(np.abs(x).max()) / 127.0 if x.size else 0.0
        if scale == 0.0:
            out[name] = np.zeros(arr.shape, np.int8)
        else:
            u = np.asarray(uniform(x.size), dtype=np.float64).reshape(x.shape)
            out[name] = np.clip(np.floor(x / scale + u), -127, 127).astype(np.int8)
        meta["scales"][name] = scale
    return out, meta


def decompress(tensors: Weights, meta: dict[str, Any]) -> Weights:
    """Undo :func:`compress` (tensors come back in their original dtypes)."""
    kind = meta.get("compression", "none")
    if kind == "none":
        return tensors
    if kind not in ("fp16", "int8"):
        raise InvalidInput(f"unknown compression {kind!r}")
    out: Weights = {}
    for name, arr in tensors.items():
        dtype = meta.get("dtypes", {}).get(name)
        if dtype is None:
            out[name] = arr
        elif kind == "fp16":
            out[name] = arr.astype(dtype)
        else:
            out[name] = (arr.astype(np.float64) * float(meta["scales"][name])).astype(dtype)
    return out
