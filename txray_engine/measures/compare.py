"""Comparing two stages of the same layer and stream, over all neurons at once.

Definitions (TX-Ray, see docs/MEASURES.md):

- shared neurons: alive in both stages; only-A / only-B: alive in one;
- Hellinger distance ``H(p, q) = sqrt(1 - Σ_f sqrt(p_f q_f))`` of each shared neuron's
  distributions, in [0, 1]; NaN where a stage gives the neuron no distribution (every cell under
  ``min_count``, or, by mass, only non-positive activations);
- Hellinger length: size of the union of the two supports; length shift ``len_B - len_A``;
- mass shift ``mass_B - mass_A``;
- reference-compatible Hellinger (``compat``): the number the public TX-Ray code computes, from
  count and mass alone; see :func:`compat_hellinger`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..accumulate.stats import SparseStats
from ..errors import InputError, whole_number
from . import join
from .stage import _check_by, as_stats
from .stage import alive as _alive
from .table import NeuronTable, column_of


def align_vocabularies(a: SparseStats, b: SparseStats, vocab_a, vocab_b
                       ) -> tuple[SparseStats, SparseStats, list[str], dict]:
    """Re-index ``b`` (and widen both) onto the union vocabulary ``vocab_a + (vocab_b - vocab_a)``.

    Returns the aligned stats, the union vocabulary and how many features (seen in a stage) had no
    counterpart in the other stage's vocabulary.
    """
    vocab_a, vocab_b = list(vocab_a), list(vocab_b)
    for name, vocab, stats in (("vocab_a", vocab_a, a), ("vocab_b", vocab_b, b)):
        if len(vocab) != stats.n_features:
            raise InputError(f"{name} has {len(vocab)} features, its stage {stats.n_features}: "
                             f"give the vocabulary the stage was collected with")
        if len(set(vocab)) != len(vocab):
            twice = next(s for s, c in Counter(vocab).items() if c > 1)
            raise InputError(f"{name} holds {twice!r} more than once: features are aligned by "
                             f"string, so each must be one feature (a Vocabulary refuses "
                             f"duplicates)")
    if vocab_a == vocab_b:
        return a, b, vocab_a, {"unaligned_a": 0, "unaligned_b": 0}
    index = {s: i for i, s in enumerate(vocab_a)}
    union = list(vocab_a)
    remap = np.empty(len(vocab_b), dtype=np.int64)
    for j, s in enumerate(vocab_b):
        if s not in index:
            index[s] = len(union)
            union.append(s)
        remap[j] = index[s]
    in_b = set(vocab_b)
    only_a_ids = np.array([i for i, s in enumerate(vocab_a) if s not in in_b], dtype=np.int64)
    seen_a = np.zeros(len(vocab_a), bool)
    seen_a[a.indices] = True
    seen_b = np.zeros(len(vocab_b), bool)
    seen_b[b.indices] = True
    unaligned = {"unaligned_a": int(seen_a[only_a_ids].sum()) if only_a_ids.size else 0,
                 "unaligned_b": int(seen_b[remap >= len(vocab_a)].sum())}
    v = len(union)
    freq_a = np.zeros(v, np.int64)
    freq_a[:len(vocab_a)] = a.feature_freq
    freq_b = np.zeros(v, np.int64)
    np.add.at(freq_b, remap, b.feature_freq)
    a2 = SparseStats(a.n_neurons, v, a.indptr, a.indices, a.count, a.mass, a.peak, freq_a,
                     a.tokens, a.missing)
    b2 = SparseStats.from_coo(b.n_neurons, v, b.rows(), remap[b.indices], b.count, b.mass,
                              b.peak, freq_b, b.tokens, b.missing)
    return a2, b2, union, unaligned


@dataclass
class _Cells:
    """The cells of one stage kept for a comparison, in global (row, feature) order."""

    n_neurons: int
    rows: np.ndarray
    keys: np.ndarray
    count: np.ndarray
    mass: np.ndarray

    @classmethod
    def of(cls, stats: SparseStats, min_count: int) -> "_Cells":
        rows, cols = stats.rows(), stats.indices
        count, mass = stats.count, stats.mass.astype(np.float64, copy=False)
        if min_count > 1:
            keep = count >= min_count
            rows, cols, count, mass = rows[keep], cols[keep], count[keep], mass[keep]
        return cls(stats.n_neurons, rows, rows * stats.n_features + cols, count, mass)

    def per_row(self, weights=None) -> np.ndarray:
        return np.bincount(self.rows, weights=weights, minlength=self.n_neurons)

    def share(self, values: np.ndarray) -> np.ndarray:
        """``values`` divided by their row total (the row distribution on these cells)."""
        total = self.per_row(values)[self.rows]
        return np.divide(values, total, out=np.zeros_like(values, dtype=np.float64),
                         where=total > 0)


def _match(a: _Cells, b: _Cells) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(ia, ib)`` of the cells present in both stages (keys are sorted)."""
    idx = np.searchsorted(a.keys, b.keys)
    idx_c = np.minimum(idx, max(a.keys.size - 1, 0))
    hit = (idx < a.keys.size) & (a.keys[idx_c] == b.keys) if a.keys.size else \
        np.zeros(b.keys.size, bool)
    return idx[hit], np.flatnonzero(hit)


def _sq_dist(a: _Cells, b: _Cells, va: np.ndarray, vb: np.ndarray, ia, ib) -> np.ndarray:
    """Per row: Σ_f (sqrt(va_f) - sqrt(vb_f))² over the union of both supports, summed as
    non-negative terms (accurate near 0)."""
    only_a = np.ones(a.keys.size, bool)
    only_a[ia] = False
    only_b = np.ones(b.keys.size, bool)
    only_b[ib] = False
    d = (np.sqrt(va[ia]) - np.sqrt(vb[ib])) ** 2
    return (np.bincount(a.rows[only_a], weights=va[only_a], minlength=a.n_neurons)
            + np.bincount(b.rows[only_b], weights=vb[only_b], minlength=a.n_neurons)
            + np.bincount(b.rows[ib], weights=d, minlength=a.n_neurons))


def _compat_values(c: _Cells) -> np.ndarray:
    denom = c.per_row(c.mass)[c.rows] * c.count
    return np.divide(c.mass, denom, out=np.zeros_like(c.mass), where=denom > 0)


def _union(a: _Cells, b: _Cells, ib) -> np.ndarray:
    return a.per_row() + b.per_row() - np.bincount(b.rows[ib], minlength=a.n_neurons)


def compat_hellinger(a: SparseStats, b: SparseStats, min_count: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The published TX-Ray code's measure (Evaluation_metrics/measures.py), per neuron.

    With ``M_n`` the neuron's total mass in a stage, each feature's value is
    ``mass[n,f] / (M_n · count[n,f])`` (the mean normalised max-activation per token); the distance
    is ``sqrt(Σ_f (sqrt(a_f) - sqrt(b_f))²) / sqrt(2)`` divided by the size of the union of both
    supports (absent features count as 0). Returns ``(distance, union size)``. Unlike the proper
    Hellinger distance it shrinks with the support size and is not a distance between
    distributions; use it to reproduce numbers from that code, the proper distance otherwise.
    Computed for every neuron, shared or not (a neuron without mass in one stage counts as all
    zeros there); :func:`compare`'s ``compat_hellinger`` column is NaN for neurons not shared
    and for shared neurons without mass in a stage.
    """
    ca, cb = _Cells.of(a, min_count), _Cells.of(b, min_count)
    ia, ib = _match(ca, cb)
    return _compat(ca, cb, ia, ib)


def _compat(ca, cb, ia, ib):
    num = np.sqrt(_sq_dist(ca, cb, _compat_values(ca), _compat_values(cb), ia, ib)) / np.sqrt(2)
    union = _union(ca, cb, ib)
    return np.divide(num, union, out=np.zeros_like(num), where=union > 0), union


@dataclass
class Comparison:
    """Per-neuron comparison of stage A with stage B (arrays of length ``n_neurons``;
    distance columns are NaN for neurons that are not shared)."""

    columns: dict[str, np.ndarray]
    unaligned: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return column_of(self.columns, name)

    def __repr__(self) -> str:
        s = self.summary()
        mean = "n/a" if s["hellinger_mean"] is None else f"{s['hellinger_mean']:.4f}"
        return (f"Comparison: {s['neurons']} neurons, {s['shared']} shared, {s['only_a']} only "
                f"in A, {s['only_b']} only in B; Hellinger mean {mean} (by {s['by']}, min_count "
                f"{s['min_count']}); columns: {', '.join(self.columns)}")

    @property
    def n_neurons(self) -> int:
        return len(self.columns["neuron"])

    def table(self) -> NeuronTable:
        """All columns as a :class:`NeuronTable` (one row per neuron; CSV and JSON output)."""
        return NeuronTable(self.columns)

    def ranked(self, most: bool = True, column: str = "hellinger") -> np.ndarray:
        """Ids of the shared neurons, most (or least) changed by ``column`` first; among equal
        values (often many at distance 1 or 0) the one with more activation mass in both stages
        first, then the lower id; neurons without a value (NaN) last."""
        shared = np.flatnonzero(self["shared"])
        value = self[column][shared].astype(np.float64)
        mass = self["mass_a"][shared] + self["mass_b"][shared]
        return shared[np.lexsort((shared, -mass, -value if most else value))]

    def most_changed(self, n: int = 10, column: str = "hellinger") -> NeuronTable:
        """The ``n`` first of :meth:`ranked` with a value, as a table."""
        return self.table().take(self._valid(self.ranked(True, column), column)[:whole_number(n, "n")])

    def least_changed(self, n: int = 10, column: str = "hellinger") -> NeuronTable:
        """The ``n`` least changed (see :meth:`ranked`) with a value, as a table."""
        return self.table().take(self._valid(self.ranked(False, column), column)[:whole_number(n, "n")])

    def extremes(self, n: int = 10, column: str = "hellinger") -> tuple[np.ndarray, np.ndarray]:
        """Ids of the ``n`` most and the ``n`` least changed neurons, to show side by side: never
        the same neuron in both (ties, e.g. a stage against itself with every neuron at 0, rank
        alike both ways), and with fewer than ``2 n`` values the most changed take the first
        half (the larger). Neurons without a value are in neither."""
        n = whole_number(n, "n")
        most = self._valid(self.ranked(True, column), column)
        m = most.size
        most = most[:min(n, m - m // 2)]
        least = self._valid(self.ranked(False, column), column)
        return most, least[~np.isin(least, most)][:min(n, m // 2)]

    def _valid(self, ids: np.ndarray, column: str) -> np.ndarray:
        return ids[~np.isnan(self[column][ids].astype(np.float64))]

    def summary(self) -> dict:
        """Counts (neurons, shared, only in A or B, dead in both, shared without a distance),
        the Hellinger mean and median over shared neurons with a distance (None without any),
        the mean length shift, each stage's total mass, vocabulary alignment and the options."""
        shared = self["shared"]
        h = self["hellinger"][shared]
        h = h[~np.isnan(h)]  # shared neurons without a distribution in a stage have no distance
        return {"neurons": self.n_neurons, "shared": int(shared.sum()),
                "only_a": int(self["only_a"].sum()), "only_b": int(self["only_b"].sum()),
                "dead_both": int((~self["alive_a"] & ~self["alive_b"]).sum()),
                "shared_without_distribution": int(shared.sum()) - h.size,
                "hellinger_mean": float(h.mean()) if h.size else None,
                "hellinger_median": float(np.median(h)) if h.size else None,
                "length_shift_mean": (float(self["length_shift"][shared].mean())
                                      if shared.any() else None),
                "mass_a": float(self["mass_a"].sum()), "mass_b": float(self["mass_b"].sum()),
                **self.unaligned, **self.options}


def compare(a: SparseStats, b: SparseStats, vocab_a=None, vocab_b=None, *, by: str = "mass",
            min_count: int = 1, min_neuron_count: int = 1, neuron_count_a=None,
            neuron_count_b=None, engine: str = "auto") -> Comparison:
    """Compare two stages of one layer and stream; see the module docstring.

    ``neuron_count_a/b`` (the layer's selection counts) decide alive neurons; by default the
    stream's row counts. Neurons selected fewer than ``min_neuron_count`` times count as dead, and
    cells seen fewer than ``min_count`` times are ignored. Different vocabularies are aligned by
    feature string. ``engine``: ``"numba"`` (one parallel merge-join per row, the default when
    numba is installed) or ``"numpy"`` (vectorised over all cells; the reference).
    """
    if hasattr(a, "stats") and hasattr(b, "stats") and vocab_a is None and vocab_b is None:
        # two StreamViews: what compare_streams does (their vocabularies and selection counts)
        return compare_streams(a, b, by=by, min_count=min_count,
                               min_neuron_count=min_neuron_count, engine=engine)
    _check_by(by)
    a, b = as_stats(a), as_stats(b)
    min_count = whole_number(min_count, "min_count", 1)
    min_neuron_count = whole_number(min_neuron_count, "min_neuron_count", 1)
    if a.n_neurons != b.n_neurons:
        raise InputError(f"the stages have {a.n_neurons} and {b.n_neurons} neurons: compare the "
                         f"same layer of the same architecture")
    for name, counts in (("neuron_count_a", neuron_count_a), ("neuron_count_b", neuron_count_b)):
        if counts is not None and np.shape(counts) != (a.n_neurons,):
            raise InputError(f"{name} has shape {np.shape(counts)}, not one count per neuron "
                             f"({a.n_neurons},)")
    if (vocab_a is None) != (vocab_b is None):
        raise InputError("give both vocabularies (vocab_a and vocab_b) to align the stages by "
                         "feature string, or neither")
    if vocab_a is not None:
        a, b, _, unaligned = align_vocabularies(a, b, vocab_a, vocab_b)
    elif a.n_features != b.n_features:
        raise InputError(f"vocabularies of {a.n_features} and {b.n_features} features: give both "
                         f"vocabularies to align them by string")
    else:
        unaligned = {"unaligned_a": 0, "unaligned_b": 0}
    na = a.neuron_count() if neuron_count_a is None else np.asarray(neuron_count_a)
    nb = b.neuron_count() if neuron_count_b is None else np.asarray(neuron_count_b)
    alive_a, alive_b = _alive(na, min_neuron_count), _alive(nb, min_neuron_count)
    shared = alive_a & alive_b
    nan = np.full(a.n_neurons, np.nan)
    if engine == "auto":
        engine = "numba" if join.AVAILABLE else "numpy"
    if engine == "numba":
        j = join.row_join(a, b, by, min_count)
        len_a, len_b, comp_union = j["length_a"], j["length_b"], j["union"]
        mass_a, mass_b = j["mass_a"], j["mass_b"]
        h = np.sqrt(np.clip(j["sq_hellinger"] / 2, 0, 1))
        num = np.sqrt(j["sq_compat"]) / np.sqrt(2)
        comp = np.divide(num, comp_union, out=np.zeros_like(num), where=comp_union > 0)
    elif engine == "numpy":
        ca, cb = _Cells.of(a, min_count), _Cells.of(b, min_count)
        ia, ib = _match(ca, cb)
        va = ca.share(ca.mass if by == "mass" else ca.count.astype(np.float64))
        vb = cb.share(cb.mass if by == "mass" else cb.count.astype(np.float64))
        h = np.sqrt(np.clip(_sq_dist(ca, cb, va, vb, ia, ib) / 2, 0, 1))
        comp, comp_union = _compat(ca, cb, ia, ib)
        len_a, len_b = ca.per_row(), cb.per_row()
        mass_a, mass_b = ca.per_row(ca.mass), cb.per_row(cb.mass)
    else:
        raise InputError(f"engine must be 'auto', 'numba' or 'numpy', got {engine!r}")
    # a shared neuron may still have no distribution in a stage: every cell under min_count, or
    # (by mass) selected only with activations <= 0; its distance is undefined, not 0 or 1/sqrt(2)
    has_a = (mass_a > 0) if by == "mass" else (len_a > 0)
    has_b = (mass_b > 0) if by == "mass" else (len_b > 0)
    comparable = shared & has_a & has_b
    hel = np.where(comparable, h, nan)
    cols = {
        "neuron": np.arange(a.n_neurons),
        "alive_a": alive_a, "alive_b": alive_b, "shared": shared,
        "selected_a": na.astype(np.int64), "selected_b": nb.astype(np.int64),
        "only_a": alive_a & ~alive_b, "only_b": alive_b & ~alive_a,
        "hellinger": hel,
        "hellinger_length": comp_union,
        "length_a": len_a, "length_b": len_b, "length_shift": len_b - len_a,
        "mass_a": mass_a, "mass_b": mass_b, "mass_shift": mass_b - mass_a,
        "compat_hellinger": np.where(shared & (mass_a > 0) & (mass_b > 0), comp, nan),
        "compat_union": comp_union,
    }
    return Comparison(cols, unaligned, {"by": by, "min_count": min_count,
                                        "min_neuron_count": min_neuron_count})


def compare_layers(layer_a, layer_b, stream: str, vocab_a=None, vocab_b=None,
                   **options) -> Comparison:
    """Compare one stream of two in-memory layers (``Accumulator.layers[name]``, e.g. two
    checkpoints of a training loop): as :func:`compare_streams` does for a store's, alive
    neurons come from each layer's selection counts (the stream's own rows leave out the
    positions without a feature, such as a POS stream's sub-words). ``vocab_a``/``vocab_b``:
    the stream's vocabularies, where they differ (aligned by string). ``options`` as for
    :func:`compare`."""
    for name, layer in (("layer_a", layer_a), ("layer_b", layer_b)):
        if not hasattr(layer, "stream_stats") or not hasattr(layer, "neuron_count"):
            raise InputError(f"compare_layers takes layers of an Accumulator (acc.layers[name]), "
                             f"got {type(layer).__name__} as {name}; for a store's stages use "
                             f"compare_streams")
        if stream not in layer.streams:
            raise InputError(f"{name} has no stream {stream!r}; it has "
                             f"{', '.join(layer.streams)}")
    return compare(layer_a.stream_stats()[stream], layer_b.stream_stats()[stream],
                   None if vocab_a is None else list(vocab_a),
                   None if vocab_b is None else list(vocab_b),
                   neuron_count_a=layer_a.neuron_count.cpu().numpy(),
                   neuron_count_b=layer_b.neuron_count.cpu().numpy(), **options)


def compare_streams(view_a, view_b, *, other_streams: bool = False, other_layers: bool = False,
                    **options) -> Comparison:
    """Compare two ``StreamView``s (same layer and stream of two stages); alive neurons come from
    each layer's selection counts. ``options`` as for :func:`compare`. Views of two different
    streams (token against pos) are refused unless ``other_streams=True`` (e.g. what neurons
    read, token, against what the model predicts, predicted: one vocabulary), and views of two
    different layers unless ``other_layers=True``."""
    for v in (view_a, view_b):
        if not all(hasattr(v, a) for a in ("name", "stats", "vocab", "layer")):
            raise InputError(f"compare_streams takes StreamViews (store.stage(s).layer(l)."
                             f"stream(name)), got {type(v).__name__}; for SparseStats use "
                             f"compare(a, b, vocab_a, vocab_b)")
    if view_a.name != view_b.name and not other_streams:
        raise InputError(f"stream {view_a.name!r} against stream {view_b.name!r}: a comparison "
                         f"is of one stream in two stages; pass other_streams=True to compare "
                         f"two streams (their features are aligned by string)")
    if view_a.layer.name != view_b.layer.name and not other_layers:
        raise InputError(f"layer {view_a.layer.name!r} against layer {view_b.layer.name!r}: a "
                         f"comparison is of one layer in two stages; pass other_layers=True to "
                         f"compare two layers (neuron n of one against neuron n of the other)")
    return compare(view_a.stats, view_b.stats, list(view_a.vocab), list(view_b.vocab),
                   neuron_count_a=view_a.layer.neuron_count,
                   neuron_count_b=view_b.layer.neuron_count, **options)
