"""Compatibility names for :mod:`fednb.loaders`, where the loaders now live.

Import from :mod:`fednb.loaders` instead; this module goes once nothing imports it.
"""

from __future__ import annotations

from fednb.loaders import (
    load,
    load_csv,
    load_dicom_folder,
    load_fhir_bundle,
    load_netcdf,
    load_parquet,
    load_zarr,
    max_load_bytes,
)

__all__ = [
    "FORMATS",
    "load",
    "load_csv",
    "load_dicom_folder",
    "load_fhir_bundle",
    "load_netcdf",
    "load_parquet",
    "load_zarr",
    "max_load_bytes",
]

FORMATS = ("csv", "dicom", "fhir", "netcdf", "parquet", "zarr")
"""The built-in formats; :func:`fednb.loaders.formats` lists registered ones too."""
