"""Sparse accumulation on the CPU (numba): a persistent open-addressing hash table, and the merge of
sorted runs.

:class:`CpuSparseTable` holds ``(key, count, mass, peak)`` cells keyed by
``neuron * n_features + feature`` (int64; ``-1`` marks an empty slot), like the GPU's
:class:`kernels.triton_sparse.TritonSparseTable`, with linear probing from a multiplicative
(Fibonacci) hash. Each event costs one probe sequence, whatever the number of cells already held,
so a ``SparseState`` on the CPU adds its events here instead of sorting every batch and merging
sorted runs (the sort-and-reduce that remains the path without numba, and the one merges use).

Growth: before ``E`` events the table makes sure ``size + E <= max_load * capacity`` (``E`` bounds
the new cells) and otherwise rehashes into a power-of-two capacity at least twice as large, so
probing always ends and the load stays below ``max_load`` (0.5).

:meth:`CpuSparseTable.drain` returns the cells sorted by key (the reduced run the state merges)
and empties the table. Counts and peaks are exact; masses are float64 sums of the float32 values,
equal to the reference's up to the summation order. :func:`merge_runs` merges two such runs in one
linear pass (how a CPU ``SparseState`` folds runs into its master without sorting again).
"""

from __future__ import annotations

import numpy as np

from .cpu import AVAILABLE, njit

_EMPTY = np.int64(-1)
_FIB = np.uint64(0x9E3779B97F4A7C15)

if AVAILABLE:
    from .cpu import _min_max

    @njit(boundscheck=False, inline="always", cache=True)
    def _slot(key, shift):
        return np.int64((np.uint64(key) * _FIB) >> np.uint64(shift))

    @njit(boundscheck=False, inline="always", cache=True)
    def _probe(tkeys, key, shift):
        """The slot of ``key`` (claimed if new) and whether it was new."""
        mask = tkeys.shape[0] - 1
        s = _slot(key, shift)
        while tkeys[s] != key and tkeys[s] != _EMPTY:
            s = (s + 1) & mask
        if tkeys[s] == _EMPTY:
            tkeys[s] = key
            return s, 1
        return s, 0

    @njit(boundscheck=False, cache=True)
    def _add(tkeys, tcount, tmass, tpeak, shift, keys, counts, masses, peaks):
        """Add cells ``(keys, counts, masses, peaks)`` (keys ≥ 0, repeats allowed); returns the
        number of new slots taken."""
        new = 0
        for e in range(keys.shape[0]):
            s, fresh = _probe(tkeys, keys[e], shift)
            new += fresh
            tcount[s] += counts[e]
            tmass[s] += masses[e]
            if peaks[e] > tpeak[s]:
                tpeak[s] = peaks[e]
        return new

    @njit(boundscheck=False, cache=True)
    def _add_selection(tkeys, tcount, tmass, tpeak, shift, indices, values, features, n_neurons,
                       n_features, freq):
        """Positions (``freq``) and events of a selection ``[P, k]`` with ids ``features`` ``[P]``;
        returns ``(new slots, missing ids)``, or ``(-1, -1)`` (nothing changed) for an id out of
        range. (The event update is written out as in ``kernels.cpu._accumulate_dense``: a helper
        taking the arrays costs reference counting per event.)"""
        p, k = indices.shape
        if p == 0:
            return 0, 0
        lo, hi = _min_max(indices.ravel())
        flo, fhi = _min_max(features)
        if lo < 0 or hi >= n_neurons or flo < -1 or fhi >= n_features:
            return -1, -1
        new = 0
        missing = 0
        for t in range(p):
            f = features[t]
            if f < 0:
                missing += 1
                continue
            freq[f] += 1
            for j in range(k):
                s, fresh = _probe(tkeys, indices[t, j] * n_features + f, shift)
                new += fresh
                v = values[t, j]
                tcount[s] += 1
                if v > 0:
                    tmass[s] += np.float64(v)
                if v > tpeak[s]:
                    tpeak[s] = v
        return new, missing

    @njit(boundscheck=False, cache=True)
    def _merge(ak, ac, am, ap, bk, bc, bm, bp, ok, oc, om, op):
        """Merge two runs sorted by unique key into ``o*``, summing cells of equal keys; returns
        the number of cells written."""
        i = j = n = 0
        while i < ak.shape[0] or j < bk.shape[0]:
            if j == bk.shape[0] or (i < ak.shape[0] and ak[i] < bk[j]):
                ok[n], oc[n], om[n], op[n] = ak[i], ac[i], am[i], ap[i]
                i += 1
            elif i == ak.shape[0] or bk[j] < ak[i]:
                ok[n], oc[n], om[n], op[n] = bk[j], bc[j], bm[j], bp[j]
                j += 1
            else:
                ok[n], oc[n], om[n] = ak[i], ac[i] + bc[j], am[i] + bm[j]
                op[n] = ap[i] if ap[i] >= bp[j] else bp[j]
                i += 1
                j += 1
            n += 1
        return n


def merge_runs(a, b):
    """Merge two ``(keys, count, mass, peak)`` runs, each sorted by unique key (numpy arrays),
    into one: a linear pass, no sort, output the only new memory."""
    total = a[0].shape[0] + b[0].shape[0]
    out = (np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.float64),
           np.empty(total, np.float32))
    n = _merge(*a, *b, *out)
    return out if n == total else tuple(x[:n].copy() for x in out)  # don't keep the slack


class CpuSparseTable:
    """Open-addressing hash table of ``(key, count, mass, peak)`` cells in host memory."""

    def __init__(self, capacity: int = 1 << 12, max_load: float = 0.5):
        if not AVAILABLE:
            raise RuntimeError("CpuSparseTable needs numba")
        if not 0.0 < max_load <= 0.9:
            raise ValueError(f"max_load must be in (0, 0.9], got {max_load}")
        self.max_load = float(max_load)
        self._alloc(max(16, 1 << (int(capacity) - 1).bit_length()))

    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self._shift = 64 - (capacity.bit_length() - 1)
        self.keys = np.full(capacity, _EMPTY, np.int64)
        self.count = np.zeros(capacity, np.int64)
        self.mass = np.zeros(capacity, np.float64)
        self.peak = np.full(capacity, -np.inf, np.float32)
        self.nnz = 0

    @property
    def nbytes(self) -> int:
        return self.capacity * (8 + 8 + 8 + 4)

    def _reserve(self, events: int) -> None:
        need = self.nnz + events
        if need <= self.max_load * self.capacity:
            return
        cap = max(2 * self.capacity, 1 << int(need / self.max_load).bit_length())
        slots = np.flatnonzero(self.keys != _EMPTY)
        old = self.keys[slots], self.count[slots], self.mass[slots], self.peak[slots]
        self._alloc(cap)
        self.nnz = _add(self.keys, self.count, self.mass, self.peak, self._shift, *old)

    def add_events(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add events: ``keys`` int64 ≥ 0 and ``values`` float32 (finite), one per event (count 1,
        mass ``max(v, 0)``, peak ``v``)."""
        self.add_cells(keys, np.ones(keys.shape[0], np.int64),
                       np.maximum(values, 0).astype(np.float64), values)

    def add_cells(self, keys: np.ndarray, count: np.ndarray, mass: np.ndarray,
                  peak: np.ndarray) -> None:
        """Add cells (``keys`` int64 ≥ 0, repeats allowed) to the table's sums."""
        self._reserve(keys.shape[0])
        self.nnz += _add(self.keys, self.count, self.mass, self.peak, self._shift,
                         np.ascontiguousarray(keys, np.int64), np.ascontiguousarray(count, np.int64),
                         np.ascontiguousarray(mass, np.float64),
                         np.ascontiguousarray(peak, np.float32))

    def add_selection(self, indices: np.ndarray, values: np.ndarray, features: np.ndarray,
                      n_neurons: int, n_features: int, freq: np.ndarray) -> int:
        """Add a selection ``(values, indices)`` ``[P, k]`` of positions with ids ``features``
        ``[P]`` (``-1`` = missing) as keys ``neuron * n_features + feature``, and count the
        positions into ``freq`` ``[n_features]``; returns the number of missing ids. Ids out of
        range raise ``ValueError`` and change nothing."""
        self._reserve(indices.size)
        new, missing = _add_selection(self.keys, self.count, self.mass, self.peak, self._shift,
                                      np.ascontiguousarray(indices, np.int64),
                                      np.ascontiguousarray(values, np.float32),
                                      np.ascontiguousarray(features, np.int64), n_neurons,
                                      n_features, freq)
        if new < 0:
            raise ValueError(f"neuron ids must be in [0, {n_neurons}) and feature ids in "
                             f"[-1, {n_features})")
        self.nnz += new
        return missing

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The cells ``(keys, count, mass, peak)`` sorted by key; the table is emptied (its
        capacity kept)."""
        slots = np.flatnonzero(self.keys != _EMPTY)
        order = np.argsort(self.keys[slots], kind="stable")
        slots = slots[order]
        out = (self.keys[slots], self.count[slots], self.mass[slots], self.peak[slots])
        self.keys.fill(_EMPTY)
        self.count.fill(0)
        self.mass.fill(0.0)
        self.peak.fill(-np.inf)
        self.nnz = 0
        return out
