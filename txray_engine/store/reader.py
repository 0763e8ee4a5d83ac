"""Readers: open a store, list its stages, read layers and streams as scipy/torch matrices."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..accumulate.stats import SparseStats
from ..errors import (InputError, StageChangedError, StageNotReadyError, StoreError,
                      whole_number)
from ..features.text import TEXT_KINDS
from ..features.vocab import Vocabulary
from .format import (ATTR, REWRITE, check_version, damage, damaged, group_attrs,
                     open_root, read_arrays, read_stats, row_wrong, stage_attrs_wrong)
from .names import SNAPSHOT_PREFIX, VOCAB_GROUP

if TYPE_CHECKING:  # reading a store needs neither torch nor the kernels: they load where a
    import torch  # stage becomes an Accumulator again (`txray info` starts in a fraction)

    from ..accumulate.accumulator import Accumulator
    from ..accumulate.layer import LayerState


def open_store(path: str | os.PathLike) -> "Store":
    """Open a txray store for reading."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"open_store takes the store's path, got {type(path).__name__}")
    return Store(path)


def read_again(read, tries: int = 5):
    """``read()``, called again while a running collection replaces the snapshot under it
    (``StageChangedError``), at most ``tries`` times: each call must open the stage afresh."""
    for attempt in range(tries):
        try:
            return read()
        except StageChangedError:
            if attempt == tries - 1:
                raise


def _unknown(kind: str, name: str, known, where: str = "this store") -> StoreError:
    return StoreError(f"unknown {kind} {name!r}: {where} has {', '.join(map(repr, known)) or 'none'}")


class _Listing:
    """``name in x`` and ``for name in x`` over the names ``x`` lists (``_names``): with
    ``__getitem__`` alone, Python tried ``x[0]``, ``x[1]``, … and the store refused ``0``."""

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)


class Store(_Listing):
    """A txray store: a Zarr hierarchy with one group per stage."""

    def __init__(self, path):
        self.path = Path(path)
        self.root = open_root(self.path, "r")
        self.meta = group_attrs(self.root)

    def __repr__(self) -> str:
        def status(name):
            try:
                return self.stage(name).status
            except StoreError:  # a stage a writer has begun but not yet committed
                return "no snapshot yet"
        stages = ", ".join(f"{n} ({status(n)})" for n in self.stages) or "none"
        return f"Store({str(self.path)!r}; stages: {stages})"

    @property
    def stages(self) -> list[str]:
        """Stage names in the order they were first created (e.g. pretrained, then finetuned)."""
        with damaged(f"store {str(self.path)!r}"):
            present = {k for k in self.root.group_keys() if not k.startswith(".")}
        order = [n for n in self.meta.get("stage_order", []) if n in present]
        return order + sorted(present - set(order))

    def stage(self, name: str) -> "Stage":
        """The stage ``name`` (``store[name]`` too; ``name in store`` and ``for name in store``
        go over :attr:`stages`)."""
        if name not in self.stages:
            raise _unknown("stage", name, self.stages)
        return Stage(self, name)

    __getitem__ = stage
    _names = property(lambda self: self.stages)

    def size_on_disk(self, path=None) -> int:
        """Bytes of the store's files (or of those under ``path``)."""
        total = 0
        for root, _, files in os.walk(self.path if path is None else path):  # a writer may
            # delete files meanwhile
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_size
                except FileNotFoundError:
                    pass
        return total

    def info(self) -> dict:
        """A summary: stages with status, tokens, layers and streams, and the size on disk."""
        out = {"path": str(self.path), "format_version": self.meta.get("format_version"),
               "engine_version": self.meta.get("engine_version"),
               "size_bytes": self.size_on_disk(), "stages": {}}
        for name in self.stages:
            out["stages"][name] = read_again(lambda: self._stage_info(name))
        return out

    def _stage_info(self, name: str) -> dict:
        try:
            st = self.stage(name)
        except StageNotReadyError:
            return {"status": "no snapshot yet", "tokens": 0}
        return {"status": st.status, "tokens": st.tokens, "k": st.k,
                "documents": st.cursor.get("documents"), "units": st.cursor.get("units"),
                "max_documents": st.meta.get("max_documents"),
                "corpus_done": st.meta.get("corpus_done"),
                "skipped_nonfinite": st.skipped_nonfinite(),
                "layers": st.meta.get("layers", {}), "streams": st.meta.get("streams", {}),
                "layouts": st.layouts,
                "model": st.meta.get("model"), "corpus": st.meta.get("corpus"),
                "shard": (st.meta.get("options") or {}).get("shard"),
                "merged_from": st.meta.get("merged_from"),
                # a flush being written, or one a writer stopped between its commit and its
                # clean-up left (the stage's next writer removes it)
                "other_snapshot_bytes": sum(
                    self.size_on_disk(p) for p in (self.path / name).glob(f"{SNAPSHOT_PREFIX}*")
                    if p.is_dir() and p.name != st.meta.get("snapshot"))}


class Stage(_Listing):
    """One stage: metadata, vocabularies and layers of its committed snapshot."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = name
        with damaged(f"stage {name!r}"):
            self.group = store.root[name]
            self.meta = group_attrs(self.group)
        check_version(self.meta, f"stage {name!r}")
        snap = self.meta.get("snapshot")
        with damaged(f"stage {name!r}"):
            try:  # opened by name: a half-written snapshot a killed flush left is not listed
                self.snapshot = self.group[snap] if snap else None
            except KeyError:
                self.snapshot = None
        if snap is not None and self.snapshot is None:
            self._check_current()  # a writer's flush removed it since its meta was read
        if snap is None:  # a writer's first flush, in progress or killed: the stage is fine
            raise StageNotReadyError(f"stage {name!r} has no snapshot yet: a collection is "
                                     f"writing its first one, or was stopped before it; wait "
                                     f"for it, or continue it with `txray collect ... --resume`")
        if self.snapshot is None:
            raise StoreError(f"stage {name!r} has no committed snapshot ({snap!r}): the store is "
                             f"damaged; {REWRITE}")
        wrong = stage_attrs_wrong(self.meta)
        if wrong:
            raise damage(f"stage {name!r}", wrong)

    @contextmanager
    def reading(self, what: str):
        """Read part of the committed snapshot: a failure is the store's damage, unless a writer
        has committed a newer snapshot since this stage was opened (removing the old one); that is
        said as such, since the store is fine (and zarr's warnings about the nodes it found
        gone are not shown)."""
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                with damaged(what):
                    yield
            except StoreError:
                self._check_current()
                raise
            # a writer switches the pointer before it deletes the old snapshot: while the
            # pointer still names ours, nothing we read can have been half-deleted (missing
            # chunks read as zeros, without an error)
            self._check_current()
        for w in seen:  # (the read stands: what it warned of stands too)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _check_current(self) -> None:
        try:  # the stage's own zarr.json, read directly: a cheap check after every read
            now = json.loads((self.store.path / self.name / "zarr.json").read_text())[
                "attributes"][ATTR].get("snapshot")
        except Exception:
            now = None
        if now != self.meta.get("snapshot"):
            raise StageChangedError(f"stage {self.name!r} was updated by a writer since it was "
                                    f"opened (snapshot {self.meta.get('snapshot')!r} is now "
                                    f"{now!r}): open the stage again to read the new sums") \
                from None

    def __repr__(self) -> str:
        docs = self.cursor.get("documents")
        return (f"Stage({self.name!r}, {self.status}; k={self.k!r}, {self.tokens} tokens"
                f"{f', {docs} documents' if docs else ''}; layers: {', '.join(self.layers)}; "
                f"streams: {', '.join(self.streams)})")

    status = property(lambda self: self.meta.get("status"))
    tokens = property(lambda self: int(self.meta.get("tokens", 0)))
    k = property(lambda self: self.meta.get("k"))
    cursor = property(lambda self: dict(self.meta.get("cursor", {})))
    layers = property(lambda self: list(self.meta.get("layers", {})))
    streams = property(lambda self: list(self.meta.get("streams", {})))

    @property
    def layouts(self) -> dict:
        """``{layer: "time_first" | "channels_first"}`` for the layers the collection read other
        than batch-first: the stage's ``layouts``, or, for stages without it (merged ones, or
        collected before it existed), what its ``collection`` settings name (the layers given as
        time-first and those whose layout earlier versions did not take)."""
        if "layouts" in self.meta:
            return dict(self.meta["layouts"])
        collection = self.meta.get("collection") or {}
        return {**{n: "time_first" for n in collection.get("time_first", [])},
                **collection.get("layouts", {})}

    def skipped_nonfinite(self) -> dict:
        """``{layer: positions skipped}`` for the layers where ``--skip-nonfinite`` skipped any."""
        counts = {name: self.layer(name).skipped_nonfinite for name in self.layers}
        return {name: n for name, n in counts.items() if n}

    @cached_property
    def _vocabularies(self) -> dict:
        with damaged(f"vocabularies of stage {self.name!r}"):
            return group_attrs(self.group[VOCAB_GROUP])["vocabularies"]

    @cached_property
    def _vocab_objects(self) -> dict:
        return {}

    def vocab(self, stream: str) -> Vocabulary:
        """The stream's vocabulary (built once per ``Stage``: a layer's checks ask for it)."""
        if stream not in self._vocabularies:
            raise _unknown("stream", stream, list(self._vocabularies), f"stage {self.name!r}")
        if stream not in self._vocab_objects:
            text = self.meta.get("streams", {}).get(stream, {}).get("text")
            self._vocab_objects[stream] = Vocabulary(self._vocabularies[stream],
                                                     text if text in TEXT_KINDS else None)
        return self._vocab_objects[stream]

    def accumulator(self, kind: str = "auto", dense_budget: int | None = None,
                    device="cpu") -> Accumulator:
        """The stage's sums as an ``Accumulator`` (to merge stages, or to keep collecting);
        ``dense_budget`` None: the accumulator's default."""
        acc = self._settings(kind, dense_budget, device)
        self.load_into(acc)
        return acc

    def _settings(self, kind: str = "auto", dense_budget: int | None = None,
                  device="cpu") -> Accumulator:
        """An empty ``Accumulator`` with the stage's settings (k, streams, top examples)."""
        from ..accumulate.accumulator import Accumulator
        from ..accumulate.state import DEFAULT_DENSE_BUDGET
        from ..features.streams import Stream

        dense_budget = DEFAULT_DENSE_BUDGET if dense_budget is None else dense_budget
        sources = self.meta.get("streams", {})
        streams = [Stream(s, self.vocab(s), sources.get(s, {}).get("source", "feature"))
                   for s in self.streams]
        ex = self.meta.get("examples") or {}
        return Accumulator(streams, k=self.k, kind=kind, dense_budget=dense_budget,
                           device=device, examples=int(ex.get("m", 0)),
                           context_radius=int(ex.get("radius", 5)))

    def load_into(self, acc: Accumulator) -> None:
        """Put every layer of the stage into ``acc``, whose settings must be the stage's (k,
        streams by name and vocabulary, top examples: :meth:`Accumulator.differences`); its
        layers are replaced."""
        import txray_kernels as kernels

        differ = self._settings().differences(acc)
        if differ:
            raise InputError(f"stage {self.name!r} was collected with other settings than this "
                             f"accumulator's ({'; '.join(differ)}): their sums would mix two "
                             f"collections; make the accumulator with the stage's settings "
                             f"(Stage.accumulator() does)")
        with kernels.on_device(acc.device):  # a GPU state's inserts run on its own GPU
            for name in self.layers:
                acc.layers.pop(name, None)  # (what it held leaves the budget to the new one)
                acc.layers[name] = self.layer(name).state(acc.vocab_sizes, acc.kind,
                                                          acc.dense_left, acc.device)

    def layer(self, name: str) -> "LayerView":
        """The layer ``name`` (``stage[name]`` too; ``in`` and ``for`` go over
        :attr:`layers`)."""
        if name not in self.layers:
            raise _unknown("layer", name, self.layers, f"stage {self.name!r}")
        return LayerView(self, name)

    __getitem__ = layer
    _names = property(lambda self: self.layers)


class LayerView(_Listing):
    """One layer of a stage: per-neuron totals and its streams."""

    def __init__(self, stage: Stage, name: str):
        self.stage = stage
        self.name = name
        self.what = f"layer {name!r} of stage {stage.name!r}"
        with stage.reading(self.what):
            self.group = stage.snapshot[name]
            self.meta = group_attrs(self.group)
            self.n_neurons = int(self.meta["n_neurons"])
            self.tokens = int(self.meta["tokens"])
            self.skipped_nonfinite = int(self.meta.get("skipped_nonfinite", 0))

    def __repr__(self) -> str:
        alive = self.meta.get("alive")
        return (f"LayerView({self.name!r} of stage {self.stage.name!r}: {self.n_neurons} neurons"
                f"{'' if alive is None else f', {alive} alive'}, {self.tokens} tokens; streams: "
                f"{', '.join(self.stage.streams)})")

    @cached_property
    def neuron_count(self) -> np.ndarray:
        """Positions where each neuron was in the top-k."""
        return self._per_neuron("neuron_count")

    @cached_property
    def neuron_mass(self) -> np.ndarray:
        """Sum of each neuron's clamped activations where it was selected."""
        return self._per_neuron("neuron_mass")

    def _per_neuron(self, name: str) -> np.ndarray:
        with self.stage.reading(self.what):
            array = self.group[name]
            if array.shape != (self.n_neurons,):  # (before reading: a declared size is checked
                # against the data, never allocated on its word)
                raise damage(self.what, f"{self.n_neurons} neurons, and {name} holds "
                                        f"{array.shape}")
            values = array[:]
        if (values < 0).any() or not np.isfinite(values).all():
            raise damage(self.what, f"a negative or non-finite {name}")
        return values

    @property
    def alive(self) -> np.ndarray:
        return self.neuron_count > 0

    @cached_property
    def examples(self) -> dict[str, np.ndarray] | None:
        """Top examples per neuron (``examples_value``, ``_doc``, ``_pos`` ``[N, m]``,
        ``_context`` ``[N, m, W]``), or None when the stage was collected without them."""
        # the layer's own arrays decide (an Accumulator's `examples` need not match its layers);
        # a listing of a removed snapshot is empty, but the check after the read catches that
        with self.stage.reading(self.what):
            if "examples_value" not in set(self.group.array_keys()):
                return None
            return read_arrays(self.group, ("examples_value", "examples_doc", "examples_pos",
                                            "examples_context"))

    def state(self, vocab_sizes: dict[str, int], kind="auto",
              dense_budget: int | None = None, device="cpu") -> LayerState:
        """The layer's sums as a ``LayerState`` of the given kind (``dense_budget`` None: the
        default)."""
        import torch

        from ..accumulate.examples import TopExamples
        from ..accumulate.layer import LayerState
        from ..accumulate.state import DEFAULT_DENSE_BUDGET

        dense_budget = DEFAULT_DENSE_BUDGET if dense_budget is None else dense_budget
        if vocab_sizes != {s: len(self.stage.vocab(s)) for s in self.stage.streams}:
            raise StoreError(f"stage {self.stage.name!r} has streams "
                             f"{self.stage.meta.get('streams')}, not {vocab_sizes}")
        streams = {name: self.stream(name) for name in vocab_sizes}
        counts = self.neuron_count  # (both checked against the layer's size before its state
        # takes memory for it; each stream's arrays are checked against its own attributes)
        if any(view.meta.get("n_neurons") != self.n_neurons for view in streams.values()):
            raise damage(self.what, "its streams and its attributes give other numbers of "
                                    "neurons")
        state = LayerState.create(self.n_neurons, vocab_sizes, kind, dense_budget, device)
        for name, s in state.streams.items():
            s.merge_(streams[name].stats)
            streams[name].__dict__.pop("stats", None)  # (one stream's arrays at a time)
        state.neuron_count += torch.from_numpy(counts).to(state.neuron_count.device)
        state.neuron_mass += torch.from_numpy(self.neuron_mass).to(state.neuron_mass.device)
        state.tokens = self.tokens
        state.skipped_nonfinite = self.skipped_nonfinite
        if self.examples is not None:
            with damaged(f"layer {self.name!r} of stage {self.stage.name!r}"):
                state.examples = TopExamples.from_arrays(self.examples, device)
        return state

    def stream(self, name: str) -> "StreamView":
        """The stream ``name`` of this layer (``layer[name]`` too; ``in`` and ``for`` go
        over the stage's streams)."""
        if name not in self.stage.streams:
            raise _unknown("stream", name, self.stage.streams, f"stage {self.stage.name!r}")
        return StreamView(self, name)

    __getitem__ = stream
    _names = property(lambda self: self.stage.streams)


class StreamView:
    """One (layer, stream): the count/mass/peak matrices ``[n_neurons, n_features]``."""

    def __init__(self, layer: LayerView, name: str):
        self.layer = layer
        self.name = name
        self.what = f"stream {name!r} of layer {layer.name!r}"
        with layer.stage.reading(self.what):
            self.group = layer.group[name]
            self.meta = group_attrs(self.group)

    def __repr__(self) -> str:
        return (f"StreamView({self.name!r} of layer {self.layer.name!r}, stage "
                f"{self.layer.stage.name!r}: {self.meta.get('n_neurons')} neurons x "
                f"{self.meta.get('n_features')} features, {self.meta.get('nnz')} cells)")

    @cached_property
    def vocab(self) -> Vocabulary:
        vocab = self.layer.stage.vocab(self.name)
        if len(vocab) != self.meta.get("n_features"):
            raise damage(f"{self.what} of stage {self.layer.stage.name!r}",
                         f"{self.meta.get('n_features')} features, and its vocabulary has "
                         f"{len(vocab)}")
        return vocab

    @cached_property
    def stats(self) -> SparseStats:
        with self.layer.stage.reading(self.what):
            return read_stats(self.group)

    def csr(self, value: str = "count") -> sp.csr_matrix:
        """``count``, ``mass`` or ``peak`` as a scipy CSR matrix (pattern: cells with count > 0)."""
        return self.stats.csr(value)

    def torch(self, value: str = "count") -> torch.Tensor:
        """``count``, ``mass`` or ``peak`` as a torch sparse CSR tensor."""
        return self.stats.torch_csr(value)

    @property
    def feature_freq(self) -> np.ndarray:
        with self.layer.stage.reading(self.what):
            return self.group["feature_freq"][:]

    def row(self, neuron: int) -> dict[str, np.ndarray]:
        """One neuron's cells (``indices``, ``count``, ``mass``, ``peak``), reading only its chunks
        (or, once :attr:`stats` has been read, slicing it)."""
        if isinstance(neuron, bool) or not isinstance(neuron, (int, np.integer)):
            raise InputError(f"a neuron is an integer id, got {neuron!r}")
        if not 0 <= neuron < self.layer.n_neurons:
            raise StoreError(f"neuron {neuron} is outside layer {self.layer.name!r} "
                             f"(0..{self.layer.n_neurons - 1})")
        cells = ("indices", "count", "mass", "peak")
        if "stats" in self.__dict__:  # read whole already (a comparison): slice it in memory
            s = self.stats
            a, b = int(s.indptr[neuron]), int(s.indptr[neuron + 1])
            return {k: getattr(s, k)[a:b].copy() for k in cells}  # the caller's to change
        with self.layer.stage.reading(self.what):
            arrays = self._arrays
            a, b = (int(x) for x in arrays["indptr"][neuron:neuron + 2])
            row = {k: arrays[k][a:b] for k in cells}
        wrong = row_wrong(a, b, arrays["indices"].shape[0], row, len(self.vocab))
        if wrong:
            raise damage(f"stream group {self.group.path!r}", wrong)
        return row

    @cached_property
    def _arrays(self) -> dict:
        """The stream's arrays, opened once (each opening reads its metadata)."""
        return {k: self.group[k] for k in ("indptr", "indices", "count", "mass", "peak")}

    def top_features(self, neuron: int, n: int = 10, by: str = "mass", share: bool = False
                     ) -> list[tuple[str, float]]:
        """The neuron's ``n`` strongest features as (string, value) by ``mass`` or ``count``;
        with ``share`` the value is the fraction of the neuron's total."""
        if by not in ("mass", "count"):
            raise InputError(f"by must be 'mass' or 'count', got {by!r}")
        n = whole_number(n, "n")
        r = self.row(neuron)
        order = np.argsort(-r[by], kind="stable")[:n]
        total = (float(r[by].sum()) or 1.0) if share else 1.0
        return [(self.vocab[int(r["indices"][i])], float(r[by][i]) / total) for i in order]
