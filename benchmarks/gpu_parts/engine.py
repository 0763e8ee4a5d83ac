"""Part 4 of ``gpu_check``: the engine's own entry points on the device (``observe``,
``prepare_batch`` + ``commit``), the selection's NaN/inf check, and top examples."""

from __future__ import annotations

import collections
import cProfile
import importlib
import os
import pstats
import time
import warnings

import torch

from .common import (ARGS, DEVICE, ROOT, T0, Accumulator, DenseState, bench, device_time, emit,
                     make_acts, make_features, reference, sync, triton_dense, triton_examples)

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
    _part4_positions(feats["token"])
    _part4_host(acts, feats, streams, p)


def _part4_positions(ids, calls=200) -> None:
    """What counting a layer's positions costs per stream, host and device together (wall time
    of ``calls`` calls, one sync at the end): an ``index_put_(accumulate=True)`` of the
    positions' bins (the commit up to 1cac9f7; a sort on CUDA), against one ``add_`` of the
    batch's position counts (the commit since), and the counts themselves (once per batch)."""
    state_mod = importlib.import_module("txray_engine.accumulate.state")
    emit(f"Counting positions per layer and stream ({ids.numel()} positions; us per call, wall "
         f"time of {calls} calls)")
    emit("")
    emit("| V | index_put_ of the bins | add_ of the counts | counts (per batch) |")
    emit("|---|---|---|---|")

    def wall(fn) -> float:
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - t) / calls * 1e6

    for v in (17, 50_000):
        f = ids % v
        bins = state_mod.position_bins(f, v)
        counts = state_mod.position_counts(f, v)
        target = torch.zeros(v + 2, dtype=torch.int64, device=DEVICE)
        one = torch.ones(1, dtype=torch.int64, device=DEVICE)
        t_put = wall(lambda: target.index_put_((bins,), one, accumulate=True))
        t_add = wall(lambda: target.add_(counts))
        t_counts = wall(lambda: state_mod.position_counts(f, v))
        emit(f"| {v} | {t_put:.3g} | {t_add:.3g} | {t_counts:.3g} |")
    emit("")


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
        t_sel, _ = device_time(lambda: triton_dense.select_topk(acts, k))
        t_fused, _ = device_time(lambda: triton_dense.select_topk(acts, k, flags=flags))
        t_sep, _ = device_time(lambda: (reference.suspect_rows(acts),
                                         triton_dense.select_topk(acts, k)))
        emit(f"| {k} | {t_sel:.3g} | {t_fused:.3g} | {t_sep:.3g} | {t_fused / t_sep:.2f} |")
    emit("")


def _part4_examples(acts, p) -> None:
    """What top examples (``--examples 8``) add per layer: ``TopExamples.update`` on the same
    bf16 block, 80% of its rows kept, once the lists are full (four other batches offered first;
    each timed call starts from those lists again), both CUDA ways, next to the selection of
    every row (k = 1); and the first way's batch step alone, the Triton kernel against its torch
    reference (``topk`` of int64 keys down every column)."""
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
         f"copy of the lists: {t_restore:.3g}): best rows {times[False]:.3g}, scan "
         f"{times[True]:.3g}; selection of every row at k = 1: {t_sel:.3g}")
    emit("")
    _part4_best_rows(acts, full[0][:, -1], rows)


def _part4_best_rows(acts, floor, rows) -> None:
    """The best rows alone (``txray_kernels.triton_examples`` against its torch reference, ``topk`` of
    int64 keys down every column), bf16, every 5th row left out: for empty lists (the first
    batch: every row can enter) and full ones (after four batches)."""
    emit("The best rows alone (top examples' batch step on CUDA), ms, bf16, 80% of the rows offered")
    emit("")
    emit("| N | P | m | lists | Triton | torch keys | speed-up | act GB/s (Triton) |")
    emit("|---|---|---|---|---|---|---|---|")
    cases = [(acts, floor, rows, 8)]
    if not ARGS.smoke:
        for n, p, m in ((16384, 4096, 8), (16384, 4096, 64)):
            big = make_acts(p, n, torch.bfloat16, seed=7)
            keep = torch.arange(p, device=DEVICE)[torch.arange(p, device=DEVICE) % 5 != 0]
            lists = triton_examples.best_rows_above(make_acts(4 * p, n, torch.bfloat16, seed=8),
                                                    torch.full((n,), -torch.inf, device=DEVICE), m)
            cases.append((big, lists[0][:, -1].contiguous(), keep, m))
    cases = [(x, keep, m, label, fl) for x, full_floor, keep, m in cases
             for label, fl in (("empty", torch.full_like(full_floor, -torch.inf)),
                               ("full", full_floor))]
    for x, keep, m, label, fl in cases:
        if time.perf_counter() - T0 > ARGS.budget + 60:
            emit("(skipped: past the budget)")
            return
        t_k = bench(lambda: triton_examples.best_rows_above(x, fl, m, keep))
        t_r = bench(lambda: reference.best_rows_above(x, fl, m, keep))
        gbs = keep.numel() * x.shape[1] * x.element_size() / t_k / 1e6
        emit(f"| {x.shape[1]} | {keep.numel()} | {m} | {label} | {t_k:.3g} | {t_r:.3g} | "
             f"{t_r / t_k:.3g}x | {gbs:.3g} |")
    emit("")
    _part4_best_rows_shapes(cases)


def _part4_best_rows_shapes(cases) -> None:
    """The best rows' launch shapes (``triton_examples.LAUNCH_VARIANTS``: columns per program,
    rows per tile, warps) on Part 4's cases, each result checked against the reference."""
    emit("The best rows by launch shape (columns / tile rows / warps; ms, lower is better; "
         "each result checked against the reference)")
    emit("")
    variants = triton_examples.LAUNCH_VARIANTS
    emit("| N | m | lists | " + " | ".join("/".join(map(str, v)) for v in variants) + " |")
    emit("|---|---|---|" + "---|" * len(variants))
    saved = triton_examples.LAUNCH
    try:
        for x, keep, m, label, fl in cases:
            if time.perf_counter() - T0 > ARGS.budget + 90:
                emit("(skipped: past the budget)")
                return
            want = reference.best_rows_above(x, fl, m, keep)
            cells = []
            for variant in variants:
                triton_examples.LAUNCH = variant
                got = triton_examples.best_rows_above(x, fl, m, keep)
                same = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
                t = bench(lambda: triton_examples.best_rows_above(x, fl, m, keep))
                cells.append(f"{t:.3g}" if same else "WRONG")
            emit(f"| {x.shape[1]} | {m} | {label} | " + " | ".join(cells) + " |")
    finally:
        triton_examples.LAUNCH = saved
    emit("")


def _engine_cases(ks=(1, 8)):
    """Part 4's ``(k, state kind)`` rows, while the time budget lasts."""
    for k in ks:
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


def _part4_host(acts, feats, streams, p, layers=8) -> None:
    """Where the host's time goes in ``prepare_batch`` + ``commit`` of one batch (k = 8, the
    kinds of :func:`_engine_cases`): the lines that make the host wait for the device (CUDA's
    sync debug mode, one warning per synchronizing call, grouped by the engine's line that made
    it), and the operators and runtime calls of most host time (``torch.profiler``)."""
    mask = torch.arange(p, device=DEVICE) % 5 != 0
    batch = {f"layer{i}": acts for i in range(layers)}
    for k, kind in _engine_cases(ks=(8,)):
        acc = Accumulator(streams, k=k, kind=kind, device=DEVICE)

        def together():
            for prepared in acc.prepare_batch(batch, feats, mask):
                acc.commit(prepared)

        for _ in range(3):  # compile, allocate, grow the tables
            together()
        waits = collections.Counter()
        if DEVICE.type == "cuda":
            sync()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    together()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            for w in caught:
                waits[f"{_where(w.filename)}:{w.lineno}"] += 1
        emit(f"Host time of prepare_batch + commit, k = {k}, {kind}, {layers} layers: waits for "
             f"the device (CUDA sync debug mode, by calling line): "
             + (", ".join(f"{line} x{n}" for line, n in waits.most_common()) or
                ("none" if DEVICE.type == "cuda" else "n/a on the CPU")))
        emit("")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if DEVICE.type == "cuda":  # the runtime and driver calls (launches, copies, syncs)
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            together()
            sync()
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        emit("| operator or runtime call | calls | self host ms | per call us |")
        emit("|---|---|---|---|")
        for e in rows[:14]:
            emit(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e3:.3g} | "
                 f"{e.self_cpu_time_total / max(1, e.count):.3g} |")
        emit("")
        _python_time(together)
        del acc


def _where(file: str) -> str:
    """A source file as the tables name it: relative to the project, else its last two parts."""
    return os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else \
        "/".join(file.split("/")[-2:])


def _python_time(fn, top=12) -> None:
    """The Python functions of most own time in ``fn`` (cProfile): the engine's code against
    Triton's launcher and torch's bindings."""
    profile = cProfile.Profile()
    profile.enable()
    fn()
    sync()
    profile.disable()
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, ...)}
    total = sum(v[2] for v in stats.values())
    emit(f"Python functions by own time (cProfile, {1e3 * total:.3g} ms in all, profiled):")
    emit("")
    emit("| function | calls | own ms | cumulative ms |")
    emit("|---|---|---|---|")
    for (file, line, name), (_, calls, own, cum, _) in sorted(
            stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]:
        emit(f"| {_where(file)}:{line} {name} | {calls} | {1e3 * own:.3g} | {1e3 * cum:.3g} |")
    emit("")
