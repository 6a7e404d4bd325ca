"""CuPy kernels: the aggregation and query kernels as array-module generic code.

Each ``xp_*`` function takes its array module ``xp`` first and uses only what NumPy and
CuPy share (``sort`` along axis 0, ``clip``, ``floor``, ``searchsorted``, ``bincount``,
elementwise ufuncs, ``astype`` and ``view``), so the very same code runs with
``xp = numpy`` on a machine without a GPU, which is how the test suite checks it against
:mod:`fednb.kernels._reference`, and with ``xp = cupy`` on one.

The unprefixed functions have the signatures of :mod:`fednb.kernels._cpu` and are what
``fednb.kernels`` calls when its backend is ``"cupy"``: NumPy inputs are copied to the
device and the result back; CuPy inputs stay on the device and so does the result.
CuPy is imported on first use, never by importing this module.

Each elementwise step is its own CuPy kernel (no ``cupy.fuse``), so nothing is fused
into an FMA and stochastic rounding stays bit-for-bit the reference's. The quantile draw
is one sequential pass: it stays on the CPU (``fednb.kernels`` falls back there).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from fednb.typing import FloatArray

__all__ = ["box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "stochastic_round",
           "trimmed_mean", "xp_box_muller", "xp_clipped_histogram", "xp_clipped_sum", "xp_coordinate_median",
           "xp_stochastic_round", "xp_trimmed_mean"]

# -- array-module generic kernels ------------------------------------------------------


def xp_coordinate_median(xp: ModuleType, stacked: Any) -> Any:
    """The median of each column of (N, P): the middle row of the column-sorted stack, or
    the mean of the middle two for even N (NumPy's ``median``)."""
    n = stacked.shape[0]
    s = xp.sort(stacked.astype(xp.float64, copy=False), axis=0)
    if n % 2:
        return s[n // 2].copy()
    return (s[n // 2 - 1] + s[n // 2]) / 2.0


def xp_trimmed_mean(xp: ModuleType, stacked: Any, k: int) -> Any:
    """The mean of each column of (N, P) without its ``k`` lowest and ``k`` highest values."""
    x = stacked.astype(xp.float64, copy=False)
    if k == 0:
        return x.mean(axis=0)
    n = x.shape[0]
    return xp.sort(x, axis=0)[k : n - k].mean(axis=0)


def xp_stochastic_round(xp: ModuleType, x: Any, scale: float, bound: float, bits: Any) -> Any:
    """``floor(clip(x, -bound, bound) * scale + bits / 2^32)`` as uint32 two's complement,
    the reference's operations in the reference's order."""
    y = xp.clip(x.astype(xp.float64), -bound, bound)
    y *= scale
    frac = bits.astype(xp.float64)
    frac *= 2.0**-32
    y += frac
    return xp.floor(y, out=y).astype(xp.int64).astype(xp.int32).view(xp.uint32)


def xp_box_muller(xp: ModuleType, u: Any, sigma: float) -> tuple[Any, Any]:
    """``(r cos theta, r sin theta)`` with ``r = sigma sqrt(-2 ln u[:m])`` and
    ``theta = 2 pi u[m:2m]``, ``m = len(u) // 2``."""
    m = u.shape[0] // 2
    r = xp.sqrt(-2.0 * xp.log(u[:m]))
    r *= sigma
    theta = u[m : 2 * m] * (2.0 * np.pi)
    return r * xp.cos(theta), r * xp.sin(theta)


def xp_clipped_sum(xp: ModuleType, x: Any, lo: float, hi: float) -> Any:
    """The sum over axis 0 of ``x`` clipped into ``[lo, hi]``, float64."""
    return xp.clip(x.astype(xp.float64), lo, hi).sum(axis=0)


def xp_clipped_histogram(xp: ModuleType, x: Any, lo: float, hi: float, bins: int) -> Any:
    """Counts (int64) of ``x`` clipped into ``[lo, hi]`` over ``bins`` equal bins, NaN
    dropped. The edges are NumPy's ``linspace`` (made on the host, so they are the very
    edges ``np.histogram`` uses); a value lands in the bin whose edges hold it, the last
    bin closed."""
    edges = xp.asarray(np.linspace(lo, hi, bins + 1))
    v = xp.clip(x.astype(xp.float64).ravel(), lo, hi)
    idx = xp.searchsorted(edges, v, side="right") - 1
    idx = xp.minimum(idx, bins - 1)  # v == hi: the last bin is closed
    idx = xp.where(xp.isnan(v), bins, idx)  # NaN: counted in a spare bin that is dropped
    return xp.bincount(idx, minlength=bins + 1)[:bins].astype(xp.int64)


# -- the backend: CuPy on the device ---------------------------------------------------


def _cupy() -> ModuleType:
    import cupy  # type: ignore[import-not-found]

    return cupy  # type: ignore[no-any-return]


def _on_device(fn: Callable[..., Any], *arrays: Any, **kw: Any) -> Any:
    """``fn(cupy, *arrays, **kw)``: NumPy inputs go to the device and the result comes back
    to the host; with any CuPy input the result stays on the device."""
    cp = _cupy()
    host = not any(isinstance(a, cp.ndarray) for a in arrays)
    out = fn(cp, *(cp.asarray(a) for a in arrays), **kw)
    return cp.asnumpy(out) if host else out


def coordinate_median(stacked: FloatArray) -> FloatArray:
    return _on_device(xp_coordinate_median, stacked)  # type: ignore[no-any-return]


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    return _on_device(xp_trimmed_mean, stacked, k=k)  # type: ignore[no-any-return]


def stochastic_round(x: FloatArray, scale: float, bound: float, bits: np.ndarray) -> np.ndarray:
    return _on_device(  # type: ignore[no-any-return]
        lambda xp, a, b: xp_stochastic_round(xp, a, float(scale), float(bound), b), x, bits)


def box_muller(u: FloatArray, sigma: float, cos_out: FloatArray, sin_out: FloatArray) -> None:
    cp = _cupy()
    c, s = xp_box_muller(cp, cp.asarray(u), float(sigma))
    for out, val in ((cos_out, c), (sin_out, s)):
        out[...] = val if isinstance(out, cp.ndarray) else cp.asnumpy(val)


def clipped_sum(x: FloatArray, lo: float, hi: float) -> FloatArray:
    return _on_device(  # type: ignore[no-any-return]
        lambda xp, a: xp_clipped_sum(xp, a, float(lo), float(hi)), x)


def clipped_histogram(x: FloatArray, lo: float, hi: float, bins: int) -> np.ndarray:
    return _on_device(  # type: ignore[no-any-return]
        lambda xp, a: xp_clipped_histogram(xp, a, float(lo), float(hi), int(bins)), x)
