"""The Python API as a notebook uses it: membership and iteration, in-memory comparisons that
agree with the store's, and mistakes that get the project's own errors."""

import numpy as np
import pytest
import torch

from txray_engine import Accumulator, Batch, Collector, Stream, StageWriter, Vocabulary, open_store
from txray_engine.errors import CorpusError, InputError, StoreError
from txray_engine.measures import compare_layers, compare_streams

VOCAB = {"token": [f"w{i}" for i in range(6)], "pos": ["NN", "VB"]}


def _acc(seed):
    g = torch.Generator().manual_seed(seed)
    acc = Accumulator(VOCAB, k=2)
    for layer in ("enc.0", "enc.1"):
        pos = torch.randint(-1, 2, (2, 30), generator=g)  # -1: sub-words without a tag
        acc.observe(layer, torch.randn(2, 30, 8, generator=g),
                    {"token": torch.randint(0, 6, (2, 30), generator=g), "pos": pos})
    return acc


@pytest.fixture
def store(tmp_path):
    for stage, seed in (("a", 0), ("b", 1)):
        with StageWriter(tmp_path / "s.zarr", stage, "new", {"model": "m"}) as w:
            w.commit(_acc(seed), {"units": 2}, "complete")
    return open_store(tmp_path / "s.zarr")


def test_names_in_and_for(store):
    """`in` and `for` tried store[0], store[1], ... and the store refused stage 0."""
    assert "a" in store and "zz" not in store and list(store) == ["a", "b"]
    stage = store["a"]
    assert "enc.1" in stage and list(stage) == ["enc.0", "enc.1"]
    assert "pos" in stage["enc.0"] and list(stage["enc.0"]) == ["token", "pos"]


def test_in_memory_comparison_agrees_with_the_store(store):
    """Alive neurons by the layers' selection counts: the stream's own rows leave out positions
    without a feature (here the POS stream's -1), and made neurons 'only in' one stage."""
    a, b = _acc(0), _acc(1)
    for stream in ("token", "pos"):
        mem = compare_layers(a.layers["enc.0"], b.layers["enc.0"], stream)
        stored = compare_streams(store["a"]["enc.0"][stream], store["b"]["enc.0"][stream])
        assert mem.summary() == stored.summary()
        np.testing.assert_array_equal(mem["hellinger"], stored["hellinger"])
    with pytest.raises(InputError, match="has no stream 'label'"):
        compare_layers(a.layers["enc.0"], b.layers["enc.0"], "label")
    with pytest.raises(InputError, match="takes layers of an Accumulator"):
        compare_layers(store["a"]["enc.0"], b.layers["enc.0"], "token")


def test_two_layers_are_compared_only_when_asked(store):
    one, other = store["a"]["enc.0"]["token"], store["b"]["enc.1"]["token"]
    with pytest.raises(InputError, match="a comparison is of one layer in two stages"):
        compare_streams(one, other)
    assert compare_streams(one, other, other_layers=True).n_neurons == 8


def test_comparison_counts_and_columns_are_checked(store):
    cmp = compare_streams(store["a"]["enc.0"]["token"], store["b"]["enc.0"]["token"])
    for n in (-1, 2.5, "3", True, np.True_):  # -1 sliced [:-1]; 2.5 was a bare TypeError
        for call in (cmp.most_changed, cmp.least_changed, cmp.extremes, cmp.table().head):
            with pytest.raises(InputError, match="whole number ≥ 0"):
                call(n)
    with pytest.raises(InputError, match="no column 'nope'; the columns are neuron, alive_a"):
        cmp["nope"]
    with pytest.raises(InputError, match="no column 'nope'"):
        cmp.most_changed(3, column="nope")
    with pytest.raises(InputError, match="no column 'nope'"):
        cmp.table().sort("nope")


def test_streams_by_name_take_the_same_sources_everywhere():
    """A dict of streams means the same to the Accumulator as to the Collector and the CLI."""
    from txray_engine.features.streams import SOURCE_OF_NAME

    acc = Accumulator({"token": ["a"], "predicted": ["a"], "label": ["neg"], "pos": ["NN"]})
    assert [(s.name, s.source) for s in acc.streams] == [
        ("token", "input"), ("predicted", "predicted"), ("label", "label"), ("pos", "feature")]
    assert all(SOURCE_OF_NAME.get(s.name, "feature") == s.source for s in acc.streams)
    with pytest.raises(InputError, match="streams are Stream objects"):
        Accumulator("token")


def test_mistakes_get_the_projects_errors():
    with pytest.raises(InputError, match="a vocabulary is a list of feature strings"):
        Accumulator({"token": "abcd"})  # (four one-character features)
    acc = Accumulator(VOCAB)
    for bad in ("a/b", "", "snap-1"):  # (refused by the store only at the first flush)
        with pytest.raises(InputError, match="invalid layer name"):
            acc.observe(bad, torch.randn(3, 4), {"token": torch.tensor([0, 1, 2])})
    assert not acc.layers


def test_a_collection_with_every_position_masked_is_refused(tmp_path):
    """It was written as a complete stage of 0 tokens."""
    model = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.ReLU())
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(CorpusError, match="no positions were collected"):
        with Collector(model, ["1"], [Stream("token", Vocabulary(VOCAB["token"]), "input")],
                       store=tmp_path / "s.zarr", stage="s",
                       forward=lambda m, b: m(b.input_ids)) as col:
            col.step(Batch(ids, mask=torch.zeros(2, 3)))
    assert not (tmp_path / "s.zarr").exists()  # no store, and no stage of 0 tokens in it


def test_collector_takes_streams_by_name():
    """A dict names streams as `txray collect --streams` does (every stream was a "feature"
    stream, and `token` then wanted Batch.features)."""
    model = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.ReLU())
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with Collector(model, ["1"], {"token": VOCAB["token"], "pos": VOCAB["pos"]},
                   forward=lambda m, b: m(b.input_ids)) as col:
        col.step(Batch(ids, features={"pos": torch.tensor([[0, 1, -1], [1, 1, 0]])}))
    assert [(s.name, s.source) for s in col.streams] == [("token", "input"), ("pos", "feature")]
    layer = col.accumulator.layers["1"]
    assert layer.tokens == 6 and layer.streams["pos"].tokens == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_predicted_ids_are_torchs_argmax(dtype):
    """The CPU path's numpy argmax: the first maximum among ties, the first NaN, ±inf rows."""
    from txray_engine.features.streams import predicted_ids
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (3, 5, 17), generator=g).to(dtype)  # many ties
    x[0, 0] = float("-inf")
    x[0, 1, 4], x[0, 1, 9] = float("nan"), float("nan")
    x[1, 2, 3] = float("inf")
    assert torch.equal(predicted_ids(x), x.argmax(dim=-1))
    assert torch.equal(predicted_ids(x[:, :, ::2]), x[:, :, ::2].argmax(dim=-1))  # strided


def test_entry_points_name_what_they_take(store):
    """Wrong types at the public entry points: the project's errors, not AttributeError or
    TypeError from deep inside."""
    from txray_engine import merge
    from txray_engine.measures import compare, distributions, stage_table, top_features
    from txray_engine.prune import mask_units

    acc = Accumulator(VOCAB)
    ids = {"token": torch.tensor([0, 1, 2]), "pos": torch.tensor([0, 1, 0])}
    cases = [
        (lambda: acc.prepare_batch([("L", torch.randn(3, 4))], ids), "must be a dict {layer"),
        (lambda: acc.commit(torch.randn(3, 4)), "commit takes one Prepared batch"),
        (lambda: merge(acc, "x"), "merge_ takes an Accumulator"),
        (lambda: mask_units(torch.nn.Linear(2, 2), ["enc"]), "a selection is a dict"),
        (lambda: Accumulator(VOCAB, examples="3"), "examples must be a whole number"),
        (lambda: Accumulator(VOCAB, examples=2.5), "examples must be a whole number"),
        (lambda: Accumulator(VOCAB, dense_budget=-1), "dense_budget"),
        (lambda: store["a"]["enc.0"]["token"].top_features(1, 2.5), "n must be a whole number"),
        (lambda: open_store(None), "open_store takes the store's path"),
        (lambda: stage_table(object()), "the measures read SparseStats"),
        (lambda: compare(store["a"]["enc.0"]["token"], store["b"]["enc.0"]["token"].stats,
                         min_count=1.5), "min_count must be a whole number ≥ 1"),
        (lambda: compare(store["a"]["enc.0"]["token"].stats, store["b"]["enc.0"]["token"].stats,
                         neuron_count_a=np.ones(3)), "neuron_count_a has shape"),
    ]
    for call, words in cases:
        with pytest.raises((InputError, StoreError), match=words):
            call()
    view = store["a"]["enc.0"]["token"]  # a StreamView reads as its stats in every measure
    assert np.array_equal(top_features(view, 3)[0], top_features(view.stats, 3)[0])
    assert (distributions(view) != distributions(view.stats)).nnz == 0
    with StageWriter(store.path, "c", "new", {"model": "m"}) as w:
        with pytest.raises(InputError, match="commit takes an Accumulator and a cursor dict"):
            w.commit(_acc(0), 5)


def test_notebook_reprs(store, tmp_path):
    from txray_engine.prune import mask_units
    acc = _acc(0)
    assert repr(acc.layers["enc.0"].stream_stats()["token"]).startswith("SparseStats([8, 6], ")
    ex = Accumulator(VOCAB, examples=2)
    ex.observe("e", torch.randn(5, 4), {"token": torch.zeros(5, dtype=torch.long),
                                        "pos": torch.zeros(5, dtype=torch.long)},
               where={"doc": torch.arange(5), "pos": torch.arange(5),
                      "context": torch.zeros(5, 11, dtype=torch.long)})
    assert repr(ex.layers["e"].examples) == ("TopExamples(4 neurons, top 2, context 11; 8 kept; "
                                             ".arrays() for numpy)")
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with mask_units(model, {"0": [1]}) as m:
        assert repr(m) == "UnitMask(1 hook(s))"
    assert repr(m) == "UnitMask(0 hook(s), removed)"
    w = StageWriter(tmp_path / "w.zarr", "s", "new", {})
    assert repr(w) == (f"StageWriter({str(tmp_path / 'w.zarr')!r}, stage 's', mode 'new', "
                       f"closed; last snapshot None)")
    col = Collector(model, ["0"], {"token": VOCAB["token"]})
    assert repr(col) == "Collector(Sequential: 0; in memory; 0 units so far)"


def test_review_of_the_days_changes():
    """What a review of the change found: lists where tensors were taken, an all-NaN run with
    skipping, 1-D logits, a Vocabulary pickled before `text`, the spelling through a merge, the
    new stage-name rule kept off stages that exist, paths through '..'."""
    import pickle

    from txray_engine.features.streams import predicted_ids
    from txray_engine.store.names import check_name, check_new_stage_name

    model = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.ReLU())
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with Collector(model, ["1"], {"token": VOCAB["token"], "label": ["n", "p"]},
                   forward=lambda m, b: m(b.input_ids)) as col:
        col.step(Batch(ids, labels=[0, 1], unit_ids=np.array([7, 8]), offsets=[0, 0]))
    assert col.accumulator.tokens == 6
    nan = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.Hardtanh(float("nan"), 0))
    with Collector(nan, ["1"], {"token": VOCAB["token"]}, nonfinite="skip",
                   forward=lambda m, b: m(b.input_ids)) as col:  # (it was "no positions")
        col.step(Batch(ids))
    assert col.accumulator.layers["1"].skipped_nonfinite == 6
    x = torch.tensor([0.5, 2.0, 2.0, -1.0])
    assert torch.equal(predicted_ids(x), x.argmax(-1))
    old = pickle.loads(pickle.dumps(Vocabulary(["Ġa", "b"])))
    del old.__dict__["text"]  # (as unpickled from before the attribute)
    assert old.shown("Ġa") == "Ġa" and "text" not in repr(old)
    plain, spelled = (Accumulator({"t": Vocabulary(["Ġa", "b"], text)}) for text in
                      (None, "byte_level"))
    for acc in (plain, spelled):
        acc.observe("l", torch.ones(2, 3), {"t": torch.tensor([0, 1])})
    assert plain.merge_(spelled).streams[0].vocab.text == "byte_level"
    assert check_name("stage", "step:1000") == "step:1000"  # an existing stage: still writable
    with pytest.raises(InputError, match="invalid stage name"):
        check_new_stage_name("step:1000")


def test_outputs_beside_a_store_through_dots(store, tmp_path):
    from txray_engine.store.outputs import output_path
    path = store.path / ".." / "report.html"  # beside the store, not in it
    assert output_path(path, "report") == path
    with pytest.raises(InputError, match="inside the txray store"):
        output_path(store.path / "a" / ".." / "r.html", "report")


def test_the_explorer_payload_stays_json_whatever_the_text():
    """'<!--' was written as '<\\!--', which no JSON parser reads: the explorer was dead."""
    import json

    from txray_engine.report.explorer import explorer_html
    strings = ["<!--", "</script>", "<b>", "a<!--b", "\u2028"]
    html = explorer_html({"features": 3, "strings": strings})
    payload = html.split('id="txray-explorer-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in payload and json.loads(payload) == {"features": 3, "strings": strings}


@pytest.mark.parametrize("other", [
    dict(streams={"token": VOCAB["token"][::-1], "pos": VOCAB["pos"]}, why="another vocabulary"),
    dict(k=3, why="k 2, not 3"),
    dict(examples=2, why="top examples 0, not 2"),
    dict(streams={"token": VOCAB["token"]}, why=r"streams \['token', 'pos'\], not \['token'\]")])
def test_a_resume_with_other_settings_is_refused(tmp_path, other):
    """StageWriter.load_into took any accumulator of the same vocabulary sizes: a stage started
    at k=2 and resumed at k=3, or with its vocabulary reordered, mixed two collections."""
    from naive import tree_digest

    path = tmp_path / "s.zarr"
    with StageWriter(path, "a", "new", {"model": "m"}) as w:
        w.commit(_acc(0), {"units": 2})
    before = tree_digest(path)
    why = other.pop("why")
    acc = Accumulator(other.pop("streams", VOCAB), **{"k": 2, **other})
    with StageWriter(path, "a", "resume", {"model": "m"}) as w:
        with pytest.raises(InputError, match=f"other settings than this accumulator's .*{why}"):
            w.load_into(acc)
    with pytest.raises(InputError, match=why):
        open_store(path).stage("a").load_into(acc)
    assert not acc.layers and tree_digest(path) == before
    same = Accumulator(VOCAB, k=2)
    open_store(path).stage("a").load_into(same)
    assert set(same.layers) == {"enc.0", "enc.1"}


def test_a_refused_merge_changes_nothing():
    """merge_ added the layers it reached before the one it refused (tokens 3 -> 6), and top
    examples of other sizes were refused after the counts were added."""
    def acc(widths, **kw):
        a = Accumulator(VOCAB, k=1, **kw)
        for layer, n in widths.items():
            a.observe(layer, torch.randn(3, n), {"token": torch.tensor([0, 1, 2]),
                                                 "pos": torch.tensor([0, 1, -1])})
        return a

    def counts(a):
        return {n: (s.tokens, s.neuron_count.tolist()) for n, s in a.layers.items()}

    target = acc({"L1": 4, "L2": 4})
    before = counts(target)
    with pytest.raises(InputError, match="cannot merge layer 'L2': 4 neurons against 5; nothing"):
        target.merge_(acc({"L1": 4, "L2": 5}))
    with pytest.raises(InputError, match="other settings \\(top examples 0, not 2\\)"):
        target.merge_(acc({}, examples=2))
    with pytest.raises(InputError, match="ties must be"):
        target.merge_(acc({"L1": 4}), ties="last")
    with pytest.raises(InputError, match=r"top examples 2 \(context radius 5\), not 2 \(context "
                                         r"radius 1\)"):
        acc({}, examples=2).merge_(acc({}, examples=2, context_radius=1))
    assert counts(target) == before
    assert counts(target.merge_(acc({"L1": 4})))["L1"][0] == 6


class _TwoOutputs(torch.nn.Module):
    """A GRU LM returning (hidden, logits) or {"logits": ...}: hidden 6 wide, 30 logits."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.emb, self.rnn = torch.nn.Embedding(30, 6), torch.nn.GRU(6, 6, batch_first=True)
        self.out, self.as_dict = torch.nn.Linear(6, 30), as_dict

    def forward(self, ids):
        h = self.rnn(self.emb(ids))[0]
        return {"logits": self.out(h)} if self.as_dict else (h, self.out(h))


def test_predicted_ids_come_from_logits_over_the_vocabulary():
    """A model returning (hidden, logits): the argmax over its 6 hidden units fitted the
    30-word vocabulary and was stored as predictions, without a word."""
    from txray_engine.features.streams import predicted_stream

    torch.manual_seed(0)
    words = Vocabulary([f"w{i}" for i in range(30)])
    ids = torch.randint(0, 30, (2, 5))
    with pytest.raises(InputError, match="6 values per position, fewer than the stream's 30"):
        with Collector(_TwoOutputs(), ["rnn"], [predicted_stream(words)]) as collector:
            collector.step(Batch(ids))
    model = _TwoOutputs(as_dict=True)
    with Collector(model, ["rnn"], [predicted_stream(words)], k=1) as collector:
        collector.step(Batch(ids))
    want = model(ids)["logits"].argmax(-1).flatten()
    got = collector.accumulator.layers["rnn"].streams["predicted"].to_stats()
    assert int(got.feature_freq.sum()) == 10
    assert np.array_equal(np.bincount(want.numpy(), minlength=30), got.feature_freq)


def test_time_first_false_means_none():
    model = _TwoOutputs()
    ids = torch.randint(0, 30, (2, 5))
    counts = []
    for flag in (False, (), None):  # (False was iterated: a bare TypeError)
        with Collector(model, ["out"], {"token": [f"w{i}" for i in range(30)]},
                       time_first=flag) as collector:
            collector.step(Batch(ids))
        counts.append(collector.accumulator.layers["out"].neuron_count.tolist())
    assert counts[0] == counts[1] == counts[2] and sum(counts[0]) == 10


def test_names_a_store_cannot_hold_leave_nothing_behind(tmp_path):
    """A stream named 'a/b' was taken, then the commit failed after making the stage: a retry
    with mode='new' was refused as 'already exists'."""
    for bad in ("a/b", "neuron_count", "vocab"):
        with pytest.raises(InputError, match=f"invalid stream name '{bad}'"):
            Accumulator({bad: ["x"]})
    acc = _acc(0)
    acc.layers["a/b"] = acc.layers.pop("enc.1")  # (a name set past the checks)
    with StageWriter(tmp_path / "s.zarr", "s", "new", {"model": "m"}) as w:
        with pytest.raises(InputError, match="invalid layer name 'a/b'"):
            w.commit(acc, {"units": 1})
    assert not (tmp_path / "s.zarr" / "s").exists()
    with StageWriter(tmp_path / "s.zarr", "s", "new", {"model": "m"}) as w:
        w.commit(_acc(0), {"units": 1})


def test_more_mistakes_get_the_projects_errors(store):
    """Each was a bare TypeError, AttributeError or ValueError, or passed silently (length with
    min_count=0.5, entropy with base 1 gave inf/NaN, n_units=2.5 was cut to 2)."""
    from txray_engine import same_sums
    from txray_engine.measures import entropy, length
    from txray_engine.prune import select_neurons

    ids = torch.zeros(2, 3, dtype=torch.long)
    stats = store["a"]["enc.0"]["token"]
    cmp = compare_streams(stats, store["b"]["enc.0"]["token"])
    for call, message in [
            (lambda: Batch(ids, labels=["neg", "pos"]), r"Batch.labels must hold integer ids .*"
                                                        r"vocab.encode\(labels\)"),
            (lambda: Batch(ids, features={"pos": [["NN"] * 3] * 2}),
             r"Batch.features\['pos'\] must hold integer ids"),
            (lambda: Batch(ids, mask=[["x"] * 3] * 2), "Batch.mask must hold 0/1 or bool"),
            (lambda: Batch(ids, features=[1]), "Batch.features is a dict"),
            (lambda: Batch(ids, n_units=2.5), "n_units .* whole number"),
            (lambda: Vocabulary(None), "a vocabulary is a list of feature strings"),
            (lambda: same_sums(_acc(0), 3), "same_sums takes two Accumulators"),
            (lambda: select_neurons([1, 2], "random", count=1), "takes a Comparison or a Neuron"),
            (lambda: select_neurons(cmp, "random", fraction="0.1"), "fraction must be in"),
            (lambda: entropy(stats, base=1), "base must be a positive number other than 1"),
            (lambda: entropy(stats, base=0), "base must be"),
            (lambda: length(stats, min_count=0.5), "min_count must be a whole number")]:
        with pytest.raises(InputError, match=message):
            call()
    batch = Batch(ids, labels=[0, 1], mask=[[1, 1, 0], [1, 0, 0]], features={"pos": [[0] * 3] * 2},
                  n_units=2.0)
    assert batch.labels.tolist() == [0, 1] and batch.n_units == 2 and batch.mask.sum() == 3


def test_report_arguments_are_checked(store, tmp_path):
    from txray_engine.report import build_report

    for kwargs, message in [({"out": None}, "path must be a file name, got None"),
                            ({"min_count": 1.5}, "min_count must be a whole number"),
                            ({"max_neurons": "10"}, "max_neurons must be a whole number")]:
        with pytest.raises(InputError, match=message):
            build_report(store.path, **{"out": tmp_path / "r.html", **kwargs})
    assert not (tmp_path / "r.html").exists()


def test_a_resume_without_the_identity_says_what_is_missing(tmp_path):
    from txray_engine.errors import StageExistsError

    with StageWriter(tmp_path / "s.zarr", "a", "new", {"model": "m", "corpus": "c"}) as w:
        w.commit(_acc(0), {"units": 2})
    with pytest.raises(StageExistsError, match="also hold corpus, model: settings this identity "
                                               "leaves out"):
        StageWriter(tmp_path / "s.zarr", "a", "resume").open()
    with pytest.raises(StageExistsError, match=r"with other settings \(model\)"):
        StageWriter(tmp_path / "s.zarr", "a", "resume", {"model": "n", "corpus": "c"}).open()
    with pytest.raises(StageExistsError, match="without seed, which this identity gives "
                                               r"\(by an earlier engine.*cannot be checked"):
        StageWriter(tmp_path / "s.zarr", "a", "resume",
                    {"model": "m", "corpus": "c", "seed": 1}).open()


def test_a_stage_of_a_dict_of_streams_written_before_resumes():
    """A dict of streams made 'feature' streams before (now 'token' is 'input'): for a hand-fed
    accumulator the source changes nothing, so it does not stop a resume."""
    import tempfile

    path = tempfile.mkdtemp() + "/s.zarr"
    old = Accumulator([Stream("token", VOCAB["token"], "feature"), Stream("pos", VOCAB["pos"])],
                      k=2)
    old.merge_(_acc(0))
    with StageWriter(path, "a", "new", {"model": "m"}) as w:
        w.commit(old, {"units": 2})
    acc = Accumulator(VOCAB, k=2)
    open_store(path).stage("a").load_into(acc)
    assert set(acc.layers) == {"enc.0", "enc.1"} and acc.tokens == old.tokens
    with pytest.raises(InputError, match="no feature streams given"):
        Accumulator(None)
