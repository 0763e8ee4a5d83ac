"""The CPU scan of the running top examples: the cells of an activation block above each neuron's
floor (its current ``m``-th kept value), in one pass.

Once the examples' lists are full, few activations beat a neuron's floor (about ``m / batches``
per neuron on a stationary stream), so a batch is one read of its rows: per chunk of 64 columns a
vectorised OR of ``x > floor``, and only a chunk with a hit is walked to record its cells. The torch
way (:func:`kernels.reference.above_floor`: a column max, the columns with a hit gathered, a
compare and ``nonzero``) reads the block three to four times and writes two copies.

Rows are split into one contiguous range per thread (at most :data:`_MAX_PARTS`), each recording
into its own part of the output (room for ``min(cap, its rows' cells)``), so the cells come back in
row-major order (rows ascending, then columns) like ``nonzero``. bf16/fp16 rows are widened exactly into a float32 row buffer first
(:mod:`kernels.cpu_half`), as the selection does. Comparisons are float32 ``>``: a NaN is never
above, ``-0.0`` is not above ``+0.0``.
"""

from __future__ import annotations

import numpy as np
import torch

from .cpu import AVAILABLE, read_rows

_CHUNK = 64
_MAX_PARTS = 8  # threads that scan at once; each has an output part of ``cap`` cells

if AVAILABLE:
    from numba import get_num_threads, njit, prange

    from .cpu_half import _widen

    @njit(boundscheck=False, inline="always", cache=True)
    def _scan_row(row, t, floor, at, slots, rows_out, cols_out, vals_out, c):
        """Record the cells of ``row`` (float32) above ``floor`` as output row ``t``, from slot
        ``at + c`` of a part of ``slots`` slots (those past it are counted, not recorded);
        returns the new count."""
        n = row.shape[0]
        for j0 in range(0, n, _CHUNK):
            j1 = min(n, j0 + _CHUNK)
            hit = False
            for j in range(j0, j1):
                hit |= row[j] > floor[j]
            if hit:
                for j in range(j0, j1):
                    if row[j] > floor[j]:
                        if c < slots:
                            rows_out[at + c] = t
                            cols_out[at + c] = j
                            vals_out[at + c] = row[j]
                        c += 1
        return c

    @njit(parallel=True, boundscheck=False, cache=True)
    def _above32(x, src, floor, cap, slots, rows_out, cols_out, vals_out, counts):
        """Rows ``src`` of ``x`` (float32; an empty ``src``: every row), in ``counts.shape[0]``
        contiguous ranges; part ``b`` records into slots ``[b * slots, (b + 1) * slots)`` and its
        count goes to ``counts[b]`` (it stops once past ``cap``)."""
        parts = counts.shape[0]
        total = src.shape[0] if src.shape[0] else x.shape[0]
        per = (total + parts - 1) // parts
        for b in prange(parts):
            c = 0
            for t in range(b * per, min(total, b * per + per)):
                r = src[t] if src.shape[0] else t
                c = _scan_row(x[r], t, floor, b * slots, slots, rows_out, cols_out, vals_out, c)
                if c > cap:
                    break
            counts[b] = c

    @njit(parallel=True, boundscheck=False, cache=True)
    def _above16(h, kind, src, floor, cap, slots, rows_out, cols_out, vals_out, counts):
        """:func:`_above32` for 16-bit rows ``h`` (uint16 bits of ``kind``, bf16 or fp16),
        each widened exactly into a float32 row buffer first."""
        parts = counts.shape[0]
        total = src.shape[0] if src.shape[0] else h.shape[0]
        per = (total + parts - 1) // parts
        for b in prange(parts):
            bits = np.empty(h.shape[1], np.uint32)
            row = bits.view(np.float32)
            c = 0
            for t in range(b * per, min(total, b * per + per)):
                r = src[t] if src.shape[0] else t
                _widen(h[r], kind, bits)
                c = _scan_row(row, t, floor, b * slots, slots, rows_out, cols_out, vals_out, c)
                if c > cap:
                    break
            counts[b] = c


def above_floor(acts: torch.Tensor, floor: torch.Tensor, cap: int,
                rows: torch.Tensor | None = None):
    """The cells of rows ``rows`` of ``acts [P, N]`` above ``floor [N]`` (float32 ``>``), as
    ``(row, column, value)`` — output row positions (index into ``rows``), columns, float32
    values — in row-major order; ``None`` when there are more than ``cap`` of them.

    Same results as :func:`kernels.reference.above_floor`; activations are read in place (any
    float dtype: bf16/fp16 as they are, others as float32).
    """
    a, half, src, total = read_rows(acts, rows)
    n = a.shape[1]
    if floor.shape != (n,):
        raise ValueError(f"floor must have shape ({n},), got {tuple(floor.shape)}")
    cap = max(0, int(cap))
    if total == 0:
        return _empty()
    parts = max(1, min(get_num_threads(), _MAX_PARTS, total))
    slots = min(cap, -(-total // parts) * n)  # a part holds at most its rows' cells
    out_rows, out_cols = np.empty(parts * slots, np.int64), np.empty(parts * slots, np.int64)
    out_vals = np.empty(parts * slots, np.float32)
    counts = np.zeros(parts, np.int64)
    f = floor.detach().to(torch.float32).contiguous().numpy()
    if half is not None:
        _above16(a.view(torch.int16).numpy().view(np.uint16), half, src, f, cap, slots, out_rows,
                 out_cols, out_vals, counts)
    else:
        _above32(a.numpy(), src, f, cap, slots, out_rows, out_cols, out_vals, counts)
    if counts.sum() > cap:
        return None
    keep = np.concatenate([np.arange(b * slots, b * slots + c) for b, c in enumerate(counts)])
    return (torch.from_numpy(out_rows[keep]), torch.from_numpy(out_cols[keep]),
            torch.from_numpy(out_vals[keep]))


def _empty():
    return (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.float32))
