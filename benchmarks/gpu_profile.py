"""One fused select + scatter launch for a profiler (``ncu``), after a warm-up call::

    ncu --clock-control none -k regex:_select_scatter --launch-skip 1 --launch-count 1 \\
        python benchmarks/gpu_profile.py --n 4096 --k 8 --dtype bfloat16

The same input as ``gpu_check.py`` Part 2 (P = 2**26 / N rows of random activations, one dense
stream of V = 17), so the profile explains that table's row. Needs CUDA, torch and triton.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]  # runnable without installing
from txray_kernels import triton_dense  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="neurons per row")
    ap.add_argument("--k", type=int, default=1, help="neurons kept per row")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--method", default="auto",
                    choices=["auto", "argmax", "candidates", "threshold", "torch"],
                    help="selection method (see txray_kernels.triton_dense)")
    ap.add_argument("--rounds", default=triton_dense.ARGMAX_ROUNDS, choices=["int64", "fp32"],
                    help="ARGMAX_ROUNDS of the argmax selection")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    triton_dense.ARGMAX_ROUNDS = args.rounds
    p, n, v = max(1024, (1 << 26) // args.n), args.n, 17
    acts = torch.randn(p, n, device="cuda").to(getattr(torch, args.dtype))
    feats = torch.randint(0, v, (p,), device="cuda")
    count = torch.zeros(n * v, dtype=torch.int64, device="cuda")
    state = type("State", (), {"n_neurons": n, "n_features": v, "count": count,
                               "mass": torch.zeros(n * v, dtype=torch.float64, device="cuda"),
                               "peak": torch.full((n * v,), -torch.inf, device="cuda")})()
    for _ in range(2):  # the first call compiles (and is skipped by --launch-skip 1)
        triton_dense.dense_select_accumulate(acts, args.k, [(feats, state)], method=args.method)
    torch.cuda.synchronize()
    print(f"P={p} N={n} k={args.k} {args.dtype} method={args.method} rounds={args.rounds}: "
          f"{int(count.sum())} events")


if __name__ == "__main__":
    main()
