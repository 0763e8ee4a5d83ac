"""``collect_corpus``: the whole collection job behind ``txray collect``, resumable."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from ..capture.names import listed
from ..errors import CorpusError, InputError, StageExistsError, StoreError, Terminated
from ..features.pos import POS_VOCAB, pattern_tagger
from ..features.streams import Stream
from ..features.vocab import Vocabulary
from ..store.format import group_attrs, open_root
from .collector import Collector
from .corpus import Corpus
from .models import LoadedModel
from .sequences import batches, check_windows, windows

STREAM_NAMES = ("token", "pos", "label", "predicted")


def build_streams(names, loaded: LoadedModel, corpus: Corpus) -> tuple[list[Stream], dict]:
    """The streams named (token, pos, label, predicted) and what their ids need."""
    names = list(dict.fromkeys(listed(names) if isinstance(names, str) else names))  # ("a,b")
    unknown = [n for n in names if n not in STREAM_NAMES]
    if unknown or not names:
        raise InputError(f"unknown stream(s) {unknown}: choose from {', '.join(STREAM_NAMES)}")
    streams, needs = [], {"tagger": None, "labels": None}
    for n in names:
        if n == "token":
            streams.append(Stream("token", loaded.tokenizer.vocab, "input"))
        elif n == "predicted":
            streams.append(Stream("predicted", predicted_vocab(loaded), "predicted"))
        elif n == "pos":
            needs["tagger"] = pattern_tagger()
            streams.append(Stream("pos", POS_VOCAB, "feature"))
        else:
            labels = corpus.labels()
            if not labels:
                raise CorpusError("the corpus is empty: no labels found")
            needs["labels"] = Vocabulary(labels)
            streams.append(Stream("label", needs["labels"], "label"))
    return streams, needs


def predicted_vocab(loaded: LoadedModel) -> Vocabulary:
    """The tokenizer's vocabulary, and where the model's output layer is wider (a vocabulary
    padded to a multiple of 64 or 128, as Qwen2's and Llama 3's, or resized embeddings) a name
    for each id past it, ``<extra id N>``: an argmax there is a prediction too, of no string."""
    vocab = loaded.tokenizer.vocab
    head = loaded.model.get_output_embeddings() if loaded.hf and hasattr(
        loaded.model, "get_output_embeddings") else None
    width = getattr(head, "out_features", None) or (
        head.weight.shape[0] if isinstance(getattr(head, "weight", None), torch.Tensor) else 0)
    if width <= len(vocab):
        return vocab
    return Vocabulary([*vocab, *(f"<extra id {i}>" for i in range(len(vocab), width))], vocab.text)


DEFAULT_CONTEXT_OVERLAP = 8


@contextmanager
def stop_between_batches():
    """While inside, SIGTERM (a batch scheduler's stop before its kill) is taken between
    batches: the list yielded gets the signal's number, for the loop to flush what it has and
    stop. Outside the main thread (where Python takes signals) it does nothing."""
    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    before = signal.signal(signal.SIGTERM, lambda signum, frame: asked.append(signum))
    try:
        yield asked
    finally:  # (None: a handler set outside Python, which cannot be given back)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


#: Tokens per window unless given (or the model's context, where it is shorter).
DEFAULT_MAX_LENGTH = 128


def model_context(model) -> int | None:
    """The positions a Hugging Face model takes at most (its config's ``n_positions`` or
    ``max_position_embeddings``), or None where it does not say."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            kind = str(getattr(config, "model_type", ""))
            if "roberta" in kind or kind == "camembert":  # positions count from the padding
                value -= int(getattr(config, "pad_token_id", None) or 1) + 1  # id on: 514 → 512
            return value
    return None


def window_length(model, given: int | None) -> int:
    """``given`` tokens per window, refused past the model's context (a model of learned
    positions fails deep inside with an IndexError); None: :data:`DEFAULT_MAX_LENGTH`, or the
    model's context where it is shorter."""
    context = model_context(model)
    if given is None:
        return min(DEFAULT_MAX_LENGTH, context or DEFAULT_MAX_LENGTH)
    if context is not None and given > context:
        raise InputError(f"windows of {given} tokens are longer than the model takes ({context} "
                         f"positions, its config says): give --max-length {context} or less")
    return given


def context_overlap_for(store, stage: str, mode: str, max_length: int,
                        given: int | None = None) -> int:
    """The context overlap a collection uses: ``given``; else, resuming a stage that exists,
    the stage's own (0 for stages collected before overlaps); else
    :data:`DEFAULT_CONTEXT_OVERLAP` tokens, at most a quarter of the window.

    On SmolLM2's last MLP, 361 of 6,144 top examples sat on the first token of windows cut
    inside documents without an overlap, 26, 14, 22 and 23 with 4, 8, 16 and 32 tokens (the
    rate of any position): a causal LM gives a sequence's first token outlier activations, and a few
    tokens of context take that away, for 1/15 more forward compute on long documents."""
    if given is not None:
        return given
    options = _resumed(store, stage, mode).get("options")
    if isinstance(options, dict):  # (within another window length: the resume is refused for
        # that length, not for an overlap it cannot take)
        return min(int(options.get("context_overlap", 0)), max_length - 1)
    return min(DEFAULT_CONTEXT_OVERLAP, max_length // 4)


def _resumed(store, stage: str, mode: str) -> dict:
    """The attributes of the stage a resume continues, or {} (none yet, or not a resume)."""
    return stored_stage(store, stage) if mode == "resume" else {}


def check_shard_place(store, stage: str, shard: tuple[int, int] | None, mode: str) -> None:
    """Refuse to continue, or to be told to replace, a stage that holds another shard (a
    --store without '{shard}' for several shards): the stored shard's store is not this one's."""
    meta = stored_stage(store, stage)
    theirs = (meta.get("options") or {}).get("shard")
    if not meta or mode == "overwrite" or theirs == (list(shard) if shard else None):
        return
    held = f"shard {theirs[0]}/{theirs[1]}" if theirs else "a whole collection (no --shard)"
    this = f"shard {shard[0]}/{shard[1]}" if shard else "a whole collection"
    raise StageExistsError(f"stage {stage!r} of {str(store)!r} holds {held}, and this run is "
                           f"{this}: each shard writes a store of its own; put '{{shard}}' in "
                           f"--store (e.g. 'part-{{shard}}.zarr'), or choose another stage")


def stored_stage(store, stage: str) -> dict:
    """The attributes of ``stage`` in ``store``, or {} (no store or stage yet)."""
    if store is None:
        return {}
    try:
        meta = group_attrs(open_root(store)[stage])
    except (StoreError, KeyError, ValueError):
        return {}  # no store or stage yet (a resume starts it), or a name the writer refuses
        # with its own message
    return meta if isinstance(meta, dict) else {}


def more_documents(meta: dict, max_documents: int | None) -> bool:
    """Whether a complete stage stopped at a document limit that ``max_documents`` raises."""
    limit, done = meta.get("max_documents"), meta.get("corpus_done")
    old = (meta.get("options") or {}).get("max_documents")  # (engines before the limit was kept
    if done is None and isinstance(old, int):  # beside the identity: it stopped there if it
        limit, done = old, int(meta.get("documents") or 0) < old  # counted that many)
    if done is not False:  # (stages written without a limit, or knowing nothing of one)
        return False
    return max_documents is None or max_documents > int(limit or 0)


def _skipping(units, skip: int, reached: list):
    """``units`` after the first ``skip``; ``reached[0]``: whether there were that many."""
    for n, unit in enumerate(units):
        reached[0] = reached[0] or n == skip - 1
        if n >= skip:
            yield unit


def check_shard(shard) -> tuple[int, int] | None:
    """``(i, n)`` from a pair or ``"i/n"``, checked (0 ≤ i < n)."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        raise InputError(f"a shard is I/N (this process's shard and the number of shards, "
                         f"e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n}: N must be 1 or more and I in 0..N-1")
    return i, n


def collect_corpus(loaded: LoadedModel, corpus: Corpus, layers, streams=("token",), k=1, *,
                   store, stage, mode="new", batch_size=8, max_length: int | None = None,
                   max_documents: int | None = None, kind="auto", dense_budget=512 * 2**20,
                   nonfinite="error", flush_every=60.0, device="cpu", quiet=False,
                   examples: int = 0, shard: tuple[int, int] | None = None,
                   context_overlap: int | None = None, layouts: dict | None = None,
                   time_first: bool = False) -> dict:
    """Collect ``stage`` of ``store`` from ``corpus``; returns a summary of the run.

    ``context_overlap``: tokens each window after a document's first repeats from the one
    before as context only (not counted), so that no counted token but a document's first ones
    lacks left context; None: see :func:`context_overlap_for`. ``layouts``, ``time_first`` (a bool): as for :class:`Collector`.
    ``shard=(i, n)``: only the documents whose index in the corpus is ``i`` modulo ``n`` (of the
    first ``max_documents``), so that ``n`` processes (one per GPU, node or job) each collect one
    shard into their own store, and :func:`~txray_engine.store.merge_stages` adds them up.
    ``max_length``: tokens per window (see :func:`window_length`; a resumed stage's own unless
    given).
    """
    resumed = _resumed(store, stage, mode)  # (the stage a resume continues, read once)
    options = resumed.get("options") if isinstance(resumed.get("options"), dict) else {}
    stored = options.get("max_length")
    # a resumed stage keeps its windows unless told (as it keeps its overlap)
    max_length = stored if max_length is None and isinstance(stored, int) else \
        window_length(loaded.model, max_length)
    context_overlap = context_overlap_for(store, stage, mode, max_length, context_overlap)
    check_windows(max_length, context_overlap)
    stream_objs, needs = build_streams(streams, loaded, corpus)
    order = options.get("streams")
    if isinstance(order, list) and sorted(map(str, order)) == sorted(s.name for s in stream_objs):
        stream_objs.sort(key=lambda s: order.index(s.name))  # (a resume's streams are a set)
    sizes = resumed.get("streams") or {}
    stream_objs = [Stream(s.name, loaded.tokenizer.vocab, s.source) if s.source == "predicted" and
                   (sizes.get(s.name) or {}).get("size") == len(loaded.tokenizer.vocab) else s
                   for s in stream_objs]  # (a stage begun before the extra ids goes on without)
    streams = [s.name for s in stream_objs]
    shard = check_shard(shard)
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(device)  # this process's GPU (one per torchrun rank)
    # the document limit is not part of the identity: a stage that stopped at one continues
    # with a higher one (or none), the same documents in the same order and the rest after them
    identity = {"model": loaded.identity, "corpus": corpus.identity(),
                "options": {"max_length": max_length, "streams": list(streams),
                            "nonfinite": nonfinite, "examples": examples,
                            **({"context_overlap": context_overlap} if context_overlap else {}),
                            **({"shard": list(shard)} if shard else {})}}
    more = [False]  # whether the corpus has documents past max_documents
    reached = [False]  # whether the corpus (within the limit) reached where a resume continues
    start = time.monotonic()
    tokens = 0
    with Collector(loaded.model, layers, stream_objs, k, store=store, stage=stage, mode=mode,
                   identity=identity, kind=kind, dense_budget=dense_budget, nonfinite=nonfinite,
                   flush_every=flush_every, device=device, examples=examples,
                   reopen=lambda meta: more_documents(meta, max_documents),
                   allow_empty=shard is not None,  # a shard may hold no document
                   layouts=layouts, time_first=True if time_first else ()) as col:
        col.extra = {"max_documents": max_documents, "corpus_done": False}
        counted_before = col.accumulator.tokens
        skip = int(col.cursor.get("units", 0))
        at = col.cursor.get("at")  # the last unit counted: documents before it are not read again

        def indexed():
            for index, doc in enumerate(corpus):
                if max_documents is not None and index >= max_documents:
                    more[0] = True  # the corpus goes on past the limit
                    return
                if at is not None and index >= at["doc"]:
                    reached[0] = True
                if shard is not None and index % shard[1] != shard[0]:
                    continue
                if at is not None and (index < at["doc"] or index == at["doc"] and at["last"]):
                    continue  # counted before: neither tokenised nor tagged again
                yield index, doc

        units = windows(indexed(), loaded.tokenizer, max_length, needs["tagger"], needs["labels"],
                        context_overlap)
        if at is not None:
            units = (u for u in units if u.doc != at["doc"] or u.start > at["start"])
        elif skip:  # a cursor of an earlier version: count the windows off
            units = _skipping(units, skip, reached)
        total = None if quiet else corpus.count_documents()
        if total is not None and max_documents is not None:
            total = min(total, max_documents)
        if total is not None and shard is not None:
            total = len(range(shard[0], total, shard[1]))
        bar = tqdm(desc=f"collect {stage}", total=total, unit="doc", disable=quiet,
                   dynamic_ncols=True, initial=int(col.cursor.get("documents", 0)))
        try:
            with stop_between_batches() as asked:
                for batch, docs_done, n_tok, last in batches(units, batch_size,
                                                             loaded.tokenizer.pad_id, loaded.hf,
                                                             device):
                    # set before the step: a flush inside it commits the cursor with the batch
                    col.cursor["at"] = {"doc": last.doc, "start": last.start, "last": last.last}
                    col.step(batch, documents=docs_done)
                    tokens += n_tok
                    bar.update(docs_done)
                    bar.set_postfix_str(f"{tokens / max(time.monotonic() - start, 1e-9):,.0f} "
                                        f"tok/s", refresh=False)
                    if asked:  # SIGTERM: the batch is whole; keep it, then stop
                        col.flush()
                        raise Terminated(asked[0], flushed=col.writer is not None)
        finally:
            bar.close()
        if skip and not reached[0]:  # raises: the with-block commits nothing
            raise InputError(f"stage {stage!r} has counted {col.cursor.get('documents', 0)} "
                             f"documents, past where --max-documents {max_documents} stops: "
                             f"resume with a limit of at least the documents it has read, or "
                             f"none; nothing was written")
        # stopped by the corpus, not by the limit: nothing more to continue with a higher one
        col.extra["corpus_done"] = not more[0]
        if not more[0]:  # its documents, those without a token too (what a merge numbers on from)
            col.extra["corpus_documents"] = corpus.count_documents()
        cursor = dict(col.cursor)
    elapsed = time.monotonic() - start
    counted = col.accumulator.tokens - counted_before  # without positions skipped for non-finite values
    return {"store": str(store), "stage": stage, "layers": col.layers,
            "layouts": col.capture.other_layouts,
            "states": {n: {s: st.kind for s, st in layer.streams.items()}
                       for n, layer in col.accumulator.layers.items()},
            # what the sums hold in memory (a sparse state grows with the cells it has seen)
            "state_bytes": sum(st.nbytes for layer in col.accumulator.layers.values()
                               for st in layer.streams.values()),
            "streams": list(streams),
            "k": k, "tokens_this_run": counted, "positions_read": tokens,
            "documents": cursor["documents"],
            "units": cursor["units"], "resumed_from_units": skip,
            "skipped_nonfinite": {n: s.skipped_nonfinite for n, s in col.accumulator.layers.items()
                                  if s.skipped_nonfinite},
            "seconds": round(elapsed, 2),
            "tokens_per_second": round(tokens / elapsed, 1) if elapsed > 0 else None}
