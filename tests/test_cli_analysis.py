"""txray compare and txray prune end to end on small local models."""

import json

import pytest
import torch

from naive import make_hf_model_dir, run_cli


def test_compare_human_json_csv(two_stages, tmp_path):
    out = run_cli("compare", two_stages, "text", "reviews", "--top", "2")
    assert "lstm / token: 12 neurons" in out and "most changed:" in out
    assert "Hellinger mean" in out and "neuron" in out
    data = json.loads(run_cli("compare", two_stages, "text", "reviews", "--json"))
    assert {s["stream"] for s in data["summaries"]} == {"token", "predicted"}
    rows = data["neurons"]
    assert len(rows) == 24 and all(r["hellinger"] is None or 0 <= r["hellinger"] <= 1
                                   for r in rows)
    csv_path = tmp_path / "t.csv"
    run_cli("compare", two_stages, "text", "reviews", "--stream", "token", "--csv", csv_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("layer,stream,neuron,alive_a") and len(lines) == 13
    err = run_cli("compare", two_stages, "text", "nope", code=2)
    assert "unknown stage 'nope'" in err
    err = run_cli("compare", two_stages, "text", "reviews", "--layer", "x", code=2)
    assert "not in both stages" in err


def test_prune_mask_files(two_stages, word_model, tmp_path):
    mask = tmp_path / "m.json"
    out = run_cli("prune", two_stages, "--stage", "reviews", "--against", "text", "--layer", "lstm",
               "--selector", "most_changed", "--fraction", "0.25", "--out", mask)
    assert "lstm: 3 of 12 neurons selected" in out
    doc = json.loads(mask.read_text())
    assert len(doc["layers"]["lstm"]) == 3 and doc["layer_sizes"] == {"lstm": 12}
    run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
         "lowest_mass", "--count", "2", "--out", mask)
    assert len(json.loads(mask.read_text())["layers"]["lstm"]) == 2
    err = run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
               "most_changed", "--count", "2", "--out", mask, code=2)
    assert "--against" in err
    # an LSTM layer cannot be pruned structurally: one message, and neither file is written
    mask2, copy = tmp_path / "m2.json", tmp_path / "copy.pt"
    err = run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
                  "lowest_mass", "--count", "2", "--out", mask2, "--model", word_model["ckpt"],
                  "--save-pruned", copy, code=2)
    assert err.startswith("error: ") and "MLP" in err and len(err.splitlines()) == 1
    assert not mask2.exists() and not copy.exists()


def test_prune_structural_copy_of_hf_model(tmp_path, word_model):
    pytest.importorskip("transformers")
    model_dir = make_hf_model_dir(tmp_path / "llama", arch="llama")
    store = tmp_path / "s.zarr"
    layer = "model.layers.0.mlp.act_fn"
    run_cli("collect", "--model", model_dir, "--corpus", word_model["text"], "--layers", layer,
         "--store", store, "--stage", "s", "-q", "-k", "3")
    out_model = tmp_path / "pruned.pt"
    out = run_cli("prune", store, "--stage", "s", "--layer", layer, "--selector", "lowest_mass",
               "--count", "5", "--out", tmp_path / "m.json", "--model", model_dir,
               "--save-pruned", out_model)
    assert "MLP width 24 → 19" in out
    pruned = torch.load(out_model, weights_only=False)
    assert pruned.model.layers[0].mlp.up_proj.weight.shape == (19, 16)
    assert pruned(input_ids=torch.tensor([[2, 3, 4]])).logits.shape == (1, 3, 20)
    assert "note:" not in out
    # another model's weights: pruned as asked, with a note that the ranking is not its own
    import shutil

    import transformers
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    model = transformers.AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    model.save_pretrained(other)
    out = run_cli("prune", store, "--stage", "s", "--layer", layer, "--selector", "lowest_mass",
                  "--count", "5", "--out", tmp_path / "m2.json", "--model", other,
                  "--save-pruned", tmp_path / "p2.pt")
    assert "note: --model's weights" in out and "not those stage 's' was collected with" in out


def test_prune_ranks_as_compare_shows(two_stages, tmp_path):
    """prune had no --min-neuron-count: the neurons it pruned were not those compare listed
    with it; the mask file says how they were ranked, and a stage still collected is noted."""
    from txray_engine import open_store
    from txray_engine.measures import compare_streams
    from txray_engine.prune import select_neurons

    st = open_store(two_stages)
    counts = st.stage("reviews").layer("lstm").neuron_count
    cut = int(sorted(counts)[len(counts) // 2])
    want = select_neurons(compare_streams(st.stage("text")["lstm"]["token"],
                                          st.stage("reviews")["lstm"]["token"],
                                          min_neuron_count=cut), "most_changed", count=3)
    assert want.tolist() != select_neurons(compare_streams(
        st.stage("text")["lstm"]["token"], st.stage("reviews")["lstm"]["token"]),
        "most_changed", count=3).tolist()  # (the option changes the choice here)
    mask = tmp_path / "m.json"
    out = run_cli("prune", two_stages, "--stage", "reviews", "--against", "text", "--layer", "lstm",
                  "--selector", "most_changed", "--count", "3", "--min-neuron-count", cut,
                  "--out", mask)
    doc = json.loads(mask.read_text())
    assert doc["layers"]["lstm"] == want.tolist() and "note:" not in out
    assert (doc["by"], doc["min_count"], doc["min_neuron_count"]) == ("mass", 1, cut)
    assert doc["stage_status"] == {"text": "complete", "reviews": "complete"}
    err = run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
                  "random", "--count", "3", "--seed", "-1", "--out", mask, code=2)
    assert "-1 is not in the range x>=0" in err
    meta_path = two_stages / "reviews" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["txray_engine"]["status"] = "in_progress"
    meta_path.write_text(json.dumps(meta))
    for args in (["compare", two_stages, "text", "reviews"],
                 ["prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
                  "dead", "--count", "1", "--out", mask]):
        assert "note: stage 'reviews' is in_progress" in run_cli(*args)


def test_neurons_shows_features_and_refuses_bad_ids(two_stages):
    out = run_cli("neurons", two_stages, "--stage", "text", "--top", "2", "--features", "3")
    assert out.startswith("lstm: ") and "of 12 neurons alive" in out
    assert out.count("  neuron ") == 2 and "token:" in out and "predicted:" in out
    out = run_cli("neurons", two_stages, "--stage", "text", "--neuron", "11", "--stream", "token")
    assert "neuron 11: selected" in out and "predicted:" not in out
    for bad in ("12", "-1"):
        err = run_cli("neurons", two_stages, "--stage", "text", "--neuron", "0", "--neuron", bad,
                      code=2)
        assert err == f"error: neuron {bad} is not in layer 'lstm', whose neurons are 0 to 11\n"
    for opt in ("--layer", "--stream"):
        err = run_cli("neurons", two_stages, "--stage", "text", opt, "nope", code=2)
        assert err.startswith("error: ") and "'nope'" in err and len(err.splitlines()) == 1


def test_output_files_get_their_folder_or_one_clear_error(two_stages, tmp_path):
    """--csv and --out into a new folder create it; a path through a file, or a store that
    cannot be read, is one line, no traceback."""
    csv_path = tmp_path / "new" / "deeper" / "t.csv"
    run_cli("compare", two_stages, "text", "reviews", "--csv", csv_path)
    assert csv_path.read_text().startswith("layer,stream,neuron")
    mask = tmp_path / "masks" / "m.json"
    run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
            "lowest_mass", "--count", "2", "--out", mask)
    assert json.loads(mask.read_text())["layers"]["lstm"]
    blocker = tmp_path / "afile"
    blocker.write_text("")
    err = run_cli("prune", two_stages, "--stage", "reviews", "--layer", "lstm", "--selector",
                  "lowest_mass", "--count", "2", "--out", blocker / "m.json", code=2)
    assert err == f"error: cannot write '{blocker / 'm.json'}': '{blocker}' is a file, not a " \
                  f"folder\n"


def test_unreadable_files_are_one_line(two_stages, tmp_path, monkeypatch):
    """An OSError on a file the user named (here: opening the store) is one line with the path."""
    import txray_engine.store.reader as reader

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(two_stages))

    monkeypatch.setattr(reader.Store, "__init__", denied)
    err = run_cli("info", two_stages, code=2)
    assert err == f"error: cannot use {str(two_stages)!r}: Permission denied; check the path " \
                  f"and its permissions\n"


def test_output_piped_into_head_ends_quietly(two_stages):
    """`txray neurons ... | head -1`: the closed pipe is no path error (exit 141, as SIGPIPE)."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "txray_engine.cli", "neurons", str(two_stages),
                             "--stage", "text", "--top", "12", "--features", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # what head does after its lines (here before the first: no race)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err


def test_store_commands_run_without_torch(two_stages, tmp_path):
    """`txray info`, `neurons`, `compare` and `prune` without `--model` read the store only:
    neither torch nor the kernels load (they took 3-4 s to start on a 2-core machine, 0.6 s now).
    Their output is checked by the tests above; here only what they import."""
    import subprocess
    import sys
    mask = tmp_path / "m.json"
    commands = [["info", two_stages], ["neurons", two_stages, "--stage", "text", "--neuron", "0"],
                ["compare", two_stages, "text", "reviews"],
                ["prune", two_stages, "--stage", "reviews", "--against", "text", "--layer",
                 "lstm", "--selector", "most_changed", "--count", "2", "--out", mask]]
    code = ("import sys\nfrom txray_engine.cli import main\n"
            "for args in {!r}:\n"
            "    main(args, standalone_mode=False)\n"
            "print(sorted(m for m in ('torch', 'txray_kernels') if m in sys.modules))"
            ).format([[str(a) for a in c] for c in commands])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert json.loads(mask.read_text())["layers"]["lstm"]


def test_stages_of_other_settings_are_compared_with_a_note(two_stages, tmp_path):
    """A stage collected again by a later engine (another default --context-overlap) or with
    another -k was compared without a word about it: part of the distance is the settings'."""
    from txray_engine.store.format import ATTR
    path = two_stages / "reviews" / "zarr.json"
    doc = json.loads(path.read_text())
    meta = doc["attributes"][ATTR]
    assert meta["options"]["context_overlap"] == 8 and meta["k"] == 1
    meta["k"] = 3
    del meta["options"]["context_overlap"]  # (as stages before the option were written)
    path.write_text(json.dumps(doc))
    out = run_cli("compare", two_stages, "text", "reviews", "--top", "0")
    assert "note: stages 'text' and 'reviews' were collected with other settings (k 1 and 3; " \
           "--context-overlap 8 and 0): part of their differences comes from those" in out
    from txray_engine.report import build_report
    page = build_report(two_stages, out=tmp_path / "r.html").notes
    assert any(n.startswith("Stages 'text' and 'reviews' were collected with other settings")
               for n in page)
    assert "both stages are 'text'" in run_cli("compare", two_stages, "text", "text", code=2)


def test_layers_and_streams_are_named_alike_in_every_command(two_stages, tmp_path):
    """`report --layer 'ls*'` took a pattern, and `--stages a,b` a comma-separated list, where
    compare, neurons and prune refused both ('unknown layer', stream(s) ['token,predicted'])."""
    by_name = run_cli("compare", two_stages, "text", "reviews", "--layer", "lstm", "--top", "0")
    assert run_cli("compare", two_stages, "text", "reviews", "--layer", "ls*", "--stream",
                   "token,predicted", "--top", "0") == by_name
    out = run_cli("neurons", two_stages, "--stage", "text", "--layer", "l?tm", "--stream",
                  "token,predicted")
    assert out == run_cli("neurons", two_stages, "--stage", "text", "--layer", "lstm")
    run_cli("prune", two_stages, "--stage", "reviews", "--layer", "ls*", "--selector",
            "lowest_mass", "--count", "2", "--out", tmp_path / "m.json")
    assert list(json.loads((tmp_path / "m.json").read_text())["layers"]) == ["lstm"]
    out = run_cli("compare", two_stages, "text", "reviews", "--layer", "nope*", code=2)
    assert "layer(s) ['nope*'] are not in both stages; common: ['lstm']" in out
