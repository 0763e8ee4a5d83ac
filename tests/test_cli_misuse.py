"""Misuse of the command line: one line and exit code 2 (130 for Ctrl-C), checked before the
work, and the store unchanged."""

import json

import pytest

from naive import make_hf_model_dir, run_cli, tree_digest
from txray_engine import open_store
from txray_engine.errors import InputError


def _clean(out: str, *words):
    assert "Traceback" not in out and out.startswith("error: ") and out.count("\n") == 1, out
    for w in words:
        assert w in out, out


def test_compare_with_no_distance_left_prints_why(two_stages):
    """--min-count above every cell's count: shared neurons without a distance (it crashed on
    formatting a missing mean)."""
    out = run_cli("compare", two_stages, "text", "reviews", "--min-count", 100000, "--top", 2)
    assert "10 shared neuron(s) without a distance" in out and "--min-count 100000" in out
    assert "most changed" not in out  # no neuron has a distance to rank by


def test_compare_lists_never_share_a_neuron(two_stages):
    out = run_cli("compare", two_stages, "text", "reviews", "--top", 10, "--stream", "token")
    most, least = out.split("least changed:")
    ids = [{int(line.split()[0]) for line in part.splitlines()
            if line.strip() and line.split()[0].isdigit()} for part in (most, least)]
    assert ids[0] and ids[1] and not ids[0] & ids[1] and len(ids[0] | ids[1]) <= 12


@pytest.mark.parametrize("command", [
    ["report", "{store}", "--out", "{store}/r.html"],
    ["compare", "{store}", "text", "reviews", "--csv", "{store}/text/t.csv"],
    ["prune", "{store}", "--stage", "reviews", "--layer", "lstm", "--selector", "lowest_mass",
     "--count", "2", "--out", "{store}/m.json"],
])
def test_outputs_inside_a_store_are_refused_first(two_stages, command):
    before = tree_digest(two_stages)
    out = run_cli(*[a.format(store=two_stages) for a in command], code=2)
    _clean(out, "is inside the txray store", "outside the store")
    assert tree_digest(two_stages) == before


def test_an_output_that_cannot_be_written_fails_before_the_work(two_stages, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    out = run_cli("compare", two_stages, "text", "reviews", "--csv", blocker / "t.csv", code=2)
    _clean(out, "is a file, not a folder")  # (the comparison was printed first before)
    out = run_cli("report", two_stages, "--out", blocker / "r.html", code=2)
    _clean(out, "is a file, not a folder")  # (it said "cannot use ...: File exists")


@pytest.mark.parametrize("command,name", [
    (["compare", "{store}", "text", "reviews", "--csv", "{out}"], "table"),
    (["prune", "{store}", "--stage", "reviews", "--layer", "lstm", "--selector", "lowest_mass",
      "--count", "2", "--out", "{out}"], "mask file"),
    (["report", "{store}", "--out", "{out}"], "report"),
])
def test_a_full_disk_leaves_an_output_as_it_was_and_says_so(two_stages, tmp_path, monkeypatch,
                                                           command, name):
    """--csv and prune --out left an empty (or truncated) file, and the error named no file and
    suggested checking permissions."""
    import errno
    import pathlib

    (tmp_path / "outs").mkdir()
    out = tmp_path / "outs" / "out.file"
    out.write_text("the last one")
    real = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".partial"):
            real(self, "half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    res = run_cli(*[a.format(store=two_stages, out=out) for a in command], code=2)
    _clean(res[res.find("error: "):], f"cannot write the {name} '{out}': No space left on "
                                      f"device; free space on its disk")  # (compare printed first)
    assert out.read_text() == "the last one" and list(out.parent.iterdir()) == [out]


def test_a_stage_without_sums_is_left_out_of_a_default_report(two_stages, tmp_path):
    """A collection writing its first flush (or killed before it) leaves such a stage."""
    meta_path = two_stages / "reviews" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["txray_engine"] = {"kind": "stage", "status": "in_progress",
                                          "snapshot": None, "cursor": {}, "fingerprint": "x",
                                          "numbered_to": 0}
    meta_path.write_text(json.dumps(meta))
    out = run_cli("report", two_stages, "--out", tmp_path / "r.html")
    assert "Left out: 'reviews', with no sums yet" in out and "stages text;" in out
    out = run_cli("report", two_stages, "--stages", "text,reviews", "--out", tmp_path / "r.html",
                  code=2)
    _clean(out, "stage 'reviews' has no snapshot yet")


def test_a_stage_of_another_format_version_is_refused(two_stages, word_model):
    meta_path = two_stages / "reviews" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["txray_engine"]["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    before = tree_digest(two_stages)
    for args in (["neurons", two_stages, "--stage", "reviews"],
                 ["compare", two_stages, "text", "reviews"],
                 ["collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
                  "--layers", "lstm", "--corpus", word_model["jsonl"], "--store", two_stages,
                  "--stage", "reviews", "--resume", "-q"]):
        _clean(run_cli(*args, code=2), "stage 'reviews' has format version 2",
               "use a matching txray_engine")
    assert tree_digest(two_stages) == before
    assert json.loads(meta_path.read_text())["attributes"]["txray_engine"]["format_version"] == 2
    meta["attributes"]["txray_engine"]["format_version"] = "1"
    meta_path.write_text(json.dumps(meta))
    _clean(run_cli("neurons", two_stages, "--stage", "reviews", code=2),
           "has format version '1'")  # (it read "format version 1; this engine reads version 1")


@pytest.mark.parametrize("stage", ["a:b", "a,b", " a", "a "])
def test_stage_names_the_commands_cannot_address_are_refused(word_model, tmp_path, stage):
    out = run_cli("collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
                  "--layers", "lstm", "--corpus", word_model["text"], "--store",
                  tmp_path / "s.zarr", "--stage", stage, "-q", code=2)
    _clean(out, "invalid stage name", "--pairs a:b")


def test_ctrl_c_says_how_to_go_on(word_model, tmp_path, monkeypatch):
    import txray_engine.collect as collect

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect, "collect_corpus", interrupted)
    out = run_cli("collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
                  "--layers", "lstm", "--corpus", word_model["text"], "--store",
                  tmp_path / "s.zarr", "--stage", "s", "-q", code=130)
    assert out.strip() == ("interrupted: the stage keeps its last flush; run the same command "
                           "with --resume (in place of any --overwrite) to go on")


def test_conflicting_model_options(word_model, tmp_path):
    base = ["collect", "--layers", "lstm", "--corpus", word_model["text"], "--store",
            tmp_path / "s.zarr", "--stage", "s", "-q"]
    hf = make_hf_model_dir(tmp_path / "hf")
    for extra, words in [
            (["--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--tokenizer", hf],
             "give one tokenizer"),
            (["--model", hf, "--lower"], "leave --lower out"),
            (["--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--gguf-file",
              "x.gguf"], "is a torch checkpoint file: leave --gguf-file out")]:
        _clean(run_cli(*base, *extra, code=2), words)
    assert not (tmp_path / "s.zarr").exists()


def test_prune_against_itself_and_counts_beyond_the_layer(two_stages, tmp_path):
    out = run_cli("prune", two_stages, "--stage", "reviews", "--against", "reviews", "--layer",
                  "lstm", "--selector", "most_changed", "--count", 2, "--out",
                  tmp_path / "m.json", code=2)
    assert "--against names --stage itself" in out
    out = run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
                  "lowest_mass", "--count", 100, "--out", tmp_path / "m.json")
    assert "12 of 12 neurons selected (lowest_mass; --count 100 is more than the layer has)" in out
    out = run_cli("prune", two_stages, "--stage", "reviews", "--against", "text", "--layer",
                  "lstm", "--selector", "most_changed", "--count", 3, "--min-count", 100000,
                  "--out", tmp_path / "m.json")  # (it said "0 of 12" and no more)
    assert "0 of 12 neurons selected (most_changed; 3 asked, but only these are shared with a " \
           "distance" in out


def test_a_pruned_model_that_cannot_be_written_leaves_no_mask(tmp_path):
    model = make_hf_model_dir(tmp_path / "hf")
    corpus = tmp_path / "c.txt"
    store = tmp_path / "s.zarr"
    for stage, text in (("a", "the cat sat on the mat .\n"), ("b", "a big dog ran .\n")):
        corpus.write_text(text * 3)
        run_cli("collect", "--model", model, "--corpus", corpus, "--layers",
                "transformer.h.0.mlp.act", "--store", store, "--stage", stage, "-q")
    mask = tmp_path / "m.json"
    out = run_cli("prune", store, "--stage", "b", "--against", "a", "--layer",
                  "transformer.h.0.mlp.act", "--selector", "most_changed", "--count", 2,
                  "--out", mask, "--model", model, "--save-pruned", tmp_path / ("x" * 300 + ".pt"),
                  code=2)
    _clean(out, "File name too long")  # (checked first: it was a traceback after the mask)
    assert not mask.exists() and not list(tmp_path.glob("*.partial"))


def test_demo_refuses_an_earlier_run_with_other_stages(tmp_path):
    from txray_engine.demo.pipeline import _check_earlier_run
    from txray_engine.store.writer import StageWriter
    import torch
    from txray_engine import Accumulator

    acc = Accumulator({"token": ["a", "b"]}, k=1)
    acc.observe("enc", torch.randn(4, 3), {"token": torch.tensor([0, 1, 0, 1])})
    for stage in ("reviews-zero-shot", "reviews-supervised-s0"):
        with StageWriter(tmp_path / "store.zarr", stage, "new", {"demo": "tiny"}) as w:
            w.commit(acc, {"units": 1}, "complete")
    _check_earlier_run(tmp_path / "store.zarr", ["reviews-zero-shot", "reviews-supervised-s0"])
    with pytest.raises(InputError, match=r"stages this run does not write \(reviews-supervised"
                                         r"-s0\): choose another --out"):
        _check_earlier_run(tmp_path / "store.zarr", ["reviews-zero-shot", "reviews-supervised-s3"])
    assert open_store(tmp_path / "store.zarr").stages == ["reviews-zero-shot",
                                                          "reviews-supervised-s0"]


def test_sigterm_flushes_the_last_whole_batch(word_model, tmp_path, monkeypatch):
    """A batch scheduler's SIGTERM ended a collection with no word and no flush (all since the
    last one lost; a new store left as an empty folder): the batch in hand is finished and
    flushed, the run says how to go on, and the resumed stage equals one uninterrupted run."""
    import os
    import signal

    from txray_engine import open_store, same_sums
    from txray_engine.collect import Collector

    real_step, steps = Collector.step, []

    def step(self, *a, **k):
        steps.append(1)
        if len(steps) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the batch
        return real_step(self, *a, **k)

    monkeypatch.setattr(Collector, "step", step)
    base = ["collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"], "--layers",
            "lstm", "--corpus", word_model["text"], "--batch-size", "4", "-q", "--stage", "s"]
    out = run_cli(*base, "--store", tmp_path / "s.zarr", code=128 + signal.SIGTERM)
    assert out.strip() == ("terminated: the stage was flushed after its last whole batch; run "
                           "the same command with --resume (in place of any --overwrite) to go "
                           "on")
    stage = open_store(tmp_path / "s.zarr").stage("s")
    assert stage.status == "in_progress" and stage.cursor["units"] == 16
    monkeypatch.setattr(Collector, "step", real_step)
    run_cli(*base, "--store", tmp_path / "s.zarr", "--resume")
    run_cli(*base, "--store", tmp_path / "whole.zarr")
    a, b = (open_store(tmp_path / p).stage("s") for p in ("s.zarr", "whole.zarr"))
    assert a.status == "complete" and same_sums(a.accumulator(), b.accumulator())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # (given back)


def test_sigterm_ends_other_commands_through_their_clean_up(two_stages, tmp_path, monkeypatch):
    import os
    import signal

    import txray_engine.report.page as page

    real = page.render
    monkeypatch.setattr(page, "render", lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM),
                                                          real(*a, **k))[1])
    out = run_cli("report", two_stages, "--out", tmp_path / "r.html", code=128 + signal.SIGTERM)
    assert out.strip() == "terminated"
    assert not list(tmp_path.glob("r.html*"))


def test_help_is_reached_every_way_a_user_tries():
    """`txray help` was an unknown command, -h an unknown option, and `txray corpus` alone
    printed its whole help as an error line."""
    assert run_cli("help", "info").startswith("Usage: main info [OPTIONS] STORE")
    assert "Commands:" in run_cli("help") and run_cli("info", "-h") == run_cli("info", "--help")
    out = run_cli("corpus", code=2)
    assert "Commands:" in out and "wikipedia" in out and "error:" not in out
    _clean(run_cli("help", "nope", code=2), "no command 'nope'; the commands: collect")
    assert "--features INTEGER RANGE" in run_cli("report", "--help")  # (as compare names it)
