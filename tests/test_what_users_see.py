"""The numbers and texts a user reads (txray neurons, the report's figures and explorer, summaries)
checked against the sums they come from: tests that only counted lines or figures let a reversed
order, a wrong neuron's contexts or a sum shown as a mean through."""

import json

import numpy as np
import pytest
import torch

from naive import run_cli
from txray_engine import Accumulator, StageWriter, open_store
from txray_engine.measures import compare, top_features
from txray_engine.report import build_report
from txray_engine.report.data import Limits, ReportData
from txray_engine.report.figures import length_shift_figure, mass_figure


def test_neurons_lists_the_strongest_features_first_with_their_shares(two_stages):
    view = open_store(two_stages).stage("text").layer("lstm").stream("token")
    n = int(np.argmax(view.layer.neuron_count))
    row = view.row(n)
    order = np.lexsort((row["indices"], -row["mass"]))[:3]
    want = [(view.vocab[int(row["indices"][i])], row["mass"][i] / row["mass"].sum())
            for i in order]
    got = view.top_features(n, 3, share=True)
    assert [f for f, _ in got] == [f for f, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-12)
    out = run_cli("neurons", two_stages, "--stage", "text", "--neuron", n, "--features", 3,
                  "--stream", "token")
    line = next(x for x in out.splitlines() if x.strip().startswith("token:"))
    assert line.split(":", 1)[1].strip() == ", ".join(f"{f!r} {s:.0%}" for f, s in want)


def test_top_features_break_ties_towards_the_lower_feature():
    acc = Accumulator({"t": [f"f{i}" for i in range(5)]}, k=1)
    acc.observe("l", torch.tensor([[1.0], [1.0], [1.0], [1.0]]),
                {"t": torch.tensor([3, 1, 4, 2])})  # four features, equal mass
    ids, shares = top_features(acc.layers["l"].stream_stats()["t"], 3)
    assert ids[0].tolist() == [1, 2, 3] and shares[0].tolist() == [0.25] * 3


def test_summary_counts_each_kind_of_neuron():
    """Neuron 0 alive in both, 1 only in A, 2 only in B, 3 dead in both."""
    acc_a, acc_b = (Accumulator({"t": ["x", "y"]}, k="all") for _ in range(2))
    acc_a.observe("l", torch.tensor([[1.0, 1.0, 0.0, 0.0]]), {"t": torch.tensor([0])})
    acc_b.observe("l", torch.tensor([[1.0, 0.0, 1.0, 0.0]]), {"t": torch.tensor([1])})
    a, b = (acc.layers["l"].stream_stats()["t"] for acc in (acc_a, acc_b))
    s = compare(a, b, neuron_count_a=np.array([1, 1, 0, 0]),
                neuron_count_b=np.array([1, 0, 1, 0])).summary()
    assert (s["shared"], s["only_a"], s["only_b"], s["dead_both"]) == (1, 1, 1, 1)


def test_a_stage_counts_the_positions_its_fullest_layer_counted(tmp_path):
    """A row skipped as non-finite in one layer still counts in the others, and in the stage."""
    acc = Accumulator({"t": ["x", "y"]}, nonfinite="skip")
    ids = {"t": torch.tensor([0, 1, 0, 1])}
    bad = torch.ones(4, 3)
    bad[2, 1] = float("nan")
    acc.observe("a", bad, ids)
    acc.observe("b", torch.ones(4, 3), ids)
    assert (acc.layers["a"].tokens, acc.layers["b"].tokens, acc.tokens) == (3, 4, 4)
    with StageWriter(tmp_path / "s.zarr", "s", "new", {}) as w:
        w.commit(acc, {"units": 1}, "complete")
    st = open_store(tmp_path / "s.zarr").stage("s")
    assert st.tokens == 4 and st.layer("a").tokens == 3 and st.layer("a").skipped_nonfinite == 1


@pytest.fixture
def examples_store(tmp_path):
    """Two stages whose neurons have known top examples: neuron n peaks at position 3 + n of
    document 0, whose token ids are 0, 1, 2, … In stage b neuron 1 also wins position 10,
    which holds its peak's token 4 again: neuron 0 (which wins the rest, ties at 0 going to
    the lower neuron) reads one token fewer, so the length shifts are -1, 0, 0, 0."""
    vocab = [f"w{i}" for i in range(12)]
    for stage, scale in (("a", 1.0), ("b", 2.0)):
        acc = Accumulator({"token": vocab}, k=1, examples=2, context_radius=1)
        t = 12
        acts = torch.zeros(t, 4)
        for n in range(4):
            acts[3 + n, n] = scale * (n + 1)
        ids = torch.arange(t)
        if stage == "b":
            acts[10, 1], ids[10] = 0.5, 4
        context = torch.stack([torch.arange(p - 1, p + 2).clamp(-1, t - 1) for p in range(t)])
        acc.observe("enc", acts, {"token": ids}, where={"doc": torch.zeros(t, dtype=torch.long),
                                                        "pos": ids, "context": context})
        with StageWriter(tmp_path / "s.zarr", stage, "new", {}) as w:
            w.commit(acc, {"units": 1}, "complete")
    return tmp_path / "s.zarr"


def test_the_explorer_shows_each_neurons_own_contexts_in_order(examples_store, tmp_path):
    rep = build_report(examples_store, out=tmp_path / "r.html")
    page = rep.path.read_text()
    payload = json.loads(page.split('id="txray-explorer-data">', 1)[1].split("</script>", 1)[0])
    ex = payload["layers"][0]["examples"]["stages"]
    for stage, scale in (("a", 1.0), ("b", 2.0)):
        for n in range(4):
            value, before, word, after = ex[stage][n][0]
            p = 3 + n
            assert value == scale * (n + 1)
            assert (before, word, after) == (f"w{p - 1} ", f"w{p}", f" w{p + 1}")


def test_the_figures_plot_the_sums(examples_store):
    data = ReportData(open_store(examples_store), limits=Limits())
    fig = mass_figure(data, "enc").figure
    for trace, stage in zip(fig.data, ("a", "b")):
        mass = np.sort(open_store(examples_store).stage(stage).layer("enc").neuron_mass)[::-1]
        np.testing.assert_allclose(trace.y, mass[mass > 0])  # most first
    fig = length_shift_figure(data, "enc", "a", "b").figure
    cmp = data.comparison("a", "b", "enc", "token")
    mean = cmp["length_shift"][cmp["shared"]].mean()
    assert cmp["length_shift"].tolist() == [-1, 0, 0, 0]
    assert f"mean shift {mean:+.2f} over {int(cmp['shared'].sum())} shared" in \
        fig.layout.annotations[0].text


def test_merged_parts_keep_empty_example_slots_empty():
    from txray_engine.store.merge import _number_documents_from
    acc = Accumulator({"t": ["x"]}, k=1, examples=3, context_radius=0)
    acc.observe("l", torch.tensor([[1.0, 2.0]]), {"t": torch.tensor([0])},
                where={"doc": torch.tensor([4]), "pos": torch.tensor([0]),
                       "context": torch.tensor([[0]])})
    _number_documents_from(acc, 10)
    doc = acc.layers["l"].examples.doc
    assert doc[:, 0].tolist() == [14, 14] and (doc[:, 1:] == -1).all()


def test_collect_reports_the_positions_it_counted_once(word_model, tmp_path):
    """With overlapping windows the repeated context positions are read again but not counted:
    the summary's positions are the stage's (context counted in them was not caught)."""
    def collect(stage, *window):
        out = run_cli("collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
                      "--corpus", word_model["text"], "--layers", "lstm", *window, "--store",
                      tmp_path / "s.zarr", "--stage", stage, "--json", "-q")
        return json.loads(out), open_store(tmp_path / "s.zarr").stage(stage)

    whole, one = collect("whole", "--max-length", 256)  # every document in one window
    summary, stage = collect("cut", "--max-length", 4, "--context-overlap", 2)
    assert stage.meta["options"]["context_overlap"] == 2 and summary["units"] > whole["units"]
    assert summary["positions_read"] == summary["tokens_this_run"] == stage.tokens == one.tokens
