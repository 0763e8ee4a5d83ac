"""Pure-PyTorch reference of the select + scatter hot path: the definition of the semantics, and
the path of devices (or machines without numba) that no fast path takes.

Tie-break (the engine's definition, shared by every implementation): among equal activations the
lower neuron index ranks first, i.e. the top-k of a row are the first ``k`` entries of a *stable*
descending sort of that row.
"""

from __future__ import annotations

from typing import Sequence

import torch


def select_topk(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` neurons of every row of ``acts`` ``[P, N]``.

    Returns ``(values, indices)``, both ``[P, k]``; values are float32, indices int64. The set of
    selected neurons follows the module's tie-break; the order inside a row is unspecified.
    Rows must be finite (the caller checks).
    """
    if acts.dim() != 2:
        raise ValueError(f"select_topk expects [positions, neurons], got shape {tuple(acts.shape)}")
    n = acts.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    acts = acts.float()
    p = acts.shape[0]
    if k == n:
        return acts, torch.arange(n, device=acts.device).expand(p, n)
    if k == 1:  # torch.max returns the first maximal index: the tie-break above
        values, indices = acts.max(dim=1, keepdim=True)
        return values, indices
    values, indices = acts.topk(k, dim=1, sorted=False)
    # torch.topk breaks ties arbitrarily: rows with more than k entries >= the k-th value are
    # ambiguous at the boundary; re-select those rows with a stable sort.
    kth = values.min(dim=1, keepdim=True).values
    ambiguous = torch.nonzero((acts >= kth).sum(dim=1) > k).squeeze(1)
    if ambiguous.numel():
        rows = acts.index_select(0, ambiguous)
        v, i = torch.sort(rows, dim=1, descending=True, stable=True)
        values = values.index_copy(0, ambiguous, v[:, :k].contiguous())
        indices = indices.index_copy(0, ambiguous, i[:, :k].contiguous())
    return values, indices


def suspect_rows(acts: torch.Tensor) -> torch.Tensor:
    """Bool ``[P]``: the rows of ``acts`` ``[P, N]`` that may hold NaN or ±inf, a superset (a
    float32 row sum is non-finite there, and also where huge finite values overflow it)."""
    if acts.numel() == 0:
        return torch.zeros(acts.shape[0], dtype=torch.bool, device=acts.device)
    return ~torch.isfinite(acts.sum(dim=1, dtype=torch.float32))


def nonfinite_rows(acts: torch.Tensor) -> torch.Tensor:
    """Indices of rows of ``acts`` ``[P, N]`` holding NaN or ±inf.

    :func:`suspect_rows` flags candidates and an exact check confirms them, so the common case
    costs one cheap pass.
    """
    if acts.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=acts.device)
    cand = torch.nonzero(suspect_rows(acts)).squeeze(1)
    if cand.numel() == 0:
        return cand
    return cand[~torch.isfinite(acts.index_select(0, cand)).all(dim=1)]


def scatter_events(values: torch.Tensor, indices: torch.Tensor,
                   targets: Sequence[tuple[torch.Tensor, object]]) -> None:
    """Add a selection ``(values, indices)`` ``[P, k]`` into every target ``(features [P], state)``;
    feature id ``-1`` means missing (no event)."""
    kk = indices.shape[1]
    flat_n = indices.reshape(-1)
    flat_v = values.reshape(-1)
    for features, state in targets:
        f = features.unsqueeze(1).expand(-1, kk).reshape(-1)
        valid = f >= 0
        if bool(valid.all()):
            state.add_events(flat_n, f, flat_v)
        else:
            state.add_events(flat_n[valid], f[valid], flat_v[valid])


def add_totals(values: torch.Tensor, indices: torch.Tensor, count: torch.Tensor,
               mass: torch.Tensor) -> None:
    """Per-neuron totals of a selection ``(values, indices)`` ``[P, k]``, in place:
    ``count[n] += 1`` and ``mass[n] += max(v, 0)`` (int64 ``count``, float64 ``mass``)."""
    flat = indices.reshape(-1)
    count.index_add_(0, flat, torch.ones_like(flat))
    mass.index_add_(0, flat, values.reshape(-1).clamp(min=0).to(torch.float64))


def select_accumulate(acts: torch.Tensor, k: int,
                      targets: Sequence[tuple[torch.Tensor, object]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the top-``k`` neurons per row of ``acts`` ``[P, N]`` and scatter the events into
    every target ``(features [P] int64, state)``; feature id ``-1`` means missing (no event).

    Returns the selection ``(values, indices)`` so the caller can update per-neuron totals.
    """
    values, indices = select_topk(acts, k)
    scatter_events(values, indices, targets)
    return values, indices


def above_floor(acts: torch.Tensor, floor: torch.Tensor, cap: int,
                rows: torch.Tensor | None = None):
    """The cells of rows ``rows`` (``None``: all) of ``acts [P, N]`` above ``floor [N]``
    (float32 ``>``): ``(row, column, value)``, rows indexing ``rows``, values float32, in
    row-major order; ``None`` when there are more than ``cap``. The torch way of the top
    examples (``TopExamples``) finds its candidates with it where no kernel takes the batch."""
    a = (acts if rows is None else acts.index_select(0, rows)).float()
    above = a > floor.float()
    if int(above.count_nonzero()) > max(0, int(cap)):
        return None
    r, c = above.nonzero().unbind(1)
    return r, c, a[r, c]


#: Bound on the int64 keys :func:`best_rows_above` builds at once (it ranks columns in blocks).
KEY_BYTES = 64 << 20


def _order_bits(v: torch.Tensor) -> torch.Tensor:
    """int64 whose order is that of the float32 values ``v`` (``-0.0`` as ``+0.0``)."""
    bits = (v + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def best_rows_above(acts: torch.Tensor, floor: torch.Tensor, m: int,
                    rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's first ``m`` of the rows ``rows`` (``None``: all) of ``acts [P, N]`` whose
    float32 value is above ``floor [N]``, by value (descending) and then row (ascending): ``best``
    float32 and ``at`` int64 ``[N, m]``, ``at`` indexing ``rows`` (``-inf`` / ``-1`` where fewer
    qualify). The batch step of the top examples on the GPU (``txray_kernels.triton_examples``): ranked
    here as the ``topk`` down each column of int64 keys ``value bits << 32 | ~row``, in column
    blocks of at most :data:`KEY_BYTES`."""
    sub = acts if rows is None else acts.index_select(0, rows)
    n_rows, n_cols = sub.shape
    best = torch.full((n_cols, m), -torch.inf, device=acts.device)
    at = torch.full((n_cols, m), -1, dtype=torch.int64, device=acts.device)
    mm = min(m, n_rows)
    if mm == 0:
        return best, at
    low = (n_rows - 1 - torch.arange(n_rows, device=acts.device)).unsqueeze(1)
    step = max(1, KEY_BYTES // (8 * n_rows))
    for a in range(0, n_cols, step):
        block = sub[:, a:a + step].float()
        keys = (_order_bits(block) << 32) | low
        keys.masked_fill_(~(block > floor[a:a + step].float()), torch.iinfo(torch.int64).min)
        top = torch.topk(keys, mm, dim=0).values  # [mm, c]
        rank = (n_rows - 1) - (top & 0xFFFFFFFF)
        none = top == torch.iinfo(torch.int64).min
        best[a:a + step, :mm] = torch.gather(block, 0, rank).masked_fill(none, -torch.inf).t()
        at[a:a + step, :mm] = rank.masked_fill(none, -1).t()
    return best, at


def offer_examples(acts: torch.Tensor, lists, batch, rows: torch.Tensor | None = None) -> None:
    """The running top examples' definition: each neuron's list ``lists = (value [N, m], doc,
    pos [N, m], context [N, m, W])`` followed by the offered rows ``rows`` (``None``: all) of
    ``acts [P, N]`` (``batch = (doc, pos [R], context [R, W])``), stably sorted by float32
    value, descending; the first ``m`` kept, in place. So among equal values the one offered
    first stays first; ``-0.0`` equals ``+0.0``; ``-inf`` and NaN never enter."""
    value, doc, pos, context = lists
    bdoc, bpos, bctx = batch
    m = value.shape[1]
    a = (acts if rows is None else acts.index_select(0, rows)).float().t()  # [N, R]
    if a.shape[1] == 0 or m == 0:
        return
    vals = torch.cat([value, a.masked_fill(a.isnan(), -torch.inf)], 1)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :m]
    new, row, slot = order >= m, (order - m).clamp(min=0), order.clamp(max=m - 1)
    width = context.shape[2]
    kept = (torch.gather(vals, 1, order), torch.where(new, bdoc[row], doc.gather(1, slot)),
            torch.where(new, bpos[row], pos.gather(1, slot)),
            torch.where(new.unsqueeze(-1), bctx[row],
                        context.gather(1, slot.unsqueeze(-1).expand(-1, -1, width))))
    for target, got in zip(lists, kept):
        target.copy_(got)
