"""``Accumulator``: the engine's in-memory state for all layers, fed by ``observe``.

``observe(layer, activations, features, mask)`` is the low-level entry point for callers that
already have activations (a training loop, another tool); the ``Collector`` feeds it from hooks.
Each call is validated completely before any sum changes, so a bad input changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

import txray_kernels as kernels

from ..errors import InputError, NonFiniteError, whole_number
from ..features.streams import Stream, streams_of
from ..store.names import check_name
from .examples import TopExamples, check_ties
from .layer import LayerState
from .positions import Positions, batch_positions, id_bounds_parts, keep_where, read_back
from .state import DEFAULT_DENSE_BUDGET, STATE_KINDS

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
    # (acts [P, N], kept rows [R] or None for all, and per kept row doc, pos [R], context [R, W])
    examples: tuple | None = None
    vocab_sizes: dict | None = None  # the streams' sizes the ids were checked against
    counts: dict | None = None  # the features' position counts, shared by the layers of a batch


def _available(device) -> torch.device:
    """``device`` as a ``torch.device``, refused where this machine has no such device (a CUDA
    state failed later, deep in its first batch, with an unrelated error)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1')") \
            from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count or (device.index or 0) >= count:
            raise InputError(f"device {str(device)!r}: this machine has "
                             f"{count or 'no'} CUDA device(s) (torch {torch.__version__}); "
                             f"use device='cpu'")
    return device


class Accumulator:
    """Top-k selection and exact accumulation for any number of layers and feature streams.

    Parameters
    ----------
    streams : list of Stream, or dict name -> Vocabulary / list of str
        The feature streams; each ``observe`` call gives ids for all of them. A dict takes each
        stream's source from its name, as ``Collector`` and ``txray collect`` do (``token``:
        input, ``predicted``, ``label``; any other name: feature); the store records it.
    k : int or "all"
        Neurons kept per position (``1`` is the paper's max-1).
    kind : "auto", "dense" or "sparse"
        State kind per (layer, stream); ``auto`` picks dense while it fits ``dense_budget``.
    dense_budget : int
        Bytes the dense states of all layers and streams together may take under ``auto``:
        each new (layer, stream) is dense when it fits what is left, else sparse (so a sweep of
        many layers stays within it; both kinds give identical sums).
    nonfinite : "error" or "skip"
        NaN/inf activations raise (default) or their positions are skipped and counted.
    device : str or torch.device
        Where the sums live; activations on another device are moved there.
    examples : int
        Top examples kept per neuron (0: none); ``observe`` then needs ``where``.
    context_radius : int
        Input tokens kept on each side of an example.

    Attributes
    ----------
    layers : dict of str to LayerState
        The sums, per layer name, created at a layer's first ``observe``.
    """

    def __init__(self, streams, k: int | str = 1, kind: str = "auto",
                 dense_budget: int = DEFAULT_DENSE_BUDGET, nonfinite: str = "error",
                 device: str | torch.device = "cpu", examples: int = 0,
                 context_radius: int = 5):
        streams = streams_of(streams)
        if not streams:
            raise InputError("no feature streams given: name at least one (e.g. token)")
        if not all(isinstance(s, Stream) for s in streams):
            raise InputError("streams are Stream objects, or a dict {name: vocabulary}, e.g. "
                             "Accumulator({'token': ['a', 'b']})")
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise InputError(f"stream names must be unique, got {names}")
        for name in names:  # a name a store cannot hold fails now, not at the first flush
            check_name("stream", name)
        if nonfinite not in NONFINITE_POLICIES:
            raise InputError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if isinstance(k, np.integer):
            k = int(k)
        if k != "all" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise InputError(f"k must be a positive integer or 'all', got {k!r}")
        if kind not in STATE_KINDS:
            raise InputError(f"kind must be one of {', '.join(STATE_KINDS)}, got {kind!r}")
        dense_budget = whole_number(dense_budget, "dense_budget (bytes for all dense states)")
        self.streams: list[Stream] = list(streams)
        self.k = k
        self.kind = kind
        self.dense_budget = dense_budget
        self.nonfinite = nonfinite
        self.device = _available(device)
        self.examples = whole_number(examples, "examples")
        self.context_radius = whole_number(context_radius, "context_radius")
        self.layers: dict[str, LayerState] = {}

    def __repr__(self) -> str:
        streams = ", ".join(f"{s.name}[{len(s.vocab)}]" for s in self.streams)
        examples = f", examples={self.examples}" if self.examples else ""
        layers = "".join(f"\n  {name}: {state!r}" for name, state in self.layers.items())
        return (f"Accumulator(k={self.k!r}, streams {streams}, kind={self.kind!r}, "
                f"device={str(self.device)!r}{examples}; {len(self.layers)} "
                f"layer{'' if len(self.layers) == 1 else 's'}){layers}")

    @property
    def tokens(self) -> int:
        """Positions counted: the most any layer counted (layers skip non-finite ones apart)."""
        return max((s.tokens for s in self.layers.values()), default=0)

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {s.name: len(s.vocab) for s in self.streams}

    def k_for(self, n_neurons: int) -> int:
        """Neurons kept per position in a layer of ``n_neurons`` (all of them for ``k="all"``)."""
        return n_neurons if self.k == "all" else int(self.k)

    # -- the public entry point ------------------------------------------------------------------
    @kernels.on_own_device
    def observe(self, layer: str, activations: torch.Tensor, features: dict[str, torch.Tensor],
                mask: torch.Tensor | None = None, where: dict | None = None) -> None:
        """Add positions of ``activations`` ``[..., N]`` to ``layer``.

        ``features[name]`` holds one id per position (shape ``[...]``, ``-1`` = missing) for every
        stream; ``mask`` (shape ``[...]``, True or 1 = real position, as an ``attention_mask``;
        other values are refused, and a ``key_padding_mask``, True = pad, is given as
        ``~key_padding_mask``) drops padding. With
        ``examples > 0``, ``where`` gives each position's ``doc`` and ``pos`` (shape ``[...]``)
        and its ``context`` token ids (shape ``[..., 2 * context_radius + 1]``).
        """
        self.commit(self.prepare(layer, activations, features, mask, where))

    # -- two-phase form used by the collector (validate everything, then add) ----------------------
    def prepare(self, layer, activations, features, mask=None, where=None) -> Prepared:
        """Validate and select one layer's positions, changing nothing (:meth:`commit` adds
        them); the arguments are those of :meth:`observe`. With ``examples``, the commit reads
        the kept rows of ``activations`` again: leave them unchanged until then."""
        return self.prepare_batch({layer: activations}, features, mask, where)[0]

    @kernels.on_own_device
    def prepare_batch(self, activations: dict, features: dict[str, torch.Tensor], mask=None,
                      where=None) -> list[Prepared]:
        """:meth:`prepare` for the layers of one forward pass at once: ``activations`` maps each
        layer to its ``[..., N]`` tensor, and all share the positions (one ``features``,
        ``mask`` and ``where``). The positions are checked and kept once for all layers, and
        on a GPU the batch waits for the device twice (the mask's size, then every id bound and
        non-finite count together) instead of several times per layer; rows wider than one fused
        tile (N > 16,384) at 1 < k < N take the torch selection, which waits once more per layer
        to settle ties.

        Nothing changes: a bad input raises before any :meth:`commit`. Checks run cheapest first:
        every layer's activations (type, shape, k), then the shared positions (streams, mask, id
        shapes), then the ids against the vocabularies, ``where``, and last the non-finite rows
        of each layer. With ``examples``, the commits read the kept rows of the activations
        again: leave them unchanged until then.
        """
        if not isinstance(features, dict):
            raise InputError(f"features must be a dict {{stream name: ids}} for the streams "
                             f"{[s.name for s in self.streams]}, got {type(features).__name__}")
        if not isinstance(activations, Mapping):
            raise InputError(f"activations must be a dict {{layer name: tensor}}, got "
                             f"{type(activations).__name__}; one layer: prepare(layer, tensor, ...)")
        items = list(activations.items())
        if not items:
            return []
        first = items[0][0]
        lead = None
        for layer, a in items:
            self._check_activations(layer, a)
            shape = tuple(a.shape[:-1])
            if lead is None:
                lead = shape
            elif shape != lead:
                raise InputError(f"layers {first!r} and {layer!r} have positions of shapes "
                                 f"{lead} and {shape}: the layers of one batch must give one "
                                 f"activation vector per position ([..., N] with the ids' shape); "
                                 f"capture modules whose outputs are per position, or prepare "
                                 f"such layers on their own")
        kept: dict = {}  # device -> Positions
        for layer, a in items:
            if a.device not in kept:
                kept[a.device] = batch_positions(layer, tuple(a.shape), a.device, self.streams,
                                                 features, mask)
        selections = []
        for layer, a in items:
            n = int(a.shape[-1])
            acts = a.detach().reshape(-1, n)
            selections.append(kernels.select_rows(acts, self.k_for(n), kept[a.device].index))
        # one read-back per device: the id bounds of the first device's positions, and how many
        # rows of each layer may hold NaN/inf
        bounds = id_bounds_parts(next(iter(kept.values())))
        masks = [pos for pos in kept.values() if pos.unchecked_mask is not None]
        numbers = read_back([b for _, b in bounds] + [pos.unchecked_mask[0] for pos in masks]
                            + [s.suspects for s in selections])
        for pos, bad in zip(masks, numbers[len(bounds):]):
            pos.check_mask(bad)
        self._check_ids([name for name, _ in bounds], numbers[:len(bounds)])
        numbers = numbers[:len(bounds)] + numbers[len(bounds) + len(masks):]
        if self.examples:
            for device, pos in kept.items():
                keep_where(first, where, pos, device, 2 * self.context_radius + 1)
        elif where is not None:
            raise InputError("where= places top examples, but this accumulator keeps none: create "
                             "it with examples=M (examples per neuron), or leave where out")
        return [self._prepared(layer, a, sel, kept[a.device], suspects)
                for (layer, a), sel, suspects in zip(items, selections, numbers[len(bounds):])]

    def _check_activations(self, layer, activations) -> None:
        if layer not in self.layers:  # a name a store cannot hold fails now, not at a flush
            check_name("layer", layer)
        if isinstance(activations, np.ndarray):
            raise InputError(f"layer {layer!r}: activations must be a torch tensor, got a numpy "
                             f"array; pass torch.from_numpy(a)")
        if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
            raise InputError(f"layer {layer!r}: activations must be a floating-point tensor, got "
                             f"{getattr(activations, 'dtype', type(activations).__name__)}")
        if activations.device.type == "meta":
            raise InputError(f"layer {layer!r}: activations on the meta device hold no values; "
                             f"run the model with its weights loaded")
        if activations.dim() < 1 or activations.shape[-1] < 1:
            raise InputError(f"layer {layer!r}: activations need a last (neuron) dimension, got "
                             f"shape {tuple(activations.shape)}")
        n = int(activations.shape[-1])
        k = self.k_for(n)
        if k > n:
            raise InputError(f"layer {layer!r} has {n} neurons but k={k}: use k between 1 and {n} "
                             f"(or 'all')")
        if layer in self.layers and self.layers[layer].n_neurons != n:
            raise InputError(f"layer {layer!r} had {self.layers[layer].n_neurons} neurons before "
                             f"and now has {n}: one layer name must keep one width (a captured "
                             f"module's output is its first tensor, a tuple's first element: "
                             f"when that is not its activations, e.g. attention weights "
                             f"[batch, time, time], capture another module or observe what you "
                             f"need from a hook of your own)")

    def _check_ids(self, names: list[str], bounds: list) -> None:
        """Every id in its stream's vocabulary (or -1), from the streams' ``(min, max)``."""
        size = self.vocab_sizes
        for name, (lo, hi) in zip(names, bounds):
            if lo < -1 or hi >= size[name]:
                bad = lo if lo < -1 else hi
                raise InputError(f"stream {name!r}: feature id {bad} is outside its vocabulary of "
                                 f"{size[name]} (valid: 0..{size[name] - 1}, or -1 for missing); "
                                 f"extend the vocabulary or fix the ids")

    def _prepared(self, layer, activations, sel, pos: Positions, suspects: int) -> Prepared:
        """The layer's ``Prepared``, its non-finite rows rejected or dropped."""
        n = int(activations.shape[-1])
        flat = pos.features
        ex = None
        if self.examples:  # the kept rows are read in place
            ex = (activations.detach().reshape(-1, n), pos.index, *pos.where)
        values, indices = sel.values, sel.indices
        bad_rows = sel.nonfinite() if suspects else None  # waits again, on this rare path only
        skipped = 0
        if bad_rows is not None and bad_rows.numel():
            if self.nonfinite == "error":
                raise NonFiniteError(
                    f"layer {layer!r}: non-finite activation (NaN or inf) at position "
                    f"{pos.position_of(bad_rows[0])} (index in shape {pos.lead}), "
                    f"{bad_rows.numel()} position(s) in this call; fix the model or inputs, or "
                    f"pass nonfinite='skip' (--skip-nonfinite) to skip such positions and count "
                    f"them" + ("; float64 activations are selected in float32, where values "
                               "beyond ±3.4e38 are inf" if activations.dtype == torch.float64
                               else ""))
            good = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
            good[bad_rows] = False
            values, indices = values[good], indices[good]
            flat = {name: f[good] for name, f in flat.items()}
            if ex is not None:
                acts, rows, *where = ex
                rows = good.nonzero().squeeze(1) if rows is None else rows[good]
                ex = (acts, rows, *(t[good] for t in where))
            skipped = int(bad_rows.numel())
        counts = None  # where the kernels count positions by themselves, none are needed
        if not skipped and not kernels.positions_in_kernels(self.device):
            counts = {s.name: pos.position_counts(s.name, len(s.vocab)) for s in self.streams}
        return Prepared(layer, n, values, indices, flat, skipped, ex, self.vocab_sizes, counts)

    @kernels.on_own_device
    def commit(self, p: Prepared) -> None:
        """Add a prepared batch of one layer to its sums (:meth:`prepare`)."""
        if not isinstance(p, Prepared):
            raise InputError(f"commit takes one Prepared batch (from prepare(), or each item of "
                             f"prepare_batch()), got {type(p).__name__}")
        if p.vocab_sizes != self.vocab_sizes:  # checked against another accumulator's streams
            raise InputError(f"this batch was prepared for streams {p.vocab_sizes}, this "
                             f"accumulator has {self.vocab_sizes}: commit it where it was prepared")
        # the sums are normal tensors even when a caller runs under torch.inference_mode (an
        # inference tensor could not be updated in place outside it, by the next batch or a read)
        with torch.inference_mode(False):
            self._commit(p)

    def _commit(self, p: Prepared) -> None:
        state = self.layers.get(p.layer)
        if state is None:
            state = self.layers[p.layer] = LayerState.create(
                p.n_neurons, self.vocab_sizes, self.kind, self.dense_left, self.device)
        if state.n_neurons != p.n_neurons:  # two prepares of a new layer, of two widths
            raise InputError(f"layer {p.layer!r} has {state.n_neurons} neurons, this batch "
                             f"{p.n_neurons}: one layer name must keep one width")
        dev = self.device
        state.add_selection(p.values.to(dev), p.indices.to(dev),  # prepare checked the ids
                            {n: f.to(dev) for n, f in p.features.items()}, checked=True,
                            counts=None if p.counts is None else
                            {n: c.to(dev) for n, c in p.counts.items()})
        if p.examples is not None:
            if state.examples is None:
                state.examples = TopExamples(p.n_neurons, self.examples,
                                             2 * self.context_radius + 1, dev)
            acts, rows, *where = p.examples
            if rows is not None and acts.device != dev:  # move the kept rows only
                acts, rows = acts.index_select(0, rows), None
            state.examples.update(acts.to(dev), *(t.to(dev) for t in where),
                                  rows=None if rows is None else rows.to(dev))
        state.skipped_nonfinite += p.skipped_nonfinite

    # -- merging ------------------------------------------------------------------------------
    @kernels.on_own_device
    def merge_(self, other: "Accumulator", ties: str = "first") -> "Accumulator":
        """Add ``other`` into this accumulator (same k, streams and vocabularies). ``ties``: which
        of equal top examples stay, this accumulator's (``"first"``, as if ``other``'s input came
        after this one's) or the lower document and position (``"place"``, for shards whose
        examples name documents by their index in one corpus)."""
        if not isinstance(other, Accumulator):
            raise InputError(f"merge_ takes an Accumulator, got {type(other).__name__}")
        differ = self.differences(other)
        if differ:
            raise InputError(f"cannot merge accumulators of other settings ({'; '.join(differ)}): "
                             f"their counts would mean different things (the same ids must "
                             f"mean the same features); collect both with the same settings")
        check_ties(ties)
        for name, layer in other.layers.items():  # every layer checked before any changes
            problem = self.layers[name].merge_problem(layer) if name in self.layers else None
            if problem:
                raise InputError(f"cannot merge layer {name!r}: {problem}; nothing was merged")
        for mine, theirs in zip(self.streams, other.streams):  # (how the strings read: a part
            mine.vocab.text = mine.vocab.text or theirs.vocab.text  # written before it was kept)
        for name, layer in other.layers.items():
            if name in self.layers:
                self.layers[name].merge_(layer, ties)
            else:
                mine = LayerState.create(layer.n_neurons, self.vocab_sizes, self.kind,
                                         self.dense_left, self.device)
                self.layers[name] = mine.merge_(layer, ties)
        return self

    def differences(self, other: "Accumulator") -> list[str]:
        """What of ``other``'s settings differ from this accumulator's, as merging the one into
        the other or loading a stage checks them: k, the streams (names, and vocabularies in
        order; not their sources: a hand-fed accumulator's ids are the caller's whatever its
        streams say) and the top examples (number, and context radius where kept)."""
        out = [f"k {self.k!r}, not {other.k!r}"] if other.k != self.k else []
        mine, theirs = [s.name for s in self.streams], [s.name for s in other.streams]
        if mine != theirs:
            return out + [f"streams {mine}, not {theirs}"]
        for a, b in zip(self.streams, other.streams):
            if list(a.vocab) != list(b.vocab):
                out.append(f"stream {a.name!r} has another vocabulary ({len(a.vocab)} features, "
                           f"not the same {len(b.vocab)} in the same order)")
        ex = [(x.examples, x.context_radius if x.examples else None) for x in (self, other)]
        if ex[0] != ex[1]:  # (the examples of one part only would pass for the whole's)
            out.append(f"top examples {ex[0][0]} (context radius {ex[0][1]}), not {ex[1][0]} "
                       f"(context radius {ex[1][1]})" if ex[0][0] and ex[1][0] else
                       f"top examples {ex[0][0]}, not {ex[1][0]}")
        return out

    @property
    def dense_left(self) -> int:
        """What is left of ``dense_budget`` for new dense states (bytes)."""
        return self.dense_budget - sum(layer.dense_memory for layer in self.layers.values())

    def empty_like(self) -> "Accumulator":
        """A new, empty accumulator with this one's streams and settings."""
        return Accumulator(self.streams, self.k, self.kind, self.dense_budget, self.nonfinite,
                           self.device, self.examples, self.context_radius)


def merge(a: Accumulator, b: Accumulator) -> Accumulator:
    """A new accumulator holding the sums of ``a`` and ``b`` (neither is changed)."""
    if not isinstance(a, Accumulator):
        raise InputError(f"merge takes two Accumulators, got {type(a).__name__}")
    return a.empty_like().merge_(a).merge_(b)


def same_sums(a: Accumulator, b: Accumulator, mass_rtol: float = 1e-12) -> bool:
    """Whether two accumulators hold the same sums: counts, peaks and totals exactly, mass within
    ``mass_rtol`` (float64 rounding of a different summation order)."""
    if not isinstance(a, Accumulator) or not isinstance(b, Accumulator):
        raise InputError(f"same_sums takes two Accumulators (Stage.accumulator() reads a "
                         f"stage's), got {type(a).__name__} and {type(b).__name__}")
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
