"""Prune: select neurons from measures, mask or remove them, evaluate configurations."""

from .apply import UnitMask, mask_units, mlp_linears, prune_mlp
from .evaluate import evaluate_pruning, summarize
from .select import SELECTORS, select_neurons

__all__ = ["SELECTORS", "UnitMask", "evaluate_pruning", "mask_units", "mlp_linears", "prune_mlp",
           "select_neurons", "summarize"]
