"""``SparseStats``: the exchange format of one (layer, stream) accumulator.

Both state kinds, the store and the readers speak this format: a CSR matrix of shape
``[n_neurons, n_features]`` whose stored cells are exactly the cells with ``count > 0``, with three
value arrays sharing one sparsity pattern (count, mass, peak), plus the stream's corpus frequencies.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

#: Value arrays of a ``SparseStats`` and their dtypes.
VALUE_DTYPES = {"count": np.int64, "mass": np.float64, "peak": np.float32}


@dataclass
class SparseStats:
    """Sums of one (layer, stream) in CSR form.

    Attributes
    ----------
    n_neurons, n_features : int
        Matrix shape.
    indptr : ndarray, int64, ``[n_neurons + 1]``
        Row pointers; row ``n`` holds cells ``indptr[n]:indptr[n + 1]``.
    indices : ndarray, int64, ``[nnz]``
        Feature ids, strictly increasing inside a row.
    count : ndarray, int64, ``[nnz]``
        Times the neuron was in the top-k at a position with that feature.
    mass : ndarray, float64, ``[nnz]``
        Sum of ``max(activation, 0)`` over those events.
    peak : ndarray, float32, ``[nnz]``
        Largest raw activation over those events.
    feature_freq : ndarray, int64, ``[n_features]``
        Positions observed with each feature (the stream's corpus frequencies).
    tokens : int
        Positions observed with a feature (``feature_freq.sum()``).
    missing : int
        Positions observed whose feature was missing (id ``-1``); they add to no cell.
    """

    n_neurons: int
    n_features: int
    indptr: np.ndarray
    indices: np.ndarray
    count: np.ndarray
    mass: np.ndarray
    peak: np.ndarray
    feature_freq: np.ndarray
    tokens: int = 0
    missing: int = 0

    def __repr__(self) -> str:  # (not the arrays: a notebook printed all of them)
        return (f"SparseStats([{self.n_neurons}, {self.n_features}], {self.nnz} cells, "
                f"{self.tokens} tokens, {self.missing} missing)")

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_neurons, self.n_features)

    @classmethod
    def empty(cls, n_neurons: int, n_features: int) -> "SparseStats":
        return cls.from_coo(n_neurons, n_features, np.zeros(0, np.int64), np.zeros(0, np.int64),
                            np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32),
                            np.zeros(n_features, np.int64))

    @classmethod
    def from_coo(cls, n_neurons, n_features, rows, cols, count, mass, peak, feature_freq,
                 tokens=None, missing=0) -> "SparseStats":
        """Build from cells given in any order, each (row, col) at most once."""
        rows = np.asarray(rows, np.int64)
        cols = np.asarray(cols, np.int64)
        order = np.lexsort((cols, rows))
        feature_freq = np.asarray(feature_freq, np.int64)
        return cls(int(n_neurons), int(n_features), _indptr(rows, n_neurons), cols[order],
                   np.asarray(count, np.int64)[order], np.asarray(mass, np.float64)[order],
                   np.asarray(peak, np.float32)[order], feature_freq,
                   int(feature_freq.sum()) if tokens is None else int(tokens), int(missing))

    @classmethod
    def from_keys(cls, n_neurons, n_features, keys, count, mass, peak, feature_freq, tokens,
                  missing) -> "SparseStats":
        """Build from cells keyed ``neuron * n_features + feature``, keys strictly increasing
        (row-major order is CSR order)."""
        keys = np.asarray(keys, np.int64)
        return cls(int(n_neurons), int(n_features), _indptr(keys // n_features, n_neurons),
                   keys % n_features, np.asarray(count, np.int64), np.asarray(mass, np.float64),
                   np.asarray(peak, np.float32), np.asarray(feature_freq, np.int64),
                   int(tokens), int(missing))

    def keys(self) -> np.ndarray:
        """``neuron * n_features + feature`` of every stored cell (increasing)."""
        return self.rows() * self.n_features + self.indices

    def rows(self) -> np.ndarray:
        """Row index of every stored cell (COO rows)."""
        return np.repeat(np.arange(self.n_neurons, dtype=np.int64), np.diff(self.indptr))

    def csr(self, value: str = "count") -> sp.csr_matrix:
        """One value array as a ``scipy.sparse.csr_matrix`` (pattern = cells with count > 0)."""
        data = getattr(self, _check_value(value))
        m = sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)
        m.has_sorted_indices = True
        return m

    def torch_csr(self, value: str = "count") -> torch.Tensor:
        """One value array as a ``torch.sparse_csr_tensor``."""
        import torch  # (reading a store needs no torch elsewhere)

        data = getattr(self, _check_value(value))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.indptr), torch.from_numpy(self.indices),
                torch.from_numpy(np.ascontiguousarray(data)), size=self.shape,
                check_invariants=False)

    def neuron_count(self) -> np.ndarray:
        """Events per neuron in this stream (row sums of count)."""
        return _row_sums(self.count, self.indptr)

    def neuron_mass(self) -> np.ndarray:
        """Activation mass per neuron in this stream (row sums of mass)."""
        return _row_sums(self.mass, self.indptr)

    def equals(self, other: "SparseStats", mass_rtol: float = 0.0) -> bool:
        """Exact equality of pattern, count, peak and counters; mass within ``mass_rtol``."""
        return (self.shape == other.shape and self.tokens == other.tokens
                and self.missing == other.missing
                and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.count, other.count)
                and np.array_equal(self.peak, other.peak)
                and np.array_equal(self.feature_freq, other.feature_freq)
                and np.allclose(self.mass, other.mass, rtol=mass_rtol, atol=0.0))


def _indptr(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """CSR row pointers of cells whose (sorted) row ids are ``rows``."""
    indptr = np.zeros(int(n_rows) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=int(n_rows)), out=indptr[1:])
    return indptr


def _row_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row sums of CSR ``values`` (empty rows give 0)."""
    csum = np.concatenate([[0], np.cumsum(values)])
    return csum[indptr[1:]] - csum[indptr[:-1]]


def _check_value(value: str) -> str:
    if value not in VALUE_DTYPES:
        raise InputError(f"unknown value {value!r}: use one of {', '.join(VALUE_DTYPES)}")
    return value
