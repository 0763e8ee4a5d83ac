"""Sharded collection (`txray collect --shard I/N`) and `txray merge`: the shards of a corpus add
up to the stage one collection over the whole corpus makes."""

import numpy as np
import pytest
from click.testing import CliRunner

from txray_engine import open_store, same_sums
from txray_engine.cli import main
from txray_engine.errors import InputError


def _collect(wm, *extra):
    args = ["collect", "--model", wm["ckpt"], "--vocab", wm["vocab"], "--corpus", wm["text"],
            "--layers", "lstm", "--streams", "token,predicted", "-k", "2", "--max-length", "4",
            "--batch-size", "3", "--examples", "3", "--stage", "s", "-q", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


def _clean_error(res, *words):
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.output, res.output


def test_shards_merge_to_the_whole_collection(word_model, tmp_path, monkeypatch):
    whole = tmp_path / "whole.zarr"
    _ok(_collect(word_model, "--store", whole))
    for i in range(2):
        _ok(_collect(word_model, "--store", tmp_path / "part-{shard}.zarr", "--shard", f"{i}/3"))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    _ok(_collect(word_model, "--store", tmp_path / "part-{shard}.zarr", "--shard", "env"))
    parts = [open_store(tmp_path / f"part-{i}.zarr").stage("s") for i in range(3)]
    assert sum(p.cursor["documents"] for p in parts) == open_store(whole).stage("s").cursor[
        "documents"]
    sources = [tmp_path / f"part-{i}.zarr" for i in (2, 0)]
    _clean_error(CliRunner().invoke(main, ["merge", *map(str, sources), "--store",
                                           str(tmp_path / "m.zarr"), "--stage", "s"]),
                 "shards of 3: shard(s) [1] missing")
    assert not (tmp_path / "m.zarr").exists()
    out = _ok(CliRunner().invoke(main, ["merge", *map(str, sources), str(tmp_path / "part-1.zarr"),
                                        "--store", str(tmp_path / "m.zarr"), "--stage", "s"]))
    assert "3 stages merged" in out.output
    a, b = open_store(whole).stage("s"), open_store(tmp_path / "m.zarr").stage("s")
    assert same_sums(a.accumulator(), b.accumulator())
    assert a.cursor == b.cursor and a.tokens == b.tokens and b.status == "complete"
    assert b.meta["collection"] == a.meta["collection"] and b.meta["corpus"] == a.meta["corpus"]
    assert "shard" not in b.meta["options"] and len(b.meta["merged_from"]) == 3
    # a merged stage of shards continues with a higher limit like one collection, and says so
    res = _collect(word_model, "--store", tmp_path / "m.zarr", "--resume")
    assert res.exit_code == 2 and "already complete" in res.output  # the corpus was read whole
    # top examples name each token by its document and its position in it, in every shard alike
    ea, eb = a.layer("lstm").examples, b.layer("lstm").examples
    for key in ("examples_value", "examples_doc", "examples_pos", "examples_context"):
        np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
    assert ea["examples_pos"].max() >= 4  # positions past the first window of a document


def test_merge_refusals_leave_no_stage(word_model, tmp_path):
    _ok(_collect(word_model, "--store", tmp_path / "a.zarr", "--shard", "0/2"))
    _ok(_collect(word_model, "--store", tmp_path / "b.zarr", "--shard", "1/2", "-k", "1"))
    _ok(_collect(word_model, "--store", tmp_path / "c.zarr", "--shard", "0/2"))
    _ok(_collect(word_model, "--store", tmp_path / "d.zarr", "--shard", "1/2",
                 "--context-overlap", "0"))
    out = tmp_path / "m.zarr"

    def merge(*names):
        return CliRunner().invoke(main, ["merge", *[str(tmp_path / n) for n in names],
                                         "--store", str(out), "--stage", "s"])
    _clean_error(merge("a.zarr", "b.zarr"), "differ in collection.k: 2 in", ", 1 in")
    _ok(_collect(word_model, "--store", tmp_path / "h.zarr", "--shard", "1/2", "--dtype",
                 "bfloat16"))  # (the weights' hash reads their dtype: the message says so)
    _clean_error(merge("a.zarr", "h.zarr"), "differ in model.weights (other weights, or the same "
                 "ones loaded with another --dtype)")
    # a shard collected before overlaps existed against one collected after
    _clean_error(merge("d.zarr", "a.zarr"), "differ in options.context_overlap: none in",
                 "a.zarr' again with --context-overlap 0")
    _clean_error(merge("a.zarr", "c.zarr"), "shard(s) [0] given twice", "shard(s) [1] missing")
    _ok(_collect(word_model, "--store", tmp_path / "j.zarr", "--corpus", word_model["jsonl"],
                 "--shard", "1/2"))  # (a second --corpus: these shards read both files)
    _clean_error(merge("a.zarr", "c.zarr", "j.zarr"), "are shards of different collections "
                 "(corpus differs; merge the shards of each collection on its own)")
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "2/2"),
                 "shard 2/2: N must be 1 or more and I in 0..N-1")
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "two"),
                 "a shard is I/N")
    _clean_error(_collect(word_model, "--store", tmp_path / "x-{shard}.zarr"),
                 "'{shard}' but no --shard")
    _clean_error(_collect(word_model, "--store", tmp_path / "x-{shard:02d}.zarr", "--shard", "0/2"),
                 "without a format such as '{shard:02d}'")  # (was taken literally, one store)
    assert not out.exists() and not (tmp_path / "x.zarr").exists()
    # an existing target (e.g. a merge stopped part-way): fails before reading the parts, and
    # says to run the merge again, which has no --resume
    _ok(_collect(word_model, "--store", tmp_path / "e.zarr", "--shard", "1/2"))
    _ok(merge("a.zarr", "e.zarr"))
    _clean_error(merge("a.zarr", "e.zarr"), "already exists", "merge ... --overwrite")
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "a.zarr"), str(tmp_path / "e.zarr"),
                                    "--store", str(out), "--stage", "s", "--overwrite"])
    assert res.exit_code == 0, res.output


def test_one_source_is_copied_and_copied_shards_still_merge(word_model, tmp_path):
    """Parallel jobs write a store each (one writer per store); their stages could not be
    brought into one store to compare or report: merge refused a single source."""
    for i in range(2):
        _ok(_collect(word_model, "--store", tmp_path / f"part-{i}.zarr", "--shard", f"{i}/2"))
    one = tmp_path / "one.zarr"

    def merge(*sources, stage):
        return _ok(CliRunner().invoke(main, ["merge", *map(str, sources), "--store", str(one),
                                             "--stage", stage]))
    assert "copied" in merge(f"{tmp_path / 'part-0.zarr'}::s", stage="half0").output
    merge(f"{tmp_path / 'part-1.zarr'}::s", stage="half1")
    st = open_store(one)
    for i in range(2):
        copy, source = st.stage(f"half{i}"), open_store(tmp_path / f"part-{i}.zarr").stage("s")
        assert same_sums(copy.accumulator(), source.accumulator())
        assert copy.meta["options"]["shard"] == source.meta["options"]["shard"]
        assert copy.cursor == source.cursor
    _ok(CliRunner().invoke(main, ["compare", str(one), "half0", "half1", "--top", "0"]))
    shown = _ok(CliRunner().invoke(main, ["info", str(one)])).output
    assert "shard 1/2 of a corpus, copied from " in shown and "part-1.zarr::s" in shown, shown
    # the copies are still the two shards: they merge as the shards themselves do
    merge(f"{one}::half0", f"{one}::half1", stage="all")
    merge(*(f"{tmp_path / f'part-{i}.zarr'}::s" for i in range(2)), stage="direct")
    assert same_sums(st.stage("all").accumulator(), st.stage("direct").accumulator())


@pytest.mark.parametrize("env", [{}, {"RANK": "0"}])
def test_shard_env_needs_torchrun_variables(word_model, tmp_path, monkeypatch, env):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _clean_error(_collect(word_model, "--store", tmp_path / "x-{shard}.zarr", "--shard", "env"),
                 "RANK and WORLD_SIZE")
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "env"),
                 "put '{shard}' in --store")


def test_a_shard_without_documents_still_merges(word_model, tmp_path):
    """More shards than documents (a pilot with --max-documents below the GPU count): the empty
    shard is a complete stage with no positions, and the merge is the whole run."""
    _ok(_collect(word_model, "--store", tmp_path / "whole.zarr", "--max-documents", "2"))
    for i in range(3):
        _ok(_collect(word_model, "--store", tmp_path / f"p{i}.zarr", "--shard", f"{i}/3",
                     "--max-documents", "2"))
    empty = open_store(tmp_path / "p2.zarr").stage("s")
    assert empty.status == "complete" and empty.layers == [] and empty.tokens == 0
    _ok(CliRunner().invoke(main, ["merge", *[str(tmp_path / f"p{i}.zarr") for i in range(3)],
                                  "--store", str(tmp_path / "m.zarr"), "--stage", "s"]))
    a, b = open_store(tmp_path / "whole.zarr").stage("s"), open_store(tmp_path / "m.zarr").stage("s")
    assert same_sums(a.accumulator(), b.accumulator()) and a.cursor == b.cursor


def test_parts_of_a_split_corpus_merge_to_one_collection_over_the_files(word_model, tmp_path):
    """Documents of the second file number on from the first's, as in one collection over both
    files (they shared indices 0, 1, … before: the examples could not say which file)."""
    lines = word_model["text"].read_text().splitlines(keepends=True)
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("".join(lines[:13]) + "\n")  # (an empty line is no document)
    files[1].write_text("".join(lines[13:]))
    wm = {**word_model, "text": files[0]}
    for i, f in enumerate(files):
        _ok(_collect({**wm, "text": f}, "--store", tmp_path / f"p{i}.zarr"))
    _ok(_collect(wm, "--corpus", files[1], "--store", tmp_path / "whole.zarr"))
    _ok(CliRunner().invoke(main, ["merge", str(tmp_path / "p0.zarr"), str(tmp_path / "p1.zarr"),
                                  "--store", str(tmp_path / "m.zarr"), "--stage", "s"]))
    a, b = open_store(tmp_path / "whole.zarr").stage("s"), open_store(tmp_path / "m.zarr").stage("s")
    assert same_sums(a.accumulator(), b.accumulator())
    assert a.cursor["documents"] == b.cursor["documents"] == len(lines)
    ea, eb = a.layer("lstm").examples, b.layer("lstm").examples
    for key in ("examples_value", "examples_doc", "examples_pos", "examples_context"):
        np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
    assert eb["examples_doc"].max() >= 13  # some from the second file


def test_a_document_without_tokens_keeps_its_index_through_a_merge(word_model, tmp_path):
    """A JSONL document with empty text has an index but completes no window: the second file's
    documents number on after it, as in one collection over both files."""
    import json
    lines = word_model["jsonl"].read_text().splitlines(keepends=True)
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    empty = json.dumps({"text": "", "label": "pos"}) + "\n"
    files[0].write_text("".join(lines[:5]) + empty + "".join(lines[5:10]) + empty)
    files[1].write_text("".join(lines[10:20]))
    for i, f in enumerate(files):
        _ok(_collect({**word_model, "text": f}, "--store", tmp_path / f"p{i}.zarr"))
    _ok(_collect({**word_model, "text": files[0]}, "--corpus", files[1], "--store",
                 tmp_path / "whole.zarr"))
    _ok(CliRunner().invoke(main, ["merge", str(tmp_path / "p0.zarr"), str(tmp_path / "p1.zarr"),
                                  "--store", str(tmp_path / "m.zarr"), "--stage", "s"]))
    a, b = (open_store(tmp_path / f).stage("s").layer("lstm").examples
            for f in ("whole.zarr", "m.zarr"))
    np.testing.assert_array_equal(a["examples_doc"], b["examples_doc"])
    assert b["examples_doc"].max() >= 12  # from the second file, after both empty documents


def test_merge_refuses_parts_that_overlap_or_a_source_as_target(word_model, tmp_path):
    from txray_engine.errors import InputError
    from txray_engine.store import merge_stages
    _ok(_collect(word_model, "--store", tmp_path / "a.zarr"))
    _ok(_collect(word_model, "--store", tmp_path / "b.zarr", "--max-documents", "10"))
    a, b = (str(tmp_path / "a.zarr"), "s"), (str(tmp_path / "b.zarr"), "s")
    for sources, target, mode, words in [
            ([a, a], tmp_path / "m.zarr", "new", "given twice"),
            ([a, b], tmp_path / "m.zarr", "new", "same corpus"),
            ([a, (str(tmp_path / "c.zarr"), "s")], tmp_path / "a.zarr", "overwrite",
             "is one of the sources"),
            ([a, b], tmp_path / "m.zarr", "resume", "mode 'new' or 'overwrite'"),
            ([a, (str(tmp_path / "b.zarr"), "t")], tmp_path / "m.zarr", "new",
             "has no stage 't' .*--from-stage S, or as .*::S")]:
        with pytest.raises(InputError, match=words):
            merge_stages(sources, target, "s", mode)
    assert not (tmp_path / "m.zarr").exists()


def test_shards_with_equal_activations_merge_as_one_run(tmp_path):
    """An embedding layer: a word's activation is the same wherever it occurs, so top examples
    tie often; shards merged with ties="place" keep what one pass keeps (the earlier document),
    in memory and as stored stages collected from Python."""
    import torch
    from torch import nn

    from txray_engine import Batch, Collector, Stream, Vocabulary, merge
    from txray_engine.store import merge_stages
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 4))
    streams = [Stream("token", Vocabulary.of_size(6), "input")]
    ids = torch.randint(0, 2, (9, 5))  # two words: every list is full of equal values

    def run(rows, batch=2, stage=None):
        with Collector(model, ["0"], streams, k=1, examples=3, context_radius=1,
                       store=stage and tmp_path / "s.zarr", stage=stage) as col:
            for i in range(0, len(rows), batch):
                part = rows[i:i + batch]
                col.step(Batch(input_ids=ids[part], unit_ids=torch.tensor(part)))
        return col.accumulator

    whole = run(list(range(9))).layers["0"].examples
    shards = [run(list(range(i, 9, 3))) for i in (2, 0, 1)]
    plain = merge(merge(shards[0], shards[1]), shards[2]).layers["0"].examples  # copies
    merged = shards[0].merge_(shards[1], ties="place").merge_(shards[2], ties="place")
    merged = merged.layers["0"].examples
    for key in ("value", "doc", "pos", "context"):
        assert torch.equal(getattr(merged, key), getattr(whole, key)), key
    assert not torch.equal(plain.doc, whole.doc)  # the shards' order, without ties="place"

    for i in (2, 0, 1):
        run(list(range(i, 9, 3)), stage=f"part{i}")
    parts = [(tmp_path / "s.zarr", f"part{i}") for i in (2, 0, 1)]
    for ties, same in (("place", True), (None, False)):  # None: "first" for non-shard stages
        merge_stages(parts, tmp_path / "m.zarr", f"m{ties}", ties=ties)
        stored = open_store(tmp_path / "m.zarr").stage(f"m{ties}").layer("0").examples
        assert np.array_equal(stored["examples_doc"], whole.doc.numpy()) == same
        assert np.array_equal(stored["examples_value"], whole.value.numpy())
    with pytest.raises(InputError, match="ties must be 'first' or 'place'"):
        merge_stages(parts, tmp_path / "m.zarr", "bad", ties="Place")


def test_merged_shards_continue_with_a_higher_limit(word_model, tmp_path):
    """Shards of the first 40 documents, merged, continue to 60 with `collect --resume` as one
    collection would: the cursor and counts of one 60-document run, the sources still named."""
    for i in range(2):
        _ok(_collect(word_model, "--store", tmp_path / f"p{i}.zarr", "--shard", f"{i}/2",
                     "--max-documents", "40"))
    _ok(CliRunner().invoke(main, ["merge", str(tmp_path / "p0.zarr"), str(tmp_path / "p1.zarr"),
                                  "--store", str(tmp_path / "m.zarr"), "--stage", "s"]))
    _ok(_collect(word_model, "--store", tmp_path / "m.zarr", "--resume", "--max-documents", "60"))
    _ok(_collect(word_model, "--store", tmp_path / "one.zarr", "--max-documents", "60"))
    a, b = open_store(tmp_path / "m.zarr").stage("s"), open_store(tmp_path / "one.zarr").stage("s")
    assert a.cursor == b.cursor and a.tokens == b.tokens and len(a.meta["merged_from"]) == 2
    for name in ("token", "predicted"):
        assert (a.layer("lstm").stream(name).csr("count") !=
                b.layer("lstm").stream(name).csr("count")).nnz == 0


def test_a_shard_into_a_store_holding_another_is_refused_before_advice_to_replace_it(
        word_model, tmp_path):
    """Without '{shard}' in --store, shard 0/2 met shard 1/2's stage and was told to --resume,
    then to --overwrite it."""
    same = tmp_path / "same.zarr"
    _ok(_collect(word_model, "--store", same, "--shard", "1/2"))
    for extra in ([], ["--resume"]):
        _clean_error(_collect(word_model, "--store", same, "--shard", "0/2", *extra),
                     "holds shard 1/2, and this run is shard 0/2", "'part-{shard}.zarr'")
    _clean_error(_collect(word_model, "--store", same), "holds shard 1/2, and this run is a "
                 "whole collection")
    assert open_store(same).stage("s").meta["options"]["shard"] == [1, 2]


def test_a_copy_of_a_stage_stopped_at_a_limit_continues_as_the_stage_would(word_model, tmp_path):
    """An unsharded copy dropped max_documents: `info` lost the note and --resume with a higher
    limit said 'already complete'."""
    src, one = tmp_path / "a.zarr", tmp_path / "one.zarr"
    _ok(_collect(word_model, "--store", src, "--max-documents", "3"))
    _ok(CliRunner().invoke(main, ["merge", f"{src}::s", "--store", str(one), "--stage", "s"]))
    copy = open_store(one).stage("s")
    assert copy.meta["max_documents"] == 3 and copy.meta["corpus_done"] is False
    _ok(_collect(word_model, "--store", one, "--resume", "--max-documents", "6"))
    _ok(_collect(word_model, "--store", tmp_path / "direct.zarr", "--max-documents", "6"))
    a, b = open_store(one).stage("s"), open_store(tmp_path / "direct.zarr").stage("s")
    assert a.cursor["documents"] == b.cursor["documents"] == 6
    assert a.tokens == b.tokens
