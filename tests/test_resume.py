"""Crash and resume: a collection killed with SIGKILL at random points, then resumed, ends with
exactly the state of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from txray_engine import open_store, same_sums
from txray_engine.cli import main


def _args(wm, corpus, store, *extra):
    return ["collect", "--model", str(wm["ckpt"]), "--vocab", str(wm["vocab"]), "--corpus",
            str(corpus), "--layers", "lstm", "--streams", "token,label", "--store", str(store),
            "--stage", "s", "--batch-size", "5", "--max-length", "8", "-k", "2", "--quiet",
            "--state", "sparse", "--examples", "3", *extra]


def _cursor(store):
    meta = store / "s" / "zarr.json"
    try:
        return json.loads(meta.read_text())["attributes"]["txray_engine"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def test_sigkill_at_random_points_then_resume_is_exact(word_model, tmp_path):
    rng = random.Random(1234)
    corpus = tmp_path / "big.jsonl"
    corpus.write_text(word_model["jsonl"].read_text() * 2)  # 120 documents
    ref_store = tmp_path / "ref.zarr"
    res = CliRunner().invoke(main, _args(word_model, corpus, ref_store))
    assert res.exit_code == 0, res.output
    ref_stage = open_store(ref_store).stage("s")
    total_units = ref_stage.cursor["units"]

    store = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills_mid_run = 0
    for attempt in range(5):
        before = (_cursor(store) or {}).get("cursor", {}).get("units", 0)
        # (up to two thirds of the run: a kill aimed near its end could land after it)
        target = rng.randint(before + 1, max(before + 1, total_units * 2 // 3))
        proc = subprocess.Popen([sys.executable, "-m", "txray_engine.cli",
                                 *_args(word_model, corpus, store, "--resume", "--flush-every",
                                        "0")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            meta = _cursor(store)
            if meta and meta["cursor"].get("units", 0) >= target:
                time.sleep(rng.uniform(0, 0.05))  # land anywhere, also inside a commit
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        meta = _cursor(store)
        if meta is not None and meta["status"] == "complete":
            break  # (it finished as the kill was sent)
        assert meta is None or meta["status"] == "in_progress"
        kills_mid_run += 1
    assert kills_mid_run >= 2
    if (_cursor(store) or {}).get("status") != "complete":
        res = CliRunner().invoke(main, _args(word_model, corpus, store, "--resume"))
        assert res.exit_code == 0, res.output
    stage = open_store(store).stage("s")
    assert stage.status == "complete"
    assert stage.cursor == ref_stage.cursor
    assert same_sums(stage.accumulator(), ref_stage.accumulator())
    ea, eb = stage.layer("lstm").examples, ref_stage.layer("lstm").examples  # (same_sums leaves
    for key in ea:  # the top examples out)
        np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
    # no leftover snapshot from a killed commit
    import zarr
    snaps = [k for k in zarr.open_group(str(store), mode="r")["s"].group_keys()
             if k.startswith("snap-")]
    assert snaps == [stage.meta["snapshot"]]


class _Stop(Exception):
    pass


def _interrupted_then_resumed(wm, tmp_path, monkeypatch, stop_after, **options):
    """Collect with a flush after every batch, stopped by an error after ``stop_after`` batches,
    then resumed; returns (the resumed store, the documents the resume tokenised)."""
    from txray_engine.collect import Collector, Corpus, collect_corpus, load_model
    from txray_engine.collect.sequences import WordTokenizer

    loaded = load_model(str(wm["ckpt"]), vocab=str(wm["vocab"]), quiet=True)
    corpus = Corpus([wm["text"]])
    kw = dict(layers=["lstm"], streams=["token"], k=2, stage="s", batch_size=3, max_length=4,
              flush_every=0, quiet=True, **options)
    real_step, seen = Collector.step, []

    def step(self, *a, **k):
        if len(seen) == stop_after:
            raise _Stop
        seen.append(1)
        return real_step(self, *a, **k)
    monkeypatch.setattr(Collector, "step", step)
    store = tmp_path / "resumed.zarr"
    try:
        collect_corpus(loaded, corpus, store=store, **kw)
    except _Stop:
        pass
    monkeypatch.setattr(Collector, "step", real_step)
    texts = []
    real_encode = WordTokenizer.encode
    monkeypatch.setattr(WordTokenizer, "encode",
                        lambda self, text, offsets=False: texts.append(text) or
                        real_encode(self, text, offsets))
    collect_corpus(loaded, corpus, store=store, mode="resume", **kw)
    monkeypatch.setattr(WordTokenizer, "encode", real_encode)
    collect_corpus(loaded, corpus, store=tmp_path / "whole.zarr", **kw)
    return store, texts


def test_resume_reads_on_from_the_last_counted_window(word_model, tmp_path, monkeypatch):
    """A resume does not tokenise (or tag) the documents before its cursor again, and its
    stage equals one uninterrupted run, down to a document split across batches."""
    store, texts = _interrupted_then_resumed(word_model, tmp_path, monkeypatch, stop_after=7)
    a, b = open_store(store).stage("s"), open_store(tmp_path / "whole.zarr").stage("s")
    assert a.cursor == b.cursor and same_sums(a.accumulator(), b.accumulator())
    lines = [t for t in word_model["text"].read_text().splitlines() if t.strip()]
    first = lines.index(texts[0])
    assert 0 < first and texts == lines[first:]  # from the document of the last counted window


def test_resume_with_a_limit_below_what_is_counted_is_refused(word_model, tmp_path):
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--max-documents",
                                         "40", "--flush-every", "0"))
    assert res.exit_code == 0, res.output
    meta = _cursor(store)
    meta["status"] = "in_progress"  # as if killed after its last flush
    path = store / "s" / "zarr.json"
    doc = json.loads(path.read_text())
    doc["attributes"]["txray_engine"] = meta
    path.write_text(json.dumps(doc))
    before = path.read_text()
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume",
                                         "--max-documents", "5"))
    assert res.exit_code == 2 and "past where --max-documents 5 stops" in res.output, res.output
    assert path.read_text() == before


def test_resume_with_other_weights_of_the_same_model_is_refused(word_model, tmp_path):
    """A checkpoint trained further (same file name, class and size) would mix the sums of two
    models in one stage: the weights are part of the model's identity."""
    import torch
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--max-documents",
                                         "10"))
    assert res.exit_code == 0, res.output
    model = torch.load(word_model["ckpt"], weights_only=False)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    torch.save(model, word_model["ckpt"])
    before = (store / "s" / "zarr.json").read_text()
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume",
                                         "--max-documents", "20"))
    assert res.exit_code == 2 and "other settings (model.weights (other weights, or the same " \
        "ones loaded with another --dtype), model.content)" in res.output, res.output
    assert (store / "s" / "zarr.json").read_text() == before


def test_the_same_files_under_other_names_resume_and_merge(word_model, tmp_path):
    """A job that copies its inputs under names of its own (model-copy.pt, a corpus per task)
    was refused as another model or corpus, though every byte is the same."""
    import shutil
    store, whole = tmp_path / "s.zarr", tmp_path / "whole.zarr"
    copy = dict(word_model, ckpt=tmp_path / "model-copy.pt", vocab=tmp_path / "vocab-copy.txt")
    shutil.copy(word_model["ckpt"], copy["ckpt"])
    shutil.copy(word_model["vocab"], copy["vocab"])
    corpus = tmp_path / "task-7.jsonl"
    shutil.copy(word_model["jsonl"], corpus)
    for args in (_args(word_model, word_model["jsonl"], store, "--max-documents", "10"),
                 _args(copy, corpus, store, "--resume"),
                 _args(word_model, word_model["jsonl"], whole)):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    a, b = open_store(store).stage("s"), open_store(whole).stage("s")
    assert same_sums(a.accumulator(), b.accumulator()) and a.cursor == b.cursor
    assert a.meta["model"]["source"] == "model-copy.pt"  # (the stage names the last files)
    for i, (files, name) in enumerate(((word_model, word_model["jsonl"]), (copy, corpus))):
        res = CliRunner().invoke(main, _args(files, name, tmp_path / f"p{i}.zarr", "--shard",
                                             f"{i}/2"))
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "p0.zarr"), str(tmp_path / "p1.zarr"),
                                    "--store", str(tmp_path / "m.zarr"), "--stage", "s"])
    assert res.exit_code == 0, res.output
    merged = open_store(tmp_path / "m.zarr").stage("s")
    assert same_sums(merged.accumulator(), b.accumulator())
    assert merged.meta["corpus"] == b.meta["corpus"]  # (one corpus: its first name)


def test_a_tokenizer_that_reads_text_otherwise_is_another_tokenizer(word_model, tmp_path):
    """Its name (a path) no longer tells tokenizers apart, so how it reads text must: the same
    vocabulary with a lower-casing normaliser splits text into other ids."""
    import shutil
    pytest.importorskip("transformers")
    from naive import make_hf_model_dir
    model_dir = make_hf_model_dir(tmp_path / "gpt2")
    store = tmp_path / "s.zarr"

    def collect(model, *extra):
        return CliRunner().invoke(main, [
            "collect", "--model", str(model), "--corpus", str(word_model["text"]), "--layers",
            "transformer.h.0.mlp.act", "--streams", "token", "--store", str(store), "--stage",
            "s", "-q", "--max-length", "8", *extra])
    res = collect(model_dir, "--max-documents", "3")
    assert res.exit_code == 0, res.output
    copy = shutil.copytree(model_dir, tmp_path / "job-7" / "gpt2")  # (another path: the same)
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    res = collect(copy, "--resume", "--max-documents", "6")
    assert res.exit_code == 2 and "model.tokenizer.config" in res.output, res.output
    shutil.copy(model_dir / "tokenizer.json", copy / "tokenizer.json")
    res = collect(copy, "--resume", "--max-documents", "6")
    assert res.exit_code == 0, res.output
    assert open_store(store).stage("s").cursor["documents"] == 6
    # a stage written before the tokenizer's reading was hashed: its name (the copy's path,
    # the last one it was given) is what tells it apart
    _as_an_earlier_engine_wrote_it(store, ("model.tokenizer.config",), status="in_progress")
    res = collect(model_dir, "--resume", "--max-documents", "9")
    assert res.exit_code == 2 and "other settings (model.tokenizer.name)" in res.output, \
        res.output


def test_resume_notices_one_changed_weight_and_a_reordered_vocabulary(word_model, tmp_path):
    """The sampled weights missed one changed value between samples (a retrained word vector),
    and the word tokenizer's identity held only its size (two words exchanged in the file change
    their ids): both resumed and mixed two collections in one stage."""
    import torch
    store = tmp_path / "s.zarr"
    base = _args(word_model, word_model["jsonl"], store, "--max-documents", "10")
    assert CliRunner().invoke(main, base).exit_code == 0
    before = (store / "s" / "zarr.json").read_text()
    original = Path(word_model["ckpt"]).read_bytes()
    model = torch.load(word_model["ckpt"], weights_only=False)
    with torch.no_grad():
        largest = max(model.parameters(), key=lambda p: p.numel())
        assert largest.numel() > 512  # so that element 1 lies between the sampled values
        largest.view(-1)[1] += 5
    torch.save(model, word_model["ckpt"])
    more = _args(word_model, word_model["jsonl"], store, "--resume", "--max-documents", "20")
    res = CliRunner().invoke(main, more)
    assert res.exit_code == 2 and "other settings (model.content)" in res.output, res.output
    Path(word_model["ckpt"]).write_bytes(original)
    vocab = Path(word_model["vocab"])
    words = vocab.read_text().splitlines()
    vocab.write_text("\n".join([words[1], words[0], *words[2:]]) + "\n")
    res = CliRunner().invoke(main, more)
    assert res.exit_code == 2 and "model.tokenizer.vocabulary" in res.output, res.output
    assert (store / "s" / "zarr.json").read_text() == before


def test_a_stage_written_before_the_content_hash_resumes(word_model, tmp_path):
    """Stages whose identity has no model.content or tokenizer vocabulary (written before they
    were added) resume with the same model and settings, and hold them from then on."""
    import json
    from txray_engine.store.format import ATTR, fingerprint
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store,
                                         "--max-documents", "10"))
    assert res.exit_code == 0, res.output
    path = store / "s" / "zarr.json"
    doc = json.loads(path.read_text())
    meta = doc["attributes"][ATTR]
    del meta["model"]["content"], meta["model"]["tokenizer"]["vocabulary"]
    identity = {key: meta[key] for key in ("model", "corpus", "options", "collection")}
    meta["fingerprint"] = fingerprint(identity)
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume",
                                         "--max-documents", "20"))
    assert res.exit_code == 0, res.output
    meta = json.loads(path.read_text())["attributes"][ATTR]
    assert "content" in meta["model"] and "vocabulary" in meta["model"]["tokenizer"]
    # such a stage resumed with another corpus names the corpus, not the entries it lacked
    del meta["model"]["content"]
    meta["fingerprint"] = fingerprint({key: meta[key] for key in identity})
    doc = json.loads(path.read_text())
    doc["attributes"][ATTR] = {**meta, "status": "in_progress"}
    path.write_text(json.dumps(doc))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(Path(word_model["jsonl"]).read_text().splitlines(True)[1:]))
    res = CliRunner().invoke(main, _args(word_model, other, store, "--resume"))
    assert res.exit_code == 2 and "other settings (corpus" in res.output, res.output
    assert "model.content" not in res.output


def _as_an_earlier_engine_wrote_it(store, drop, options=None, status=None):
    """Rewrite stage 's' as an engine before the identity entries ``drop`` (dotted paths) wrote
    it, with ``options`` it had then, and its fingerprint over that identity."""
    from txray_engine.store.format import ATTR, fingerprint
    path = store / "s" / "zarr.json"
    doc = json.loads(path.read_text())
    meta = doc["attributes"][ATTR]
    for dotted in drop:
        *parents, last = dotted.split(".")
        place = meta
        for key in parents:
            place = place[key]
        del place[last]
    meta["options"].update(options or {})
    meta["status"] = status or meta["status"]
    meta["fingerprint"] = fingerprint({key: meta[key] for key in
                                       ("model", "corpus", "options", "collection")})
    path.write_text(json.dumps(doc))


def test_a_stage_without_hashes_is_told_apart_by_its_file_names(word_model, tmp_path):
    """Stages written before the content and weights hashes: another model under another file
    name resumed and merged with them (the name, left out of the comparison since the hashes,
    was all that told the models apart); the same model under its name resumed only without the
    weights hash, and a stage holding its document limit in its options not at all."""
    import shutil
    store = tmp_path / "s.zarr"
    copy = dict(word_model, ckpt=tmp_path / "model-copy.pt")
    shutil.copy(word_model["ckpt"], copy["ckpt"])
    old = ("model.content", "model.weights", "model.tokenizer.vocabulary")
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store,
                                         "--max-documents", "10"))
    assert res.exit_code == 0, res.output
    _as_an_earlier_engine_wrote_it(store, old, {"max_documents": 10}, status="in_progress")
    res = CliRunner().invoke(main, _args(copy, word_model["jsonl"], store, "--resume"))
    assert res.exit_code == 2 and "other settings (model.source)" in res.output, res.output
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume"))
    assert res.exit_code == 0, res.output
    whole = tmp_path / "whole.zarr"
    assert CliRunner().invoke(main, _args(word_model, word_model["jsonl"], whole)).exit_code == 0
    a, b = open_store(store).stage("s"), open_store(whole).stage("s")
    assert same_sums(a.accumulator(), b.accumulator()) and a.cursor == b.cursor
    # merged: an old shard with a new one of the same model, not of a model named otherwise
    for i, files in enumerate((word_model, word_model, copy)):
        res = CliRunner().invoke(main, _args(files, word_model["jsonl"], tmp_path / f"p{i}.zarr",
                                             "--shard", f"{min(i, 1)}/2"))
        assert res.exit_code == 0, res.output
    _as_an_earlier_engine_wrote_it(tmp_path / "p0.zarr", old)

    def merge(*parts):
        return CliRunner().invoke(main, ["merge", *[str(tmp_path / p) for p in parts],
                                         "--store", str(tmp_path / "m.zarr"), "--stage", "s"])
    res = merge("p0.zarr", "p2.zarr")
    assert res.exit_code == 2 and "differ in model.source" in res.output, res.output
    res = merge("p0.zarr", "p1.zarr")
    assert res.exit_code == 0, res.output
    assert same_sums(open_store(tmp_path / "m.zarr").stage("s").accumulator(), b.accumulator())


def test_a_word_stage_of_the_earlier_word_split_is_not_continued(word_model, tmp_path):
    """The word tokenizer keeps Unicode words whole now: a stage split the earlier way would
    mix two tokenisations of any text with combining marks or ’."""
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store,
                                         "--max-documents", "10"))
    assert res.exit_code == 0, res.output
    _as_an_earlier_engine_wrote_it(store, ("model.tokenizer.words",), status="in_progress")
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume"))
    assert res.exit_code == 2 and "model.tokenizer.words (a stage of an earlier engine, whose " \
        "word tokenizer cut words at combining marks" in res.output, res.output


def test_a_stage_without_its_collection_settings_is_not_continued(word_model, tmp_path):
    """A stage of an engine that did not record k, layers and streams in its identity: a resume
    cannot check them (one layer fewer left that layer's sums behind), so it is refused as such,
    not as 'other settings'."""
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store,
                                         "--max-documents", "10"))
    assert res.exit_code == 0, res.output
    _as_an_earlier_engine_wrote_it(store, (), status="in_progress")
    from txray_engine.store.format import ATTR, fingerprint
    path = store / "s" / "zarr.json"
    doc = json.loads(path.read_text())
    meta = doc["attributes"][ATTR]
    del meta["collection"]
    meta["fingerprint"] = fingerprint({key: meta[key] for key in ("model", "corpus", "options")})
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume"))
    assert res.exit_code == 2 and "was started without collection, which this identity gives (by an earlier engine" in \
        res.output and "--overwrite" in res.output, res.output


def test_overlapping_windows_count_every_token_once_and_resume_exactly(word_model, tmp_path,
                                                                        monkeypatch):
    """--context-overlap: windows after a document's first repeat tokens before them as context
    only. Every token is still counted once (the same feature frequencies as without), each
    window but a document's first has its left context, and a resume equals one run."""
    from txray_engine.collect.sequences import WordTokenizer, windows
    from txray_engine.collect.corpus import Document
    tok = WordTokenizer.from_file(word_model["vocab"])
    text = " ".join(["the cat sat on the mat"] * 3)  # 18 words
    units = list(windows([Document(text)], tok, 7, overlap=3))
    ids = tok.encode(text)[0]
    assert [(u.start, u.context, len(u.ids)) for u in units] == [(0, 0, 7), (4, 3, 7),
                                                                  (8, 3, 7), (12, 3, 6)]
    counted = [i for u in units for i in u.ids[u.context:]]
    assert counted == ids and [u.last for u in units] == [False, False, False, True]
    store, _ = _interrupted_then_resumed(word_model, tmp_path, monkeypatch, stop_after=5,
                                         context_overlap=2)
    a, b = open_store(store).stage("s"), open_store(tmp_path / "whole.zarr").stage("s")
    assert a.cursor == b.cursor and same_sums(a.accumulator(), b.accumulator())
    assert b.meta["options"]["context_overlap"] == 2
    plain, over = tmp_path / "plain.zarr", tmp_path / "over.zarr"
    for path, extra in ((plain, ["--context-overlap", "0"]), (over, ["--context-overlap", "2"])):
        res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], path,
                                             "--max-length", "4", *extra))
        assert res.exit_code == 0, res.output
    p, o = (open_store(s).stage("s") for s in (plain, over))
    assert p.tokens == o.tokens and o.cursor["units"] > p.cursor["units"]
    assert np.array_equal(p.layer("lstm").stream("token").feature_freq,
                          o.layer("lstm").stream("token").feature_freq)
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], tmp_path / "x.zarr",
                                         "--max-length", "4", "--context-overlap", "4"))
    assert res.exit_code == 2 and "below the window length (4)" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_the_default_overlap_and_a_resume_keeps_the_stages_own(word_model, tmp_path):
    """New stages get 8 tokens of overlap (at most a quarter of the window); a stage collected
    without one (or before the option) continues without one, not refused as another
    collection."""
    def run(store, *extra):
        res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store,
                                             "--max-length", "16", *extra))
        assert res.exit_code == 0, res.output
        return open_store(store).stage("s").meta["options"]

    assert run(tmp_path / "new.zarr")["context_overlap"] == 4
    old = tmp_path / "old.zarr"
    assert "context_overlap" not in run(old, "--context-overlap", "0", "--max-documents", "40")
    options = run(old, "--resume", "--max-documents", "50")
    assert "context_overlap" not in options and open_store(old).stage("s").meta["documents"] == 50


def test_flushes_wait_ten_times_their_own_time(tmp_path, monkeypatch):
    """A flush that takes F seconds is followed by the next only after max(flush_every, 10 F):
    whole snapshots of a large state must not take most of the run; flush_every=0 still
    flushes after every step."""
    import time as _time
    import torch
    from torch import nn
    from txray_engine import Batch, Collector, Stream, Vocabulary
    from txray_engine.store.writer import StageWriter

    commits = []
    real = StageWriter.commit

    def slow(self, *a, **kw):
        commits.append(_time.monotonic())
        _time.sleep(0.05)
        return real(self, *a, **kw)

    monkeypatch.setattr(StageWriter, "commit", slow)
    model = nn.Sequential(nn.Linear(3, 4))
    streams = [Stream("token", Vocabulary.of_size(5), "input")]
    batch = Batch(input_ids=torch.zeros(2, dtype=torch.long), inputs=torch.randn(2, 3))
    for every, want in ((0.001, 2), (0, 11)):
        commits.clear()
        with Collector(model, ["0"], streams, store=tmp_path / f"s{every}.zarr", stage="s",
                       flush_every=every) as col:
            for _ in range(10):  # well under the 0.5 s that 10 x 0.05 s asks for
                col.step(batch)
        assert len(commits) == want  # (with the final commit)


def test_a_resume_takes_its_streams_in_any_order(word_model, tmp_path):
    """`--streams label,token` on a stage begun with `token,label` was refused as other
    settings, though the streams' sums do not depend on their order (as layers' do not)."""
    store, whole = tmp_path / "s.zarr", tmp_path / "whole.zarr"
    for args in (_args(word_model, word_model["jsonl"], store, "--max-documents", "10"),
                 _args(word_model, word_model["jsonl"], store, "--resume", "--streams",
                       "label,token"),
                 _args(word_model, word_model["jsonl"], whole)):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    a, b = open_store(store).stage("s"), open_store(whole).stage("s")
    assert same_sums(a.accumulator(), b.accumulator()) and a.meta["options"] == b.meta["options"]


def test_a_stage_an_earlier_engine_stopped_at_its_limit_continues(word_model, tmp_path):
    """Engines that kept the document limit in the options (and no corpus_done) left such a
    stage 'already complete: nothing to resume' for any higher limit."""
    store, whole = tmp_path / "s.zarr", tmp_path / "whole.zarr"
    for path, limit in ((store, "10"), (whole, "20")):
        res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], path,
                                             "--max-documents", limit))
        assert res.exit_code == 0, res.output
    _as_an_earlier_engine_wrote_it(store, ("max_documents", "corpus_done"), {"max_documents": 10})
    res = CliRunner().invoke(main, _args(word_model, word_model["jsonl"], store, "--resume",
                                         "--max-documents", "20"))
    assert res.exit_code == 0, res.output
    a, b = open_store(store).stage("s"), open_store(whole).stage("s")
    assert same_sums(a.accumulator(), b.accumulator()) and a.cursor == b.cursor
