"""Two LLVM hints for Numba kernels that Numba does not expose.

- :func:`prefetch` asks for the cache line of ``array[index]`` ahead of its use
  (``llvm.prefetch``: a read, kept in every cache level). A kernel that walks many rows of
  an array at once (a selection network reads all N rows of a column together) has more
  memory streams than the hardware prefetcher follows: the loads then wait on memory.
- :func:`prefer_wide_vectors` lets LLVM vectorise the enclosing compiled function with
  512-bit registers where the CPU has AVX-512. LLVM's default on those Xeons is 256-bit
  vectors (its "prefer-vector-width" tuning); a kernel of min/max over registers then
  does twice the instructions. It sets that function attribute, which llvmlite's
  ``FunctionAttributes`` does not list, so it goes into the attribute set directly. A
  CPU without AVX-512 ignores it.

Neither changes what a kernel computes, only how fast, as long as the vector width does
not change the order of a reduction (the selection networks work per column; a
``fastmath`` sum over a loop would be summed in another order). On Skylake-era Xeons
512-bit instructions lower the clock, LLVM's reason for its default; the networks are
bound by min/max throughput and memory, and were faster with them here.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fednb.kernels._compat import require_tested_numba

require_tested_numba()  # before the internals below: a clear error on an untested Numba

from llvmlite import ir  # type: ignore[import-untyped]  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

__all__ = ["prefer_wide_vectors", "prefetch"]

_I32 = ir.IntType(32)


def _prefetch_typed(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    """Prefetch the cache line of ``array[index]`` (a 1-D array, a non-negative integer index)."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None  # not typed: Numba reports the call as invalid

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, aryty, ary, [idx], wraparound=False
        )
        if getattr(ptr.type, "is_opaque", False):
            name = "llvm.prefetch.p0"
        else:  # typed pointers: LLVM mangles the name for the i8* argument
            ptr = builder.bitcast(ptr, cgutils.voidptr_t)
            name = "llvm.prefetch.p0i8"
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)  # type: ignore[no-untyped-call]
        builder.call(fn, [ptr, _I32(0), _I32(3), _I32(1)])  # read, keep in all levels, data cache
        return context.get_dummy_value()

    return types.none(array, index), codegen


def _prefer_wide_typed(typingctx: Any) -> Any:  # pragma: no cover - compiled
    """Mark the compiled function that calls this for 512-bit vectors."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        with contextlib.suppress(AttributeError, TypeError):  # another llvmlite: no hint, same code
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


prefetch: Any = intrinsic(_prefetch_typed)
prefer_wide_vectors: Any = intrinsic(_prefer_wide_typed)
