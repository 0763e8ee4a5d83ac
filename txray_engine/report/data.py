"""What a report shows, read once from a store: chosen stages, layers and pairs, cached stream
views, top features and comparisons, and the notes that say what was capped or skipped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..capture.names import is_pattern, matches
from ..errors import InputError, StageNotReadyError, StoreError
from ..measures import compare_streams, top_features
from ..store.settings import settings_note

#: The stream shown in the POS section.
POS_STREAM = "pos"
#: Streams whose length shift is plotted (when the stages have them).
LENGTH_STREAMS = ("token", POS_STREAM)


@dataclass(frozen=True)
class Limits:
    """Caps that keep a report a sensible size for wide layers and large vocabularies.

    max_points : points per curve or scatter trace (evenly spaced ranks or a seeded sample,
        always keeping the most and least changed neurons).
    max_neurons : neurons per layer embedded in the neuron explorer (those with the most
        activation mass over all stages when a layer is wider).
    explorer_features : top features per neuron, stage and stream in the explorer.
    hover_features : top features per stage in the hover text of the Hellinger scatter.
    table_features : top features per stage in the most/least changed tables.
    changed : neurons in each of the most and least changed tables.
    """

    max_points: int = 3000
    max_neurons: int = 4096
    explorer_features: int = 6
    hover_features: int = 3
    table_features: int = 5
    changed: int = 10

    def __post_init__(self):
        for name in ("max_points", "max_neurons", "explorer_features", "hover_features",
                     "table_features", "changed"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def top_k(self) -> int:
        return max(self.explorer_features, self.hover_features, self.table_features)


def even_ranks(n: int, cap: int) -> np.ndarray:
    """Up to ``cap`` evenly spaced positions of ``0 .. n-1`` (first and last included)."""
    if n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def sample(ids: np.ndarray, cap: int, keep=(), seed: int = 0) -> np.ndarray:
    """``ids`` itself, or ``cap`` of them: every id in ``keep`` plus a seeded random rest
    (sorted)."""
    ids = np.asarray(ids)
    if ids.size <= cap:
        return ids
    keep = np.intersect1d(ids, np.asarray(keep, dtype=ids.dtype))[:cap]
    rest = np.setdiff1d(ids, keep)
    rng = np.random.default_rng(seed)
    pick = rng.choice(rest, size=cap - keep.size, replace=False)
    return np.sort(np.concatenate([keep, pick]))


class ReportData:
    """Stages, layers, pairs and cached measures of one report.

    ``stages``: names in the order given (default: the order the stages were collected in),
    consecutive ones compared; ``pairs``: the (A, B) stage pairs to compare instead (e.g. one
    zero-shot stage against each fine-tuning seed); ``layers``: default those
    common to all chosen stages; ``stream``: the stream of the Hellinger comparison (default
    ``token`` when every stage has it, else the first stream they share).
    """

    def __init__(self, store, stages=None, layers=None, stream=None, limits: Limits = Limits(),
                 by: str = "mass", min_count: int = 1, min_neuron_count: int = 1, pairs=None):
        self.store = store
        self.limits = limits
        self.by = by
        self.min_count = min_count
        self.min_neuron_count = min_neuron_count
        self.notes: list[str] = []
        # each pair ("a", "b") or "a:b" (as on the command line)
        pairs = [tuple(p.split(":")) if isinstance(p, str) else tuple(p)
                 for p in pairs] if pairs else None
        for p in pairs or ():
            if len(p) != 2 or not all(p):
                raise InputError(f"{':'.join(p)!r}: give a pair as A:B (two stage names)")
            if p[0] == p[1]:
                raise InputError(f"pairs are (stage A, stage B) of two different stages, got "
                                 f"{':'.join(p)!r}")
        if pairs and stages:
            raise InputError("give stages (consecutive pairs compared) or pairs, not both")
        chosen = bool(pairs or stages)
        names = list(dict.fromkeys(s for p in pairs for s in p)) if pairs else \
            list(stages) if stages else list(store.stages)
        dup = sorted({s for s in names if names.count(s) > 1})
        if dup:
            raise InputError(f"stage(s) {dup} given twice: name each stage once")
        self.stage_objs, empty = {}, []
        for s in names:  # unknown stage -> StoreError
            try:
                self.stage_objs[s] = store.stage(s)
            except StageNotReadyError:
                if chosen:
                    raise
                empty.append(s)
        if empty:
            self.notes.append(f"Left out: {', '.join(map(repr, empty))}, with no sums yet (a "
                              f"collection writing its first flush, or stopped before it).")
        names = list(self.stage_objs)
        if not names:
            raise StoreError(f"store {str(store.path)!r} has no stages with sums: collect one "
                             f"first")
        for s, st in self.stage_objs.items():
            if st.status != "complete":
                self.notes.append(f"Stage {s!r} is {st.status or 'of unknown status'}: its "
                                  f"numbers cover the {st.tokens:,} tokens collected so far.")
        self.stages = names
        left = [s for s in store.stages if s not in names and s not in empty]
        if left:
            self.notes.append(f"The store has other stages, not in this report: "
                              f"{', '.join(left)} (txray report --stages or --pairs to choose).")
        self.pairs = list(dict.fromkeys(pairs)) if pairs else list(zip(names, names[1:]))
        for a, b in self.pairs:
            apart = settings_note(a, self.stage_objs[a].meta, b, self.stage_objs[b].meta)
            if apart:
                self.notes.append(apart[0].upper() + apart[1:] + ".")
        if not self.pairs:
            self.notes.append(f"Only one stage ({names[0]!r}): the comparisons (Hellinger, length "
                              f"shift, most and least changed neurons) need two stages and are "
                              f"left out.")
        self.layers = self._layers(layers)
        self.stream = self._stream(stream)
        self._layer_views, self._stream_views, self._top, self._cmp = {}, {}, {}, {}

    # -- choices -----------------------------------------------------------------------------------
    def _layers(self, layers) -> list[str]:
        first = self.stage_objs[self.stages[0]]
        common = [lay for lay in first.layers
                  if all(lay in st.layers for st in self.stage_objs.values())]
        if not layers:
            if not common:
                raise InputError(f"stages {self.stages} share no layer: choose stages collected "
                                 f"on the same layers")
            return common
        listed = ', '.join(map(repr, common)) or 'none'
        chosen = []
        for key in layers:  # a layer's name, or a pattern: the common layers it matches
            if is_pattern(key):
                hits = [lay for lay in common if matches(lay, key)]
                if not hits:
                    raise InputError(f"pattern {key!r} matches no layer common to the stages "
                                     f"{self.stages}; layers common to them: {listed}")
                chosen += hits
                continue
            missing = [s for s, st in self.stage_objs.items() if key not in st.layers]
            if missing:
                raise InputError(f"layer {key!r} is not in stage(s) {missing}; layers common "
                                 f"to the stages: {listed}")
            chosen.append(key)
        return list(dict.fromkeys(chosen))

    def _stream(self, stream) -> str:
        all_streams = [s for s in self.stage_objs[self.stages[0]].streams]
        common = [s for s in all_streams if all(s in st.streams for st in self.stage_objs.values())]
        if stream is not None:
            missing = [s for s, st in self.stage_objs.items() if stream not in st.streams]
            if missing:
                raise InputError(f"stream {stream!r} is not in stage(s) {missing}; streams common "
                                 f"to the stages: {common or 'none'}")
            return stream
        if "token" in common:
            return "token"
        if common:
            return common[0]
        raise InputError(f"stages {self.stages} share no stream: choose stages with a common "
                         f"stream")

    # -- views -------------------------------------------------------------------------------------
    def layer(self, stage: str, layer: str):
        key = (stage, layer)
        if key not in self._layer_views:
            self._layer_views[key] = self.stage_objs[stage].layer(layer)
        return self._layer_views[key]

    def has_stream(self, stage: str, stream: str) -> bool:
        return stream in self.stage_objs[stage].streams

    def has_examples(self) -> bool:
        """Whether any chosen stage and layer kept top examples."""
        return any(self.layer(s, lay).examples is not None
                   for s in self.stages for lay in self.layers)

    def view(self, stage: str, layer: str, stream: str):
        """The stream view, or None when the stage has no such stream."""
        if not self.has_stream(stage, stream):
            return None
        key = (stage, layer, stream)
        if key not in self._stream_views:
            self._stream_views[key] = self.layer(stage, layer).stream(stream)
        return self._stream_views[key]

    @property
    def all_streams(self) -> list[str]:
        """Streams of any chosen stage, in first-seen order."""
        out = []
        for st in self.stage_objs.values():
            out += [s for s in st.streams if s not in out]
        return out

    def prepare(self) -> None:
        """Compute, one layer at a time, everything the page takes from the streams' cells (top
        features of every stage and stream, the comparisons of every pair), then let go of the
        cells: a report of many large layers holds one layer's cells at a time, not all of them
        (a 128k-vocabulary sweep held about 0.4 GB more per layer)."""
        for layer in self.layers:
            for stage in self.stages:
                for stream in self.all_streams:
                    if self.has_stream(stage, stream):
                        self.top(stage, layer, stream)
            for stream in dict.fromkeys((self.stream, *LENGTH_STREAMS)):  # (the page's order)
                for a, b in self.pairs:
                    self.comparison(a, b, layer, stream)
            for (stage, lay, stream), view in self._stream_views.items():
                if lay == layer and stream != POS_STREAM:  # (the POS figure reads its few cells)
                    view.__dict__.pop("stats", None)

    # -- measures ----------------------------------------------------------------------------------
    def top(self, stage: str, layer: str, stream: str):
        """``(feature ids, shares)`` ``[N, top_k]`` of every neuron (padded with -1 / 0)."""
        key = (stage, layer, stream)
        if key not in self._top:
            v = self.view(stage, layer, stream)
            self._top[key] = top_features(v.stats, self.limits.top_k, self.by, self.min_count)
        return self._top[key]

    def features(self, stage: str, layer: str, stream: str, neuron: int, n: int
                 ) -> list[tuple[str, float]]:
        """The neuron's ``n`` strongest features in a stage as ``(string as it reads, share)``."""
        if self.view(stage, layer, stream) is None:
            return []
        ids, shares = self.top(stage, layer, stream)
        vocab = self.view(stage, layer, stream).vocab
        return [(vocab.shown(vocab[int(i)]), float(s))
                for i, s in zip(ids[neuron, :n], shares[neuron, :n]) if i >= 0]

    def comparison(self, a: str, b: str, layer: str, stream: str | None = None):
        """The comparison of stages ``a`` and ``b`` (None, with a note, when it cannot be made)."""
        stream = stream or self.stream
        key = (a, b, layer, stream)
        if key not in self._cmp:
            va, vb = self.view(a, layer, stream), self.view(b, layer, stream)
            if va is None or vb is None:
                self._cmp[key] = None
            else:
                try:
                    self._cmp[key] = compare_streams(va, vb, by=self.by, min_count=self.min_count,
                                                    min_neuron_count=self.min_neuron_count)
                except InputError as e:
                    self.notes.append(f"{layer} / {stream}, {a} → {b}: not compared ({e}).")
                    self._cmp[key] = None
        return self._cmp[key]


#: Characters of a feature string the page shows (a longer one is cut, ending in "…"): one token
#: of thousands of characters made the page 22,000 px wide. The explorer cuts at the same length.
FEATURE_CHARS = 48


def feature_label(f: str) -> str:
    """``repr`` of a feature string, cut to :data:`FEATURE_CHARS` characters."""
    return repr(f) if len(f) <= FEATURE_CHARS else repr(f[:FEATURE_CHARS - 1]) + "…"


def feature_text(items: list[tuple[str, float]]) -> str:
    """``'the' 20%, 'a' 9%`` (plain text; escape before putting it into HTML)."""
    return ", ".join(f"{feature_label(f)} {s:.0%}" for f, s in items) or "(none)"
