"""The registry of loaders by format name, modelled on xarray's backend entry points.

A :class:`Loader` declares the file suffixes it opens, a guess from a path, and
``open``. Loaders are found in this order, which is also the order :func:`guess_format`
asks them in: the built-in ones, those installed packages declare in the entry point
group ``fednb.loaders`` (by name), then those passed to :func:`register`. So installing
a package never changes how a file that a built-in loader recognises is read.

Built-in and entry-point loaders are imported on first use: importing this package
costs nothing of pydicom, fhir.resources or pyarrow.
"""

from __future__ import annotations

import inspect
import re
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import xarray as xr

from fednb.errors import InvalidInput
from fednb.loaders._common import StrPath, existing

__all__ = ["ENTRY_POINT_GROUP", "Loader", "formats", "get", "guess_format", "load", "register",
           "unregister"]

ENTRY_POINT_GROUP = "fednb.loaders"
"""The entry point group third-party packages declare loaders in: ``format = "pkg.mod:Class"``."""

_FORMAT_NAME = re.compile(r"[a-z][a-z0-9_.+-]{0,63}")

# The order is the guessing order: Zarr before DICOM, as both open folders.
_BUILTIN = {
    "netcdf": "fednb.loaders._stores:NetCDFLoader",
    "zarr": "fednb.loaders._stores:ZarrLoader",
    "csv": "fednb.loaders._tables:CsvLoader",
    "parquet": "fednb.loaders._tables:ParquetLoader",
    "dicom": "fednb.loaders._dicom:DicomLoader",
    "fhir": "fednb.loaders._fhir:FhirLoader",
}


class Loader(ABC):
    """A reader of one data format into an in-memory :class:`xarray.Dataset`.

    Subclass it, set :attr:`suffixes` and :attr:`description`, implement :meth:`open`
    and, for formats a suffix does not tell, :meth:`guess_can_open`; then
    :func:`register` an instance, or declare the class in the entry point group
    ``fednb.loaders`` of your package::

        [project.entry-points."fednb.loaders"]
        edf = "mypkg.edf:EdfLoader"

    Examples
    --------
    >>> class TsvLoader(Loader):                       # doctest: +SKIP
    ...     suffixes = (".tsv",)
    ...     description = "a tab-separated table (.tsv)"
    ...     def open(self, path, *, index=None):
    ...         frame = pandas.read_csv(path, sep="\\t", index_col=index)
    ...         return xarray.Dataset.from_dataframe(frame.rename_axis("patient"))
    >>> register("tsv", TsvLoader())                   # doctest: +SKIP
    """

    suffixes: tuple[str, ...] = ()
    """Lower-case file suffixes, dot included, that :meth:`guess_can_open` accepts."""
    description: str = ""
    """What this loader opens, in a few words: shown in messages that list formats."""
    folder: bool = False
    """Whether the format can be a folder (then messages about folders list it)."""

    def guess_can_open(self, path: Path) -> bool:
        """Whether ``path`` (which exists) looks like this format; by default a file
        whose suffix is one of :attr:`suffixes`. Must not read the whole file."""
        return not path.is_dir() and path.suffix.lower() in self.suffixes

    @abstractmethod
    def open(self, path: Path, /, *args: Any, **options: Any) -> xr.Dataset:
        """Read ``path`` fully into memory.

        Parameters
        ----------
        path
            The file or folder, checked to exist.
        **options
            The loader's own keyword options (``index``, ``example_dim``, ...); the
            names its signature declares are the options :func:`load` accepts.

        Raises
        ------
        InvalidInput
            The file is not of this format, or an option does not fit it; say how to fix it.
        """

    def options(self) -> list[str]:
        """The names of the options :meth:`open` takes after the path."""
        return list(inspect.signature(self.open).parameters)[1:]


_lock = threading.RLock()
_entries: dict[str, Loader | EntryPoint] = {
    name: EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in _BUILTIN.items()
}
_plugins_found = False


def _find_plugins() -> None:
    """Add the entry points of installed packages once; a name taken already is skipped."""
    global _plugins_found
    with _lock:
        if _plugins_found:
            return
        _plugins_found = True
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            name = ep.name.lower()
            if name in _entries:
                warnings.warn(f"the loader {ep.value!r} declares format {ep.name!r}, which is "
                              "taken; it is ignored: rename its entry point", UserWarning,
                              stacklevel=3)
            else:
                _entries[name] = ep


def _resolve(name: str, entry: Loader | EntryPoint) -> Loader:
    """The loader behind ``entry``, imported and instantiated on first use."""
    if isinstance(entry, Loader):
        return entry
    try:
        found = entry.load()
        loader = found() if isinstance(found, type) and issubclass(found, Loader) else found
    except Exception as exc:  # a broken plugin raises anything while importing
        raise InvalidInput(f"the loader of format {name!r} ({entry.value}) failed to load "
                           f"({type(exc).__name__}: {exc}); fix or uninstall its package") from exc
    if not isinstance(loader, Loader):
        raise InvalidInput(f"the entry point of format {name!r} ({entry.value}) is not a "
                           "fednb.loaders.Loader; point it at a Loader subclass")
    with _lock:
        if _entries.get(name) is entry:
            _entries[name] = loader
    return loader


def register(format: str, loader: Loader) -> None:
    """Make ``loader`` open the format called ``format`` (and guess it after the others).

    Raises
    ------
    TypeError
        ``loader`` is not a :class:`Loader` instance.
    InvalidInput
        ``format`` is not a lower-case name, or is taken (:func:`unregister` it first).
    """
    if not isinstance(loader, Loader):
        raise TypeError(f"register() wants a fednb.loaders.Loader instance, got {type(loader).__name__}")
    if not _FORMAT_NAME.fullmatch(format):
        raise InvalidInput(f"format name {format[:80]!r} must be lower case: a letter, then "
                           "letters, digits or . _ + - (up to 64)")
    _find_plugins()
    with _lock:
        if format in _entries:
            raise InvalidInput(f"format {format!r} already has a loader; unregister({format!r}) "
                               "first, or choose another name")
        _entries[format] = loader


def unregister(format: str) -> None:
    """Forget the loader of ``format`` (InvalidInput if there is none)."""
    _find_plugins()
    with _lock:
        if _entries.pop(format.lower(), None) is None:
            raise InvalidInput(f"no loader of format {format!r} is registered")


def formats() -> tuple[str, ...]:
    """The names of the formats a loader is registered for, sorted."""
    _find_plugins()
    with _lock:
        return tuple(sorted(_entries))


def get(format: str) -> Loader:
    """The loader of ``format`` (case does not matter).

    Raises
    ------
    InvalidInput
        No loader has that name, or its package fails to load.
    """
    _find_plugins()
    name = format.lower()
    with _lock:
        entry = _entries.get(name)
    if entry is None:
        raise InvalidInput(f"unknown format {format!r}; use one of {list(formats())}")
    return _resolve(name, entry)


def _loaders_in_order() -> Iterator[tuple[str, Loader]]:
    """Every loader in guessing order, each imported only when reached."""
    _find_plugins()
    with _lock:
        entries = list(_entries.items())
    for name, entry in entries:
        yield name, _resolve(name, entry)


def guess_format(path: Path) -> str:
    """The format of the existing ``path``: the first loader whose guess accepts it.

    Raises
    ------
    InvalidInput
        No loader recognises it (the message lists what each one looks for), or a
        plugin asked in turn fails to load.
    """
    for name, loader in _loaders_in_order():
        if loader.guess_can_open(path):
            return name
    loaders = list(_loaders_in_order())
    if path.is_dir():
        shown = "; or ".join(f"format={name!r} for {loader.description or 'its folders'}"
                          for name, loader in loaders if loader.folder)
        raise InvalidInput(f"cannot tell the format of folder {path.name!r}; pass {shown}")
    suffixes = sorted({s for _, loader in loaders for s in loader.suffixes})
    raise InvalidInput(
        f"cannot tell the format of {path.name!r} from its extension; pass format= one of "
        f"{list(formats())} (extensions: {suffixes})"
    )


def load(path: StrPath, format: str | None = None, **options: Any) -> xr.Dataset:
    """Load ``path`` with the loader of its format.

    Parameters
    ----------
    path
        A file or folder.
    format
        A name from :func:`formats`; when None, the first loader that recognises
        ``path`` (:func:`guess_format`): a ``.zarr`` folder or one holding Zarr
        metadata is ``zarr``; a folder of ``.dcm`` files is ``dicom``; otherwise the
        file extension decides.
    **options
        Passed on to the loader (``index``, ``columns``, ``fields``, ``size``,
        ``example_dim``, ``max_bytes``, ...).

    Returns
    -------
    xarray.Dataset
        What the format's loader returns.

    Raises
    ------
    InvalidInput
        The path is missing, the format is unknown or cannot be guessed, an option
        does not fit the loader, or the loader rejects the file.
    """
    p = existing(path, "data path", folder=None)
    name = guess_format(p) if format is None else format.lower()
    loader = get(format if format is not None else name)
    try:
        inspect.signature(loader.open).bind(p, **options)
    except TypeError as exc:
        raise InvalidInput(
            f"{sorted(options)} are not all options of {name!r} data (its loader "
            f"{type(loader).__name__} accepts {loader.options()}); remove or rename the others"
        ) from exc
    return loader.open(p, **options)
