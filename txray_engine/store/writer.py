"""``StageWriter``: periodic, atomic snapshots of an ``Accumulator`` into one stage of a store.

A commit writes the whole state into a new snapshot group ``snap-NNNNNN`` inside the stage, then
switches the stage's ``snapshot`` attribute (one atomic ``zarr.json`` replace) together with the
corpus cursor, then deletes the previous snapshot. A run killed at any instant therefore leaves the
last committed snapshot and the cursor that matches it: resuming counts no token twice and loses none.

One writer per store at a time: the writer holds an exclusive ``flock`` on the store directory,
which the kernel releases when the process dies.
"""

from __future__ import annotations

import copy
import datetime as _dt
import fcntl
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import zarr

from ..accumulate.accumulator import Accumulator
from ..errors import InputError, StageExistsError, StoreError, StoreLockedError
from ..version import FORMAT_VERSION, __version__
from .format import (ATTR, VECTOR_CHUNK, check_version, damaged, fingerprint, group_attrs,
                     open_root, root_attrs, stream_nodes, write_hierarchy)
from .names import SNAPSHOT_PREFIX, VOCAB_GROUP, check_name, check_new_stage_name

MODES = ("new", "resume", "overwrite")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def differences(stored: dict, identity: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings of ``identity`` that differ from those ``stored`` with a stage.

    A stage killed before its first commit holds no settings: then nothing can be named.
    """
    out = []
    for key, value in identity.items():
        if key not in stored:
            continue
        old, new = stored[key], json.loads(json.dumps(value, default=str))
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{prefix}{key}.")
            # a setting only one side names (the stage's attributes hold more than the identity
            # only at the top)
            out += [f"{prefix}{key}.{k}" for k in old if k not in new]
            out += [f"{prefix}{key}.{k}" for k in new if k not in old]
        elif old != new:
            out.append(f"{prefix}{key}")
    return out


#: What a setting differing can mean where that is more than its name says.
TOLD = {"model.weights": "other weights, or the same ones loaded with another --dtype",
        "model.tokenizer.words": "a stage of an earlier engine, whose word tokenizer cut words "
                                 "at combining marks and at ’"}


def told(name: str) -> str:
    """A dotted setting name of :func:`differences`, with :data:`TOLD` where it says more."""
    return name + (f" ({TOLD[name]})" if name in TOLD else "")


#: Identity entries added after stages were first written, as paths: a stage written before
#: one was added is compared without it (and holds it from its next commit on).
ADDED_LATER = (("model", "weights"), ("model", "content"), ("model", "tokenizer", "vocabulary"),
               ("model", "tokenizer", "config"))
#: Identity entries taken out since (the document limit, kept beside the identity since it may
#: grow): a stage written with one is compared with its own value.
REMOVED_LATER = (("options", "max_documents"),)
#: What tells an input apart where its name does not: a name is left out of a comparison only
#: beside one of these (a stage written before its input's hash existed has its name alone).
HASHES = {"source": ("content",), "name": ("sha256", "config")}


def without_names(identity: dict) -> dict:
    """``identity`` without the names of its files (``model.source``, the tokenizer's
    ``name``, each corpus file's ``name``) where a hash of what they hold stands beside them:
    the same bytes under another name, as a job copies its inputs, are the same input; their
    hashes tell them apart."""
    def strip(value, drop):
        if isinstance(value, dict):
            return {k: strip(v, "name" if k in ("tokenizer", "files", "merged") else None)
                    for k, v in value.items()
                    if not (k == drop and any(h in value for h in HASHES[k]))}
        if isinstance(value, list):
            return [strip(v, drop) for v in value]
        return value
    out = dict(identity)
    if isinstance(out.get("model"), dict):
        out["model"] = strip(out["model"], "source")
    if isinstance(out.get("corpus"), dict):
        out["corpus"] = strip(out["corpus"], None)
    return out


def _renamed_only(stored: dict, identity: dict) -> bool:
    """Whether ``stored`` (a stage's attributes) holds ``identity`` but for file names: the
    stored fingerprint is that of its entries named by ``identity``, and they agree without
    names."""
    if any(key not in stored for key in identity):
        return False
    written = {key: stored[key] for key in identity}
    return stored.get("fingerprint") == fingerprint(written) and \
        fingerprint(without_names(written)) == fingerprint(without_names(identity))


def as_written_before(identity: dict, stored: dict) -> dict:
    """``identity`` as the engine that wrote the ``stored`` stage would have given it: without
    the :data:`ADDED_LATER` entries the stage lacks, with the :data:`REMOVED_LATER` ones it
    holds."""
    out = copy.deepcopy(identity)
    for path in ADDED_LATER + REMOVED_LATER:
        new, old = out, stored
        for key in path[:-1]:
            new = new.get(key) if isinstance(new, dict) else None
            old = old.get(key) if isinstance(old, dict) else None
        if not (isinstance(new, dict) and isinstance(old, dict)):
            continue
        if path in ADDED_LATER and path[-1] not in old:
            new.pop(path[-1], None)
        elif path in REMOVED_LATER and path[-1] in old:
            new[path[-1]] = old[path[-1]]
    return out


class StageWriter:
    """Write one stage.

    Parameters
    ----------
    path : str or Path
        Store directory (created when missing).
    stage : str
        Stage name (a checkpoint, a corpus, …).
    mode : "new", "resume" or "overwrite"
        ``new`` refuses an existing stage; ``resume`` continues an unfinished one (or starts it when
        absent); ``overwrite`` replaces it at the first commit (until then the old one stays).
    identity : dict
        JSON-able description of what is collected (e.g. ``model``, ``corpus``, ``options``),
        written into the stage's attributes; its fingerprint must match when resuming. Its keys
        must not be :data:`WRITER_KEYS`, the attributes the writer itself sets (``k``, ``layers``,
        ``streams``, … come from the accumulator).
    reopen : callable, optional
        Given a complete stage's attributes, whether ``resume`` may continue it (e.g. a
        collection that stopped at a document limit, resumed with a higher one); by default a
        complete stage is refused.
    """

    #: What to do once a failed write is fixed (a merge is run again instead).
    go_on = "go on with --resume (mode='resume')"

    def __init__(self, path, stage: str, mode: str = "new", identity: dict | None = None,
                 reopen=None):
        if mode not in MODES:
            raise StoreError(f"unknown write mode {mode!r}: use one of {', '.join(MODES)}")
        self.path = Path(path).absolute()  # (a chdir later writes the folder it locked)
        self.stage = check_name("stage", stage)
        self.mode = mode
        self.identity = identity or {}
        _check_keys("identity", self.identity)
        try:
            json.dumps(self.identity)
        except (TypeError, ValueError) as e:
            raise InputError(f"identity must be JSON (strings, numbers, lists, dicts): {e}; "
                             f"describe a model with txray_engine.collect.model_identity(model)") \
                from None
        self.fingerprint = fingerprint(self.identity)
        self.reopen = reopen
        self._fd: int | None = None
        self._release = None  # closes the descriptor when a writer is dropped unclosed
        self._created_dir = False
        self._seq = 0
        self._snapshot: str | None = None
        self._replace_pending = False
        self.cursor: dict = {}
        self.resumed = False

    def __repr__(self) -> str:
        state = "open" if self._fd is not None else "closed"
        return (f"StageWriter({str(self.path)!r}, stage {self.stage!r}, mode {self.mode!r}, "
                f"{state}; last snapshot {self._snapshot})")

    # -- opening --------------------------------------------------------------------------------
    def open(self) -> "StageWriter":
        """Lock the store and check the stage against the mode; nothing is written yet."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{str(self.path)!r} is a file, not a store directory: choose a path "
                             f"for the store")
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created_dir = True
        try:
            self._lock()
            self._remove_partial_files()
            self._check_writable()
            self._check()
        except BaseException:
            self.close()
            raise
        return self

    def precheck(self) -> None:
        """What :meth:`open` refuses without knowing the identity (a locked store, a stage that
        exists or is complete), checked and released at once: a job can fail in a second
        instead of after loading its model. Nothing is written."""
        identity, fingerprint = self.identity, self.fingerprint
        self.identity, self.fingerprint = None, None  # no fingerprint to compare yet
        try:
            self.open()
        finally:
            self.identity, self.fingerprint = identity, fingerprint
            self.close()
            self._replace_pending, self.resumed, self.cursor = False, False, {}
            self._snapshot, self._seq = None, 0

    def _lock(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            if not isinstance(exc, BlockingIOError):
                raise StoreError(f"cannot lock store {str(self.path)!r} ({exc}): a store needs a "
                                 f"file system with flock (a local disk)") from None
            raise StoreLockedError(
                f"store {str(self.path)!r} is being written by another writer: another process "
                f"(wait for it to finish), or, from Python, a StageWriter of this process that "
                f"is still open (close() it, or use `with StageWriter(...)`); one writer per "
                f"store at a time"
            ) from None
        # a writer dropped without close() (a notebook's cell that failed) closes its descriptor,
        # and with it the lock, when it is collected, instead of holding the store until exit
        self._release = weakref.finalize(self, os.close, self._fd)
        st = os.fstat(self._fd)
        self._locked = (st.st_dev, st.st_ino)

    def _moved(self) -> bool:
        """Whether the folder at the store's path is no longer the one this writer locked (moved,
        replaced by another store, or deleted while it ran): writing there would change a store
        no lock protects, or another store's stage."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._locked

    def _check_in_place(self) -> None:
        if self._moved():
            raise StoreError(f"the store folder {str(self.path)!r} was moved, replaced or deleted "
                             f"while this writer held it: nothing was written there; go on with "
                             f"--resume on the store where it is now")

    def _check_writable(self) -> None:
        """A store that cannot be written (a read-only disk or folder) fails now, not at the
        first flush, a minute of collection later."""
        try:
            fd, probe = tempfile.mkstemp(dir=self.path, suffix=".partial")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise StoreError(f"cannot write in store {str(self.path)!r}: {e.strerror or e}; "
                             f"choose a writable place, or make it writable") from None

    def _check(self) -> None:
        if (self.path / self.stage).is_symlink():  # (its snapshots would be replaced and
            # removed wherever the link points)
            raise StoreError(f"stage {self.stage!r} of {str(self.path)!r} is a symbolic link: a "
                             f"writer replaces and removes what a stage holds, so it writes only "
                             f"inside the store; copy the stage in, or write another stage")
        meta, stages = None, set()
        if any(self.path.iterdir()):  # (else a new, empty store)
            root = open_root(self.path, "r", writer=True)
            with damaged(f"store {str(self.path)!r}"):
                stages = set(root.group_keys())
                if self.stage in stages:
                    meta = group_attrs(root[self.stage])
        if meta is None:
            check_new_stage_name(self.stage, stages)
            return
        if self.mode == "new":
            raise StageExistsError(f"stage {self.stage!r} already exists in {str(self.path)!r}: "
                                   f"continue it (--resume, mode='resume') or replace it "
                                   f"(--overwrite, mode='overwrite'), or choose another stage "
                                   f"name")
        if self.mode == "overwrite":
            self._replace_pending = True
            # number on from the replaced stage: a reader of its last snapshot must not take the
            # new stage's first one for it
            self._seq = _numbered(meta)
            return
        check_version(meta, f"stage {self.stage!r}")  # (a stage of another version is replaced,
        # never continued)
        if meta.get("status") == "complete" and not (self.reopen and self.reopen(meta)):
            limit = meta.get("max_documents")
            more = (f" (it stopped at its limit of {limit} documents: resume with a higher "
                    f"--max-documents, or none, to continue it)"
                    if limit is not None and meta.get("corpus_done") is False else "")
            raise StageExistsError(f"stage {self.stage!r} is already complete: nothing to resume"
                                   f"{more}; collect it again with --overwrite "
                                   f"(mode='overwrite')")
        before = as_written_before(self.identity, meta) if self.fingerprint is not None else None
        if before is not None and meta.get("fingerprint") not in (self.fingerprint,
                                                                  fingerprint(before)) and \
                not _renamed_only(meta, before):
            # (file names alone are no difference: listed only when nothing else differs)
            changed = differences(without_names(meta), without_names(before)) or \
                differences(meta, before)
            added = sorted(k for k in before if k not in meta)
            if added and not changed and meta.get("snapshot") is not None:
                raise StageExistsError(
                    f"stage {self.stage!r} was started without {', '.join(added)}, which this "
                    f"identity gives (by an earlier engine, or from Python with fewer entries): "
                    f"it cannot be checked, so it is not continued; collect it again with "
                    f"--overwrite (mode='overwrite')")
            untold = sorted(k for k in meta if k not in WRITER_KEYS and k not in before and
                            k not in ("created", "merged_from"))
            what = (f"with other settings ({', '.join(map(told, changed))})" if changed else
                    f"with a different model, corpus or options (its attributes also hold "
                    f"{', '.join(untold)}: settings this identity leaves out, or what its "
                    f"commits added)" if untold else
                    "with a different model, corpus or options")
            raise StageExistsError(f"stage {self.stage!r} was started {what}; resume with the "
                                   f"same ones, or overwrite it (--overwrite, mode='overwrite')")
        if self.fingerprint is None:  # a precheck: nothing more to know, nothing to remove
            return
        self._snapshot = meta.get("snapshot")
        self._seq = _numbered(meta)
        self.cursor = dict(meta.get("cursor") or {})
        self.resumed = True
        self._remove_stale_snapshots()

    def load_into(self, acc: Accumulator) -> None:
        """Fill an empty accumulator with the committed snapshot (after a resume)."""
        if self._snapshot:
            from .reader import Store
            Store(self.path).stage(self.stage).load_into(acc)

    # -- committing -----------------------------------------------------------------------------
    def commit(self, acc: Accumulator, cursor: dict, status: str = "in_progress",
               extra: dict | None = None) -> None:
        """Write ``acc`` as the stage's new snapshot with ``cursor``, atomically. ``status``:
        ``"in_progress"`` (resumable) or ``"complete"``."""
        if self._fd is None:
            raise StoreError("the writer is not open")
        if status not in ("in_progress", "complete"):
            raise InputError(f"status must be 'in_progress' or 'complete', got {status!r}")
        if not isinstance(acc, Accumulator) or not isinstance(cursor, dict):
            raise InputError(f"commit takes an Accumulator and a cursor dict (e.g. {{'units': "
                             f"batches seen}}), got {type(acc).__name__} and "
                             f"{type(cursor).__name__}")
        _check_keys("extra", extra or {})
        self._check_in_place()
        for kind, names in (("layer", acc.layers), ("stream", [s.name for s in acc.streams])):
            for name in names:  # (before the stage is made: a refused name leaves nothing)
                check_name(kind, name)
        try:
            self._commit(acc, cursor, status, extra)
        except OSError as e:  # a full disk, a folder made read-only: the last snapshot stands
            try:
                self._remove_stale_snapshots()  # (this one's part: its space back)
            except OSError:
                pass
            where = f" ({e.filename})" if e.filename else ""
            raise StoreError(f"cannot write stage {self.stage!r} of {str(self.path)!r}: "
                             f"{e.strerror or e}{where}; the stage keeps its last flush "
                             f"({self._snapshot or 'none yet'}): free space, or make the folder "
                             f"writable, and {self.go_on}") from None

    def _commit(self, acc: Accumulator, cursor: dict, status: str, extra: dict | None) -> None:
        root = self._root_for_write()
        # (a replaced stage's numbers go on: no snapshot name is used twice)
        empty = {ATTR: {"kind": "stage", "status": "in_progress", "snapshot": None, "cursor": {},
                        "fingerprint": self.fingerprint, "numbered_to": self._seq}}
        if self._replace_pending:
            if self.stage in set(root.group_keys()):
                # the old stage becomes an empty one of this collection (one atomic rename of
                # its zarr.json) before its snapshots are deleted: a kill in between leaves a
                # stage --resume continues, never the old attributes over a half-deleted
                # snapshot (a recursive delete went in listing order)
                root[self.stage].attrs.put(empty)
            self._replace_pending = False
        if self.stage in set(root.group_keys()):
            sg = root[self.stage]
        else:  # born with attributes: a kill right after leaves a resumable, empty stage
            sg = root.create_group(self.stage, attributes=empty)
        meta = dict(root.attrs)[ATTR]
        order = list(meta.get("stage_order", []))
        if self.stage not in order:  # (an overwritten stage keeps its place; a kill between
            # creating the stage and listing it left it out for good)
            root.attrs.put({ATTR: {**meta, "stage_order": order + [self.stage]}})
        vocab = {ATTR: {"kind": "vocabularies",
                        "vocabularies": {s.name: list(s.vocab) for s in acc.streams}}}
        if VOCAB_GROUP not in set(sg.group_keys()):
            sg.create_group(VOCAB_GROUP, attributes=vocab)
        elif self._snapshot is None:  # the first snapshot: a replaced stage's are the old ones
            sg[VOCAB_GROUP].attrs.put(vocab)
        self._seq += 1
        name = f"{SNAPSHOT_PREFIX}{self._seq:06d}"
        self._remove_stale_snapshots(also=name)
        for groups, arrays in snapshot_nodes(acc, f"{sg.path}/{name}"):  # a layer at a time
            write_hierarchy(root.store, groups, arrays)
        meta = {"kind": "stage", "format_version": FORMAT_VERSION, "engine_version": __version__,
                "status": status, "snapshot": name, "cursor": dict(cursor),
                "fingerprint": self.fingerprint, "k": acc.k,
                "examples": {"m": acc.examples, "radius": acc.context_radius},
                "layers": {n: s.n_neurons for n, s in acc.layers.items()},
                "streams": {s.name: _stream_meta(s) for s in acc.streams},
                "documents": int(cursor.get("documents", 0)),
                "tokens": acc.tokens,
                "updated": _now(), **self.identity, **(extra or {})}
        prev = dict(sg.attrs).get(ATTR) or {}
        meta["created"] = prev.get("created", meta["updated"])
        if "merged_from" in prev:  # a merged stage, continued (an overwritten one starts anew)
            meta.setdefault("merged_from", prev["merged_from"])
        sg.attrs.put({ATTR: meta})  # the atomic switch
        self._snapshot = name
        self.cursor = dict(cursor)
        self._remove_stale_snapshots()

    def _remove_partial_files(self) -> None:
        """Delete temporary files of atomic writes a killed process left (``*.partial``), and
        its stage's folder left empty: a first write that failed (a full disk) after
        its folder was made, which Zarr would warn about at every reading."""
        for p in self.path.rglob("*.partial"):
            p.unlink(missing_ok=True)
        stage_dir = self.path / self.stage  # (its own stage's only: other folders are not ours)
        try:
            if stage_dir.is_dir() and not stage_dir.is_symlink() and not any(stage_dir.iterdir()):
                stage_dir.rmdir()
        except OSError:
            pass

    def _remove_stale_snapshots(self, also: str | None = None) -> None:
        """Delete snapshot folders other than the committed one (leftovers of killed commits,
        complete or not: a half-written folder is not even a Zarr group)."""
        stage_dir = self.path / self.stage
        if not stage_dir.is_dir() or self._moved():  # (another store's snapshots are not ours)
            return
        for child in stage_dir.iterdir():
            if child.name.startswith(SNAPSHOT_PREFIX) and child.is_dir() and \
                    (child.name != self._snapshot or child.name == also):
                try:
                    shutil.rmtree(child)
                except OSError as e:  # (rmtree names a file inside it alone)
                    raise OSError(e.errno, e.strerror, str(child)) from None

    def _root_for_write(self) -> zarr.Group:
        if (self.path / "zarr.json").is_file():
            return open_root(self.path, "r+", writer=True)
        # created with its attributes: a reader never sees a root without them
        return zarr.open_group(str(self.path), mode="w-", attributes=root_attrs())

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock; remove the store directory if this writer created it and wrote
        nothing."""
        moved = self._fd is not None and self._moved()
        if self._fd is not None:
            if self._release is not None:
                self._release.detach()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._created_dir and not moved and self.path.is_dir() and \
                not any(self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "StageWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


WRITER_KEYS = frozenset({"kind", "format_version", "engine_version", "status", "snapshot",
                         "numbered_to", "cursor", "fingerprint", "k", "examples", "layers",
                         "streams", "documents", "tokens", "updated", "created"})


def _check_keys(what: str, attrs: dict) -> None:
    """Refuse stage attributes that would replace the ones the writer sets (readers rely on them:
    ``snapshot`` names the data, ``streams`` its vocabularies)."""
    clash = sorted(WRITER_KEYS.intersection(attrs))
    if clash:
        raise InputError(f"{what} keys {clash} are stage attributes the store writes itself "
                         f"(docs/FORMAT.md): nest them under another key, e.g. "
                         f"{{'options': {{{clash[0]!r}: ...}}}}")


def _stream_meta(stream) -> dict:
    """A stream's entry in the stage attributes (``text`` only where its strings are spelled)."""
    meta = {"source": stream.source, "size": len(stream.vocab)}
    if stream.vocab.text is not None:
        meta["text"] = stream.vocab.text
    return meta


def _number(snapshot: str | None) -> int:
    """A snapshot's number (``snap-000012`` → 12; none yet → 0)."""
    return int(snapshot[len(SNAPSHOT_PREFIX):]) if snapshot else 0


def _numbered(meta: dict) -> int:
    """The last snapshot number a stage used: its snapshot's, or where a replaced stage's went
    (``numbered_to`` of a stage with no snapshot yet)."""
    return max(_number(meta.get("snapshot")), int(meta.get("numbered_to") or 0))


def snapshot_nodes(acc: Accumulator, base: str):
    """The snapshot of ``acc`` at path ``base``, one part per layer (the first with the snapshot's
    own group), each ``({group path: attributes}, {array path: (data, chunk length)})`` (the
    layout of docs/FORMAT.md). A generator: a flush writes each layer's cells and lets go of
    them before it takes the next's (their CSR copies of a state of many large layers, held
    all at once, came near the state's own size)."""
    groups = {base: {ATTR: {"kind": "snapshot", "layers": list(acc.layers)}}}
    for lname, s in acc.layers.items():
        layer = f"{base}/{check_name('layer', lname)}"
        groups[layer] = {ATTR: {"kind": "layer", "n_neurons": s.n_neurons, "tokens": s.tokens,
                                "skipped_nonfinite": s.skipped_nonfinite,
                                "alive": int((s.neuron_count > 0).sum())}}
        arrays = {f"{layer}/{k}": (a, VECTOR_CHUNK) for k, a in s.totals().items()}
        for sname, stats in s.stream_stats().items():
            path = f"{layer}/{check_name('stream', sname)}"
            groups[path], cells = stream_nodes(stats)
            arrays |= {f"{path}/{k}": v for k, v in cells.items()}
        yield groups, arrays
        groups = {}
    if groups:  # no layer: the snapshot's group alone
        yield groups, {}
