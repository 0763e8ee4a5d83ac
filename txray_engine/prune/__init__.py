"""Prune: select neurons from measures, mask or remove them, evaluate configurations.

Names load on first use: selecting neurons from a store (``txray prune`` without ``--model``)
needs no torch.
"""

from ..lazy import lazy_exports

_LAZY = {"UnitMask": ".apply", "mask_units": ".apply", "mlp_linears": ".apply",
         "prune_mlp": ".apply", "evaluate_pruning": ".evaluate", "summarize": ".evaluate",
         "SELECTORS": ".select", "select_neurons": ".select"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
