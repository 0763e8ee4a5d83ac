"""Every bad input gets one clear message, a non-zero exit from the CLI, and leaves the store as it was."""

import fcntl
import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from naive import tree_digest
from txray_engine import Accumulator, Batch, Collector, Stream, Vocabulary
from txray_engine.cli import main
from txray_engine.errors import InputError, NonFiniteError

VOCAB = {"tok": ["a", "b", "c"]}


def test_nonfinite_names_layer_and_position():
    acc = Accumulator(VOCAB)
    acts = torch.randn(2, 5, 4)
    acts[1, 3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"'enc'.*position \(1, 3\)"):
        acc.observe("enc", acts, {"tok": torch.zeros(2, 5, dtype=torch.long)})
    assert not acc.layers  # nothing was added
    acts[0, 0, 0] = -float("inf")
    with pytest.raises(NonFiniteError, match=r"position \(0, 0\).*2 position"):
        acc.observe("enc", acts, {"tok": torch.zeros(2, 5, dtype=torch.long)})


def test_nonfinite_skip_counts_positions():
    acc = Accumulator(VOCAB, nonfinite="skip")
    acts = torch.randn(6, 4)
    acts[2, 1] = float("inf")
    acc.observe("enc", acts, {"tok": torch.zeros(6, dtype=torch.long)})
    layer = acc.layers["enc"]
    assert layer.tokens == 5 and layer.skipped_nonfinite == 1
    assert layer.streams["tok"].tokens == 5


def test_masked_nonfinite_positions_are_not_errors():
    acc = Accumulator(VOCAB)
    acts = torch.randn(1, 3, 4)
    acts[0, 2] = float("nan")
    acc.observe("enc", acts, {"tok": torch.zeros(1, 3, dtype=torch.long)},
                mask=torch.tensor([[True, True, False]]))
    assert acc.layers["enc"].tokens == 2


@pytest.mark.parametrize("features,mask,match", [
    ({"tok": torch.zeros(7, dtype=torch.long)}, None, "one id per position"),
    ({"tok": torch.full((6,), 3)}, None, "outside its vocabulary of 3"),
    ({"tok": torch.full((6,), -2)}, None, "feature id -2"),
    ({"tok": torch.zeros(6)}, None, "must be integers"),
    ({"tok": torch.full((6,), 2**64 - 1, dtype=torch.uint64)}, None, "uint64 ids of 2..63"),
    ({}, None, "no ids given"),
    ({"tok": torch.zeros(6, dtype=torch.long), "x": torch.zeros(6, dtype=torch.long)}, None,
     "unknown stream"),
    ({"tok": torch.zeros(6, dtype=torch.long)}, torch.ones(5, dtype=torch.bool), "mask has shape"),
])
def test_bad_observations(features, mask, match):
    acc = Accumulator(VOCAB)
    with pytest.raises(InputError, match=match):
        acc.observe("enc", torch.randn(6, 4), features, mask)
    assert not acc.layers


def test_an_output_with_more_axes_than_positions_names_the_layer_choice():
    """A feature map [B, C, H, W] or attention [B, heads, T, T]: the message pointed at the ids."""
    with pytest.raises(InputError, match=r"4 axes, more than \[batch, time, neurons\].*choose a "
                                         r"layer with one vector per position"):
        Accumulator(VOCAB).observe("conv", torch.randn(2, 4, 5, 8),
                                   {"tok": torch.zeros(2, 5, dtype=torch.long)})


def test_bad_k_and_width():
    with pytest.raises(InputError, match="positive integer"):
        Accumulator(VOCAB, k=0)
    with pytest.raises(InputError, match="kind must be one of auto, dense, sparse, got 'dens'"):
        Accumulator(VOCAB, kind="dens")
    with pytest.raises(InputError, match=r"dense_budget \(bytes for all dense states\)"):
        Accumulator(VOCAB, dense_budget=-1)
    assert Accumulator(VOCAB, k=np.int64(2)).k == 2  # a numpy integer is an integer
    with pytest.raises(InputError, match="activations need a position axis"):
        Accumulator(VOCAB).observe("enc", torch.randn(4), {"tok": torch.zeros(4, dtype=torch.long)})
    acc = Accumulator(VOCAB, k=5)
    with pytest.raises(InputError, match="has 4 neurons but k=5"):
        acc.observe("enc", torch.randn(2, 4), {"tok": torch.zeros(2, dtype=torch.long)})
    acc = Accumulator(VOCAB, k=1)
    acc.observe("enc", torch.randn(2, 4), {"tok": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(InputError, match="one width"):
        acc.observe("enc", torch.randn(2, 3), {"tok": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(InputError, match="floating-point"):
        acc.observe("enc", torch.ones(2, 4, dtype=torch.long), {"tok": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(InputError, match=r"numpy array; pass torch.from_numpy\(a\)"):
        acc.observe("enc", np.ones((2, 4), np.float32), {"tok": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(InputError, match=r"features must be a dict \{stream name: ids\}"):
        acc.observe("enc", torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="keeps none: create it with examples=M"):
        acc.observe("enc", torch.randn(2, 4), {"tok": torch.zeros(2, dtype=torch.long)},
                    where={"doc": torch.zeros(2, dtype=torch.long)})
    assert acc.tokens == 2  # only the first observation counted


def test_stage_writer_mistakes(tmp_path):
    from txray_engine import StageWriter
    with pytest.raises(InputError, match="identity must be JSON.*model_identity"):
        StageWriter(tmp_path / "s.zarr", "s", identity={"model": torch.tensor([1])})
    acc = Accumulator(VOCAB)
    acc.observe("enc", torch.randn(2, 4), {"tok": torch.zeros(2, dtype=torch.long)})
    with StageWriter(tmp_path / "s.zarr", "s") as w:
        with pytest.raises(InputError, match="status must be 'in_progress' or 'complete'"):
            w.commit(acc, {"units": 1}, status="done")
    assert not (tmp_path / "s.zarr").exists()  # nothing written


def test_labels_of_another_count_than_the_sequences():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    streams = [Stream("label", Vocabulary(["neg", "pos"]), "label")]
    with Collector(model, ["0"], streams, allow_empty=True) as col:
        with pytest.raises(InputError, match="has 3 ids .* for 8 sequences; give one label id"):
            col.step(Batch(input_ids=torch.zeros(8, 5, dtype=torch.long),
                           inputs=torch.randn(8, 5, 3), labels=torch.tensor([0, 1, 1])))
        assert not col.accumulator.layers
    with pytest.raises(InputError, match="give both store and stage"):
        Collector(model, ["0"], streams, store="s.zarr")


def test_inputs_the_models_forward_cannot_take():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x, scale):
            return self.lin(x) * scale

    streams = [Stream("tok", Vocabulary(VOCAB["tok"]), "input")]
    ids = torch.zeros(2, 5, dtype=torch.long)
    with Collector(TwoInputs(), ["lin"], streams, allow_empty=True) as col:
        with pytest.raises(InputError, match="TwoInputs.forward cannot take the batch's inputs "
                                             r"\(missing a required argument: 'scale'\)"):
            col.step(Batch(input_ids=ids, inputs=torch.randn(2, 5, 3)))
        col.step(Batch(input_ids=ids, inputs={"x": torch.randn(2, 5, 3), "scale": 2.0}))
    assert col.accumulator.tokens == 10


def test_bad_batch_in_collector_changes_no_layer():
    """Layer 2 of a batch is bad: layer 1 of the same batch must not be added either."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) * (1 / (x.sum() - x.sum()))  # inf/nan in b's consumer only

    model = Two()
    model.b.bias.data[:] = float("nan")
    streams = [Stream("tok", Vocabulary(["a"]), "input")]
    with pytest.raises(NonFiniteError, match="'b'"):
        with Collector(model, ["a", "b"], streams) as col:
            col.step(Batch(input_ids=torch.zeros(2, dtype=torch.long), inputs=torch.randn(2, 3)))
    assert not col.accumulator.layers


# -- through the CLI ------------------------------------------------------------------------------
def _collect(wm, store, *extra, corpus=None):
    args = ["collect", "--model", str(wm["ckpt"]), "--vocab", str(wm["vocab"]), "--corpus",
            str(corpus or wm["text"]), "--layers", "lstm", "--store", str(store), "--stage", "s",
            "--quiet", *extra]
    return CliRunner().invoke(main, args)


def _assert_clean_error(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output


def test_cli_errors_leave_store_unchanged(word_model, tmp_path):
    store = tmp_path / "s.zarr"
    assert _collect(word_model, store).exit_code == 0
    before = tree_digest(store)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("the cat sat on the mat\nthe caf\u00e9 was big\n".encode("latin-1"))
    cases = [
        (("--overwrite",), latin1, ["latin1.txt:2: not UTF-8 text", "byte 0xe9 at column 8",
                                    "convert the file"]),
        (("--overwrite", "--layers", "lstmm"), None, ["no module", "did you mean: lstm"]),
        (("--overwrite", "-k", "13"), None, ["12 neurons but k=13"]),
        (("--overwrite", "-k", "0"), None, ["positive integer"]),
        (("--overwrite",), empty, ["corpus has no text"]),
        ((), None, ["already exists", "--resume"]),
        (("--overwrite", "--streams", "token,label"), None, ["labels"]),
        (("--overwrite", "--streams", "tokn"), None, ["unknown stream"]),
        (("--resume", "--overwrite"), None, ["exclude each other"]),
        (("--resume", "--max-length", "7"), None, ["already complete"]),
    ]
    for extra, corpus, words in cases:
        _assert_clean_error(_collect(word_model, store, *extra, corpus=corpus), *words)
        assert tree_digest(store) == before, extra


def _mark_unfinished(store, stage="s"):
    """Make a complete stage look like one whose run was killed (status in_progress)."""
    import json
    meta = store / stage / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["txray_engine"]["status"] = "in_progress"
    meta.write_text(json.dumps(doc))


def test_resume_with_other_collection_settings_is_refused(word_model, tmp_path):
    """A resume must not mix statistics of two collections: another k, another layer list or
    other options are refused, the message names what differs, and the store stays as it was."""
    store = tmp_path / "s.zarr"
    assert _collect(word_model, store, "-k", "2").exit_code == 0
    _mark_unfinished(store)
    before = tree_digest(store)
    cases = [
        (("-k", "3"), ["collection.k"]),
        (("-k", "all"), ["collection.k"]),
        (("-k", "2", "--layers", "decoder"), ["collection.layers"]),
        (("-k", "2", "--max-length", "7"), ["options.max_length"]),
        (("-k", "2", "--streams", "token,predicted"), ["options.streams", "collection.streams"]),
    ]
    for extra, words in cases:
        res = _collect(word_model, store, "--resume", *extra)
        _assert_clean_error(res, "other settings", "--overwrite", *words)
        assert tree_digest(store) == before, extra
    res = _collect(word_model, store, "--resume", "-k", "2")
    assert res.exit_code == 0, res.output
    from txray_engine import open_store
    assert open_store(store).stage("s").status == "complete"


def test_cli_empty_corpus_creates_no_store(word_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    store = tmp_path / "new.zarr"
    _assert_clean_error(_collect(word_model, store, corpus=empty), "corpus has no text")
    assert not store.exists()


def test_cli_nonfinite_model(word_model, tmp_path):
    model = torch.load(word_model["ckpt"], weights_only=False)
    model.lstm.bias_ih_l0.data[:] = float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(model, bad)
    res = CliRunner().invoke(main, ["collect", "--model", str(bad), "--vocab",
                                    str(word_model["vocab"]), "--corpus", str(word_model["text"]),
                                    "--layers", "lstm", "--store", str(tmp_path / "x.zarr"),
                                    "--stage", "s", "-q"])
    _assert_clean_error(res, "non-finite", "'lstm'", "--skip-nonfinite")
    assert not (tmp_path / "x.zarr").exists()


def test_cli_skip_nonfinite_counts_positions_per_layer(word_model, tmp_path):
    """NaN embeddings for unknown words: every position from a document's first unknown word on
    is non-finite in the LSTM; --skip-nonfinite leaves them out and says how many, per layer."""
    import json
    model = torch.load(word_model["ckpt"], weights_only=False)
    model.embedding.weight.data[0] = float("nan")  # <unk>
    bad = tmp_path / "bad.pt"
    torch.save(model, bad)
    store = tmp_path / "x.zarr"
    args = ["collect", "--model", str(bad), "--vocab", str(word_model["vocab"]), "--corpus",
            str(word_model["text"]), "--layers", "lstm", "--layers", "decoder", "--store",
            str(store), "--stage", "s", "-q", "--skip-nonfinite", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    from txray_engine import open_store
    st = open_store(store).stage("s")
    skipped = st.skipped_nonfinite()
    assert set(skipped) == {"lstm", "decoder"} and skipped["lstm"] > 0
    assert summary["skipped_nonfinite"] == skipped
    assert st.layer("lstm").tokens + skipped["lstm"] == summary["positions_read"]
    assert summary["tokens_this_run"] == st.tokens  # as txray info counts them
    info = CliRunner().invoke(main, ["info", str(store)]).output
    assert f"layer lstm: 12 neurons, {skipped['lstm']} positions skipped (non-finite" in info
    res = CliRunner().invoke(main, args[:-1] + ["--overwrite"])
    assert f"layer lstm: {skipped['lstm']} positions with non-finite activations" in res.output


def test_cli_second_writer_and_foreign_store(word_model, tmp_path):
    store = tmp_path / "s.zarr"
    assert _collect(word_model, store).exit_code == 0
    before = tree_digest(store)
    fd = os.open(store, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _assert_clean_error(_collect(word_model, store, "--overwrite"), "another process")
    finally:
        os.close(fd)
    assert tree_digest(store) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    _assert_clean_error(_collect(word_model, foreign), "not a txray store")
    _assert_clean_error(CliRunner().invoke(main, ["info", str(foreign)]), "not a txray store")
    (store / "s" / "zarr.json").write_text("garbage")
    _assert_clean_error(CliRunner().invoke(main, ["info", str(store)]), "damaged")
    res = CliRunner().invoke(main, ["--debug", "info", str(foreign)])
    assert res.exception is not None  # --debug re-raises for a traceback


def test_cli_bad_model_paths(tmp_path, word_model):
    res = CliRunner().invoke(main, ["collect", "--model", str(tmp_path / "nope.pt"), "--corpus",
                                    str(word_model["text"]), "--layers", "x", "--store",
                                    str(tmp_path / "s"), "--stage", "s"])
    _assert_clean_error(res, "not found")
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    res = CliRunner().invoke(main, ["collect", "--model", str(tmp_path / "sd.pt"), "--corpus",
                                    str(word_model["text"]), "--layers", "x", "--store",
                                    str(tmp_path / "s"), "--stage", "s"])
    _assert_clean_error(res, "not a module")


def test_cli_unavailable_device_bad_gguf_and_tokenizer(word_model, tmp_path):
    """Devices this machine lacks, a missing GGUF file and an unreadable tokenizer directory get
    one line each and create no store."""
    store = tmp_path / "s.zarr"
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:1"):
            _assert_clean_error(_collect(word_model, store, "--device", dev),
                                f"device '{dev}' is not available", "--device cpu")
    _assert_clean_error(_collect(word_model, store, "--device", "tpu"), "unknown device 'tpu'")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "model.gguf").write_bytes(b"")
    res = CliRunner().invoke(main, ["layers", "--model", str(hf_dir), "--gguf-file", "nope.gguf"])
    _assert_clean_error(res, "no GGUF file 'nope.gguf'", "it has: model.gguf")
    res = CliRunner().invoke(main, ["collect", "--model", str(word_model["ckpt"]), "--tokenizer",
                                    str(tmp_path), "--corpus", str(word_model["text"]),
                                    "--layers", "lstm", "--store", str(store), "--stage", "s"])
    _assert_clean_error(res, "cannot load a tokenizer from")
    assert len(res.output.splitlines()) == 1
    assert not store.exists()


@pytest.mark.parametrize("args,words", [
    (["collect", "--model", "m.pt"], "Missing option '--corpus'"),
    (["compare", "s.zarr", "--bogus"], "No such option '--bogus'"),
    (["collect", "--model", "m.pt", "--corpus", "c.txt", "--layers", "x", "--store", "s",
      "--stage", "s", "-k", "x"], "Invalid value for '-k': use a positive integer or 'all'"),
])
def test_usage_errors_are_one_line(args, words):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert res.output.startswith(f"error: {words}") and res.output.count("\n") == 1, res.output
    assert f"{args[0]} --help`" in res.output


def test_cli_layer_without_position_axis(word_model, tmp_path):
    """A classifier head gives one vector per sequence: the message says so and what to pick."""
    from naive import WORDS
    from txray_engine.models import LSTMClassifier
    torch.save(LSTMClassifier(len(WORDS), 2, 8, 6), tmp_path / "clf.pt")
    res = CliRunner().invoke(main, ["collect", "--model", str(tmp_path / "clf.pt"), "--vocab",
                                    str(word_model["vocab"]), "--corpus", str(word_model["text"]),
                                    "--layers", "head", "--store", str(tmp_path / "s.zarr"),
                                    "--stage", "s", "-q"])
    _assert_clean_error(res, "layer 'head'", "one vector per sequence", "txray layers")
    assert not (tmp_path / "s.zarr").exists()


def test_merge_refuses_another_k_or_other_feature_ids():
    """Counts of top-1 and top-3 selections, or ids meaning other strings, must not be added up."""
    from txray_engine import merge
    acts, ids = torch.randn(6, 4), {"tok": torch.tensor([0, 1, 2, 0, 1, 2])}
    one, three = Accumulator(VOCAB, k=1), Accumulator(VOCAB, k=3)
    one.observe("enc", acts, ids)
    three.observe("enc", acts, ids)
    with pytest.raises(InputError,
                       match="cannot merge accumulators of other settings \\(k 1, not 3\\)"):
        merge(one, three)
    shuffled = Accumulator({"tok": ["c", "b", "a"]}, k=1)
    shuffled.observe("enc", acts, ids)
    with pytest.raises(InputError, match="stream 'tok' has another vocabulary .*the same ids must "
                                         "mean the same features"):
        merge(one, shuffled)
    again = Accumulator({"tok": Vocabulary(["a", "b", "c"])}, k=1)
    again.observe("enc", acts, ids)
    assert merge(one, again).layers["enc"].tokens == 12


def test_one_name_where_a_list_is_expected(word_model, tmp_path):
    """A single layer, corpus file, stream list 'token,label' or stage list 'a,b' given as one
    string means what it says (it was split into characters: layer 'l', file 'c', ...)."""
    from txray_engine.collect import Corpus, collect_corpus, load_model
    from txray_engine.report import build_report
    lm = load_model(str(word_model["ckpt"]), vocab=str(word_model["vocab"]))
    corpus = Corpus(str(word_model["jsonl"]), label_field="label")
    store = tmp_path / "s.zarr"
    run = collect_corpus(lm, corpus, "lstm", "token,label", store=store, stage="a", quiet=True)
    assert run["layers"] == ["lstm"] and run["streams"] == ["token", "label"]
    collect_corpus(lm, corpus, "lstm", "token", store=store, stage="b", quiet=True)
    rep = build_report(store, stages="a,b", layers="lstm", out=tmp_path / "r.html")
    assert rep.stages == ["a", "b"] and rep.layers == ["lstm"]
    with pytest.raises(InputError, match="Stream objects, or a dict"):
        Accumulator(["token"])


def test_reading_and_measuring_mistakes_are_input_errors(two_stages):
    """Mistakes in the Python API raise the engine's InputError (a ValueError) with what to do,
    never a KeyError, TypeError or AttributeError from inside."""
    from txray_engine import Stream, open_store
    from txray_engine.measures import NeuronTable, compare, compare_streams
    st = open_store(two_stages)
    a, b = (st.stage(s).layer("lstm").stream("token") for s in ("text", "reviews"))
    cases = [
        (lambda: a.top_features(1, 3, by="Mass"), "by must be 'mass' or 'count'"),
        (lambda: a.top_features(1, -1), "n must be a whole number ≥ 0"),
        (lambda: a.row(3.0), "integer id"),
        (lambda: a.csr("masses"), "use one of count, mass, peak"),
        (lambda: Vocabulary(["a", "a"]), "must be unique"),
        (lambda: Stream("t", Vocabulary(["a"]), "inputs"), "unknown source"),
        (lambda: compare(a.stats, b.stats, min_count=0), "whole number ≥ 1"),
        (lambda: compare_streams(a.stats, b.stats), r"takes StreamViews.*compare\(a, b"),
        (lambda: NeuronTable({"neuron": np.arange(3), "x": np.arange(2)}), "of one length"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
    views = compare(a, b)  # two StreamViews: as compare_streams
    assert views.summary() == compare(a.stats, b.stats, list(a.vocab), list(b.vocab),
                                      neuron_count_a=a.layer.neuron_count,
                                      neuron_count_b=b.layer.neuron_count).summary()
    assert repr(views).startswith("Comparison: 12 neurons, ")


@pytest.mark.parametrize("pad", [float("-inf"), torch.finfo(torch.float32).min, 0.5, 2])
def test_mask_values_other_than_0_and_1_are_refused(pad):
    """An additive attention mask (0 = keep, -inf = pad) counted exactly the padding; a mask that
    is not bool holds 0 and 1 only."""
    acc = Accumulator(VOCAB)
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.where(keep.bool(), torch.tensor(0.0), torch.tensor(float(pad))) \
        if pad != 2 else keep * 2
    with pytest.raises(InputError, match="True or 1 at real positions.*mask == 0"):
        acc.observe("enc", torch.randn(2, 4, 3), {"tok": ids}, mask=mask)
    assert not acc.layers
    for good in (keep, keep.float(), keep.bool()):
        acc.observe("enc", torch.randn(2, 4, 3), {"tok": ids}, mask=good)
    assert acc.layers["enc"].tokens == 15


def test_a_device_this_machine_lacks_is_refused_at_once():
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device.*device='cpu'"):
            Accumulator(VOCAB, device="cuda")
    with pytest.raises(InputError, match="not a torch device"):
        Accumulator(VOCAB, device="gpu")
    with pytest.raises(InputError, match="meta device"):
        Accumulator(VOCAB).observe("enc", torch.empty(2, 3, device="meta"),
                                   {"tok": torch.zeros(2, dtype=torch.long)})


def test_batch_counts_by_the_attention_mask_its_inputs_hold():
    """A Batch whose inputs hold the attention_mask the model is given counts by it (it counted
    the padding when mask= was left out); mask= still decides where given."""
    ids = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    model = torch.nn.Sequential(torch.nn.Embedding(3, 5), torch.nn.ReLU())

    def run(batch):
        with Collector(model, ["1"], [Stream("tok", Vocabulary(VOCAB["tok"]), "input")],
                       forward=lambda m, b: m(b.input_ids)) as col:
            col.step(batch)
        return col.accumulator.layers["1"].tokens

    assert run(Batch(input_ids=ids, inputs={"input_ids": ids, "attention_mask": attention})) == 5
    assert run(Batch(input_ids=ids, inputs={"input_ids": ids, "attention_mask": attention},
                     mask=torch.ones(2, 4, dtype=torch.bool))) == 8
    assert run(Batch(input_ids=ids)) == 8
    # a tokenizer's BatchEncoding is a UserDict, not a dict
    from collections import UserDict
    assert run(Batch(input_ids=ids, inputs=UserDict(input_ids=ids, attention_mask=attention))) == 5
    # an equal copy (e.g. moved to the model's device) is the same ids: it counted padding
    assert run(Batch(input_ids=ids, inputs={"input_ids": ids.clone(),
                                            "attention_mask": attention})) == 5
    # other ids than the inputs' (an encoder-decoder's decoder ids): not the encoder's mask
    assert run(Batch(input_ids=ids, inputs={"input_ids": ids.flip(1),
                                            "attention_mask": attention})) == 8
    with pytest.raises(InputError, match=r"Batch.input_ids must be a torch.Tensor, got ndarray"):
        Batch(input_ids=ids.numpy())
    # a mask that is not 0/1 is refused also where leading context positions are left out
    additive = torch.where(attention.bool(), 0.0, float("-inf"))
    with pytest.raises(InputError, match="mask holds -inf"):
        run(Batch(input_ids=ids, mask=additive, context=torch.tensor([1, 0])))
    assert run(Batch(input_ids=ids, mask=attention, context=torch.tensor([1, 0]))) == 4


def test_corpus_commands_name_a_missing_extra(tmp_path, monkeypatch):
    """Without gensim, `txray corpus wikipedia` says which extra to install and leaves no empty
    file (it raised ModuleNotFoundError, exit 1, after creating the output)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gensim" else real(name, *a))
    out = tmp_path / "w.txt"
    res = CliRunner().invoke(main, ["corpus", "wikipedia", "--out", str(out)])
    assert res.exit_code == 2 and "pip install 'txray_engine[data]'" in res.output, res.output
    assert not out.exists()


def test_a_corpus_is_checked_and_counted_as_it_is_read(tmp_path):
    """The document count (the stages' corpus_documents, which merges number on from) split
    lines at '\\n' only and stripped ASCII spaces only: a lone '\\r' or a line of no-break
    spaces made it differ from the documents read; a byte that is not UTF-8 stopped a run only
    when it was reached, hours in, with no line named."""
    from txray_engine.collect.corpus import Corpus
    from txray_engine.errors import CorpusError

    a, c = tmp_path / "a.txt", tmp_path / "c.txt"
    a.write_bytes(b"one doc.\n\xc2\xa0\nsecond\r\nthird\n")
    c.write_bytes(b"\xef\xbb\xbfalpha\rbeta gamma\n\n  \nlast")
    for files, n in (([a], 3), ([c], 3), ([a, c], 6)):
        corpus = Corpus(files)
        assert corpus.count_documents() == len(list(corpus)) == n
    assert Corpus([c], unit="file").count_documents() == 1
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 3000 + b"caf\xe9\nmore\n")
    with pytest.raises(CorpusError, match=r"bad.txt:3001: not UTF-8 text \(byte 0xe9 at column 4"):
        Corpus([bad]).identity()
    for data, where in ((b"\xef\xbb\xbfabc\xe9def\n", ":1: .* 0xe9 at column 4"),  # (a BOM)
                        (b"one\rtwo\rthree \xe9\r", ":3: .* 0xe9 at column 7"),  # (lone CRs)
                        (b"caf\xc3\xa9 na\xefve\n", ":1: .* 0xef at column 8")):  # (characters)
        bad.write_bytes(data)
        with pytest.raises(CorpusError, match=where):
            Corpus([bad]).identity()
    import gzip  # (a compressed corpus was told to convert from latin1)
    bad.write_bytes(gzip.compress(b"one\ntwo\n"))
    with pytest.raises(CorpusError, match=r"bad.txt: a gzip file, not text; unpack it first"):
        Corpus([bad]).identity()
    for data, what in (("one\ntwo\n".encode("utf-16"), r"bad.txt: UTF-16 text; .*-f utf-16"),
                       ("one\ntwo\n".encode("utf-16-le"), r"bad.txt:1: a NUL character")):
        bad.write_bytes(data)  # (read as UTF-8 without its byte order mark: 'o\x00n\x00e')
        with pytest.raises(CorpusError, match=what):
            Corpus([bad]).identity()


@pytest.mark.parametrize("value", ["null", "[1, 2]", '{"a": 1}'])
def test_a_label_that_is_not_a_class_name_is_refused(tmp_path, value):
    """A null label became a class 'None', a list its Python repr."""
    from txray_engine.collect.corpus import Corpus
    from txray_engine.errors import CorpusError

    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a b", "label": "pos"}\n{"text": "c", "label": %s}\n' % value)
    with pytest.raises(CorpusError, match=f"c.jsonl:2: the label 'label' is {re.escape(value)}"):
        Corpus([path], label_field="label").labels()


def test_labels_that_are_json_values_read_as_written(tmp_path):
    """A JSON true became the class 'True' (Python's spelling), not 'true' as in the file."""
    from txray_engine.collect.corpus import Corpus

    path = tmp_path / "c.jsonl"
    path.write_text("".join('{"text": "a", "label": %s}\n' % v
                            for v in ("true", "false", "1", "2.5", '"neg"')))
    assert Corpus([path], label_field="label").labels() == ["1", "2.5", "false", "neg", "true"]


def test_unicode_forms_and_half_characters_in_a_jsonl_corpus(tmp_path):
    """A lone surrogate (JSON's '\\ud83d', an emoji cut in half) stopped a collection in the
    tokenizer with a traceback; a label composed or decomposed made two classes printed alike."""
    import unicodedata

    from txray_engine.collect.corpus import Corpus

    path = tmp_path / "c.jsonl"
    nfc, nfd = "négatif", unicodedata.normalize("NFD", "négatif")
    path.write_text(json.dumps({"text": "cut \ud83d here", "label": nfc}) + "\n"
                    + json.dumps({"text": "whole 😀", "label": nfd}) + "\n")
    corpus = Corpus([path], label_field="label")
    assert [d.text for d in corpus] == ["cut \ufffd here", "whole 😀"]
    assert corpus.labels() == [nfc]


def test_a_stage_name_in_another_unicode_form_of_an_existing_one_is_refused(tmp_path):
    import unicodedata

    from txray_engine import Accumulator, StageWriter
    acc = Accumulator({"token": ["a", "b"]}, k=1)
    with StageWriter(tmp_path / "s.zarr", "café", "new", {}) as w:
        w.commit(acc, {"units": 0})
    with pytest.raises(InputError, match=r"reads as the existing stage 'caf\\xe9'"):
        StageWriter(tmp_path / "s.zarr", unicodedata.normalize("NFD", "café"), "new", {}).open()
