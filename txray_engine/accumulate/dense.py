"""Dense ``[n_neurons, n_features]`` accumulator, for shapes that fit the memory budget."""

from __future__ import annotations

import torch

from .state import StreamState
from .stats import SparseStats


class DenseState(StreamState):
    """Count, mass and peak as flat dense tensors of ``n_neurons * n_features`` cells."""

    kind = "dense"

    def __init__(self, n_neurons: int, n_features: int, device="cpu"):
        super().__init__(n_neurons, n_features, device)
        cells = self.n_neurons * self.n_features
        self.count = torch.zeros(cells, dtype=torch.int64, device=self.device)
        self.mass = torch.zeros(cells, dtype=torch.float64, device=self.device)
        self.peak = torch.full((cells,), -torch.inf, dtype=torch.float32, device=self.device)

    def add_events(self, neurons, features, values):
        flat = neurons * self.n_features + features
        self.count.index_add_(0, flat, torch.ones_like(flat))
        self.mass.index_add_(0, flat, values.clamp(min=0).to(torch.float64))
        self.peak.scatter_reduce_(0, flat, values.to(torch.float32), "amax", include_self=True)

    def _merge_cells(self, other: SparseStats) -> None:
        flat = torch.from_numpy(other.keys()).to(self.device)
        self.count.index_add_(0, flat, torch.from_numpy(other.count).to(self.device))
        self.mass.index_add_(0, flat, torch.from_numpy(other.mass).to(self.device))
        self.peak.scatter_reduce_(0, flat, torch.from_numpy(other.peak).to(self.device), "amax",
                                  include_self=True)

    def to_stats(self) -> SparseStats:
        flat = torch.nonzero(self.count).squeeze(1)  # increasing: row-major = CSR order
        return SparseStats.from_keys(self.n_neurons, self.n_features, flat.cpu().numpy(),
                                     self.count[flat].cpu().numpy(), self.mass[flat].cpu().numpy(),
                                     self.peak[flat].cpu().numpy(), **self._stats_counters())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.count, self.mass, self.peak))
