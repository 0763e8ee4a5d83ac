"""Capture activations from named modules through forward hooks.

Names load on first use: matching layer names (``capture.names``) needs no torch.
"""

from ..lazy import lazy_exports

_LAZY = {"LayerCapture": ".hooks", "output_tensor": ".hooks", "resolve_layers": ".hooks"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
