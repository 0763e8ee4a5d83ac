"""Hot-path kernels: top-k selection and the scatter into accumulators.

The pure-PyTorch reference in :mod:`kernels.reference` defines the semantics (and the tie-break:
the lower neuron index wins among equal activations). :func:`select` dispatches on the device:
CPU tensors take the numba fast path of :mod:`kernels.cpu` (same results), anything else the
reference.
"""

from __future__ import annotations

import torch

from . import cpu
from .reference import nonfinite_rows, scatter_events, select_accumulate, select_topk

__all__ = ["nonfinite_rows", "scatter_events", "select", "select_accumulate", "select_topk"]


def select(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` of every row of ``acts`` ``[P, N]`` and the rows holding NaN/inf.

    Returns ``(values [P, k] float32, indices [P, k] int64, nonfinite row indices)``; the
    selection of a non-finite row is unspecified (callers drop or reject those rows).
    """
    n = acts.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k < n and cpu.usable(acts):
        values, indices, bad = cpu.select_topk(acts, k)
        return values, indices, torch.nonzero(bad).squeeze(1)
    bad_rows = nonfinite_rows(acts)
    if bad_rows.numel():  # keep NaN out of torch's selection; these rows are dropped anyway
        acts = acts.float().index_fill(0, bad_rows, 0.0)
    values, indices = select_topk(acts, k)
    return values, indices, bad_rows
