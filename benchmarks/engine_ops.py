"""Operators the engine's CUDA path runs per layer, counted on the CPU through the Triton
interpreter (``TRITON_INTERPRET=1``): ``Accumulator.prepare_batch`` and ``commit`` of a masked
batch, with the dispatch forced down the CUDA branch. On a GPU each torch operator that computes
is a kernel launch (a few microseconds of host time each), so for the small per-layer work of a
collection run the count is what the host pays. Views and allocations are listed apart (no
launch); the Triton interpreter's own operators are not counted. ``--sparse`` makes the token
and predicted-token streams sparse states with the GPU's persistent hash table (as a wide
vocabulary would on a GPU).

    TRITON_INTERPRET=1 python benchmarks/engine_ops.py [--layers 6] [--k 1] [--sparse]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from kernels import triton_dense, triton_sparse  # noqa: E402
from txray_engine.accumulate import Accumulator, SparseState  # noqa: E402
from txray_engine.accumulate.layer import LayerState  # noqa: E402

#: Operators that launch nothing on a GPU (metadata, or the caching allocator).
NO_LAUNCH = {"view", "detach", "slice", "squeeze", "unsqueeze", "expand", "empty", "alias",
             "_unsafe_view", "as_strided", "select", "t", "transpose", "reshape"}


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _paused(counter, launches, name, fn):
    """``fn`` with the counter paused (the interpreter runs the kernel with torch operators)."""
    def run(*args, **kwargs):
        launches[name] += 1
        counter.paused += 1
        try:
            return fn(*args, **kwargs)
        finally:
            counter.paused -= 1
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--sparse", action="store_true",
                        help="token and predicted streams in sparse states (GPU hash tables)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("error: run with TRITON_INTERPRET=1 (the CUDA branch is taken on CPU tensors)")
    kernels.cpu.AVAILABLE = False  # the CUDA branch, on CPU tensors
    kernels._select_every_row = lambda acts: True
    kernels._triton_ok = lambda t: True
    launches: collections.Counter = collections.Counter()
    counter = _Counter()
    triton_dense._launch = _paused(counter, launches, "triton dense", triton_dense._launch)
    table = triton_sparse.TritonSparseTable
    table._insert = _paused(counter, launches, "triton insert", table._insert)

    gen = torch.Generator().manual_seed(0)
    b, t, n = 2, 32, 40
    streams = {"pos": [str(i) for i in range(17)], "token": [str(i) for i in range(300)],
               "predicted": [str(i) for i in range(300)]}
    acts = {f"layer{i}": torch.randn(b, t, n, generator=gen) for i in range(args.layers)}
    feats = {name: torch.randint(0, len(v), (b, t), generator=gen) for name, v in streams.items()}
    mask = torch.rand(b, t, generator=gen) > 0.2
    acc = Accumulator(streams, k=args.k, kind="dense")
    if args.sparse:
        for name in acts:
            acc.layers[name] = layer = LayerState.create(n, acc.vocab_sizes, "dense")
            for stream in ("token", "predicted"):
                layer.streams[stream] = SparseState(n, len(streams[stream]), table="triton")
    for prepared in acc.prepare_batch(acts, feats, mask):  # the states exist before counting
        acc.commit(prepared)
    kinds = "pos dense, token and predicted sparse" if args.sparse else "dense states"
    print(f"{args.layers} layers x {len(streams)} streams, k={args.k}, {kinds}, "
          f"one masked batch of {b} x {t} positions")
    for phase in ("prepare", "commit"):
        launches.clear()
        with counter:
            counter.ops.clear()
            if phase == "prepare":
                batch = acc.prepare_batch(acts, feats, mask)
            else:
                for prepared in batch:
                    acc.commit(prepared)
        launching = {k: v for k, v in counter.ops.items() if k not in NO_LAUNCH}
        rest = {k: v for k, v in counter.ops.items() if k in NO_LAUNCH}
        total = sum(launching.values())
        print(f"{phase}: {total} launching torch operators ({total / args.layers:.1f} per layer), "
              f"{dict(launches)} Triton launches; {dict(sorted(launching.items()))}; "
              f"no launch: {dict(sorted(rest.items()))}")


if __name__ == "__main__":
    main()
