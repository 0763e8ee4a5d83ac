"""Measures of one stage (per layer and stream), vectorised over all neurons.

Inputs are :class:`~txray_engine.accumulate.SparseStats` (from ``StreamView.stats`` or an
accumulator). Options shared by every function:

- ``by``: ``"mass"`` (default; activation-weighted, as in TX-Ray) or ``"count"``;
- ``min_count``: cells seen fewer times are ignored (rare features make distributions noisy).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from ..accumulate.stats import SparseStats
from ..errors import InputError, whole_number
from .rows import filter_cells, row_normalize, row_sums, row_top

BY = ("mass", "count")


def _check_by(by: str) -> str:
    if by not in BY:
        raise InputError(f"by must be 'mass' or 'count', got {by!r}")
    return by


def as_stats(stats) -> SparseStats:
    """``stats``, or a ``StreamView``'s (what the measures read); anything else is refused."""
    if not isinstance(stats, SparseStats) and isinstance(getattr(stats, "stats", None),
                                                         SparseStats):
        stats = stats.stats
    if not isinstance(stats, SparseStats):
        raise InputError(f"the measures read SparseStats (LayerState.stream_stats()[name], or a "
                         f"store's StreamView), got {type(stats).__name__}")
    return stats


def cells(stats: SparseStats, by: str = "mass", min_count: int = 1) -> sp.csr_matrix:
    """The ``by`` matrix with cells of count < ``min_count`` dropped (explicit zeros removed)."""
    stats = as_stats(stats)
    min_count = whole_number(min_count, "min_count", 1)
    m = stats.csr(_check_by(by)).astype(np.float64)
    # a cell whose activations were all ≤ 0 has count > 0 but mass 0: it leaves the mass matrix
    return filter_cells(m, stats.count >= min_count)


def distributions(stats: SparseStats, by: str = "mass", min_count: int = 1) -> sp.csr_matrix:
    """Each neuron's distribution over features (rows sum to 1; empty rows stay empty)."""
    return row_normalize(cells(stats, by, min_count))


def length(stats: SparseStats, min_count: int = 1) -> np.ndarray:
    """Features each neuron fired for at least ``min_count`` times (TX-Ray's length)."""
    stats = as_stats(stats)
    min_count = whole_number(min_count, "min_count", 1)
    return np.diff(filter_cells(stats.csr("count"), stats.count >= min_count).indptr)


def activation_mass(stats: SparseStats) -> tuple[np.ndarray, np.ndarray]:
    """``(mass, share)`` per neuron: its summed clamped activation over the stream's cells and
    its share of the stream's total. Positions without a feature in this stream are not in its
    cells: the layer's whole mass per neuron is ``LayerView.neuron_mass``."""
    mass = row_sums(as_stats(stats).csr("mass"))
    total = mass.sum()
    return mass, (mass / total if total > 0 else np.zeros_like(mass))


def alive(neuron_count: np.ndarray, min_count: int = 1) -> np.ndarray:
    """Neurons selected at least ``min_count`` times."""
    return np.asarray(neuron_count) >= max(1, min_count)


def entropy(stats: SparseStats, by: str = "mass", min_count: int = 1, base: float = 2.0
            ) -> np.ndarray:
    """Entropy of each neuron's distribution (bits by default).

    NaN for a neuron without a distribution (never selected, every cell under ``min_count``, or,
    by mass, only activations ≤ 0): 0 would read as "fires for one feature only".
    """
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not base > 0 or \
            base == 1 or not np.isfinite(base):
        raise InputError(f"base must be a positive number other than 1 (2: bits, e: nats), "
                         f"got {base!r}")
    p = distributions(stats, by, min_count)
    terms = p.copy()
    terms.data = -p.data * np.log(p.data) / np.log(base)
    h = row_sums(terms)
    h[np.diff(p.indptr) == 0] = np.nan
    return h


def top_features(stats: SparseStats, n: int = 10, by: str = "mass", min_count: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each neuron's ``n`` strongest features: ``(feature ids, shares)``, ``[N, n]``, padded with
    ``-1`` / ``0``."""
    return row_top(distributions(stats, by, min_count), whole_number(n, "n"))


def feature_group_mass(stats: SparseStats, min_count: int = 1) -> dict[str, np.ndarray]:
    """Per feature (e.g. per POS tag): share of the layer's activation mass against the feature's
    share of corpus positions. ``ratio > 1``: the layer's neurons favour that feature."""
    stats = as_stats(stats)
    m = cells(stats, "mass", min_count)
    mass = np.asarray(m.sum(axis=0), dtype=np.float64).ravel()
    total = mass.sum()
    freq = stats.feature_freq.astype(np.float64)
    mass_share = mass / total if total > 0 else np.zeros_like(mass)
    freq_share = freq / freq.sum() if freq.sum() > 0 else np.zeros_like(freq)
    ratio = np.divide(mass_share, freq_share, out=np.full_like(mass_share, np.nan),
                      where=freq_share > 0)
    return {"mass": mass, "mass_share": mass_share, "frequency": stats.feature_freq.copy(),
            "frequency_share": freq_share, "ratio": ratio}


def stage_table(stats: SparseStats, neuron_count=None, min_count: int = 1, by: str = "mass",
                min_neuron_count: int = 1):
    """One row per neuron: alive (selected at least ``min_neuron_count`` times), selection
    count, mass and its share, length and entropy on the cells seen at least ``min_count``
    times (as a comparison's columns)."""
    from .table import NeuronTable

    stats = as_stats(stats)
    count = stats.neuron_count() if neuron_count is None else np.asarray(neuron_count)
    if count.shape != (stats.n_neurons,):
        raise InputError(f"neuron_count has shape {count.shape}, not one count per neuron "
                         f"({stats.n_neurons},)")
    min_neuron_count = whole_number(min_neuron_count, "min_neuron_count", 1)
    mass = row_sums(cells(stats, "mass", min_count))
    share = mass / mass.sum() if mass.sum() > 0 else np.zeros_like(mass)
    return NeuronTable({"neuron": np.arange(stats.n_neurons),
                        "alive": alive(count, min_neuron_count),
                        "selected": count, "mass": mass, "mass_share": share,
                        "length": length(stats, min_count),
                        "entropy": entropy(stats, by, min_count)})
