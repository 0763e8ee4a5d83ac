"""Part 5 of ``gpu_check`` (``--sweep``): the fused kernel's launch shapes, each timed and checked
against the reference, and where the candidates selection's time goes."""

from __future__ import annotations

import time

import torch

from .common import (ARGS, BLOCK_ELEMS, DEVICE, T0, DenseState, device_ms, device_time, emit,
                     kernel_settings, make_acts, make_features, reference, triton_dense)

#: (tile elements, elements per thread, row groups, fewest warps): one of
#: triton_dense.LAUNCH_SHAPES' values, the 2-byte candidates' default first. Rows of N = 4096:
#: one row per warp in the first three (its reductions are shuffles, no barrier); the second
#: without the next group's tile in registers (no prefetch: 62 registers instead of 146 at k = 8
#: for sm_90, 32 resident warps per SM instead of 12, ``benchmarks/kernel_resources.py``); the
#: fourth takes 2 warps at 256 elements per thread, the fifth 4 rows over 4 warps.
SHAPE_GRID = [(2048, 128, 4, 1), (2048, 128, 1, 1), (4096, 128, 4, 1), (16384, 256, 4, 1),
              (16384, 128, 4, 4), (2048, 128, 2, 1)]
#: (k, method, ROUND_SCATTER, dtype, keys of the argmax rounds: "int64", or "int32" for
#: triton_dense.KEYS_16BIT) rows of the grid at every N
SWEEP_ROWS = [(1, "candidates", "per_round", torch.bfloat16, "int64"),
              (1, "candidates", "per_round", torch.bfloat16, "int32"),
              (8, "candidates", "batched", torch.bfloat16, "int64"),
              (8, "candidates", "batched", torch.bfloat16, "int32"),
              (16, "candidates", "batched", torch.bfloat16, "int64"),
              (16, "candidates", "batched", torch.bfloat16, "int32"),
              (32, "threshold", "per_round", torch.bfloat16, "int64"),
              (32, "threshold", "per_round", torch.bfloat16, "int32"),
              (32, "candidates", "batched", torch.bfloat16, "int64"),
              (32, "candidates", "batched", torch.bfloat16, "int32"),
              (8, "candidates", "batched", torch.float32, "int64")]
#: (N, k, chunk width, ROUND_SCATTER, keys) rows of the candidates breakdown
BREAKDOWN_ROWS = [(4096, 1, 32, "per_round", "int64"), (4096, 1, 32, "per_round", "int32"),
                  (4096, 8, 16, "batched", "int64"), (4096, 8, 16, "batched", "int32"),
                  (4096, 8, 32, "batched", "int32"), (4096, 16, 16, "batched", "int32")]
SMOKE_BREAKDOWN_ROWS = [(40, 1, 4, "per_round", "int64"), (40, 8, 4, "per_round", "int32"),
                        (40, 8, 8, "batched", "int32")]
KEYS = {"int64": False, "int32": True}  # -> triton_dense.KEYS_16BIT


def _rows(spec: str, default, types, sep=":", last=None):
    """``--sweep-rows`` / ``--breakdown`` / ``--shapes``: ``sep``-separated fields per row,
    commas between rows; ``last``: the value of an optional last field (the keys)."""
    if not spec:
        return default
    rows = []
    for row in spec.split(","):
        fields = row.split(sep)
        if last is not None and len(fields) == len(types) - 1:
            fields.append(last)
        if len(fields) != len(types):
            raise SystemExit(f"error: {row!r} needs {len(types)} fields separated by {sep!r}")
        rows.append(tuple(t(v) for t, v in zip(types, fields)))
    return rows


def _label(shape) -> str:
    return " / ".join(str(v) for v in shape)


def _same_rows(indices, ref_indices) -> bool:
    """Whether every row selected the reference's neurons (in any order)."""
    return torch.equal(torch.sort(indices, 1).values, torch.sort(ref_indices, 1).values)


def part5() -> bool:
    """Time each launch shape, and check its selection against the reference (so any of them
    can be made the default)."""
    emit("## Part 5: launch shapes (dense V=17, 1 stream; device ms from CUDA-graph replays, "
         "lower is better; tile / per thread / groups / fewest warps)")
    emit("")
    try:
        grid = [triton_dense.check_launch_shape(s) for s in
                _rows(ARGS.shapes, SHAPE_GRID, (int,) * 4, "/")]
    except ValueError as err:
        raise SystemExit(f"error: --shapes: {err}") from None
    emit("| N | k | method | winners | dtype | keys | " + " | ".join(_label(s) for s in grid)
         + " |")
    emit("|---|---|---|---|---|---|" + "---|" * len(grid))
    ok = True
    with kernel_settings() as saved:
        best = (float("inf"), saved[0]["candidates", 2])  # k = 8, bf16, default scatter, N = 4096
        for n in ([16, 40] if ARGS.smoke else [int(v) for v in ARGS.sweep_n.split(",")]):
            p = 32 if ARGS.smoke else BLOCK_ELEMS // n
            feats = make_features(p, 17, 1)
            for k, method, scatter, dtype, keys in _rows(
                    ARGS.sweep_rows, SWEEP_ROWS, (int, str, str, lambda d: getattr(torch, d), str),
                    last="int64"):
                if time.perf_counter() - T0 > ARGS.budget + 120:
                    emit("(skipped: past the budget)")
                    return ok  # (the settings are restored on the way out)
                if k > n or (method == "candidates" and
                             triton_dense._candidate_chunk(triton_dense._next_pow2(n), k) is None):
                    continue
                acts = make_acts(p, n, dtype)
                ref_v, ref_i = reference.select_topk(acts.float(), k)
                state = DenseState(n, 17, device=DEVICE)
                triton_dense.ROUND_SCATTER = scatter
                triton_dense.KEYS_16BIT = KEYS[keys]
                row = []
                for shape in grid:
                    triton_dense.LAUNCH_SHAPES.update({m: shape for m in saved[0]})
                    v, i = triton_dense.dense_select_accumulate(acts, k, [(feats[0], state)],
                                                                method=method)
                    good = _same_rows(i, ref_i) and \
                        torch.equal(torch.sort(v, 1).values, torch.sort(ref_v, 1).values)
                    ok &= good
                    t, graph = device_time(lambda: triton_dense.dense_select_accumulate(
                        acts, k, [(feats[0], state)], method=method))
                    if good and (k, scatter, dtype, n, KEYS[keys]) == (
                            8, saved[1], torch.bfloat16, 40 if ARGS.smoke else 4096, saved[3]):
                        best = min(best, (t, shape))
                    row.append(f"{t:.3g}" + ("" if graph else " (call)") + ("" if good else " WRONG"))
                emit(f"| {n} | {k} | {method} | {scatter} | {str(dtype)[6:]} | {keys} | "
                     + " | ".join(row) + " |")
    emit("")
    return ok & _part5_breakdown(best[1])


def _part5_breakdown(shape) -> bool:
    """Where the candidates selection's time goes at the dense target's rows (bf16) under launch
    ``shape``: the selection alone (no stream), with 1 and 4 streams of scatter, by candidate
    chunk width (the default: ``triton_dense.CANDIDATE_WIDTH``), by how the rounds hand their
    winners to the scatter and by the width of their keys, each checked against the reference."""
    rows = _rows(ARGS.breakdown, SMOKE_BREAKDOWN_ROWS if ARGS.smoke else BREAKDOWN_ROWS,
                 (int, int, int, str, str), last="int64")
    emit(f"Candidates, bf16, V=17, {BLOCK_ELEMS if not ARGS.smoke else 'few'} activations per "
         f"call, launch shape {_label(shape)}: device ms by streams scattered, chunk width and "
         f"winners' scatter")
    emit("")
    emit("| N | k | chunk | winners | keys | no stream (selection alone) | 1 stream | 4 streams |")
    emit("|---|---|---|---|---|---|---|---|")
    inputs = {}
    ok = True
    with kernel_settings() as saved:
        triton_dense.LAUNCH_SHAPES.update({m: shape for m in saved[0]})
        for n, k, cm, scatter, keys in rows:
            if time.perf_counter() - T0 > ARGS.budget + 150:
                emit("(skipped: past the budget)")
                return ok
            block_n = triton_dense._next_pow2(n)
            if block_n > triton_dense.MAX_FUSED_BLOCK_N or \
                    triton_dense._candidate_chunk(block_n, k) is None or \
                    block_n // cm < 4 * triton_dense._next_pow2(k):
                continue  # (no fused tile, candidates do not apply, or too few chunks of cm)
            if n not in inputs:
                p = 32 if ARGS.smoke else BLOCK_ELEMS // n
                inputs.clear()
                inputs[n] = make_acts(p, n, torch.bfloat16), make_features(p, 17, 4)
            acts, feats = inputs[n]
            _, ref_i = reference.select_topk(acts.float(), k)
            triton_dense.CANDIDATE_WIDTH = (cm, cm)  # exactly cm: 4 k chunks of cm fit the row
            triton_dense.ROUND_SCATTER = scatter
            triton_dense.KEYS_16BIT = KEYS[keys]
            row = []
            for streams in (0, 1, 4):
                states = [DenseState(n, 17, device=DEVICE) for _ in range(streams)]
                targets = list(zip(feats[:streams], states))
                _, i = triton_dense.dense_select_accumulate(acts, k, targets, method="candidates")
                good = _same_rows(i, ref_i)
                ok &= good
                row.append(device_ms(lambda: triton_dense.dense_select_accumulate(
                    acts, k, targets, method="candidates")) + ("" if good else " WRONG"))
            emit(f"| {n} | {k} | {cm} | {scatter} | {keys} | " + " | ".join(row) + " |")
    emit("")
    return ok
