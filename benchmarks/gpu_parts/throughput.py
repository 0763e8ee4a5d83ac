"""Parts 2, 2b and 3 of ``gpu_check``: throughput of the fused kernels against torch-native
versions and the device's copy bandwidth, the sparse accumulation alone, and the selection methods
and accumulation modes at N = 4096."""

from __future__ import annotations

import time

import torch
import triton

from .common import (ARGS, BLOCK_ELEMS, DEVICE, T0, DenseState, SparseState, bench, bench_graph,
                     device_ms, emit, free_bytes, make_acts, make_features, triton_dense,
                     triton_sparse)

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
                        if 2 * 20 * n * v > 0.7 * free_bytes():
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


# -- part 3: tuning knobs at N = 4096 ---------------------------------------------------------------
def _fused(acts, k, targets, method="auto", mode="direct"):
    """``dense_select_accumulate``; ``method="argmax-fp32"``: argmax with ``ARGMAX_ROUNDS="fp32"``."""
    saved = triton_dense.ARGMAX_ROUNDS
    if method == "argmax-fp32":
        method, triton_dense.ARGMAX_ROUNDS = "argmax", "fp32"
    try:
        return triton_dense.dense_select_accumulate(acts, k, targets, method=method, mode=mode)
    finally:
        triton_dense.ARGMAX_ROUNDS = saved


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
                row.append(device_ms(lambda m=m: _fused(acts, k, tg, method=m)))
            except ValueError as e:  # a method that does not apply to this k
                row.append("n/a")
        row.append(f"{bench(lambda: triton_dense.dense_select_accumulate(acts, k, tg)):.3g}")

        def partial():
            triton_dense.dense_select_accumulate(acts, k, tg, mode="partial")
            triton_dense.flush()
        row.append(f"{bench(partial):.3g}")
        emit(f"| {k} | " + " | ".join(row) + " |")
    emit("")
