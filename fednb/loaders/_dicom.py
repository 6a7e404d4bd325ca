"""Folders of DICOM images: one 2-D grayscale image per example, chosen header fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import xarray as xr
from pydicom import datadict
from pydicom.multival import MultiValue

from fednb.errors import InvalidInput
from fednb.loaders._common import StrPath, existing
from fednb.loaders._registry import Loader
from fednb.typing import Array

__all__ = ["DicomLoader", "load_dicom_folder"]

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
    path: StrPath,
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
    folder = existing(path, "DICOM folder", folder=True)
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



class DicomLoader(Loader):
    """Folders of DICOM files: :func:`load_dicom_folder`.

    Guessed for a folder holding at least one ``.dcm`` file; DICOM files often have no
    suffix, so such folders need ``format="dicom"``.
    """

    description = "a folder of DICOM images (found by its .dcm files; needed when they have no suffix)"
    folder = True
    open = staticmethod(load_dicom_folder)

    def guess_can_open(self, path: Path) -> bool:
        """A folder with a ``.dcm`` file somewhere below it."""
        return path.is_dir() and any(f.suffix.lower() == ".dcm" for f in path.rglob("*") if f.is_file())
