"""Sharded collection (`txray collect --shard I/N`) and `txray merge`: the shards of a corpus add
up to the stage one collection over the whole corpus makes."""

import numpy as np
import pytest
from click.testing import CliRunner

from txray_engine import open_store, same_sums
from txray_engine.cli import main


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
    # top examples name each token by its document and its position in it, in every shard alike
    ea, eb = a.layer("lstm").examples, b.layer("lstm").examples
    for key in ("examples_value", "examples_doc", "examples_pos", "examples_context"):
        np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
    assert ea["examples_pos"].max() >= 4  # positions past the first window of a document


def test_merge_refusals_leave_no_stage(word_model, tmp_path):
    _ok(_collect(word_model, "--store", tmp_path / "a.zarr", "--shard", "0/2"))
    _ok(_collect(word_model, "--store", tmp_path / "b.zarr", "--shard", "1/2", "-k", "1"))
    _ok(_collect(word_model, "--store", tmp_path / "c.zarr", "--shard", "0/2"))
    out = tmp_path / "m.zarr"

    def merge(*names):
        return CliRunner().invoke(main, ["merge", *[str(tmp_path / n) for n in names],
                                         "--store", str(out), "--stage", "s"])
    _clean_error(merge("a.zarr", "b.zarr"), "differ in collection")
    _clean_error(merge("a.zarr", "c.zarr"), "shard(s) [0] given twice", "shard(s) [1] missing")
    _clean_error(merge("a.zarr"), "at least two stages")
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "2/2"),
                 "shard 2/2: I must be in 0..1")
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "two"),
                 "a shard is I/N")
    _clean_error(_collect(word_model, "--store", tmp_path / "x-{shard}.zarr"),
                 "'{shard}' but no --shard")
    assert not out.exists() and not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("env", [{}, {"RANK": "0"}])
def test_shard_env_needs_torchrun_variables(word_model, tmp_path, monkeypatch, env):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _clean_error(_collect(word_model, "--store", tmp_path / "x.zarr", "--shard", "env"),
                 "RANK and WORLD_SIZE")
