"""The CPU fast paths (numba) of the select step and of the scatter into dense states, same
semantics as :mod:`txray_kernels.reference`.

One pass per row reads the float32 bits as 32-bit integers and keeps, per chunk of 64 columns, the
*signed* integer maximum and the *unsigned* integer maximum (two vector max instructions per 8
values, the same work as a sum):

- Non-negative floats order like their signed bit patterns, and every negative float is a negative
  integer, so when the row's signed maximum ``hi`` is > 0 it *is* the bit pattern of the largest
  value. The first chunk whose maximum equals ``hi``, scanned again (in L1), gives the first index
  holding it: the reference tie-break, lower index wins (a positive finite value has one bit
  pattern).
- ``hi >= 0x7F800000`` means +inf or NaN; an unsigned maximum ``>= 0xFF800000`` means -inf or a
  negative NaN. Together they flag every non-finite row.
- Rows whose maximum is not positive (all ≤ 0, where ``-0.0`` must tie with ``+0.0``) take an exact
  path over order-preserving keys ``bits ^ ((bits >> 31) & 0x7FFFFFFF)``, with ``-0.0`` ranked as
  ``+0.0``.

For k > 1 the chunk maxima bound the k-th value (chunks of 64 values, or 32 or 16 where 64-wide
ones are fewer than 1.5 k: a tighter bound, 1.1-2.4x faster at k = 16-32 and N = 512-1,024): when
the k-th largest chunk maximum ``thr`` is > 0, there are k values ≥ ``thr`` in distinct chunks,
so a chunk whose maximum is below ``thr`` — and any value below it — is beaten by k others and
skipped. ``thr`` comes from counting, for each
chunk maximum, how many are at least as large (branch-free, O(chunks²): up to 2k chunks), or from
an insertion buffer of the chunk maxima for more chunks. The values left (about k of them on real
data) are gathered, each qualifying chunk as a 64-bit mask of its values ≥ ``thr`` (vector
compares) whose set bits are walked, then fed in index order to an insertion buffer of the k best keys; an element enters only when it beats the
current k-th strictly, so among equal values the earlier index stays. Otherwise (fewer than k
chunks, or ``thr <= 0``) every value is fed; that is O(N k) on adversarial rows, so
``txray_kernels.select`` sends k > ``MAX_K`` to the torch reference. bf16/fp16 rows are widened into a
float32 row first (:mod:`txray_kernels.cpu_half`) and take the same row functions.

Rows are split across numba's threads in blocks of 32.

The scatter into dense states (``accumulate_dense``) is in :mod:`txray_kernels.cpu_scatter`.
"""

from __future__ import annotations

import numpy as np
import torch

from .cpu_scatter import _int64

try:
    from numba import njit, prange, types
    from numba.extending import overload
except ImportError:  # pragma: no cover - numba is a dependency, but keep the reference usable
    njit = None

AVAILABLE = njit is not None
if AVAILABLE:
    from .cpu_scatter import _min_max

if AVAILABLE:
    try:  # llvm.cttz
        from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
    except ImportError:  # pragma: no cover - a numba without it: a loop
        @njit(inline="always", cache=True)
        def _trailing_zeros(bits):
            z = 0
            while not bits & np.uint64(1):
                bits >>= np.uint64(1)
                z += 1
            return z

_POS_NONFINITE = np.int32(0x7F800000)  # signed bits at or above: +inf or NaN
_NEG_NONFINITE = np.uint32(0xFF800000)  # unsigned bits at or above: -inf or negative NaN
_INT_MIN = np.int32(-2147483648)
_BLOCK = 32
_CHUNK = 64
_MIN_CHUNK = 16  # k > 1 narrows its chunks to 32 or 16 where 64-wide ones are under 1.5 k
#: Largest k the numba path takes; above it every value may pass through the k-long insertion
#: buffer, and the torch reference (a sort) is faster.
MAX_K = 32

if AVAILABLE:
    @njit(boundscheck=False, inline="always", cache=True)
    def _ckey(x):
        """Order-preserving key of float bits ``x``, with -0.0 ranked as +0.0 (they compare
        equal, so the lower index must win)."""
        k = x ^ ((x >> 31) & np.int32(0x7FFFFFFF))
        return k if k != np.int32(-1) else np.int32(0)

    def _signed(w):
        """The unsigned integer ``w`` as the signed integer of its width (numba only)."""

    @overload(_signed, inline="always")
    def _signed_of(w):
        if w == types.uint32:
            return lambda w: np.int32(w)
        if w == types.uint16:
            return lambda w: np.int16(w)
        return None

    @njit(boundscheck=False, inline="always", cache=True)
    def _chunk_max(u, base, size):
        """Signed and unsigned maxima of ``u[base:base + size]``, a row's bit patterns (uint32
        or uint16), one vectorised pass."""
        um = u[base]
        m = _signed(um)
        for j in range(size):
            w = u[base + j]
            v = _signed(w)
            m = v if v > m else m
            um = w if w > um else um
        return m, um

    @njit(boundscheck=False, inline="always", cache=True)
    def _chunk_maxima(u, cmax, width):
        """Signed maximum of every chunk of ``width`` values of a row's bit patterns ``u`` (uint32
        or uint16) into ``cmax``; returns the row's signed and unsigned maxima. Called with the
        constant ``_CHUNK``, full chunks run with a constant trip count (what lets the compiler
        vectorise and unroll them); the tail is one shorter chunk."""
        n = u.shape[0]
        full = n // width
        uhi = u[0]
        hi = _signed(uhi)
        for c in range(full):
            m, um = _chunk_max(u, c * width, width)
            cmax[c] = m
            hi = m if m > hi else hi
            uhi = um if um > uhi else uhi
        if full * width < n:
            m, um = _chunk_max(u, full * width, n - full * width)
            cmax[full] = m
            hi = m if m > hi else hi
            uhi = um if um > uhi else uhi
        return hi, uhi

    @njit(boundscheck=False, inline="always", cache=True)
    def _row_max(u):
        """``(signed maximum, unsigned maximum, first index of the signed maximum)`` of a row's
        bit patterns ``u`` (float32 or 16-bit floats): one pass keeps the chunk maxima and the
        first chunk holding the largest, which is then scanned again (in L1) for its first
        index. (Writing the chunk maxima out and finding that chunk after was no faster.)"""
        n = u.shape[0]
        full = n // _CHUNK
        uhi = u[0]
        hi = _signed(uhi)
        best = 0
        for c in range(full):
            m, um = _chunk_max(u, c * _CHUNK, _CHUNK)
            best = c if m > hi else best
            hi = m if m > hi else hi
            uhi = um if um > uhi else uhi
        if full * _CHUNK < n:
            m, um = _chunk_max(u, full * _CHUNK, n - full * _CHUNK)
            best = full if m > hi else best
            hi = m if m > hi else hi
            uhi = um if um > uhi else uhi
        j = best * _CHUNK
        while _signed(u[j]) != hi:
            j += 1
        return hi, uhi, j

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

    @njit(boundscheck=False, inline="always", cache=True)
    def _gather(u, cmax, thr, cand, width):
        """Indices of the values ``>= thr`` of row ``u`` in the chunks of ``width`` (<= 64) whose
        maximum reaches ``thr``, into ``cand`` in index order; returns how many. A full chunk's
        values become a bit mask (vector compares, no branch per value) whose set bits are
        walked."""
        n = u.shape[0]
        full = n // width
        m = 0
        for c in range((n + width - 1) // width):
            if cmax[c] < thr:
                continue
            base = c * width
            if c < full:
                bits = np.uint64(0)
                for j in range(width):
                    bits |= np.uint64(np.int32(u[base + j]) >= thr) << np.uint64(j)
                while bits:
                    cand[m] = base + _trailing_zeros(bits)
                    m += 1
                    bits &= bits - np.uint64(1)
            else:
                for j in range(base, n):
                    if np.int32(u[j]) >= thr:
                        cand[m] = j
                        m += 1
        return m

    @njit(boundscheck=False, cache=True)
    def _select_row(u, k, cmax, cand, keys, ids):
        """Top-``k`` indices of row ``u`` into ``ids``; returns whether the row is non-finite.
        ``cand`` is scratch for up to ``len(u)`` indices."""
        n = u.shape[0]
        # chunks of 64 (a constant width: the vectorised, unrolled loops), or 32 or 16 where
        # 64-wide ones are too few (under 1.5 k) to bound the k-th value tightly
        width = _CHUNK
        while width > _MIN_CHUNK and (n + width - 1) // width < k + k // 2:
            width //= 2
        n_chunks = (n + width - 1) // width
        if width == _CHUNK:
            hi, uhi = _chunk_maxima(u, cmax, _CHUNK)
        else:
            hi, uhi = _chunk_maxima(u, cmax, width)
        bad = hi >= _POS_NONFINITE or uhi >= _NEG_NONFINITE
        thr = _INT_MIN
        if k <= n_chunks <= 2 * k:
            # the k-th largest chunk maximum, by counting (no unpredictable branches; O(chunks²),
            # so only where the buffer below would shift about as much)
            kth = _INT_MIN
            for c in range(n_chunks):
                v = cmax[c]
                at_least = 0
                for d in range(n_chunks):
                    at_least += np.int32(cmax[d] >= v)
                kth = v if at_least >= k and v > kth else kth
            thr = kth if kth > 0 else thr
        elif n_chunks >= k:  # many chunks: an insertion buffer of the k largest
            filled = 0
            for c in range(n_chunks):
                filled = _insert(keys, ids, filled, k, cmax[c], c)
            thr = keys[k - 1] if keys[k - 1] > 0 else thr
        filled = 0
        if thr == _INT_MIN:  # no positive bound: every value competes
            for j in range(n):
                filled = _insert(keys, ids, filled, k, _ckey(np.int32(u[j])), j)
            return bad
        # with thr > 0, a value below it is beaten by k others; the rest are gathered first and
        # then inserted (a scan with the insertion inline measured 1.1-1.3x slower). A full
        # chunk's values at or above thr become a 64-bit mask (vector compares, no branch per
        # value), whose set bits are then walked in index order
        if width == _CHUNK:
            m = _gather(u, cmax, thr, cand, _CHUNK)
        else:
            m = _gather(u, cmax, thr, cand, width)
        for i in range(m):
            filled = _insert(keys, ids, filled, k, _ckey(np.int32(u[cand[i]])), cand[i])
        return bad

    @njit(parallel=True, boundscheck=False, cache=True)
    def _select(x, u, src, k, vals, idx, bad):
        """Rows ``src`` of ``x`` (float32; ``u`` is the same memory as uint32; an empty ``src``:
        every row) into ``vals``/``idx`` ``[R, k]`` and ``bad`` ``[R]``."""
        n_cols = u.shape[1]
        rows = vals.shape[0]
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            keys = np.empty(k, np.int32)
            ids = np.empty(k, np.int64)
            cmax = np.empty((n_cols + _MIN_CHUNK - 1) // _MIN_CHUNK, np.int32)
            cand = np.empty(n_cols, np.int64)
            for t in range(blk * _BLOCK, min(rows, blk * _BLOCK + _BLOCK)):
                r = src[t] if src.shape[0] else t
                bad[t] = _select_row(u[r], k, cmax, cand, keys, ids)
                for j in range(k):
                    idx[t, j] = ids[j]
                    vals[t, j] = x[r, ids[j]]

    @njit(boundscheck=False, cache=True)
    def _top1_nonpositive(u):
        """``(non-finite, index)`` of the maximum of a row whose maximum is not positive, by
        :func:`_select_row` (its buffers are allocated here: such rows are rare, and allocating
        them per block of rows measured 3-5% of the k = 1 pass)."""
        keys = np.empty(1, np.int32)
        ids = np.empty(1, np.int64)
        cmax = np.empty((u.shape[0] + _MIN_CHUNK - 1) // _MIN_CHUNK, np.int32)
        bad = _select_row(u, 1, cmax, np.empty(u.shape[0], np.int64), keys, ids)
        return bad, ids[0]

    @njit(boundscheck=False, inline="always", cache=True)
    def _top1_row(r):
        """``(non-finite, index of the maximum)`` of row ``r`` (float32 bits), by
        :func:`_row_max`. Rows whose maximum is not positive go through :func:`_select_row`."""
        hi, uhi, j = _row_max(r)
        if hi <= 0:
            return _top1_nonpositive(r)
        return hi >= _POS_NONFINITE or uhi >= _NEG_NONFINITE, j

    @njit(parallel=True, boundscheck=False, cache=True)
    def _top1(x, u, src, vals, idx, bad):
        """k = 1 (:func:`_top1_row`) for rows ``src`` of ``x`` (float32; ``u`` the same memory
        as uint32; an empty ``src``: every row)."""
        rows = vals.shape[0]
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            for t in range(blk * _BLOCK, min(rows, blk * _BLOCK + _BLOCK)):
                r = src[t] if src.shape[0] else t
                b, j = _top1_row(u[r])
                bad[t] = b
                idx[t, 0] = j
                vals[t, 0] = x[r, j]


def usable(acts: torch.Tensor) -> bool:
    """Whether the fast path takes this tensor (CPU; bf16/fp16 are read as they are, other
    dtypes converted to float32 first)."""
    return AVAILABLE and acts.device.type == "cpu" and acts.dim() == 2 and acts.shape[1] > 0


_NO_ROWS = torch.zeros(0, dtype=torch.int64)
_HALF = {torch.bfloat16: 0, torch.float16: 1}  # txray_kernels.cpu_half.BF16 / FP16


def read_rows(acts: torch.Tensor, rows: torch.Tensor | None):
    """``(a, half, src, R)``: ``acts [P, N]`` as the row kernels read it (bf16/fp16 as they are,
    ``half`` their ``txray_kernels.cpu_half`` kind, else ``None``; other dtypes as float32;
    contiguous), the rows ``rows`` as checked int64 indices (an empty array: every row), and the
    number ``R`` of rows to read."""
    a = acts.detach()
    half = _HALF.get(a.dtype)  # bf16 / fp16: read as they are (kernels.cpu_half)
    if half is None and a.dtype != torch.float32:
        a = a.float()
    if not a.is_contiguous():
        a = a.contiguous()
    p = a.shape[0]
    src = _NO_ROWS.numpy()
    if rows is not None:
        src = _int64(rows).reshape(-1)
        if src.shape[0]:
            lo, hi = _min_max(src)
            if lo < 0 or hi >= p:
                raise ValueError(f"rows must index the {p} rows of the activations, got "
                                 f"{lo if lo < 0 else hi}")
        p = src.shape[0]
    return a, half, src, p


def select_topk(acts: torch.Tensor, k: int, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values [R, k] float32, indices [R, k] int64, nonfinite row positions)`` of the rows
    ``rows`` (int64 indices; ``None``: all ``P``) of ``acts [P, N]``, read in place (no copy of the
    kept rows). The non-finite positions index the output rows.

    Values and indices of non-finite rows are unspecified; so are rows that overflow float32 (a
    float64 input is read as float32, the engine's value type, so such rows are flagged).
    """
    a, half, src, p = read_rows(acts, rows)
    n = a.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    vals = np.empty((p, k), np.float32)
    idx = np.empty((p, k), np.int64)
    bad = np.zeros(p, np.bool_)
    if p and half is not None:
        from . import cpu_half
        cpu_half._select16(a.view(torch.int16).numpy().view(np.uint16), half, src, k, vals, idx,
                           bad)
    elif p:
        x = a.numpy()
        (_top1(x, x.view(np.uint32), src, vals, idx, bad) if k == 1 else
         _select(x, x.view(np.uint32), src, k, vals, idx, bad))
    bad_rows = torch.from_numpy(np.flatnonzero(bad)) if np.count_nonzero(bad) else _NO_ROWS
    return torch.from_numpy(vals), torch.from_numpy(idx), bad_rows
