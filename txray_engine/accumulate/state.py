"""The accumulator contract shared by the dense and the sparse state.

A ``StreamState`` holds, for one (layer, stream), the exact sums of the TX-Ray method::

    count[n, f] += 1
    mass[n, f]  += max(a, 0)
    peak[n, f]   = max(peak[n, f], a)

for every selected (neuron ``n``, activation ``a``) at a position whose feature is ``f``, plus the
stream's corpus frequencies. Counts are int64 (exact), mass is float64 (no drift over 10⁹ tokens: each
event adds an fp32 value to a float64 sum), peak is float32 (exact: a max of fp32 values).
States are mergeable: ``a.merge_(b)`` gives the state of the concatenated input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..errors import InputError
from .stats import SparseStats

#: Bytes per dense cell: int64 count + float64 mass + float32 peak.
DENSE_CELL_BYTES = 20

#: Default memory budget of the dense states of one accumulator (all its layers and streams).
DEFAULT_DENSE_BUDGET = 512 * 2**20


class StreamState(ABC):
    """Sums of one (layer, stream); see the module docstring for the definitions."""

    kind: str = ""

    def __init__(self, n_neurons: int, n_features: int, device: torch.device | str = "cpu"):
        if n_neurons < 1 or n_features < 1:
            raise InputError(f"a state needs n_neurons ≥ 1 and n_features ≥ 1, got "
                             f"{n_neurons} × {n_features}")
        self.n_neurons = int(n_neurons)
        self.n_features = int(n_features)
        # position counts by id + 1: bin 0 counts missing ids (not yet moved to ``_missing``,
        # so a GPU never waits to count them), bins 1..V the corpus frequencies (``feature_freq``
        # is a view), bin V + 1 takes ids past the vocabulary (dropped)
        self._bins = torch.zeros(n_features + 2, dtype=torch.int64, device=device)
        self.feature_freq = self._bins[1:-1]
        # the device of the tensors ("cuda" becomes "cuda:0"), so it compares equal to theirs
        self.device = self._bins.device
        self._one = torch.ones(1, dtype=torch.int64, device=self.device)
        self._missing = 0
        self._binned = False  # whether bin 0 may hold missing ids not yet in ``_missing``

    def __getstate__(self) -> dict:
        """For copies and pickles: the frequencies are a view of the count bins (rebuilt on
        load), and the numba path's cached array views are the original's (dropped)."""
        state = self.__dict__.copy()
        state.pop("feature_freq", None)
        state.pop("_cpu_arrays", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.feature_freq = self._bins[1:-1]

    @property
    def missing(self) -> int:
        """Positions observed whose feature was missing (id ``-1``)."""
        if self._binned:  # on a GPU: one wait, when asked
            self._missing += int(self._bins[0])
            self._bins[0] = 0
            self._binned = False
        return self._missing

    @missing.setter
    def missing(self, value: int) -> None:
        if self._binned:
            self._bins[0] = 0
            self._binned = False
        self._missing = int(value)

    # -- updates ---------------------------------------------------------------------------------
    def add_positions(self, features: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Count observed positions: ``features`` holds one id per position, ``-1`` = missing;
        ``counts``: their :func:`position_counts`, where the caller has them (the layers of one
        batch share them: on a GPU each layer and stream then adds one vector instead of
        scattering its positions again).

        No wait on any device. Ids are the caller's to check (the ``Accumulator`` does, before
        anything changes): one past the vocabulary lands in a bin that is never read, rather than
        stopping a GPU with an assert."""
        if counts is None:
            _count_into(self._bins, features, self.n_features, self._one)
        else:
            self._bins += counts
        self._binned = True

    @abstractmethod
    def add_events(self, neurons: torch.Tensor, features: torch.Tensor,
                   values: torch.Tensor) -> None:
        """Add selection events: parallel 1-D tensors, features ≥ 0, values float32."""

    @abstractmethod
    def _merge_cells(self, other: SparseStats) -> None:
        """Add the cells of ``other`` (same shape) into this state."""

    @abstractmethod
    def to_stats(self) -> SparseStats:
        """The exact sums as ``SparseStats`` (cells with count > 0, rows sorted)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Memory held by the state."""

    # -- shared behaviour ------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return int(self.feature_freq.sum())

    def _stats_counters(self) -> dict:
        return {"feature_freq": self.feature_freq.cpu().numpy().copy(), "tokens": self.tokens,
                "missing": self.missing}

    def merge_(self, other: "StreamState | SparseStats") -> "StreamState":
        """Add ``other`` (a state of either kind, or ``SparseStats``) into this state, in place."""
        stats = other.to_stats() if isinstance(other, StreamState) else other
        if stats.shape != (self.n_neurons, self.n_features):
            raise InputError(f"cannot merge a {stats.shape[0]} × {stats.shape[1]} state into a "
                             f"{self.n_neurons} × {self.n_features} one")
        self._merge_cells(stats)
        self.feature_freq += torch.from_numpy(stats.feature_freq).to(self.device)
        self.missing += stats.missing
        return self

    @classmethod
    def from_stats(cls, stats: SparseStats, device="cpu") -> "StreamState":
        state = cls(stats.n_neurons, stats.n_features, device=device)
        return state.merge_(stats)


def position_bins(features: torch.Tensor, n_features: int) -> torch.Tensor:
    """The count bins of ids ``features`` in a vocabulary of ``n_features``: ``id + 1``, missing
    ids in bin 0, ids past the vocabulary in bin ``n_features + 1`` (see ``StreamState._bins``)."""
    return (features + 1).clamp_(0, n_features + 1)


def position_counts(features: torch.Tensor, n_features: int) -> torch.Tensor:
    """How many of ids ``features`` fall in each count bin of a vocabulary of ``n_features``
    (int64 ``[n_features + 2]``, the layout of ``StreamState._bins``; see :func:`position_bins`).

    One scatter of atomic adds on a GPU, where ``index_put_(accumulate=True)`` would sort."""
    return _count_into(torch.zeros(n_features + 2, dtype=torch.int64, device=features.device),
                       features, n_features)


def _count_into(counts: torch.Tensor, features: torch.Tensor, n_features: int,
                one: torch.Tensor | None = None) -> torch.Tensor:
    """``counts`` (int64 ``[n_features + 2]``) with the positions of ids ``features`` added to
    their bins, in place; ``one``: an int64 1 on their device, where the caller keeps one."""
    bins = position_bins(features, n_features)
    if one is None:
        one = torch.ones(1, dtype=torch.int64, device=counts.device)
    return counts.index_add_(0, bins, one.expand(bins.shape[0]))


def dense_bytes(n_neurons: int, n_features: int) -> int:
    """Memory a dense state of this shape needs."""
    return n_neurons * n_features * DENSE_CELL_BYTES


#: The ``kind`` values of :func:`make_state` (and of ``Accumulator``).
STATE_KINDS = ("auto", "dense", "sparse")


def make_state(n_neurons: int, n_features: int, kind: str = "auto",
               dense_budget: int = DEFAULT_DENSE_BUDGET, device="cpu") -> StreamState:
    """Create a state: ``kind`` is ``"dense"``, ``"sparse"`` or ``"auto"`` (dense when it fits
    ``dense_budget`` bytes, else sparse)."""
    from .dense import DenseState
    from .sparse import SparseState

    if kind == "auto":
        kind = "dense" if dense_bytes(n_neurons, n_features) <= dense_budget else "sparse"
    if kind == "dense":
        return DenseState(n_neurons, n_features, device=device)
    if kind == "sparse":
        return SparseState(n_neurons, n_features, device=device)
    raise InputError(f"unknown state kind {kind!r}: use one of {', '.join(STATE_KINDS)}")
