"""One GPU check of the Triton hot path: correctness against the torch reference, then throughput.

Run on a CUDA machine (finishes in under 4 minutes; needs torch + triton, not zarr)::

    python benchmarks/gpu_check.py [--out results.md] [--sweep] [--parts 1,2b,4]
        [--launch-shapes candidates:2=2048/128/1/1] [--candidate-width 32,8]

or on the CPU through the Triton interpreter, with tiny shapes (under a minute)::

    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --smoke

Part 1 prints PASS/FAIL per case (the kernels against ``txray_kernels.reference`` on the same device).
Part 2 prints, for N in {1024, 4096, 16384}, k in {1, 8, 32}, bf16 and fp32: the fused dense kernel
(V = 17, and V = 50,000 where two states fit in memory) and the sparse path (V = 50,000, ids
uniform, and for bf16 also Zipf-distributed as word types in text), 2**26 activations per call: tokens/s,
GB/s of activations read, that bandwidth as a % of the device-to-device copy bandwidth of the same
tensor measured in the same run (``dst.copy_(acts)``, counted as read + write), and the speed-up over
a torch-native version written the way a user would (``torch.topk`` + ``index_put_(accumulate=True)``
+ ``scatter_reduce_`` for dense; ``torch.topk`` + ``SparseState.add_events``, i.e. ``torch.unique`` +
``index_add_``, for sparse). Part 2b times the sparse accumulation alone (a selection given: the
issue's sparse events/s without the selection in front). Part 3 compares the selection methods and the accumulation modes at
N = 4096. Part 4 times the engine's entry points (``observe``, ``prepare_batch`` + ``commit``, top
examples) and shows where their host time goes: the lines that wait for the device (CUDA's sync
debug mode), the operators and runtime calls of most host time (``torch.profiler``) and the Python
functions of most own time (cProfile). Times: ``triton.testing.do_bench`` (median ms) of the whole Python call, and for dense
rows also of its CUDA-graph replay (the device time alone: at ~0.1 ms per call the host's launch
path is most of the call); on the CPU a plain timer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gpu_parts.common import (ARGS, DEVICE, LINES, T0, emit,  # parses the arguments first
                              set_candidate_width, set_launch_shapes)
from gpu_parts.correctness import part1
from gpu_parts.engine import part4
from gpu_parts.sweep import part5
from gpu_parts.throughput import part2, part2_sparse_events, part3


def main() -> int:
    parts = {part.strip() for part in ARGS.parts.split(",") if part.strip()}
    unknown = parts - {"1", "2", "2b", "3", "4"}
    if unknown:
        sys.exit(f"--parts: unknown part(s) {', '.join(sorted(unknown))} (choose from 1,2,2b,3,4)")
    shapes = set_launch_shapes(ARGS.launch_shapes)
    width = set_candidate_width(ARGS.candidate_width)
    emit(f"# gpu_check ({'smoke, ' if ARGS.smoke else ''}{DEVICE})")
    emit("")
    if shapes:
        emit(f"Launch shapes set for this run: {', '.join(shapes)}")
        emit("")
    if width:
        emit(f"Candidate width set for this run: {width}")
        emit("")
    ok = part1() if "1" in parts else True
    for name, part in (("2", part2), ("2b", part2_sparse_events), ("3", part3), ("4", part4)):
        if name in parts:
            part()
    if ARGS.sweep:
        ok &= part5()
    emit(f"Part 1: {'ALL PASS' if ok else 'FAILURES (see above)'}; total {time.perf_counter() - T0:.0f} s")
    if ARGS.out:
        Path(ARGS.out).write_text("\n".join(LINES) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
