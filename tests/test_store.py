"""Store format v1: round trips, modes, locking, foreign and damaged stores."""

import json
import shutil

import tempfile

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from naive import tree_digest
from txray_engine import Accumulator, StageWriter, open_store, same_sums
from txray_engine.errors import InputError, StageExistsError, StoreError, StoreLockedError
from txray_engine.store.format import ATTR

VOCAB = {"token": [f"w{i}" for i in range(40)], "pos": ["NN", "VB", "DT"]}


def _acc(seed=0, t=200, n=12, kind="dense"):
    g = torch.Generator().manual_seed(seed)
    acc = Accumulator(VOCAB, k=2, kind=kind)
    acc.observe("enc.lstm", torch.randn(t, n, generator=g),
                {"token": torch.randint(0, 40, (t,), generator=g),
                 "pos": torch.randint(-1, 3, (t,), generator=g)})
    acc.observe("enc.mlp", torch.randn(t, 5, generator=g),
                {"token": torch.randint(0, 40, (t,), generator=g),
                 "pos": torch.randint(0, 3, (t,), generator=g)})
    return acc


def _write(path, acc, stage="s", mode="new", identity=None, status="complete"):
    with StageWriter(path, stage, mode, identity or {"model": "m"}) as w:
        w.commit(acc, {"units": 3, "documents": 2}, status)


def _load(path, stage="s", kind="sparse"):
    return open_store(path).stage(stage).accumulator(kind=kind)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_round_trip(tmp_path, kind):
    acc = _acc(kind=kind)
    _write(tmp_path / "s.zarr", acc)
    store = open_store(tmp_path / "s.zarr")
    assert store.stages == ["s"]
    st = store.stage("s")
    assert st.status == "complete" and st.k == 2 and st.tokens == 200
    assert st.meta["documents"] == 2 and st.meta["model"] == "m"
    assert st.layers == ["enc.lstm", "enc.mlp"] and st.streams == ["token", "pos"]
    assert list(st.vocab("pos")) == VOCAB["pos"]
    assert same_sums(_load(tmp_path / "s.zarr"), acc)
    tok = st.layer("enc.lstm").stream("token")
    from_chunks = {n: tok.row(n) for n in (0, 5, 11)}  # read from the store
    csr = tok.csr("mass")
    assert csr.shape == (12, 40)
    for n in (0, 5, 11):
        row = tok.row(n)  # sliced from the sums read whole for csr()
        for got in (row, from_chunks[n]):
            np.testing.assert_array_equal(got["indices"], csr[n].indices)
            np.testing.assert_array_equal(got["mass"], csr[n].data)
            np.testing.assert_array_equal(got["peak"], tok.csr("peak")[n].data)
    assert np.array_equal(tok.torch("count").to_dense().numpy(), tok.csr("count").toarray())
    assert tok.top_features(0, 3)[0][0].startswith("w")
    info = store.info()
    assert info["stages"]["s"]["layers"] == {"enc.lstm": 12, "enc.mlp": 5}
    assert info["size_bytes"] > 0


@st.composite
def _states(draw):
    """An accumulator of 1-2 layers and 1-3 streams after 0-3 batches: odd widths, k from 1 to
    "all", dense or sparse, ids with -1, activations with ties, negatives and zeros, examples."""
    n_streams = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 30)) for _ in range(n_streams)]
    vocab = {f"s{i}": [f"f{j}" for j in range(v)] for i, v in enumerate(sizes)}
    widths = {f"l{i}": draw(st.integers(1, 20)) for i in range(draw(st.integers(1, 2)))}
    k = draw(st.one_of(st.integers(1, min(widths.values())), st.just("all")))
    m, radius = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    acc = Accumulator(vocab, k=k, kind=draw(st.sampled_from(["dense", "sparse"])),
                      examples=m, context_radius=radius)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    doc = 0
    for _ in range(draw(st.integers(0, 3))):
        t = draw(st.integers(0, 12))
        feats = {s: torch.randint(-1, v, (t,), generator=g) for s, v in zip(vocab, sizes)}
        where = {"doc": torch.arange(doc, doc + t), "pos": torch.arange(t),
                 "context": torch.randint(-1, 5, (t, 2 * radius + 1), generator=g)} if m else None
        doc += t
        for layer, n in widths.items():
            acts = torch.randint(-2, 3, (t, n), generator=g).float() / 2  # ties, 0, negatives
            acc.observe(layer, acts, feats, where=where)
    return acc


@settings(max_examples=30, deadline=None)
@given(acc=_states())
def test_any_state_round_trips(acc):
    """What a store holds reads back as the same sums, examples and vocabularies, whichever kind
    of state wrote it and reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        with StageWriter(f"{tmp}/s.zarr", "s", "new", {"model": "m"}) as w:
            w.commit(acc, {"units": 1}, "complete")
        st_ = open_store(f"{tmp}/s.zarr").stage("s")
        assert st_.k == acc.k and st_.tokens == acc.tokens
        assert [list(st_.vocab(s.name)) for s in acc.streams] == [list(s.vocab) for s in acc.streams]
        for kind in ("dense", "sparse"):
            back = st_.accumulator(kind=kind)
            assert same_sums(back, acc)
            for name, layer in acc.layers.items():
                got, want = back.layers[name].examples, layer.examples
                assert (got is None) == (want is None)
                if want is not None:
                    for key, arr in want.arrays().items():
                        np.testing.assert_array_equal(got.arrays()[key], arr, err_msg=key)


def test_format_is_readable_with_plain_zarr(tmp_path):
    """docs/FORMAT.md promises: no txray code needed to read a stage."""
    acc = _acc()
    _write(tmp_path / "s.zarr", acc)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root.attrs[ATTR]["format"] == "txray-store"
    stage = root["s"]
    snap = stage[stage.attrs[ATTR]["snapshot"]]
    g = snap["enc.lstm"]["token"]
    import scipy.sparse as sp
    m = sp.csr_matrix((g["count"][:], g["indices"][:], g["indptr"][:]),
                      shape=(g.attrs[ATTR]["n_neurons"], g.attrs[ATTR]["n_features"]))
    assert m.sum() == 400  # 200 positions × k=2
    assert stage["vocab"].attrs[ATTR]["vocabularies"]["token"][3] == "w3"


def test_new_mode_refuses_existing_stage_and_changes_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, _acc())
    before = tree_digest(path)
    with pytest.raises(StageExistsError, match="--resume.*--overwrite"):
        _write(path, _acc(seed=1))
    assert tree_digest(path) == before


def test_overwrite_keeps_old_stage_until_first_commit(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, _acc())
    before = tree_digest(path)
    w = StageWriter(path, "s", "overwrite", {"model": "m"}).open()
    w.close()
    assert tree_digest(path) == before
    new = _acc(seed=5)
    _write(path, new, mode="overwrite")
    assert same_sums(_load(path), new)


def test_a_kill_during_an_overwrite_leaves_a_stage_resume_continues(tmp_path, monkeypatch):
    """The first flush of --overwrite deleted the old stage recursively in listing order: a kill
    part-way left the old stage's attributes (complete, its tokens) over a half-deleted snapshot.
    Now the stage is first made an empty stage of the new collection."""
    from txray_engine.store import writer as writer_module
    path = tmp_path / "s.zarr"
    _write(path, _acc())

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed  # as a kill while the old snapshot is deleted

    w = StageWriter(path, "s", "overwrite", {"model": "m2"}).open()
    monkeypatch.setattr(writer_module.shutil, "rmtree", killed)
    with pytest.raises(Killed):
        w.commit(_acc(seed=5), {"units": 1})
    w.close()
    monkeypatch.undo()
    assert open_store(path).info()["stages"]["s"]["status"] == "no snapshot yet"
    with pytest.raises(StageExistsError, match="was started with"):  # not the old collection's
        StageWriter(path, "s", "resume", {"model": "m"}).open()
    with StageWriter(path, "s", "resume", {"model": "m2"}) as w:
        assert w.resumed and w.cursor == {}
        w.commit(_acc(seed=5), {"units": 3}, "complete")
    assert same_sums(_load(path), _acc(seed=5))
    # numbered on from the replaced stage's snapshot (a name is never used twice)
    assert open_store(path).stage("s").meta["snapshot"] == "snap-000002"


def test_a_stage_missing_from_the_order_is_listed_again(tmp_path):
    """A kill between creating a stage and listing it in the root's stage_order left it out for
    good (listed after the others ever after); its next flush lists it."""
    from txray_engine.store.format import ATTR, open_root
    path = tmp_path / "s.zarr"
    for name in ("first", "second"):
        _write(path, _acc(), stage=name, status="in_progress")
    root = open_root(path, "r+")
    meta = dict(root.attrs)[ATTR]
    root.attrs.put({ATTR: {**meta, "stage_order": ["first"]}})
    _write(path, _acc(), stage="second", mode="resume")
    assert dict(open_root(path, "r").attrs)[ATTR]["stage_order"] == ["first", "second"]


def test_resume_checks_status_and_fingerprint(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, _acc(), status="in_progress")
    with pytest.raises(StageExistsError, match=r"other settings \(model\)"):
        StageWriter(path, "s", "resume", {"model": "other"}).open()
    w = StageWriter(path, "s", "resume", {"model": "m"}).open()
    assert w.resumed and w.cursor == {"units": 3, "documents": 2}
    acc = Accumulator(VOCAB, k=2)
    w.load_into(acc)
    w.commit(acc, w.cursor, "complete")
    w.close()
    assert same_sums(acc, _acc())
    with pytest.raises(StageExistsError, match="already complete"):
        StageWriter(path, "s", "resume", {"model": "m"}).open()


def test_only_the_committed_snapshot_remains(tmp_path):
    path = tmp_path / "s.zarr"
    with StageWriter(path, "s", "new", {}) as w:
        for i in range(3):
            w.commit(_acc(seed=i), {"units": i})
    stage = zarr.open_group(str(path), mode="r")["s"]
    snaps = [k for k in stage.group_keys() if k.startswith("snap-")]
    assert snaps == [stage.attrs[ATTR]["snapshot"]] == ["snap-000003"]


def test_identity_cannot_replace_the_format_attributes(tmp_path):
    """An identity (or extra) naming ``streams``, ``snapshot``, … wrote over what readers read:
    ``streams`` became a list, a ``snapshot`` named nothing and the stage no longer opened."""
    path = tmp_path / "s.zarr"
    for identity in ({"model": "m", "k": 2, "streams": ["token"]}, {"snapshot": "snap-999999"}):
        with pytest.raises(InputError, match=r"stage attributes the store writes itself"):
            StageWriter(path, "s", "new", identity)
    with StageWriter(path, "s", "new", {"model": "m", "options": {"k": 2}}) as w:
        with pytest.raises(InputError, match=r"extra keys \['tokens'\]"):
            w.commit(_acc(), {"units": 1}, "complete", extra={"tokens": -5})
        w.commit(_acc(), {"units": 1}, "complete", extra={"note": "first"})
    st = open_store(path).stage("s")
    assert st.meta["options"] == {"k": 2} and st.meta["note"] == "first"
    assert st.meta["streams"]["token"] == {"source": "input", "size": 40}
    assert same_sums(st.accumulator(), _acc())


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with StageWriter(path, "s", "new", {}):
        with pytest.raises(StoreLockedError, match="another process .* still open"):
            StageWriter(path, "s", "new", {}).open()
    StageWriter(path, "s", "new", {}).open().close()  # lock released


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    """flock failing otherwise than on a held lock (ENOLCK on some network file systems): one
    message, the new store's directory removed, and close() still works."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "s.zarr"
    w = StageWriter(path, "s", "new", {"model": "m"})
    with pytest.raises(StoreError, match="cannot lock store .*file system with flock"):
        w.open()
    w.close()
    assert not path.exists()


def test_a_writer_dropped_without_close_releases_the_store(tmp_path):
    """A writer left open by a failed call (a notebook cell) gives the store back when it is
    collected; before, every later writer of the process was refused until exit."""
    import gc
    path = tmp_path / "s.zarr"
    w = StageWriter(path, "s", "new", {"model": "m"}).open()
    with pytest.raises(InputError, match="status"):
        w.commit(_acc(), {"units": 3}, status="done")
    del w
    gc.collect()
    _write(path, _acc())
    assert open_store(path).stage("s").status == "complete"


def test_failed_open_on_new_path_leaves_nothing(tmp_path):
    path = tmp_path / "new.zarr"
    w = StageWriter(path, "s", "new", {}).open()
    w.close()
    assert not path.exists()


def test_a_store_before_its_first_snapshot_says_it_is_being_written(tmp_path):
    """A running collection's store stays empty until its first flush: readers said it was not
    a txray store."""
    from txray_engine.errors import StageNotReadyError
    path = tmp_path / "s.zarr"
    with StageWriter(path, "s", "new", {}):
        with pytest.raises(StageNotReadyError, match="being written by a collection that has "
                                                     "not committed its first snapshot"):
            open_store(path)
    path.mkdir()
    with pytest.raises(StoreError, match="not a txray store"):  # (no writer holds it)
        open_store(path)


def _stream_dir(path, stage="s"):
    snap = open_store(path).stage(stage).meta["snapshot"]
    return path / stage / snap / "enc.lstm" / "token"


CELL_DAMAGE = [
    (lambda g: g["indptr"].__setitem__(slice(2, 4), [40, 1]), "offsets .indptr. do not grow"),
    (lambda g: g["indices"].__setitem__(0, -3), "feature id outside its vocabulary of 40"),
    (lambda g: g["indices"].__setitem__(1, 0), "features out of order"),
    (lambda g: g["count"].__setitem__(3, 0), "count below 1"),
    (lambda g: g["mass"].__setitem__(3, float("nan")), "not finite"),
]


@pytest.mark.parametrize("damage,match", CELL_DAMAGE + [
    (lambda g: g["feature_freq"].__setitem__(3, -1), "negative frequency"),
])
def test_stream_arrays_no_writer_makes_are_damage(tmp_path, damage, match):
    """A non-increasing indptr (last value still the cell count) made scipy overrun memory in
    `txray report` (malloc abort, segfault); compare gave wrong numbers with exit 0."""
    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    damage(zarr.open_group(str(_stream_dir(path)), mode="r+"))
    view = open_store(path).stage("s").layer("enc.lstm").stream("token")
    with pytest.raises(StoreError, match="damaged: .*" + match):
        view.stats


@pytest.mark.parametrize("damage", [d for d, _ in CELL_DAMAGE] + [
    lambda g: g["indptr"].__setitem__(-1, 10 ** 6),  # (the last row reaches past the cells)
])
def test_a_damaged_row_read_alone_is_damage(tmp_path, damage):
    """`txray neurons` reads single rows, and printed what merge and report refuse as damage."""
    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    damage(zarr.open_group(str(_stream_dir(path)), mode="r+"))
    view = open_store(path).stage("s").layer("enc.lstm").stream("token")
    refused = 0
    for neuron in range(view.layer.n_neurons):
        try:
            view.top_features(neuron)
        except StoreError as e:
            assert "damaged: a " in str(e) and "txray merge" in str(e)
            refused += 1
    assert refused >= 1


def test_a_missing_chunk_file_is_damage_not_zeros(tmp_path):
    """An interrupted copy that left a chunk out read as zero counts, with no error."""
    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    (_stream_dir(path) / "count" / "c" / "0").unlink()
    with pytest.raises(StoreError, match="count below 1"):
        open_store(path).stage("s").accumulator()


def test_a_declared_size_is_checked_before_memory_is_taken_for_it(tmp_path):
    """A layer claiming 3·10⁸ neurons in a 36 KB store made merge take 5 GB before refusing."""
    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    snap = open_store(path).stage("s").meta["snapshot"]
    group = zarr.open_group(str(path / "s" / snap / "enc.lstm"), mode="r+")
    attrs = dict(group.attrs)
    attrs[ATTR]["n_neurons"] = 300_000_000
    group.attrs.put(attrs)
    with pytest.raises(StoreError, match="300000000 neurons, and neuron_count holds"):
        open_store(path).stage("s").accumulator()


@pytest.mark.parametrize("key,value,match", [("tokens", "many", "tokens is 'many'"),
                                              ("k", -3, "k is -3"),
                                              ("layers", ["enc.lstm"], "layers is a list"),
                                              ("cursor", {"units": "x"}, "the cursor's units is 'x'")])
def test_stage_attributes_no_writer_makes_are_damage(tmp_path, key, value, match):
    """`txray info` and `report` stopped in a traceback on such a stage."""
    path = tmp_path / "s.zarr"
    _write(path, _acc())
    doc = json.loads((path / "s" / "zarr.json").read_text())
    doc["attributes"][ATTR][key] = value
    (path / "s" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=f"stage 's' is damaged: {match}"):
        open_store(path).stage("s")


def test_a_vocabulary_shorter_than_its_stream_is_damage(tmp_path):
    from txray_engine.store.names import VOCAB_GROUP
    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    group = zarr.open_group(str(path / "s" / VOCAB_GROUP), mode="r+")
    attrs = dict(group.attrs)
    attrs[ATTR]["vocabularies"]["token"] = attrs[ATTR]["vocabularies"]["token"][:30]
    group.attrs.put(attrs)
    with pytest.raises(StoreError, match="40 features, and its vocabulary has 30"):
        open_store(path).stage("s").layer("enc.lstm").stream("token").vocab


def test_a_stage_that_links_outside_the_store_is_not_written(tmp_path):
    """--overwrite of a stage that was a symbolic link removed the snapshots where it pointed."""
    path, outside = tmp_path / "s.zarr", tmp_path / "outside"
    _write(path, _acc(), stage="a")
    (outside / "snap-000777").mkdir(parents=True)
    (outside / "snap-000777" / "precious.txt").write_text("keep")
    (path / "text").symlink_to(outside, target_is_directory=True)
    for mode in ("overwrite", "resume", "new"):
        with pytest.raises(StoreError, match="is a symbolic link"):
            StageWriter(path, "text", mode, {"model": "m"}).open()
    assert (outside / "snap-000777" / "precious.txt").read_text() == "keep"


def test_foreign_and_damaged_stores(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(StoreError, match="not a txray store"):
        open_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a txray store"):
        StageWriter(tmp_path / "plain", "s", "new", {}).open()
    zarr.open_group(str(tmp_path / "z"), mode="w").attrs.put({"other": 1})
    with pytest.raises(StoreError, match="not a txray store"):
        open_store(tmp_path / "z")
    with pytest.raises(StoreError, match="no store"):
        open_store(tmp_path / "missing")
    path = tmp_path / "s.zarr"
    _write(path, _acc())
    meta = path / "zarr.json"
    d = json.loads(meta.read_text())
    d["attributes"][ATTR]["format_version"] = 99
    meta.write_text(json.dumps(d))
    with pytest.raises(StoreError, match="format version 99"):
        open_store(path)
    d["attributes"][ATTR]["format_version"] = 1
    meta.write_text(json.dumps(d))
    snap = open_store(path).stage("s").meta["snapshot"]
    shutil.rmtree(path / "s" / snap / "enc.lstm" / "token" / "count")
    with pytest.raises(StoreError, match="damaged"):
        open_store(path).stage("s").layer("enc.lstm").stream("token").stats
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        open_store(path)


def test_a_reader_open_across_a_commit_is_told_to_reopen(tmp_path):
    """Readers take no lock: a commit removes the snapshot an open stage reads. That is no damage,
    and the reader is told to open the stage again (a fresh one reads the new sums)."""
    path = tmp_path / "s.zarr"
    with StageWriter(path, "s", "new", {}) as w:
        w.commit(_acc(seed=0), {"units": 1})
        stage = open_store(path).stage("s")
        layer = stage.layer("enc.mlp")
        w.commit(_acc(seed=1), {"units": 2})
        for read in (lambda: stage.layer("enc.lstm"), lambda: layer.neuron_count,
                     lambda: layer.stream("token")):
            with pytest.raises(StoreError, match="updated by a writer since it was opened.*"
                                                 "open the stage again") as e:
                read()
            assert "damaged" not in str(e.value)
    fresh = open_store(path).stage("s")
    assert same_sums(fresh.accumulator(), _acc(seed=1)) and fresh.cursor == {"units": 2}


def test_reprs_summarise_without_reading_the_sums(tmp_path):
    acc = _acc()
    assert repr(acc).startswith("Accumulator(k=2, streams token[40], pos[3], kind='dense'")
    assert "enc.mlp: LayerState(5 neurons, 5 alive, 200 tokens; token: dense [40], pos: dense [3])" \
        in repr(acc)
    path = tmp_path / "s.zarr"
    _write(path, acc)
    store = open_store(path)
    stage = store.stage("s")
    assert repr(store) == f"Store({str(path)!r}; stages: s (complete))"
    assert repr(stage) == ("Stage('s', complete; k=2, 200 tokens, 2 documents; layers: enc.lstm, "
                           "enc.mlp; streams: token, pos)")
    assert repr(stage.layer("enc.mlp")).startswith("LayerView('enc.mlp' of stage 's': 5 neurons")
    nnz = stage.layer("enc.mlp").stream("pos").csr().nnz
    assert repr(stage.layer("enc.mlp").stream("pos")) == (
        f"StreamView('pos' of layer 'enc.mlp', stage 's': 5 neurons x 3 features, {nnz} cells)")


def test_unknown_names_list_what_exists(tmp_path):
    _write(tmp_path / "s.zarr", _acc())
    st = open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="this store has 's'"):
        st.stage("nope")
    with pytest.raises(StoreError, match="stage 's' has 'enc.lstm'"):
        st.stage("s").layer("nope")
    with pytest.raises(StoreError, match="stage 's' has 'token', 'pos'"):
        st.stage("s").layer("enc.lstm").stream("nope")
    with pytest.raises(InputError, match="invalid stage name"):
        StageWriter(tmp_path / "s.zarr", "a/b", "new", {})


def test_stages_list_in_creation_order(tmp_path):
    path = tmp_path / "s.zarr"
    for name in ("pretrained", "finetuned", "aaa"):
        _write(path, _acc(), stage=name)
    assert open_store(path).stages == ["pretrained", "finetuned", "aaa"]
    _write(path, _acc(seed=3), stage="pretrained", mode="overwrite")  # keeps its place
    assert open_store(path).stages == ["pretrained", "finetuned", "aaa"]


def test_reading_ignores_a_half_written_snapshot_and_names_a_missing_one(tmp_path):
    """A flush killed mid-write leaves a partial snap- folder (removed by the next writer):
    readers open the committed snapshot by name, with no warning; a stage whose committed
    snapshot is gone gets one clear error."""
    import warnings
    path = tmp_path / "s.zarr"
    acc = _acc()
    _write(path, acc)
    partial = path / "s" / "snap-000099" / "enc.lstm"
    partial.mkdir(parents=True)
    (partial / "junk").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_sums(_load(path), acc)
    meta = path / "s" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][ATTR]["snapshot"] = "snap-000077"
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="no committed snapshot .'snap-000077'."):
        open_store(path).stage("s")


def test_a_reader_during_the_removal_of_its_snapshot_is_told_to_reopen(tmp_path, monkeypatch):
    """The writer switches the stage to its new snapshot, then deletes the old one. A reader of
    the old one that finds chunks gone reads Zarr's fill value (0) without an error: every read
    checks afterwards that its snapshot is still the stage's. Here the removal is caught halfway
    (only the count chunks gone)."""
    import txray_engine.store.writer as writer_module
    path = tmp_path / "s.zarr"
    acc = Accumulator({"token": VOCAB["token"]}, k=2, examples=2)
    g = torch.Generator().manual_seed(0)
    acc.observe("l", torch.randn(50, 6, generator=g),
                {"token": torch.randint(0, 40, (50,), generator=g)},
                where={"doc": torch.zeros(50, dtype=torch.long), "pos": torch.arange(50),
                       "context": torch.zeros(50, 11, dtype=torch.long)})
    with StageWriter(path, "s", "new", {}) as w:
        w.commit(acc, {"units": 1})
        old = open_store(path).stage("s")
        layer = old.layer("l")  # opened before the switch: the reads below are what is checked
        views = [layer.stream("token") for _ in range(2)]
        real = shutil.rmtree
        monkeypatch.setattr(writer_module.shutil, "rmtree",
                            lambda p, *a, **k: real(f"{p}/l/token/count/c"))
        w.commit(acc, {"units": 2})
        monkeypatch.setattr(writer_module.shutil, "rmtree", real)
        for read in (lambda: views[0].csr("count"), lambda: views[1].row(1),
                     lambda: layer.examples,  # was None: a removed group lists empty
                     lambda: old.layer("l")):
            with pytest.raises(StoreError, match="updated by a writer since it was opened"):
                read()
    fresh = open_store(path).stage("s")
    assert fresh.layer("l").stream("token").csr("count").sum() == 100
    assert fresh.layer("l").examples["examples_value"].shape == (6, 2)


def test_a_stage_before_its_first_snapshot_is_not_damaged(tmp_path):
    """Between a writer's start and its first commit (or after a kill in it) the stage has no
    snapshot: info lists it, reading it says so; neither calls the store damaged."""
    from click.testing import CliRunner

    from txray_engine.cli import main
    from txray_engine.errors import StageNotReadyError
    path = tmp_path / "s.zarr"
    _write(path, _acc(), stage="done")
    with StageWriter(path, "s", "new", {}) as w:
        w.commit(_acc(), {"units": 1})
    meta = path / "s" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][ATTR].update(snapshot=None, status="in_progress", cursor={})
    meta.write_text(json.dumps(doc))
    with pytest.raises(StageNotReadyError, match="no snapshot yet.*--resume"):
        open_store(path).stage("s")
    assert open_store(path).info()["stages"]["s"]["status"] == "no snapshot yet"
    res = CliRunner().invoke(main, ["info", str(path)])
    assert res.exit_code == 0 and "stage s: no snapshot yet" in res.output
    assert "stage done: complete" in res.output


@pytest.mark.parametrize("stage,stream", [("run\\1", "token"), ("zarr.json", "token"),
                                          ("s", "neuron_mass"), ("s", "examples_doc"),
                                          ("s\x1b[2J\x1b[Hfake\nline", "token"),
                                          ("a\x00b", "token"), ("x" * 300, "token")])
def test_names_zarr_cannot_hold_are_refused_before_writing(tmp_path, stage, stream):
    """Zarr reads a backslash as '/' (the stage became groups run/1, and the store unreadable);
    a stream named as a layer's array collided with it at the first flush."""
    from txray_engine import Batch, Collector, Stream, Vocabulary
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(InputError, match="invalid (stage|stream) name"):
        with Collector(model, ["0"], [Stream(stream, Vocabulary.of_size(3), "input")],
                       store=tmp_path / "s.zarr", stage=stage) as col:
            col.step(Batch(input_ids=torch.zeros(2, 2, dtype=torch.long),
                           inputs=torch.randn(2, 2, 3)))
    assert not (tmp_path / "s.zarr").exists()


def test_an_overwritten_stage_numbers_its_snapshots_on(tmp_path):
    """A reader of the replaced stage's last snapshot must not take the new stage's first
    snapshot, of the same name, for its own."""
    path = tmp_path / "s.zarr"
    _write(path, _acc(seed=0))
    old = open_store(path).stage("s")
    view = old.layer("enc.lstm").stream("token")  # opened before the overwrite
    _write(path, _acc(seed=1), mode="overwrite")
    assert open_store(path).stage("s").meta["snapshot"] == "snap-000002"
    with pytest.raises(StoreError, match="updated by a writer"):
        view.csr("count")


def test_neurons_reads_again_when_a_flush_lands_meanwhile(tmp_path, monkeypatch):
    """A live collection may replace the snapshot while `txray neurons` reads it: the command
    reads the new one and prints one whole answer, as `txray info` does."""
    from click.testing import CliRunner

    import txray_engine.cli.inspect as inspect_cli
    from txray_engine.cli import main
    from txray_engine.errors import StageChangedError
    _write(tmp_path / "s.zarr", _acc())
    real, calls = inspect_cli._neuron_lines, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise StageChangedError("stage 's' was updated by a writer since it was opened")
        return real(*args)
    monkeypatch.setattr(inspect_cli, "_neuron_lines", flaky)
    res = CliRunner().invoke(main, ["neurons", str(tmp_path / "s.zarr"), "--stage", "s"])
    assert res.exit_code == 0 and len(calls) == 2, res.output
    assert res.output.count("enc.lstm:") == 1 and "updated" not in res.output


def test_a_full_disk_keeps_the_last_snapshot_and_says_so(tmp_path, monkeypatch):
    """A full disk gave 'cannot use: No space left on device' without a path, and its
    half-written snapshot kept the space until the next resume."""
    import errno

    import txray_engine.store.writer as writer

    path = tmp_path / "s.zarr"
    real, calls = writer.write_hierarchy, []

    def full(*args):
        calls.append(1)
        if len(calls) == 3:  # the second snapshot's second layer
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(writer, "write_hierarchy", full)
    acc = _acc()
    with StageWriter(path, "s", "new", {"model": "m"}) as w:
        w.commit(acc, {"units": 1})
        first = open_store(path).stage("s").meta["snapshot"]
        with pytest.raises(StoreError, match=r"cannot write stage 's' of .*s.zarr'.*No space left "
                                             r"on device; the stage keeps its last flush "
                                             r"\(snap-000001\).*--resume"):
            w.commit(acc, {"units": 2})
    assert sorted(p.name for p in (path / "s").glob("snap-*")) == [first]
    stage = open_store(path).stage("s")
    assert stage.cursor == {"units": 1} and same_sums(stage.accumulator(), acc)


def test_a_full_disk_inside_a_snapshot_is_one_error_and_no_write_goes_on(tmp_path, monkeypatch,
                                                                        capfd):
    """Writes failing beside the first printed 'Task exception was never retrieved' and a
    traceback each (230 to 750 lines after the one-line error), and the writes still running
    left a snapshot folder behind."""
    import errno
    import gc

    import zarr.storage

    path = tmp_path / "s.zarr"
    acc = _acc()
    real, calls = zarr.storage.LocalStore.set, []

    async def full(self, key, value):
        calls.append(key)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, key, value)

    with StageWriter(path, "s", "new", {"model": "m"}) as w:
        w.commit(acc, {"units": 1})
        monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
        with pytest.raises(StoreError, match="No space left on device; the stage keeps"):
            w.commit(acc, {"units": 2})
        monkeypatch.undo()
    gc.collect()
    assert len(calls) > 4 and "never retrieved" not in capfd.readouterr().err
    assert sorted(p.name for p in (path / "s").glob("snap-*")) == ["snap-000001"]


def test_a_merge_on_a_full_disk_says_to_run_it_again(tmp_path, monkeypatch):
    """It said to 'go on with --resume', which merge does not have."""
    import errno

    import txray_engine.store.writer as writer
    from txray_engine.store import merge_stages

    _write(tmp_path / "a.zarr", _acc())

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(writer, "write_hierarchy", full)
    with pytest.raises(StoreError, match=r"free space, or make the folder writable, and run the "
                                         r"merge again with --overwrite \(mode='overwrite'\)"):
        merge_stages([(tmp_path / "a.zarr", "s")], tmp_path / "m.zarr", "m")


def test_a_full_disk_at_the_switch_keeps_the_last_snapshot(tmp_path, monkeypatch):
    import errno

    import zarr

    path = tmp_path / "s.zarr"
    acc = _acc()
    with StageWriter(path, "s", "new", {"model": "m"}) as w:
        w.commit(acc, {"units": 1})
        real = zarr.core.attributes.Attributes.put

        def full(self, d):
            if d.get("txray_engine", {}).get("cursor") == {"units": 2}:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, d)

        monkeypatch.setattr(zarr.core.attributes.Attributes, "put", full)
        with pytest.raises(StoreError, match="keeps its last flush \\(snap-000001\\)"):
            w.commit(acc, {"units": 2})
    assert [p.name for p in (path / "s").glob("snap-*")] == ["snap-000001"]
    assert open_store(path).stage("s").cursor == {"units": 1}


def test_a_store_that_cannot_be_written_fails_when_opened(tmp_path, monkeypatch):
    import errno

    import txray_engine.store.writer as writer

    path = tmp_path / "s.zarr"
    _write(path, _acc())

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(writer.tempfile, "mkstemp", read_only)
    with pytest.raises(StoreError, match="cannot write in store .*Read-only file system"):
        StageWriter(path, "t", "new", {"model": "m"}).open()


def test_info_names_a_snapshot_left_beside_the_committed_one(tmp_path):
    """A writer stopped between its commit and its clean-up left the old snapshot: counted in
    the store's size with no word."""
    import shutil

    from click.testing import CliRunner

    from txray_engine.cli import main

    path = tmp_path / "s.zarr"
    _write(path, _acc())
    stage = open_store(path).stage("s")
    assert stage.store.info()["stages"]["s"]["other_snapshot_bytes"] == 0
    shutil.copytree(path / "s" / stage.meta["snapshot"], path / "s" / "snap-000000")
    info = open_store(path).info()["stages"]["s"]
    assert info["other_snapshot_bytes"] > 0
    out = CliRunner().invoke(main, ["info", str(path)]).output
    assert "in a snapshot besides the committed one" in out
    _write(path, _acc(seed=1), mode="overwrite")  # the next writer removes it
    assert open_store(path).info()["stages"]["s"]["other_snapshot_bytes"] == 0


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_a_store_folder_swapped_under_a_writer_is_never_written(tmp_path, how):
    """A store moved away and another put in its place lost its stage to the writer (its
    snapshot deleted, another model's sums in its place); a deleted one was made again without
    a lock."""
    path, other = tmp_path / "s.zarr", tmp_path / "other.zarr"
    _write(other, _acc())
    before = tree_digest(other)
    acc = _acc()
    with StageWriter(path, "s", "new", {"model": "mine"}) as w:
        w.commit(acc, {"units": 1})
        path.rename(tmp_path / "moved.zarr")
        if how == "replaced":
            other.rename(path)
        with pytest.raises(StoreError, match="was moved, replaced or deleted while this writer "
                                             "held it: nothing was written there"):
            w.commit(acc, {"units": 2})
    if how == "replaced":
        path.rename(other)
        assert tree_digest(other) == before
    else:
        assert not path.exists()
    assert open_store(tmp_path / "moved.zarr").stage("s").cursor == {"units": 1}


def test_an_empty_stage_folder_a_failed_first_write_left_is_cleared(tmp_path):
    """A first commit that failed just after making the stage's folder left it empty: every
    later run printed Zarr's 'Object at s2 is not recognized' warnings."""
    import warnings

    path = tmp_path / "s.zarr"
    _write(path, _acc())
    (path / "s2").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _write(path, _acc(), stage="s2")
        assert open_store(path).stages == ["s", "s2"]


def test_a_chunk_the_system_will_not_read_is_not_called_damage(tmp_path, monkeypatch):
    """A chunk without read permission was 'damaged: write the stage again with --overwrite',
    which would not help and loses the stage."""
    import errno

    import zarr.storage

    path = tmp_path / "s.zarr"
    _write(path, _acc(kind="sparse"))
    real = zarr.storage.LocalStore.get

    async def denied(self, key, *args, **kwargs):
        if key.endswith("/c/0"):
            raise PermissionError(errno.EACCES, "Permission denied", key)
        return await real(self, key, *args, **kwargs)
    monkeypatch.setattr(zarr.storage.LocalStore, "get", denied)
    with pytest.raises(StoreError, match=r"cannot be read \(Permission denied: .*/c/0\); check "
                                         r"the path and its permissions") as e:
        open_store(path).stage("s").accumulator()
    assert "--overwrite" not in str(e.value)


def test_a_snapshot_that_cannot_be_removed_is_named(tmp_path, monkeypatch):
    """It said 'cannot use 'x'', the name of a file inside the snapshot folder alone."""
    import errno

    import txray_engine.store.writer as writer_module

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "x")
    path, acc = tmp_path / "s.zarr", _acc()
    with StageWriter(path, "s", "new", {"model": "m"}) as w:
        w.commit(acc, {"units": 1})
        monkeypatch.setattr(writer_module.shutil, "rmtree", refused)
        with pytest.raises(StoreError, match=r"Permission denied \(.*s.zarr/s/snap-000001\)"):
            w.commit(acc, {"units": 2})
