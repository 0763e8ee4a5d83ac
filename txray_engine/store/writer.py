"""``StageWriter``: periodic, atomic snapshots of an ``Accumulator`` into one stage of a store.

A commit writes the whole state into a new snapshot group ``snap-NNNNNN`` inside the stage, then
switches the stage's ``snapshot`` attribute (one atomic ``zarr.json`` replace) together with the
corpus cursor, then deletes the previous snapshot. A run killed at any instant therefore leaves the
last committed snapshot and the cursor that matches it: resuming counts no token twice and loses none.

One writer per store at a time: the writer holds an exclusive ``flock`` on the store directory,
which the kernel releases when the process dies.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import shutil
from pathlib import Path

import zarr

from ..accumulate.accumulator import Accumulator
from ..errors import StageExistsError, StoreError, StoreLockedError
from ..version import FORMAT_VERSION, __version__
from .format import (ATTR, SNAPSHOT_PREFIX, VECTOR_CHUNK, VOCAB_GROUP, check_name, group_attrs,
                     open_root, root_attrs, write_array, write_stats)

MODES = ("new", "resume", "overwrite")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        JSON-able description of what is collected (model, corpus, k, layers, streams, options).
        Its fingerprint must match when resuming.
    """

    def __init__(self, path, stage: str, mode: str = "new", identity: dict | None = None):
        if mode not in MODES:
            raise StoreError(f"unknown write mode {mode!r}: use one of {', '.join(MODES)}")
        self.path = Path(path)
        self.stage = check_name("stage", stage)
        self.mode = mode
        self.identity = identity or {}
        from .format import fingerprint
        self.fingerprint = fingerprint(self.identity)
        self._fd: int | None = None
        self._created_dir = False
        self._seq = 0
        self._snapshot: str | None = None
        self._replace_pending = False
        self.cursor: dict = {}
        self.resumed = False

    # -- opening --------------------------------------------------------------------------------
    def open(self) -> "StageWriter":
        """Lock the store and check the stage against the mode; nothing is written yet."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{str(self.path)!r} is a file, not a store directory: choose a path "
                             f"for the store")
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created_dir = True
        self._lock()
        try:
            self._check()
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise StoreLockedError(f"store {str(self.path)!r} is being written by another process; "
                                   f"wait for it to finish (one writer per store at a time)") from None

    def _check(self) -> None:
        if not any(self.path.iterdir()):
            return  # a new, empty store
        root = open_root(self.path, "r")
        if self.stage not in set(root.group_keys()):
            return
        if self.mode == "new":
            raise StageExistsError(f"stage {self.stage!r} already exists in {str(self.path)!r}: "
                                   f"pass --resume to continue it or --overwrite to replace it, or "
                                   f"choose another stage name")
        if self.mode == "overwrite":
            self._replace_pending = True
            return
        meta = group_attrs(root[self.stage])
        if meta.get("status") == "complete":
            raise StageExistsError(f"stage {self.stage!r} is already complete: nothing to resume; "
                                   f"pass --overwrite to collect it again")
        if meta.get("fingerprint") != self.fingerprint:
            raise StageExistsError(f"stage {self.stage!r} was started with a different model, "
                                   f"corpus or options; resume with the same ones, or pass "
                                   f"--overwrite")
        self._snapshot = meta.get("snapshot")
        self._seq = int(self._snapshot[len(SNAPSHOT_PREFIX):]) if self._snapshot else 0
        self.cursor = dict(meta.get("cursor") or {})
        self.resumed = True

    def load_into(self, acc: Accumulator) -> None:
        """Fill an empty accumulator with the committed snapshot (after a resume)."""
        if self._snapshot:
            from .reader import Store
            Store(self.path).stage(self.stage).load_into(acc)

    # -- committing -----------------------------------------------------------------------------
    def commit(self, acc: Accumulator, cursor: dict, status: str = "in_progress",
               extra: dict | None = None) -> None:
        """Write ``acc`` as the stage's new snapshot with ``cursor``, atomically."""
        if self._fd is None:
            raise StoreError("the writer is not open")
        root = self._root_for_write()
        if self._replace_pending:
            if self.stage in set(root.group_keys()):
                del root[self.stage]
            self._replace_pending = False
        if self.stage in set(root.group_keys()):
            sg = root[self.stage]
        else:
            sg = root.create_group(self.stage)
            vg = sg.create_group(VOCAB_GROUP)
            vg.attrs.put({ATTR: {"kind": "vocabularies",
                                 "vocabularies": {s.name: list(s.vocab) for s in acc.streams}}})
        self._seq += 1
        name = f"{SNAPSHOT_PREFIX}{self._seq:06d}"
        if name in set(sg.group_keys()):  # a leftover of a killed commit
            del sg[name]
        snap = sg.create_group(name)
        for layer, state in acc.layers.items():
            lg = snap.create_group(check_name("layer", layer))
            for key, arr in state.totals().items():
                write_array(lg, key, arr, VECTOR_CHUNK)
            for sname, stats in state.stream_stats().items():
                write_stats(lg.create_group(check_name("stream", sname)), stats)
            lg.attrs.put({ATTR: {"kind": "layer", "n_neurons": state.n_neurons,
                                 "tokens": state.tokens,
                                 "skipped_nonfinite": state.skipped_nonfinite,
                                 "alive": int((state.neuron_count > 0).sum())}})
        snap.attrs.put({ATTR: {"kind": "snapshot", "layers": list(acc.layers)}})
        old = self._snapshot
        meta = {"kind": "stage", "format_version": FORMAT_VERSION, "engine_version": __version__,
                "status": status, "snapshot": name, "cursor": dict(cursor),
                "fingerprint": self.fingerprint, "k": acc.k,
                "layers": {n: s.n_neurons for n, s in acc.layers.items()},
                "streams": {s.name: {"source": s.source, "size": len(s.vocab)} for s in acc.streams},
                "documents": int(cursor.get("documents", 0)),
                "tokens": max((s.tokens for s in acc.layers.values()), default=0),
                "updated": _now(), **self.identity, **(extra or {})}
        prev = dict(sg.attrs).get(ATTR) or {}
        meta["created"] = prev.get("created", meta["updated"])
        sg.attrs.put({ATTR: meta})  # the atomic switch
        self._snapshot = name
        self.cursor = dict(cursor)
        for child in list(sg.group_keys()):
            if child.startswith(SNAPSHOT_PREFIX) and child != name:
                del sg[child]
        del old

    def _root_for_write(self) -> zarr.Group:
        if (self.path / "zarr.json").is_file():
            return open_root(self.path, "r+")
        root = zarr.open_group(str(self.path), mode="w-")
        root.attrs.put(root_attrs())
        return root

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock; remove the store directory if this writer created it and wrote
        nothing."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._created_dir and self.path.is_dir() and not any(self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "StageWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

