"""The CPU fast path of the select step (numba), same semantics as :mod:`kernels.reference`.

Each float32 row is read as int32 bit patterns mapped to order-preserving keys
(``bits ^ ((bits >> 31) & 0x7FFFFFFF)``): the largest key is the largest value, and NaN/±inf land
outside the keys of finite values, so one vectorised integer min/max pass per row both finds the
maximum and flags non-finite rows. A second pass over the row (now in L1) finds the first index with
that key (the reference tie-break: lower index wins).

For k > 1 the first pass keeps the maximum of every chunk of 32 columns. The k-th largest chunk
maximum is a lower bound of the row's k-th largest value, so the second pass feeds only chunks
whose maximum reaches it, in index order, to an insertion buffer of the k best keys. An element
enters only when it beats the current k-th (strictly), so among equal values the earlier index
stays: the same tie-break.

Rows are split across numba's threads in blocks of 32. ``-0.0`` and ``+0.0`` are equal, as in torch.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency, but keep the reference usable
    njit = None

AVAILABLE = njit is not None

_POS_INF_KEY = np.int32(0x7F800000)
_NEG_INF_KEY = np.int32(0xFF800000 ^ 0x7FFFFFFF - (1 << 32))  # -2139095041
_BLOCK = 32
_CHUNK = 32

if AVAILABLE:
    @njit(boundscheck=False, inline="always", cache=True)
    def _key(x):
        return x ^ ((x >> 31) & np.int32(0x7FFFFFFF))

    @njit(boundscheck=False, cache=True)
    def _row_minmax(bits):
        hi = _key(bits[0])
        lo = hi
        for n in range(bits.shape[0]):
            k = _key(bits[n])
            hi = k if k > hi else hi
            lo = k if k < lo else lo
        return hi, lo

    @njit(boundscheck=False, cache=True)
    def _row_first(bits, target):
        n_cols = bits.shape[0]
        j = n_cols
        for n in range(n_cols):
            c = n if _key(bits[n]) == target else n_cols
            j = c if c < j else j
        return j

    @njit(parallel=True, boundscheck=False, cache=True)
    def _top1(bits, idx, bad):
        rows = bits.shape[0]
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            for t in range(blk * _BLOCK, min(rows, blk * _BLOCK + _BLOCK)):
                row = bits[t]
                hi, lo = _row_minmax(row)
                bad[t] = hi >= _POS_INF_KEY or lo <= _NEG_INF_KEY
                if hi == np.int32(0) or hi == np.int32(-1):  # max is ±0: first of either zero
                    j0 = _row_first(row, np.int32(0))
                    j1 = _row_first(row, np.int32(-1))
                    idx[t, 0] = j0 if j0 < j1 else j1
                else:
                    idx[t, 0] = _row_first(row, hi)

    @njit(boundscheck=False, inline="always", cache=True)
    def _ckey(x):
        """Key with -0.0 ranked as +0.0 (they compare equal, so the lower index must win)."""
        k = x ^ ((x >> 31) & np.int32(0x7FFFFFFF))
        return k if k != np.int32(-1) else np.int32(0)

    @njit(boundscheck=False, inline="always", cache=True)
    def _insert(keys, ids, filled, k, kk, n):
        """Insert key ``kk`` of index ``n`` into the descending buffer (after equal keys)."""
        if filled == k:
            if kk <= keys[k - 1]:
                return filled
            p = k - 1
        else:
            p = filled
            filled += 1
        while p > 0 and keys[p - 1] < kk:
            keys[p] = keys[p - 1]
            ids[p] = ids[p - 1]
            p -= 1
        keys[p] = kk
        ids[p] = n
        return filled

    @njit(parallel=True, boundscheck=False, cache=True)
    def _topk(bits, k, idx, bad):
        rows, n_cols = bits.shape
        n_chunks = (n_cols + _CHUNK - 1) // _CHUNK
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            keys = np.empty(k, np.int32)
            ids = np.empty(k, np.int64)
            cmax = np.empty(n_chunks, np.int32)
            for t in range(blk * _BLOCK, min(rows, blk * _BLOCK + _BLOCK)):
                row = bits[t]
                # pass 1 (vectorised per chunk): chunk maxima and the row's extremes
                lo_all = np.int32(2147483647)
                hi_all = np.int32(-2147483648)
                for c in range(n_chunks):
                    hi = np.int32(-2147483648)
                    lo = np.int32(2147483647)
                    for j in range(c * _CHUNK, min(n_cols, c * _CHUNK + _CHUNK)):
                        kk = _ckey(row[j])
                        hi = kk if kk > hi else hi
                        lo = kk if kk < lo else lo
                    cmax[c] = hi
                    lo_all = lo if lo < lo_all else lo_all
                    hi_all = hi if hi > hi_all else hi_all
                bad[t] = hi_all >= _POS_INF_KEY or lo_all <= _NEG_INF_KEY
                # the k-th largest chunk maximum bounds the k-th largest value from below
                filled = 0
                for c in range(n_chunks):
                    filled = _insert(keys, ids, filled, k, cmax[c], c)
                thr = keys[k - 1] if filled == k else np.int32(-2147483648)
                # pass 2: only chunks that can hold a top-k value, in index order
                filled = 0
                for c in range(n_chunks):
                    if cmax[c] < thr:
                        continue
                    for j in range(c * _CHUNK, min(n_cols, c * _CHUNK + _CHUNK)):
                        filled = _insert(keys, ids, filled, k, _ckey(row[j]), j)
                for j in range(k):
                    idx[t, j] = ids[j]


def usable(acts: torch.Tensor) -> bool:
    """Whether the fast path takes this tensor (CPU; other dtypes are converted first)."""
    return AVAILABLE and acts.device.type == "cpu" and acts.dim() == 2 and acts.shape[1] > 0


def select_topk(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values [P, k] float32, indices [P, k] int64, nonfinite [P] bool)`` of ``acts [P, N]``.

    Values and indices of non-finite rows are unspecified.
    """
    a = acts.detach().to(torch.float32).contiguous()
    p, n = a.shape
    idx = np.empty((p, k), np.int64)
    bad = np.empty(p, np.bool_)
    if p:
        bits = a.numpy().view(np.int32)
        if k == 1:
            _top1(bits, idx, bad)
        else:
            _topk(bits, k, idx, bad)
    indices = torch.from_numpy(idx)
    return torch.gather(a, 1, indices), indices, torch.from_numpy(bad)
