"""NetCDF (3 and 4/HDF5) files and Zarr stores, read with xarray's own engines."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from fednb.errors import InvalidInput
from fednb.loaders._common import StrPath, check_decompressed_size, check_example_dim, existing
from fednb.loaders._registry import Loader

__all__ = ["NetCDFLoader", "ZarrLoader", "load_netcdf", "load_zarr"]

_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


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


def load_netcdf(path: StrPath, *, example_dim: str | None = None,
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
    p = existing(path, "NetCDF file")
    engine = _netcdf_engine(p)
    try:
        with xr.open_dataset(p, engine=engine) as lazy:
            check_decompressed_size(lazy, p, max_bytes)
            ds = lazy.load()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(
            f"could not read NetCDF file {p.name} with engine {engine!r} ({exc}); "
            "check that the file is complete and not corrupt"
        ) from exc
    return check_example_dim(ds, example_dim, p)


def load_zarr(path: StrPath, *, example_dim: str | None = None,
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
    p = existing(path, "Zarr store", folder=None)
    try:
        with xr.open_zarr(p) as ds:
            check_decompressed_size(ds, p, max_bytes)
            loaded = ds.load()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(
            f"could not read Zarr store {p.name} ({exc}); pass the folder that holds the "
            "group's metadata (.zgroup or zarr.json)"
        ) from exc
    return check_example_dim(loaded, example_dim, p)


class NetCDFLoader(Loader):
    """NetCDF3 and NetCDF4/HDF5 files: :func:`load_netcdf`."""

    suffixes = (".nc", ".nc4", ".cdf", ".h5", ".hdf5")
    description = "a NetCDF3 or NetCDF4/HDF5 file (.nc, .nc4, .cdf, .h5, .hdf5)"
    open = staticmethod(load_netcdf)


class ZarrLoader(Loader):
    """Zarr stores, format 2 or 3: :func:`load_zarr`."""

    suffixes = (".zarr",)
    description = "a Zarr store (a .zarr folder, or one holding .zgroup, .zarray or zarr.json)"
    folder = True
    open = staticmethod(load_zarr)

    def guess_can_open(self, path: Path) -> bool:
        """A ``.zarr`` path, or a folder holding Zarr metadata whatever its name."""
        if path.suffix.lower() == ".zarr":
            return True
        return path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)
