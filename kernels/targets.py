"""What a scatter target is: ``(features [P], state)``, and which kind of state it holds.

Kernels recognise the engine's states by their tensors rather than their classes (the kernels do
not import the engine): a *dense* state exposes flat ``count``/``mass``/``peak`` tensors, a
*sparse* state the reduced runs it merges (``_push``/``_master``). Any other state is fed through
its own ``add_events``.
"""

from __future__ import annotations

from typing import Sequence

import torch


def is_dense_state(state) -> bool:
    return all(isinstance(getattr(state, a, None), torch.Tensor) for a in ("count", "mass", "peak"))


def is_sparse_state(state) -> bool:
    return hasattr(state, "_push") and hasattr(state, "_master")


def split_targets(targets: Sequence[tuple[torch.Tensor, object]]):
    """``(dense, sparse, other)`` lists of the targets, in their order."""
    dense, sparse, other = [], [], []
    for target in targets:
        state = target[1]
        (dense if is_dense_state(state) else sparse if is_sparse_state(state) else other).append(target)
    return dense, sparse, other
