"""Datasets on disk (Zarr under the domain home), their cards and their mock twins.

A mock is either given by the owner or synthesised: every variable drawn uniformly
within the bounds (or from the categories) the owner declared. No statistic of the
private data is used, so the mock reveals nothing beyond the card; it carries only the
whitelisted attributes :data:`MOCK_ATTRS` of the dataset and its variables (free-form
attributes such as ``actual_range`` or a ``comment`` naming a record are private).

:func:`load_private` reads an owner's file through the registry of :mod:`fednb.loaders`,
so a format registered there (or installed under its entry point group) can be added.

:func:`validate_private` reports to the owner, at registration, what the DP rules will
do with the values (missing, non-finite, out of the declared bounds).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from fednb import loaders
from fednb.errors import InvalidInput
from fednb.protocol import NAME_PATTERN, DatasetCard, MockInfo, VariableCard
from fednb.typing import Array

__all__ = ["MOCK_ATTRS", "Bounds", "build_card", "load_private", "synthesise_mock", "validate_private",
           "write_zarr"]

MOCK_ATTRS = ("units", "long_name", "description")
"""The only attributes a synthesised mock copies from the private dataset and its variables."""

Bounds = Mapping[str, tuple[float, float] | Sequence[str]]
"""Per variable: ``(low, high)`` for numbers, or a list of categories for text."""


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(f"dataset name {name[:80]!r} must match {NAME_PATTERN}")


def load_private(path: str | os.PathLike[str], *, format: str | None = None,
                 example_dim: str | None = None, **options: Any) -> tuple[xr.Dataset, str]:
    """Read the owner's file or folder with the registered loader of its format.

    Parameters
    ----------
    path
        The file or folder.
    format
        A name from :func:`fednb.loaders.formats`; None guesses it from ``path``.
    example_dim
        Passed to the loader when given (the dimension of the examples).
    **options
        The loader's own options (``index``, ``columns``, ``fields``, ``size``, ...).

    Returns
    -------
    tuple of xarray.Dataset and str
        The dataset, and the card's ``source``: ``format`` as given, else the path's
        suffix, else ``"folder"``.

    Raises
    ------
    InvalidInput
        As :func:`fednb.loaders.load`.
    """
    p = Path(path)
    source = format or p.suffix.lstrip(".") or "folder"
    if example_dim is not None:
        options["example_dim"] = example_dim
    return loaders.load(p, format=format, **options), source


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
    data = {k: (v.dims, _draw(str(k), v, bounds[str(k)], rng), _public_attrs(v.attrs))
            for k, v in ds.data_vars.items()}
    coords: dict[Any, Any] = {}
    for k, c in ds.coords.items():
        if example_dim in c.dims:
            if k == example_dim:
                coords[k] = np.arange(ds.sizes[example_dim])
        else:
            coords[k] = xr.Variable(c.dims, c.values, _public_attrs(c.attrs))
    return xr.Dataset(data, coords=coords,
                      attrs={**_public_attrs(ds.attrs), "fednb_mock": "synthesised within bounds"})


def _public_attrs(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in attrs.items() if k in MOCK_ATTRS}


def validate_private(ds: xr.Dataset, bounds: Bounds) -> list[str]:
    """Findings for the data owner (never for scientists) on each numeric variable's values.

    Reports missing (NaN) values, infinities, values outside the declared bounds and
    variables without bounds. None of these is refused: the DP rules treat them the same
    way every time (``fednb.runtime._query``: NaN is missing, everything else, infinities
    included, is clamped into the bounds), so a dataset holding them is safe to add; but
    each usually means an error in the data, and it changes what statistics mean, which
    the owner should know before scientists use it.

    Returns
    -------
    list of str
        One sentence per finding, naming the variable and counting values; empty if none.
    """
    found: list[str] = []
    for name, var in ds.data_vars.items():
        if var.dtype.kind not in "biuf":
            continue
        x = np.asarray(var.values, dtype=np.float64)
        b = bounds.get(str(name))
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        if nan:
            found.append(f"{name!r}: {nan} missing (NaN) values; DP sums, means and histograms leave them "
                         "out, quantiles put them at the lower bound, DP-SGD sets them to the spec's "
                         "feature_shift (features) or a fixed target")
        if inf:
            found.append(f"{name!r}: {inf} infinite values; DP releases clamp them into the bounds")
        if b is None:
            found.append(f"{name!r}: no declared bounds, so no DP statistic of it is possible")
            continue
        lo, hi = _numeric_bounds(str(name), b)
        finite = x[np.isfinite(x)]
        out = int(((finite < lo) | (finite > hi)).sum())
        if out:
            found.append(f"{name!r}: {out} values outside the declared bounds [{lo:g}, {hi:g}]; DP "
                         "releases clamp them into the bounds")
    return found


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
