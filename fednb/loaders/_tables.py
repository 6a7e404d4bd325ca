"""Tables (CSV, Parquet): one row per example, one data variable per column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xarray as xr

from fednb.errors import InvalidInput
from fednb.loaders._common import StrPath, existing
from fednb.loaders._registry import Loader
from fednb.typing import Array

__all__ = ["CsvLoader", "ParquetLoader", "load_csv", "load_parquet"]

def _wanted(columns: Sequence[str] | str | None, index: str | None) -> list[str] | None:
    """The columns to read (``columns`` plus ``index``), or None for all of them."""
    if columns is None:
        return None
    names = [columns] if isinstance(columns, str) else [str(c) for c in columns]
    return list(dict.fromkeys([*names, *([index] if index is not None else [])]))


def _require(names: Iterable[str], available: Sequence[str], source: Path, what: str) -> None:
    """Raise InvalidInput naming the first of ``names`` that is not in ``available``."""
    for name in names:
        if name not in available:
            raise InvalidInput(
                f"{source.name} has no column {name!r} (asked for as {what}); its columns "
                f"are {list(available)}; fix the name or leave {what} out"
            )


def _column_values(series: pd.Series[Any]) -> Array:
    """A column as a NumPy array: numbers, booleans and datetimes kept, the rest as str."""
    dtype = series.dtype
    is_bool = pd.api.types.is_bool_dtype(dtype)
    if is_bool and not series.hasnans:
        return np.asarray(series.to_numpy(dtype=bool))
    if pd.api.types.is_numeric_dtype(dtype) or is_bool:
        if series.hasnans or isinstance(dtype, pd.api.extensions.ExtensionDtype):
            return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))
        return np.asarray(series.to_numpy())
    if isinstance(dtype, pd.DatetimeTZDtype):
        return np.asarray(series.dt.tz_convert(None).to_numpy())
    if pd.api.types.is_datetime64_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return np.asarray(series.to_numpy())
    text = series.astype(object).where(series.notna(), "")
    return np.asarray(text.astype(str).to_numpy(dtype=object), dtype=str)


def _id_values(series: pd.Series[Any], source: Path) -> Array:
    """The example coordinate from the id column, checked for gaps and repeats."""
    name = str(series.name)
    if series.isna().any():
        raise InvalidInput(
            f"id column {name!r} of {source.name} has {int(series.isna().sum())} empty "
            "values; fill them in or choose another index column"
        )
    if series.duplicated().any():
        repeated = series[series.duplicated()].astype(str).unique()[:5].tolist()
        raise InvalidInput(
            f"id column {name!r} of {source.name} repeats ids (e.g. {repeated}); each row "
            "must be one example: deduplicate the rows or choose another index column"
        )
    return _column_values(series)


def _flatten_index(frame: pd.DataFrame) -> pd.DataFrame:
    """Named index levels (as Parquet stores them) become columns; an unnamed one goes."""
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _frame_to_dataset(
    frame: pd.DataFrame,
    source: Path,
    *,
    index: str | None,
    example_dim: str,
    columns: Sequence[str] | str | None,
) -> xr.Dataset:
    """One data variable per column along ``example_dim``; ``index`` as the coordinate."""
    frame = _flatten_index(frame)
    available = list(frame.columns)
    if not frame.columns.is_unique:
        raise InvalidInput(f"{source.name} repeats column names; give every column its own name")
    _require([index] if index is not None else [], available, source, "index")
    wanted = _wanted(columns, index) or available
    _require(wanted, available, source, "columns")
    keep = [c for c in wanted if c != index]
    if example_dim in keep:
        raise InvalidInput(
            f"{source.name} has a column named {example_dim!r}, the example dimension; pass "
            f"index={example_dim!r} if it holds the ids, or choose another example_dim"
        )
    coord = np.arange(len(frame)) if index is None else _id_values(frame[index], source)
    data_vars = {name: (example_dim, _column_values(frame[name])) for name in keep}
    return xr.Dataset(data_vars, coords={example_dim: coord})


def load_csv(
    path: StrPath,
    *,
    index: str | None = None,
    example_dim: str = "patient",
    columns: Sequence[str] | None = None,
) -> xr.Dataset:
    """Read a CSV table: one row per example, one data variable per column.

    Parameters
    ----------
    path
        The CSV file (comma-separated, with a header row).
    index
        The id column; its values become the ``example_dim`` coordinate. Without it
        the coordinate is ``0, 1, ..., n-1``.
    example_dim
        The name of the example dimension.
    columns
        Only these columns (the index column is added when missing).

    Returns
    -------
    xarray.Dataset
        Numeric and boolean columns keep their dtype (integers with gaps become
        float with NaN); text columns become ``str`` variables with ``""`` for gaps.

    Raises
    ------
    InvalidInput
        The file is missing or unreadable, a named column does not exist, or the id
        column has gaps or repeats.
    """
    p = existing(path, "CSV file")
    wanted = _wanted(columns, index)
    try:
        frame = pd.read_csv(p, usecols=None if wanted is None else (lambda c: c in wanted))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"could not read CSV file {p.name} ({exc}); it must be comma-separated UTF-8 "
            "text with a header row"
        ) from exc
    return _frame_to_dataset(frame, p, index=index, example_dim=example_dim, columns=columns)


def load_parquet(
    path: StrPath,
    *,
    index: str | None = None,
    example_dim: str = "patient",
    columns: Sequence[str] | None = None,
) -> xr.Dataset:
    """Read a Parquet table: one row per example, one data variable per column.

    Parameters
    ----------
    path
        The Parquet file. A named pandas index stored in it counts as a column.
    index
        The id column; its values become the ``example_dim`` coordinate. Without it
        the coordinate is ``0, 1, ..., n-1``.
    example_dim
        The name of the example dimension.
    columns
        Only these columns (the index column is added when missing).

    Returns
    -------
    xarray.Dataset
        As :func:`load_csv`.

    Raises
    ------
    InvalidInput
        The file is missing or unreadable, a named column does not exist, or the id
        column has gaps or repeats.
    """
    p = existing(path, "Parquet file")
    wanted = _wanted(columns, index)
    try:
        if wanted is not None:
            _require(wanted, list(pq.read_schema(p).names), p, "columns")
        frame = pd.read_parquet(p, columns=wanted)
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"could not read Parquet file {p.name} ({exc}); check that it is a complete Parquet file"
        ) from exc
    return _frame_to_dataset(frame, p, index=index, example_dim=example_dim, columns=columns)



class CsvLoader(Loader):
    """Comma-separated tables: :func:`load_csv`."""

    suffixes = (".csv",)
    description = "a comma-separated table with a header row (.csv)"
    open = staticmethod(load_csv)


class ParquetLoader(Loader):
    """Parquet tables: :func:`load_parquet`."""

    suffixes = (".parquet", ".pq")
    description = "a Parquet table (.parquet, .pq)"
    open = staticmethod(load_parquet)
