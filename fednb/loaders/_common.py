"""What every loader checks: the path exists, the example dimension, the memory cap."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeAlias

import xarray as xr

from fednb.errors import InvalidInput

__all__ = ["StrPath", "check_decompressed_size", "check_example_dim", "existing", "max_load_bytes"]

StrPath: TypeAlias = "str | os.PathLike[str]"
"""A path as the owner types it."""


def existing(path: StrPath, what: str, *, folder: bool | None = False) -> Path:
    """``path`` as a :class:`Path`, checked to exist (as a folder, a file or either).

    Parameters
    ----------
    path
        The path, ``~`` expanded.
    what
        What the path should be, for the message (``"CSV file"``).
    folder
        True: it must be a folder; False: a file; None: either.

    Raises
    ------
    InvalidInput
        The path is missing, or is a file where a folder is wanted (or the reverse).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInput(f"{what} {str(p)!r} does not exist; check the path and try again")
    if folder is True and not p.is_dir():
        raise InvalidInput(f"{what} {str(p)!r} is a file, not a folder; pass the folder instead")
    if folder is False and not p.is_file():
        raise InvalidInput(f"{what} {str(p)!r} is a folder, not a file; pass the file instead")
    return p


def check_example_dim(ds: xr.Dataset, example_dim: str | None, source: Path) -> xr.Dataset:
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


def check_decompressed_size(ds: xr.Dataset, source: Path, cap: int | None) -> None:
    """Refuse, from the metadata alone, a file that would decompress past ``cap`` bytes (a
    decompression bomb: a small file whose chunks hold a huge, well-compressed array)."""
    cap = max_load_bytes() if cap is None else cap
    if ds.nbytes > cap:
        raise InvalidInput(
            f"{source.name} would take {ds.nbytes / 2**30:.1f} GiB in memory once decompressed, "
            f"over the cap of {cap / 2**30:.1f} GiB; check the file (a small file that declares "
            "huge arrays is a decompression bomb), or pass max_bytes= to read a larger one"
        )
