"""Sparse accumulator, for shapes too large to hold densely.

Events are keyed by ``neuron * n_features + feature``. The state is a sorted master of cells plus
reduced runs waiting to be merged into it: a run joins the master when the pending runs hold as
many cells as the master (and at least ``min_compact`` cells), so the work per cell stays amortised
O(log) like an LSM tree and memory stays proportional to the number of distinct cells.

Where events come from:

- on the CPU (with numba), a persistent hash table (:class:`txray_kernels.cpu_table.CpuSparseTable`)
  that *is* the state: O(1) per event, no master (merged stats are added to it as cells), and a
  read (``to_stats``, a flush) sorts a copy of its cells. It holds 28 bytes per slot at a load
  of at most 0.75 (37-75 bytes per cell; the master and a drained table held about 52).
  Draining it into a sorted master when it held half the master's cells re-merged the whole
  master each time: on text, whose frequent cells recur in every batch, that took half the
  time at k = 32 (a 128k vocabulary over 4,096 neurons; 2.1x the tokens/s without it);
- on a CUDA device (with Triton), a persistent hash table in device memory
  (:class:`txray_kernels.triton_sparse.TritonSparseTable`), the state in the same way: one insert
  launch per batch and stream, no sort. It grows when it fills (it counts its cells, a sync, only
  once the events since the last count could have filled it), and a read sorts a copy of its
  cells (``gpu_check`` Part 2b measured the draining design's cost there first);
- otherwise (and for merges) each batch is reduced by key at once (sort-and-reduce) and pushed as
  a run.
"""

from __future__ import annotations

import os

import torch

import txray_kernels as kernels
from txray_kernels import cpu_table

from ..errors import InputError
from .state import StreamState
from .stats import SparseStats


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _reduce_by_key(keys, count, mass, peak):
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    n = uniq.numel()
    c = torch.zeros(n, dtype=torch.int64, device=keys.device).index_add_(0, inv, count)
    m = torch.zeros(n, dtype=torch.float64, device=keys.device).index_add_(0, inv, mass)
    p = torch.full((n,), -torch.inf, dtype=torch.float32, device=keys.device)
    p.scatter_reduce_(0, inv, peak, "amax", include_self=True)
    return uniq, c, m, p


class SparseState(StreamState):
    """A hash table of (key, count, mass, peak) cells on the CPU (numba) and on CUDA; otherwise
    a sorted master plus pending reduced runs."""

    kind = "sparse"

    def __init__(self, n_neurons: int, n_features: int, device="cpu", min_compact: int = 1 << 20,
                 table: bool | str | None = None):
        super().__init__(n_neurons, n_features, device)
        self.min_compact = int(min_compact)
        if table is None or table is True:  # the hash table this device can run
            table = "cpu" if self.device.type == "cpu" and cpu_table.AVAILABLE else \
                "triton" if self.device.type == "cuda" and _triton_available() else False
        if table not in (False, "cpu", "triton"):
            raise InputError(f"table must be None, True, False, 'cpu' or 'triton', got {table!r}")
        if table == "cpu" and (self.device.type != "cpu" or not cpu_table.AVAILABLE):
            raise InputError(f"table='cpu' needs a CPU state and numba (state on {self.device}, "
                             f"numba {'installed' if cpu_table.AVAILABLE else 'missing'})")
        if table == "triton" and not (self.device.type == "cuda" or _interpreted()):
            raise InputError(f"table='triton' needs a CUDA state (got {self.device}; on the CPU "
                             "only under TRITON_INTERPRET=1, for tests)")
        # one hash table or none; both give add_cells, a sorted copy of their cells, nbytes
        self._table_kind = table or None
        self._table = None
        if table == "cpu":
            self._table = cpu_table.CpuSparseTable()
        elif table == "triton":  # on the CPU only under TRITON_INTERPRET=1 (tests)
            from txray_kernels.triton_sparse import TritonSparseTable
            self._table = TritonSparseTable(n_neurons, n_features, device=self.device)
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._master = (empty, empty.clone(), empty.to(torch.float64), empty.to(torch.float32))
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_cells = 0

    def _push(self, run) -> None:
        if self._table_kind == "triton":  # the table holds the state: the run's cells join it
            self._table.add_cells(*run)
            return
        if self._table_kind == "cpu":
            self._table.add_cells(*(t.numpy() for t in run))
            return
        self._pending.append(run)
        self._pending_cells += run[0].numel()
        if self._pending_cells >= max(self.min_compact, self._master[0].numel()):
            self._compact()

    def _compact(self) -> None:
        if self._table is not None or not self._pending:  # a table is the whole state
            return
        runs = [self._master, *self._pending]
        self._master = _reduce_by_key(*(torch.cat([r[i] for r in runs]) for i in range(4)))
        self._pending, self._pending_cells = [], 0

    def add_selection_events(self, values: torch.Tensor, indices: torch.Tensor | None,
                             features: torch.Tensor) -> bool:
        """Events only (no positions) of a selection ``[P, k]`` (``indices=None``: all neurons)
        into the GPU table; ``False`` (nothing done) for a state without one."""
        if self._table_kind != "triton":
            return False
        self._table.add_selection(values, indices, features)
        return True

    def add_selection(self, values: torch.Tensor, indices: torch.Tensor, features: torch.Tensor,
                      *, checked: bool = False) -> None:
        """Positions and events of a selection ``(values, indices)`` ``[P, k]`` whose ids are
        ``features`` ``[P]`` (``-1`` = missing): with the CPU table, one pass for both
        (``checked=True``: the caller checked shapes and ids, as ``txray_kernels.accumulate`` does)."""
        if not checked and (tuple(features.shape) != tuple(indices.shape[:1]) or
                            values.shape != indices.shape):
            raise InputError(f"need values and indices [P, k] and features [P], got "
                             f"{tuple(values.shape)}, {tuple(indices.shape)}, "
                             f"{tuple(features.shape)}")
        if self._table_kind != "cpu":
            if not checked:  # shapes and ids, before anything changes (a GPU reads back once)
                kernels.check_targets(values, indices, [(features, self)], self.n_neurons)
            self.add_positions(features)
            if not self.add_selection_events(values, indices, features):
                kernels.scatter_events(values, indices, [(features, self)])
            return
        self.missing += self._table.add_selection(indices.numpy(),
                                                  values.to(torch.float32).numpy(),
                                                  features.numpy(), self.n_neurons,
                                                  self.n_features, self.feature_freq.numpy(),
                                                  checked=checked)

    def add_events(self, neurons, features, values):
        if self._table_kind == "triton":
            self._table.add(neurons, features, values.to(torch.float32))
            return
        keys = neurons * self.n_features + features
        if self._table_kind == "cpu":
            self._table.add_events(keys.numpy(), values.to(torch.float32).numpy())
            return
        ones = torch.ones_like(keys)
        values = values.to(torch.float32)
        self._push(_reduce_by_key(keys, ones, values.clamp(min=0).to(torch.float64), values))

    def _merge_cells(self, other: SparseStats) -> None:
        keys = torch.from_numpy(other.keys()).to(self.device)
        run = (keys, torch.from_numpy(other.count).to(self.device),
               torch.from_numpy(other.mass).to(self.device),
               torch.from_numpy(other.peak).to(self.device))
        if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            run = _reduce_by_key(*run)  # hand-built stats with a repeated cell: runs are unique
        self._push(run)

    def to_stats(self) -> SparseStats:
        if self._table_kind == "triton":  # a sorted copy of the table's cells, the table kept
            cells = self._table.to_coo()
        elif self._table_kind == "cpu":  # fresh arrays already: no second copy
            keys, count, mass, peak = self._table.sorted_cells()
            return SparseStats.from_keys(self.n_neurons, self.n_features, keys, count, mass,
                                         peak, **self._stats_counters())
        else:
            self._compact()
            cells = self._master
        keys, count, mass, peak = (t.cpu().numpy().copy() for t in cells)
        return SparseStats.from_keys(self.n_neurons, self.n_features, keys, count, mass, peak,
                                     **self._stats_counters())

    @property
    def nbytes(self) -> int:
        runs = [self._master, *self._pending]
        return sum(t.numel() * t.element_size() for r in runs for t in r) + \
            self.feature_freq.numel() * 8 + (self._table.nbytes if self._table is not None else 0)
