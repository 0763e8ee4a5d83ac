"""Row-by-row merge-join of two stages' sorted cells (numba): every per-neuron quantity of a
comparison in one pass over each row's cells, rows in parallel. The numpy path in
:mod:`txray_engine.measures.compare` computes the same numbers and serves as its reference."""

from __future__ import annotations

import numpy as np

from ..accumulate.stats import SparseStats

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover
    njit = None

AVAILABLE = njit is not None

if AVAILABLE:
    @njit(boundscheck=False, inline="always", cache=True)
    def _totals(c, m, lo, hi, by_count, min_count):
        """Kept cells, their mass, and the total of the distribution's weights, of one row."""
        n = 0
        mass = 0.0
        weight = 0.0
        for i in range(lo, hi):
            if c[i] >= min_count:
                n += 1
                mass += m[i]
                weight += c[i] if by_count else m[i]
        return n, mass, weight

    @njit(boundscheck=False, inline="always", cache=True)
    def _values(c, m, i, by_count, weight, mass):
        """Distribution share and reference-compatible value of cell ``i``."""
        x = c[i] if by_count else m[i]
        d = mass * c[i]
        return (x / weight if weight > 0 else 0.0), (m[i] / d if d > 0 else 0.0)

    @njit(parallel=True, boundscheck=False, cache=True)
    def _join(ipa, ia, ca, ma, ipb, ib, cb, mb, by_count, min_count, out_i, out_f):
        n = ipa.shape[0] - 1
        for r in prange(n):
            a0, a1, b0, b1 = ipa[r], ipa[r + 1], ipb[r], ipb[r + 1]
            la, sa, wa = _totals(ca, ma, a0, a1, by_count, min_count)
            lb, sb, wb = _totals(cb, mb, b0, b1, by_count, min_count)
            i, j = a0, b0
            union = 0
            h2 = 0.0
            c2 = 0.0
            while i < a1 or j < b1:
                if i < a1 and ca[i] < min_count:
                    i += 1
                    continue
                if j < b1 and cb[j] < min_count:
                    j += 1
                    continue
                take_a = i < a1 and (j >= b1 or ia[i] <= ib[j])
                take_b = j < b1 and (i >= a1 or ib[j] <= ia[i])
                pa = pb = va = vb = 0.0
                if take_a:
                    pa, va = _values(ca, ma, i, by_count, wa, sa)
                    i += 1
                if take_b:
                    pb, vb = _values(cb, mb, j, by_count, wb, sb)
                    j += 1
                union += 1
                h2 += (np.sqrt(pa) - np.sqrt(pb)) ** 2
                c2 += (np.sqrt(va) - np.sqrt(vb)) ** 2
            out_i[r, 0] = la
            out_i[r, 1] = lb
            out_i[r, 2] = union
            out_f[r, 0] = sa
            out_f[r, 1] = sb
            out_f[r, 2] = h2
            out_f[r, 3] = c2


def row_join(a: SparseStats, b: SparseStats, by: str, min_count: int) -> dict[str, np.ndarray]:
    """Per neuron: ``length_a/b``, ``union``, ``mass_a/b`` (cells with count ≥ ``min_count``),
    ``sq_hellinger`` = Σ (√p − √q)² of the ``by`` distributions and ``sq_compat`` = Σ (√a − √b)²
    of the reference-compatible values. Both stages must share the feature space."""
    n = a.n_neurons
    out_i = np.zeros((n, 3), np.int64)
    out_f = np.zeros((n, 4), np.float64)
    _join(a.indptr.astype(np.int64, copy=False), a.indices.astype(np.int64, copy=False),
          a.count.astype(np.int64, copy=False),
          a.mass.astype(np.float64, copy=False), b.indptr.astype(np.int64, copy=False),
          b.indices.astype(np.int64, copy=False),
          b.count.astype(np.int64, copy=False), b.mass.astype(np.float64, copy=False),
          by == "count",
          max(1, int(min_count)), out_i, out_f)
    return {"length_a": out_i[:, 0], "length_b": out_i[:, 1], "union": out_i[:, 2],
            "mass_a": out_f[:, 0], "mass_b": out_f[:, 1], "sq_hellinger": out_f[:, 2],
            "sq_compat": out_f[:, 3]}
