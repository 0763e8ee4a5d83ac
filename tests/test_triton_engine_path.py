"""What the engine's GPU path asks of the fused selection
(:func:`txray_kernels.triton_dense.dense_select_accumulate`): it flags the rows holding NaN/inf from the
tile it reads (``flags=``) and reads a masked batch's kept rows in place (``rows=``), so the
activations are read once and the kept rows never copied. Against an exact check and the
reference, on every selection method, and through :func:`txray_kernels.select_rows`' CUDA branch (under
the interpreter on the CPU, on CUDA with ``-m gpu``).
"""

from __future__ import annotations

import os

import pytest
import torch

import txray_kernels as kernels
from txray_kernels import reference, triton_dense

HUGE = {torch.float32: 3e38, torch.bfloat16: 3e38, torch.float16: 6e4}
# the interpreter reduces NaN rows with numpy, which warns (the selection of such rows is unspecified)
pytestmark = pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
gpu = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                         reason="needs CUDA and TRITON_INTERPRET=0")


def _rows(p: int, n: int, dtype, device="cpu") -> torch.Tensor:
    """Random rows; rows 1, 4, 6, 9 hold NaN, +inf, -inf, NaN (a whole row); row 11 holds huge
    finite values whose float32 sum overflows (no NaN/inf: not to be flagged)."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(p, n, generator=gen)
    x[1, 0], x[4, n - 1], x[6, n // 2], x[9] = float("nan"), float("inf"), -float("inf"), float("nan")
    x[11, :4] = HUGE[dtype]
    return x.to(dtype).to(device)


def _exact(x: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(x.float()).all(dim=1)


def _flagged(x, k, method):
    flags = torch.full((x.shape[0],), 7, dtype=torch.int8, device=x.device)  # all overwritten
    values, indices = triton_dense.select_topk(x, k, method=method, flags=flags)
    return values, indices, flags


def _skip_if_too_narrow(method, n, k):
    if method == "candidates" and triton_dense._candidate_chunk(triton_dense._next_pow2(n), k) is None:
        pytest.skip(f"rows of {n} are too narrow for k={k} candidate chunks")


def _check(x, k, method):
    n = x.shape[1]
    _skip_if_too_narrow(method, n, k)
    values, indices, flags = _flagged(x, k, method)
    assert set(flags.tolist()) <= {0, 1}
    exact = _exact(x)
    if method in ("torch", "all"):  # the float32 row sum: a superset of the exact rows
        assert bool((flags.bool() >= exact).all())
    else:  # the fused check is exact: row 11's overflowing sum is not flagged
        assert torch.equal(flags.bool(), exact)
    good = ~exact  # the selection of the finite rows is still the reference's
    ref_v, ref_i = reference.select_topk(x[good].float(), k)
    assert torch.equal(torch.sort(indices[good], 1).values, torch.sort(ref_i, 1).values)
    assert bool(((indices >= 0) & (indices < n)).all())


@pytest.mark.parametrize("method", ["argmax", "candidates", "threshold", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, k", [(37, 3), (64, 1), (128, 8)])
def test_flags_name_exactly_the_nonfinite_rows(method, dtype, n, k):
    _check(_rows(20, n, dtype), k, method)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flags_of_2_byte_values_at_the_exponent_edge(dtype):
    """2-byte tiles are flagged on their own exponent bits: every non-finite bit pattern (both
    signs, every mantissa), the largest finite ones below them, and a spread of the others, one
    per row, are flagged exactly where the float32 widening is not finite. (Every one of the
    65,536 patterns of each type was checked the same way once, 2.5 minutes here.)"""
    top = 0x7F80 if dtype == torch.bfloat16 else 0x7C00  # exponent bits all ones
    edge = torch.arange(top - 64, 0x8000, dtype=torch.int32)  # finite up to inf, then NaNs
    spread = torch.arange(0, 0x8000, 97, dtype=torch.int32)
    bits = torch.cat([edge, spread, edge | 0x8000, spread | 0x8000]).to(torch.int16)
    x = torch.stack([bits.view(dtype), torch.zeros(bits.numel(), dtype=dtype)], 1)
    flags = torch.full((x.shape[0],), 7, dtype=torch.int8)
    triton_dense.select_topk(x, 1, flags=flags)
    exact = _exact(x)
    assert int(exact.sum()) >= 2 * (0x8000 - top)  # (the edges hold every non-finite pattern)
    assert torch.equal(flags.bool(), exact)


def test_flags_where_k_is_n_and_in_partial_chunks(monkeypatch):
    x = _rows(20, 12, torch.float32)
    _check(x, 12, "all")
    monkeypatch.setattr(triton_dense, "PARTIAL_FLUSH_ROWS", 8)  # three chunks of rows
    flags = torch.full((20,), 7, dtype=torch.int8)
    triton_dense.dense_select_accumulate(x, 2, [], mode="partial", flags=flags)
    assert torch.equal(flags.bool(), _exact(x))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(20, dtype=torch.bool), "int8"),
    (torch.zeros(19, dtype=torch.int8), r"shape \(20,\)"),
    (torch.zeros(40, dtype=torch.int8)[::2], "contiguous"),
])
def test_bad_flags_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        triton_dense.select_topk(_rows(20, 16, torch.float32), 2, flags=bad)


@pytest.mark.parametrize("k", [1, 3])
def test_select_rows_device_branch_counts_the_kept_nonfinite_rows(k, monkeypatch):
    """The CUDA branch of ``select_rows`` (the kept rows read in place by the kernel):
    ``suspects`` counts the kept rows holding NaN/inf, with no extra pass over the activations."""
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    calls = []
    monkeypatch.setattr(reference, "suspect_rows", lambda a: calls.append(a) or None)
    x = _rows(20, 40, torch.bfloat16)
    rows = torch.tensor([0, 1, 2, 4, 11, 12, 19])  # kept: rows 1 and 4 hold NaN/inf, 6 and 9 not kept
    sel = kernels.select_rows(x, k, rows)
    assert not calls
    assert int(sel.suspects) == 2
    monkeypatch.undo()
    assert sel.nonfinite().tolist() == [1, 3]  # positions among the kept rows


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, k", [(1000, 1), (4096, 8), (4099, 32)])
def test_gpu_flags(dtype, n, k):
    _check(_rows(300, n, dtype, "cuda"), k, "auto")
    x = torch.randn(300, n, generator=torch.Generator().manual_seed(k)).to(dtype).cuda()
    rows = torch.randperm(300, generator=torch.Generator().manual_seed(n))[:200].cuda()
    values, indices = triton_dense.select_topk(x, k, rows=rows)
    ref_v, ref_i = reference.select_topk(x[rows].float(), k)
    assert torch.equal(torch.sort(indices, 1).values, torch.sort(ref_i, 1).values)


def _kept_rows(p: int) -> torch.Tensor:
    """Unsorted, with a repeat, some rows left out."""
    return torch.tensor([p - 1, 0, 3, 3, 7, 2, 11, 5])[: p]


@pytest.mark.parametrize("method", ["argmax", "candidates", "threshold", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, k", [(37, 3), (128, 8), (64, 1)])
def test_rows_are_read_in_place(method, dtype, n, k):
    x = _rows(20, n, dtype)[:, : n]
    x = torch.nan_to_num(x, nan=1.0, posinf=2.0, neginf=-2.0)
    x[11] = 0.5  # no huge values either: every taken row finite, even to a float32 sum
    _skip_if_too_narrow(method, n, k)
    rows = _kept_rows(20)
    flags = torch.full((rows.numel(),), 7, dtype=torch.int8)
    values, indices = triton_dense.select_topk(x, k, method=method, rows=rows, flags=flags)
    ref_v, ref_i = reference.select_topk(x[rows].float(), k)
    assert torch.equal(torch.sort(indices, 1).values, torch.sort(ref_i, 1).values)
    assert torch.equal(torch.sort(values, 1).values, torch.sort(ref_v, 1).values)
    assert flags.tolist() == [0] * rows.numel()


def test_rows_with_targets_partial_chunks_and_k_equal_n(monkeypatch):
    from test_kernels_triton import DenseState  # the states without the Zarr store

    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([29, 1, 4, 4, 17, 8, 0, 22, 13, 6, 5])
    feats = torch.randint(-1, 5, (rows.numel(),), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(triton_dense, "PARTIAL_FLUSH_ROWS", 4)  # three chunks of rows
    for k, mode in ((3, "direct"), (3, "partial"), (12, "direct")):
        got, want = DenseState(12, 5), DenseState(12, 5)
        triton_dense.dense_select_accumulate(x, k, [(feats, got)], mode=mode, rows=rows)
        triton_dense.flush(got)
        reference.select_accumulate(x[rows], k, [(feats, want)])
        assert torch.equal(got.count, want.count) and torch.equal(got.peak, want.peak)
        assert torch.allclose(got.mass, want.mass, rtol=2.5e-4 if mode == "partial" else 1e-12)


def test_bad_rows_are_refused():
    x = torch.randn(6, 16)
    for bad, message in ((torch.tensor([0, 1], dtype=torch.int32), "int64"),
                         (torch.zeros(2, 2, dtype=torch.int64), "1-D")):
        with pytest.raises(ValueError, match=message):
            triton_dense.select_topk(x, 2, rows=bad)
    with pytest.raises(ValueError, match="features must be a 1-D tensor of 2 ids"):
        triton_dense.dense_select_accumulate(x, 2, [(torch.zeros(6, dtype=torch.int64), None)],
                                             rows=torch.tensor([0, 1]))


@pytest.mark.gpu
@gpu
def test_gpu_engine_masked_batches_under_inference_mode():
    """The engine on CUDA: masked layers of one batch (kept rows read in place, flags, totals in
    the scatter launch, position counts once per batch), the first batch under torch.inference_mode, the
    second outside it: the CPU engine's sums."""
    import importlib

    import test_kernels_triton  # noqa: F401  (the engine without its Zarr store, as on the GPU image)
    acc_mod = importlib.import_module("txray_engine.accumulate")
    streams = {"a": [str(i) for i in range(17)], "b": [str(i) for i in range(300)]}
    gen = torch.Generator().manual_seed(9)
    got = acc_mod.Accumulator(streams, k=8, device="cuda", nonfinite="skip")
    want = acc_mod.Accumulator(streams, k=8, nonfinite="skip")
    for batch in range(2):
        acts = {f"l{i}": torch.randn(3, 40, 1000, generator=gen).to(torch.bfloat16)
                for i in range(3)}
        acts["l1"][1, 2, 7] = float("nan")
        feats = {"a": torch.randint(-1, 17, (3, 40), generator=gen),
                 "b": torch.randint(0, 300, (3, 40), generator=gen)}
        mask = torch.rand(3, 40, generator=gen) > 0.2
        mask[1, 2] = True
        with torch.inference_mode(batch == 0):
            for p in got.prepare_batch({n: a.cuda() for n, a in acts.items()},
                                       {n: f.cuda() for n, f in feats.items()}, mask.cuda()):
                got.commit(p)
        for p in want.prepare_batch(acts, feats, mask):
            want.commit(p)
    assert acc_mod.same_sums(got, want)
    assert got.layers["l1"].skipped_nonfinite == 2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("scan", [False, True])
def test_gpu_top_examples_equal_the_cpu(m, scan, monkeypatch):
    """Top examples on CUDA (``topk`` of int64 value|row keys, no host wait; or with
    ``CUDA_SCAN`` the torch way) keep what the CPU's kernel keeps, ties and masked rows included,
    through the accumulator as the engine runs it."""
    import importlib

    import test_kernels_triton  # noqa: F401  (the engine without its Zarr store, as on the GPU image)
    acc_mod = importlib.import_module("txray_engine.accumulate")
    examples = importlib.import_module("txray_engine.accumulate.examples")
    monkeypatch.setattr(examples, "CUDA_SCAN", scan)
    windows = examples.context_windows
    gen = torch.Generator().manual_seed(m)
    accs = {dev: acc_mod.Accumulator({"t": [str(i) for i in range(9)]}, k=2, examples=m,
                                     context_radius=1, device=dev) for dev in ("cpu", "cuda")}
    for b in range(5):
        acts = (torch.randn(4, 64, 300, generator=gen) * 3).round().to(torch.bfloat16)  # ties
        ids = torch.randint(0, 9, (4, 64), generator=gen)
        mask = torch.rand(4, 64, generator=gen) > 0.25
        where = {"doc": torch.arange(4).unsqueeze(1).expand(4, 64) + 4 * b,
                 "pos": torch.arange(64).expand(4, 64), "context": windows(ids, mask, 1)}
        for dev, acc in accs.items():
            acc.observe("l", acts.to(dev), {"t": ids.to(dev)}, mask=mask.to(dev),
                        where={key: t.to(dev) for key, t in where.items()})
    a, c = (accs[d].layers["l"].examples for d in ("cpu", "cuda"))
    for field in ("value", "doc", "pos", "context"):
        assert torch.equal(getattr(a, field), getattr(c, field).cpu()), field
