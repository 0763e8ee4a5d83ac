"""Store: the Zarr hierarchy of stages (format v1, see docs/FORMAT.md).

Names load on first use: reading a store (``open_store``) needs neither torch nor the kernels;
merging and writing do.
"""

from ..lazy import lazy_exports

_LAZY = {"merge_stages": ".merge", "LayerView": ".reader", "Stage": ".reader", "Store": ".reader",
         "StreamView": ".reader", "open_store": ".reader", "read_again": ".reader",
         "StageWriter": ".writer"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
