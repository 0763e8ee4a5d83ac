"""Hot-path kernels: top-k selection fused with the scatter into accumulators.

``select_accumulate`` dispatches on the device of the activations. The pure-PyTorch reference in
:mod:`kernels.reference` defines the semantics (and the tie-break) and is the CPU path.
"""

from .reference import select_accumulate, select_topk

__all__ = ["select_accumulate", "select_topk"]
