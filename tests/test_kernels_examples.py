"""The running top examples' CPU kernel (``txray_kernels.cpu_examples.offer``) against the torch
definition (``txray_kernels.reference.offer_examples``): shapes, dtypes, kept rows, ties, the split of
the columns between threads."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import txray_kernels as kernels
from txray_kernels import cpu, reference

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="numba not installed")
FIELDS = ("value", "doc", "pos", "context")


def _lists(n, m, w, seed=0):
    """Lists as a stream leaves them: some neurons full, some partly, some empty."""
    g = torch.Generator().manual_seed(seed)
    value = (torch.randn(n, m, generator=g) * 2).round().sort(1, descending=True).values
    value[::3, m // 2:] = -torch.inf
    value[1::5] = -torch.inf
    empty = value == -torch.inf
    doc = torch.randint(0, 50, (n, m), generator=g).masked_fill(empty, -1)
    pos = torch.randint(0, 50, (n, m), generator=g).masked_fill(empty, -1)
    ctx = torch.randint(0, 50, (n, m, w), generator=g).masked_fill(empty.unsqueeze(-1), -1)
    return [value, doc, pos, ctx]


def _same(acts, m, w, rows=None, seed=0):
    from txray_kernels import cpu_examples
    r = acts.shape[0] if rows is None else rows.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    batch = (torch.randint(0, 9, (r,), generator=g), torch.arange(r),
             torch.randint(0, 9, (r, w), generator=g))
    got, want = _lists(acts.shape[1], m, w, seed), _lists(acts.shape[1], m, w, seed)
    assert cpu_examples.usable(acts, got)
    cpu_examples.offer(acts, got, batch, rows)
    reference.offer_examples(acts, want, batch, rows)
    for field, a, b in zip(FIELDS, got, want):
        assert torch.equal(a, b), field
    return got


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 130, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_offer_matches_reference(n, dtype):
    g = torch.Generator().manual_seed(n)
    acts = (torch.randn(37, n, generator=g) * 2).round().to(dtype)  # ties, with the lists too
    acts[5] = -0.0
    acts[6, : n // 2] = -torch.inf
    acts[7, -1] = float("nan")  # never enters
    for m in (1, 3, 8, 40):  # 40 > the batch: the lists never fill
        _same(acts, m, 3)
        _same(acts, m, 2, torch.tensor([36, 0, 5, 5, 20, 3]))  # any order, repeats
    if n > 1:
        _same(acts[:, ::2], 4, 2)  # strided


@settings(max_examples=60, deadline=None)
@given(p=st.integers(0, 40), n=st.integers(1, 200), m=st.integers(1, 9), parts=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_offer_random_over_any_split_of_the_columns(p, n, m, parts, seed):
    from txray_kernels import cpu_examples
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(p, n, generator=g).round()
    saved = cpu_examples.get_num_threads, cpu_examples._MAX_PARTS
    cpu_examples.get_num_threads, cpu_examples._MAX_PARTS = (lambda: 8), parts
    try:
        _same(acts, m, 2, seed=seed)
        if p:
            _same(acts, m, 1, torch.randint(0, p, (p // 2 + 1,), generator=g), seed)
    finally:
        cpu_examples.get_num_threads, cpu_examples._MAX_PARTS = saved


def test_offer_rejects_bad_arguments_and_changes_nothing():
    from txray_kernels import cpu_examples
    lists = _lists(6, 2, 1)
    before = [t.clone() for t in lists]
    batch = (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
             torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="activations have 5 neurons, the lists 6"):
        cpu_examples.offer(torch.zeros(4, 5), lists, batch)
    with pytest.raises(ValueError, match="must describe the 3 offered rows"):
        cpu_examples.offer(torch.ones(4, 6), lists, batch, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="rows must index the 4 rows"):
        cpu_examples.offer(torch.ones(4, 6), lists, batch, torch.tensor([0, 1, 2, 4]))
    wrong_pos = torch.zeros(6, 3, dtype=torch.long)
    for bad in ([lists[0], lists[1][:3], *lists[2:]], [*lists[:2], wrong_pos, lists[3]],
                [*lists[:3], lists[3][:, :1]]):
        with pytest.raises(ValueError, match="the lists must be value, doc, pos"):
            cpu_examples.offer(torch.ones(4, 6), bad, batch)
    assert all(torch.equal(a, b) for a, b in zip(lists, before))


def test_dispatch_takes_the_kernel_only_for_lists_it_can_write():
    lists = _lists(6, 2, 1)
    batch = (torch.zeros(1, dtype=torch.long),) * 2 + (torch.zeros(1, 1, dtype=torch.long),)
    assert kernels.offer_examples(torch.ones(1, 6), lists, batch)
    odd = [lists[0].double(), *lists[1:]]  # not the lists TopExamples makes: the torch way
    assert not kernels.offer_examples(torch.ones(1, 6), odd, batch)
    with torch.inference_mode():
        frozen = [t.clone() for t in lists]
    assert not kernels.offer_examples(torch.ones(1, 6), frozen, batch)
    tracked = [lists[0].clone().requires_grad_(), *lists[1:]]
    assert not kernels.offer_examples(torch.ones(1, 6), tracked, batch)
