"""A software prefetch hint for the numba kernels: ``prefetch(array, i)`` asks the CPU to bring
the cache line of ``array[i]`` in, for writing, without waiting for it.

The scatter loops (:mod:`txray_kernels.cpu_scatter`, :mod:`txray_kernels.cpu_table`) update cells at random
places of states that the activations streaming through have just evicted from the caches. The
CPU's own look-ahead keeps only a few such misses in flight; hinting the cells a fixed number of
events ahead keeps more: 1.2-1.7x faster on cold states at k = 1, no change at k = 8
(BENCHMARKS.md).

The hint is ``llvm.prefetch`` (locality 3, data). Where this numba/LLVM cannot compile it,
``prefetch`` is a no-op, so the kernels stay correct on every supported version.
"""

from __future__ import annotations

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    intrinsic = None

#: How many events ahead the scatter loops hint their cells (a change here recompiles the kernels
#: that use it: :mod:`txray_kernels.cpu_cache`).
DISTANCE = 16


def _make(active: bool):
    @intrinsic
    def prefetch(typingctx, arr, i):
        """Hint the cache line of ``arr[i]`` (a 1-D array, ``0 <= i < len(arr)``)."""
        if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            if active:
                aryty = signature.args[0]
                ary = context.make_array(aryty)(context, builder, args[0])
                index = context.cast(builder, args[1], signature.args[1], types.intp)
                ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [index],
                                               wraparound=False)
                i8p = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                    "llvm.prefetch.p0i8")
                # rw = 1 (the line will be written), locality = 3 (keep it), cache = 1 (data)
                builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1),
                                  ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(arr, i), codegen

    return prefetch


prefetch = positions_ahead = None
#: Whether ``prefetch`` emits the hint (False: a no-op on this numba/LLVM).
ACTIVE = False
if intrinsic is not None:
    @njit(inline="always", cache=True)
    def positions_ahead(k):
        """Positions of ``k`` events each to look ahead by, for :data:`DISTANCE` events."""
        return max(1, DISTANCE // max(k, 1))

    prefetch, ACTIVE = _make(True), True
    try:
        import numpy as np

        @njit(cache=True)
        def _probe(a):
            prefetch(a, 0)
            return a[0]

        _probe(np.zeros(1))
    except Exception:  # pragma: no cover - an LLVM without this intrinsic name
        prefetch, ACTIVE = _make(False), False
