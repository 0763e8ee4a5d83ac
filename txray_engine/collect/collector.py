"""``Collector``: run a model over batches, capture layers, select, accumulate, stream to a store."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import Callable, Iterable

import torch
from torch import nn

from ..accumulate.accumulator import Accumulator
from ..accumulate.examples import context_windows
from ..accumulate.state import DEFAULT_DENSE_BUDGET
from ..capture.hooks import LayerCapture
from ..errors import CorpusError, InputError, whole_number
from ..features.streams import Batch, Stream, same_ids, stream_features
from ..store.format import fingerprint
from ..store.names import check_name
from ..store.writer import StageWriter


def _needs_decoder_ids(model: nn.Module, kwargs: dict) -> bool:
    """Whether an encoder-decoder (T5) is called with its encoder's ids only: it then reads the
    same ids, shifted right, in its decoder (teacher-forced, as BART makes its own decoder
    inputs): each decoder position t has read the tokens before t."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) and \
        hasattr(model, "_shift_right") and "input_ids" in kwargs and \
        not {"decoder_input_ids", "decoder_inputs_embeds", "labels"} & set(kwargs)


def default_forward(model: nn.Module, batch: Batch, time_first: bool = False):
    """Call ``model(**inputs)`` for a dict (any mapping) of inputs, else ``model(inputs)``; inputs the model's
    ``forward`` cannot take are refused with what to give instead. ``time_first``: the model
    takes ``[time, batch]`` inputs, so each input tensor of the batch's ``[batch, time]`` is
    given transposed."""
    inputs = batch.inputs
    if time_first:
        shape = tuple(batch.input_ids.shape)
        turn = (lambda x: x.transpose(0, 1) if isinstance(x, torch.Tensor) and x.dim() >= 2
                and tuple(x.shape[:2]) == shape else x)
        inputs = {k: turn(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) \
            else turn(inputs)
    # (a tokenizer's BatchEncoding is a Mapping, not a dict)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
    if _needs_decoder_ids(model, kwargs):  # T5: the input, shifted right, as BART does itself
        kwargs["decoder_input_ids"] = model._shift_right(kwargs["input_ids"])
    try:
        return model(*args, **kwargs)
    except TypeError:  # the signature is checked only then: nothing per batch on the way
        try:
            inspect.signature(model.forward).bind(*args, **kwargs)
        except TypeError as e:
            raise InputError(f"{type(model).__name__}.forward cannot take the batch's inputs "
                             f"({e}): from Python, give Batch(inputs={{argument: tensor, ...}}) "
                             f"with its arguments, or Collector(..., forward=lambda model, "
                             f"batch: model(...)); the command line calls model(ids), or a "
                             f"Hugging Face model with input_ids= and attention_mask=, so a "
                             f"model that needs more is collected from Python") from None
        except ValueError:  # no signature to check (a builtin)
            pass
        raise  # a TypeError from inside the model


def _counted(batch: Batch) -> torch.Tensor | None:
    """The positions to count: ``batch.mask`` without each sequence's leading context."""
    if batch.context is None:
        return batch.mask
    ids = batch.input_ids
    if ids.dim() != 2:
        raise InputError(f"Batch.context needs input_ids [B, T], got shape {tuple(ids.shape)}")
    context = _per_sequence(batch.context, ids.shape[0], "context", "integer counts", ids.device)
    after = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) >= context.unsqueeze(1)
    # (the mask keeps its values: one that is not 0/1 is refused with the positions, not cast)
    return after if batch.mask is None else torch.as_tensor(batch.mask).masked_fill(~after, 0)


def output_logits(output, shape: tuple | None = None, time_first: bool = False
                  ) -> torch.Tensor | None:
    """Logits ``[B, T, V]`` of a model output: ``.logits`` (or a dict's ``"logits"``), a 3-D
    tensor, or a tuple's first.

    ``shape``: the batch's ``(B, T)``; with it, logits flattened to ``[B·T, V]`` (as PyTorch's
    word-language-model example returns them) are unflattened, and logits ``[T, B, V]`` of a
    model not declared time-first are refused with the fix. ``time_first``: the model's logits
    are ``[T, B, V]`` (or ``[T·B, V]``)."""
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        x = output.logits
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        x = output["logits"]
    elif isinstance(output, torch.Tensor):
        x = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        x = output[0]
    else:
        return None
    if shape is not None and len(shape) == 2 and x.dim() == 2 and x.shape[0] == shape[0] * shape[1]:
        x = x.reshape(*(shape[::-1] if time_first else shape), x.shape[1])
    if x.dim() != 3:
        return None
    if time_first:
        return x.transpose(0, 1)
    if shape is not None and len(shape) == 2 and shape[0] != shape[1] and \
            tuple(x.shape[:2]) == tuple(shape[::-1]):
        raise InputError(f"the model's logits have shape {tuple(x.shape)}, [time, batch, vocab] "
                         f"for this batch of {shape[0]} sequences of {shape[1]} positions: a "
                         f"time-first model; say so with Collector(..., time_first=True) "
                         f"(txray collect --time-first), which also gives it its inputs "
                         f"time-first")
    return x


class Collector:
    """Context manager around a model: every :meth:`step` runs one batch and adds its statistics.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch model; it is run under ``torch.no_grad()`` and not modified. Inside the
        context it is in eval mode (no dropout: the same input gives the same statistics), and
        every module gets its own mode back on exit; ``eval_mode=False`` leaves the modes alone.
    layers : list of str
        Module paths or glob patterns (``model.layers.*.mlp.act_fn``).
    streams : list of Stream, or dict
        Feature streams (token, POS, predicted token, label, …). A dict ``{name: vocabulary}``
        takes each stream's source from its name as ``txray collect`` does: ``token`` the input
        ids, ``predicted`` the logits' argmax, ``label`` the batch's labels, any other name
        ``Batch.features``.
    k : int or "all"
        Neurons kept per position.
    store, stage : path and name, optional
        Stream the sums into this stage of a Zarr store, with periodic atomic flushes.
    mode : "new", "resume" or "overwrite"
        What to do when the stage exists (see :class:`StageWriter`). After a resume,
        :attr:`cursor` tells how many corpus units were already counted: skip them.
    identity : dict, optional
        Model/corpus/options description stored with the stage and checked on resume. The
        collection settings (resolved layers, k, streams and their vocabularies, non-finite
        policy, examples) are added to it as ``collection``: a resume must match them too.
    flush_every : float
        Seconds between flushes (0 = after every step); at least 10 times the last flush's
        own time, so that flushing a large state (whole snapshots, growing with the cells
        seen) takes under a tenth of the run.
    forward : callable, optional
        ``forward(model, batch) -> output``; defaults to :func:`default_forward`.
    kind, dense_budget, nonfinite, device, examples, context_radius
        As for :class:`~txray_engine.accumulate.Accumulator` (``device``: the model's by default).
    layouts : dict, optional
        Layer name or pattern → ``"batch_first"``, ``"time_first"`` or ``"channels_first"``
        (see :mod:`~txray_engine.capture.layout`): for layers whose module does not say how its
        output is laid out (recurrent, ``batch_first=False`` attention and ``*1d`` sequence
        modules are recognised). A wrong layout cannot always be told from a shape.
    time_first : list of str, or True
        Layers whose outputs are ``[time, batch, neurons]`` (as ``layouts``); ``True``: the
        whole model works time-first: it is given its inputs ``[time, batch]`` (the batch
        stays ``[batch, time]``), its logits are ``[time, batch, vocab]``, and layers not
        recognised otherwise are time-first; ``False`` (or none given): no layer is.
    reopen : callable, optional
        Given a complete stage's attributes, whether ``mode="resume"`` may continue it (see
        :class:`StageWriter`); :attr:`extra` holds attributes added to every commit.
    allow_empty : bool
        Commit a stage that saw no position (a shard without documents) instead of refusing it.

    On leaving the context without an exception the stage is committed as complete. On an
    exception nothing more is written: the store keeps its last flush, which a resume continues.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], streams: list[Stream],
                 k: int | str = 1, *, store=None, stage: str | None = None, mode: str = "new",
                 identity: dict | None = None, kind: str = "auto",
                 dense_budget: int = DEFAULT_DENSE_BUDGET, nonfinite: str = "error",
                 flush_every: float = 60.0, time_first: Iterable[str] | bool = (),
                 layouts: dict | None = None,
                 forward: Callable | None = None, device=None, examples: int = 0,
                 context_radius: int = 5, eval_mode: bool = True, reopen=None,
                 allow_empty: bool = False):
        if (store is None) != (stage is None):
            raise InputError("give both store and stage (the store path and the stage's name), "
                             "or neither (sums in memory only)")
        self.model = model
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
        self.accumulator = Accumulator(streams, k=k, kind=kind, dense_budget=dense_budget,
                                       nonfinite=nonfinite, device=device, examples=examples,
                                       context_radius=context_radius)
        self.streams = self.accumulator.streams
        self.time_first = time_first is True
        self.capture = LayerCapture(model, layers, () if isinstance(time_first, bool) or
                                    time_first is None else time_first,
                                    layouts, "time_first" if self.time_first else "batch_first")
        # what shapes the statistics is part of the identity a resume must match: resuming with
        # another k or another layer list would mix statistics of two different collections
        collection = {"layers": self.capture.names, "k": self.accumulator.k,
                      "streams": [{"name": s.name, "source": s.source,
                                   "vocabulary": fingerprint(list(s.vocab))} for s in self.streams],
                      "nonfinite": nonfinite, "examples": int(examples),
                      "context_radius": int(context_radius),
                      **self.capture.identity(),
                      **({"model_time_first": True} if self.time_first else {})}
        if store is not None:  # names a flush would refuse, refused before any forward pass
            for name in self.capture.names:  # (the accumulator checked the streams')
                check_name("layer", name)
        self.writer = (StageWriter(store, stage, mode, {**(identity or {}), "collection": collection},
                                   reopen=reopen) if store is not None else None)
        self.extra: dict = {}  # more stage attributes for every commit (e.g. a run's limits)
        self.flush_every = float(flush_every)
        self.forward = forward or (
            (lambda m, b: default_forward(m, b, time_first=True)) if self.time_first
            else default_forward)
        self.cursor = {"units": 0, "documents": 0}
        self.eval_mode = eval_mode
        self.allow_empty = allow_empty
        self._modes: list = []  # (module, training) to restore on exit
        self._entered = False
        self._last_flush = time.monotonic()
        self._flush_seconds = 0.0  # the last flush's own time
        self._dirty = False

    @property
    def layers(self) -> list[str]:
        return self.capture.names

    def __repr__(self) -> str:
        where = (f"stage {self.writer.stage!r} of {str(self.writer.path)!r}"
                 if self.writer is not None else "in memory")
        return (f"Collector({type(self.model).__name__}: {', '.join(self.capture.names)}; "
                f"{where}; {self.cursor['units']} units so far)")

    def __enter__(self) -> "Collector":
        if self._entered:
            raise InputError("this Collector is already entered: step it inside its one `with` "
                             "block (a second would hook every layer twice)")
        if self.writer is not None:
            self.writer.open()
            try:
                if self.writer.resumed:
                    self.writer.load_into(self.accumulator)
                    self.cursor.update(self.writer.cursor)
            except BaseException:
                self.writer.close()
                raise
        try:
            self.capture.__enter__()
            self.capture.recording = False  # (only a step's forward pass is counted)
        except BaseException:
            if self.writer is not None:
                self.writer.close()
            raise
        if self.eval_mode:
            self._modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
        self._entered = True
        return self

    def step(self, batch: Batch, documents: int = 0) -> None:
        """Run one batch and add it; ``documents`` = corpus documents it completes."""
        if not self._entered:
            raise InputError("use the Collector as a context manager: `with Collector(...) as "
                             "col: col.step(batch)` (entering it installs the hooks and opens "
                             "the store)")
        self.capture.clear()  # (what a hook of its own may have left)
        try:
            self.capture.recording = True
            with torch.no_grad():
                output = self.forward(self.model, batch)
            acts = self.capture.take()
        finally:
            self.capture.recording = False
            self.capture.clear()
        acts = _pad_short(acts, batch, self.capture.padded)
        shape = tuple(batch.input_ids.shape)
        acts = _unflattened(acts, shape, self.capture.layouts)
        self._check_layouts(acts, shape)
        predicted = [s for s in self.streams if s.source == "predicted"]
        logits = output_logits(output, shape, self.time_first) if predicted else None
        if logits is not None and isinstance(output, (tuple, list)) and \
                logits.shape[-1] < max(len(s.vocab) for s in predicted):
            raise InputError(f"the predicted stream reads the first tensor of the model's "
                             f"output tuple as logits: it has {logits.shape[-1]} values per "
                             f"position, fewer than the stream's {len(predicted[0].vocab)} "
                             f"features, so it is not them; return the logits first, or give "
                             f"Collector(..., forward=...) that returns them")
        features = stream_features(self.streams, batch, logits)
        where = self._where(batch) if self.accumulator.examples else None
        # validate every layer before adding any, so a bad batch changes nothing (the layers
        # share the batch's positions: they are checked and kept once)
        prepared = self.accumulator.prepare_batch(acts, features, _counted(batch), where)
        for p in prepared:
            self.accumulator.commit(p)
        self.cursor["units"] += int(batch.n_units)
        self.cursor["documents"] += whole_number(documents, "documents")
        self._dirty = True
        due = self.flush_every and max(self.flush_every, 10 * self._flush_seconds)
        if self.writer is not None and time.monotonic() - self._last_flush >= due:
            self.flush()

    def _check_layouts(self, acts: dict, shape: tuple) -> None:
        """A layer whose output, laid out as taken, does not have the batch's positions is
        refused with the fix, where its shape tells one: the layout that fits (a layout the
        caller gave, or batch-first by default), or, for a torch module that says it is
        time-first but meets [batch, time] inputs, ``time_first=True`` for the model. Otherwise
        (e.g. a convolution that shortens the sequence) the accumulator names the mismatch; a
        shape that fits either way (as many sequences as positions) cannot be told."""
        if len(shape) != 2:
            return
        for name, a in acts.items():
            taken = self.capture.layouts[name]
            if a.dim() != 3 or tuple(a.shape[:2]) == shape:
                continue
            raw = tuple(a.shape) if taken == "batch_first" else \
                (a.shape[1], a.shape[0], a.shape[2]) if taken == "time_first" else \
                (a.shape[0], a.shape[2], a.shape[1])  # the module's own output
            fits = [lay for lay, lead in (("batch_first", raw[:2]), ("time_first", raw[1::-1]),
                                          ("channels_first", (raw[0], raw[2])))
                    if lead == shape and lay != taken]
            what = f"its output has shape {raw}"
            if name in self.capture.recognised:
                # the module's own flag or type: its layout is not in doubt, the inputs are
                if taken == "time_first" and not self.time_first and "batch_first" in fits:
                    raise InputError(
                        f"layer {name!r}: {what}, [batch, time, neurons] for this batch of "
                        f"{shape[0]} sequences of {shape[1]} positions, while the module is "
                        f"time-first: the model gives it [batch, time] inputs unturned, so it "
                        f"takes [time, batch] inputs itself; say so with time_first=True "
                        f"(txray collect --time-first)")
                if taken == "batch_first" and self.time_first and "time_first" in fits:
                    raise InputError(
                        f"layer {name!r}: {what}, [time, batch, neurons] for this batch of "
                        f"{shape[0]} sequences of {shape[1]} positions, while the module is "
                        f"batch-first: the model was given its inputs turned to [time, batch] "
                        f"(time_first=True, --time-first) but takes [batch, time]; leave "
                        f"time_first out")
                continue
            if taken != "batch_first" and name not in self.capture.given:
                # time-first as the whole model was declared (time_first=True)
                if "batch_first" in fits:
                    raise InputError(
                        f"layer {name!r}: {what}, [batch, time, neurons] for this batch of "
                        f"{shape[0]} sequences of {shape[1]} positions, in a model declared "
                        f"time-first (time_first=True, --time-first): if the model takes "
                        f"[batch, time] inputs, leave time_first out; if only this layer is "
                        f"batch-first, give layouts={{{name!r}: 'batch_first'}} (txray collect "
                        f"--layout {name}=batch_first)")
                continue
            if not fits:
                continue  # the accumulator names the mismatch
            hint = fits[0]
            how = f"taken as {taken}" + (" (given)" if name in self.capture.given else "")
            relayout = (f"give its layout with Collector(..., layouts={{{name!r}: {hint!r}}}) "
                        f"(txray collect --layout {name}={hint})")
            if hint == "time_first" and not self.time_first:
                fix = (f"if the model takes [time, batch] inputs, declare it with "
                       f"time_first=True (txray collect --time-first); if only this layer's "
                       f"output is time-first (the model turns it), {relayout}")
            else:
                fix = relayout
            raise InputError(f"layer {name!r}: {what}, {how}, which does not give this batch's "
                             f"{shape[0]} sequences of {shape[1]} positions; {hint} does: {fix}")

    def _where(self, batch: Batch) -> dict:
        """Unit index in the stream, position (from the sequence's first token: the pads of a
        left-padded one, by its inputs' attention_mask, are not counted) and input-token context
        of every position."""
        ids = batch.input_ids
        b, t = ids.shape[0], ids.shape[1] if ids.dim() > 1 else 1
        unit = (self.cursor["units"] + torch.arange(b, device=ids.device)
                if batch.unit_ids is None else _per_sequence(batch.unit_ids, b, "unit_ids",
                                                             "integer ids", ids.device))
        doc = unit.unsqueeze(1).expand(b, t)
        pos = torch.arange(t, device=ids.device).unsqueeze(0).expand(b, t)
        attention = batch.inputs.get("attention_mask") if isinstance(batch.inputs, Mapping) \
            and same_ids(batch.inputs.get("input_ids"), ids) else None  # (the ids' own mask,
        # not an encoder's beside a decoder's ids)
        if isinstance(attention, torch.Tensor) and tuple(attention.shape) == (b, t):
            # left padding: a sequence's positions count from its first token, not the pads
            pos = pos - (attention == 0).int().cumprod(dim=1).sum(dim=1, keepdim=True).to(pos)
        if batch.offsets is not None:
            pos = pos + _per_sequence(batch.offsets, b, "offsets", "integer positions",
                                      ids.device).unsqueeze(1)
        ctx = context_windows(ids.reshape(b, t), batch.mask, self.accumulator.context_radius)
        shape = tuple(ids.shape)
        return {"doc": doc.reshape(shape), "pos": pos.reshape(shape),
                "context": ctx.reshape(*shape, -1)}

    def flush(self, status: str = "in_progress") -> None:
        """Commit the current sums and cursor to the store."""
        if self.writer is None:
            return
        start = time.monotonic()
        layouts = self.capture.other_layouts
        self.writer.commit(self.accumulator, self.cursor, status,
                           {**self.extra, **({"layouts": layouts} if layouts else {})})
        self._last_flush = time.monotonic()
        self._flush_seconds = self._last_flush - start
        self._dirty = False

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self.allow_empty and not self.accumulator.tokens and \
                    not any(s.skipped_nonfinite for s in self.accumulator.layers.values()):
                raise CorpusError("no positions were collected: the corpus has no text (or, "
                                  "from Python, every position was masked); check the corpus "
                                  "(and the batches' masks)")
            if exc_type is None and self.writer is not None:
                self.flush(status="complete")
        finally:
            self._entered = False
            for module, training in self._modes:
                module.training = training
            self._modes = []
            self.capture.remove()
            if self.writer is not None:
                self.writer.close()


def _unflattened(acts: dict, shape: tuple, layouts: dict) -> dict:
    """Outputs of one row per position flattened to ``[B·T, N]`` (OPT's MLP, a mixture of
    experts' router) as ``[B, T, N]`` (``[T·B, N]`` of a time-first layer as its ``[T, B, N]``
    turned); other 2-D outputs are refused: they are not one row per position."""
    if len(shape) != 2:
        return acts
    out = dict(acts)
    for name, a in acts.items():
        if a.dim() != 2 or a.shape[0] == shape[0] != shape[0] * shape[1]:
            continue  # (one row per sequence: the accumulator says so, with what to pick)
        if a.shape[0] != shape[0] * shape[1]:
            raise InputError(f"layer {name!r}: its output has shape {tuple(a.shape)}, not one "
                             f"row for each of the batch's {shape[0]} × {shape[1]} positions "
                             f"(e.g. an expert that sees only the tokens routed to it); choose a "
                             f"module with a row per position (list them with `txray layers`)")
        out[name] = a.reshape(shape[1], shape[0], -1).transpose(0, 1) \
            if layouts.get(name) == "time_first" else a.reshape(*shape, -1)
    return out


def _pad_short(acts: dict, batch: Batch, padded: set) -> dict:
    """A packed sequence's or a nested tensor's output (layers ``padded``) comes padded to the
    batch's longest sequence, which may be shorter than the batch (padded to a fixed length):
    zero-pad it to the batch's positions when the mask leaves the missing ones out, as it does
    for padding."""
    ids = batch.input_ids
    if ids.dim() < 2 or batch.mask is None or not padded:
        return acts
    t = ids.shape[1]
    short = {name: a for name, a in acts.items() if name in padded and a.dim() == 3
             and a.shape[0] == ids.shape[0] and a.shape[1] < t}
    if not short:
        return acts
    mask = torch.as_tensor(batch.mask)
    if mask.shape != ids.shape:
        return acts  # the accumulator names the mismatch
    out = dict(acts)
    for name, a in short.items():
        if not mask[:, a.shape[1]:].bool().any():
            out[name] = torch.nn.functional.pad(a, (0, 0, 0, t - a.shape[1]))
    return out


def _per_sequence(values, b: int, name: str, what: str, device) -> torch.Tensor:
    """``Batch.<name>``: one integer per sequence, as int64 on ``device``."""
    t = torch.as_tensor(values)
    if t.shape != (b,) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"Batch.{name} must be {what}, one per sequence ({b}), got {t.dtype} "
                         f"of shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)
