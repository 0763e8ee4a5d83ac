"""Part 1 of ``gpu_check``: every kernel path against ``txray_kernels.reference`` on the device (dtypes,
layouts, strategies, several streams, modes), the non-finite rows of the engine's call, and the top
examples against the CPU's lists."""

from __future__ import annotations

import importlib
import time

import torch

from .common import (ARGS, DEVICE, DenseState, SparseState, emit, free_bytes, kernel_settings,
                     kernels, make_acts, make_features, reference, triton_dense, triton_examples,
                     triton_sparse)

def states_equal(got, want, rtol) -> str:
    for i, (s, r) in enumerate(zip(got, want)):
        a, b = s.to_stats(), r.to_stats()
        if a.nnz != b.nnz or not (a.indices == b.indices).all() or not (a.indptr == b.indptr).all():
            return f"stream {i}: cell pattern differs ({a.nnz} vs {b.nnz} cells)"
        if not (a.count == b.count).all():
            return f"stream {i}: counts differ"
        if not (a.peak == b.peak).all():
            return f"stream {i}: peaks differ"
        if not torch.allclose(torch.from_numpy(a.mass), torch.from_numpy(b.mass), rtol=rtol, atol=0):
            return f"stream {i}: mass differs beyond rtol={rtol}"
    return ""


def check_case(name, impl, acts, k, feats, n, v, kinds, rtol=1e-12) -> bool:
    if "dense" in kinds and 2 * len(kinds) * 20 * n * v > 0.7 * free_bytes():
        emit(f"SKIP  {name}  -- the dense states do not fit in memory")
        return True
    make = {"dense": DenseState, "sparse": SparseState}
    states = [make[kd](n, v, device=DEVICE) for kd in kinds]
    ref = [make[kd](n, v, device=DEVICE) for kd in kinds]
    try:
        values, indices = impl(acts, k, list(zip(feats, states)))
        triton_dense.flush()
        rv, ri = reference.select_accumulate(acts.float(), k, list(zip(feats, ref)))
        msg = ""
        if not torch.equal(torch.sort(indices, 1).values, torch.sort(ri, 1).values):
            msg = "selected neurons differ"
        elif not torch.equal(values, torch.gather(acts.float(), 1, indices)):
            msg = "values are not the activations of the selected neurons"
        else:
            msg = states_equal(states, ref, rtol)
    except Exception as e:  # report, keep checking
        msg = f"{type(e).__name__}: {e}"
    emit(f"{'PASS' if not msg else 'FAIL'}  {name}" + (f"  -- {msg}" if msg else ""))
    return not msg


def _round_scatter(method, scatter, keys16=False):
    """The dense kernel's ``method`` with ``triton_dense.ROUND_SCATTER = scatter`` and
    ``KEYS_16BIT = keys16``."""
    def run(a, k, t):
        with kernel_settings():
            triton_dense.ROUND_SCATTER = scatter
            triton_dense.KEYS_16BIT = keys16
            return triton_dense.dense_select_accumulate(a, k, t, method=method)
    return run


IMPLS = {
    "dense-cand-batch": _round_scatter("candidates", "batched"),
    "dense-cand-round": _round_scatter("candidates", "per_round"),
    "dense-argm-batch": _round_scatter("argmax", "batched"),
    "dense-argm-round": _round_scatter("argmax", "per_round"),
    "dense-cand-key16": _round_scatter("candidates", "batched", keys16=True),
    "dense-cand-key16-round": _round_scatter("candidates", "per_round", keys16=True),
    "dense-argm-key16": _round_scatter("argmax", "batched", keys16=True),
    "dense-thr-key16": _round_scatter("threshold", "batched", keys16=True),
    "dense-auto": lambda a, k, t: triton_dense.dense_select_accumulate(a, k, t),
    "dense-argmax": lambda a, k, t: triton_dense.dense_select_accumulate(a, k, t, method="argmax"),
    "dense-threshold": lambda a, k, t: triton_dense.dense_select_accumulate(a, k, t,
                                                                           method="threshold"),
    "dense-candidates": lambda a, k, t: triton_dense.dense_select_accumulate(a, k, t,
                                                                            method="candidates"),
    "dense-partial": lambda a, k, t: triton_dense.dense_select_accumulate(a, k, t, mode="partial"),
    "sparse": lambda a, k, t: triton_sparse.sparse_select_accumulate(a, k, t),
    "mixed": lambda a, k, t: triton_sparse.select_accumulate(a, k, t),
}

#: shape name -> (P, N, V, dtype, data, layout)
SHAPES = {
    "A": (700, 1000, 17, "bfloat16", "ties", "row_strided"),
    "B": (300, 4099, 50_000, "float32", "random", "contiguous"),
    "C": (200, 16384, 7, "float16", "contention", "contiguous"),
    "D": (100, 20_000, 5, "bfloat16", "negative", "row_strided"),  # wider than MAX_FUSED_BLOCK_N
    "E": (1001, 4096, 7, "bfloat16", "random", "contiguous"),  # N a power of two: no column mask
}
SMOKE_SHAPES = {"A": (24, 37, 13, "bfloat16", "ties", "row_strided"),
                "B": (16, 20, 500, "float32", "random", "contiguous"),
                "C": (16, 33, 3, "float16", "contention", "contiguous"),
                "D": (8, 70, 5, "bfloat16", "negative", "row_strided"),
                "E": (13, 64, 7, "bfloat16", "random", "contiguous")}
#: (impl, shape, k, streams); k 0 means N. Each case has a purpose (strategy, dtype, layout,
#: grouping of streams, mode); few distinct kernel specialisations, so little compile time.
CASES = [
    ("dense-auto", "A", 1, 2), ("dense-auto", "A", 8, 2), ("dense-auto", "A", 32, 2),
    ("dense-auto", "A", 0, 2), ("dense-auto", "A", 8, 5), ("dense-argmax", "A", 32, 2),
    ("dense-threshold", "A", 8, 2), ("dense-partial", "A", 8, 2), ("mixed", "A", 8, 5),
    ("dense-candidates", "A", 1, 2), ("dense-candidates", "B", 1, 1), ("dense-candidates", "C", 4, 2),
    ("sparse", "B", 1, 2), ("sparse", "B", 32, 2), ("mixed", "B", 8, 3), ("dense-auto", "B", 8, 1),
    ("dense-auto", "C", 1, 2), ("dense-auto", "C", 32, 2), ("sparse", "C", 8, 2),
    ("dense-auto", "D", 8, 2), ("dense-auto", "D", 0, 1), ("sparse", "D", 0, 1),
    ("dense-auto", "E", 1, 1), ("dense-candidates", "E", 3, 1), ("dense-auto", "E", 8, 2),
    ("dense-auto", "E", 16, 1), ("dense-auto", "E", 32, 1),
    ("dense-cand-batch", "A", 3, 5), ("dense-cand-batch", "E", 3, 1), ("dense-cand-round", "C", 3, 2),
    ("dense-argm-batch", "B", 5, 2), ("dense-argm-round", "C", 16, 2), ("dense-argm-batch", "C", 16, 2),
    ("dense-cand-key16", "A", 1, 2), ("dense-cand-key16", "A", 3, 5), ("dense-cand-key16", "C", 4, 2),
    ("dense-cand-key16", "E", 4, 1), ("dense-cand-key16-round", "E", 4, 2),
    ("dense-argm-key16", "A", 8, 2), ("dense-argm-key16", "C", 16, 2),
    ("dense-cand-key16", "B", 1, 1),  # (fp32: int64 keys)
    ("dense-thr-key16", "A", 32, 2), ("dense-thr-key16", "C", 8, 2), ("dense-thr-key16", "E", 3, 5),
]


def part1() -> bool:
    t0 = time.perf_counter()
    emit("## Part 1: correctness against txray_kernels.reference on " + str(DEVICE))
    emit("")
    shapes = SMOKE_SHAPES if ARGS.smoke else SHAPES
    kinds_of = {"sparse": ["sparse"] * 5, "mixed": ["dense", "sparse"] * 2 + ["dense"]}
    ok = True
    cache = {}
    for name, shape, k, streams in CASES:
        p, n, v, dtype, data, layout = shapes[shape]
        if shape not in cache:
            cache.clear()
            cache[shape] = (make_acts(p, n, getattr(torch, dtype), data, layout),
                            make_features(p, v, 5, contention=data == "contention"))
        acts, feats = cache[shape]
        k = n if k == 0 else min(k, n)
        kinds = kinds_of.get(name, ["dense"] * 5)[:streams]
        rtol = 2.5e-4 if name == "dense-partial" else 1e-12
        ok &= check_case(f"{name:15s} {dtype:8s} {data:10s} P={p} N={n} V={v} k={k} streams={streams}",
                         IMPLS[name], acts, k, feats[:streams], n, v, kinds, rtol)
    ok &= check_nonfinite_rows()
    ok &= check_examples()
    emit(f"\n({time.perf_counter() - t0:.0f} s)\n")
    return ok


def check_nonfinite_rows() -> bool:
    """The engine selects rows before it knows which hold NaN/inf (``txray_kernels.select_rows``; those
    rows are dropped or rejected after): every method must still name neurons in range on such
    rows, select the finite rows beside them exactly, and flag exactly the rows holding NaN/inf
    (row 5's huge finite values overflow a float32 row sum, but are no NaN/inf), reading the
    kept rows of a masked batch in place."""
    n = 60 if ARGS.smoke else 1000  # (--smoke narrows the fused tile to 64)
    a = make_acts(64, n, torch.float32, seed=n)
    a[0, 3], a[1], a[2, 5], a[3], a[4, 7] = (float("nan"), float("nan"), float("inf"),
                                              -float("inf"), -float("nan"))
    a[5, :4] = 3e38
    bad = []
    # every selection code path, few kernel specialisations (each costs a compile on the device)
    for dtype, k, method in [(torch.bfloat16, 1, "auto"), (torch.bfloat16, 1, "argmax"),
                             (torch.float32, 1, "auto"), (torch.float32, 3, "argmax"),
                             (torch.bfloat16, 8, "candidates"), (torch.bfloat16, 8, "threshold")]:
        x = a.to(dtype)
        # the engine's call: a masked batch's kept rows read in place (unsorted, repeats, the
        # non-finite rows among them) and their flags, in one launch (one compile per path)
        kept = torch.cat([torch.arange(63, -1, -1), torch.tensor([9, 0, 5])]).to(x.device)
        flags = torch.full((kept.numel(),), 7, dtype=torch.int8, device=x.device)
        try:
            _, i = triton_dense.select_topk(x, k, method=method, flags=flags, rows=kept)
        except ValueError:  # --smoke: rows too narrow for this method
            continue
        taken = x.index_select(0, kept).float()
        finite = torch.isfinite(taken).all(dim=1)
        _, ir = reference.select_topk(taken[finite], k)
        if bool(((i < 0) | (i >= n)).any()) or \
                not torch.equal(torch.sort(i[finite], 1).values, torch.sort(ir, 1).values) or \
                not torch.equal(flags.bool(), ~finite):
            bad.append(f"{dtype} k={k} {method}")
    emit(f"{'PASS' if not bad else 'FAIL'}  kept rows read in place, with NaN/inf: neurons in "
         f"range, finite rows exact, flags exact"
         + (f"  -- {', '.join(bad)}" if bad else ""))
    return not bad


def _examples_stream(n, p, batches, seed=5):
    """Masked bf16 batches with many ties (small integers) for top examples: ``(acts, rows, doc,
    pos, context)`` on the CPU."""
    g = torch.Generator().manual_seed(seed)
    for b in range(batches):
        acts = (torch.randn(p, n, generator=g) * 4).round().to(torch.bfloat16)
        rows = torch.randperm(p, generator=g)[: p * 4 // 5]
        yield acts, rows, torch.full((rows.numel(),), b), rows.clone(), \
            torch.stack([rows, rows + 1, rows + 2], 1)


def check_examples() -> bool:
    """Top examples on the device against the CPU's (the numba kernel): the same lists, ties
    included, both CUDA ways (each neuron's best rows above its m-th value, from the Triton kernel
    ``txray_kernels.triton_examples``, merged; and with ``CUDA_SCAN`` the torch way: candidates above
    each neuron's m-th value). ``--smoke``: the first way's branch on the CPU, kernel interpreted."""
    examples = importlib.import_module("txray_engine.accumulate.examples")
    n, p = (40, 48) if ARGS.smoke else (1000, 4096)
    bad = []
    saved = examples.CUDA_SCAN, kernels.best_rows_above
    try:
        for scan in (False, True):
            examples.CUDA_SCAN = scan
            kernels.best_rows_above = triton_examples.best_rows_above
            dev, cpu = examples.TopExamples(n, 8, 3, DEVICE), examples.TopExamples(n, 8, 3)
            for acts, rows, *where in _examples_stream(n, p, 6):
                cpu.update(acts, *where, rows=rows)
                if DEVICE.type == "cuda" or scan:
                    dev.update(acts.to(DEVICE), *(t.to(DEVICE) for t in where),
                               rows=rows.to(DEVICE))
                else:  # --smoke: the CUDA branch, on the CPU
                    dev._offer_best_rows(acts, rows, *where)
            if not all(torch.equal(getattr(dev, f).cpu(), getattr(cpu, f))
                       for f in ("value", "doc", "pos", "context")):
                bad.append("scan" if scan else "best rows")
    finally:
        examples.CUDA_SCAN, kernels.best_rows_above = saved
    emit(f"{'PASS' if not bad else 'FAIL'}  top examples (m = 8, ties, kept rows) equal to the "
         f"CPU's, best rows (Triton) and scan" + (f"  -- {', '.join(bad)}" if bad else ""))
    return not bad
