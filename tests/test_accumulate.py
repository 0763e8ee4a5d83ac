"""Select + accumulate against the independent float64 loop, for both state kinds."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from naive import assert_matches_naive, naive_sums
from txray_engine import Accumulator
from txray_engine.errors import InputError
import txray_kernels as kernels
from txray_kernels import cpu_table
from txray_engine.accumulate import SparseState, make_state

KINDS = ["dense", "sparse"]


@st.composite
def observations(draw):
    n = draw(st.integers(1, 9))
    t = draw(st.integers(0, 24))
    v = draw(st.integers(1, 7))
    k = draw(st.one_of(st.integers(1, n), st.just("all")))
    tie_heavy = draw(st.booleans())
    if tie_heavy:  # few distinct values: many ties, including all-equal rows
        vals = draw(st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0]), min_size=t * n,
                             max_size=t * n))
    else:
        vals = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=t * n, max_size=t * n))
    acts = torch.tensor(vals, dtype=torch.float32).reshape(t, n)
    if draw(st.booleans()) and t:  # some all-negative rows
        acts[: t // 2] = -acts[: t // 2].abs() - 1
    feats = {"a": torch.tensor(draw(st.lists(st.integers(-1, v - 1), min_size=t, max_size=t)),
                               dtype=torch.long),
             "b": torch.tensor(draw(st.lists(st.integers(0, 2), min_size=t, max_size=t)),
                               dtype=torch.long)}
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=t, max_size=t)), dtype=torch.bool) \
        if draw(st.booleans()) else None
    return acts, feats, k, mask, v


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obs=observations())
def test_matches_naive_reference(kind, obs):
    acts, feats, k, mask, v = obs
    acc = Accumulator({"a": [str(i) for i in range(v)], "b": ["x", "y", "z"]}, k=k, kind=kind)
    acc.observe("layer", acts, feats, mask)
    ref = naive_sums(acts.numpy(), {s: f.numpy() for s, f in feats.items()}, k,
                     None if mask is None else mask.numpy())
    if "layer" not in acc.layers:
        assert ref["tokens"] == 0 and acts.shape[0] == 0
        return
    assert_matches_naive(acc.layers["layer"], ref)


@settings(max_examples=40, deadline=None)
@given(obs=observations())
def test_dense_and_sparse_agree(obs):
    acts, feats, k, mask, v = obs
    vocab = {"a": [str(i) for i in range(v)], "b": ["x", "y", "z"]}
    states = []
    for kind in KINDS:
        acc = Accumulator(vocab, k=k, kind=kind)
        acc.observe("l", acts, feats, mask)
        states.append(acc)
    if not acts.shape[0]:
        return
    for s in vocab:
        assert states[0].layers["l"].streams[s].to_stats().equals(
            states[1].layers["l"].streams[s].to_stats(), 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(40, 13, generator=g).to(dtype)
    feats = {"tok": torch.randint(0, 5, (40,), generator=g)}
    acc = Accumulator({"tok": list("abcde")}, k=3)
    acc.observe("l", acts, feats)
    ref = naive_sums(acts.float().numpy(), {"tok": feats["tok"].numpy()}, 3)
    assert_matches_naive(acc.layers["l"], ref, rtol=1e-6)


def test_mass_clamps_negative_and_peak_keeps_raw_value():
    acts = torch.tensor([[-3.0, -1.0, -2.0], [2.0, 0.5, -1.0]])
    acc = Accumulator({"f": ["x"]}, k=1)
    acc.observe("l", acts, {"f": torch.tensor([0, 0])})
    st_ = acc.layers["l"].streams["f"].to_stats()
    assert st_.rows().tolist() == [0, 1] and st_.count.tolist() == [1, 1]
    assert st_.mass.tolist() == [2.0, 0.0]          # neuron 1 fired with -1: mass 0
    assert st_.peak.tolist() == [2.0, -1.0]


def test_tie_break_prefers_lower_index():
    acts = torch.tensor([[1.0, 5.0, 5.0, 5.0, 0.0]])
    for k, expect in [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [0, 1, 2, 3])]:
        acc = Accumulator({"f": ["x"]}, k=k)
        acc.observe("l", acts, {"f": torch.tensor([0])})
        assert torch.nonzero(acc.layers["l"].neuron_count).squeeze(1).tolist() == expect


TABLES = [False, "cpu", "triton"]  # "triton": the GPU's table, here under TRITON_INTERPRET=1


@pytest.mark.parametrize("table", TABLES)
def test_sparse_compaction_is_exact_across_many_batches(table):
    """Every way a sparse state takes events: sorted runs merged LSM-style, and the CPU and GPU
    hash tables (read while adds go on, so reads interleave with adds here)."""
    if table == "cpu" and not cpu_table.AVAILABLE:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(3)
    sparse = SparseState(50, 1000, min_compact=64, table=table)
    dense = make_state(50, 1000, "dense")
    for i in range(40):
        n = torch.randint(0, 50, (100,), generator=g)
        f = torch.randint(0, 1000, (100,), generator=g)
        v = torch.randn(100, generator=g)
        sparse.add_events(n, f, v)
        dense.add_events(n, f, v)
        if i % 7 == 0:
            assert sparse.to_stats().equals(dense.to_stats(), 1e-12)
    assert sparse.to_stats().equals(dense.to_stats(), 1e-12)


@pytest.mark.parametrize("table", ["cpu", "triton"])
def test_a_table_holds_the_state_without_a_master(table):
    """On the CPU and on CUDA the hash table is the sparse state: adds, merges and reads never
    drain it into a sorted master (whose re-merges cost more than the inserts), and every read
    is exact."""
    if table == "cpu" and not cpu_table.AVAILABLE:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(5)
    sparse = SparseState(30, 200, min_compact=16, table=table)
    dense = make_state(30, 200, "dense")
    other = make_state(30, 200, "dense")
    for i in range(12):
        n, f = torch.randint(0, 30, (60,), generator=g), torch.randint(0, 200, (60,), generator=g)
        v = torch.randn(60, generator=g)
        (other if i % 4 == 3 else sparse).add_events(n, f, v)
        dense.add_events(n, f, v)
        if i % 5 == 0:
            sparse.to_stats()
    sparse.merge_(other)
    assert sparse.to_stats().equals(dense.to_stats(), 1e-12)
    assert sparse._master[0].numel() == 0 and not sparse._pending
    assert sparse.to_stats().equals(dense.to_stats(), 1e-12)  # reads leave the table whole
    sparse._compact()  # an LSM compaction has nothing to move out of the table
    assert sparse.to_stats().equals(dense.to_stats(), 1e-12)


def test_auto_kind_respects_budget():
    assert make_state(10, 10, "auto", dense_budget=10 * 10 * 20).kind == "dense"
    assert make_state(10, 10, "auto", dense_budget=10 * 10 * 20 - 1).kind == "sparse"


def test_counts_are_exact_beyond_float32():
    # 2**24 + 1 is not representable in float32; int64 counts and a float64 mass stay exact.
    state = make_state(1, 1, "dense")
    stats = state.to_stats()
    stats = type(stats).from_coo(1, 1, [0], [0], [2**24], [float(2**24)], [1.0], [2**24])
    state.merge_(stats)
    state.add_events(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]))
    out = state.to_stats()
    assert out.count.tolist() == [2**24 + 1] and out.mass.tolist() == [2.0**24 + 1]


def test_readers_give_scipy_and_torch():
    acc = Accumulator({"f": list("abcd")}, k=2)
    acc.observe("l", torch.randn(30, 6), {"f": torch.randint(0, 4, (30,))})
    stats = acc.layers["l"].streams["f"].to_stats()
    dense_count = stats.csr("count").toarray()
    assert dense_count.sum() == 60
    assert np.array_equal(stats.torch_csr("count").to_dense().numpy(), dense_count)


@pytest.mark.parametrize("table", TABLES)
def test_sparse_add_selection_matches_dense(table):
    """A whole selection at once (positions + events): the CPU table's single pass and the
    fallback give the dense state's sums; bad ids change nothing."""
    if table == "cpu" and not cpu_table.AVAILABLE:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(5)
    sparse, dense = SparseState(30, 200, table=table), make_state(30, 200, "dense")
    for _ in range(5):
        values = torch.randn(64, 3, generator=g)
        indices = torch.randint(0, 30, (64, 3), generator=g)
        features = torch.randint(-1, 200, (64,), generator=g)
        sparse.add_selection(values, indices, features)
        dense.add_positions(features)
        kernels.scatter_events(values, indices, [(features, dense)])
    before = sparse.to_stats()
    assert before.equals(dense.to_stats(), 1e-12)
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        sparse.add_selection(torch.ones(1, 1), torch.tensor([[0]]), torch.tensor([200]))
    assert sparse.to_stats().equals(before, 0.0)


def test_layer_add_selection_checks_everything_before_changing_anything():
    """A bad id or shape in any stream (here the sparse one, updated last) leaves the whole layer
    as it was: no dense sums, positions or per-neuron totals of the other streams."""
    from txray_engine.accumulate.layer import LayerState

    layer = LayerState.create(4, {"a": 5, "b": 5}, kind="dense")
    layer.streams["b"] = SparseState(4, 5)
    values, indices = torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.long)
    bad = [{"a": torch.tensor([0, 1]), "b": torch.tensor([0, 9])},  # id out of range
           {"a": torch.tensor([0, 1]), "b": torch.tensor([0])}]  # too few ids
    for features in bad:
        with pytest.raises(ValueError):
            layer.add_selection(values, indices, features)
        assert not layer.neuron_count.any() and layer.tokens == 0
        assert not layer.streams["a"].feature_freq.any() and not layer.streams["a"].count.any()
        assert layer.streams["b"].to_stats().nnz == 0


def test_stats_are_snapshots():
    acc = Accumulator({"f": ["x", "y"]}, k=1)
    acc.observe("l", torch.tensor([[1.0, 0.0]]), {"f": torch.tensor([0])})
    layer = acc.layers["l"]
    stats, totals = layer.streams["f"].to_stats(), layer.totals()
    acc.observe("l", torch.tensor([[1.0, 0.0]]), {"f": torch.tensor([0])})
    assert stats.feature_freq.tolist() == [1, 0] and totals["neuron_count"].tolist() == [1, 0]


@pytest.mark.parametrize("table", TABLES)
def test_sparse_merge_of_stats_with_a_repeated_cell(table):
    """``SparseStats.from_coo`` asks for each cell at most once; a repeated one is still summed."""
    if table == "cpu" and not cpu_table.AVAILABLE:
        pytest.skip("numba not installed")
    from txray_engine.accumulate.stats import SparseStats

    stats = SparseStats.from_coo(2, 3, [1, 0, 1], [2, 1, 2], [1, 2, 3], [1.0, 2.0, 3.0],
                                 [1.0, 2.0, 3.0], [0, 2, 4])
    state = SparseState(2, 3, table=table)
    state.merge_(stats)
    state.merge_(stats)
    out = state.to_stats()
    assert out.keys().tolist() == [1, 5] and out.count.tolist() == [4, 8]
    assert out.mass.tolist() == [4.0, 8.0] and out.peak.tolist() == [2.0, 3.0]


def test_sparse_table_must_suit_the_device(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA state"):
        SparseState(3, 4, table="triton")
    with pytest.raises(ValueError, match="table must be"):
        SparseState(3, 4, table="gpu")
    if cpu_table.AVAILABLE:
        state = SparseState(3, 4, table="cpu")
        assert state._table.nbytes > 0 and state.nbytes == 4 * 8 + state._table.nbytes


def test_kernels_accumulate_checks_ids_on_every_device_path(monkeypatch):
    """The device (non-numba) path of ``txray_kernels.accumulate`` checks shapes and ids with one
    read-back before changing anything, as the CPU path does; ``checked=True`` is for callers
    that checked (the Accumulator)."""
    from txray_engine.accumulate.layer import LayerState

    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)  # take the path CUDA tensors take
    layer = LayerState.create(4, {"a": 5, "b": 5}, kind="dense")
    values, indices = torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.long)
    for features, bad_indices in [({"a": torch.tensor([0, 1]), "b": torch.tensor([0, 9])}, indices),
                                  ({"a": torch.tensor([0, 1]), "b": torch.tensor([0, -2])}, indices),
                                  ({"a": torch.tensor([0, 1]), "b": torch.tensor([0, 1])},
                                   torch.tensor([[0], [4]]))]:
        with pytest.raises(ValueError):
            layer.add_selection(values, bad_indices, features)
        assert not layer.neuron_count.any() and layer.tokens == 0
        assert not layer.streams["a"].feature_freq.any() and not layer.streams["b"].count.any()
    layer.add_selection(values, indices, {"a": torch.tensor([0, -1]), "b": torch.tensor([4, 4])})
    assert layer.streams["b"].count.sum() == 2 and layer.streams["a"].missing == 1


def test_commit_refuses_a_second_width_for_a_new_layer():
    acc = Accumulator({"f": ["x"]}, k=1)
    a = acc.prepare("l", torch.randn(3, 4), {"f": torch.zeros(3, dtype=torch.long)})
    b = acc.prepare("l", torch.randn(3, 6), {"f": torch.zeros(3, dtype=torch.long)})
    acc.commit(a)
    with pytest.raises(InputError, match="one width"):
        acc.commit(b)
    assert acc.layers["l"].tokens == 3


def test_commit_refuses_a_batch_prepared_for_other_streams():
    """Ids are checked in ``prepare`` against that accumulator's vocabularies; another one with a
    smaller vocabulary must refuse the batch (its kernels trust checked ids)."""
    big = Accumulator({"f": [str(i) for i in range(4)]}, k=1)
    small = Accumulator({"f": ["a", "b"]}, k=1)
    batch = big.prepare("l", torch.randn(4, 8), {"f": torch.full((4,), 3)})
    with pytest.raises(InputError, match="prepared for streams"):
        small.commit(batch)
    assert not small.layers


@pytest.mark.parametrize("cpu_path", [True, False])
def test_accumulate_checks_the_positions_of_an_empty_selection(cpu_path, monkeypatch):
    """k == 0 selects no neuron, but its positions still count: their ids are checked."""
    from txray_engine.accumulate.layer import LayerState

    if not cpu_path:
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    layer = LayerState.create(4, {"a": 2, "b": 2}, kind="dense")
    layer.streams["b"] = SparseState(4, 2, table=False)
    with pytest.raises(ValueError):
        kernels.accumulate(torch.ones(3, 0), torch.zeros(3, 0, dtype=torch.long),
                           [(torch.tensor([0, 1, 0]), layer.streams["a"]),
                            (torch.tensor([0, 50_000_000, 1]), layer.streams["b"])],
                           (layer.neuron_count, layer.neuron_mass))
    assert not layer.streams["a"].feature_freq.any()


@pytest.mark.parametrize("cpu_path", [True, False])
@pytest.mark.parametrize("kind", ["dense", "sparse", "sparse-table"])
def test_an_empty_selection_counts_its_positions(cpu_path, kind, monkeypatch):
    """k == 0 (no neuron selected) still counts positions and missing ids, on every state."""
    from txray_engine.accumulate.layer import LayerState

    if not cpu_path:
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    layer = LayerState.create(4, {"f": 5}, kind="dense" if kind == "dense" else "sparse")
    if kind == "sparse":
        layer.streams["f"] = SparseState(4, 5, table=False)
    elif not cpu_path and kind == "sparse-table":
        pytest.skip("the CPU hash table needs numba")
    features = torch.tensor([0, -1, 2, 0])
    values, indices = torch.zeros(4, 0), torch.zeros(4, 0, dtype=torch.long)
    layer.add_selection(values, indices, {"f": features})
    kernels.add_totals(values, indices, layer.neuron_count, layer.neuron_mass)
    state = layer.streams["f"]
    assert state.feature_freq.tolist() == [2, 0, 1, 0, 0] and state.missing == 1
    assert layer.tokens == 4 and not layer.neuron_count.any()
    assert state.to_stats().count.size == 0


def test_the_dense_budget_is_shared_by_all_layers_and_streams(tmp_path):
    """Under auto, dense states take the budget in the order they are made; past it, sparse:
    30 layers of a mid-size vocabulary no longer each take a budget of their own. A resumed
    stage is laid out the same way, and both kinds hold the same sums."""
    from txray_engine import StageWriter, open_store, same_sums
    per_state = 6 * 50 * 20  # 6 neurons x 50 features, 20 bytes a cell
    acc = Accumulator({"a": [str(i) for i in range(50)], "b": [str(i) for i in range(50)]}, k=2,
                      dense_budget=3 * per_state)
    g = torch.Generator().manual_seed(0)
    for layer in ("l0", "l1", "l2"):
        acc.observe(layer, torch.randn(40, 6, generator=g),
                    {s: torch.randint(0, 50, (40,), generator=g) for s in "ab"})
    kinds = [(lay, s, st.kind) for lay, ls in acc.layers.items() for s, st in ls.streams.items()]
    assert [k for *_, k in kinds] == ["dense", "dense", "dense", "sparse", "sparse", "sparse"]
    assert acc.dense_left == 0
    with StageWriter(tmp_path / "s.zarr", "s", "new", {"m": 1}) as w:
        w.commit(acc, {"units": 1}, "complete")
    back = open_store(tmp_path / "s.zarr").stage("s").accumulator(dense_budget=3 * per_state)
    assert [st.kind for ls in back.layers.values() for st in ls.streams.values()] == \
        [k for *_, k in kinds] and same_sums(acc, back, mass_rtol=0)
