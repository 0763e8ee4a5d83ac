"""The CPU fast path (numba) of the scatter into dense states, same semantics as
:func:`txray_kernels.reference.scatter_events` and :func:`txray_kernels.reference.add_totals`.

:func:`accumulate_dense` adds a selection's positions, events and per-neuron totals into dense
states in one serial call, after :func:`check_selection` (nothing changes on a bad id), which also
checks a selection against any targets before several calls change them. The selection itself is
in :mod:`txray_kernels.cpu`.
"""

from __future__ import annotations

import numpy as np
import torch

from .prefetch import positions_ahead, prefetch
from .targets import check_shapes

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency, but keep the reference usable
    njit = None

AVAILABLE = njit is not None

_NO_STREAM = ((np.zeros(0, np.int64),), (np.zeros(0, np.float64),), (np.zeros(0, np.float32),),
              (np.zeros(0, np.int64),))

if AVAILABLE:
    @njit(boundscheck=False, inline="always", cache=True)
    def _min_max(a):
        lo = a[0]
        hi = a[0]
        for i in range(a.shape[0]):
            lo = a[i] if a[i] < lo else lo
            hi = a[i] if a[i] > hi else hi
        return lo, hi

    @njit(boundscheck=False, cache=True)
    def _ids_ok(indices, n_neurons, features, n_features):
        """Neuron ids in ``[0, n_neurons)``, feature ids ``features[s]`` in
        ``[-1, n_features[s])`` (``indices`` ``[P, k]`` and ``features`` ``[S, P]``, P > 0; with
        k == 0 the positions still count, so their ids are checked too)."""
        if indices.size:
            lo, hi = _min_max(indices.ravel())
            if lo < 0 or hi >= n_neurons:
                return False
        for s in range(features.shape[0]):
            lo, hi = _min_max(features[s])
            if lo < -1 or hi >= n_features[s]:
                return False
        return True

    @njit(boundscheck=False, cache=True)
    def _add_totals(indices, values, neuron_count, neuron_mass):
        """Per-neuron count and clamped mass of a selection ``[P, k]`` (ids in range)."""
        p, k = indices.shape
        for t in range(p):
            for j in range(k):
                n = indices[t, j]
                v = values[t, j]
                neuron_count[n] += 1
                if v > 0:
                    neuron_mass[n] += np.float64(v)

    @njit(boundscheck=False, cache=True)
    def _accumulate_dense(indices, values, features, n_neurons, n_features, counts, masses, peaks,
                          freqs, missing, positions, totals, neuron_count, neuron_mass):
        """Streams ``s`` (``features[s]``, flat sums ``counts[s]``...; tuples of arrays) get the
        events, and with ``positions`` their corpus frequencies (``missing[s]`` += missing ids);
        with ``totals`` the per-neuron sums too. Ids must be in range (:func:`check_selection`)."""
        p, k = indices.shape
        n_streams = features.shape[0]
        ahead = positions_ahead(k)
        for s in range(n_streams):
            count, mass, peak, freq = counts[s], masses[s], peaks[s], freqs[s]
            width = n_features[s]
            for t in range(p):
                if t + ahead < p and features[s, t + ahead] >= 0:
                    for j in range(k):
                        c = indices[t + ahead, j] * width + features[s, t + ahead]
                        prefetch(count, c)
                        prefetch(mass, c)
                        prefetch(peak, c)
                f = features[s, t]
                if f < 0:
                    missing[s] += 1
                    continue
                if positions:
                    freq[f] += 1
                for j in range(k):
                    cell = indices[t, j] * width + f
                    v = values[t, j]
                    count[cell] += 1
                    if v > 0:
                        mass[cell] += np.float64(v)
                    if v > peak[cell]:
                        peak[cell] = v
        if totals:
            _add_totals(indices, values, neuron_count, neuron_mass)


def id_bounds(tensors) -> list[tuple[int, int]]:
    """``(min, max)`` of each non-empty integer CPU tensor (one numba pass each)."""
    if any(t.numel() == 0 for t in tensors):
        raise ValueError("id_bounds needs non-empty tensors")
    return [tuple(int(b) for b in _min_max(_int64(t).reshape(-1))) for t in tensors]


def _int64(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a contiguous int64 array (a view when it is one already)."""
    if t.dtype != torch.int64:
        t = t.to(torch.int64)
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _as_arrays(indices: torch.Tensor, targets) -> tuple[np.ndarray, np.ndarray]:
    """``indices`` and the targets' features ``[S, P]`` as int64 arrays for the kernels."""
    if len(targets) == 1:
        feats = _int64(targets[0][0]).reshape(1, -1)
    elif targets:
        feats = np.stack([_int64(f) for f, _ in targets])
    else:
        feats = np.zeros((0, indices.shape[0]), np.int64)
    return _int64(indices), feats


def _float32(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a contiguous float32 array (a view when it is one already)."""
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def add_totals(values: torch.Tensor, indices: torch.Tensor, count: torch.Tensor,
               mass: torch.Tensor) -> None:
    """Per-neuron totals of a selection ``[P, k]`` into ``count``/``mass`` ``[N]``, in place
    (neuron ids must be in ``[0, N)``: callers check them with :func:`check_selection`)."""
    if indices.numel():
        _add_totals(_int64(indices), _float32(values), count.numpy(), mass.numpy())


def check_selection(values: torch.Tensor, indices: torch.Tensor, targets,
                    n_neurons: int) -> tuple[np.ndarray, np.ndarray]:
    """Raise ``ValueError`` unless ``values``/``indices`` are ``[P, k]`` of one shape, every
    target's features ``[P]`` ids in ``[-1, state.n_features)`` and every neuron id in
    ``[0, n_neurons)``: one pass, before any state changes. Returns the arrays of
    :func:`_as_arrays` for the kernels."""
    check_shapes(values, indices, targets)
    p = values.shape[0]
    idx, feats = _as_arrays(indices, targets)
    widths = np.array([state.n_features for _, state in targets], np.int64)
    if p and not _ids_ok(idx, n_neurons, feats, widths):
        raise ValueError(f"neuron ids must be in [0, {n_neurons}) and feature ids in [-1, V) of "
                         f"each stream")
    return idx, feats


def _arrays_of(state) -> tuple:
    """``(count, mass, peak, feature_freq)`` of a dense CPU state as numpy views, kept on the
    state while those tensors stay the same objects (``.numpy()`` costs microseconds a call, and
    a small batch of many layers makes these calls a good part of its time)."""
    tensors = (state.count, state.mass, state.peak, state.feature_freq)
    kept = getattr(state, "_cpu_arrays", None)
    if kept is None or any(a is not b for a, b in zip(kept[0], tensors)):
        kept = (tensors, tuple(t.numpy() for t in tensors))
        state._cpu_arrays = kept
    return kept[1]


def accumulate_dense(values: torch.Tensor, indices: torch.Tensor, targets, *,
                     positions: bool = True, totals: tuple | None = None,
                     checked: bool = False) -> None:
    """Add a selection ``(values, indices)`` ``[P, k]`` into dense CPU states, in place, in one
    call: for every target ``(features [P], state)`` (``-1`` = missing id) the events
    (``count``/``mass``/``peak`` of ``n_neurons * n_features`` flat cells), with ``positions``
    also the corpus frequencies (``feature_freq``, ``missing``), and with
    ``totals=(neuron_count, neuron_mass)`` the per-neuron sums.

    The same sums as :func:`txray_kernels.reference.scatter_events` (and ``add_positions``,
    :func:`txray_kernels.reference.add_totals`), in serial passes over the events: a selection is small
    next to the activations it came from, and one call keeps the per-call cost (mostly cache
    misses after the activations went through) to one. Bad shapes or ids raise ``ValueError`` and
    change nothing (``checked=True``: the caller ran :func:`check_selection` on these targets).
    """
    if not targets and totals is None:
        return
    states = [state for _, state in targets]
    if totals is not None:
        neuron_count, neuron_mass = (t.numpy() for t in totals)
        n_neurons = neuron_count.shape[0]
    else:
        n_neurons = states[0].n_neurons
        neuron_count, neuron_mass = np.zeros(0, np.int64), np.zeros(0, np.float64)
    if any(s.n_neurons != n_neurons for s in states):
        raise ValueError("all targets must have the layer's number of neurons")
    idx, features = (_as_arrays(indices, targets) if checked else
                     check_selection(values, indices, targets, n_neurons))
    if states:
        arrays = tuple(zip(*(_arrays_of(s) for s in states)))
    else:  # totals only: one placeholder stream with no positions
        arrays = _NO_STREAM
    missing = np.zeros(len(states), np.int64)
    _accumulate_dense(idx, _float32(values), features, n_neurons,
                      np.array([s.n_features for s in states], np.int64), *arrays, missing,
                      positions, totals is not None, neuron_count, neuron_mass)
    if positions:
        for s, m in zip(states, missing.tolist()):
            if m:
                s.missing += m
