"""Turn a data owner's local files into an :class:`xarray.Dataset`.

Every loader returns a dataset held in memory whose examples (patients, images) lie
along one dimension, ``example_dim``: ``"patient"`` for tables and FHIR bundles,
``"image"`` for DICOM folders. NetCDF and Zarr files keep the dimensions they were
written with.

============  ==========================================  =====================
format        files                                       loader
============  ==========================================  =====================
``netcdf``    ``.nc``, ``.nc4``, ``.cdf``, ``.h5``        :func:`load_netcdf`
``zarr``      a ``.zarr`` folder                          :func:`load_zarr`
``csv``       ``.csv``                                    :func:`load_csv`
``parquet``   ``.parquet``, ``.pq``                       :func:`load_parquet`
``dicom``     a folder of DICOM files                     :func:`load_dicom_folder`
``fhir``      a FHIR R4 Bundle as ``.json``               :func:`load_fhir_bundle`
============  ==========================================  =====================

:func:`load` picks the loader from the path. Nothing here unpickles: the readers are
xarray's, pandas', pydicom's and fhir.resources', run on the owner's own files.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import xarray as xr
from fhir.resources.R4B.bundle import Bundle
from pydicom import datadict
from pydicom.multival import MultiValue

from fednb.errors import InvalidInput
from fednb.typing import Array

__all__ = [
    "FORMATS",
    "load",
    "load_csv",
    "load_dicom_folder",
    "load_fhir_bundle",
    "load_netcdf",
    "load_parquet",
    "load_zarr",
]

_StrPath: TypeAlias = "str | os.PathLike[str]"

FORMATS = ("csv", "dicom", "fhir", "netcdf", "parquet", "zarr")
"""The formats :func:`load` knows."""

_SUFFIX_FORMATS = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".cdf": "netcdf",
    ".h5": "netcdf",
    ".hdf5": "netcdf",
    ".zarr": "zarr",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "fhir",
}
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


# --------------------------------------------------------------------------- helpers


def _existing(path: _StrPath, what: str, *, folder: bool | None = False) -> Path:
    """``path`` as a :class:`Path`, checked to exist (as a folder, a file or either)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInput(f"{what} {str(p)!r} does not exist; check the path and try again")
    if folder is True and not p.is_dir():
        raise InvalidInput(f"{what} {str(p)!r} is a file, not a folder; pass the folder instead")
    if folder is False and not p.is_file():
        raise InvalidInput(f"{what} {str(p)!r} is a folder, not a file; pass the file instead")
    return p


def _check_example_dim(ds: xr.Dataset, example_dim: str | None, source: Path) -> xr.Dataset:
    """Return ``ds`` after checking it has the dimension ``example_dim`` (when given)."""
    if example_dim is not None and example_dim not in ds.dims:
        dims = sorted(map(str, ds.dims))
        raise InvalidInput(
            f"{source.name} has no dimension {example_dim!r} (it has {dims}); pass one of "
            "these as example_dim, or rename the dimension in the file"
        )
    return ds


def max_load_bytes() -> int:
    """The largest dataset (decompressed, in memory) a loader reads: half this machine's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (OSError, ValueError):
        return 8 << 30


def _check_decompressed_size(ds: xr.Dataset, source: Path, cap: int | None) -> None:
    """Refuse, from the metadata alone, a file that would decompress past ``cap`` bytes (a
    decompression bomb: a small file whose chunks hold a huge, well-compressed array)."""
    cap = max_load_bytes() if cap is None else cap
    if ds.nbytes > cap:
        raise InvalidInput(
            f"{source.name} would take {ds.nbytes / 2**30:.1f} GiB in memory once decompressed, "
            f"over the cap of {cap / 2**30:.1f} GiB; check the file (a small file that declares "
            "huge arrays is a decompression bomb), or pass max_bytes= to read a larger one"
        )


# --------------------------------------------------------------------------- NetCDF, Zarr


def _netcdf_engine(path: Path) -> str:
    """``"scipy"`` for NetCDF3 (``CDF`` magic), ``"h5netcdf"`` for NetCDF4/HDF5."""
    with path.open("rb") as f:
        head = f.read(4)
    if head[:3] == b"CDF":
        return "scipy"
    if head == b"\x89HDF":
        return "h5netcdf"
    raise InvalidInput(
        f"{path.name} is not a NetCDF file: it starts with neither 'CDF' (NetCDF3) nor "
        "'\\x89HDF' (NetCDF4/HDF5); check the file, or pass the right format to load()"
    )


def load_netcdf(path: _StrPath, *, example_dim: str | None = None,
                max_bytes: int | None = None) -> xr.Dataset:
    """Read a NetCDF3 or NetCDF4/HDF5 file fully into memory.

    Parameters
    ----------
    path
        The file. Its first bytes pick the engine: ``scipy`` for NetCDF3,
        ``h5netcdf`` for NetCDF4/HDF5.
    example_dim
        When given, the dimension that must exist in the file (the examples).
    max_bytes
        Refuse files whose arrays would take more memory than this once decompressed
        (default: half of this machine's memory, :func:`max_load_bytes`).

    Returns
    -------
    xarray.Dataset
        The file's dataset, loaded (the file is closed on return).

    Raises
    ------
    InvalidInput
        The file is missing, is not NetCDF, cannot be read, would decompress past
        ``max_bytes`` or lacks ``example_dim``.
    """
    p = _existing(path, "NetCDF file")
    engine = _netcdf_engine(p)
    try:
        with xr.open_dataset(p, engine=engine) as lazy:
            _check_decompressed_size(lazy, p, max_bytes)
            ds = lazy.load()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(
            f"could not read NetCDF file {p.name} with engine {engine!r} ({exc}); "
            "check that the file is complete and not corrupt"
        ) from exc
    return _check_example_dim(ds, example_dim, p)


def load_zarr(path: _StrPath, *, example_dim: str | None = None,
              max_bytes: int | None = None) -> xr.Dataset:
    """Read a Zarr store (format 2 or 3) fully into memory.

    Parameters
    ----------
    path
        The store, usually a folder ending in ``.zarr``.
    example_dim
        When given, the dimension that must exist in the store (the examples).
    max_bytes
        As for :func:`load_netcdf`.

    Returns
    -------
    xarray.Dataset
        The store's dataset, loaded.

    Raises
    ------
    InvalidInput
        The store is missing, is not a Zarr group, would decompress past ``max_bytes``,
        or lacks ``example_dim``.
    """
    p = _existing(path, "Zarr store", folder=None)
    try:
        with xr.open_zarr(p) as ds:
            _check_decompressed_size(ds, p, max_bytes)
            loaded = ds.load()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(
            f"could not read Zarr store {p.name} ({exc}); pass the folder that holds the "
            "group's metadata (.zgroup or zarr.json)"
        ) from exc
    return _check_example_dim(loaded, example_dim, p)


# --------------------------------------------------------------------------- tables


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
    path: _StrPath,
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
    p = _existing(path, "CSV file")
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
    path: _StrPath,
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
    p = _existing(path, "Parquet file")
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


# --------------------------------------------------------------------------- DICOM

_NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_UNSUPPORTED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_DICOM_UNITS = {
    "SliceThickness": "mm",
    "SpacingBetweenSlices": "mm",
    "PixelSpacing": "mm",
    "ImagerPixelSpacing": "mm",
    "SliceLocation": "mm",
    "ReconstructionDiameter": "mm",
    "DistanceSourceToDetector": "mm",
    "DistanceSourceToPatient": "mm",
    "TableHeight": "mm",
    "KVP": "kV",
    "XRayTubeCurrent": "mA",
    "Exposure": "mAs",
    "ExposureTime": "ms",
    "RepetitionTime": "ms",
    "EchoTime": "ms",
    "InversionTime": "ms",
    "FlipAngle": "deg",
    "MagneticFieldStrength": "T",
    "PatientWeight": "kg",
    "PatientSize": "m",
    "Rows": "pixels",
    "Columns": "pixels",
}


@dataclass
class _Image:
    """One usable DICOM image: where it came from, its pixels and the asked-for fields."""

    name: str
    uid: str
    pixels: Array
    fields: dict[str, Any] = field(default_factory=dict)


def _field_is_numeric(keyword: str) -> bool:
    """Check a header keyword (InvalidInput if unknown); True for single numbers."""
    if datadict.tag_for_keyword(keyword) is None:
        raise InvalidInput(
            f"{keyword!r} is not a DICOM attribute keyword; use keywords from the DICOM "
            "dictionary such as 'PatientSex', 'Modality', 'SliceThickness' or 'KVP'"
        )
    vrs = set(datadict.dictionary_VR(keyword).split(" or "))
    if vrs & _UNSUPPORTED_VRS:
        raise InvalidInput(
            f"DICOM attribute {keyword!r} holds binary data or a sequence, which cannot be a "
            "variable; ask for attributes with text or number values instead"
        )
    return vrs <= _NUMERIC_VRS and datadict.dictionary_VM(keyword) == "1"


def _field_value(header: pydicom.Dataset, keyword: str, numeric: bool) -> Any:
    """One header value: float (NaN when missing) or str (``""`` when missing)."""
    value = header.get(keyword)
    if numeric:
        try:
            return float(value) if value not in (None, "") else np.nan
        except (TypeError, ValueError):
            return np.nan
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _read_image(file: Path, name: str, fields: Mapping[str, bool]) -> _Image | str:
    """The image in ``file``, or why it was skipped."""
    try:
        header = pydicom.dcmread(file)
        pixels = np.asarray(header.pixel_array)
    except Exception as exc:  # pydicom raises many kinds for files it cannot use
        return f"{name} ({type(exc).__name__})"
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim != 2 or photometric not in _GRAYSCALE:
        return f"{name} (not a 2-D grayscale image: {photometric}, shape {pixels.shape})"
    values = {k: _field_value(header, k, numeric) for k, numeric in fields.items()}
    native = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    return _Image(name, str(header.get("SOPInstanceUID", "")), native, values)


def _read_images(folder: Path, fields: Mapping[str, bool]) -> tuple[list[_Image], list[str]]:
    """Every usable image under ``folder`` in file-name order, and the skipped files."""
    files = sorted((f for f in folder.rglob("*") if f.is_file()), key=lambda f: f.as_posix())
    images: list[_Image] = []
    skipped: list[str] = []
    for file in files:
        found = _read_image(file, file.relative_to(folder).as_posix(), fields)
        if isinstance(found, str):
            skipped.append(found)
        else:
            images.append(found)
    if not images:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise InvalidInput(
            f"no usable DICOM image in {folder.name!r} (only uncompressed or decodable 2-D "
            f"grayscale images are supported); skipped: {shown or 'no files at all'}"
        )
    return images, skipped


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(rows, cols)`` of positive ints."""
    if (
        len(size) != 2
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in size)
        or min(size) < 1
    ):
        raise InvalidInput(f"size must be (rows, cols) of two positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _fit(pixels: Array, size: tuple[int, int]) -> Array:
    """Centre-crop and zero-pad ``pixels`` to ``size``."""
    out = np.zeros(size, dtype=pixels.dtype)
    src: list[slice] = []
    dst: list[slice] = []
    for have, want in zip(pixels.shape, size, strict=True):
        n = min(have, want)
        start_src, start_dst = max((have - want) // 2, 0), max((want - have) // 2, 0)
        src.append(slice(start_src, start_src + n))
        dst.append(slice(start_dst, start_dst + n))
    out[tuple(dst)] = pixels[tuple(src)]
    return out


def _stack(images: list[_Image], size: Sequence[int] | None, folder: Path) -> Array:
    """The images' pixels as one ``(image, row, col)`` array."""
    if size is not None:
        target = _check_size(size)
        return np.stack([_fit(img.pixels, target) for img in images])
    shapes = sorted({img.pixels.shape for img in images})
    if len(shapes) > 1:
        raise InvalidInput(
            f"the DICOM images in {folder.name!r} differ in shape ({shapes}); pass "
            "size=(rows, cols) to centre-crop and zero-pad them all to one shape"
        )
    return np.stack([img.pixels for img in images])


def _header_variable(images: list[_Image], keyword: str, numeric: bool, dim: str) -> xr.Variable:
    """The header field ``keyword`` of every image, with units and a long name."""
    values = [img.fields[keyword] for img in images]
    data = np.asarray(values, dtype=np.float64) if numeric else np.asarray(values, dtype=str)
    attrs = {"long_name": datadict.dictionary_description(keyword)}
    if keyword in _DICOM_UNITS:
        attrs["units"] = _DICOM_UNITS[keyword]
    return xr.Variable(dim, data, attrs)


def load_dicom_folder(
    path: _StrPath,
    *,
    fields: Sequence[str] = (),
    example_dim: str = "image",
    size: Sequence[int] | None = None,
) -> xr.Dataset:
    """Read every 2-D grayscale DICOM image under a folder (searched recursively).

    Parameters
    ----------
    path
        The folder. Files are read in path order; files pydicom cannot read, files
        without decodable pixels and colour or multi-frame images are skipped.
    fields
        Header keywords (``"PatientSex"``, ``"Modality"``, ``"SliceThickness"``, ...)
        to keep as variables along ``example_dim``: single numbers as float64 (NaN
        when missing), anything else as str (``""`` when missing; several values
        joined by ``"\\"``).
    example_dim
        The name of the example dimension.
    size
        ``(rows, cols)``: centre-crop and zero-pad every image to this shape. Needed
        when the images differ in shape.

    Returns
    -------
    xarray.Dataset
        ``pixels`` with dims ``(example_dim, "row", "col")`` holding the stored pixel
        values (no rescale slope or intercept applied), one variable per field, and
        the coordinate ``example_dim``: the SOPInstanceUIDs when every image has a
        distinct one, else the file paths relative to ``path``. The attribute
        ``n_skipped_files`` counts the files left out.

    Raises
    ------
    InvalidInput
        The folder is missing or holds no usable image, a field is not a DICOM
        keyword, or the images differ in shape and no ``size`` was given.
    """
    folder = _existing(path, "DICOM folder", folder=True)
    keywords = [fields] if isinstance(fields, str) else list(dict.fromkeys(fields))
    numeric = {keyword: _field_is_numeric(keyword) for keyword in keywords}
    if example_dim in {"row", "col", "pixels", *keywords}:
        raise InvalidInput(f"example_dim {example_dim!r} is also a dimension or field name")
    images, skipped = _read_images(folder, numeric)
    uids = [img.uid for img in images]
    unique = all(uids) and len(set(uids)) == len(uids)
    coord = np.asarray(uids if unique else [img.name for img in images], dtype=str)
    data_vars: dict[str, Any] = {
        "pixels": ((example_dim, "row", "col"), _stack(images, size, folder)),
    }
    for keyword, is_numeric in numeric.items():
        data_vars[keyword] = _header_variable(images, keyword, is_numeric, example_dim)
    attrs = {"n_skipped_files": len(skipped)}
    return xr.Dataset(data_vars, coords={example_dim: coord}, attrs=attrs)


# --------------------------------------------------------------------------- FHIR

_SYSTEM_PREFIXES = {"http://loinc.org": "loinc", "http://snomed.info/sct": "snomed"}
_NON_WORD = re.compile(r"\W", re.ASCII)


@dataclass
class _Reading:
    """One Observation's numeric value, with what picks the latest one."""

    patient: str
    value: float
    when: float | None
    order: int


@dataclass
class _Code:
    """Every usable Observation of one code."""

    system: str
    code: str
    display: str = ""
    units: set[str] = field(default_factory=set)
    readings: list[_Reading] = field(default_factory=list)


def _bundle_json(source: _StrPath | Mapping[str, Any]) -> dict[str, Any]:
    """The bundle as JSON, read from a file when given a path."""
    if isinstance(source, Mapping):
        return dict(source)
    p = _existing(source, "FHIR bundle file")
    try:
        with p.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"could not read {p.name} as JSON ({exc}); pass a FHIR Bundle") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{p.name} holds a JSON {type(data).__name__}, not a FHIR Bundle object")
    return data


def _parse_bundle(data: dict[str, Any]) -> Any:
    """Validate ``data`` as a FHIR R4 (R4B) Bundle with fhir.resources."""
    kind = data.get("resourceType")
    if kind != "Bundle":
        raise InvalidInput(
            f"expected a FHIR resource of type 'Bundle', got {kind!r}; wrap the Patient and "
            "Observation resources in a Bundle (resourceType 'Bundle', type 'collection')"
        )
    try:
        return Bundle.model_validate(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"the FHIR Bundle is not valid FHIR R4: {exc}") from exc


def _birth_year(value: Any) -> float:
    """The year of a FHIR date (a ``date`` or a partial ``"YYYY[-MM]"`` string)."""
    if isinstance(value, dt.date):
        return float(value.year)
    try:
        return float(str(value)[:4]) if value else np.nan
    except ValueError:
        return np.nan


def _instant(value: Any) -> float | None:
    """A FHIR dateTime (datetime, date or partial string) as POSIX seconds, UTC."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return aware.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    if not value:
        return None
    try:
        parts = [int(p[:2]) if i == 2 else int(p) for i, p in enumerate(str(value).split("-")[:3])]
        parts += [1] * (3 - len(parts))
        return dt.datetime(parts[0], parts[1], parts[2], tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def _patients(entries: list[Any]) -> tuple[dict[str, tuple[str, float]], dict[str, str]]:
    """Patient id -> (gender, birth year), and reference -> patient id."""
    patients: dict[str, tuple[str, float]] = {}
    refs: dict[str, str] = {}
    for entry in entries:
        resource = entry.resource
        if resource is None or resource.get_resource_type() != "Patient":
            continue
        pid = resource.id or entry.fullUrl
        if not pid:
            raise InvalidInput("a Patient in the Bundle has neither an id nor a fullUrl; give it an id")
        if pid in patients:
            raise InvalidInput(f"the Bundle holds Patient {pid!r} twice; keep one entry per patient")
        patients[pid] = (resource.gender or "", _birth_year(resource.birthDate))
        refs[f"Patient/{pid}"] = pid
        if entry.fullUrl:
            refs[entry.fullUrl] = pid
    return patients, refs


def _add_observation(codes: dict[tuple[str, str], _Code], obs: Any, pid: str, order: int) -> None:
    """Record ``obs`` under its first coding, if it has a code and a quantity."""
    coding = (obs.code.coding or [None])[0]
    quantity = obs.valueQuantity
    if coding is None or not coding.code or quantity is None or quantity.value is None:
        return
    key = (coding.system or "", coding.code)
    entry = codes.setdefault(key, _Code(system=key[0], code=key[1]))
    entry.display = entry.display or coding.display or ""
    unit = quantity.unit or quantity.code
    if unit:
        entry.units.add(str(unit))
    entry.readings.append(_Reading(pid, float(quantity.value), _instant(obs.effectiveDateTime), order))


def _observations(entries: list[Any], refs: Mapping[str, str]) -> dict[tuple[str, str], _Code]:
    """Numeric Observations of the bundle's patients, grouped by (system, code)."""
    codes: dict[tuple[str, str], _Code] = {}
    for order, entry in enumerate(entries):
        obs = entry.resource
        if obs is None or obs.get_resource_type() != "Observation" or obs.subject is None:
            continue
        ref = obs.subject.reference or ""
        pid = refs.get(ref) or refs.get("/".join(ref.split("/")[-2:]))  # absolute URLs too
        if pid is not None:
            _add_observation(codes, obs, pid, order)
    for entry in codes.values():
        if len(entry.units) > 1:
            raise InvalidInput(
                f"Observations of code {entry.code!r} ({entry.system or 'no system'}) use several "
                f"units {sorted(entry.units)}; convert them to one unit before loading"
            )
    return codes


def _variable_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A distinct identifier-like name per code, e.g. ``loinc_8867_4``."""
    names: dict[tuple[str, str], str] = {}
    for system, code in sorted(keys):
        base = f"{_SYSTEM_PREFIXES.get(system, 'code')}_{_NON_WORD.sub('_', code)}"
        name, n = base, 1
        while name in names.values():
            n += 1
            name = f"{base}_{n}"
        names[(system, code)] = name
    return names


def _latest_values(entry: _Code, position: Mapping[str, int]) -> Array:
    """Per patient the latest reading (by effectiveDateTime, then bundle order); NaN if none."""
    values = np.full(len(position), np.nan)
    best: dict[str, _Reading] = {}
    for r in entry.readings:
        old = best.get(r.patient)
        if old is None or _rank(r) >= _rank(old):
            best[r.patient] = r
    for pid, reading in best.items():
        values[position[pid]] = reading.value
    return values


def _rank(reading: _Reading) -> tuple[bool, float, int]:
    """Sort key: dated readings after undated ones, then by time, then bundle order."""
    return reading.when is not None, reading.when or 0.0, reading.order


def load_fhir_bundle(
    path_or_dict: _StrPath | Mapping[str, Any], *, example_dim: str = "patient"
) -> xr.Dataset:
    """Read a FHIR R4 Bundle of Patient and Observation resources as one row per patient.

    Parameters
    ----------
    path_or_dict
        A JSON file holding the Bundle, or the Bundle already parsed from JSON. It is
        validated with ``fhir.resources.R4B`` (FHIR R4B, compatible with R4).
    example_dim
        The name of the example dimension.

    Returns
    -------
    xarray.Dataset
        Coordinate ``example_dim`` (Patient ids, in bundle order), ``gender`` (str,
        ``""`` when missing), ``birth_year`` (float, NaN when missing) and one float
        variable per Observation code (first coding), named like ``loinc_8867_4``,
        holding ``valueQuantity.value``: the latest by ``effectiveDateTime`` when a
        patient has several (else the last in the bundle), NaN when none. Its attrs
        are ``units``, ``code``, ``system`` and ``display``. Observations without a
        quantity, a coding or a subject in the bundle are ignored.

    Raises
    ------
    InvalidInput
        Not a Bundle, not valid FHIR, no Patient, a repeated Patient id, or one code
        with values in several units.
    """
    bundle = _parse_bundle(_bundle_json(path_or_dict))
    entries = list(bundle.entry or [])
    patients, refs = _patients(entries)
    if not patients:
        raise InvalidInput("the FHIR Bundle holds no Patient resource; add the patients it describes")
    codes = _observations(entries, refs)
    names = _variable_names(codes)
    if example_dim in {"gender", "birth_year", *names.values()}:
        raise InvalidInput(f"example_dim {example_dim!r} is also a variable name; choose another")
    position = {pid: i for i, pid in enumerate(patients)}
    data_vars: dict[str, Any] = {
        "gender": (example_dim, np.asarray([g for g, _ in patients.values()], dtype=str)),
        "birth_year": (example_dim, np.asarray([y for _, y in patients.values()], dtype=float)),
    }
    for key, name in sorted(names.items(), key=lambda item: item[1]):
        entry = codes[key]
        attrs = {"units": next(iter(entry.units), ""), "code": entry.code, "system": entry.system}
        data_vars[name] = xr.Variable(
            example_dim, _latest_values(entry, position), {**attrs, "display": entry.display}
        )
    coord = np.asarray(list(patients), dtype=str)
    return xr.Dataset(data_vars, coords={example_dim: coord})


# --------------------------------------------------------------------------- dispatch

_LOADERS: dict[str, Callable[..., xr.Dataset]] = {
    "csv": load_csv,
    "dicom": load_dicom_folder,
    "fhir": load_fhir_bundle,
    "netcdf": load_netcdf,
    "parquet": load_parquet,
    "zarr": load_zarr,
}


def _is_zarr_folder(folder: Path) -> bool:
    return folder.suffix.lower() == ".zarr" or any((folder / m).exists() for m in _ZARR_MARKERS)


def _infer_format(p: Path) -> str:
    """The format of ``p`` from its suffix, or for a folder from what it holds."""
    if p.is_dir():
        if _is_zarr_folder(p):
            return "zarr"
        if any(f.suffix.lower() == ".dcm" for f in p.rglob("*") if f.is_file()):
            return "dicom"
        raise InvalidInput(
            f"cannot tell the format of folder {p.name!r}: it holds no .dcm file and no Zarr "
            "metadata; pass format='dicom' (DICOM files without .dcm) or format='zarr'"
        )
    fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"cannot tell the format of {p.name!r} from its extension; pass format= one of "
            f"{list(FORMATS)} (extensions: {sorted(_SUFFIX_FORMATS)})"
        )
    return fmt


def load(path: _StrPath, format: str | None = None, **options: Any) -> xr.Dataset:
    """Load ``path`` with the loader for its format.

    Parameters
    ----------
    path
        A file or folder.
    format
        One of :data:`FORMATS`; inferred from ``path`` when None (a folder of
        ``.dcm`` files is ``dicom``; a ``.zarr`` folder or one holding Zarr
        metadata is ``zarr``; otherwise the file extension decides).
    **options
        Passed on to the loader (``index``, ``columns``, ``fields``, ``size``,
        ``example_dim``, ...).

    Returns
    -------
    xarray.Dataset
        What the format's loader returns.

    Raises
    ------
    InvalidInput
        The path is missing, the format is unknown or cannot be inferred, an option
        does not fit the loader, or the loader rejects the file.
    """
    p = _existing(path, "data path", folder=None)
    fmt = _infer_format(p) if format is None else format.lower()
    loader = _LOADERS.get(fmt)
    if loader is None:
        raise InvalidInput(f"unknown format {format!r}; use one of {list(FORMATS)}")
    try:
        inspect.signature(loader).bind(p, **options)
    except TypeError as exc:
        accepted = [n for n in inspect.signature(loader).parameters][1:]
        raise InvalidInput(
            f"{sorted(options)} are not all options of {fmt!r} data ({loader.__name__} "
            f"accepts {accepted}); remove or rename the others"
        ) from exc
    return loader(p, **options)
