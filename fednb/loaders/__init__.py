"""Turn a data owner's local files into an :class:`xarray.Dataset`: loaders by format.

Every loader returns a dataset held in memory whose examples (patients, images) lie
along one dimension, ``example_dim``: ``"patient"`` for tables and FHIR bundles,
``"image"`` for DICOM folders. NetCDF and Zarr files keep the dimensions they were
written with.

============  ==========================================  =========================
format        files                                       loader
============  ==========================================  =========================
``netcdf``    ``.nc``, ``.nc4``, ``.cdf``, ``.h5``        :func:`load_netcdf`
``zarr``      a ``.zarr`` folder                          :func:`load_zarr`
``csv``       ``.csv``                                    :func:`load_csv`
``parquet``   ``.parquet``, ``.pq``                       :func:`load_parquet`
``dicom``     a folder of DICOM files                     :func:`load_dicom_folder`
``fhir``      a FHIR R4 Bundle as ``.json``               :func:`load_fhir_bundle`
============  ==========================================  =========================

:func:`load` picks the loader from the registry: by the ``format`` given, or the first
whose guess accepts the path. Other formats plug in as xarray's backends do: subclass
:class:`Loader` and :func:`register` it, or declare it in the entry point group
``fednb.loaders``. Nothing here unpickles: the readers are xarray's, pandas',
pydicom's and fhir.resources', run on the owner's own files.

The per-format modules load on first use, so importing this package does not import
pydicom, fhir.resources or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fednb.loaders._common import max_load_bytes
from fednb.loaders._registry import (
    ENTRY_POINT_GROUP,
    Loader,
    formats,
    get,
    guess_format,
    load,
    register,
    unregister,
)

if TYPE_CHECKING:
    from fednb.loaders._dicom import load_dicom_folder
    from fednb.loaders._fhir import load_fhir_bundle
    from fednb.loaders._stores import load_netcdf, load_zarr
    from fednb.loaders._tables import load_csv, load_parquet

__all__ = [
    "ENTRY_POINT_GROUP",
    "Loader",
    "formats",
    "get",
    "guess_format",
    "load",
    "load_csv",
    "load_dicom_folder",
    "load_fhir_bundle",
    "load_netcdf",
    "load_parquet",
    "load_zarr",
    "max_load_bytes",
    "register",
    "unregister",
]

_WHERE = {
    "load_csv": "fednb.loaders._tables",
    "load_dicom_folder": "fednb.loaders._dicom",
    "load_fhir_bundle": "fednb.loaders._fhir",
    "load_netcdf": "fednb.loaders._stores",
    "load_parquet": "fednb.loaders._tables",
    "load_zarr": "fednb.loaders._stores",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fednb.loaders' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
