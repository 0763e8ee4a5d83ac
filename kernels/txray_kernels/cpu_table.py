"""Sparse accumulation on the CPU (numba): a persistent open-addressing hash table.

:class:`CpuSparseTable` holds ``(key, count, mass, peak)`` cells keyed by
``neuron * n_features + feature`` (int64; ``-1`` marks an empty slot), like the GPU's
:class:`txray_kernels.triton_sparse.TritonSparseTable`, with linear probing from a multiplicative
(Fibonacci) hash. Each event costs one probe sequence, whatever the number of cells already held,
so a ``SparseState`` on the CPU holds its cells here instead of sorting every batch and merging
sorted runs (the sort-and-reduce that remains the path without numba).

Growth: events go in chunks of at most ``CHUNK_EVENTS``; before a chunk of ``E`` events the table
makes sure ``size + E <= max_load * capacity`` (``E`` bounds the new cells) and otherwise rehashes
into a power-of-two capacity at least twice as large, so probing always ends, the load stays below
``max_load`` (0.75), and the capacity is at most ``2 / max_load * (size + CHUNK_EVENTS)`` slots of
28 bytes (37-75 bytes per cell). Most events of text find a cell already there, whose probe
sequence stays short at this load (about 2.5 slots).

:meth:`CpuSparseTable.sorted_cells` returns a copy of the cells sorted by key (what a read of a
CPU ``SparseState``, whose whole state the table is, returns). Counts and peaks are exact; masses
are float64 sums of the float32 values, equal to the reference's up to the summation order.
"""

from __future__ import annotations

import numpy as np

from .cpu import AVAILABLE, njit

_EMPTY = np.int64(-1)
#: Events per insert call: the table reserves room for this many new cells at a time, so its
#: capacity follows the cells it holds, not the size of one call.
CHUNK_EVENTS = 1 << 16
_FIB = np.uint64(0x9E3779B97F4A7C15)

if AVAILABLE:
    from .cpu_scatter import _ids_ok
    from .prefetch import positions_ahead, prefetch

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
        """Positions (``freq``) and events of a selection ``[P, k]`` with ids ``features`` ``[P]``
        (checked by the caller); returns ``(new slots, missing ids)``. (The event update is written
        out as in ``txray_kernels.cpu_scatter._accumulate_dense``: a helper taking the arrays costs reference
        counting per event.)"""
        p, k = indices.shape
        new = 0
        missing = 0
        ahead = positions_ahead(k)
        for t in range(p):
            if t + ahead < p and features[t + ahead] >= 0:
                f = features[t + ahead]
                prefetch(freq, f)
                for j in range(k):
                    s = _slot(indices[t + ahead, j] * n_features + f, shift)
                    prefetch(tkeys, s)
                    prefetch(tcount, s)
                    prefetch(tmass, s)
                    prefetch(tpeak, s)
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
    def _sorted_copy(tkeys, tcount, tmass, tpeak, n):
        """The ``n`` cells of the table sorted by key, as new arrays: one sequential pass packs
        them, then an LSD radix sort of 11-bit digits (as many passes as the largest key
        needs: 3 for keys below 2**33) moves keys and sums together, reading and writing in
        order instead of gathering each cell from a random slot (argsort and gathers took 2-4x
        longer)."""
        k, c = np.empty(n, np.int64), np.empty(n, np.int64)
        m, p = np.empty(n, np.float64), np.empty(n, np.float32)
        j = 0
        top = 0
        for s in range(tkeys.shape[0]):
            if tkeys[s] != _EMPTY:
                k[j], c[j], m[j], p[j] = tkeys[s], tcount[s], tmass[s], tpeak[s]
                top = max(top, tkeys[s])
                j += 1
        k2, c2 = np.empty(n, np.int64), np.empty(n, np.int64)
        m2, p2 = np.empty(n, np.float64), np.empty(n, np.float32)
        shift = 0
        while shift < 63 and (top >> shift) > 0:
            start = np.zeros(2049, np.int64)
            for i in range(n):
                start[((k[i] >> shift) & 2047) + 1] += 1
            for d in range(2048):
                start[d + 1] += start[d]
            for i in range(n):
                d = (k[i] >> shift) & 2047
                o = start[d]
                start[d] = o + 1
                k2[o], c2[o], m2[o], p2[o] = k[i], c[i], m[i], p[i]
            k, k2, c, c2, m, m2, p, p2 = k2, k, c2, c, m2, m, p2, p
            shift += 11
        return k, c, m, p


class CpuSparseTable:
    """Open-addressing hash table of ``(key, count, mass, peak)`` cells in host memory."""

    def __init__(self, capacity: int = 1 << 12, max_load: float = 0.75):
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
        """Add cells (``keys`` int64 ≥ 0, repeats allowed; four 1-D arrays of one length) to the
        table's sums. Bad input raises ``ValueError`` and changes nothing."""
        arrays = (np.ascontiguousarray(keys, np.int64), np.ascontiguousarray(count, np.int64),
                  np.ascontiguousarray(mass, np.float64), np.ascontiguousarray(peak, np.float32))
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            raise ValueError("keys, count, mass and peak must be 1-D arrays of one length")
        if arrays[0].size and arrays[0].min() < 0:
            raise ValueError("cell keys must be >= 0")
        for i in range(0, arrays[0].shape[0], CHUNK_EVENTS):
            part = tuple(a[i:i + CHUNK_EVENTS] for a in arrays)
            self._reserve(part[0].shape[0])
            self.nnz += _add(self.keys, self.count, self.mass, self.peak, self._shift, *part)

    def add_selection(self, indices: np.ndarray, values: np.ndarray, features: np.ndarray,
                      n_neurons: int, n_features: int, freq: np.ndarray, *,
                      checked: bool = False) -> int:
        """Add a selection ``(values, indices)`` ``[P, k]`` of positions with ids ``features``
        ``[P]`` (``-1`` = missing) as keys ``neuron * n_features + feature``, and count the
        positions into ``freq`` ``[n_features]``; returns the number of missing ids. Bad shapes or
        ids out of range raise ``ValueError`` and change nothing (``checked=True``: the caller
        checked ids and shapes)."""
        indices = np.ascontiguousarray(indices, np.int64)
        values = np.ascontiguousarray(values, np.float32)
        features = np.ascontiguousarray(features, np.int64)
        if freq.shape != (n_features,) or not checked and (
                indices.ndim != 2 or values.shape != indices.shape or
                features.shape != indices.shape[:1]):
            raise ValueError(f"need indices and values [P, k], features [P] and freq "
                             f"[{n_features}], got {indices.shape}, {values.shape}, "
                             f"{features.shape} and {freq.shape}")
        p, k = indices.shape
        if p == 0:
            return 0
        if not checked and not _ids_ok(indices, n_neurons, features[None, :],
                                       np.array([n_features], np.int64)):
            raise ValueError(f"neuron ids must be in [0, {n_neurons}) and feature ids in "
                             f"[-1, {n_features})")
        rows = max(1, CHUNK_EVENTS // max(k, 1))  # (k = 0: the positions still count)
        missing = 0
        for i in range(0, p, rows):
            self._reserve(min(rows, p - i) * k)
            new, miss = _add_selection(self.keys, self.count, self.mass, self.peak, self._shift,
                                       indices[i:i + rows], values[i:i + rows],
                                       features[i:i + rows], n_neurons, n_features, freq)
            self.nnz += new
            missing += miss
        return missing

    @property
    def cells_upper_bound(self) -> int:
        """:attr:`nnz` (exact here; the GPU table's counterpart avoids a sync)."""
        return self.nnz

    def sorted_cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A copy of the cells ``(keys, count, mass, peak)`` sorted by key; the table is kept."""
        return _sorted_copy(self.keys, self.count, self.mass, self.peak, self.nnz)
