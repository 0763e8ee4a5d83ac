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


def check_shapes(values: torch.Tensor, indices: torch.Tensor, targets) -> None:
    """Raise ``ValueError`` unless ``values``/``indices`` are ``[P, k]`` of one shape and every
    target's features ``[P]``."""
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(f"values and indices must be [P, k] of one shape, got "
                         f"{tuple(values.shape)} and {tuple(indices.shape)}")
    p = values.shape[0]
    for i, (features, _) in enumerate(targets):
        if tuple(features.shape) != (p,):
            raise ValueError(f"target {i}: features must be [P] = [{p}], got "
                             f"{tuple(features.shape)}")


def bounds_tensor(t: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of a non-empty integer tensor, as an int64 tensor left on its device."""
    return torch.stack(torch.aminmax(t.reshape(-1).long()))


def id_bounds(tensors) -> list[tuple[int, int]]:
    """``(min, max)`` of each non-empty integer tensor, read back at once (a GPU waits once)."""
    if not tensors:
        return []
    return [tuple(b) for b in torch.stack([bounds_tensor(t) for t in tensors]).tolist()]


def check_targets(values: torch.Tensor, indices: torch.Tensor, targets, n_neurons: int) -> None:
    """:func:`check_shapes`, and every target's feature ids in ``[-1, state.n_features)`` and
    every neuron id in ``[0, n_neurons)``, on any device with one read-back of all the bounds.
    The CPU's numba path checks ids in one pass of its own (:func:`txray_kernels.cpu_scatter.check_selection`)."""
    check_shapes(values, indices, targets)
    if values.shape[0] == 0:
        return
    with_neurons = indices.numel() > 0  # k == 0: no neurons, but the positions still count
    bounds = id_bounds(([indices] if with_neurons else []) + [f for f, _ in targets])
    if with_neurons:
        (lo, hi), bounds = bounds[0], bounds[1:]
        if lo < 0 or hi >= n_neurons:
            raise ValueError(f"neuron ids must be in [0, {n_neurons}), got {lo if lo < 0 else hi}")
    for i, ((lo, hi), (_, state)) in enumerate(zip(bounds, targets)):
        if lo < -1 or hi >= state.n_features:
            raise ValueError(f"target {i}: feature ids must be in [-1, {state.n_features}), got "
                             f"{lo if lo < -1 else hi}")
