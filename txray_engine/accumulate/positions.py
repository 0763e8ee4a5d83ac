"""The positions of one batch, prepared once for all its layers.

The layers captured from one forward pass share their positions: the same mask, the same feature
ids per stream, the same documents and contexts. :func:`batch_positions` validates them and keeps
the unmasked ones once per batch (per device), where a per-layer ``observe`` would redo it for
every layer (and on a GPU wait for the device several times per layer: boolean indexing and id
checks each read a size or a bound back). :func:`read_back` brings the numbers the checks need
back from the devices with one wait per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import txray_kernels as kernels

from ..errors import InputError
from .state import position_counts


@dataclass
class Positions:
    """The kept positions of a batch on one device.

    ``lead``: the positions' shape (the activations' shape without the neuron dimension);
    ``index``: flat indices of the kept positions (``None``: all are kept); ``features``: each
    stream's ids at the kept positions (int64 ``[R]``); ``where``: ``(doc, pos, context)`` of the
    kept positions, for top examples (``None`` when not asked); ``counts``: the streams'
    position counts, made on first use (:meth:`position_counts`).
    """

    lead: tuple
    index: torch.Tensor | None
    features: dict[str, torch.Tensor]
    where: tuple | None = None
    counts: dict = field(default_factory=dict)  # (stream, vocabulary size) -> position counts
    #: a mask that is not bool: whether it holds values other than 0 and 1 (a 0-d tensor read
    #: back with the batch's id bounds, then :meth:`check_mask`), and the mask
    unchecked_mask: tuple | None = None

    def check_mask(self, bad: bool) -> None:
        """Raise the mask's error where ``bad`` (the read-back of ``unchecked_mask``)."""
        if bad:
            check_mask_values(self.unchecked_mask[1])

    def position_counts(self, name: str, n_features: int) -> torch.Tensor:
        """How many of stream ``name``'s kept ids fall in each count bin
        (``state.position_counts``), made once for all the layers of the batch."""
        key = (name, n_features)
        if key not in self.counts:
            self.counts[key] = position_counts(self.features[name], n_features)
        return self.counts[key]

    def position_of(self, row: int) -> tuple:
        """The multi-index in ``lead`` of kept row ``row`` (for error messages)."""
        flat = int(row) if self.index is None else int(self.index[row])
        return tuple(int(x) for x in torch.unravel_index(torch.tensor(flat), self.lead)) \
            if self.lead else ()


def batch_positions(layer: str, acts_shape: tuple, device: torch.device, streams, features,
                    mask=None) -> Positions:
    """Check the ids and mask of a batch whose activations have shape ``acts_shape`` (``layer``
    names one of them in messages) and keep its unmasked positions on ``device``. Ids are checked
    against the vocabularies separately (:func:`id_bounds_parts`), ``where`` after them
    (:func:`keep_where`)."""
    lead = tuple(acts_shape[:-1])
    names = [s.name for s in streams]
    missing = [name for name in names if name not in features]
    if missing:
        raise InputError(f"layer {layer!r}: no ids given for stream(s) {missing}")
    extra = set(features) - set(names)
    if extra:
        raise InputError(f"unknown stream(s) {sorted(extra)}: the accumulator has {names}")
    index, unchecked = None, None
    if mask is not None:
        mask = torch.as_tensor(mask, device=device)
        if tuple(mask.shape) != lead:
            raise _mismatch(layer, "mask", tuple(mask.shape), acts_shape, "")
        keep = mask.reshape(-1)
        if keep.dtype != torch.bool:  # checked when read back with the id bounds (on a GPU:
            nonzero = keep != 0  # no second wait)
            unchecked = ((nonzero & (keep != 1)).any(), keep)
            keep = nonzero
        index = torch.nonzero(keep).squeeze(1)  # on a GPU: the batch's one wait for a size
        if index.shape[0] == keep.shape[0]:
            index = None
    flat = {}
    for name in names:
        f = torch.as_tensor(features[name], device=device)
        if tuple(f.shape) != lead:
            raise _mismatch(layer, f"stream {name!r}", tuple(f.shape), acts_shape,
                            "; give one id per position")
        if f.dtype.is_floating_point or f.dtype == torch.bool or f.is_complex():
            raise InputError(f"stream {name!r}: ids must be integers, got {f.dtype}")
        ids = f.reshape(-1).long()
        if f.dtype == torch.uint64 and bool((ids < 0).any()):  # wrapped: 2**64 - 1 → -1
            raise InputError(f"stream {name!r}: uint64 ids of 2**63 or more are out of range "
                             f"for any vocabulary; give ids in 0..V-1 (as int64, -1 = missing)")
        flat[name] = _kept(ids, index)
    return Positions(lead, index, flat, unchecked_mask=unchecked)


def check_mask_values(mask: torch.Tensor) -> None:
    """A mask that is not bool holds 1 (real position) and 0 (padding) only: an additive attention
    mask (0 = keep, -inf = pad) would otherwise count exactly the padding."""
    if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
        bad = mask[(mask != 0) & (mask != 1)][0].item() if not mask.is_complex() else "complex"
        raise InputError(f"mask holds {bad!r}: a mask is True or 1 at real positions and False or "
                         f"0 at padding (an attention_mask); an additive mask (0 = keep, -inf = "
                         f"pad) becomes one with mask == 0")


def _mismatch(layer: str, what: str, shape: tuple, acts_shape, fix: str) -> InputError:
    """The error for positions (``shape``) that do not match the activations' leading axes."""
    lead = tuple(acts_shape[:-1])
    if not lead:
        fix = ("; activations need a position axis: [positions, neurons] or "
               "[batch, positions, neurons]")
    elif len(shape) > len(lead) and shape[:len(lead)] == lead:  # e.g. (B, T) against (B,)
        fix = ("; the layer gives one vector per sequence, not one per position: choose a "
               "layer with a position axis (list them with `txray layers`)")
    elif len(lead) > len(shape) and shape and lead[:1] == shape[:1]:  # e.g. (B, H, T) vs (B, T)
        fix = (f"; the layer's output has {len(acts_shape)} axes, more than [batch, time, "
               f"neurons] (attention heads, a 2-D feature map): choose a layer with one vector "
               f"per position, or give reshaped activations from a hook of your own "
               f"(Accumulator.observe)")
    return InputError(f"layer {layer!r}: {what} has shape {shape} but the activations have "
                      f"{lead} positions (shape {tuple(acts_shape)}){fix}")


def _kept(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t.index_select(0, index)


def keep_where(layer: str, where, pos: Positions, device: torch.device, width: int) -> None:
    """Check ``where`` (``doc``, ``pos`` and ``context`` of width ``width`` per position, for top
    examples) and keep it at the kept positions, in ``pos.where``."""
    lead, index = pos.lead, pos.index
    if not where or not all(key in where for key in ("doc", "pos", "context")):
        raise InputError(f"layer {layer!r}: top examples need where={{'doc', 'pos', "
                         f"'context'}} for every position (the Collector provides them)")
    doc, positions = (torch.as_tensor(where[key], device=device) for key in ("doc", "pos"))
    ctx = torch.as_tensor(where["context"], device=device)
    if tuple(doc.shape) != lead or tuple(positions.shape) != lead or \
            tuple(ctx.shape) != (*lead, width):
        raise InputError(f"layer {layer!r}: example doc/pos must have shape {lead} and "
                         f"context {(*lead, width)}")
    pos.where = (_kept(doc.reshape(-1).long(), index), _kept(positions.reshape(-1).long(), index),
                 _kept(ctx.reshape(-1, width).long(), index))


def id_bounds_parts(positions: Positions) -> list:
    """Per stream with kept positions, its ``(min, max)`` id: ints on the CPU (one numba pass),
    else a 2-element tensor still on the device, for :func:`read_back`."""
    names = [name for name, f in positions.features.items() if f.numel()]
    tensors = [positions.features[name] for name in names]
    if tensors and tensors[0].device.type == "cpu" and kernels.cpu.AVAILABLE:
        return list(zip(names, kernels.id_bounds(tensors)))
    return [(name, kernels.targets.bounds_tensor(t)) for name, t in zip(names, tensors)]


def read_back(parts: list) -> list:
    """``parts`` with every tensor replaced by its value(s) as Python numbers (a 0-d tensor by a
    number, others by a tuple), reading all the tensors of one device back in one wait."""
    out = list(parts)
    by_device: dict = {}
    for i, part in enumerate(parts):
        if isinstance(part, torch.Tensor):
            by_device.setdefault(part.device, []).append(i)
    for where in by_device.values():
        tensors = [parts[i].reshape(-1).to(torch.int64) for i in where]
        values = torch.cat(tensors).tolist()
        start = 0
        for i, t in zip(where, tensors):
            got = values[start:start + t.numel()]
            out[i] = got[0] if parts[i].dim() == 0 else tuple(got)
            start += t.numel()
    return out
