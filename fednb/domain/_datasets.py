"""Datasets on disk (Zarr under the domain home), their cards and their mock twins.

A mock is either given by the owner or synthesised: every variable drawn uniformly
within the bounds (or from the categories) the owner declared. No statistic of the
private data is used, so the mock reveals nothing beyond the card.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput
from fednb.protocol import NAME_PATTERN, DatasetCard, MockInfo, VariableCard
from fednb.typing import Array

__all__ = ["Bounds", "build_card", "synthesise_mock", "write_zarr"]

Bounds = Mapping[str, tuple[float, float] | Sequence[str]]
"""Per variable: ``(low, high)`` for numbers, or a list of categories for text."""


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(f"dataset name {name[:80]!r} must match {NAME_PATTERN}")


def example_dim_of(ds: xr.Dataset, example_dim: str | None) -> str:
    if example_dim is not None:
        if example_dim not in ds.dims:
            raise InvalidInput(f"example_dim {example_dim!r} is not a dimension of the dataset "
                               f"(dimensions: {sorted(map(str, ds.dims))})")
        return example_dim
    if not ds.data_vars:
        raise InvalidInput("the dataset has no data variables")
    return str(next(iter(ds.data_vars.values())).dims[0])


def _numeric_bounds(name: str, b: Any) -> tuple[float, float]:
    try:
        lo, hi = float(b[0]), float(b[1])
    except (TypeError, ValueError, IndexError):
        raise InvalidInput(f"bounds of {name!r} must be (low, high)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InvalidInput(f"bounds of {name!r} must be finite with low <= high, got {b!r}")
    return lo, hi


def _var_card(name: str, var: xr.DataArray, bounds: Bounds, units: Mapping[str, str]) -> VariableCard:
    b = bounds.get(name)
    nb = None
    if b is not None and var.dtype.kind in "biuf":
        nb = _numeric_bounds(name, b)
    unit = units.get(name, var.attrs.get("units"))
    desc = var.attrs.get("description", var.attrs.get("long_name", ""))
    return VariableCard(dims=[str(d) for d in var.dims], dtype=str(var.dtype),
                        units=None if unit is None else str(unit), bounds=nb, description=str(desc))


def build_card(name: str, ds: xr.Dataset, *, bounds: Bounds, units: Mapping[str, str],
               description: str, source: str, example_dim: str, mock: MockInfo) -> DatasetCard:
    """The dataset's public card: schema, units, bounds and size; never values."""
    from fednb.domain._store import utcnow

    return DatasetCard(
        name=name, description=description, source=source,
        dims={str(k): int(v) for k, v in ds.sizes.items()}, example_dim=example_dim,
        num_examples=int(ds.sizes[example_dim]),
        variables={str(k): _var_card(str(k), v, bounds, units) for k, v in ds.data_vars.items()},
        coords={str(k): _var_card(str(k), v, bounds, units) for k, v in ds.coords.items()},
        mock=mock, created=utcnow(),
    )


def _draw(name: str, var: xr.DataArray, spec: Any, rng: np.random.Generator) -> Array:
    shape = var.shape
    if var.dtype.kind in "OUS":
        cats = [str(c) for c in spec] if isinstance(spec, (list, tuple)) else []
        if not cats or all(isinstance(c, (int, float)) for c in spec):
            raise InvalidInput(f"text variable {name!r} needs its categories as bounds, "
                               f"e.g. bounds={{{name!r}: ['female', 'male']}}")
        return np.asarray(rng.choice(cats, size=shape))
    lo, hi = _numeric_bounds(name, spec)
    if var.dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if var.dtype.kind in "iu":
        return rng.integers(math.ceil(lo), math.floor(hi) + 1, size=shape).astype(var.dtype)
    return rng.uniform(lo, hi, size=shape).astype(var.dtype)


def synthesise_mock(ds: xr.Dataset, bounds: Bounds, example_dim: str) -> xr.Dataset:
    """A mock with the private dataset's schema, each value uniform within declared bounds.

    Coordinates along the example dimension become ``0..n-1`` (ids are private); other
    coordinates (feature names, codes, pixel grids) are schema and are kept.
    """
    missing = [str(k) for k in ds.data_vars if k not in bounds]
    if missing:
        raise InvalidInput(f"to synthesise a mock, declare bounds for every variable; missing: "
                           f"{missing}. Or pass mock=<an xarray.Dataset you made>.")
    rng = np.random.default_rng(secrets.randbits(128))
    data = {k: (v.dims, _draw(str(k), v, bounds[str(k)], rng), v.attrs) for k, v in ds.data_vars.items()}
    coords: dict[Any, Any] = {}
    for k, c in ds.coords.items():
        if example_dim in c.dims:
            if k == example_dim:
                coords[k] = np.arange(ds.sizes[example_dim])
        else:
            coords[k] = c
    return xr.Dataset(data, coords=coords, attrs={"fednb_mock": "synthesised within bounds"})


def check_mock(private: xr.Dataset, mock: xr.Dataset) -> None:
    """A given mock must have the private dataset's variables, dims and dtypes."""
    for k, v in private.data_vars.items():
        if k not in mock.data_vars:
            raise InvalidInput(f"the mock lacks variable {k!r}")
        m = mock[k]
        if m.dims != v.dims or m.dtype.kind != v.dtype.kind:
            raise InvalidInput(f"mock variable {k!r} has dims {m.dims} / dtype {m.dtype}, "
                               f"the private one {v.dims} / {v.dtype}")


def write_zarr(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` as a Zarr store at ``path`` (replacing it)."""
    if path.exists():
        shutil.rmtree(path)
    clean = ds.copy()
    for v in clean.variables.values():
        v.encoding = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean.to_zarr(path, mode="w", zarr_format=2, consolidated=True)


def read_zarr(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds: xr.Dataset = xr.open_zarr(path, consolidated=True).load()
        return ds
