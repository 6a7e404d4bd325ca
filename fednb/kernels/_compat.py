"""The Numba and llvmlite versions the CPU kernels were tested with, and the internals they use.

The kernels reach past Numba's public API in three places: two LLVM hints and an address
cast built with ``numba.core.cgutils`` and llvmlite's IR classes (:mod:`._intrinsics`,
:mod:`._sum`; a function attribute goes into llvmlite's ``AttributeSet``, a ``set``,
directly), and generated modules written under the kernel cache directory and imported
for Numba's on-disk cache to find (:mod:`._select`). A new Numba may move any of them; a
kernel would then fail deep inside a compile. So the CPU kernels check the installed
versions first (:func:`require_tested_numba`) and raise :class:`UntestedNumba`, naming
the tested range, outside it; ``FEDNB_ALLOW_UNTESTED_NUMBA=1`` turns that into a warning.
``tests/unit/test_numba_canary.py`` fails on a new Numba until the range is widened here,
after the kernel tests pass on it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import warnings

__all__ = ["LLVMLITE_TESTED", "NUMBA_INTERNALS", "NUMBA_TESTED", "UntestedNumba", "missing_internals",
           "require_tested_numba", "version_tuple"]

NUMBA_TESTED = ((0, 60), (0, 69))
"""Numba releases the kernels were tested with: from the first (inclusive) to the second
(exclusive), by (major, minor)."""

LLVMLITE_TESTED = ((0, 43), (0, 51))
"""llvmlite releases paired with :data:`NUMBA_TESTED` (llvmlite 0.43 came with Numba 0.60)."""

NUMBA_INTERNALS = (
    "numba.core.cgutils:voidptr_t", "numba.core.cgutils:get_item_pointer",
    "numba.core.cgutils:get_or_insert_function", "numba.extending:intrinsic", "numba:carray",
    "numba:threading_layer", "numba:get_num_threads", "numba.typed:List",
    "llvmlite.ir:IntType", "llvmlite.ir:VoidType", "llvmlite.ir:FunctionType",
    "llvmlite.ir.values:AttributeSet",
)
"""Every name outside Numba's documented ``@njit`` surface that the kernels use, as
``module:attribute``."""


class UntestedNumba(RuntimeError):
    """The installed Numba or llvmlite is outside the range the CPU kernels were tested with.

    Not an ``ImportError``: the kernels fall back to NumPy quietly only where Numba is
    missing, never to hide a Numba they may miscompile with."""


def version_tuple(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"0.68.1"`` or ``"0.70.0rc1"``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise UntestedNumba(f"cannot read the version {version!r}")
    return int(m.group(1)), int(m.group(2))


def _outside(name: str, version: str, tested: tuple[tuple[int, int], tuple[int, int]]) -> str | None:
    lo, hi = tested
    if lo <= version_tuple(version) < hi:
        return None
    return (f"{name} {version} is outside the range fednb's CPU kernels were tested with "
            f"(>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]})")


def missing_internals() -> list[str]:
    """The entries of :data:`NUMBA_INTERNALS` that the installed Numba and llvmlite lack."""
    missing = []
    for entry in NUMBA_INTERNALS:
        module, attr = entry.split(":")
        try:
            found = hasattr(importlib.import_module(module), attr)
        except ImportError:
            found = False
        if not found:
            missing.append(entry)
    if "llvmlite.ir.values:AttributeSet" not in missing:
        from llvmlite.ir import values  # type: ignore[import-untyped]

        if not issubclass(values.AttributeSet, set):  # _intrinsics adds to it as a set
            missing.append("llvmlite.ir.values:AttributeSet as a set")
    return missing


@functools.lru_cache(maxsize=1)
def require_tested_numba() -> None:
    """Raise :class:`UntestedNumba` unless Numba and llvmlite are in the tested ranges and
    have every internal the kernels use (a warning instead with
    ``FEDNB_ALLOW_UNTESTED_NUMBA=1``). Checked once per process."""
    import llvmlite  # type: ignore[import-untyped]
    import numba

    problems = [p for p in (_outside("numba", numba.__version__, NUMBA_TESTED),
                            _outside("llvmlite", llvmlite.__version__, LLVMLITE_TESTED)) if p]
    missing = missing_internals()
    if missing:
        problems.append("Numba internals the kernels use are missing: " + ", ".join(missing))
    if not problems:
        return
    message = "; ".join(problems) + (". Install a tested Numba, or set FEDNB_BACKEND=numpy "
                                     "(the NumPy references)")
    if os.environ.get("FEDNB_ALLOW_UNTESTED_NUMBA") == "1":
        warnings.warn(message + "; FEDNB_ALLOW_UNTESTED_NUMBA=1: going on", RuntimeWarning, stacklevel=2)
        return
    raise UntestedNumba(message)
