"""The top examples' scan (``kernels.above_floor``): the numba CPU pass against the torch
reference, over shapes, dtypes, kept rows, ties at the floor and the cap."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import cpu, reference

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="numba not installed")


def _same(acts, floor, cap, rows=None):
    from kernels import cpu_examples
    got = cpu_examples.above_floor(acts, floor, cap, rows)
    want = reference.above_floor(acts, floor, cap, rows)
    if want is None:
        assert got is None
        return
    assert got is not None and len(got) == 3
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    return got


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 130, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_above_floor_matches_reference(n, dtype):
    g = torch.Generator().manual_seed(n)
    acts = (torch.randn(37, n, generator=g) * 2).to(dtype)
    floor = (torch.randn(n, generator=g) + 1.5).to(dtype).float()  # some cells tie the floor
    acts[3] = floor.to(dtype)  # a row equal to the floor: never above
    acts[5] = -0.0
    floor[: n // 2] = torch.where(floor[: n // 2] > 2, 0.0, floor[: n // 2])  # -0.0 vs +0.0
    floor[-1] = -torch.inf
    acts[7, 0] = float("nan")  # never above
    found = _same(acts, floor, 37 * n)
    assert found[0].numel() > 0
    keep = torch.tensor([36, 0, 5, 5, 20, 3])  # any order, repeats
    _same(acts, floor, 37 * n, keep)
    _same(acts[:, ::2] if n > 1 else acts, floor[::2] if n > 1 else floor, 37 * n)  # strided


def test_above_floor_cap_and_empty_rows():
    acts = torch.arange(24.0).reshape(4, 6) - 1
    floor = torch.full((6,), 10.0)
    assert _same(acts, floor, 12)[0].numel() == 12  # exactly the cap: returned
    assert _same(acts, floor, 11) is None  # one more than the cap
    assert _same(acts, floor, 0, torch.tensor([0, 1, 0]))[0].numel() == 0  # -1..10: none above
    assert _same(acts, floor, 5, torch.zeros(0, dtype=torch.long))[0].numel() == 0
    assert _same(torch.zeros(0, 6), floor, 5)[0].numel() == 0


def test_above_floor_rejects_bad_arguments():
    from kernels import cpu_examples
    acts = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="floor must have shape"):
        cpu_examples.above_floor(acts, torch.zeros(5), 10)
    with pytest.raises(ValueError, match="rows must index the 4 rows"):
        cpu_examples.above_floor(acts, torch.zeros(6), 10, torch.tensor([4]))


def test_dispatch_takes_the_numba_pass_on_cpu(monkeypatch):
    from kernels import cpu_examples
    calls = []
    monkeypatch.setattr(cpu_examples, "above_floor", lambda *a: calls.append(a) or "numba")
    assert kernels.above_floor(torch.zeros(2, 3), torch.zeros(3), 4) == "numba" and calls


@settings(max_examples=60, deadline=None)
@given(p=st.integers(0, 40), n=st.integers(1, 150), parts=st.integers(1, 8),
       cap=st.integers(0, 200), seed=st.integers(0, 2**16))
def test_above_floor_random(p, n, parts, cap, seed):
    """Random blocks with ties at the floor, split into any number of per-thread parts."""
    from kernels import cpu_examples
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(p, n, generator=g).round()
    floor = torch.randn(n, generator=g).round() + 1
    saved = cpu_examples.get_num_threads, cpu_examples._MAX_PARTS
    cpu_examples.get_num_threads, cpu_examples._MAX_PARTS = (lambda: 8), parts
    try:
        _same(acts, floor, cap)
        if p:
            _same(acts, floor, cap, torch.randint(0, p, (p // 2 + 1,), generator=g))
    finally:
        cpu_examples.get_num_threads, cpu_examples._MAX_PARTS = saved


def test_above_floor_memory_follows_the_block_not_the_cap():
    """A large ``cap`` on a small block reserves room for the block's cells only."""
    import tracemalloc

    from kernels import cpu_examples
    acts, floor = torch.randn(4, 5000), torch.zeros(5000)
    cpu_examples.above_floor(acts, floor, 10)  # compiled before measuring
    tracemalloc.start()
    try:
        found = cpu_examples.above_floor(acts, floor, 10**9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found is not None and peak < 4 * 5000 * 20 * 2  # the block's cells, not 10**9 slots
