"""The fused dense select + scatter kernel: its ``@triton.jit`` entry point.

The launcher, its tunables and the module notes are in :mod:`txray_kernels.triton_dense` (which calls
this kernel as ``triton_dense._select_scatter_kernel``, so a benchmark can stub it there); the
device functions it calls are in :mod:`txray_kernels.triton_select`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_select import _feats4, _nonfinite_rows, _scatter_streams, _select_rows

__all__ = ["_select_scatter_kernel"]


@triton.jit
def _source_rows(src_ptr, rows, row_ok, GATHER: tl.constexpr):
    """The rows of the activations that output rows ``rows`` select (int64)."""
    if GATHER:
        src = tl.load(src_ptr + rows, mask=row_ok, other=0)
    else:
        src = rows
    return src.to(tl.int64)


@triton.jit
def _select_scatter_kernel(
        x_ptr, stride_xp, stride_xn,  # activations [P, N] (METHOD 3: selected values [P, K])
        out_v_ptr, out_i_ptr,  # [P, K] contiguous outputs (METHOD 3: out_i holds the indices)
        flag_ptr,  # FLAGS: int8 [P], 1 where the row holds NaN/inf
        src_ptr,  # GATHER: int64 [P], the row of x that output row p selects
        stride_ip, stride_in,  # METHOD 3: strides of the indices (an expanded arange is fine)
        P, N, K,
        f0, c0, m0, p0, V0, f1, c1, m1, p1, V1,
        f2, c2, m2, p2, V2, f3, c3, m3, p3, V3,
        METHOD: tl.constexpr, NUM_STREAMS: tl.constexpr, WRITE_OUT: tl.constexpr,
        ROWS: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
        KC: tl.constexpr, FP32_ROUNDS: tl.constexpr, EVEN_N: tl.constexpr,
        CM: tl.constexpr, KCP: tl.constexpr, BATCHED: tl.constexpr, FLAGS: tl.constexpr,
        GATHER: tl.constexpr, KEY16: tl.constexpr):
    """``ROWS`` rows per program (METHODs 1 and 2: ``GROUPS`` consecutive groups of ``ROWS`` rows,
    the tile of the next group loaded while the current one is selected and scattered, so that
    reads stay in flight). METHOD 1 and the search of METHOD 2 hold a row tile of ``BLOCK_N`` (next
    power of two of the row width) in registers; the scatter of METHODs 0, 2, 3 walks the row in
    column chunks of ``CHUNK`` (bounded registers for wide rows). With ``FLAGS`` the selecting
    METHODs also flag the rows holding NaN/inf from the tile they hold (an fp32 value is
    non-finite exactly where its exponent bits are all ones: integer operations, one mask and one
    max per element, so the device and the interpreter agree). With ``GATHER`` they select the
    rows ``src[p]`` of ``x`` (the kept rows of a masked batch: no copy of them, and padding never
    read); outputs, feature ids and flags stay indexed by ``p``."""
    pid = tl.program_id(0)
    if METHOD == 0 or METHOD == 3:
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_ok = rows < P
        rows64 = rows.to(tl.int64)
        x_row = x_ptr + rows64[:, None] * stride_xp
        g0, g1, g2, g3 = _feats4(f0, f1, f2, f3, rows, row_ok, NUM_STREAMS)
        if METHOD == 0:  # k == N: every element is an event
            for c in range(0, BLOCK_N, CHUNK):
                cols = c + tl.arange(0, CHUNK)
                ok = row_ok[:, None] & (cols < N)[None, :]
                x = tl.load(x_row + cols[None, :].to(tl.int64) * stride_xn, mask=ok, other=0.0)
                _scatter_streams(N, cols[None, :], x.to(tl.float32), ok,
                                 g0, c0, m0, p0, V0, g1, c1, m1, p1, V1,
                                 g2, c2, m2, p2, V2, g3, c3, m3, p3, V3, NUM_STREAMS, True)
        else:  # selection given ([P, K] values and indices): scatter only
            for c in range(0, BLOCK_N, CHUNK):
                cols = c + tl.arange(0, CHUNK)
                ok = row_ok[:, None] & (cols < K)[None, :]
                x = tl.load(x_row + cols[None, :].to(tl.int64) * stride_xn, mask=ok, other=0.0)
                n = tl.load(out_i_ptr + rows64[:, None] * stride_ip
                            + cols[None, :].to(tl.int64) * stride_in, mask=ok, other=-1)
                _scatter_streams(N, n, x.to(tl.float32), ok,
                                 g0, c0, m0, p0, V0, g1, c1, m1, p1, V1,
                                 g2, c2, m2, p2, V2, g3, c3, m3, p3, V3, NUM_STREAMS, True)
    else:
        cols = tl.arange(0, BLOCK_N)
        if EVEN_N:  # N == BLOCK_N: no column mask
            col_ok = tl.full([1, BLOCK_N], 1, tl.int1)
        else:
            col_ok = (cols < N)[None, :]
        col_off = cols[None, :].to(tl.int64) * stride_xn
        rows = pid * (ROWS * GROUPS) + tl.arange(0, ROWS)
        row_ok = rows < P
        x_row = x_ptr + _source_rows(src_ptr, rows, row_ok, GATHER)[:, None] * stride_xp
        x = tl.load(x_row + col_off, mask=row_ok[:, None] & col_ok, other=0.0)
        g0, g1, g2, g3 = _feats4(f0, f1, f2, f3, rows, row_ok, NUM_STREAMS)
        for g in range(GROUPS):
            # prefetch the next group (activations and feature ids) before working on this one
            nrows = rows + ROWS
            nrow_ok = (nrows < P) & (g + 1 < GROUPS)
            nx_row = x_ptr + _source_rows(src_ptr, nrows, nrow_ok, GATHER)[:, None] * stride_xp
            nx = tl.load(nx_row + col_off, mask=nrow_ok[:, None] & col_ok, other=0.0)
            ng0, ng1, ng2, ng3 = _feats4(f0, f1, f2, f3, nrows, nrow_ok, NUM_STREAMS)
            if FLAGS:  # (padding columns were loaded as 0.0: finite)
                tl.store(flag_ptr + rows, _nonfinite_rows(x).to(tl.int8), mask=row_ok)
            _select_rows(x, rows, row_ok, cols, row_ok[:, None] & col_ok, x_row, stride_xn,
                         out_v_ptr, out_i_ptr, N, K,
                         g0, c0, m0, p0, V0, g1, c1, m1, p1, V1,
                         g2, c2, m2, p2, V2, g3, c3, m3, p3, V3,
                         METHOD, NUM_STREAMS, WRITE_OUT, BLOCK_N, CHUNK, KC, FP32_ROUNDS,
                         EVEN_N, CM, KCP, BATCHED, KEY16)
            rows, row_ok, x_row, x = nrows, nrow_ok, nx_row, nx
            g0, g1, g2, g3 = ng0, ng1, ng2, ng3
