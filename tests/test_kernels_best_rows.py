"""The top examples' batch step on a GPU, ``best_rows_above`` (each column's first ``m`` offered rows
above its floor, by value and then row): the torch reference, the Triton kernel under the
interpreter (tiny shapes) and on CUDA (``gpu``), against a plain loop per column."""

import os

import pytest
import torch

import txray_kernels as kernels
from txray_kernels import reference, triton_examples

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
IMPLS = [
    pytest.param(reference.best_rows_above, "cpu", id="reference"),
    pytest.param(triton_examples.best_rows_above, "cpu", id="triton-interpreted",
                 marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                          reason="needs TRITON_INTERPRET=1")),
    pytest.param(triton_examples.best_rows_above, "cuda", id="triton-cuda",
                 marks=[pytest.mark.gpu,
                        pytest.mark.skipif(not ON_GPU, reason="needs CUDA, TRITON_INTERPRET=0")]),
]


def _loop(acts, floor, m, rows=None):
    """Per column: the rows with value > floor (float32), sorted by (-value, row); -0.0 == 0.0."""
    sub = (acts if rows is None else acts[rows]).float()
    n = sub.shape[1]
    best = torch.full((n, m), -torch.inf)
    at = torch.full((n, m), -1, dtype=torch.long)
    for j in range(n):
        col = sub[:, j].tolist()
        ranked = sorted((-v, r) for r, v in enumerate(col) if v > float(floor[j]))[:m]
        for s, (neg, r) in enumerate(ranked):
            best[j, s], at[j, s] = -neg, r
    return best, at


def _case(p, n, dtype, seed, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    acts = (torch.randn(p, n, generator=g) * spread).round().to(dtype)  # many ties
    if p > 3:
        acts[1] = -0.0
        acts[2, : n // 2] = -torch.inf
    floor = (torch.randn(n, generator=g) * spread).round()
    floor[::3] = -torch.inf  # lists not yet full
    return acts, floor


def _check(impl, device, acts, floor, m, rows=None):
    want = _loop(acts, floor, m, rows)
    got = impl(acts.to(device), floor.to(device), m, None if rows is None else rows.to(device))
    assert torch.equal(got[0].cpu(), want[0]), "values"
    assert torch.equal(got[0].cpu().signbit(), want[0].signbit()), "the sign of zeros"
    assert torch.equal(got[1].cpu(), want[1]), "rows"


@pytest.mark.parametrize("impl, device", IMPLS)
@pytest.mark.parametrize("p, n, m", [(0, 5, 3), (1, 1, 1), (37, 5, 3), (37, 19, 8), (9, 17, 12),
                                     (41, 33, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_best_rows_match_the_loop(impl, device, p, n, m, dtype):
    acts, floor = _case(p, n, dtype, seed=p * 100 + n)
    _check(impl, device, acts, floor, m)


@pytest.mark.parametrize("impl, device", IMPLS)
def test_best_rows_of_chosen_rows_and_strided_input(impl, device):
    acts, floor = _case(30, 21, torch.bfloat16, seed=7)
    acts[4, 3] = float("nan")  # a row not offered: never read
    rows = torch.tensor([29, 0, 5, 5, 12, 3, 17, 8, 9, 21, 2, 1])  # any order, repeats
    _check(impl, device, acts, floor, 5, rows)
    _check(impl, device, acts.t().contiguous().t(), floor, 4)  # column-major
    _check(impl, device, acts[:, ::2], floor[::2].contiguous(), 3)


@pytest.mark.parametrize("impl, device", IMPLS)
def test_nan_and_neg_inf_never_enter(impl, device):
    acts = torch.tensor([[float("nan"), -torch.inf, 1.0], [2.0, -torch.inf, float("nan")]])
    floor = torch.full((3,), -torch.inf)
    best, at = impl(acts.to(device), floor.to(device), 2)
    assert best.cpu().tolist() == [[2.0, -torch.inf], [-torch.inf, -torch.inf], [1.0, -torch.inf]]
    assert at.cpu().tolist() == [[1, -1], [-1, -1], [0, -1]]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("launch", [(32, 8, 1), (16, 16, 2), (64, 4, 2)])
def test_other_launch_shapes_give_the_same_rows(monkeypatch, launch):
    """The launch shapes gpu_check times (more columns per program, longer tiles, more warps),
    under the interpreter on the CPU."""
    monkeypatch.setattr(triton_examples, "_INTERPRET_LAUNCH", launch)
    acts, floor = _case(45, 70, torch.bfloat16, seed=11)
    for m in (1, 5, 16):
        _check(triton_examples.best_rows_above, "cpu", acts, floor, m,
               torch.randperm(45, generator=torch.Generator().manual_seed(m))[:40])


@pytest.mark.parametrize("impl, device", IMPLS[2:])
@pytest.mark.parametrize("m", [1, 8, 33, 128])
def test_best_rows_on_the_gpu_at_scale(impl, device, m):
    """Shapes where the kernel splits rows into many chunks and columns into many blocks."""
    acts, floor = _case(5000, 1000, torch.bfloat16, seed=m, spread=3.0)
    floor[1::3] = 8.0  # few candidates, as once the lists fill
    rows = torch.randperm(5000, generator=torch.Generator().manual_seed(m))[:4000]
    want = reference.best_rows_above(acts, floor, m, rows)
    got = impl(acts.to(device), floor.to(device), m, rows.to(device))
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("impl, device", IMPLS)
def test_a_nan_floor_admits_nothing(impl, device):
    """``x > NaN`` is false, whatever the NaN's sign bit (damaged lists could hold one)."""
    acts = torch.tensor([[1.0, 2.0], [-torch.inf, 3.0], [float("nan"), 0.0]])
    floor = torch.tensor([-float("nan"), float("nan")])
    best, at = impl(acts.to(device), floor.to(device), 2)
    assert (best.cpu() == -torch.inf).all() and (at.cpu() == -1).all()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
def test_dispatch_to_the_kernel_takes_float64_and_int32_rows(monkeypatch):
    """What the engine hands over on CUDA (float64 activations, any integer rows) reaches the
    kernel as it takes them, compared as float32 (here on the CPU's tensors)."""
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    acts, floor = _case(20, 9, torch.float64, seed=3)
    rows = torch.tensor([3, 1, 19, 7], dtype=torch.int32)
    got = kernels.best_rows_above(acts, floor, 3, rows)
    want = _loop(acts.float(), floor, 3, rows.long())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("bad, message", [
    (dict(acts=torch.zeros(3)), "2-D"),
    (dict(acts=torch.zeros(3, 4, dtype=torch.int32)), "2-D float32"),
    (dict(m=0), "m must be"),
    (dict(m=triton_examples.MAX_M + 1), "m must be"),
    (dict(m=2.7), "m must be an int"),
    (dict(floor=torch.zeros(5)), "floor must be"),
    (dict(floor=torch.zeros(4, dtype=torch.float64)), "floor must be"),
    (dict(rows=torch.tensor([0, 1], dtype=torch.int32)), "rows must be"),
])
def test_kernel_refuses_bad_arguments(bad, message):
    args = dict(acts=torch.zeros(3, 4), floor=torch.zeros(4), m=2, rows=None) | bad
    with pytest.raises(ValueError, match=message):
        triton_examples.best_rows_above(**args)


def test_dispatch_takes_the_reference_on_the_cpu_and_for_long_lists(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_examples, "best_rows_above", lambda *a: calls.append(a))
    acts, floor = _case(6, 4, torch.float32, seed=1)
    want = _loop(acts, floor, triton_examples.MAX_M + 1)
    got = kernels.best_rows_above(acts, floor, triton_examples.MAX_M + 1)
    assert not calls and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
