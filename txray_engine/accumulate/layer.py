"""All the sums of one captured layer: one ``StreamState`` per feature stream plus per-neuron totals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import txray_kernels as kernels

from ..errors import InputError
from .examples import TopExamples, check_ties
from .state import DEFAULT_DENSE_BUDGET, StreamState, dense_bytes, make_state
from .stats import SparseStats


@dataclass
class LayerState:
    """Sums of one layer.

    ``neuron_count[n]`` is the number of positions where neuron ``n`` was in the top-k (alive iff
    > 0), ``neuron_mass[n]`` the sum of its clamped activations there; ``tokens`` counts observed
    positions and ``skipped_nonfinite`` positions skipped for NaN/inf activations (only when asked).
    """

    n_neurons: int
    streams: dict[str, StreamState]
    neuron_count: torch.Tensor = None
    neuron_mass: torch.Tensor = None
    tokens: int = 0
    skipped_nonfinite: int = 0
    examples: TopExamples | None = None

    def __repr__(self) -> str:
        kinds = ", ".join(f"{n}: {type(s).__name__.removesuffix('State').lower()} "
                          f"[{s.n_features}]" for n, s in self.streams.items())
        alive = int((self.neuron_count > 0).sum())
        extra = f", {self.skipped_nonfinite} skipped non-finite" if self.skipped_nonfinite else ""
        examples = f", top {self.examples.m} examples" if self.examples is not None else ""
        return (f"LayerState({self.n_neurons} neurons, {alive} alive, {self.tokens} tokens"
                f"{extra}{examples}; {kinds})")

    def __post_init__(self):
        dev = next(iter(self.streams.values())).device if self.streams else torch.device("cpu")
        if self.neuron_count is None:
            self.neuron_count = torch.zeros(self.n_neurons, dtype=torch.int64, device=dev)
        if self.neuron_mass is None:
            self.neuron_mass = torch.zeros(self.n_neurons, dtype=torch.float64, device=dev)

    @classmethod
    def create(cls, n_neurons: int, vocab_sizes: dict[str, int], kind: str = "auto",
               dense_budget: int = DEFAULT_DENSE_BUDGET, device="cpu") -> "LayerState":
        """A new layer; under ``kind="auto"`` its streams are dense, in order, while together
        they fit ``dense_budget`` bytes, and sparse past it."""
        streams = {}
        for name, v in vocab_sizes.items():
            streams[name] = make_state(n_neurons, v, kind, dense_budget, device)
            if streams[name].kind == "dense":
                dense_budget -= dense_bytes(n_neurons, v)
        return cls(n_neurons, streams)

    @property
    def dense_memory(self) -> int:
        """Memory its dense states take."""
        return sum(dense_bytes(self.n_neurons, s.n_features) for s in self.streams.values()
                   if s.kind == "dense")

    def add_selection(self, values: torch.Tensor, indices: torch.Tensor,
                      features: dict[str, torch.Tensor], *, checked: bool = False,
                      counts: dict[str, torch.Tensor] | None = None) -> None:
        """Add selected neurons ``indices``/``values`` ``[P, k]`` of ``P`` positions whose ids are
        ``features[name]`` ``[P]`` (bad shapes or ids raise ``ValueError`` and change nothing;
        ``checked=True``: the caller checked them; ``counts``: the ids' position counts per
        stream, where the caller has them, see ``StreamState.add_positions``)."""
        targets = [(features[name], state) for name, state in self.streams.items()]
        kernels.accumulate(values, indices, targets, (self.neuron_count, self.neuron_mass),
                           checked=checked,
                           counts=None if counts is None else
                           [counts.get(name) for name in self.streams])
        self.tokens += int(indices.shape[0])

    def merge_problem(self, other: "LayerState") -> str | None:
        """Why ``other`` cannot be added to this state, or None (checked before any change)."""
        if other.n_neurons != self.n_neurons:
            return f"{self.n_neurons} neurons against {other.n_neurons}"
        if set(other.streams) != set(self.streams):
            return f"streams {sorted(self.streams)} against {sorted(other.streams)}"
        if self.examples is not None and other.examples is not None and \
                (other.examples.m, other.examples.width) != (self.examples.m, self.examples.width):
            return (f"top examples of {self.examples.m} (context width {self.examples.width}) "
                    f"against {other.examples.m} (width {other.examples.width})")
        return None

    def merge_(self, other: "LayerState", ties: str = "first") -> "LayerState":
        """Add ``other``'s sums (``ties``: of the top examples, see ``TopExamples.merge_``)."""
        problem = self.merge_problem(other)
        if problem:
            raise InputError(f"cannot merge layer states of {problem}")
        check_ties(ties)
        for name, state in self.streams.items():
            state.merge_(other.streams[name])
        self.neuron_count += other.neuron_count.to(self.neuron_count.device)
        self.neuron_mass += other.neuron_mass.to(self.neuron_mass.device)
        self.tokens += other.tokens
        self.skipped_nonfinite += other.skipped_nonfinite
        if other.examples is not None:
            if self.examples is None:
                self.examples = TopExamples(self.n_neurons, other.examples.m,
                                            other.examples.width, self.neuron_count.device)
            self.examples.merge_(other.examples, ties)
        return self

    @property
    def device(self) -> torch.device:
        return self.neuron_count.device

    @kernels.on_own_device
    def stream_stats(self) -> dict[str, SparseStats]:
        return {name: s.to_stats() for name, s in self.streams.items()}

    def totals(self) -> dict[str, np.ndarray]:
        """Per-neuron arrays to store (totals, and top examples when kept)."""
        out = {"neuron_count": self.neuron_count.cpu().numpy().copy(),
               "neuron_mass": self.neuron_mass.cpu().numpy().copy()}  # a snapshot, not a view
        if self.examples is not None:
            out.update(self.examples.arrays())
        return out
