"""One GPU check of the Triton hot path: correctness against the torch reference, then throughput.

Run on a CUDA machine (finishes in under 4 minutes; needs torch + triton, not zarr)::

    python benchmarks/gpu_check.py [--out results.md]

or on the CPU through the Triton interpreter, with tiny shapes (under a minute)::

    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --smoke

Part 1 prints PASS/FAIL per case (the kernels against ``kernels.reference`` on the same device).
Part 2 prints, for N in {1024, 4096, 16384}, k in {1, 8, 32}, bf16 and fp32: the fused dense kernel
(V = 17, and V = 50,000 where two states fit in memory) and the sparse path (V = 50,000, ids
uniform, and for bf16 also Zipf-distributed as word types in text), 2**26 activations per call: tokens/s,
GB/s of activations read, that bandwidth as a % of the device-to-device copy bandwidth of the same
tensor measured in the same run (``dst.copy_(acts)``, counted as read + write), and the speed-up over
a torch-native version written the way a user would (``torch.topk`` + ``index_put_(accumulate=True)``
+ ``scatter_reduce_`` for dense; ``torch.topk`` + ``SparseState.add_events``, i.e. ``torch.unique`` +
``index_add_``, for sparse). Part 2b times the sparse accumulation alone (a selection given: the
issue's sparse events/s without the selection in front). Part 3 compares the selection methods and the accumulation modes at
N = 4096. Times: ``triton.testing.do_bench`` (median ms) of the whole Python call, and for dense
rows also of its CUDA-graph replay (the device time alone: at ~0.1 ms per call the host's launch
path is most of the call); on the CPU a plain timer.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter check)")
    ap.add_argument("--out", default=None, help="also write the tables as markdown to this file")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the fused kernel's launch shapes (triton_dense.LAUNCH_SHAPES), "
                         "each checked against the reference")
    ap.add_argument("--budget", type=float, default=180.0,
                    help="seconds after which the remaining benchmark rows are skipped")
    return ap.parse_args()


ARGS = _parse()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402


def _engine_states():
    """``DenseState``/``SparseState`` without ``txray_engine/__init__`` when zarr is missing."""
    if "txray_engine" not in sys.modules:
        try:
            importlib.import_module("zarr")
        except ImportError:  # the package __init__ imports the Zarr store: skip it
            pkg = types.ModuleType("txray_engine")
            pkg.__path__ = [str(ROOT / "txray_engine")]
            sys.modules["txray_engine"] = pkg
    acc = importlib.import_module("txray_engine.accumulate")
    return acc.DenseState, acc.SparseState, acc.Accumulator


DenseState, SparseState, Accumulator = _engine_states()
from kernels import reference, triton_dense, triton_sparse  # noqa: E402

if ARGS.smoke:  # let the tiny shape "D" take the wide-row fallback, as N = 20,000 does on the GPU
    triton_dense.MAX_FUSED_BLOCK_N = 64

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not INTERPRET:
    sys.exit("no CUDA device: run on a GPU, or with --smoke (TRITON_INTERPRET=1) on the CPU")
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRET else "cpu")
T0 = time.perf_counter()
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bench(fn) -> float:
    """Median milliseconds of ``fn``."""
    if DEVICE.type == "cuda":
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    fn()  # the interpreter: one warm-up and one timed call
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def bench_graph(fn) -> float | None:
    """Median milliseconds of ``fn`` replayed from a CUDA graph: the device time alone, without the
    host's launch path (which ``bench`` includes, and which dominates calls of ~0.1 ms). ``None``
    on the CPU, or where ``fn`` cannot be captured (it reads a value back)."""
    if DEVICE.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # compile and allocate outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return bench(graph.replay)
    except Exception as e:  # report and go on with the other rows
        emit(f"(graph capture failed: {type(e).__name__}: {str(e)[:120]})")
        return None


# ------------------------------------------------------------------------------------------------
# part 1: correctness on the device
# ------------------------------------------------------------------------------------------------
def make_acts(p, n, dtype, data="random", layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    if data == "ties":
        x = torch.randint(-2, 3, (p, n), generator=gen).float() * 0.5
    elif data == "contention":
        x = torch.randn(1, n, generator=gen).expand(p, n).clone()
    elif data == "negative":
        x = -torch.rand(p, n, generator=gen) - 0.25
    else:
        x = torch.randn(p, n, generator=gen)
    if layout == "row_strided":
        buf = torch.zeros(p, n + 5, dtype=dtype)
        buf[:, 3:3 + n] = x.to(dtype)
        return buf[:, 3:3 + n].to(DEVICE)
    return x.to(dtype).to(DEVICE)


def make_features(p, v, streams, seed=0, contention=False, zipf=False):
    """Ids of ``streams`` streams: uniform over ``v`` (every call brings mostly new cells), or with
    ``zipf`` drawn with probability ~ 1 / rank, as word types occur in text."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for s in range(streams):
        if zipf:
            f = torch.multinomial(1.0 / torch.arange(1, v + 1, dtype=torch.float64), p,
                                  replacement=True, generator=gen)
        else:
            f = torch.full((p,), v - 1) if contention else torch.randint(0, v, (p,), generator=gen)
        if s % 2:
            f[torch.rand(p, generator=gen) < 0.3] = -1
        out.append(f.to(DEVICE))
    return out


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
    if "dense" in kinds and 2 * len(kinds) * 20 * n * v > 0.7 * _free_bytes():
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


IMPLS = {
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
]


def part1() -> bool:
    t0 = time.perf_counter()
    emit("## Part 1: correctness against kernels.reference on " + str(DEVICE))
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
    """The engine selects rows before it knows which hold NaN/inf (``kernels.select_rows``; those
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
    """Top examples on the device against the CPU's (one scan above each neuron's m-th value,
    then a merge): the same lists, ties included, both CUDA ways (``topk`` of int64 value|row
    keys, and with ``CUDA_SCAN`` the CPU's way)."""
    examples = importlib.import_module("txray_engine.accumulate.examples")
    n, p = (40, 48) if ARGS.smoke else (1000, 4096)
    bad = []
    saved = examples.CUDA_SCAN
    try:
        for scan in (False, True):
            examples.CUDA_SCAN = scan
            dev, cpu = examples.TopExamples(n, 8, 3, DEVICE), examples.TopExamples(n, 8, 3)
            for acts, rows, *where in _examples_stream(n, p, 6):
                cpu.update(acts, *where, rows=rows)
                if DEVICE.type == "cuda" or scan:
                    dev.update(acts.to(DEVICE), *(t.to(DEVICE) for t in where),
                               rows=rows.to(DEVICE))
                else:  # --smoke: the CUDA branch's keys path, on the CPU
                    dev._offer_by_keys(None, acts.index_select(0, rows), *where)
            if not all(torch.equal(getattr(dev, f).cpu(), getattr(cpu, f))
                       for f in ("value", "doc", "pos", "context")):
                bad.append("scan" if scan else "keys")
    finally:
        examples.CUDA_SCAN = saved
    emit(f"{'PASS' if not bad else 'FAIL'}  top examples (m = 8, ties, kept rows) equal to the "
         f"CPU's, keys and scan" + (f"  -- {', '.join(bad)}" if bad else ""))
    return not bad


# ------------------------------------------------------------------------------------------------
# part 2: throughput
# ------------------------------------------------------------------------------------------------
def _free_bytes() -> int:
    if DEVICE.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    return 8 << 30


def torch_dense(acts, k, targets):
    """The user's version: topk, then index_put_/scatter_reduce_ per stream."""
    vals, idx = torch.topk(acts.float(), k, dim=1)
    for f, s in targets:
        ff = f[:, None].expand_as(idx)
        ok = ff >= 0
        cell = (idx * s.n_features + ff)[ok]
        v = vals[ok]
        s.count.index_put_((cell,), torch.ones_like(cell), accumulate=True)
        s.mass.index_put_((cell,), v.clamp(min=0).double(), accumulate=True)
        s.peak.scatter_reduce_(0, cell, v, "amax")


def torch_sparse(acts, k, targets):
    vals, idx = torch.topk(acts.float(), k, dim=1)
    for f, s in targets:
        ff = f[:, None].expand_as(idx)
        ok = ff >= 0
        s.add_events(idx[ok], ff[ok], vals[ok])


def copy_ms(acts) -> float:
    dst = torch.empty_like(acts)
    return bench(lambda: dst.copy_(acts))


#: Activation elements per call in Part 2 (128 MB of bf16: e.g. 16 sequences of 1,024 tokens at
#: N = 4,096), large enough that a call's device time is not hidden behind its host time.
BLOCK_ELEMS = 1 << 26


def part2() -> None:
    emit("## Part 2: throughput (one stream per call)")
    emit("")
    emit(f"Device: {torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'CPU (interpreter)'};"
         f" torch {torch.__version__}, triton {triton.__version__}. Copy BW = 2 x bytes / time of "
         "`dst.copy_(acts)`; % copy = (activation bytes / kernel time) / copy BW.")
    emit("")
    emit("| N | k | dtype | target | V | P | ms | Mtok/s | Gevents/s | act GB/s | % copy BW | torch ms "
         "| speed-up | kernel ms (graph) | kernel % copy BW |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ns = [16, 40] if ARGS.smoke else [1024, 4096, 16384]
    ks = [1, 8, 32]
    skipped = 0
    for n in ns:
        p = 32 if ARGS.smoke else BLOCK_ELEMS // n
        for dtype in (torch.bfloat16, torch.float32):
            acts = make_acts(p, n, dtype)
            nbytes = acts.numel() * acts.element_size()
            copy_bw = 2 * nbytes / (copy_ms(acts) * 1e-3)
            for k in ks:
                if k > n:
                    continue
                rows = [("dense", 17), ("dense", 50_000), ("sparse", 50_000)]
                if dtype == torch.bfloat16:  # ids as text has them: many repeated cells
                    rows.append(("sparse-zipf", 50_000))
                for target, v in rows:
                    if time.perf_counter() - T0 > ARGS.budget:
                        skipped += 1
                        continue
                    feats = make_features(p, v, 1, zipf=target == "sparse-zipf")
                    if target == "dense":
                        if 2 * 20 * n * v > 0.7 * _free_bytes():
                            emit(f"| {n} | {k} | {str(dtype)[6:]} | dense | {v} | {p} | n/a (memory) "
                                 "| | | | | | | | |")
                            continue
                        ours_s, base_s = DenseState(n, v, device=DEVICE), DenseState(n, v, device=DEVICE)
                        ours = lambda: triton_dense.dense_select_accumulate(acts, k, [(feats[0], ours_s)])
                        base = lambda: torch_dense(acts, k, [(feats[0], base_s)])
                    else:
                        ours_s = SparseState(n, v, device=DEVICE)
                        # the user's version: sort-and-reduce runs, no hash table
                        base_s = SparseState(n, v, device=DEVICE, table=False)
                        ours = lambda: triton_sparse.sparse_select_accumulate(acts, k, [(feats[0], ours_s)])
                        base = lambda: torch_sparse(acts, k, [(feats[0], base_s)])
                    t_ours, t_base = bench(ours), bench(base)
                    # the sparse path reads the table's size back now and then: not capturable
                    t_dev = bench_graph(ours) if target == "dense" else None
                    bw = nbytes / (t_ours * 1e-3)
                    dev = "n/a | n/a" if t_dev is None else \
                        f"{t_dev:.3g} | {100 * nbytes / (t_dev * 1e-3) / copy_bw:.3g}%"
                    emit(f"| {n} | {k} | {str(dtype)[6:]} | {target} | {v} | {p} | {t_ours:.3g} | "
                         f"{p / t_ours / 1e3:.3g} | {p * k / t_ours / 1e6:.3g} | {bw / 1e9:.3g} | "
                         f"{100 * bw / copy_bw:.3g}% | {t_base:.3g} | {t_base / t_ours:.3g}x | {dev} |")
                    del ours_s, base_s
                    if DEVICE.type == "cuda":
                        torch.cuda.empty_cache()
    if skipped:
        emit(f"\n({skipped} rows skipped: past the --budget of {ARGS.budget:.0f} s)")
    emit(f"\n(at {time.perf_counter() - T0:.0f} s)\n")


def part2_sparse_events() -> None:
    """The sparse accumulation alone: a selection already made (``[P, k]``), added into a
    ``SparseState``'s hash table (``sparse_accumulate``), the issue's 'events/s' of the sparse
    path without the selection in front of it; against ``SparseState.add_events`` without a
    table (``torch.unique`` + ``index_add_``). The same block is added on every call, so after the
    first call every event lands on a cell the table holds (as most events of a long stream do)."""
    n = 40 if ARGS.smoke else 4096
    p = 64 if ARGS.smoke else 1 << 16
    emit(f"## Part 2b: sparse accumulation alone (N={n}, P={p}, V=50,000, selection given)")
    emit("")
    emit("| k | ids | events per call | ms | Gevents/s | torch ms | speed-up |")
    emit("|---|---|---|---|---|---|---|")
    acts = make_acts(p, n, torch.bfloat16)
    for k in (1, 8, 32):
        values, indices = triton_dense.select_topk(acts, k)
        for zipf in (False, True):
            if time.perf_counter() - T0 > ARGS.budget + 30:
                emit("(skipped: past the budget)")
                return
            feats = make_features(p, 50_000, 1, zipf=zipf)[0]
            ours_s = SparseState(n, 50_000, device=DEVICE)
            base_s = SparseState(n, 50_000, device=DEVICE, table=False)
            flat_f = feats[:, None].expand(p, k).reshape(-1)
            t_ours = bench(lambda: triton_sparse.sparse_accumulate(values, indices,
                                                                   [(feats, ours_s)]))
            t_base = bench(lambda: base_s.add_events(indices.reshape(-1), flat_f,
                                                     values.reshape(-1)))
            emit(f"| {k} | {'zipf' if zipf else 'uniform'} | {p * k} | {t_ours:.3g} | "
                 f"{p * k / t_ours / 1e6:.3g} | {t_base:.3g} | {t_base / t_ours:.3g}x |")
            del ours_s, base_s
    emit("")


# ------------------------------------------------------------------------------------------------
# part 3: tuning knobs at N = 4096
# ------------------------------------------------------------------------------------------------
def _fused(acts, k, targets, method="auto", mode="direct"):
    """``dense_select_accumulate``; ``method="argmax-fp32"``: argmax with ``ARGMAX_ROUNDS="fp32"``."""
    saved = triton_dense.ARGMAX_ROUNDS
    if method == "argmax-fp32":
        method, triton_dense.ARGMAX_ROUNDS = "argmax", "fp32"
    try:
        return triton_dense.dense_select_accumulate(acts, k, targets, method=method, mode=mode)
    finally:
        triton_dense.ARGMAX_ROUNDS = saved


def _device_time(fn) -> tuple[float, bool]:
    """``(ms, from a graph)``: the CUDA-graph replay time of ``fn`` (device time alone), else the
    whole call's."""
    t = bench_graph(fn)
    return (t, True) if t is not None else (bench(fn), False)


def _device_ms(fn) -> str:
    """:func:`_device_time` as table text (a whole call's time marked)."""
    t, graph = _device_time(fn)
    return f"{t:.3g}" if graph else f"{t:.3g} (call)"


PART3_METHODS = ("argmax", "argmax-fp32", "candidates", "threshold", "torch")


def part3() -> None:
    n = 40 if ARGS.smoke else 4096
    p = 32 if ARGS.smoke else 16384
    emit(f"## Part 3: methods and modes (N={n}, P={p}, bf16, dense V=17, 4 streams; device ms "
         "from CUDA-graph replays)")
    emit("")
    emit("| k | " + " | ".join(f"{m} ms" for m in PART3_METHODS) + " | auto ms (call) "
         "| partial ms (call, with flushes) |")
    emit("|---|" + "---|" * (len(PART3_METHODS) + 2))
    acts = make_acts(p, n, torch.bfloat16)
    feats = make_features(p, 17, 4)
    for k in (1, 8, 32) if ARGS.smoke else (1, 4, 8, 16, 32):
        if time.perf_counter() - T0 > ARGS.budget + 20:
            emit("(skipped: past the budget)")
            break
        states = [DenseState(n, 17, device=DEVICE) for _ in feats]
        tg = list(zip(feats, states))
        row = []
        for m in PART3_METHODS:
            try:
                row.append(_device_ms(lambda m=m: _fused(acts, k, tg, method=m)))
            except ValueError as e:  # a method that does not apply to this k
                row.append("n/a")
        row.append(f"{bench(lambda: triton_dense.dense_select_accumulate(acts, k, tg)):.3g}")

        def partial():
            triton_dense.dense_select_accumulate(acts, k, tg, mode="partial")
            triton_dense.flush()
        row.append(f"{bench(partial):.3g}")
        emit(f"| {k} | " + " | ".join(row) + " |")
    emit("")


# ------------------------------------------------------------------------------------------------
# part 4: the engine's own entry point
# ------------------------------------------------------------------------------------------------
def part4() -> None:
    """``Accumulator.observe`` on CUDA tensors (what ``collect`` runs per captured layer): checks
    of the ids, the selection (with the NaN/inf check), per-neuron totals and 3 streams, against the
    fused kernel alone on the same input."""
    n = 40 if ARGS.smoke else 4096
    p = 32 if ARGS.smoke else 8192
    emit(f"## Part 4: the engine path, Accumulator.observe (N={n}, P={p}, bf16, 3 streams: "
         "V=17 and 50,000 dense where it fits, 50,000 sparse)")
    emit("")
    emit("| k | kind | observe ms | Mtok/s | fused kernel ms (1 stream) | observe / fused |")
    emit("|---|---|---|---|---|---|")
    acts = make_acts(p, n, torch.bfloat16)
    streams = {"pos": [str(i) for i in range(17)], "token": [str(i) for i in range(50_000)],
               "pred": [str(i) for i in range(50_000)]}
    feats = dict(zip(streams, make_features(p, 50_000, 3)))
    feats["pos"] = feats["pos"] % 17
    for k, kind in _engine_cases():
        acc = Accumulator(streams, k=k, kind=kind, device=DEVICE)
        t_obs = bench(lambda: acc.observe("layer", acts, feats))
        one = DenseState(n, 17, device=DEVICE)
        t_fused = bench(lambda: triton_dense.dense_select_accumulate(acts, k, [(feats["pos"], one)]))
        emit(f"| {k} | {kind} | {t_obs:.3g} | {p / t_obs / 1e3:.3g} | {t_fused:.3g} | "
             f"{t_obs / t_fused:.3g}x |")
        del acc
    emit("")
    _part4_flags(acts)
    _part4_examples(acts, p)
    _part4_batch(acts, feats, streams, p)


def _part4_flags(acts) -> None:
    """What the engine's NaN/inf check costs: the selection alone, with the flags written by the
    selecting launch (``flags=``, the engine's path), and with a separate float32 row-sum pass
    (``reference.suspect_rows``, the engine's path before the flags were fused)."""
    emit("The selection's NaN/inf check (same input; ms of CUDA-graph replays: device time)")
    emit("")
    emit("| k | selection alone | + fused flags | + separate sum pass | fused / separate |")
    emit("|---|---|---|---|---|")
    flags = torch.empty(acts.shape[0], dtype=torch.int8, device=acts.device)
    for k in (1, 8):
        t_sel, _ = _device_time(lambda: triton_dense.select_topk(acts, k))
        t_fused, _ = _device_time(lambda: triton_dense.select_topk(acts, k, flags=flags))
        t_sep, _ = _device_time(lambda: (reference.suspect_rows(acts),
                                         triton_dense.select_topk(acts, k)))
        emit(f"| {k} | {t_sel:.3g} | {t_fused:.3g} | {t_sep:.3g} | {t_fused / t_sep:.2f} |")
    emit("")


def _part4_examples(acts, p) -> None:
    """What top examples (``--examples 8``) add per layer: ``TopExamples.update`` on the same
    bf16 block, 80% of its rows kept, once the lists are full (four other batches offered first;
    each timed call starts from those lists again), both CUDA ways, next to the selection of
    every row (k = 1)."""
    examples = importlib.import_module("txray_engine.accumulate.examples")
    n = acts.shape[1]
    rows = torch.arange(p, device=DEVICE)[torch.arange(p, device=DEVICE) % 5 != 0]
    ctx = torch.zeros(rows.numel(), 11, dtype=torch.long, device=DEVICE)
    ex = examples.TopExamples(n, 8, 11, DEVICE)
    for seed in range(4):
        ex.update(make_acts(p, n, torch.bfloat16, seed=100 + seed), rows, rows, ctx, rows=rows)
    full = [t.clone() for t in (ex.value, ex.doc, ex.pos, ex.context)]

    def offer():
        ex.value, ex.doc, ex.pos, ex.context = (t.clone() for t in full)
        ex.update(acts, rows, rows, ctx, rows=rows)

    def restore_only():
        ex.value, ex.doc, ex.pos, ex.context = (t.clone() for t in full)

    saved = examples.CUDA_SCAN
    times = {}
    try:
        for scan in (False, True):
            examples.CUDA_SCAN = scan
            times[scan] = bench(offer)
    finally:
        examples.CUDA_SCAN = saved
    t_restore, t_sel = bench(restore_only), bench(lambda: triton_dense.select_topk(acts, 1))
    emit(f"Top examples, m = 8, per layer once the lists are full (whole calls, ms, each with a "
         f"copy of the lists: {t_restore:.3g}): keys {times[False]:.3g}, scan {times[True]:.3g}; "
         f"selection of every row at k = 1: {t_sel:.3g}")
    emit("")


def _engine_cases():
    """Part 4's ``(k, state kind)`` rows, while the time budget lasts."""
    for k in (1, 8):
        for kind in ("dense", "sparse"):
            if time.perf_counter() - T0 > ARGS.budget + 60:
                emit("(skipped: past the budget)")
                return
            yield k, kind


def _part4_batch(acts, feats, streams, p, layers=8) -> None:
    """The collector's form: the layers of one forward pass, with a padding mask (20% of the
    positions), prepared together (``prepare_batch``: positions kept and checked once, one
    read-back) against one ``observe`` per layer."""
    emit(f"{layers} layers of one batch (same input per layer), 20% of the positions masked; ms "
         "per layer")
    emit("")
    emit("| k | kind | observe per layer | prepare_batch + commit | speed-up | of which prepare "
         "| of which commit |")
    emit("|---|---|---|---|---|---|---|")
    mask = torch.arange(p, device=DEVICE) % 5 != 0
    batch = {f"layer{i}": acts for i in range(layers)}
    for k, kind in _engine_cases():
        one = Accumulator(streams, k=k, kind=kind, device=DEVICE)
        many = Accumulator(streams, k=k, kind=kind, device=DEVICE)

        def per_layer():
            for name, a in batch.items():
                one.observe(name, a, feats, mask)

        def together():
            for prepared in many.prepare_batch(batch, feats, mask):
                many.commit(prepared)

        t_one, t_many = bench(per_layer) / layers, bench(together) / layers
        prepared = many.prepare_batch(batch, feats, mask)  # where the time goes

        def commit_only():
            for q in prepared:
                many.commit(q)

        t_prep = bench(lambda: many.prepare_batch(batch, feats, mask)) / layers
        t_commit = bench(commit_only) / layers
        emit(f"| {k} | {kind} | {t_one:.3g} | {t_many:.3g} | {t_one / t_many:.3g}x | "
             f"{t_prep:.3g} | {t_commit:.3g} |")
        del one, many
    emit("")


# ------------------------------------------------------------------------------------------------
# part 5 (--sweep): launch shapes of the fused kernel
# ------------------------------------------------------------------------------------------------
#: (tile elements, elements per thread, row groups): one of triton_dense.LAUNCH_SHAPES' values
SHAPE_GRID = [(4096, 16, 4), (8192, 32, 4), (16384, 32, 4), (16384, 64, 4), (16384, 64, 8),
              (16384, 128, 4)]


def part5() -> bool:
    """Time each launch shape, and check its selection against the reference (so any of them
    can be made the default)."""
    emit("## Part 5: launch shapes (bf16, dense V=17, 1 stream; device ms from CUDA-graph "
         "replays, lower is better; tile / per thread / groups)")
    emit("")
    emit("| N | k | " + " | ".join(f"{t} / {e} / {g}" for t, e, g in SHAPE_GRID) + " |")
    emit("|---|---|" + "---|" * len(SHAPE_GRID))
    saved = dict(triton_dense.LAUNCH_SHAPES)
    ok = True
    try:
        for n in ([16, 40] if ARGS.smoke else [1024, 4096, 16384]):
            p = 32 if ARGS.smoke else BLOCK_ELEMS // n
            acts = make_acts(p, n, torch.bfloat16)
            feats = make_features(p, 17, 1)
            for k, method in ((1, "argmax"), (1, "candidates"), (8, "candidates"),
                              (16, "candidates"), (32, "candidates"), (32, "threshold")):
                if time.perf_counter() - T0 > ARGS.budget + 120:
                    emit("(skipped: past the budget)")
                    return ok
                if k > n or (method == "candidates" and
                             triton_dense._candidate_chunk(triton_dense._next_pow2(n), k) is None):
                    continue
                ref_v, ref_i = reference.select_topk(acts.float(), k)
                state = DenseState(n, 17, device=DEVICE)
                row = []
                for shape in SHAPE_GRID:
                    triton_dense.LAUNCH_SHAPES.update({m: shape for m in saved})
                    v, i = triton_dense.dense_select_accumulate(acts, k, [(feats[0], state)],
                                                                method=method)
                    good = torch.equal(torch.sort(i, 1).values, torch.sort(ref_i, 1).values) and \
                        torch.equal(torch.sort(v, 1).values, torch.sort(ref_v, 1).values)
                    ok &= good
                    t = _device_ms(lambda: triton_dense.dense_select_accumulate(
                        acts, k, [(feats[0], state)], method=method))
                    row.append(t + ("" if good else " WRONG"))
                emit(f"| {n} | {k} {method} | " + " | ".join(row) + " |")
    finally:
        triton_dense.LAUNCH_SHAPES.update(saved)
    emit("")
    return ok & _part5_breakdown()


def _part5_breakdown() -> bool:
    """Where the candidates selection's time goes at the dense target's rows (bf16, k = 1 and 8):
    the selection alone (no stream), with 1 and 4 streams of scatter, and at each candidate chunk
    width (the default takes 32 where the row allows), each checked against the reference."""
    n = 40 if ARGS.smoke else 4096
    p = 32 if ARGS.smoke else BLOCK_ELEMS // n
    widths = (4, 8) if ARGS.smoke else (8, 16, 32)
    emit(f"Candidates at N={n}, P={p}, bf16, V=17: device ms by streams scattered and by chunk "
         f"width (default shapes)")
    emit("")
    emit("| k | chunk | no stream (selection alone) | 1 stream | 4 streams |")
    emit("|---|---|---|---|---|")
    acts = make_acts(p, n, torch.bfloat16)
    feats = make_features(p, 17, 4)
    pick = triton_dense._candidate_chunk
    ok = True
    try:
        for k in (1, 8):
            _, ref_i = reference.select_topk(acts.float(), k)
            for cm in widths:
                if time.perf_counter() - T0 > ARGS.budget + 150:
                    emit("(skipped: past the budget)")
                    return ok
                if pick(triton_dense._next_pow2(n), k) is None or \
                        triton_dense._next_pow2(n) // cm < 4 * triton_dense._next_pow2(k):
                    continue
                triton_dense._candidate_chunk = lambda block_n, kk, cm=cm: \
                    cm if pick(block_n, kk) is not None else None
                row = []
                for streams in (0, 1, 4):
                    states = [DenseState(n, 17, device=DEVICE) for _ in range(streams)]
                    targets = list(zip(feats[:streams], states))
                    _, i = triton_dense.dense_select_accumulate(acts, k, targets,
                                                                method="candidates")
                    good = torch.equal(torch.sort(i, 1).values, torch.sort(ref_i, 1).values)
                    ok &= good
                    row.append(_device_ms(lambda: triton_dense.dense_select_accumulate(
                        acts, k, targets, method="candidates")) + ("" if good else " WRONG"))
                emit(f"| {k} | {cm} | " + " | ".join(row) + " |")
    finally:
        triton_dense._candidate_chunk = pick
    emit("")
    return ok


def main() -> int:
    emit(f"# gpu_check ({'smoke, ' if ARGS.smoke else ''}{DEVICE})")
    emit("")
    ok = part1()
    part2()
    part2_sparse_events()
    part3()
    part4()
    if ARGS.sweep:
        ok &= part5()
    emit(f"Part 1: {'ALL PASS' if ok else 'FAILURES (see above)'}; total {time.perf_counter() - T0:.0f} s")
    if ARGS.out:
        Path(ARGS.out).write_text("\n".join(LINES) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
