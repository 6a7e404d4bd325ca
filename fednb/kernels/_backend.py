"""Which backend the kernels run on, probed once per process.

Order: CuPy on a GPU (``cupy.cuda.is_available()``), Numba CUDA on a real GPU, Numba on the
CPU (parallel), NumPy. ``FEDNB_BACKEND`` overrides (``cupy``, ``numba-cuda``, ``numba``,
``numpy``, or ``numba-cuda-sim``). With ``NUMBA_ENABLE_CUDASIM=1`` Numba reports CUDA as
available on any machine, so the probe never takes Numba CUDA from that alone: only
``FEDNB_BACKEND=numba-cuda-sim`` selects the simulator (for tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from fednb.errors import InvalidInput

__all__ = ["BACKENDS", "backend"]

BACKENDS = ("cupy", "numba-cuda", "numba-cuda-sim", "numba", "numpy")


def _has_cupy() -> bool:
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:  # a broken driver or toolkit: no GPU for us
        return False


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _has_numba_cuda(simulated: bool) -> bool:
    if (os.environ.get("NUMBA_ENABLE_CUDASIM") == "1") != simulated or not _has_numba():
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())  # type: ignore[no-untyped-call]
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def backend() -> str:
    """The kernels' backend in this process: one of :data:`BACKENDS`."""
    forced = os.environ.get("FEDNB_BACKEND", "").strip()
    if forced:
        if forced not in BACKENDS:
            raise InvalidInput(f"FEDNB_BACKEND={forced!r} is not one of {BACKENDS}")
        checks: dict[str, Callable[[], bool]] = {
            "cupy": _has_cupy, "numba-cuda": lambda: _has_numba_cuda(False),
            "numba-cuda-sim": lambda: _has_numba_cuda(True), "numba": _has_numba, "numpy": lambda: True}
        ok = checks[forced]()
        if not ok:
            hint = " (set NUMBA_ENABLE_CUDASIM=1 too)" if forced == "numba-cuda-sim" else ""
            raise InvalidInput(f"FEDNB_BACKEND={forced!r} is not available on this machine{hint}")
        return forced
    if _has_cupy():
        return "cupy"
    if _has_numba_cuda(False):
        return "numba-cuda"
    return "numba" if _has_numba() else "numpy"
