"""The top examples' batch step on the GPU: each neuron's best rows of a batch above its floor, in
one read of the activations and without a wait for the host.

:func:`best_rows_above` has the contract of :func:`txray_kernels.reference.best_rows_above`: for every
column ``n`` of ``acts [P, N]`` (the rows ``rows`` of it, or all), the first ``m`` rows whose
float32 value is above ``floor[n]``, ordered by value (descending) and then row (ascending), as
``best [N, m]`` float32 and ``at [N, m]`` int64 (the row's index among the offered rows; ``-inf`` and
``-1`` where fewer rows qualify). :class:`txray_engine.accumulate.examples.TopExamples` merges them
into its lists, so a batch costs one read of its rows plus a merge of ``m`` entries per neuron.

How: each row is ranked by the int64 key ``order(value) << 32 | (2**31 - 1 - row)``, whose order is
(value, then earlier row), so "the first ``m`` rows" is "the ``m`` largest keys". One program
owns a block of columns over a chunk of rows and keeps each column's ``m`` largest keys so far in
registers, starting from ``m`` placeholders that rank just above any row holding the floor's value.
It reads the chunk in tiles of ``TILE`` rows; a tile none of whose values beats its column's
current smallest kept key is passed over after one max, otherwise its rows are offered one by one
in row order: an entering key replaces the smallest kept one. (Once the lists fill, a tile of
128 columns still often holds one entrant: the slow path is what the launch shapes of
``gpu_check`` Part 4 are for.) The ``[N, chunks, m]`` keys are then ranked per column by one
``topk``, placeholders read back as empty slots, and the kept rows' values gathered from the
activations (``N * m`` of them; the keys hold ``-0.0`` as ``+0.0``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dense import _cdiv, _check_cuda, _interpret, _next_pow2

__all__ = ["LAUNCH", "LAUNCH_VARIANTS", "MAX_M", "best_rows_above"]

#: The largest list length the kernel keeps in registers (longer lists take the torch reference).
MAX_M = 128
_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KEYS_BYTES = 32 << 20  # bound on the [N, chunks, m] int64 keys of one call (beyond one chunk)
_TARGET_PROGRAMS = 2048  # enough programs in flight to hide the latency of the tile loads
_PLACEHOLDER_LOW = 0xFFFFFFFF  # low half of a placeholder key (a row's is at most 2**31 - 1)
_ROW_LIMIT = 1 << 30  # row arithmetic in the kernel is int32: a chunk's end stays below 2**31


@triton.jit
def _order32(v):
    """int32 whose signed order is the order of the float32 values ``v`` (``-0.0`` as ``+0.0``)."""
    v = tl.where(v == 0.0, 0.0, v)
    b = v.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _best_rows_kernel(x_ptr, s_xp, s_xn, rows_ptr, floor_ptr, out_ptr, P, N, CHUNK, R,
                      M: tl.constexpr, MP: tl.constexpr, BLOCK_N: tl.constexpr,
                      TILE: tl.constexpr, GATHER: tl.constexpr):
    """Program ``(c, r)``: the ``M`` largest keys of columns block ``c`` over rows
    ``[r * CHUNK, (r + 1) * CHUNK)``, written to ``out[cols, r, :M]`` (unordered). Column blocks
    are axis 0 (up to 2**31 - 1 of them; axis 1 stops at 65,535, reached at N > 1,048,560)."""
    r = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    floor = tl.load(floor_ptr + cols, mask=col_ok, other=float("-inf"))
    floor = tl.where(floor != floor, float("inf"), floor)  # a NaN floor admits nothing (x > NaN)
    slot = tl.arange(0, MP)
    # M placeholders ranking just above a row holding the floor's value; padding slots never leave
    hold = (_order32(floor).to(tl.int64) << 32)[:, None] | \
        tl.full([BLOCK_N, MP], 0xFFFFFFFF, tl.int64)
    hold = tl.where(slot[None, :] < M, hold, tl.full([BLOCK_N, MP], 0x7FFFFFFFFFFFFFFF, tl.int64))
    low = tl.min(hold, axis=1)  # each column's smallest kept key
    start = r * CHUNK
    stop = tl.minimum(start + CHUNK, P)
    for t0 in range(start, stop, TILE):
        trow = t0 + tl.arange(0, TILE)
        t_ok = trow < stop
        if GATHER:
            src = tl.load(rows_ptr + trow, mask=t_ok, other=0).to(tl.int64)
        else:
            src = trow.to(tl.int64)
        tile = tl.load(x_ptr + src[:, None] * s_xp + cols64[None, :] * s_xn,
                       mask=t_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
        tile = tl.where(tile != tile, float("-inf"), tile)  # NaN never enters
        # a row enters only with a value above that of the smallest kept key
        beats = _order32(tl.max(tile, axis=0)) > (low >> 32).to(tl.int32)
        if tl.max(beats.to(tl.int32), axis=0) > 0:
            for i in range(TILE):  # the tile's rows in order
                row = t0 + i
                ok = row < stop
                s = tl.minimum(row, stop - 1)  # a row past the chunk reads the last, unused
                if GATHER:
                    s = tl.load(rows_ptr + s)
                v = tl.load(x_ptr + s.to(tl.int64) * s_xp + cols64 * s_xn, mask=col_ok,
                            other=float("-inf")).to(tl.float32)
                v = tl.where(v != v, float("-inf"), v)
                key = (_order32(v).to(tl.int64) << 32) | (0x7FFFFFFF - row).to(tl.int64)
                enter = (key > low) & ok
                if tl.max(enter.to(tl.int32), axis=0) > 0:
                    at = tl.min(tl.where(hold == low[:, None], slot[None, :], MP), axis=1)
                    hold = tl.where((slot[None, :] == at[:, None]) & enter[:, None],
                                    key[:, None], hold)
                    low = tl.min(hold, axis=1)
    dst = out_ptr + cols64[:, None] * (R * M) + r * M + slot[None, :]
    tl.store(dst, hold, mask=col_ok[:, None] & (slot[None, :] < M))


#: Launch shape on a GPU: columns per program (at most; fewer where ``m`` is long, so that a
#: program's ``[columns, m]`` keys fit in registers; never fewer than 16), rows per tile, warps per
#: program. Measured on an H200 (``gpu_check`` Part 4, BENCHMARKS.md): 16 / 32 / 1 took 0.39-0.48
#: ms per batch step where 128 / 16 / 4 took 0.72-0.75 (m = 8, full lists), and 6.5 ms against
#: 12.3 at m = 64 on empty lists. Part 4 also times the shapes of :data:`LAUNCH_VARIANTS`, each
#: checked against the reference, for the next choice.
LAUNCH = (16, 32, 1)
#: Narrow one-warp programs pass over more tiles (fewer columns that could hold an entrant) and
#: reduce within one warp; longer tiles pay one check for more rows.
LAUNCH_VARIANTS = ((16, 32, 1), (128, 16, 4), (32, 16, 1), (16, 16, 1), (16, 64, 1), (16, 32, 2))
_INTERPRET_LAUNCH = (16, 4, 1)  # the interpreter pays per program and per op: small ones


def _shape(p: int, n: int, m: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_N, TILE, rows per chunk, chunks, num_warps)``."""
    mp = _next_pow2(m)
    block_n, tile, warps = _INTERPRET_LAUNCH if _interpret() else LAUNCH
    if block_n & (block_n - 1) or tile & (tile - 1):
        raise ValueError(f"LAUNCH needs powers of two for columns and tile rows, got {LAUNCH}")
    # [BLOCK_N, MP] int64 keys in registers: 8 per thread where m allows it (2 * 128 / m columns
    # per warp), never fewer than 16 columns (so more keys per thread for m above 32 at 4 warps)
    block_n = max(16, min(block_n, 256 * warps // mp))
    col_blocks = _cdiv(n, block_n)
    chunks = max(1, min(_cdiv(_TARGET_PROGRAMS * 4 // warps, col_blocks), _cdiv(p, tile),
                        _KEYS_BYTES // (8 * n * m)))
    rows = _cdiv(_cdiv(p, chunks), tile) * tile
    return block_n, tile, rows, _cdiv(p, rows), warps


def best_rows_above(acts: torch.Tensor, floor: torch.Tensor, m: int,
                    rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's first ``m`` offered rows above ``floor`` by (value, earlier row): ``best``
    float32 and ``at`` int64 ``[N, m]`` (``-inf`` / ``-1`` = none). ``acts [P, N]`` fp32/fp16/bf16,
    any strides; ``floor [N]`` float32; ``rows`` int64 ``[R]`` (the offered rows of ``acts``, read in
    place, each in range: not checked, as that would wait for the device) or ``None`` (all). CUDA
    tensors (CPU ones under ``TRITON_INTERPRET=1``)."""
    if not isinstance(acts, torch.Tensor) or acts.dim() != 2 or acts.dtype not in _ACT_DTYPES:
        raise ValueError(f"acts must be a 2-D float32/float16/bfloat16 tensor, got "
                         f"{getattr(acts, 'dtype', type(acts).__name__)} "
                         f"{tuple(getattr(acts, 'shape', ()))}")
    p_all, n = acts.shape
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_M:
        raise ValueError(f"m must be an int in [1, {MAX_M}] for the kernel, got {m!r}")
    if not isinstance(floor, torch.Tensor) or tuple(floor.shape) != (n,) or \
            floor.dtype != torch.float32 or floor.device != acts.device:
        raise ValueError(f"floor must be a float32 [{n}] tensor on {acts.device}, got "
                         f"{getattr(floor, 'dtype', None)} {tuple(getattr(floor, 'shape', ()))} "
                         f"on {getattr(floor, 'device', None)}")
    if rows is not None and (not isinstance(rows, torch.Tensor) or rows.dim() != 1 or
                             rows.dtype != torch.int64 or rows.device != acts.device):
        raise ValueError(f"rows must be a 1-D int64 tensor on {acts.device} or None, got "
                         f"{getattr(rows, 'dtype', type(rows).__name__)} "
                         f"{tuple(getattr(rows, 'shape', ()))} on {getattr(rows, 'device', None)}")
    _check_cuda(acts, "acts")
    p = p_all if rows is None else rows.shape[0]
    if p > _ROW_LIMIT:
        raise ValueError(f"at most {_ROW_LIMIT} rows per call, got {p}")
    if p == 0 or n == 0:
        return (torch.full((n, m), -torch.inf, device=acts.device),
                torch.full((n, m), -1, dtype=torch.int64, device=acts.device))
    block_n, tile, chunk, chunks, warps = _shape(p, n, m)
    keys = torch.empty((n, chunks, m), dtype=torch.int64, device=acts.device)
    src = rows.contiguous() if rows is not None else floor  # a dummy pointer without rows
    _best_rows_kernel[(_cdiv(n, block_n), chunks)](
        acts, acts.stride(0), acts.stride(1), src, floor.contiguous(), keys, p, n, chunk, chunks,
        M=m, MP=_next_pow2(m), BLOCK_N=block_n, TILE=tile, GATHER=rows is not None,
        num_warps=warps)
    top = torch.topk(keys.view(n, chunks * m), m, dim=1).values  # sorted: value, then row
    low = top & 0xFFFFFFFF
    empty = low == _PLACEHOLDER_LOW
    at = (0x7FFFFFFF - low).masked_fill(empty, -1)
    # the activations themselves (the keys hold -0.0 as +0.0): N * m values gathered
    src_rows = at.clamp(min=0) if rows is None else rows[at.clamp(min=0)]
    value = acts[src_rows, torch.arange(n, device=acts.device).unsqueeze(1)].float()
    return value.masked_fill(empty, -torch.inf), at
