"""Feature streams: named integer features aligned with token positions.

A ``Stream`` says where its ids come from for each batch the collector runs:

- ``"input"``: the model's input token ids (the ``token`` stream);
- ``"predicted"``: argmax of the model's logits at each position;
- ``"label"``: one id per sequence, broadcast to its positions (a document's class);
- ``"feature"``: ids the caller provides per position (e.g. POS tags) in ``Batch.features``.

Id ``-1`` marks a position without a feature in that stream: it adds to no cell and is counted as
``missing`` in the stream's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError, whole_number
from .vocab import Vocabulary

SOURCES = ("input", "predicted", "label", "feature")
#: A stream's source by its name, where a dict ``{name: vocabulary}`` names streams (as ``txray
#: collect --streams`` does); any other name is a ``"feature"`` stream.
SOURCE_OF_NAME = {"token": "input", "predicted": "predicted", "label": "label"}


@dataclass
class Stream:
    """One feature stream: a name, its vocabulary and its source (see the module docstring)."""

    name: str
    vocab: Vocabulary
    source: str = "feature"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise InputError(f"stream {self.name!r}: unknown source {self.source!r}; "
                             f"use one of {', '.join(SOURCES)}")
        if not isinstance(self.vocab, Vocabulary):
            self.vocab = Vocabulary(self.vocab)


def streams_of(streams) -> list:
    """Streams given as a dict ``{name: vocabulary or Stream}`` as a list of ``Stream``: each
    vocabulary's source by its name (``SOURCE_OF_NAME``), as ``txray collect --streams`` names
    them; anything else is returned as a list, for the caller to check."""
    if isinstance(streams, Mapping):
        return [v if isinstance(v, Stream) else Stream(name, v, SOURCE_OF_NAME.get(name, "feature"))
                for name, v in streams.items()]
    return [] if streams is None else list(streams) if isinstance(streams, Iterable) else \
        [streams]  # (for the caller's check to name what it got)


def token_stream(vocab: Vocabulary, name: str = "token") -> Stream:
    """The model's input ids (source ``"input"``)."""
    return Stream(name, vocab, "input")


def predicted_stream(vocab: Vocabulary, name: str = "predicted") -> Stream:
    """The argmax of the model's logits at each position (source ``"predicted"``)."""
    return Stream(name, vocab, "predicted")


def label_stream(labels, name: str = "label") -> Stream:
    """One label per sequence, at each of its positions (source ``"label"``)."""
    return Stream(name, Vocabulary(labels), "label")


def pos_stream(tags, name: str = "pos") -> Stream:
    """Ids the caller gives per position in ``Batch.features[name]`` (source ``"feature"``)."""
    return Stream(name, Vocabulary(tags), "feature")


@dataclass
class Batch:
    """One forward pass worth of sequences.

    Attributes
    ----------
    inputs : Tensor or dict
        What the model is called with: ``model(inputs)`` or ``model(**inputs)``.
    input_ids : Tensor ``[B, T]``
        Token ids (source of ``"input"`` streams and the position grid).
    mask : Tensor ``[B, T]`` or None
        1/True for real positions; padded positions never count. When None and ``inputs`` is a
        dict whose ``input_ids`` are ``input_ids`` (a tokenizer's output; the same tensor or an
        equal copy, e.g. on another device), its ``attention_mask``; give it where
        ``input_ids`` are other ids (an encoder-decoder's decoder ids: their mask is not the
        encoder's ``attention_mask``).
    labels : Tensor ``[B]`` or None
        One id per sequence for ``"label"`` streams.
    features : dict of Tensor ``[B, T]``
        Ids per position for ``"feature"`` streams.
    n_units : int
        Corpus units (sequences) this batch consumes; the resume cursor advances by it.
    unit_ids : Tensor ``[B]`` or None
        The id the top examples record for each sequence (``examples_doc``). By default a
        sequence's index in the collection, counted from 0; collections of shards that are merged
        later give each sequence its id in the whole corpus instead, so that the merged examples
        name the right sequences. ``txray collect`` gives each window its document's index
        in the corpus.
    offsets : Tensor ``[B]`` or None
        The position of each sequence's first token in what ``unit_ids`` names (a window of a
        longer document starts further in); the top examples record positions from it
        (``examples_pos``). Default 0.
    context : Tensor ``[B]`` or None
        Leading positions of each sequence that are context only: run through the model (and
        shown around top examples) but not counted. Overlapping windows of a long document use
        it, so that every counted token has left context. Default none.
    """

    input_ids: torch.Tensor
    inputs: object = None
    mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    n_units: int | None = None
    unit_ids: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    context: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.input_ids, torch.Tensor):  # (the other fields take lists too)
            raise InputError(f"Batch.input_ids must be a torch.Tensor, got "
                             f"{type(self.input_ids).__name__}: convert it with "
                             f"torch.as_tensor(...)")
        if self.inputs is None:
            self.inputs = self.input_ids
        if self.mask is None and isinstance(self.inputs, Mapping):  # (a BatchEncoding too)
            # the mask the model is given is the one to count by (it counted padding when only
            # the inputs held it)
            given = self.inputs.get("attention_mask")
            if isinstance(given, torch.Tensor) and given.shape == self.input_ids.shape and \
                    same_ids(self.inputs.get("input_ids"), self.input_ids):
                self.mask = given.to(self.input_ids.device)  # (inputs moved to the model's)
        for what in ("mask", "labels", "unit_ids", "offsets", "context"):
            setattr(self, what, _ids_of(getattr(self, what), what))
        if not isinstance(self.features, Mapping):
            raise InputError(f"Batch.features is a dict {{stream name: ids [batch, time]}}, got "
                             f"{type(self.features).__name__}")
        self.features = {n: _ids_of(v, f"features[{n!r}]") for n, v in self.features.items()}
        self.n_units = int(self.input_ids.shape[0]) if self.n_units is None else \
            whole_number(self.n_units, "Batch.n_units (corpus units the batch consumes)")


def _ids_of(value, what: str):
    """A Batch field given as a list or an array, as a tensor; strings (labels or tags not yet
    encoded) and other values get one message."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    try:
        array = np.asarray(value)
        if array.dtype.kind in "USO":
            raise TypeError
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError):
        strings = any(isinstance(v, str) for v in np.ravel(np.asarray(value, dtype=object)))
        kind = "0/1 or bool values" if what == "mask" else "integer ids"
        fix = (": encode strings with the stream's vocabulary, e.g. vocab.encode(labels)"
               if strings and what not in ("mask", "unit_ids", "offsets", "context") else "")
        raise InputError(f"Batch.{what} must hold {kind} (a tensor, or a list or an array of one "
                         f"shape), got {type(value).__name__} {str(value)[:40]}{fix}") from None


def same_ids(given, ids: torch.Tensor) -> bool:
    """Whether the model's ``input_ids`` are the batch's ids: the same tensor, or equal values (a
    copy, or the ids moved to another device; the decoder ids of an encoder-decoder are not)."""
    if given is ids:
        return True
    if not isinstance(given, torch.Tensor) or given.shape != ids.shape:
        return False
    return bool(torch.equal(given, ids.to(given.device)))


def stream_features(streams: list[Stream], batch: Batch, logits=None) -> dict[str, torch.Tensor]:
    """Per-position ids ``[B, T]`` of every stream for ``batch``."""
    out = {}
    shape = tuple(batch.input_ids.shape)
    for s in streams:
        if s.source == "input":
            ids = batch.input_ids
        elif s.source == "predicted":
            if logits is None:
                raise _missing(s, "the model output has no logits (a tensor of shape "
                                  "[batch, time, vocab], an output with .logits or a dict "
                                  "with 'logits')")
            ids = predicted_ids(logits)
        elif s.source == "label":
            if batch.labels is None:
                raise _missing(s, "Batch.labels is None; give one label id per sequence")
            labels = torch.as_tensor(batch.labels)
            if labels.numel() != shape[0]:
                raise _missing(s, f"Batch.labels has {labels.numel()} ids (shape "
                                  f"{tuple(labels.shape)}) for {shape[0]} sequences; give one "
                                  f"label id per sequence")
            ids = labels.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        else:
            if s.name not in batch.features:
                raise _missing(s, f"Batch.features has no {s.name!r}; "
                                  f"give ids of shape {list(shape)}")
            ids = batch.features[s.name]
        out[s.name] = ids
    return out


def predicted_ids(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)``. Contiguous float32/float64 logits on the CPU take numpy's
    argmax, which gives the same ids (the first maximum; the first NaN where a row holds one)
    and is faster on the 2-core development machine: [8, 128, 49,152] logits in 10 ms against
    torch's 40 ms (random values), and 11 against 69 ms on SmolLM2's own."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64) and \
            logits.dim() >= 2 and logits.shape[-1] > 0 and logits.is_contiguous() and \
            not logits.requires_grad:
        return torch.from_numpy(logits.numpy().argmax(axis=-1).astype(np.int64, copy=False))
    return logits.argmax(dim=-1)


def _missing(stream: Stream, why: str):
    return InputError(f"stream {stream.name!r} (source {stream.source}): {why}")
