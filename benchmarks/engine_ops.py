"""Operators the engine's CUDA path runs per layer, counted on the CPU through the Triton
interpreter (``TRITON_INTERPRET=1``): ``Accumulator.prepare_batch`` and ``commit`` of a masked
batch, with the dispatch forced down the CUDA branch. On a GPU each torch operator that computes
is a kernel launch (a few microseconds of host time each), so for the small per-layer work of a
collection run the count is what the host pays. Views and allocations are listed apart (no
launch); the Triton interpreter's own operators are not counted. ``--sparse`` makes the token
and predicted-token streams sparse states with the GPU's persistent hash table (as a wide
vocabulary would on a GPU).

``--host`` times the same calls instead, with every Triton kernel replaced by a stub that
launches nothing (a selecting launch's flags are zeroed, as a finite batch's would be): what is
left is the engine's own host work per layer, its Python and the torch operators on tiny CPU
tensors (each costs about what a kernel launch costs a GPU's host), without the Triton launcher.
Medians of ``--repeat`` batches, then cProfile's top functions of one more batch.

    TRITON_INTERPRET=1 python benchmarks/engine_ops.py [--layers 6] [--k 1] [--sparse] [--host]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]  # runnable without installing

import txray_kernels as kernels  # noqa: E402
from txray_kernels import triton_dense, triton_sparse  # noqa: E402
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


class _StubKernel:
    """A ``@triton.jit`` kernel's stand-in: ``kernel[grid](*args, **meta)`` launches nothing;
    ``flags_arg``: the position of an int8 flags argument to zero (a finite batch)."""

    def __init__(self, flags_arg: int | None = None):
        self.flags_arg = flags_arg
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.launches += 1
            if self.flags_arg is not None and meta.get("FLAGS"):
                args[self.flags_arg].zero_()
        return launch


def _host_times(acc, acts, feats, mask, layers: int, repeat: int) -> None:
    """Median host time per layer of ``prepare_batch`` and ``commit`` with the kernels stubbed,
    then the top functions of one more batch."""
    dense = triton_dense._select_scatter_kernel = _StubKernel(flags_arg=5)
    insert = triton_sparse._insert_kernel = _StubKernel()

    def batch():
        t0 = time.perf_counter()
        prepared = acc.prepare_batch(acts, feats, mask)
        t1 = time.perf_counter()
        for p in prepared:
            acc.commit(p)
        return t1 - t0, time.perf_counter() - t1

    for _ in range(3):
        batch()
    times = [batch() for _ in range(repeat)]
    for phase, i in (("prepare", 0), ("commit", 1)):
        per_layer = statistics.median(t[i] for t in times) / layers * 1e6
        print(f"{phase}: {per_layer:.0f} µs per layer (median of {repeat} batches)")
    batches = repeat + 3
    print(f"stubbed launches per batch: {dense.launches / batches:g} dense, "
          f"{insert.launches / batches:g} insert")
    profile = cProfile.Profile()
    profile.runcall(batch)
    stats = pstats.Stats(profile, stream=io.StringIO()).stats
    top = sorted(stats.items(), key=lambda item: -item[1][2])[:20]
    print(f"one batch under cProfile (slower than timed), µs per layer: own time, with callees")
    for (path, line, name), (_, calls, own, cumulative, _) in top:
        where = f"{Path(path).name}:{line}({name})" if line else name
        print(f"{own / layers * 1e6:8.1f} {cumulative / layers * 1e6:8.1f} {calls:6d}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--sparse", action="store_true",
                        help="token and predicted streams in sparse states (GPU hash tables)")
    parser.add_argument("--host", action="store_true",
                        help="time the host work per layer, with the Triton kernels stubbed")
    parser.add_argument("--repeat", type=int, default=20, help="batches timed with --host")
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
    if args.host:
        _host_times(acc, acts, feats, mask, args.layers, args.repeat)
        return
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
