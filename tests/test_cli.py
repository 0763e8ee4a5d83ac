"""The txray command line on local models: word-level LSTM checkpoint and a Hugging Face directory."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from naive import make_hf_model_dir
from txray_engine import open_store, same_sums
from txray_engine.cli import main
from txray_engine.features.pos import POS_VOCAB, align_tags


def _run(*args):
    res = CliRunner().invoke(main, list(map(str, args)))
    assert res.exit_code == 0, res.output
    return res


def test_collect_and_info_word_model(word_model, tmp_path):
    store = tmp_path / "s.zarr"
    out = _run("collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
               "--corpus", word_model["jsonl"], "--layers", "lstm", "--streams",
               "token,label,predicted", "-k", "3", "--store", store, "--stage", "reviews",
               "--json", "-q")
    summary = json.loads(out.output)
    assert summary["documents"] == 60 and summary["layers"] == ["lstm"]
    st = open_store(store).stage("reviews")
    assert st.status == "complete" and st.k == 3 and list(st.vocab("label")) == ["neg", "pos"]
    layer = st.layer("lstm")
    assert layer.n_neurons == 12 and layer.tokens == st.tokens == summary["tokens_this_run"]
    lab = layer.stream("label")
    assert lab.csr("count").sum() == 3 * layer.tokens
    assert lab.feature_freq.sum() == layer.tokens
    pred = layer.stream("predicted")
    assert pred.csr("count").shape == (12, len(st.vocab("token")))
    text = _run("info", store).output
    assert "stage reviews: complete" in text and "layer lstm: 12 neurons" in text
    data = json.loads(_run("info", store, "--json").output)
    assert data["stages"]["reviews"]["documents"] == 60
    layers = _run("layers", "--model", word_model["ckpt"]).output
    assert "lstm\tLSTM" in layers
    assert _run("layers", "--model", word_model["ckpt"], "--pattern", "dec*").output == \
        "decoder\tLinear\n"
    res = CliRunner().invoke(main, ["layers", "--model", str(word_model["ckpt"]), "--pattern",
                                    "mlp*"])
    assert res.exit_code == 2 and res.output.startswith("error: no module path of ")


def test_unknown_words_and_windows(word_model, tmp_path):
    store = tmp_path / "s.zarr"
    _run("collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--corpus",
         word_model["text"], "--layers", "lstm", "--store", store, "--stage", "s",
         "--max-length", "4", "--batch-size", "3", "--max-documents", "50", "-q")
    st = open_store(store).stage("s")
    assert st.cursor["documents"] == 50 and st.cursor["units"] > 50
    tok = st.layer("lstm").stream("token")
    assert tok.feature_freq[st.vocab("token").id("<unk>")] > 0  # 'zzz'-suffixed words


def test_a_stage_stopped_at_max_documents_continues_with_a_higher_limit(word_model, tmp_path):
    """A pilot run of 20 documents, continued to 50 and then to the whole corpus (60), holds the
    same sums as one run; a corpus that was read to its end has nothing left to continue."""
    args = ["--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--corpus",
            word_model["text"], "--layers", "lstm", "--max-length", "4", "--batch-size", "3",
            "-k", "2", "--stage", "s", "-q"]
    one, parts = tmp_path / "one.zarr", tmp_path / "parts.zarr"
    _run("collect", *args, "--store", one)
    _run("collect", *args, "--store", parts, "--max-documents", "20")
    res = CliRunner().invoke(main, ["collect", *map(str, args), "--store", str(parts),
                                    "--max-documents", "20", "--resume"])
    assert res.exit_code == 2 and "stopped at its limit of 20 documents" in res.output
    _run("collect", *args, "--store", parts, "--max-documents", "50", "--resume")
    assert open_store(parts).stage("s").cursor["documents"] == 50
    assert "50 documents, k=2 (stopped at --max-documents 50: --resume with a higher limit " \
        "continues it)" in _run("info", parts).output
    _run("collect", *args, "--store", parts, "--resume")
    a, b = open_store(one).stage("s"), open_store(parts).stage("s")
    assert a.cursor == b.cursor and a.status == b.status == "complete"
    assert same_sums(a.accumulator(), b.accumulator())
    res = CliRunner().invoke(main, ["collect", *map(str, args), "--store", str(parts),
                                    "--resume"])
    assert res.exit_code == 2 and "already complete: nothing to resume;" in res.output


def test_hf_directory_with_pos_stream(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("textblob")
    model_dir = make_hf_model_dir(tmp_path / "gpt2")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat .\nthe big dog ran , and a red house was small .\n")
    store = tmp_path / "s.zarr"
    res = _run("collect", "--model", model_dir, "--corpus", corpus, "--layers",
               "transformer.h.*.mlp.act", "--streams", "token,pos,predicted", "--store", store,
               "--stage", "s", "-q")
    # -q: the summary line only, no progress bar of the model's loading either
    assert res.output.startswith("stage 's' complete") and res.output.count("\n") == 1
    st = open_store(store).stage("s")
    assert st.layers == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    pos = st.layer("transformer.h.1.mlp.act").stream("pos")
    freq = dict(zip(POS_VOCAB, pos.feature_freq))
    assert freq["DT"] == 4 and freq["NN"] >= 4 and freq["VBD"] >= 2
    assert pos.meta["missing"] == 0


def test_pos_alignment_to_subword_tokens():
    text = "The cats sat."
    tagged = [("The", "DT"), ("cats", "NNS"), ("sat", "VBD"), (".", ".")]
    offsets = [(0, 3), (3, 6), (6, 8), (8, 12), (12, 13), (13, 13)]  # ' ca' 'ts' subwords
    ids = align_tags(text, offsets, tagged)
    names = [POS_VOCAB[i] if i >= 0 else None for i in ids]
    assert names == ["DT", "NNS", "NNS", "VBD", ".", None]


def test_store_refusals_come_before_the_model_loads(word_model, tmp_path, monkeypatch):
    """A stage that exists, or a store another writer holds, fails at once: the model (35 s for
    SmolLM2 on a CPU) is not loaded first."""
    import txray_engine.collect as collect_pkg
    from txray_engine import StageWriter
    args = ["collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--corpus",
            word_model["text"], "--layers", "lstm", "--store", tmp_path / "s.zarr", "--stage",
            "s", "-q"]
    _run(*args)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(collect_pkg, "load_model", no_load)
    res = CliRunner().invoke(main, list(map(str, args)))
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    res = CliRunner().invoke(main, list(map(str, args + ["--resume"])))
    assert res.exit_code == 2 and "already complete" in res.output, res.output
    with StageWriter(tmp_path / "s.zarr", "t", "new", {}):
        res = CliRunner().invoke(main, list(map(str, args[:-2] + ["t", "-q"])))
    assert res.exit_code == 2 and "being written by another writer" in res.output, res.output


def test_time_first_model_counts_as_its_batch_first_twin(word_model, tmp_path):
    """--time-first: a model taking [time, batch] and returning flat logits, collected with as
    many sequences per batch as positions (where a wrong layout keeps every shape), gives the
    batch-first model's sums (nothing tells a time-first model from its shapes: it must be
    declared)."""
    import torch
    from naive import TimeFirstWordLM

    ckpt = tmp_path / "time_first.pt"
    torch.save(TimeFirstWordLM(word_model["model"]), ckpt)
    store = tmp_path / "s.zarr"
    data = ["--vocab", word_model["vocab"], "--corpus", word_model["text"], "--streams",
            "token,predicted", "-k", "2", "--max-documents", "30", "--store", store, "-q"]
    common = [*data, "--batch-size", "4", "--max-length", "4"]
    _run("collect", "--model", word_model["ckpt"], "--layers", "lstm", "--layers", "decoder",
         "--stage", "batch_first", *common)
    out = _run("collect", "--model", ckpt, "--time-first", "--layers", "rnn", "--layers",
               "decoder", "--stage", "time_first", *common).output
    assert "rnn taken as time_first; decoder taken as time_first" in out
    listed = _run("layers", "--model", ckpt).output.splitlines()
    assert "rnn\tLSTM\ttime_first" in listed and "decoder\tLinear" in listed
    _run("prune", store, "--stage", "time_first", "--layer", "rnn", "--selector", "lowest_mass",
         "--count", "2", "--out", tmp_path / "mask.json")
    mask = json.loads((tmp_path / "mask.json").read_text())
    assert mask["layouts"] == {"rnn": "time_first"} and len(mask["layers"]["rnn"]) == 2
    # shards merged keep the layouts; a stage without the attribute (older, or edited here)
    # falls back on what its collection settings name
    for i in (0, 1):
        _run("collect", "--model", ckpt, "--time-first", "--layers", "rnn", "--layers", "decoder",
             "--stage", f"part{i}", "--shard", f"{i}/2", *common)
    _run("merge", f"{store}::part0", f"{store}::part1", "--store", store, "--stage", "merged")
    assert open_store(store).stage("merged").layouts == {"rnn": "time_first",
                                                         "decoder": "time_first"}
    meta_file = store / "merged" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    del meta["attributes"]["txray_engine"]["layouts"]
    meta_file.write_text(json.dumps(meta))
    assert open_store(store).stage("merged").layouts == {"decoder": "time_first"}
    info = _run("info", store).output
    assert "layer rnn: 12 neurons, time_first" in info and "layer lstm: 12 neurons\n" in info
    s = open_store(store)
    a, b = s.stage("batch_first"), s.stage("time_first")
    for la, lb in (("lstm", "rnn"), ("decoder", "decoder")):
        for stream in ("token", "predicted"):
            va, vb = a.layer(la).stream(stream), b.layer(lb).stream(stream)
            for what in ("count", "peak"):
                np.testing.assert_array_equal(va.csr(what).toarray(), vb.csr(what).toarray())
            np.testing.assert_allclose(va.csr("mass").toarray(), vb.csr("mass").toarray(),
                                       rtol=1e-6)
    res = CliRunner().invoke(main, list(map(str, [
        "collect", "--model", ckpt, "--layers", "decoder", "--layout", "decoder=sideways",
        "--stage", "x", *common])))
    assert res.exit_code != 0 and "layout must be one of" in res.output


def test_the_command_line_starts_without_torch():
    """`txray --help` (and every command's option parsing) imports neither torch nor the numba
    kernels: they load with the first command that needs them (2.6-4 s before)."""
    import subprocess
    import sys
    code = ("import sys, txray_engine.cli; "
            "print(sorted(m for m in ('torch', 'numba', 'zarr', 'txray_kernels') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_windows_fit_the_models_context(tmp_path):
    """A GPT-2 of 64 positions over a 128-token window failed with a 28-frame IndexError: the
    default window is now the model's context where it is shorter, and a longer one is refused
    before the run."""
    pytest.importorskip("transformers")
    model_dir = make_hf_model_dir(tmp_path / "gpt2")
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(["the cat sat on the mat ."] * 30) + "\n")  # 210 words
    store = tmp_path / "s.zarr"
    args = ["collect", "--model", model_dir, "--corpus", corpus, "--layers",
            "transformer.h.0.mlp.act", "--store", store, "--stage", "s", "-q"]
    res = CliRunner().invoke(main, list(map(str, [*args, "--max-length", "100"])))
    assert res.exit_code == 2 and "windows of 100 tokens are longer than the model takes (64 " \
        "positions" in res.output and "--max-length 64 or less" in res.output
    assert not (store / "s").exists()
    out = _run(*args, "--json").output
    st = open_store(store).stage("s")
    assert st.meta["options"]["max_length"] == 64 and st.tokens == 210
    summary = json.loads(out)
    dense = st.layer("transformer.h.0.mlp.act").n_neurons * len(st.vocab("token")) * 20
    assert summary["states"] == {"transformer.h.0.mlp.act": {"token": "dense"}}
    assert summary["state_bytes"] == dense  # (count int64, mass float64, peak float32)
    # a resume without --max-length keeps the stage's windows
    corpus.write_text(corpus.read_text() * 3)
    args[args.index(store)] = store2 = tmp_path / "t.zarr"
    _run(*args, "--max-length", "32", "--max-documents", "1")
    _run(*args, "--resume")
    st = open_store(store2).stage("s")
    assert st.meta["options"]["max_length"] == 32 and st.status == "complete"
    assert st.tokens == 3 * 210


@pytest.mark.parametrize("arch,cls", [("bert", "BertModel"),
                                      ("llama_cls", "LlamaForSequenceClassification"),
                                      ("t5", "T5ForConditionalGeneration")])
def test_a_checkpoint_loads_as_its_own_class(tmp_path, arch, cls):
    """A headless encoder or a classifier loaded as a causal LM got a random head (its
    'predicted' stream random, its weights hash new at every load: no resume, no merge), and a
    BART checkpoint lost its encoder; T5 could not be called without decoder inputs."""
    pytest.importorskip("transformers")
    from txray_engine.collect import load_model

    model_dir = make_hf_model_dir(tmp_path / arch, arch=arch)
    a, b = (load_model(str(model_dir), quiet=True) for _ in range(2))
    assert type(a.model).__name__ == cls and a.identity == b.identity
    if arch != "t5":
        return
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat .\nthe big dog ran .\n")
    store = tmp_path / "s.zarr"
    layers = ["encoder.block.0.layer.1.DenseReluDense.act",
              "decoder.block.1.layer.2.DenseReluDense.act"]
    _run("collect", "--model", model_dir, "--corpus", corpus, *sum((["--layers", x] for x in
                                                                     layers), []),
         "--streams", "token,predicted", "--store", store, "--stage", "s", "-q")
    st = open_store(store).stage("s")
    assert st.layers == layers and st.tokens == 12
    # the decoder read the input shifted right: its top-1 counts are those of that forward pass
    model, tok = a.model, a.tokenizer
    counts = np.zeros(st.layer(layers[1]).n_neurons, np.int64)
    for line in corpus.read_text().splitlines():
        ids = torch.tensor([tok.encode(line)[0]])
        seen = []
        module = dict(model.named_modules())[layers[1]]
        hook = module.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            with torch.no_grad():
                model(input_ids=ids, decoder_input_ids=model._shift_right(ids))
        finally:
            hook.remove()
        counts += np.bincount(seen[0][0].argmax(-1).numpy(), minlength=len(counts))
    assert np.array_equal(st.layer(layers[1]).neuron_count, counts)


def test_a_checkpoint_without_an_unused_weight_loads_with_a_warning(tmp_path):
    """A BERT saved without its pooler was refused as lacking weights; it loads as the class
    that lacks fewest, with a warning naming them."""
    pytest.importorskip("transformers")
    import transformers

    from txray_engine.collect import load_model

    model_dir = make_hf_model_dir(tmp_path / "bert", arch="bert")
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(model_dir)
    with pytest.warns(UserWarning, match="holds no weights for pooler.dense.bias, "
                                         "pooler.dense.weight of BertModel"):
        loaded = load_model(str(model_dir), quiet=True)
    assert type(loaded.model).__name__ == "BertModel"


def test_a_whole_hf_model_saved_with_torch_is_called_with_its_mask(tmp_path, word_model):
    """torch.save of a BERT was called as model(ids): the encoder attended to the padding, and
    its sums depended on which documents shared a batch."""
    pytest.importorskip("transformers")
    import transformers

    model_dir = make_hf_model_dir(tmp_path / "bert", arch="bert")
    ckpt = tmp_path / "bert.pt"
    torch.save(transformers.AutoModel.from_pretrained(model_dir), ckpt)
    sums = []
    for batch in ("8", "1"):  # padded batches, and one document at a time
        store = tmp_path / f"b{batch}.zarr"
        _run("collect", "--model", ckpt, "--tokenizer", model_dir, "--corpus", word_model["text"],
             "--layers", "encoder.layer.1.intermediate.intermediate_act_fn", "--batch-size",
             batch, "--store", store, "--stage", "s", "-q")
        layer = open_store(store).stage("s").layer("encoder.layer.1.intermediate."
                                                   "intermediate_act_fn")
        sums.append((layer.neuron_count, layer.neuron_mass))
    assert np.array_equal(sums[0][0], sums[1][0])
    np.testing.assert_allclose(sums[0][1], sums[1][1], rtol=1e-5)


def test_a_model_head_wider_than_the_tokenizer_predicts_extra_ids(tmp_path, word_model):
    """An output layer padded past the tokenizer (Qwen2, Llama 3): an argmax past it stopped the
    run, 'feature id ... is outside its vocabulary', which no option could extend."""
    pytest.importorskip("transformers")
    import transformers

    model_dir = make_hf_model_dir(tmp_path / "llama", arch="llama")
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    words = cfg.vocab_size
    cfg.vocab_size = words + 7
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[words:] += 3.0  # (the extra ids win often)
    model.save_pretrained(model_dir)
    store = tmp_path / "s.zarr"
    _run("collect", "--model", model_dir, "--corpus", word_model["text"], "--layers",
         "model.layers.0.mlp.act_fn", "--streams", "token,predicted", "--store", store,
         "--stage", "s", "-q")
    st = open_store(store).stage("s")
    vocab = st.vocab("predicted")
    assert len(vocab) == words + 7 and len(st.vocab("token")) == words
    assert list(vocab)[:words] == list(st.vocab("token")) and vocab[words] == f"<extra id {words}>"
    freq = st.layer("model.layers.0.mlp.act_fn").stream("predicted").feature_freq
    assert freq[words:].sum() > 0 and freq.sum() == st.tokens


def test_special_tokens_are_added_on_request(tmp_path, word_model):
    """Documents went in without BOS (or [CLS]), which Llama-style models and BERT expect, and
    nothing could add it."""
    pytest.importorskip("transformers")
    import transformers
    from tokenizers import processors

    model_dir = make_hf_model_dir(tmp_path / "llama", arch="llama")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<pad> $A", special_tokens=[("<pad>", 1)])  # (<pad> as this test's BOS)
    tok.save_pretrained(model_dir)
    docs = len([t for t in word_model["text"].read_text().splitlines() if t.strip()])
    base = ["collect", "--model", model_dir, "--corpus", word_model["text"], "--layers",
            "model.layers.0.mlp.act_fn", "--streams", "token", "-q", "--max-length", "8"]
    for flag, store in (([], "plain.zarr"), (["--special-tokens"], "bos.zarr")):
        _run(*base, *flag, "--store", tmp_path / store, "--stage", "s")
    plain, bos = (open_store(tmp_path / s).stage("s") for s in ("plain.zarr", "bos.zarr"))
    freq = bos.layer("model.layers.0.mlp.act_fn").stream("token").feature_freq
    assert bos.tokens == plain.tokens + docs and freq[1] == docs
    assert bos.meta["model"]["tokenizer"]["special_tokens"] is True
    assert "special_tokens" not in plain.meta["model"]["tokenizer"]  # (older stages resume)
    res = CliRunner().invoke(main, [str(a) for a in [
        "collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--layers",
        "lstm", "--corpus", word_model["text"], "--special-tokens", "--store", tmp_path / "w.zarr",
        "--stage", "s", "-q"]])
    assert res.exit_code == 2 and "word vocabulary" in res.output


def test_a_model_loads_in_the_type_asked(tmp_path, word_model):
    """Every model was loaded in float32: a bfloat16 checkpoint took twice its GPU memory."""
    pytest.importorskip("transformers")
    model_dir = make_hf_model_dir(tmp_path / "llama", arch="llama")
    layer = "model.layers.0.mlp.act_fn"
    stages = {}
    for dtype in ("float32", "bfloat16"):
        store = tmp_path / f"{dtype}.zarr"
        _run("collect", "--model", model_dir, "--corpus", word_model["text"], "--layers", layer,
             "--dtype", dtype, "--store", store, "--stage", "s", "-q")
        stages[dtype] = open_store(store).stage("s")
    a, b = stages["float32"], stages["bfloat16"]
    assert a.tokens == b.tokens and a.meta["model"]["weights"] != b.meta["model"]["weights"]
    # the same model, rounded: most positions select the same neuron
    same = np.minimum(a.layer(layer).neuron_count, b.layer(layer).neuron_count).sum()
    assert same > 0.8 * a.tokens
    ckpt = tmp_path / "lm.pt"
    from txray_engine.collect import load_model
    torch.save(load_model(str(model_dir), quiet=True).model, ckpt)
    assert load_model(str(ckpt), dtype="float16", require_tokenizer=False).model.dtype == \
        torch.float16


def test_a_stage_begun_before_the_extra_ids_resumes(tmp_path, word_model, monkeypatch):
    """The predicted vocabulary of a head wider than its tokenizer grew by the extra ids: a
    stage begun with the tokenizer's vocabulary was refused as 'other settings'."""
    pytest.importorskip("transformers")
    import transformers

    import txray_engine.collect.run as run

    model_dir = make_hf_model_dir(tmp_path / "llama", arch="llama")
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    cfg.vocab_size += 7
    transformers.LlamaForCausalLM(cfg).save_pretrained(model_dir)
    args = ["collect", "--model", model_dir, "--corpus", word_model["text"], "--layers",
            "model.layers.0.mlp.act_fn", "--streams", "token,predicted", "--store",
            tmp_path / "s.zarr", "--stage", "s", "-q"]
    import txray_engine.features.streams as streams

    real, ids = run.predicted_vocab, streams.predicted_ids
    words = cfg.vocab_size - 7
    # (a trained model: no extra id wins, as none did where such a stage ran before)
    monkeypatch.setattr(streams, "predicted_ids", lambda logits: ids(logits[..., :words]))
    with monkeypatch.context() as m:  # as the stage was begun before
        m.setattr(run, "predicted_vocab", lambda loaded: loaded.tokenizer.vocab)
        _run(*args, "--max-documents", "5")
    assert run.predicted_vocab is real
    stage = open_store(tmp_path / "s.zarr").stage("s")
    assert len(stage.vocab("predicted")) == words and stage.meta["corpus_done"] is False
    _run(*args, "--resume")
    assert open_store(tmp_path / "s.zarr").stage("s").status == "complete"
