"""Row-wise operations on CSR matrices over all neurons at once (no Python loop per neuron)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_ids(m: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored entry."""
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def row_sums(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.sum(axis=1), dtype=np.float64).ravel()


def row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
    """Divide each row by its sum (rows summing to 0 stay empty)."""
    s = row_sums(m)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    out = m.astype(np.float64, copy=True)
    out.data *= np.repeat(inv, np.diff(out.indptr))
    return out


def support(m: sp.csr_matrix) -> sp.csr_matrix:
    """0/1 matrix of the stored non-zero entries."""
    out = m.copy()
    out.data = (out.data != 0).astype(np.float64)
    out.eliminate_zeros()
    return out


def row_top(m: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest entries of every row: ``(columns, values)``, each ``[rows, n]``, padded
    with ``-1`` / ``0``; ties go to the lower column."""
    rows = row_ids(m)
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(order.size) - np.repeat(m.indptr[:-1], np.diff(m.indptr))
    keep = rank < n
    cols = np.full((m.shape[0], n), -1, dtype=np.int64)
    vals = np.zeros((m.shape[0], n), dtype=np.float64)
    r, k = rows[keep], rank[keep]
    cols[r, k] = m.indices[order][keep]
    vals[r, k] = m.data[order][keep]
    return cols, vals


def filter_cells(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """Keep the stored entries where ``keep`` (aligned with ``m.data``) is true."""
    out = m.copy()
    out.data = np.where(keep, out.data, 0)
    out.eliminate_zeros()
    return out
