"""The dense kernel's launch rules and selection variants (``txray_kernels.triton_dense``): 16-bit
keys, argmax rounds, launch shapes, candidate widths and what ``method="auto"`` picks; the
selections against the torch reference under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

from txray_kernels import reference, triton_dense
from test_kernels_triton import _check_selection, _check_states, _features, _states


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
