"""Merge stages: the sums of several complete stages (shards of one corpus, or parts of a corpus
split by file) written as one stage, exactly as one collection over all of them would hold them.

Stages are read one at a time, so memory holds the merged sums and one stage's.
"""

from __future__ import annotations

import json
import os

from ..accumulate.accumulator import Accumulator
from ..errors import InputError, StageExistsError, StoreError
from .reader import open_store
from .writer import StageWriter, as_written_before, differences, told, without_names

# what every part must share (the corpus may differ: a corpus split by file)
SHARED = ("model", "collection")


def _settings(meta: dict) -> dict:
    """What every part must share: model, collection and options (but the shard)."""
    options = {k: v for k, v in (meta.get("options") or {}).items() if k != "shard"}
    return {**{key: meta.get(key) for key in SHARED}, "options": options}


def _at(settings: dict, dotted: str) -> str:
    """The value at a dotted name of ``settings`` as JSON, or 'none' where it is absent."""
    value = settings
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return "none"
        value = value[key]
    return json.dumps(value, default=str)


def _both(name: str, a: str, b: str, where_a: str, where_b: str) -> str:
    """``name: A in a, B in b``, or the name alone where the values are too long to read."""
    if max(len(a), len(b)) > 60:
        return name
    return f"{name}: {a} in {where_a}, {b} in {where_b}"


def _check_parts(parts: list[tuple[str, str, dict]]) -> None:
    """Refuse parts that do not add up to one collection (see :func:`merge_stages`)."""
    first_name, first = parts[0][0], parts[0][2]
    names = [name for name, _, _ in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{', '.join(twice)} given twice: each part counts once")
    unfinished = [f"{name} is {meta.get('status')}" for name, _, meta in parts
                  if meta.get("status") != "complete"]
    if unfinished:
        them = "it" if len(unfinished) == 1 else "them"
        raise StoreError(f"{'; '.join(unfinished)}: finish {them} first (txray collect ... "
                         f"--resume), then merge")
    for name, _, meta in parts:
        # (a stage written before an entry existed is compared without it, as a resume does)
        mine, theirs = _settings(meta), _settings(first)
        mine, theirs = (without_names(as_written_before(mine, theirs)),
                        without_names(as_written_before(theirs, mine)))
        named = differences(theirs, mine)
        if named:
            values = "; ".join(_both(told(n), _at(theirs, n), _at(mine, n), first_name, name)
                               for n in named)
            hint = ""
            if named == ["options.context_overlap"]:
                want = _at(theirs, "options.context_overlap")
                hint = (f"; collect {name} again with --context-overlap "
                        f"{0 if want == 'none' else want} (none: 0; txray collect's default is "
                        f"8, at most a quarter of --max-length, and stages collected before "
                        f"that option have none)")
            raise InputError(f"{name} and {first_name} differ in {values}: only stages of one "
                             f"model collected the same way add up{hint}")
    shards = [(name, (meta.get("options") or {}).get("shard")) for name, _, meta in parts]
    if len(parts) == 1:  # a copy (of a shard too: it stays one, and merges with the others)
        return
    if any(s is not None for _, s in shards):
        if any(s is None for _, s in shards) or len({s[1] for _, s in shards}) != 1:
            held = "; ".join(f"{name}: " + (f"shard {s[0]}/{s[1]}" if s else "no shard")
                             for name, s in shards)
            raise InputError(f"merge all shards of one collection (--shard I/N with one N), and "
                             f"nothing else with them ({held})")
        for name, _, meta in parts:  # (before counting shards: two collections' shards would
            for key in ("corpus", "max_documents"):  # read as shards given twice)
                if without_names(meta).get(key) != without_names(first).get(key):
                    values = "" if key == "corpus" else \
                        f": {meta.get(key)} in {name}, {first.get(key)} in {first_name}"
                    fix = ("merge the shards of each collection on its own" if key == "corpus"
                           else "collect (or --resume) every shard with one --max-documents")
                    raise InputError(f"{name} and {first_name} are shards of different "
                                     f"collections ({key} differs{values}; {fix})")
        n = shards[0][1][1]
        seen = [s[0] for _, s in shards]
        twice = sorted({i for i in seen if seen.count(i) > 1})
        missing = sorted(set(range(n)) - set(seen))
        if twice or missing:
            raise InputError(f"shards of {n}: " + "; ".join(
                ([f"shard(s) {twice} given twice"] if twice else []) +
                ([f"shard(s) {missing} missing"] if missing else [])))
        return
    corpora = [without_names(meta).get("corpus") for _, _, meta in parts]
    for i, c in enumerate(corpora):
        if c is not None and c in corpora[:i]:
            raise InputError(f"{names[i]} and {names[corpora.index(c)]} were collected over the "
                             f"same corpus: their documents would count twice (merge shards of "
                             f"`collect --shard`, or stages over different files)")


def _collected(corpus) -> bool:
    """Whether a part's ``corpus`` is one ``txray collect`` read (files it hashed), or a merge of
    such parts: their documents are numbered by their index in the files."""
    if not isinstance(corpus, dict):
        return False
    if "merged" in corpus:
        return all(_collected(c) for c in corpus["merged"])
    return "files" in corpus


def _documents(meta: dict) -> int:
    """The documents a part's corpus holds: ``corpus_documents`` of a corpus read to its end
    (a document without tokens has an index but completes no window), else as far as its cursor
    shows."""
    if meta.get("corpus_documents") is not None:
        return int(meta["corpus_documents"])
    cursor = meta.get("cursor") or {}
    return max(int(cursor.get("documents", 0)), int((cursor.get("at") or {}).get("doc", -1)) + 1)


def _number_documents_from(acc: Accumulator, first: int) -> None:
    """Add ``first`` to the document of every top example of ``acc`` (empty slots stay -1)."""
    if first:
        for layer in acc.layers.values():
            if layer.examples is not None:
                doc = layer.examples.doc
                doc[doc >= 0] += first


def merge_stages(sources, store, stage: str, mode: str = "new", ties: str | None = None) -> dict:
    """Write the sums of ``sources`` (``[(store path, stage name), ...]``) as ``stage`` of
    ``store``; returns the new stage's summary.

    The sources must be complete stages of one model collected with the same settings (layers, k,
    streams and vocabularies, options); their corpora may differ (a corpus split by file). Shards
    of one ``txray collect --shard I/N`` must all be there, each once. The merged stage holds
    their summed sums and cursors (tokens, documents, units) and names its sources in
    ``merged_from``; its top examples are the best of all. Their documents keep their indices in
    the corpus for shards; parts collected by ``txray collect`` over different files number
    theirs on from the documents of the parts before them (as ``collect --corpus A --corpus B``
    numbers them); parts written from Python keep the ids they were given. ``mode`` as for :class:`StageWriter`. ``ties``: how equal top examples are
    settled (see ``Accumulator.merge_``); by default ``"place"`` for ``txray collect --shard``
    stages, else ``"first"``: shards collected from Python with ``Batch(unit_ids=...)`` pass
    ``ties="place"``.
    """
    sources = [(os.fspath(p), s) for p, s in sources]
    if not sources:
        raise InputError("merge needs a stage to read: name one or more sources (STORE or "
                         "STORE::STAGE; one is copied)")
    if mode not in ("new", "overwrite"):
        raise InputError(f"merge writes a new stage or replaces one (mode 'new' or 'overwrite'), "
                         f"not {mode!r}")
    target = (os.path.realpath(store), stage)
    if any((os.path.realpath(p), s) == target for p, s in sources):
        raise InputError(f"stage {stage!r} of {os.fspath(store)!r} is one of the sources: write "
                         f"the merge under another name (replacing a source while reading it "
                         f"could lose it)")
    try:  # the target first: a merge that cannot be written fails before reading any part
        StageWriter(store, stage, mode).precheck()
    except StageExistsError:
        raise StageExistsError(
            f"stage {stage!r} already exists in {os.fspath(store)!r}: replace it (txray merge "
            f"... --overwrite, mode='overwrite': a merge is run again, not resumed, also after "
            f"one stopped part-way), or choose another stage name") from None
    parts = []
    for path, name in sources:
        source = open_store(path)
        if name not in source.stages:
            raise InputError(f"{path!r} has no stage {name!r} (it has "
                             f"{', '.join(map(repr, source.stages)) or 'none'}): name the stage to "
                             f"take with --from-stage S, or as {path}::S")
        st = source.stage(name)
        parts.append((f"stage {name!r} of {path!r}", st, dict(st.meta)))
    _check_parts(parts)
    # shards name documents by their index in one corpus: equal examples go to the earlier
    # document, as in one collection; other parts keep the order given
    if ties is None:
        ties = "place" if (parts[0][2].get("options") or {}).get("shard") else "first"
    elif ties not in ("first", "place"):
        raise InputError(f"ties must be 'first' or 'place', got {ties!r}")
    # parts of a corpus split by file (txray collect's, which record their corpus) number their
    # documents on, as one collection over the files in the order given: documents of two files
    # would otherwise share indices
    renumber = ties == "first" and all(_collected(meta.get("corpus")) for _, _, meta in parts)
    acc: Accumulator | None = None
    cursor = {"units": 0, "documents": 0}
    first_doc = 0
    for _, st, meta in parts:
        part = st.accumulator()
        if renumber:
            _number_documents_from(part, first_doc)
            first_doc += _documents(meta)
        acc = part if acc is None else acc.merge_(part, ties)
        for key in cursor:
            cursor[key] += int((meta.get("cursor") or {}).get(key, 0))
    cursors = [meta.get("cursor") or {} for _, _, meta in parts]
    ats = [c["at"] for c in cursors if c.get("at")]
    if ties == "place" and ats and all(c.get("at") or not c.get("units") for c in cursors):
        # complete shards (empty ones too): all is counted up to the last window
        cursor["at"] = max(ats, key=lambda at: (at["doc"], at["start"]))
    first = parts[0][2]
    corpora = [meta.get("corpus") for _, _, meta in parts]
    identity = {key: value for key, value in _settings(first).items()
                if value is not None}
    if len(parts) == 1 and first.get("options"):  # a copy keeps what it is, a shard too
        identity["options"] = first["options"]
    if any(c is not None for c in corpora):  # (parts from Python may have none)
        one = all(without_names({"corpus": c}) == without_names({"corpus": corpora[0]})
                  for c in corpora)  # (a shard's copy of the corpus under another name too)
        identity["corpus"] = corpora[0] if one else {"merged": corpora}
    extra = {"merged_from": [f"{path}::{name}" for path, name in sources]}
    if "layouts" in first:  # one collection's: the same in every part
        extra["layouts"] = first["layouts"]
    if len(parts) == 1:  # a copy: a stage stopped at a limit continues with a higher one
        extra.update({k: first[k] for k in ("max_documents", "corpus_done", "corpus_documents")
                      if k in first})
    elif ties == "place" and "max_documents" in first:  # shards of one limit: a higher one continues
        extra["max_documents"] = first.get("max_documents")
        extra["corpus_done"] = all(meta.get("corpus_done", True) for _, _, meta in parts)
        if first.get("corpus_documents") is not None:  # (one corpus)
            extra["corpus_documents"] = first["corpus_documents"]
    elif renumber:  # the parts' files one after another
        extra["corpus_documents"] = first_doc
    with StageWriter(store, stage, mode, identity) as writer:
        writer.go_on = "run the merge again with --overwrite (mode='overwrite')"
        writer.commit(acc, cursor, "complete", extra)
    return {"store": os.fspath(store), "stage": stage, "sources": len(sources),
            "layers": list(acc.layers),
            "tokens": acc.tokens, **cursor}
