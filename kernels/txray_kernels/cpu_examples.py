"""The running top examples on the CPU (numba): a batch offered to every neuron's list of its ``m``
strongest activations in one pass over the batch, in place.

Each neuron keeps ``value [N, m]`` (descending; ``-inf`` = empty slot) with ``doc``, ``pos``
``[N, m]`` and ``context [N, m, W]``. Only an activation above the neuron's current ``m``-th value
(its *floor*) can enter, and once the lists fill few do (about ``m / batches`` per neuron on a
stationary stream), so a batch is one read of its rows: per chunk of 64 columns a vectorised OR of
``x > floor``, and only a chunk with a hit is walked. An entering value is inserted after the
values at least as large (so among equal values the one offered first stays first: an earlier
batch, then a lower row), and the floor rises with it, also within the batch. Entries remember
where they came from (a slot of the old list or a row of the batch); each changed neuron's
``doc``/``pos``/``context`` are rebuilt from that once, after the scan.

The columns are split into one contiguous range per thread (at most :data:`_MAX_PARTS`), each
thread owning its neurons' lists and reading every row's slice of them in row order, so no two
threads touch one list and the order is the stream's. bf16/fp16 slices are widened exactly into a
float32 buffer first (:mod:`txray_kernels.cpu_half`), as the selection does. Comparisons are float32:
a NaN never enters (callers drop NaN rows), ``-0.0`` equals ``+0.0``.

:func:`txray_kernels.reference.offer_examples` is the torch definition (one stable sort of the old lists
followed by the batch); results are equal.
"""

from __future__ import annotations

import numpy as np
import torch

from .cpu import AVAILABLE, read_rows

_CHUNK = 64
_MAX_PARTS = 8  # threads that take a range of columns each

if AVAILABLE:
    from numba import get_num_threads, njit, prange

    from .cpu_half import _widen

    @njit(boundscheck=False, inline="always", cache=True)
    def _enter(row, t, lo, a, b, floor, value, came, changed):
        """Insert the values of ``row[a:b]`` above their floors into their lists."""
        m = value.shape[1]
        for jj in range(a, b):
            v = row[jj]
            if v > floor[jj]:
                j = lo + jj
                p = m - 1
                while p > 0 and value[j, p - 1] < v:  # after the values at least as large
                    value[j, p] = value[j, p - 1]
                    came[jj, p] = came[jj, p - 1]
                    p -= 1
                value[j, p] = v
                came[jj, p] = t
                floor[jj] = value[j, m - 1]
                changed[jj] = True

    @njit(boundscheck=False, inline="always", cache=True)
    def _offer_row(row, t, lo, floor, value, came, changed):
        """Offer row ``t`` (``row[jj]``: column ``lo + jj``) to those columns' lists:
        ``floor[jj]`` is the column's ``m``-th value, ``came[jj]`` where each of its entries came
        from (``t >= 0`` a batch row, ``-1 - s`` old slot ``s``). Full chunks run with a constant
        trip count, which vectorises: 0.19 ms against 0.50 ms with a runtime one, for 2,048 rows
        of 512 float32 in one thread (microbenchmark)."""
        n = row.shape[0]
        full = n // _CHUNK
        for c in range(full):
            base = c * _CHUNK
            hit = False
            for j in range(_CHUNK):
                hit |= row[base + j] > floor[base + j]
            if hit:
                _enter(row, t, lo, base, base + _CHUNK, floor, value, came, changed)
        hit = False
        for jj in range(full * _CHUNK, n):
            hit |= row[jj] > floor[jj]
        if hit:
            _enter(row, t, lo, full * _CHUNK, n, floor, value, came, changed)

    @njit(boundscheck=False, inline="always", cache=True)
    def _rebuild(lo, hi, came, changed, doc, pos, context, bdoc, bpos, bctx):
        """``doc``/``pos``/``context`` of each changed column from where its entries came."""
        m, w = doc.shape[1], context.shape[2]
        old_doc = np.empty(m, np.int64)
        old_pos = np.empty(m, np.int64)
        old_ctx = np.empty((m, w), np.int64)
        for jj in range(hi - lo):
            if not changed[jj]:
                continue
            j = lo + jj
            old_doc[:] = doc[j]
            old_pos[:] = pos[j]
            old_ctx[:, :] = context[j]
            for s in range(m):
                f = came[jj, s]
                if f >= 0:
                    doc[j, s] = bdoc[f]
                    pos[j, s] = bpos[f]
                    context[j, s, :] = bctx[f]
                else:
                    doc[j, s] = old_doc[-1 - f]
                    pos[j, s] = old_pos[-1 - f]
                    context[j, s, :] = old_ctx[-1 - f]

    @njit(boundscheck=False, inline="always", cache=True)
    def _part_state(lo, hi, value):
        m = value.shape[1]
        floor = np.empty(hi - lo, np.float32)
        came = np.empty((hi - lo, m), np.int64)
        for jj in range(hi - lo):
            floor[jj] = value[lo + jj, m - 1]
            for s in range(m):
                came[jj, s] = -1 - s
        return floor, came, np.zeros(hi - lo, np.bool_)

    @njit(parallel=True, boundscheck=False, cache=True)
    def _offer32(x, src, per, value, doc, pos, context, bdoc, bpos, bctx):
        """Rows ``src`` of ``x`` (float32; an empty ``src``: every row) into the lists, threads
        taking ``per`` columns each."""
        n = x.shape[1]
        total = src.shape[0] if src.shape[0] else x.shape[0]
        for b in prange((n + per - 1) // per):
            lo, hi = b * per, min(n, b * per + per)
            floor, came, changed = _part_state(lo, hi, value)
            for t in range(total):
                r = src[t] if src.shape[0] else t
                _offer_row(x[r, lo:hi], t, lo, floor, value, came, changed)
            _rebuild(lo, hi, came, changed, doc, pos, context, bdoc, bpos, bctx)

    @njit(parallel=True, boundscheck=False, cache=True)
    def _offer16(h, kind, src, per, value, doc, pos, context, bdoc, bpos, bctx):
        """:func:`_offer32` for 16-bit rows ``h`` (uint16 bits of ``kind``, bf16 or fp16), each
        thread's slice of a row widened exactly into a float32 buffer first."""
        n = h.shape[1]
        total = src.shape[0] if src.shape[0] else h.shape[0]
        for b in prange((n + per - 1) // per):
            lo, hi = b * per, min(n, b * per + per)
            floor, came, changed = _part_state(lo, hi, value)
            bits = np.empty(hi - lo, np.uint32)
            row = bits.view(np.float32)
            for t in range(total):
                r = src[t] if src.shape[0] else t
                _widen(h[r, lo:hi], kind, bits)
                _offer_row(row, t, lo, floor, value, came, changed)
            _rebuild(lo, hi, came, changed, doc, pos, context, bdoc, bpos, bctx)


def usable(acts: torch.Tensor, lists) -> bool:
    """Whether :func:`offer` takes these activations and lists (CPU, numba, the lists as
    :class:`~txray_engine.accumulate.examples.TopExamples` makes them)."""
    value, doc, pos, context = lists
    return (AVAILABLE and acts.device.type == "cpu" and acts.dim() == 2
            and value.dtype == torch.float32 and value.device.type == "cpu"
            and all(t.dtype == torch.int64 and t.device.type == "cpu" for t in (doc, pos, context))
            and all(t.is_contiguous() and not t.is_inference() and not t.requires_grad
                    for t in lists))


def offer(acts: torch.Tensor, lists, batch, rows: torch.Tensor | None = None) -> None:
    """Offer the rows ``rows`` (``None``: all) of ``acts [P, N]`` to ``lists = (value [N, m]
    float32, doc, pos [N, m] int64, context [N, m, W] int64)``, in place; ``batch = (doc, pos
    [R], context [R, W])`` of the offered rows. Same results as
    :func:`txray_kernels.reference.offer_examples` (checked by :func:`usable` first)."""
    a, half, src, total = read_rows(acts, rows)
    value, doc, pos, context = lists
    if value.dim() != 2 or doc.shape != value.shape or pos.shape != value.shape or \
            context.dim() != 3 or context.shape[:2] != value.shape:
        raise ValueError(f"the lists must be value, doc, pos [N, m] and context [N, m, W], got "
                         f"{[tuple(t.shape) for t in lists]}")
    n, m = value.shape
    if a.shape[1] != n:
        raise ValueError(f"activations have {a.shape[1]} neurons, the lists {n}")
    bdoc, bpos, bctx = (t.detach().to(torch.int64).contiguous() for t in batch)
    if bdoc.shape != (total,) or bpos.shape != (total,) or bctx.shape != (total, context.shape[2]):
        raise ValueError(f"doc, pos and context must describe the {total} offered rows")
    if total == 0 or m == 0 or n == 0:
        return
    parts = max(1, min(get_num_threads(), _MAX_PARTS, -(-n // _CHUNK)))
    per = -(-(-(-n // parts)) // _CHUNK) * _CHUNK  # columns per thread, whole chunks
    arrays = (value.numpy(), doc.numpy(), pos.numpy(), context.numpy(), bdoc.numpy(),
              bpos.numpy(), bctx.numpy())
    if half is not None:
        _offer16(a.view(torch.int16).numpy().view(np.uint16), half, src, per, *arrays)
    else:
        _offer32(a.numpy(), src, per, *arrays)
