"""Accumulate: exact, mergeable sums per (layer, stream), dense or sparse behind one interface.

Names load on first use: reading a store needs ``SparseStats`` only, without torch or the kernels.
"""

from ..lazy import lazy_exports

_LAZY = {"Accumulator": ".accumulator", "merge": ".accumulator", "same_sums": ".accumulator",
         "DenseState": ".dense", "context_windows": ".examples", "LayerState": ".layer",
         "SparseState": ".sparse", "DEFAULT_DENSE_BUDGET": ".state", "StreamState": ".state",
         "dense_bytes": ".state", "make_state": ".state", "SparseStats": ".stats"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
