"""Kernels for aggregation, each with a NumPy reference, on the backend probed once.

``fednb.kernels.backend()`` says which backend runs them (see :mod:`._backend`):
Numba's parallel CPU kernels here, CuPy or Numba CUDA on a GPU (Numba CUDA also under
Numba's simulator in tests), NumPy otherwise. The CuPy kernels (:mod:`._cupy`) take NumPy
arrays (copied to the device and back) or CuPy arrays (the result stays on the device).
Every kernel returns what its reference in :mod:`fednb.kernels._reference` returns, within
float64 rounding.

Kernels so far: the coordinate-wise median and the trimmed mean of N stacked updates
(the robust strategies' hot spots: NumPy's sort-based versions take 20-90x a weighted
mean, the selection networks of :mod:`._select` 1.3-5x, in float32 for float32 updates),
Krum's squared distances (a float32 Gram matrix with a bound on each distance's error,
:mod:`._gram`), the stochastic rounding of secure aggregation (one fused pass instead of
NumPy's six), the Box-Muller transform of DP noise, and the statistics of ``query``
requests: the clipped sum, the clipped histogram and the exponential mechanism's
quantile draw (the domain runs queries in its own process, so they use the probed
backend), and the weighted sum of the FedAvg family (one pass over the updates whatever their number,
accumulated in float64, its finiteness checked on the way; the reference is a BLAS axpy
per update, on one thread: :func:`one_blas_thread`).
Numba compiles each kernel on first use and caches it: :func:`precompile` (``python -m
fednb.kernels --precompile``) does it at install, and a first call that compiles says so.
Sandboxed workers run the NumPy references (``FEDNB_BACKEND=numpy``): no JIT compiler
beside untrusted code; the workers of GPU jobs run the CuPy kernels where CuPy finds the
GPU (the job has CuPy's compiler anyway).

Process-wide settings (see docs/federated.md, "Process-wide settings"): BLAS's thread
count is limited only inside :func:`one_blas_thread` and put back on exit; Numba's
threading layer and thread count are read, never set; glibc's ``mallopt`` thresholds,
which cannot be put back, change only inside :func:`keep_freed_memory`, which ``simulate``
enters only with ``FEDNB_KEEP_FREED_MEMORY=1``. The CPU kernels use Numba internals
and check first that Numba is in the tested range (:mod:`._compat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
from numpy.typing import DTypeLike

from fednb.errors import InvalidInput
from fednb.kernels import _reference
from fednb.kernels._backend import BACKENDS, backend
from fednb.kernels._blas import all_finite, one_blas_thread, other_threads_in_blas, usable_cores
from fednb.kernels._compile import first_use, precompile
from fednb.kernels._memory import keep_freed_memory, keep_freed_memory_if_asked
from fednb.typing import FloatArray

__all__ = ["BACKENDS", "all_finite", "backend", "box_muller", "clipped_histogram", "clipped_sum",
           "coordinate_median", "keep_freed_memory", "keep_freed_memory_if_asked", "one_blas_thread",
           "other_threads_in_blas",
           "precompile", "quantile_pick", "sq_distances",
           "stochastic_round", "trimmed_mean", "usable_cores", "weighted_sum", "weighted_sum_checked"]


def _check(stacked: FloatArray) -> None:
    if stacked.ndim != 2 or stacked.shape[0] < 1:
        raise InvalidInput(f"kernels take stacked updates of shape (N, P) with N >= 1, got {stacked.shape}")


def _module(n: int):  # type: ignore[no-untyped-def]
    name = backend()
    if name in ("numba-cuda", "numba-cuda-sim"):
        from fednb.kernels import _cuda

        if n <= _cuda.MAX_N:
            return _cuda
        name = "numba"
    if name == "cupy":
        from fednb.kernels import _cupy

        return _cupy
    if name == "numba":
        return _cpu_module()
    return _reference


def _cpu_module() -> ModuleType:
    try:
        from fednb.kernels import _cpu
    except ImportError:
        return _reference
    return _cpu


def weighted_sum(vectors: Sequence[FloatArray], weights: Sequence[float], *,
                 dtype: DTypeLike | None = None) -> FloatArray:
    """``sum_i weights[i] * vectors[i]`` over flat vectors of one length, in ``dtype``: by
    default float32 when every vector is float32 (as in Flower and PyTorch), else float64.
    On the CPU backends a Numba kernel reads each vector once and accumulates in float64
    whatever the output dtype; the reference is one BLAS axpy per vector in that dtype."""
    return weighted_sum_checked(vectors, weights, dtype=dtype)[0]


def weighted_sum_checked(vectors: Sequence[FloatArray], weights: Sequence[float], *,
                         dtype: DTypeLike | None = None) -> tuple[FloatArray, bool]:
    """:func:`weighted_sum`, and whether every value of the sum is finite (the Numba kernel
    checks each block of the output while it is in the cache; the reference scans it).

    A sum of finite vectors with finite weights is finite unless it overflows, and a NaN or
    infinite input with a nonzero weight makes it NaN or infinite: one check of the sum
    covers its inputs (the reference's BLAS skips a vector weighted 0, NaN and all)."""
    vectors = tuple(vectors)  # what is checked is what is summed
    if not vectors or len(vectors) != len(weights):
        raise InvalidInput("weighted_sum takes as many weights as vectors, and at least one")
    size = vectors[0].shape
    if len(size) != 1 or any(v.shape != size for v in vectors):
        raise InvalidInput("weighted_sum takes flat vectors of one length")
    dtypes = {v.dtype for v in vectors}
    out = np.dtype(np.float32 if dtypes == {np.dtype(np.float32)} else np.float64) if dtype is None \
        else np.dtype(dtype)
    if out not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidInput(f"weighted_sum returns float32 or float64, not {out}")
    fast = (dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}
            and all(v.flags.c_contiguous and v.flags.aligned for v in vectors))
    if fast and backend() != "numpy":
        try:
            from fednb.kernels import _sum
        except ImportError:
            pass
        else:
            with first_use("weighted_sum", out, *sorted(d.str for d in dtypes), what="the weighted sum"):
                return _sum.weighted_sum(vectors, weights, out)
    total = _reference.weighted_sum(vectors, weights, out)
    return total, all_finite(total)


def coordinate_median(stacked: FloatArray) -> FloatArray:
    """The coordinate-wise median of the rows of ``stacked`` (N, P), float64."""
    _check(stacked)
    n = stacked.shape[0]
    with first_use("median", n, stacked.dtype.str, what=f"the median network of {n} rows"):
        return _module(n).coordinate_median(stacked)  # type: ignore[no-any-return]


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    """The coordinate-wise mean of ``stacked`` (N, P) after dropping the ``k`` lowest and
    ``k`` highest values of each coordinate, float64 (summed in float32 for float32 input)."""
    _check(stacked)
    if not 0 <= 2 * k < stacked.shape[0]:
        raise InvalidInput(f"trimming {k} from each end leaves nothing of {stacked.shape[0]} updates")
    n = stacked.shape[0]
    with first_use("trimmed", n, k, stacked.dtype.str, what=f"the trimmed-mean network of {n} rows"):
        return _module(n).trimmed_mean(stacked, k)  # type: ignore[no-any-return]


def sq_distances(rows: Sequence[FloatArray], *, exact: bool = False) -> tuple[FloatArray, FloatArray]:
    """Squared Euclidean distances (N, N) float64 between N flat vectors (Krum's), and a
    bound on the absolute error of each. Float32 rows go to the CPU kernel (a Gram
    matrix of float32 products summed 256 at a time, then in float64) unless the backend
    is NumPy or ``exact``; anything else sums the differences pair by pair in float64
    (errors near 1e-12 of each distance, ties kept), on the CPU kernels where Numba is."""
    if not rows or any(r.ndim != 1 or r.shape != rows[0].shape for r in rows):
        raise InvalidInput("sq_distances takes one or more flat vectors of one length")
    module = _reference if backend() == "numpy" else _cpu_module()
    if exact or not all(r.dtype == np.float32 for r in rows):
        with first_use("distances", "exact", what="Krum's float64 distances"):
            return getattr(module, "sq_distances_exact", module.sq_distances)(rows)  # type: ignore[no-any-return]
    with first_use("distances", "gram", what="Krum's float32 Gram kernel"):
        return module.sq_distances(rows)  # type: ignore[no-any-return]


def stochastic_round(x: FloatArray, scale: float, bound: float, bits: np.ndarray) -> np.ndarray:
    """``floor(clip(x, -bound, bound) * scale + bits / 2^32)`` as uint32 two's complement (the
    quantisation of secure aggregation). ``bits`` are uniform uint32 from the caller's
    cryptographic stream: the kernel transforms them and never draws randomness itself."""
    if x.ndim != 1 or bits.shape != x.shape or bits.dtype != np.uint32:
        raise InvalidInput("stochastic_round takes a flat vector and as many uint32 random bits")
    return _module(1).stochastic_round(x, scale, bound, bits)  # type: ignore[no-any-return]


def box_muller(u: FloatArray, sigma: float, cos_out: FloatArray, sin_out: FloatArray) -> None:
    """Gaussian noise N(0, sigma^2) from the caller's uniforms on (0, 1) (the Box-Muller
    transform of DP noise): ``len(u) // 2`` pairs fill ``cos_out`` and ``sin_out``. The
    uniforms come from a cryptographic stream; the kernel only transforms them."""
    m = u.shape[0] // 2
    if u.ndim != 1 or u.dtype != np.float64 or cos_out.shape != (m,) or sin_out.shape != (m,):
        raise InvalidInput("box_muller takes 2m float64 uniforms and two outputs of length m")
    _module(1).box_muller(u, sigma, cos_out, sin_out)


def clipped_sum(x: FloatArray, lo: float, hi: float) -> FloatArray:
    """The sum over the first axis (patients) of ``x`` clipped into ``[lo, hi]``, float64,
    of shape ``x.shape[1:]`` (a query's sum, before its noise)."""
    if x.ndim < 1 or not lo <= hi:
        raise InvalidInput("clipped_sum takes an array with a patient axis and ordered bounds")
    return _module(1).clipped_sum(x, lo, hi)  # type: ignore[no-any-return]


def clipped_histogram(x: FloatArray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts (int64) of the values of ``x`` clipped into ``[lo, hi]``, over ``bins`` equal
    bins with NumPy's edges (the last bin closed); NaN values are not counted."""
    if bins < 1 or not lo < hi:
        raise InvalidInput("clipped_histogram takes bins >= 1 and bounds lo < hi")
    return _module(1).clipped_histogram(x, lo, hi, bins)  # type: ignore[no-any-return]


def quantile_pick(v: FloatArray, lo: float, hi: float, target: float, eps: float, u: float) -> int:
    """The exponential mechanism's choice of a gap for a quantile (Smith 2011): over the
    gaps between ``lo``, the sorted clipped values ``v`` and ``hi``, gap ``i`` weighs
    ``width * exp(-eps * |i - target| / 2)``; ``u`` is the caller's uniform draw. Runs on
    the CPU (one sequential pass after the sort)."""
    if v.ndim != 1 or not 0.0 <= u <= 1.0:
        raise InvalidInput("quantile_pick takes sorted values and a uniform in [0, 1]")
    module = _module(1)
    pick = getattr(module, "quantile_pick", None)
    if pick is None:  # the CUDA and CuPy modules leave this sequential pass to the CPU
        pick = _cpu_module().quantile_pick
    return int(pick(v, lo, hi, target, eps, u))
