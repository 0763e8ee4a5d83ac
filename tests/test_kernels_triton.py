"""The kernels against the torch reference (kernels.reference), one shared suite: the Triton
kernels, and the engine's dispatch (``txray_kernels.select`` + ``txray_kernels.scatter``: numba on CPU tensors).

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

import txray_kernels as kernels
from txray_kernels import reference, triton_dense, triton_sparse


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
    """What the engine calls: ``txray_kernels.select`` + ``txray_kernels.scatter`` (numba on CPU tensors,
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
    # wide enough for candidate chunks at k = 3 and 8 (narrower rows skip that method)
    "ties-f32-wide": ("ties", torch.float32, "contiguous", 2, 6, 130, 11),
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
    """``Accumulator(device="cuda").observe`` (the collector's path: ``txray_kernels.select`` and
    ``txray_kernels.accumulate`` on CUDA tensors) gives the CPU engine's sums. ``device="cuda"`` names no
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
