"""Capture activations from named modules through forward hooks."""

from .hooks import LayerCapture, output_tensor, resolve_layers

__all__ = ["LayerCapture", "output_tensor", "resolve_layers"]
