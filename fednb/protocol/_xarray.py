"""An ``xarray.Dataset`` as a pickle-free message (used for mock datasets on the wire).

Numeric variables and coordinates travel as tensors; string and datetime coordinates
as JSON lists; attributes as JSON (values that JSON cannot hold are turned into text).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput
from fednb.protocol._codec import decode_message, encode_message
from fednb.typing import Array

__all__ = ["dataset_from_bytes", "dataset_to_bytes"]


def _json_attrs(attrs: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, np.generic):
            out[str(k)] = v.item()
        elif isinstance(v, (list, tuple, np.ndarray)):
            out[str(k)] = [x.item() if isinstance(x, np.generic) else x for x in np.asarray(v).tolist()]
        else:
            out[str(k)] = str(v)
    return out


def _encode_var(var: xr.Variable, key: str, tensors: dict[str, Array]) -> dict[str, Any]:
    values = np.asarray(var.values)
    entry: dict[str, Any] = {"dims": list(map(str, var.dims)), "attrs": _json_attrs(var.attrs)}
    if values.dtype.kind in "biuf":
        tensors[key] = values
        entry["kind"] = "tensor"
    elif values.dtype.kind == "M":
        tensors[key] = values.astype("datetime64[ns]").view(np.int64)
        entry["kind"] = "datetime64[ns]"
    else:
        entry["kind"] = "json"
        entry["values"] = values.astype(str).tolist()
    return entry


def dataset_to_bytes(ds: xr.Dataset) -> bytes:
    """Encode ``ds`` (numeric, string and datetime variables) as a safetensors message."""
    tensors: dict[str, Array] = {}
    header: dict[str, Any] = {
        "attrs": _json_attrs(ds.attrs),
        "coords": {str(n): _encode_var(c.variable, f"c/{n}", tensors) for n, c in ds.coords.items()},
        "data_vars": {
            str(n): _encode_var(v.variable, f"v/{n}", tensors) for n, v in ds.data_vars.items()
        },
    }
    return encode_message(header, tensors)


def _decode_var(entry: dict[str, Any], key: str, tensors: dict[str, Array]) -> xr.Variable:
    kind = entry.get("kind")
    if kind == "tensor":
        values: Array = tensors[key]
    elif kind == "datetime64[ns]":
        values = tensors[key].view("datetime64[ns]")
    elif kind == "json":
        values = np.asarray(entry["values"], dtype=str)
    else:
        raise InvalidInput(f"unknown variable encoding {kind!r}")
    return xr.Variable(tuple(entry["dims"]), values, attrs=entry.get("attrs") or {})


def dataset_from_bytes(data: bytes) -> xr.Dataset:
    """Decode what :func:`dataset_to_bytes` made."""
    header, tensors = decode_message(data)
    try:
        coords = {n: _decode_var(e, f"c/{n}", tensors) for n, e in header["coords"].items()}
        data_vars = {n: _decode_var(e, f"v/{n}", tensors) for n, e in header["data_vars"].items()}
        return xr.Dataset(data_vars, coords=coords, attrs=header.get("attrs") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"corrupt dataset message: {type(exc).__name__}") from None
