"""Selection networks on the CPU: the coordinate-wise median and trimmed mean with Numba.

Both statistics are a sum over the middle rows ``first..last`` of each column once it is
sorted. A comparator network (Batcher's odd-even merge sort on the next power of two)
finds those rows with branch-free min/max, the same for every column, so the loop over
columns is SIMD (8 float32 or 4 float64 lanes per AVX2 instruction, 16 or 8 with AVX-512:
the kernels ask LLVM for 512-bit vectors, which it does not use by default). Comparators are
dropped when they touch only padding, cannot reach the middle rows, or only swap two
values that both end up summed (:func:`comparators`): at N=50, 330 of Batcher's 543 remain.

For N up to :data:`MAX_UNROLLED` the network is generated as straight-line Python and
compiled per (N, first, last): every value stays in a register (or one spill slot)
instead of going through memory for each comparator, about 3x faster than a loop over
the comparator list in float64 (and float32 moves half the bytes). Compiling takes long
(about 6 s at N=50, 40 s at N=128, for each network and dtype), so the generated module
is written once under the kernel cache directory (``$NUMBA_CACHE_DIR`` or ``~/.cache``,
``fednb/kernels``), named by the hash of its own text and checked against it on every
load, and Numba caches its machine code beside it: a machine compiles each (N, k, dtype)
once. A column's N values lie in N rows: N memory streams, more than the hardware
prefetcher follows, so each chunk of 256 columns prefetches the next chunk's cache lines
in every row while its network runs (at N=100, P=1e6 here, 60 ms without either hint,
41 ms with 512-bit vectors, 23-29 ms with both). Larger N run the comparator list in a
loop over cache-sized blocks instead. float32 input is selected in float32 (sums of the
middle rows too, pairwise); anything else in float64. Inputs must be finite.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from fednb.kernels._launch import serialised_on_workqueue
from fednb.typing import FloatArray

__all__ = ["MAX_UNROLLED", "comparators", "coordinate_median", "trimmed_mean"]

MAX_UNROLLED = 128
_BLOCK = 2048  # columns per parallel task of the generated kernels
_LOOP_BLOCK = 256  # columns of the looped kernel's scratch (N rows of it stay in L2)
_CHUNK = 256  # columns of the generated kernels whose cache lines are prefetched together


def _merge(lo: int, n: int, r: int) -> Iterator[tuple[int, int]]:
    step = r * 2
    if step < n:
        yield from _merge(lo, n, step)
        yield from _merge(lo + r, n, step)
        yield from ((i, i + r) for i in range(lo + r, lo + n - r, step))
    else:
        yield (lo, lo + r)


def _sort(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from _sort(lo, mid)
        yield from _sort(mid + 1, hi)
        yield from _merge(lo, hi - lo + 1, 1)


@functools.lru_cache(maxsize=64)
def comparators(n: int, first: int, last: int) -> tuple[tuple[int, int], ...]:
    """Comparators (low row, high row) after which rows ``first..last`` of ``n`` hold the
    values that sorting would put there (in some order): Batcher's network on the next
    power of two, without the comparators that touch padding, that cannot reach those
    rows, or that only swap two values which are both summed afterwards."""
    m = 1
    while m < n:
        m *= 2
    pairs = [(a, d) for a, d in _sort(0, m - 1) if d < n]
    summed = set(range(first, last + 1))  # rows read only by the final sum from here on
    needed: set[int] = set()  # rows whose exact value a later comparator reads
    kept = []
    for a, d in reversed(pairs):
        if a in summed and d in summed:
            continue
        if a in summed or d in summed or a in needed or d in needed:
            kept.append((a, d))
            summed -= {a, d}
            needed |= {a, d}
    return tuple(reversed(kept))


def _tree(terms: list[str]) -> str:
    while len(terms) > 1:
        pairs = [f"({terms[i]} + {terms[i + 1]})" for i in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(terms) - len(terms) % 2 :]
    return terms[0]


def _source(n: int, first: int, last: int) -> str:
    """A module with ``kernel(x, p, out, block, scale)``: ``out[j]`` = ``scale`` times the sum
    of rows ``first..last`` of column ``j`` sorted, for ``x`` the (N, p) array flattened
    (``x[i, j]`` of a 2-D array compiled to gathers: its row stride is a runtime value), one
    fresh name per comparator output."""
    cur: dict[int, str] = {}
    body: list[str] = []

    def row(i: int) -> str:  # each row is loaded just before its first use: fewer live registers
        if i not in cur:
            body.append(f"v{i} = x[o{i} + j]")
            cur[i] = f"v{i}"
        return cur[i]

    for c, (a, d) in enumerate(comparators(n, first, last)):
        va, vd = row(a), row(d)
        body += [f"a{c} = min({va}, {vd})", f"d{c} = max({va}, {vd})"]
        cur[a], cur[d] = f"a{c}", f"d{c}"
    body.append(f"out[j] = {_tree([row(i) for i in range(first, last + 1)])} * scale")
    lines = ["# generated by fednb.kernels._select: do not edit",
             # Numba's cache checks this file only: the hints' own code is part of its name
             f"# fednb.kernels._intrinsics {_intrinsics_hash()}", "import numpy as np",
             "from numba import njit, prange",
             "from fednb.kernels._intrinsics import prefer_wide_vectors, prefetch", "", "",
             "@njit(parallel=True, fastmath=True, nogil=True, cache=True)",
             "def kernel(x, p, out, block, scale):",
             "    line = np.uint64(64 // x.itemsize)",
             f"    chunk = np.uint64({_CHUNK})",
             "    for b in prange((p + block - 1) // block):",
             "        prefer_wide_vectors()"]
    # unsigned offsets: a signed index gets a wraparound check that breaks the stride-1 form
    # LLVM needs for plain vector loads (it emitted gathers)
    lines += ["        lo = np.uint64(b * block)", "        hi = np.uint64(min(p, (b + 1) * block))"]
    lines += [f"        o{i} = np.uint64({i}) * np.uint64(p)" for i in sorted(cur)]
    # each chunk of columns asks for the next one's cache lines, in every row, while its
    # network runs: N rows are N memory streams, more than the hardware prefetcher follows
    lines += ["        for c0 in range(lo, hi, chunk):",
              "            c1 = min(hi, c0 + chunk)",
              "            for q in range(c1, min(np.uint64(p), c1 + chunk), line):"]
    lines += [f"                prefetch(x, o{i} + q)" for i in sorted(cur)]
    lines.append("            for j in range(c0, c1):")
    return "\n".join(lines + ["                " + s for s in body]) + "\n"


@functools.lru_cache(maxsize=1)
def _intrinsics_hash() -> str:
    from fednb.kernels import _intrinsics

    return hashlib.sha256(Path(_intrinsics.__file__).read_bytes()).hexdigest()[:16]


def _cache_dir() -> Path:
    base = os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base or Path.home() / ".cache") / "fednb" / "kernels"


def _write(src: str, name: str) -> Path:
    """The generated module's file, written once (atomically) and checked on every load."""
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"fednb-kernels-{os.getuid()}"):
        path = folder / f"{name}.py"
        try:
            if path.is_file() and path.read_text() == src:
                return path
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(src)
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    raise OSError("no writable directory for the generated kernels (set NUMBA_CACHE_DIR)")


@functools.lru_cache(maxsize=128)
def _unrolled(n: int, first: int, last: int) -> Callable[..., Any]:
    src = _source(n, first, last)
    name = "fednb_select_" + hashlib.sha256(src.encode()).hexdigest()[:20]
    spec = importlib.util.spec_from_file_location(name, _write(src, name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba's cache finds the kernel's globals by module name
    spec.loader.exec_module(module)
    return module.kernel  # type: ignore[no-any-return]


@njit(parallel=True, cache=True, fastmath=True)
def _looped(x, lows, highs, first, last, out, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    n, p = x.shape
    for b in prange((p + _LOOP_BLOCK - 1) // _LOOP_BLOCK):
        lo = b * _LOOP_BLOCK
        w = min(_LOOP_BLOCK, p - lo)
        buf = np.empty((n, _LOOP_BLOCK), dtype=x.dtype)
        for i in range(n):
            row = x[i]
            ulo = np.uint64(lo)  # unsigned: no wraparound check, plain loads (see _source)
            for j in range(w):
                buf[i, j] = row[ulo + np.uint64(j)]
        for c in range(lows.shape[0]):
            ra, rd = buf[lows[c]], buf[highs[c]]
            for j in range(w):
                u, v = ra[j], rd[j]
                ra[j] = min(u, v)
                rd[j] = max(u, v)
        for j in range(w):
            s = buf[first, j] * 0
            for i in range(first, last + 1):
                s += buf[i, j]
            out[lo + j] = s * scale


@serialised_on_workqueue
def _middle_mean(stacked: FloatArray, first: int, last: int) -> FloatArray:
    x = stacked if stacked.dtype in (np.float32, np.float64) else stacked.astype(np.float64)
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    out = np.empty(x.shape[1], dtype=x.dtype)
    scale = x.dtype.type(1.0 / (last - first + 1))
    if n <= MAX_UNROLLED:
        _unrolled(n, first, last)(x.reshape(-1), x.shape[1], out, _BLOCK, scale)
    else:
        net = np.array(comparators(n, first, last), dtype=np.int64).reshape(-1, 2)
        _looped(x, np.ascontiguousarray(net[:, 0]), np.ascontiguousarray(net[:, 1]), first, last, out, scale)
    return out.astype(np.float64, copy=False)


def coordinate_median(stacked: FloatArray) -> FloatArray:
    n = stacked.shape[0]
    return _middle_mean(stacked, (n - 1) // 2, n // 2)


def trimmed_mean(stacked: FloatArray, k: int) -> FloatArray:
    return _middle_mean(stacked, k, stacked.shape[0] - k - 1)
