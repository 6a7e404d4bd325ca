"""Numba CUDA kernels: one thread per coordinate, its column sorted in registers.

On a machine without a GPU they run under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` with ``FEDNB_BACKEND=numba-cuda-sim``), which is how CI tests
them. Rounds of more than :data:`MAX_N` updates go to the CPU kernels.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from fednb.kernels._launch import serialised_on_simulator
from fednb.typing import FloatArray

__all__ = ["MAX_N", "box_muller", "clipped_histogram", "clipped_sum", "coordinate_median", "stochastic_round",
           "trimmed_mean"]

MAX_N = 128
_THREADS = 128


@cuda.jit
def _kernel(x, k, median, out):  # type: ignore[no-untyped-def]  # pragma: no cover - device code
    j = cuda.grid(1)  # type: ignore[attr-defined]
    n = x.shape[0]
    if j >= x.shape[1]:
        return
    col = cuda.local.array(MAX_N, float64)  # type: ignore[attr-defined]
    for i in range(n):
        v = x[i, j]
        h = i - 1
        while h >= 0 and col[h] > v:
            col[h + 1] = col[h]
            h -= 1
        col[h + 1] = v
    if median:
        out[j] = col[n // 2] if n % 2 else 0.5 * (col[n // 2 - 1] + col[n // 2])
    else:
        s = 0.0
        for i in range(k, n - k):
            s += col[i]
        out[j] = s / (n - 2 * k)


@serialised_on_simulator
def _run(stacked: FloatArray, k: int, median: bool) -> FloatArray:
    x = np.ascontiguousarray(stacked, dtype=np.float64)
    p = x.shape[1]
    d_x, d_out = cuda.to_device(x), cuda.device_array(p, dtype=np.float64)
    _kernel[math.ceil(p / _THREADS), _THREADS](d_x, k, median, d_out)
    return np.asarray(d_out.copy_to_host())


def coordinate_median(stacked: FloatArray) -> FloatArray:
    return _run(stacked, 0, True)


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    return _run(stacked, k, False)


@cuda.jit
def _round_kernel(x, scale, bound, bits, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    i = cuda.grid(1)  # type: ignore[attr-defined]
    if i < x.shape[0]:
        v = min(max(x[i], -bound), bound) * scale + bits[i] * 2.3283064365386963e-10
        out[i] = math.floor(v) & 0xFFFFFFFF


@serialised_on_simulator
def stochastic_round(x: FloatArray, scale: float, bound: float, bits: np.ndarray) -> np.ndarray:
    d_out = cuda.device_array(x.shape[0], dtype=np.uint32)
    _round_kernel[math.ceil(x.shape[0] / _THREADS), _THREADS](
        cuda.to_device(np.ascontiguousarray(x, dtype=np.float64)), float(scale), float(bound),
        cuda.to_device(bits), d_out)
    return np.asarray(d_out.copy_to_host())


@cuda.jit
def _box_muller_kernel(u, sigma, cos_out, sin_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    i = cuda.grid(1)  # type: ignore[attr-defined]
    m = u.shape[0] // 2
    if i < m:
        r = sigma * math.sqrt(-2.0 * math.log(u[i]))
        theta = u[m + i] * (2.0 * math.pi)
        cos_out[i] = r * math.cos(theta)
        sin_out[i] = r * math.sin(theta)


@serialised_on_simulator
def box_muller(u: FloatArray, sigma: float, cos_out: FloatArray, sin_out: FloatArray) -> None:
    m = u.shape[0] // 2
    d_cos, d_sin = cuda.device_array(m, dtype=np.float64), cuda.device_array(m, dtype=np.float64)
    blocks = max(1, math.ceil(m / _THREADS))
    _box_muller_kernel[blocks, _THREADS](cuda.to_device(u), float(sigma), d_cos, d_sin)
    cos_out[:] = d_cos.copy_to_host()
    sin_out[:] = d_sin.copy_to_host()


@cuda.jit
def _clipped_sum_kernel(x, lo, hi, out):  # type: ignore[no-untyped-def]  # pragma: no cover - device code
    j = cuda.grid(1)  # type: ignore[attr-defined]
    if j < x.shape[1]:  # one thread per column, down the patients
        acc = 0.0
        for i in range(x.shape[0]):
            v = x[i, j]
            acc += lo if v < lo else (hi if v > hi else v)
        out[j] = acc


@serialised_on_simulator
def clipped_sum(x: FloatArray, lo: float, hi: float) -> FloatArray:
    flat = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1))
    d_out = cuda.device_array(flat.shape[1], dtype=np.float64)
    _clipped_sum_kernel[max(1, math.ceil(flat.shape[1] / _THREADS)), _THREADS](
        cuda.to_device(flat), float(lo), float(hi), d_out)
    return np.asarray(d_out.copy_to_host().reshape(x.shape[1:]))


@cuda.jit
def _histogram_kernel(x, lo, hi, edges, counts):  # type: ignore[no-untyped-def]  # pragma: no cover
    i = cuda.grid(1)  # type: ignore[attr-defined]
    bins = edges.shape[0] - 1
    if i < x.shape[0] and x[i] == x[i]:  # NaN: dropped, as NumPy does
        v = lo if x[i] < lo else (hi if x[i] > hi else x[i])
        k = min(int((v - lo) * (bins / (hi - lo))), bins - 1)
        if v < edges[k]:
            k -= 1
        elif k + 1 < bins and v >= edges[k + 1]:
            k += 1
        cuda.atomic.add(counts, k, 1)  # type: ignore[attr-defined]


@serialised_on_simulator
def clipped_histogram(x: FloatArray, lo: float, hi: float, bins: int) -> np.ndarray:
    flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
    d_counts = cuda.to_device(np.zeros(bins, dtype=np.int64))
    _histogram_kernel[max(1, math.ceil(flat.shape[0] / _THREADS)), _THREADS](
        cuda.to_device(flat), float(lo), float(hi), cuda.to_device(np.linspace(lo, hi, bins + 1)), d_counts)
    return np.asarray(d_counts.copy_to_host())
