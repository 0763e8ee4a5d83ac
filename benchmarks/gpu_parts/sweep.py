"""Part 5 of ``gpu_check`` (``--sweep``): the fused kernel's launch shapes, each timed and checked
against the reference, and where the candidates selection's time goes."""

from __future__ import annotations

import time

import torch

from .common import (ARGS, BLOCK_ELEMS, DEVICE, T0, DenseState, device_ms, emit, make_acts,
                     make_features, reference, triton_dense)

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
                    t = device_ms(lambda: triton_dense.dense_select_accumulate(
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
                    row.append(device_ms(lambda: triton_dense.dense_select_accumulate(
                        acts, k, targets, method="candidates")) + ("" if good else " WRONG"))
                emit(f"| {k} | {cm} | " + " | ".join(row) + " |")
    finally:
        triton_dense._candidate_chunk = pick
    emit("")
    return ok
