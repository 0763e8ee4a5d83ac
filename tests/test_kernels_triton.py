"""The kernels against the torch reference (kernels.reference), one shared suite: the Triton
kernels, and the engine's dispatch (``kernels.select`` + ``kernels.scatter``: numba on CPU tensors).

On the CPU everything runs under ``TRITON_INTERPRET=1`` (set by conftest.py) with tiny shapes; the
``gpu`` tests run bigger shapes on CUDA (``TRITON_INTERPRET=0 pytest -m gpu tests/test_kernels_triton.py``).
Counts and peaks must match exactly, masses within ``MASS_RTOL``.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import kernels
from kernels import reference, triton_dense, triton_sparse


def _accumulate_states():
    """``DenseState`` and ``SparseState`` without running ``txray_engine/__init__`` (which imports the
    Zarr store, absent from the GPU image)."""
    if "txray_engine" not in sys.modules:
        try:
            importlib.import_module("zarr")
        except ImportError:
            pkg = types.ModuleType("txray_engine")
            pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "txray_engine")]
            sys.modules["txray_engine"] = pkg
    dense = importlib.import_module("txray_engine.accumulate.dense")
    sparse = importlib.import_module("txray_engine.accumulate.sparse")
    return dense.DenseState, sparse.SparseState


DenseState, SparseState = _accumulate_states()

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

#: Relative tolerance of mass per accumulation mode and input dtype (counts and peaks: exact).
#: Inputs are compared with the reference on the same values cast to fp32, so the dtype only changes
#: the data; "direct" adds fp32 values to float64 sums (only the summation order differs),
#: "partial" sums up to PARTIAL_FLUSH_ROWS values in fp32 before the float64 flush.
MASS_RTOL = {
    "direct": {torch.float32: 1e-12, torch.float16: 1e-12, torch.bfloat16: 1e-12},
    "partial": {torch.float32: 2.5e-4, torch.float16: 2.5e-4, torch.bfloat16: 2.5e-4},
}


# ------------------------------------------------------------------------------------------------
# implementations under test: (acts, k, features list) -> (values, indices, states)
# ------------------------------------------------------------------------------------------------
def _states(kinds, n, v, device, table=None):
    """States of ``kinds``; ``table`` picks how sparse ones take events: ``"triton"`` (the GPU's
    persistent hash table), ``False`` (a scratch table per call, pushed as a sorted run), ``None``
    (the device's default)."""
    return [DenseState(n, v, device=device) if kind == "dense" else
            SparseState(n, v, device=device, table=table) for kind in kinds]


def _dense_impl(method, mode="direct", rounds="int64", scatter=None, keys16=None):
    """``rounds``, ``scatter``, ``keys16``: ``triton_dense.ARGMAX_ROUNDS``, ``ROUND_SCATTER`` and
    ``KEYS_16BIT`` for the call (``None``: the module's default)."""
    def run(acts, k, feats, n, v):
        if method == "candidates" and k < n and \
                triton_dense._candidate_chunk(triton_dense._next_pow2(n), k) is None:
            pytest.skip(f"rows of {n} neurons are too narrow for k={k} candidate chunks")
        states = _states(["dense"] * len(feats), n, v, acts.device)
        saved = triton_dense.ARGMAX_ROUNDS, triton_dense.ROUND_SCATTER, triton_dense.KEYS_16BIT
        triton_dense.ARGMAX_ROUNDS = rounds
        triton_dense.ROUND_SCATTER = scatter or saved[1]
        triton_dense.KEYS_16BIT = saved[2] if keys16 is None else keys16
        try:
            out = triton_dense.dense_select_accumulate(acts, k, list(zip(feats, states)),
                                                       method=method, mode=mode)
        finally:
            (triton_dense.ARGMAX_ROUNDS, triton_dense.ROUND_SCATTER,
             triton_dense.KEYS_16BIT) = saved
        for s in states:
            triton_dense.flush(s)
        return (*out, states)
    return run


def _sparse_impl(acts, k, feats, n, v):
    states = _states(["sparse"] * len(feats), n, v, acts.device, table="triton")
    return (*triton_sparse.sparse_select_accumulate(acts, k, list(zip(feats, states))), states)


def _mixed_kinds(count):
    return ["dense" if i % 2 == 0 else "sparse" for i in range(count)]


def _mixed_impl(acts, k, feats, n, v):
    states = _states(_mixed_kinds(len(feats)), n, v, acts.device, table=False)
    return (*triton_sparse.select_accumulate(acts, k, list(zip(feats, states))), states)


def _scatter_impl(acts, k, feats, n, v):
    """Scatter-only path on a torch selection (all-neurons k == N: an expanded arange)."""
    states = _states(_mixed_kinds(len(feats)), n, v, acts.device, table=False)
    values, indices = reference.select_topk(acts, k)
    triton_sparse.scatter_events(values, indices, list(zip(feats, states)))
    return values, indices, states


def _dispatch_impl(acts, k, feats, n, v):
    """What the engine calls: ``kernels.select`` + ``kernels.scatter`` (numba on CPU tensors,
    Triton on CUDA ones)."""
    states = _states(_mixed_kinds(len(feats)), n, v, acts.device)
    values, indices, bad = kernels.select(acts, k)
    assert bad.numel() == 0
    kernels.scatter(values, indices, list(zip(feats, states)))
    return values, indices, states


IMPLS = {
    "dispatch": ("mixed", "direct", _dispatch_impl),
    "dense-auto": ("dense", "direct", _dense_impl("auto")),
    "dense-argmax-fp32": ("dense", "direct", _dense_impl("argmax", rounds="fp32")),
    "dense-argmax-batched": ("dense", "direct", _dense_impl("argmax", scatter="batched")),
    "dense-argmax-per-round": ("dense", "direct", _dense_impl("argmax", scatter="per_round")),
    "dense-candidates-batched": ("dense", "direct", _dense_impl("candidates", scatter="batched")),
    "dense-candidates-per-round": ("dense", "direct",
                                   _dense_impl("candidates", scatter="per_round")),
    # KEYS_16BIT is the default (2-byte rows keyed on 16 bits, for k > 1): 32-bit keys too (and
    # every method on both in test_keys16_select_the_reference)
    "dense-candidates-keys32": ("dense", "direct", _dense_impl("candidates", keys16=False)),
    "dense-threshold": ("dense", "direct", _dense_impl("threshold")),
    "dense-torchsel": ("dense", "direct", _dense_impl("torch")),
    "dense-partial": ("dense", "partial", _dense_impl("auto", "partial")),
    "sparse": ("sparse", "direct", _sparse_impl),
    "mixed": ("mixed", "direct", _mixed_impl),
    "scatter-mixed": ("mixed", "direct", _scatter_impl),
}


def _reference(acts, k, feats, n, v, kinds):
    states = _states(kinds, n, v, acts.device)
    values, indices = reference.select_accumulate(acts.float(), k, list(zip(feats, states)))
    return values, indices, states


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _values(kind, p, n, gen):
    if kind == "random":
        return torch.randn(p, n, generator=gen)
    if kind == "ties":  # few distinct values: ties straddle the k boundary
        return torch.randint(-2, 3, (p, n), generator=gen).float() * 0.5
    if kind == "all_equal":  # every row constant; rows 0.. share values
        return torch.randint(-1, 2, (p, 1), generator=gen).float().expand(p, n).clone()
    if kind == "negative":
        return -torch.rand(p, n, generator=gen) - 0.25
    if kind == "contention":  # every row identical: all events land on the same cells
        return torch.randn(1, n, generator=gen).expand(p, n).clone()
    if kind == "zeros":  # -0.0 and +0.0 are equal for the tie-break
        x = torch.zeros(p, n)
        x[:, ::2] = -0.0
        x[:, 3::5] = 1.0
        return x
    raise AssertionError(kind)


def _layout(x, layout, dtype):
    """``x`` cast to ``dtype`` with the given memory layout (same values)."""
    p, n = x.shape
    if layout == "contiguous":
        return x.to(dtype)
    if layout == "row_strided":  # a column window of a wider buffer: row stride != N
        buf = torch.zeros(p, n + 5, dtype=dtype)
        buf[:, 3:3 + n] = x.to(dtype)
        return buf[:, 3:3 + n]
    if layout == "col_strided":
        buf = torch.zeros(p, 2 * n, dtype=dtype)
        buf[:, ::2] = x.to(dtype)
        return buf[:, ::2]
    raise AssertionError(layout)


def _features(p, v, n_streams, gen, kind):
    feats = []
    for s in range(n_streams):
        if kind == "contention":
            f = torch.full((p,), v - 1, dtype=torch.int64)
        else:
            f = torch.randint(0, v, (p,), generator=gen)
        if s % 2 == 1 or kind == "ties":
            f[torch.rand(p, generator=gen) < 0.3] = -1  # missing
        feats.append(f)
    return feats


#: (data, dtype, layout, streams, P, N, V)
SCENARIOS = {
    "random-f32": ("random", torch.float32, "contiguous", 1, 16, 37, 13),
    "ties-bf16-rowstride": ("ties", torch.bfloat16, "row_strided", 3, 16, 37, 13),
    "alleq-f16-colstride": ("all_equal", torch.float16, "col_strided", 2, 11, 23, 5),
    "negative-f32-5streams": ("negative", torch.float32, "contiguous", 5, 9, 37, 7),
    "contention-bf16": ("contention", torch.bfloat16, "contiguous", 2, 16, 19, 3),
    "zeros-f32": ("zeros", torch.float32, "row_strided", 1, 4, 10, 2),
    "tiny-f16": ("random", torch.float16, "contiguous", 2, 3, 5, 2),
    # N a power of two: the selecting kernels drop their column masks (13 rows: a padded group)
    "ties-bf16-even": ("ties", torch.bfloat16, "contiguous", 2, 13, 64, 11),
}


def _make_case(name, device="cpu", seed=0):
    data, dtype, layout, n_streams, p, n, v = SCENARIOS[name]
    gen = torch.Generator().manual_seed(seed)
    x = _values(data, p, n, gen)
    acts = _layout(x, layout, dtype).to(device)
    feats = [f.to(device) for f in _features(p, v, n_streams, gen, data)]
    return acts, feats, n, v


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------
def _check_selection(acts, k, values, indices, ref_values, ref_indices):
    p = acts.shape[0]
    assert values.shape == (p, k) and indices.shape == (p, k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    got = torch.sort(indices.cpu(), dim=1).values
    want = torch.sort(ref_indices.cpu(), dim=1).values
    assert torch.equal(got, want), f"selected neurons differ:\n{got}\nvs\n{want}"
    # each value is the activation of its neuron, cast to fp32
    assert torch.equal(values.cpu(), torch.gather(acts.float().cpu(), 1, indices.cpu()))
    assert torch.equal(torch.sort(values.cpu(), 1).values, torch.sort(ref_values.cpu(), 1).values)


def _check_states(states, ref_states, rtol):
    for i, (s, r) in enumerate(zip(states, ref_states)):
        a, b = s.to_stats(), r.to_stats()
        assert a.nnz == b.nnz, f"stream {i}: {a.nnz} cells vs {b.nnz}"
        assert (a.indptr == b.indptr).all() and (a.indices == b.indices).all(), f"stream {i}: pattern"
        assert (a.count == b.count).all(), f"stream {i}: count {a.count} vs {b.count}"
        assert (a.peak == b.peak).all(), f"stream {i}: peak {a.peak} vs {b.peak}"
        assert torch.allclose(torch.from_numpy(a.mass), torch.from_numpy(b.mass), rtol=rtol,
                              atol=0.0), f"stream {i}: mass {a.mass} vs {b.mass}"


def _run_case(impl_name, acts, k, feats, n, v):
    kind, mode, impl = IMPLS[impl_name]
    kinds = {"dense": ["dense"] * len(feats), "sparse": ["sparse"] * len(feats),
             "mixed": _mixed_kinds(len(feats))}[kind]
    values, indices, states = impl(acts, k, feats, n, v)
    ref_values, ref_indices, ref_states = _reference(acts, k, feats, n, v, kinds)
    _check_selection(acts, k, values, indices, ref_values, ref_indices)
    _check_states(states, ref_states, MASS_RTOL[mode][acts.dtype])


# ------------------------------------------------------------------------------------------------
# the interpreted suite (CPU)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 8, "N"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_matches_reference(impl, scenario, k):
    acts, feats, n, v = _make_case(scenario)
    k = n if k == "N" else k
    if k > n:
        pytest.skip(f"k={k} > N={n}")
    _run_case(impl, acts, k, feats, n, v)


def test_partial_flush_policy(monkeypatch):
    """Partials never hold more than PARTIAL_FLUSH_ROWS positions; flush makes the master exact."""
    monkeypatch.setattr(triton_dense, "PARTIAL_FLUSH_ROWS", 5)
    acts, feats, n, v = _make_case("contention-bf16")  # 16 rows onto the same cells
    states = _states(["dense"] * len(feats), n, v, acts.device)
    targets = list(zip(feats, states))
    for _ in range(2):
        triton_dense.dense_select_accumulate(acts, 3, targets, mode="partial")
        for s in states:
            part = triton_dense._PARTIALS[s]
            assert 0 < part.rows <= 5 and int(part.count.max()) <= 5
    triton_dense.flush()
    assert all(triton_dense._PARTIALS[s].rows == 0 for s in states)
    ref = _states(["dense"] * len(feats), n, v, acts.device)
    for _ in range(2):
        reference.select_accumulate(acts, 3, list(zip(feats, ref)))
    _check_states(states, ref, MASS_RTOL["partial"][acts.dtype])


def test_wide_rows_fall_back_to_torch_selection(monkeypatch):
    monkeypatch.setattr(triton_dense, "MAX_FUSED_BLOCK_N", 16)
    assert triton_dense._pick_method("auto", 3, 37) == triton_dense._M_PRESELECTED
    acts, feats, n, v = _make_case("random-f32")
    _run_case("dense-auto", acts, 3, feats, n, v)
    for method in ("argmax", "candidates", "threshold"):  # no fused tile that wide
        with pytest.raises(ValueError, match="wider than one fused tile"):
            triton_dense.select_topk(acts, 3, method=method)


def test_repeated_calls_accumulate():
    acts, feats, n, v = _make_case("ties-bf16-rowstride")
    kinds = _mixed_kinds(len(feats))
    states, ref = _states(kinds, n, v, "cpu"), _states(kinds, n, v, "cpu")
    for seed in range(3):
        a, f, _, _ = _make_case("ties-bf16-rowstride", seed=seed)
        triton_sparse.select_accumulate(a, 4, list(zip(f, states)))
        reference.select_accumulate(a.float(), 4, list(zip(f, ref)))
    _check_states(states, ref, 1e-12)


def test_empty_and_no_targets():
    acts = torch.zeros(0, 7)
    values, indices = triton_dense.dense_select_accumulate(acts, 2, [])
    assert values.shape == (0, 2) and indices.shape == (0, 2)
    acts, _, n, _ = _make_case("ties-bf16-rowstride")
    values, indices = triton_dense.select_topk(acts, 5)
    ref_values, ref_indices = reference.select_topk(acts, 5)
    _check_selection(acts, 5, values, indices, ref_values, ref_indices)


def test_table_growth_and_merge():
    gen = torch.Generator().manual_seed(1)
    n, v, e = 29, 11, 700
    table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=16)
    neurons = torch.randint(0, n, (e,), generator=gen)
    features = torch.randint(-1, v, (e,), generator=gen)
    values = torch.randn(e, generator=gen)
    for i in range(0, e, 100):  # several adds, several growths
        table.add(neurons[i:i + 100], features[i:i + 100], values[i:i + 100])
    assert table.capacity > 16 and table.nnz <= triton_sparse.HARD_LOAD * table.capacity
    ref = SparseState(n, v)
    ok = features >= 0
    ref.add_events(neurons[ok], features[ok], values[ok])
    ref._compact()
    got = table.to_coo()
    for a, b in zip(got[:2] + got[3:], ref._master[:2] + ref._master[3:]):
        assert torch.equal(a, b)
    assert torch.allclose(got[2], ref._master[2], rtol=1e-12, atol=0)
    # merging the cells again doubles count and mass, keeps peak
    table.add_cells(*got)
    k2, c2, m2, p2 = table.to_coo()
    assert torch.equal(k2, got[0]) and torch.equal(c2, 2 * got[1]) and torch.equal(p2, got[3])
    assert torch.allclose(m2, 2 * got[2], rtol=1e-12, atol=0)


def test_table_counts_its_cells_every_few_calls_when_they_recur(monkeypatch):
    """A stream whose cells recur (the same 60 events per call) makes its table count its cells,
    a wait for the device, only when the bound on new cells passes ``HARD_LOAD``: once in several
    calls, the true load under ``HARD_LOAD`` throughout and under ``max_load`` after each count
    (with the bound held under ``max_load`` instead, it counted 10 times in these 12 calls)."""
    counts = []
    nnz = triton_sparse.TritonSparseTable.nnz

    def counted(table):
        counts.append(nnz.fget(table))
        return counts[-1]

    monkeypatch.setattr(triton_sparse.TritonSparseTable, "nnz", property(counted))
    gen = torch.Generator().manual_seed(4)
    n, v, e = 13, 11, 60
    neurons, features = torch.randint(0, n, (e,), generator=gen), torch.randint(0, v, (e,),
                                                                                 generator=gen)
    table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=256)
    cells = int(torch.unique(neurons * v + features).numel())
    for _ in range(12):
        table.add(neurons, features, torch.ones(e))
        held = int((table.keys != -1).sum())
        assert held == cells <= triton_sparse.HARD_LOAD * table.capacity
    assert table.capacity == 256  # never grown: the cells fit under max_load
    assert 1 <= len(counts) <= 4 and all(c <= table.max_load * 256 for c in counts)
    assert int(table.count.sum()) == 12 * e


@pytest.mark.parametrize("chunk", [7, 64])
def test_table_chunks_give_the_whole_call(chunk, monkeypatch):
    """Events, selections and cells inserted in several launches (``CHUNK_EVENTS`` small; one
    launch takes the whole call when it fits) hold what one launch of everything holds."""
    gen = torch.Generator().manual_seed(3)
    n, v, p, k = 13, 5, 19, 3
    values, indices = reference.select_topk(torch.randn(p, n, generator=gen), k)
    features = torch.randint(-1, v, (p,), generator=gen)
    neurons = torch.randint(0, n, (p,), generator=gen)

    def fill():
        table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=16)
        table.add_selection(values, indices, features)
        table.add_selection(values[:, :1].expand(p, n), None, features)  # all neurons
        table.add(neurons, features, values[:, 0])
        table.add_cells(*table.to_coo())
        return table.to_coo()

    whole = fill()
    monkeypatch.setattr(triton_sparse, "CHUNK_EVENTS", chunk)
    parts = fill()
    for a, b in zip(whole[:2] + whole[3:], parts[:2] + parts[3:]):
        assert torch.equal(a, b)
    assert torch.allclose(whole[2], parts[2], rtol=1e-12, atol=0)


def test_scatter_drops_out_of_range_ids():
    acts, feats, n, v = _make_case("random-f32")
    values, indices = reference.select_topk(acts, 3)
    bad = indices.clone()
    bad[0, 0], bad[1, 1] = n, -5  # never written: no out-of-bounds atomics
    states = _states(["dense", "sparse"], n, v, "cpu")
    triton_sparse.scatter_events(values, bad, [(feats[0], states[0]), (feats[0], states[1])])
    f = feats[0]
    expected = int(((f >= 0).sum() * 3) - (f[0] >= 0).int() - (f[1] >= 0).int())
    assert int(states[0].count.sum()) == expected
    assert int(states[1].to_stats().count.sum()) == expected


def test_int32_features():
    acts, feats, n, v = _make_case("random-f32")
    states = _states(["dense"], n, v, "cpu")
    triton_dense.dense_select_accumulate(acts, 3, [(feats[0].int(), states[0])])
    ref = _states(["dense"], n, v, "cpu")
    reference.select_accumulate(acts, 3, [(feats[0], ref[0])])
    _check_states(states, ref, 1e-12)


@pytest.mark.parametrize("bad, message", [
    (lambda a, f, s: (a[0], 2, []), "positions, neurons"),
    (lambda a, f, s: (a.double(), 2, []), "float32, float16 or bfloat16"),
    (lambda a, f, s: (a, 0, []), "k must be"),
    (lambda a, f, s: (a, a.shape[1] + 1, []), "k must be"),
    (lambda a, f, s: (a, True, []), "k must be"),
    (lambda a, f, s: (a, 2, [(f[:-1], s)]), "1-D tensor"),
    (lambda a, f, s: (a, 2, [(f.float(), s)]), "int64"),
    (lambda a, f, s: (a, 2, [(f, SparseState(a.shape[1], 5))]), "not a dense state"),
    (lambda a, f, s: (a, 2, [(f, DenseState(a.shape[1] + 1, 5))]), "neurons"),
])
def test_errors(bad, message):
    acts, feats, n, v = _make_case("random-f32")
    state = DenseState(n, v)
    args = bad(acts, feats[0], state)
    with pytest.raises(ValueError, match=message):
        triton_dense.dense_select_accumulate(*args)
    assert int(state.count.sum()) == 0


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    acts, feats, n, v = _make_case("random-f32")
    state = DenseState(n, v)
    with pytest.raises(ValueError, match="CUDA"):
        triton_dense.dense_select_accumulate(acts, 2, [(feats[0], state)])
    values, indices = reference.select_topk(acts, 2)
    with pytest.raises(ValueError, match="CUDA"):
        triton_dense.dense_scatter_events(values, indices, [(feats[0], state)])
    with pytest.raises(ValueError, match="CUDA"):
        triton_sparse.TritonSparseTable(n, v, device="cpu").add(indices[:, 0], feats[0], values[:, 0])


def test_bad_method_and_mode():
    acts, feats, n, v = _make_case("random-f32")
    with pytest.raises(ValueError, match="method"):
        triton_dense.dense_select_accumulate(acts, 2, [], method="bitonic")
    with pytest.raises(ValueError, match="mode"):
        triton_dense.dense_select_accumulate(acts, 2, [], mode="fp16")
    with pytest.raises(ValueError, match="k == N"):
        triton_dense.dense_select_accumulate(acts, 2, [], method="all")
    with pytest.raises(ValueError, match="'argmax' or 'threshold'"):  # 8 chunks of 37 neurons
        triton_dense.dense_select_accumulate(acts, 8, [], method="candidates")


def test_candidates_tie_break_across_chunks():
    """Equal maxima in several chunks: the top k keep the lowest indices, as the reference does
    (the winning chunks are ranked by maximum, then by position)."""
    x = torch.zeros(4, 256)
    x[0, [5, 40, 41, 200, 255]] = 2.0  # five equal maxima in four chunks, k = 3
    x[1, ::7] = 1.0  # many equal values, in every chunk
    x[2] = -1.0  # an all-equal row
    x[3, 250:] = 3.0  # the winners at the end of the row
    for k in (1, 3, 8):
        values, indices = triton_dense.select_topk(x, k, method="candidates")
        ref_v, ref_i = reference.select_topk(x, k)
        assert torch.equal(torch.sort(indices, 1).values, torch.sort(ref_i, 1).values)
        assert torch.equal(torch.sort(values, 1).values, torch.sort(ref_v, 1).values)


# ------------------------------------------------------------------------------------------------
# CUDA: bigger shapes (TRITON_INTERPRET=0 pytest -m gpu tests/test_kernels_triton.py)
# ------------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                         reason="needs CUDA and TRITON_INTERPRET=0")


def _gpu_case(data, dtype, p, n, v, n_streams, layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _values(data, p, n, gen)
    acts = _layout(x, layout, dtype).cuda()
    feats = [f.cuda() for f in _features(p, v, n_streams, gen, data)]
    return acts, feats


#: (data, dtype, layout, N, V, k): one case per selection strategy and dtype
GPU_CASES = [
    ("random", torch.float32, "contiguous", 1000, 17, 1),
    ("ties", torch.bfloat16, "row_strided", 4099, 257, 8),
    ("contention", torch.float16, "contiguous", 777, 5, 32),
    ("negative", torch.bfloat16, "col_strided", 2048, 20_000, 200),
    ("ties", torch.float32, "contiguous", 1536, 33, "N"),
    ("all_equal", torch.bfloat16, "contiguous", 16384, 7, 16),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}-{c[3]}x{c[4]}-k{c[5]}")
def test_gpu_matches_reference(impl, case):
    data, dtype, layout, n, v, k = case
    acts, feats = _gpu_case(data, dtype, 300, n, v, 5, layout)
    k = n if k == "N" else k
    _run_case(impl, acts, k, feats, n, v)


@pytest.mark.gpu
@gpu
def test_gpu_wide_rows_and_partial_chunks():
    acts, feats = _gpu_case("ties", torch.bfloat16, 5000, 20_000, 3, 2)  # N > MAX_FUSED_BLOCK_N
    _run_case("dense-auto", acts, 8, feats, 20_000, 3)
    acts, feats = _gpu_case("random", torch.float32, 9000, 512, 17, 3)  # > PARTIAL_FLUSH_ROWS rows
    _run_case("dense-partial", acts, 16, feats, 512, 17)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_gpu_engine_entry_point_matches_cpu(kind):
    """``Accumulator(device="cuda").observe`` (the collector's path: ``kernels.select`` and
    ``kernels.accumulate`` on CUDA tensors) gives the CPU engine's sums. ``device="cuda"`` names no
    index: the states must still accept the ``cuda:0`` tensors they are fed."""
    acc_mod = importlib.import_module("txray_engine.accumulate")
    streams = {"a": [str(i) for i in range(17)], "b": [str(i) for i in range(300)]}
    gen = torch.Generator().manual_seed(5)
    acts = torch.randn(2, 150, 1000, generator=gen).to(torch.bfloat16)
    feats = {"a": torch.randint(-1, 17, (2, 150), generator=gen),
             "b": torch.randint(0, 300, (2, 150), generator=gen)}
    mask = torch.rand(2, 150, generator=gen) > 0.2
    gpu_acc = acc_mod.Accumulator(streams, k=8, kind=kind, device="cuda")
    cpu_acc = acc_mod.Accumulator(streams, k=8, kind=kind)
    for half in (slice(0, 70), slice(70, 150)):  # two calls: the states grow across calls
        gpu_acc.observe("l", acts[:, half].cuda(), {s: f[:, half].cuda() for s, f in feats.items()},
                        mask=mask[:, half].cuda())
        cpu_acc.observe("l", acts[:, half], {s: f[:, half] for s, f in feats.items()},
                        mask=mask[:, half])
    assert acc_mod.same_sums(gpu_acc, cpu_acc)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 3, 8, 16, 32])
@pytest.mark.parametrize("method, n", [("candidates", 100), ("candidates", 256),
                                       ("candidates", 1000), ("argmax", 100), ("argmax", 256),
                                       ("argmax", 1000), ("threshold", 100), ("threshold", 256)])
def test_keys16_select_the_reference(method, n, k, dtype, monkeypatch):
    """The 16-bit keys of 2-byte rows (``KEYS_16BIT``: int32 (value, index) keys in the argmax
    rounds, a 16-step threshold search) keep the reference's top k and its values, on rows wide
    enough for k = 8 and 16 candidates: ties (the lower index wins), ``-0.0`` against ``+0.0``,
    all-equal and all-negative rows, values one 2-byte step apart, infinities; and the
    selection of the 32-bit keys, scatter included. (The threshold search walks rows of 256 in
    chunks under the interpreter already: 1,000 would only add time.)"""
    if method == "argmax" and k > triton_dense.ARGMAX_MAX_K:
        pytest.skip(f"k={k} is past the argmax rounds")
    if method == "candidates" and \
            triton_dense._candidate_chunk(triton_dense._next_pow2(n), k) is None:
        pytest.skip(f"rows of {n} neurons are too narrow for k={k} candidate chunks")
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(19, n, generator=gen) * 4
    x[0] = 0.0
    x[1, ::3] = -0.0
    x[2] = x[2, 0]
    x[3] = -x[3].abs() - 1
    x[4] = torch.randint(-3, 4, (n,), generator=gen).float()  # many ties
    x[5, 7], x[5, 9], x[6, 1] = float("inf"), -float("inf"), -float("inf")
    acts = x.to(dtype)
    one = torch.finfo(dtype).eps  # one step apart near 1
    acts[7] = 1.0
    acts[7, n // 2] = 1.0 + one
    acts[7, n // 3] = 1.0 + 2 * one
    want_v, want_i = reference.select_topk(acts.float(), k)
    feats = _features(acts.shape[0], 7, 2, gen, "random")
    got, int64 = ({"keys16": flag} for flag in (True, False))
    for out, flag in ((got, True), (int64, False)):
        monkeypatch.setattr(triton_dense, "KEYS_16BIT", flag)
        out["states"] = _states(["dense"] * 2, n, 7, "cpu")
        out["v"], out["i"] = triton_dense.dense_select_accumulate(
            acts, k, list(zip(feats, out["states"])), method=method)
    _check_selection(acts, k, got["v"], got["i"], want_v, want_i)
    assert torch.equal(got["i"], int64["i"]) and torch.equal(got["v"], int64["v"])
    _check_states(got["states"], int64["states"], 1e-12)


@pytest.mark.parametrize("rounds", ["int64", "fp32"])
def test_argmax_rounds_never_take_a_neuron_twice(rounds, monkeypatch):
    """A row holding -inf (outside the engine's finite rows, but a caller's tensor may) still
    yields k distinct neurons, the reference's."""
    monkeypatch.setattr(triton_dense, "ARGMAX_ROUNDS", rounds)
    inf = float("inf")
    x = torch.tensor([[5.0, -inf, -inf, 1.0], [-inf, -inf, -inf, -inf], [1.0, -0.0, 0.0, -inf]])
    values, indices = triton_dense.select_topk(x, 3, method="argmax")
    ref_v, ref_i = reference.select_topk(x, 3)
    assert torch.equal(torch.sort(indices, 1).values, torch.sort(ref_i, 1).values)
    assert torch.equal(torch.sort(values, 1).values, torch.sort(ref_v, 1).values)


def test_launch_shapes_and_candidate_widths():
    """The GPU launch rules (as on a device, not the interpreter's small programs): 2-byte and
    4-byte candidates take one warp per row up to N = 4096 (128 elements per thread), several rows
    per warp below, and 4 warps for a row of 16384; the threshold search keeps 4 warps at least;
    candidate chunks are 32 wide for k = 1 and 16 for larger k, at least 4 k of them."""
    def config(*args):  # (rows per group, groups, scatter chunk, warps)
        return triton_dense._launch_config(*args, interpret=False)

    assert config(16384, 4096, "candidates", 2) == (1, 4, 2048, 1)
    assert config(65536, 1024, "candidates", 2) == (2, 4, 1024, 1)
    assert config(16384, 4096, "candidates", 4) == (1, 4, 2048, 1)
    assert config(4096, 16384, "candidates", 2) == (1, 4, 2048, 4)
    assert config(3, 4096, "candidates", 2) == (1, 3, 2048, 1)  # no more groups than rows
    assert config(16384, 1024, "threshold", 2)[3] == 4
    chunk = triton_dense._candidate_chunk
    assert (chunk(4096, 1), chunk(4096, 8), chunk(1024, 32), chunk(64, 8)) == (32, 16, 8, None)
    assert chunk(16384, 33) is None  # above CANDIDATES_MAX_K


def test_launch_shapes_are_checked():
    """Every default launch shape passes the check; shapes a GPU launch would fail on do not."""
    for shape in triton_dense.LAUNCH_SHAPES.values():
        assert triton_dense.check_launch_shape(shape) == shape
    assert triton_dense.check_launch_shape(["2048", "128", "3", "1"]) == (2048, 128, 3, 1)
    for bad in [(2048, 128, 4), (2048, 0, 4, 1), (2048, 128, 4, 3), (12288, 128, 4, 1),
                (2048, 40, 4, 1), (2048, 128, 4, 64), ("a", 1, 1, 1), None]:
        with pytest.raises(ValueError, match="powers of two"):
            triton_dense.check_launch_shape(bad)


def test_candidate_widths_are_checked():
    assert triton_dense.check_candidate_width(triton_dense.CANDIDATE_WIDTH) == \
        triton_dense.CANDIDATE_WIDTH
    assert triton_dense.check_candidate_width(["32", "8"]) == (32, 8)
    for bad in [(32,), (32, 6), (32, 2), (32, 8, 8), ("a", 8), None]:
        with pytest.raises(ValueError, match="powers of two"):
            triton_dense.check_candidate_width(bad)


@pytest.mark.parametrize("keys16", [True, False])
def test_auto_method(keys16, monkeypatch):
    """What ``method="auto"`` picks (the H200's fastest, BENCHMARKS.md): the candidates for
    k <= 16, and for k = 32 on 2-byte rows of 1,024+ with 16-bit keys (else where the row tile
    is 256 k); the threshold search beyond; 16-bit keys for k > 1 on 2-byte rows only."""
    monkeypatch.setattr(triton_dense, "KEYS_16BIT", keys16)
    auto, cand, thr = triton_dense._auto_method, triton_dense._M_CANDIDATES, \
        triton_dense._M_THRESHOLD
    assert auto(8, 1024, 2) == auto(16, 4096, 2) == auto(8, 4096, 4) == cand
    assert auto(32, 1024, 2) == auto(32, 4096, 2) == (cand if keys16 else thr)
    assert auto(32, 300, 2) == auto(32, 4096, 4) == thr
    assert auto(32, 16384, 4) == cand
    key16 = triton_dense._key16
    assert key16(cand, 8, torch.bfloat16, 4096) == (1 if keys16 else 0)
    assert key16(cand, 8, torch.float16, 4096) == (2 if keys16 else 0)
    assert key16(cand, 1, torch.bfloat16, 4096) == key16(cand, 8, torch.float32, 4096) == 0
