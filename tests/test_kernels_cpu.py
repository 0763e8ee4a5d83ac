"""The numba CPU select path against the torch reference (the definition of the semantics)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import txray_kernels as kernels
from txray_kernels import cpu, cpu_scatter, reference

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="numba not installed")


def _same_selection(acts, k):
    v, i, bad = cpu.select_topk(acts, k)
    vr, ir = reference.select_topk(acts.float(), k)
    assert bad.numel() == 0
    assert torch.equal(torch.sort(i, 1).values, torch.sort(ir, 1).values)
    assert torch.equal(torch.sort(v, 1).values, torch.sort(vr, 1).values)


@pytest.mark.parametrize("n,k", [(n, k) for n in (1, 2, 7, 31, 64, 100, 1025) for k in (1, 3, 8)
                                 if k <= n])
def test_matches_reference_shapes(n, k):
    g = torch.Generator().manual_seed(n * 10 + k)
    acts = torch.randn(97, n, generator=g)
    acts[::4] = acts[::4].round()  # ties
    acts[1::5] = -acts[1::5].abs() - 1  # all-negative rows
    acts[2::9] = 0.5  # all-equal rows
    _same_selection(acts, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_and_strided_rows(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 30, generator=g)
    _same_selection(base.to(dtype), 3)
    _same_selection(base[:, ::2], 2)  # strided rows


def test_signed_zeros_rank_equal():
    acts = torch.tensor([[-1.0, -0.0, 0.0, -2.0], [-1.0, 0.0, -0.0, -3.0]])
    for k in (1, 2):
        _same_selection(acts, k)
    _, i, _ = cpu.select_topk(acts, 1)
    assert i[:, 0].tolist() == [1, 1]


def test_nonfinite_rows_are_flagged():
    acts = torch.randn(6, 9)
    acts[1, 3] = float("nan")
    acts[3, 8] = float("inf")
    acts[4, 0] = -float("inf")
    acts[5, 2] = -float("nan")
    for k in (1, 4):
        _, _, bad = cpu.select_topk(acts, k)
        assert bad.tolist() == [1, 3, 4, 5]
    _, _, rows = kernels.select(acts, 2)
    assert rows.tolist() == [1, 3, 4, 5]
    assert reference.nonfinite_rows(acts).tolist() == [1, 3, 4, 5]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_property_matches_reference(n, data):
    k = data.draw(st.integers(1, n))
    p = data.draw(st.integers(0, 12))
    vals = data.draw(st.lists(st.sampled_from([-3.0, -1.0, -0.0, 0.0, 0.25, 1.0, 2.0, 1e30]),
                              min_size=p * n, max_size=p * n))
    acts = torch.tensor(vals, dtype=torch.float32).reshape(p, n)
    _same_selection(acts, k)


def test_dispatch_uses_reference_for_all_neurons():
    acts = torch.randn(5, 4)
    v, i, bad = kernels.select(acts, 4)
    assert torch.equal(i, torch.arange(4).expand(5, 4)) and bad.numel() == 0
    with pytest.raises(ValueError):
        kernels.select(acts, 5)


def test_large_rows_agree_with_numpy_argmax():
    a = np.random.default_rng(0).standard_normal((300, 4096)).astype(np.float32)
    _, i, _ = cpu.select_topk(torch.from_numpy(a), 1)
    assert np.array_equal(i[:, 0].numpy(), a.argmax(1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(60, 300), data=st.data())
def test_property_rows_across_chunks(n, data):
    """Rows spanning several 64-column chunks: ties across chunk borders, the maximum in the last
    (partial) chunk, rows that are all ≤ 0, and k at and around the number of chunks."""
    k = data.draw(st.sampled_from([1, 2, 3, 4, 5, 8, n]))
    p = data.draw(st.integers(1, 4))
    pool = data.draw(st.sampled_from([[-2.0, -0.0, 0.0, 1.0, 3.0], [-3.0, -1.0, -0.0, 0.0],
                                      [-5.0, -4.0, -1.0], [0.5, 2.0, 7.0]]))
    vals = data.draw(st.lists(st.sampled_from(pool), min_size=p * n, max_size=p * n))
    acts = torch.tensor(vals, dtype=torch.float32).reshape(p, n)
    _same_selection(acts, k)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("col", [0, 63, 64, 130, 199])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -float("nan")])
def test_nonfinite_anywhere_in_long_rows(k, col, bad):
    acts = torch.randn(3, 200)
    acts[1] = -acts[1].abs()  # an all-negative row takes the exact-key path
    acts[:, col] = bad
    _, _, flagged = cpu.select_topk(acts, k)
    assert flagged.tolist() == [0, 1, 2]


@pytest.mark.parametrize("k", [2, 8, 40])
def test_wide_rows_with_many_chunks(k):
    """More than 64 chunks: the k-th chunk maximum comes from the insertion buffer."""
    g = torch.Generator().manual_seed(k)
    acts = torch.randn(12, 5000, generator=g)
    acts[::3] = acts[::3].round()  # ties
    acts[1::4] = -acts[1::4].abs()  # all-negative rows
    _same_selection(acts, k)


def test_cpu_table_grows_and_reads_sorted_exact_sums():
    from txray_kernels.cpu_table import CpuSparseTable

    rng = np.random.default_rng(0)
    table = CpuSparseTable(capacity=16)
    keys = rng.integers(0, 5000, 4000)
    values = rng.standard_normal(4000).astype(np.float32)
    for i in range(0, 4000, 300):  # several adds, several growths
        table.add_events(keys[i:i + 300], values[i:i + 300])
        assert table.nnz <= table.max_load * table.capacity
    assert table.capacity > 16
    k, c, m, p = table.sorted_cells()
    uniq = np.unique(keys)
    assert np.array_equal(k, uniq) and table.nnz == len(uniq)
    for j in (0, len(uniq) // 2, len(uniq) - 1):
        sel = keys == k[j]
        assert c[j] == sel.sum() and p[j] == values[sel].max()
        assert np.isclose(m[j], np.maximum(values[sel], 0).astype(np.float64).sum(), rtol=1e-12)
    # a read leaves the table whole; adding its cells again doubles counts and masses
    table.add_cells(k, c, m, p)
    k2, c2, m2, p2 = table.sorted_cells()
    assert np.array_equal(k2, k) and np.array_equal(c2, 2 * c) and np.array_equal(p2, p)
    assert np.allclose(m2, 2 * m, rtol=1e-12)


def test_dense_accumulate_rejects_bad_ids_and_changes_nothing():
    from txray_engine.accumulate import make_state

    state = make_state(4, 3, "dense")
    count, neuron_count = state.count.clone(), torch.zeros(4, dtype=torch.int64)
    values = torch.ones(2, 1)
    for idx, feats in [([[1], [4]], [0, 1]), ([[1], [-1]], [0, 1]), ([[1], [2]], [0, 3]),
                       ([[1], [2]], [-2, 0])]:
        with pytest.raises(ValueError):
            cpu_scatter.accumulate_dense(values, torch.tensor(idx), [(torch.tensor(feats), state)],
                                 totals=(neuron_count, torch.zeros(4, dtype=torch.float64)))
        assert torch.equal(state.count, count) and not neuron_count.any()
        assert not state.feature_freq.any() and state.missing == 0


def test_select_checks_k():
    acts = torch.randn(4, 10)
    for k in (0, 11):
        with pytest.raises(ValueError):
            cpu.select_topk(acts, k)


def test_float64_rows_beyond_float32_are_nonfinite_on_every_path():
    acts = torch.randn(3, 50, dtype=torch.float64)
    acts[1, 7] = 1e39  # finite in float64, inf as float32 (the engine's value type)
    for k in (2, cpu.MAX_K + 8):  # the numba path, and the torch reference above MAX_K
        assert kernels.select(acts, k)[2].tolist() == [1]


@pytest.mark.parametrize("top", [0, 1, 2047, 2048, 2**33 + 5, 2**62 + 11])
def test_table_reads_sort_keys_of_any_size(top):
    """The radix sort of a read, across digit boundaries and up to 63-bit keys; an empty table
    reads as empty."""
    from txray_kernels.cpu_table import CpuSparseTable

    table = CpuSparseTable()
    assert all(a.size == 0 for a in table.sorted_cells())
    rng = np.random.default_rng(top % 97)
    keys = np.unique(np.concatenate([[0, top], rng.integers(0, top + 1, 3000)])).astype(np.int64)
    shuffled = rng.permutation(keys)
    table.add_cells(shuffled, np.arange(1, keys.size + 1), shuffled * 0.5,
                    (shuffled % 13).astype(np.float32))
    k, c, m, p = table.sorted_cells()
    order = np.argsort(shuffled)
    assert np.array_equal(k, keys) and np.array_equal(c, np.arange(1, keys.size + 1)[order])
    assert np.array_equal(m, keys * 0.5) and np.array_equal(p, (keys % 13).astype(np.float32))


def test_table_capacity_follows_cells_not_call_size():
    from txray_kernels.cpu_table import CHUNK_EVENTS, CpuSparseTable

    table = CpuSparseTable()
    p, k = 3 * CHUNK_EVENTS, 4
    freq = np.zeros(5, np.int64)
    missing = table.add_selection(np.zeros((p, k), np.int64), np.ones((p, k), np.float32),
                                  np.zeros(p, np.int64), 3, 5, freq)
    assert missing == 0 and table.nnz == 1 and freq[0] == p
    assert table.capacity <= 4 * (1 + CHUNK_EVENTS)
    keys, count, mass, peak = table.sorted_cells()
    assert keys.tolist() == [0] and count.tolist() == [p * k] and mass.tolist() == [p * k]
    with pytest.raises(ValueError):  # features shorter than the selection
        table.add_selection(np.zeros((4, 1), np.int64), np.ones((4, 1), np.float32),
                            np.zeros(2, np.int64), 3, 5, freq)
    with pytest.raises(ValueError):
        table.add_cells(np.array([-1]), np.array([1]), np.array([1.0]), np.array([1.0]))
    assert table.nnz == 1 and freq[0] == p  # bad input changed nothing


def test_id_bounds_cpu_matches_the_batched_read_back():
    from txray_kernels import targets
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(-1, 50, (37,), generator=g), torch.randint(0, 9, (5, 4), generator=g).int(),
           torch.randint(-5, 5, (20,), generator=g)[::3]]  # int32, 2-D, strided
    assert kernels.id_bounds(ids) == targets.id_bounds(ids) == \
        [(int(t.min()), int(t.max())) for t in ids]
    with pytest.raises(ValueError):
        cpu_scatter.id_bounds([torch.zeros(0, dtype=torch.long)])


def test_prefetch_hint_compiles_here():
    """The scatter loops' cache hint is live on this numba/LLVM (else it falls back to a no-op:
    same results, slower cold scatters)."""
    from numba import njit

    from txray_kernels import prefetch

    if not prefetch.ACTIVE:
        pytest.skip("llvm.prefetch does not compile on this numba/LLVM: the hint is a no-op")

    @njit
    def hinted_sum(a):
        total = 0.0
        for i in range(a.shape[0]):
            prefetch.prefetch(a, np.int32(min(i + 4, a.shape[0] - 1)))  # any integer index
            total += a[i]
        return total

    a = np.arange(200, dtype=np.float64)
    assert hinted_sum(a) == a.sum()
    assert hinted_sum(a[::3]) == a[::3].sum()  # strided


@pytest.mark.parametrize("dtype,kind", [(torch.bfloat16, 0), (torch.float16, 1)])
def test_half_widening_is_exact_for_every_bit_pattern(dtype, kind):
    from txray_kernels import cpu_half
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = cpu_half.widen(bits, kind)
    ref = torch.from_numpy(bits.view(np.int16)).view(dtype).float().numpy()
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])  # ±0, subnormals


def test_fp16_integer_widening_is_exact_too():
    """The integer fp16 path (taken where LLVM's ``fpext`` does not compile or check out) is
    exact on every pattern as well; the import-time check compares the two."""
    from txray_kernels import cpu_half
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(1 << 16, np.uint32)
    cpu_half._fp16_bits(bits, got)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got.view(np.float32)), nan)
    assert np.array_equal(got[~nan], ref.view(np.uint32)[~nan])
    assert cpu_half.FPEXT == cpu_half._probe_fpext()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (64, 1), (100, 8), (1025, 1), (1025, 3)])
def test_half_rows_are_read_as_they_are(dtype, n, k):
    """bf16/fp16 rows take the 16-bit path (no float32 copy of the block) and match the reference:
    ties (many at 16 bits), all-negative and all-equal rows, signed zeros, fp16 subnormals,
    strided rows, non-finite rows flagged."""
    g = torch.Generator().manual_seed(n + k)
    acts = torch.randn(61, n, generator=g)
    acts[::4] = acts[::4].round()
    acts[1::5] = -acts[1::5].abs() - 1
    acts[2::9] = 0.5
    acts[3::11] = torch.randn(acts[3::11].shape, generator=g) * 1e-6  # fp16 subnormals
    acts[4, :] = -0.0
    acts[4, n // 2] = 0.0
    acts = acts.to(dtype)
    _same_selection(acts, k)
    if n > 2:
        _same_selection(acts[:, ::2], min(k, (n + 1) // 2))
    bad = acts.clone()
    bad[5, n - 1] = float("nan")
    bad[6, 0] = -float("inf")
    assert cpu.select_topk(bad, k)[2].tolist() == [5, 6]


def test_every_cached_kernel_module_is_watched():
    """A module whose numba kernels are cached must be among the sources whose edits drop the
    cache (its kernels may compile in another one's functions)."""
    from pathlib import Path

    from txray_kernels import cpu_cache
    folder = Path(cpu_cache.__file__).parent
    cached = {p.stem for p in folder.glob("*.py") if "cache=True" in p.read_text()}
    assert cached and cached <= set(cpu_cache.SOURCES)


def test_cached_kernels_are_dropped_when_a_source_they_use_is_newer(tmp_path):
    """numba checks only the defining file; an edit to cpu.py must also recompile cpu_half's
    kernels (which compile in its row functions)."""
    import os

    from txray_kernels import cpu_cache
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    for name in cpu_cache.SOURCES:
        (tmp_path / f"{name}.py").write_text("")
        os.utime(tmp_path / f"{name}.py", (1000, 1000))
    kept = [cache / "cpu_half._select16-60.py311.nbi", cache / "cpu_half._select16-60.py311.1.nbc",
            cache / "cpu._top1-180.py311.nbi"]
    other = cache / "unrelated.f-1.py311.nbi"
    for p in (*kept, other):
        p.write_text("")
        os.utime(p, (2000, 2000))
    assert not cpu_cache.drop_stale(tmp_path)  # sources older than every index: kept
    assert all(p.exists() for p in kept)
    os.utime(tmp_path / "cpu.py", (3000, 3000))  # cpu.py edited after the caches were written
    assert cpu_cache.drop_stale(tmp_path)
    assert not any(p.exists() for p in kept) and other.exists()
    assert not cpu_cache.drop_stale(tmp_path)  # nothing left to drop


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("path", ["numba", "torch", "every-row"])
def test_select_rows_reads_the_kept_rows_in_place(dtype, k, path, monkeypatch):
    """``rows`` selects a subset of rows in the asked order (repeats allowed), with the non-finite
    positions indexing the output, exactly as selecting from ``acts[rows]`` would, on the numba
    path (rows read in place), the torch path (kept rows copied) and the GPU's (every row
    selected, the asked ones kept)."""
    if path != "numba":
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    if path == "every-row":
        monkeypatch.setattr(kernels, "_select_every_row", lambda acts: True)
    g = torch.Generator().manual_seed(k)
    acts = torch.randn(50, 70, generator=g)
    acts[::7] = acts[::7].round()  # ties
    acts[3, 5] = float("nan")
    acts[11, 0] = -float("inf")
    acts = acts.to(dtype)
    rows = torch.tensor([11, 0, 2, 3, 49, 2, 17, 30, 31])
    sel = kernels.select_rows(acts, k, rows)
    v, i, bad = kernels.select(acts, k, rows)
    vr, ir, badr = kernels.select(acts[rows].contiguous(), k)
    assert bad.tolist() == badr.tolist() == [0, 3] and sel.nonfinite().tolist() == [0, 3]
    assert int(sel.suspects) >= 2
    good = [r for r in range(len(rows)) if r not in (0, 3)]
    assert torch.equal(torch.sort(i[good], 1).values, torch.sort(ir[good], 1).values)
    assert torch.equal(torch.sort(v[good], 1).values, torch.sort(vr[good], 1).values)
    empty = kernels.select_rows(acts, k, torch.zeros(0, dtype=torch.long))
    assert empty.values.shape == (0, k) and int(empty.suspects) == 0


def test_select_rows_refuses_rows_outside_the_block():
    acts = torch.randn(4, 8)
    for rows in ([0, 4], [-1, 2]):
        with pytest.raises(ValueError, match="rows must index the 4 rows"):
            kernels.select(acts, 1, torch.tensor(rows))


def test_select_rows_refuses_rows_of_another_kind():
    acts = torch.randn(4, 8)
    for rows in (torch.tensor([True, False, True, True]), torch.tensor([[0, 1]]),
                 torch.tensor([0.0, 1.0])):
        with pytest.raises(ValueError, match="rows must be a 1-D int64 tensor"):
            kernels.select_rows(acts, 1, rows)


@pytest.mark.parametrize("k", [2, 5, 8, 16, 32])
@pytest.mark.parametrize("cols", [(0, 63), (31, 32), (63, 64, 127), (0, 1, 2, 62, 63, 191, 255)])
def test_gathered_values_at_every_bit_of_a_chunk(k, cols):
    """k > 1 gathers a chunk's values at or above the bound as a 64-bit mask: winners and ties at
    its first, middle and last bits (and in the partial last chunk) keep the reference's
    selection and tie-break."""
    g = torch.Generator().manual_seed(k)
    acts = torch.rand(6, 300, generator=g)  # 4 full chunks and a partial one of 44
    for c in cols:
        acts[:, c] = 5.0  # ties above everything else
    acts[1, 299] = 5.0
    acts[2] = torch.where(acts[2] > 0.5, 1.0, 0.5)  # every value ties with many others
    acts[3, ::64] = 7.0
    _same_selection(acts, k)
    _same_selection(acts.bfloat16(), k)


def test_dense_state_views_follow_replaced_tensors():
    """The numba path keeps numpy views of a dense state's tensors between calls; a state whose
    tensors are replaced (e.g. reset by a caller) is written through its new tensors."""
    from txray_engine.accumulate import DenseState

    state = DenseState(3, 2)
    values, indices = torch.ones(2, 1), torch.tensor([[0], [2]])
    feats = torch.tensor([1, -1])
    cpu_scatter.accumulate_dense(values, indices, [(feats, state)])
    first = state.count
    state.count = torch.zeros_like(first)
    state.feature_freq = torch.zeros(2, dtype=torch.int64)
    cpu_scatter.accumulate_dense(values, indices, [(feats, state)])
    assert first.tolist() == [0, 1, 0, 0, 0, 0] and state.count.tolist() == first.tolist()
    assert state.feature_freq.tolist() == [0, 1]


@pytest.mark.slow
def test_fp16_where_fpext_is_no_instruction(tmp_path):
    """Numba compiling for a generic CPU (as for caches shared by machines) has no F16C:
    ``fpext half`` would become a runtime call numba cannot link, so the integer path is taken,
    decided before anything runs, and selections stay exact."""
    import os
    import subprocess
    import sys

    code = ("import torch, txray_kernels as kernels; from txray_kernels import cpu_half, reference\n"
            "a = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)).half()\n"
            "a[3, 7] = float('nan'); a[5] = a[5].abs().neg()\n"
            "v, i, bad = kernels.select(a, 3)\n"
            "vr, ir = reference.select_topk(a.float(), 3)\n"
            "good = [r for r in range(64) if r != 3]\n"
            "assert bad.tolist() == [3]\n"
            "assert torch.equal(i[good].sort(1).values, ir[good].sort(1).values)\n"
            "print('FPEXT', cpu_half.FPEXT)\n")
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(sys.path))  # the package's folder, installed or not
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FPEXT False" in run.stdout


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_states_keep_counting(kind, how):
    """A copied or pickled state is a state of its own: its frequencies stay the view of its
    count bins, and the numba path writes its tensors, not the original's."""
    import copy
    import pickle

    from txray_engine.accumulate import make_state

    state = make_state(3, 4, kind)
    values, indices = torch.ones(3, 1), torch.tensor([[0], [2], [1]])
    feats = torch.tensor([1, -1, 3])
    kernels.accumulate(values, indices, [(feats, state)], (torch.zeros(3, dtype=torch.long),
                                                           torch.zeros(3, dtype=torch.float64)))
    twin = copy.deepcopy(state) if how == "deepcopy" else pickle.loads(pickle.dumps(state))
    for s in (state, twin):
        kernels.accumulate(values, indices, [(feats, s)], (torch.zeros(3, dtype=torch.long),
                                                           torch.zeros(3, dtype=torch.float64)))
        s.add_positions(torch.tensor([0, -1]))
    a, b = state.to_stats(), twin.to_stats()
    assert a.equals(b) and twin.missing == state.missing == 3
    assert twin.feature_freq.tolist() == [1, 2, 0, 2]


@pytest.mark.parametrize("n", [100, 256, 500, 768, 1024])
@pytest.mark.parametrize("k", [12, 16, 24, 32])
def test_narrow_chunks_for_large_k(n, k):
    """Where 64-wide chunks are fewer than 1.5 k, k > 1 bounds the k-th value over 32- or
    16-wide chunks (and their partial last chunk): the reference's selection, ties included."""
    g = torch.Generator().manual_seed(n + k)
    acts = torch.randn(40, n, generator=g)
    acts[::3] = acts[::3].round()  # ties
    acts[1::5] = -acts[1::5].abs() - 1  # all-negative rows
    acts[2::7, ::17] = 9.0  # many equal winners, spread over the chunks
    _same_selection(acts, k)
    _same_selection(acts.bfloat16(), k)
