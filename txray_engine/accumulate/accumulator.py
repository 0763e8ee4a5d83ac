"""``Accumulator``: the engine's in-memory state for all layers, fed by ``observe``.

``observe(layer, activations, features, mask)`` is the low-level entry point for callers that
already have activations (a training loop, another tool); the ``Collector`` feeds it from hooks.
Each call is validated completely before any sum changes, so a bad input changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels

from ..errors import InputError, NonFiniteError
from ..features.streams import Stream
from ..features.vocab import Vocabulary
from .examples import TopExamples
from .layer import LayerState
from .state import DEFAULT_DENSE_BUDGET

NONFINITE_POLICIES = ("error", "skip")


@dataclass
class Prepared:
    """A validated observation: the selection of its finite, unmasked positions."""

    layer: str
    n_neurons: int
    values: torch.Tensor
    indices: torch.Tensor
    features: dict[str, torch.Tensor]
    skipped_nonfinite: int
    examples: tuple | None = None  # (acts [P, N], doc [P], pos [P], context [P, W])
    vocab_sizes: dict | None = None  # the streams' sizes the ids were checked against


class Accumulator:
    """Top-k selection and exact accumulation for any number of layers and feature streams.

    Parameters
    ----------
    streams : list of Stream, or dict name -> Vocabulary / list of str
        The feature streams; each ``observe`` call gives ids for all of them.
    k : int or "all"
        Neurons kept per position (``1`` is the paper's max-1).
    kind : "auto", "dense" or "sparse"
        State kind per (layer, stream); ``auto`` picks dense when it fits ``dense_budget`` bytes.
    nonfinite : "error" or "skip"
        NaN/inf activations raise (default) or their positions are skipped and counted.
    """

    def __init__(self, streams, k: int | str = 1, kind: str = "auto",
                 dense_budget: int = DEFAULT_DENSE_BUDGET, nonfinite: str = "error",
                 device: str | torch.device = "cpu", examples: int = 0,
                 context_radius: int = 5):
        if isinstance(streams, dict):
            streams = [Stream(n, v if isinstance(v, Vocabulary) else Vocabulary(v))
                       for n, v in streams.items()]
        if not streams:
            raise InputError("no feature streams given: name at least one (e.g. token)")
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise InputError(f"stream names must be unique, got {names}")
        if nonfinite not in NONFINITE_POLICIES:
            raise InputError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if k != "all" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise InputError(f"k must be a positive integer or 'all', got {k!r}")
        self.streams: list[Stream] = list(streams)
        self.k = k
        self.kind = kind
        self.dense_budget = int(dense_budget)
        self.nonfinite = nonfinite
        self.device = torch.device(device)
        if examples < 0 or context_radius < 0:
            raise InputError("examples and context_radius must be ≥ 0")
        self.examples = int(examples)
        self.context_radius = int(context_radius)
        self.layers: dict[str, LayerState] = {}

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {s.name: len(s.vocab) for s in self.streams}

    def k_for(self, n_neurons: int) -> int:
        return n_neurons if self.k == "all" else int(self.k)

    # -- the public entry point ------------------------------------------------------------------
    def observe(self, layer: str, activations: torch.Tensor, features: dict[str, torch.Tensor],
                mask: torch.Tensor | None = None, where: dict | None = None) -> None:
        """Add positions of ``activations`` ``[..., N]`` to ``layer``.

        ``features[name]`` holds one id per position (shape ``[...]``, ``-1`` = missing) for every
        stream; ``mask`` (shape ``[...]``, True = real position) drops padding. With
        ``examples > 0``, ``where`` gives each position's ``doc`` and ``pos`` (shape ``[...]``)
        and its ``context`` token ids (shape ``[..., 2 * context_radius + 1]``).
        """
        self.commit(self.prepare(layer, activations, features, mask, where))

    # -- two-phase form used by the collector (validate everything, then add) ----------------------
    def prepare(self, layer, activations, features, mask=None, where=None) -> Prepared:
        if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
            raise InputError(f"layer {layer!r}: activations must be a floating-point tensor, got "
                             f"{getattr(activations, 'dtype', type(activations).__name__)}")
        if activations.dim() < 1 or activations.shape[-1] < 1:
            raise InputError(f"layer {layer!r}: activations need a last (neuron) dimension, got "
                             f"shape {tuple(activations.shape)}")
        lead = tuple(activations.shape[:-1])
        n = int(activations.shape[-1])
        k = self.k_for(n)
        if k > n:
            raise InputError(f"layer {layer!r} has {n} neurons but k={k}: use k between 1 and {n} "
                             f"(or 'all')")
        if layer in self.layers and self.layers[layer].n_neurons != n:
            raise InputError(f"layer {layer!r} had {self.layers[layer].n_neurons} neurons before "
                             f"and now has {n}: one layer name must keep one width")
        missing = [s.name for s in self.streams if s.name not in features]
        if missing:
            raise InputError(f"layer {layer!r}: no ids given for stream(s) {missing}")
        extra = set(features) - {s.name for s in self.streams}
        if extra:
            raise InputError(f"unknown stream(s) {sorted(extra)}: the accumulator has "
                             f"{[s.name for s in self.streams]}")
        keep = None
        if mask is not None:
            mask = torch.as_tensor(mask, device=activations.device)
            if tuple(mask.shape) != lead:
                raise InputError(f"layer {layer!r}: mask has shape {tuple(mask.shape)} but the "
                                 f"activations have {lead} positions (shape {tuple(activations.shape)})")
            keep = mask.reshape(-1).bool()
        acts = activations.detach().reshape(-1, n)
        flat = {}
        for s in self.streams:
            f = torch.as_tensor(features[s.name], device=activations.device)
            if tuple(f.shape) != lead:
                raise InputError(f"layer {layer!r}: stream {s.name!r} has shape {tuple(f.shape)} "
                                 f"but the activations have {lead} positions (shape "
                                 f"{tuple(activations.shape)}); give one id per position")
            if f.dtype.is_floating_point or f.dtype == torch.bool or f.is_complex():
                raise InputError(f"stream {s.name!r}: ids must be integers, got {f.dtype}")
            f = f.reshape(-1).long()
            if keep is not None:
                f = f[keep]
            flat[s.name] = f
        self._check_ids(flat)
        index = None  # the original position of each row, for the error message
        if keep is not None:
            index = torch.nonzero(keep).squeeze(1)
            acts = acts[keep]
        ex = self._example_inputs(layer, where, lead, keep, acts) if self.examples else None
        values, indices, bad_rows = kernels.select(acts, k)
        skipped = 0
        if bad_rows.numel():
            if self.nonfinite == "error":
                row = bad_rows[0] if index is None else index[bad_rows[0]]
                pos = tuple(int(x) for x in torch.unravel_index(row, lead)) \
                    if lead else ()
                raise NonFiniteError(
                    f"layer {layer!r}: non-finite activation (NaN or inf) at position {pos} "
                    f"(index in shape {lead}), {bad_rows.numel()} position(s) in this call; fix "
                    f"the model or inputs, or pass nonfinite='skip' (--skip-nonfinite) to skip "
                    f"such positions and count them")
            good = torch.ones(acts.shape[0], dtype=torch.bool, device=acts.device)
            good[bad_rows] = False
            values, indices = values[good], indices[good]
            flat = {name: f[good] for name, f in flat.items()}
            ex = tuple(t[good] for t in ex) if ex is not None else None
            skipped = int(bad_rows.numel())
        return Prepared(layer, n, values, indices, flat, skipped, ex, self.vocab_sizes)

    def _check_ids(self, flat: dict[str, torch.Tensor]) -> None:
        """Every id in its stream's vocabulary (or -1): one read-back for all streams, so a GPU
        waits once per call, not once per stream."""
        names = [name for name, f in flat.items() if f.numel()]
        bounds = kernels.id_bounds([flat[name] for name in names])
        size = {s.name: len(s.vocab) for s in self.streams}
        for name, (lo, hi) in zip(names, bounds):
            if lo < -1 or hi >= size[name]:
                bad = lo if lo < -1 else hi
                raise InputError(f"stream {name!r}: feature id {bad} is outside its vocabulary of "
                                 f"{size[name]} (valid: 0..{size[name] - 1}, or -1 for missing); "
                                 f"extend the vocabulary or fix the ids")

    def _example_inputs(self, layer, where, lead, keep, acts) -> tuple:
        width = 2 * self.context_radius + 1
        if not where or not all(key in where for key in ("doc", "pos", "context")):
            raise InputError(f"layer {layer!r}: top examples need where={{'doc', 'pos', "
                             f"'context'}} for every position (the Collector provides them)")
        doc, pos = (torch.as_tensor(where[key], device=acts.device) for key in ("doc", "pos"))
        ctx = torch.as_tensor(where["context"], device=acts.device)
        if tuple(doc.shape) != lead or tuple(pos.shape) != lead or \
                tuple(ctx.shape) != (*lead, width):
            raise InputError(f"layer {layer!r}: example doc/pos must have shape {lead} and "
                             f"context {(*lead, width)}")
        doc, pos, ctx = doc.reshape(-1).long(), pos.reshape(-1).long(), ctx.reshape(-1, width)
        if keep is not None:
            doc, pos, ctx = doc[keep], pos[keep], ctx[keep]
        return acts, doc, pos, ctx.long()

    def commit(self, p: Prepared) -> None:
        if p.vocab_sizes != self.vocab_sizes:  # checked against another accumulator's streams
            raise InputError(f"this batch was prepared for streams {p.vocab_sizes}, this "
                             f"accumulator has {self.vocab_sizes}: commit it where it was prepared")
        state = self.layers.get(p.layer)
        if state is None:
            state = self.layers[p.layer] = LayerState.create(
                p.n_neurons, self.vocab_sizes, self.kind, self.dense_budget, self.device)
        if state.n_neurons != p.n_neurons:  # two prepares of a new layer, of two widths
            raise InputError(f"layer {p.layer!r} has {state.n_neurons} neurons, this batch "
                             f"{p.n_neurons}: one layer name must keep one width")
        dev = self.device
        state.add_selection(p.values.to(dev), p.indices.to(dev),  # prepare checked the ids
                            {n: f.to(dev) for n, f in p.features.items()}, checked=True)
        if p.examples is not None:
            if state.examples is None:
                state.examples = TopExamples(p.n_neurons, self.examples,
                                             2 * self.context_radius + 1, dev)
            state.examples.update(*(t.to(dev) for t in p.examples))
        state.skipped_nonfinite += p.skipped_nonfinite

    # -- merging ------------------------------------------------------------------------------
    def merge_(self, other: "Accumulator") -> "Accumulator":
        """Add ``other`` into this accumulator (same streams and vocabulary sizes)."""
        if other.vocab_sizes != self.vocab_sizes:
            raise InputError("cannot merge accumulators with different streams or vocabularies")
        for name, layer in other.layers.items():
            if name in self.layers:
                self.layers[name].merge_(layer)
            else:
                mine = LayerState.create(layer.n_neurons, self.vocab_sizes, self.kind,
                                         self.dense_budget, self.device)
                self.layers[name] = mine.merge_(layer)
        return self

    def empty_like(self) -> "Accumulator":
        return Accumulator(self.streams, self.k, self.kind, self.dense_budget, self.nonfinite,
                           self.device, self.examples, self.context_radius)


def merge(a: Accumulator, b: Accumulator) -> Accumulator:
    """A new accumulator holding the sums of ``a`` and ``b`` (neither is changed)."""
    return a.empty_like().merge_(a).merge_(b)


def same_sums(a: Accumulator, b: Accumulator, mass_rtol: float = 1e-12) -> bool:
    """Whether two accumulators hold the same sums: counts, peaks and totals exactly, mass within
    ``mass_rtol`` (float64 rounding of a different summation order)."""
    if set(a.layers) != set(b.layers):
        return False
    for name, la in a.layers.items():
        lb = b.layers[name]
        if (la.tokens, la.skipped_nonfinite) != (lb.tokens, lb.skipped_nonfinite) or \
                not torch.equal(la.neuron_count.cpu(), lb.neuron_count.cpu()) or \
                not torch.allclose(la.neuron_mass.cpu(), lb.neuron_mass.cpu(), rtol=mass_rtol,
                                   atol=0.0):
            return False
        sa, sb = la.stream_stats(), lb.stream_stats()
        if not all(sa[s].equals(sb[s], mass_rtol) for s in sa):
            return False
    return True
