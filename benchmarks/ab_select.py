"""The CPU selection of this tree against the one of an earlier commit, interleaved in one process.

Timings on these shared machines drift by 1.5x within seconds, so runs of two versions in turns of
separate processes disagree more than the change they measure. This script extracts ``kernels/``
of ``--against`` (``git archive``) as the package ``kernels_old``, imports both, and calls
``select_topk`` of each and ``torch.sum`` in turn, medians::

    .venv/bin/python benchmarks/ab_select.py --against 416e5e8

Fair turns: every call reads the next of four rotating blocks of at least 64 MiB each (twice a
32 MiB last-level cache), so every call reads its block from memory and none finds it left in
cache by the call before; and the order of the three calls rotates each round, so no version
always runs first. ``--against HEAD`` (this tree against itself) is the check: its speed-ups
should come out as 1.00x give or take the machine's noise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MIN_BLOCK_BYTES = 64 * 2**20
CASES = [(1024, 1, torch.float32), (1024, 1, torch.bfloat16), (1024, 1, torch.float16),
         (4096, 1, torch.float32), (1024, 8, torch.float32), (4096, 8, torch.float32),
         (1024, 8, torch.bfloat16), (1024, 8, torch.float16), (4096, 32, torch.float32)]


def old_kernels(commit: str, folder: Path):
    """``kernels/`` of ``commit``, imported as ``kernels_old`` from ``folder``."""
    blob = subprocess.run(["git", "archive", commit, "kernels"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "kernels" / "txray_kernels"  # kernels/ itself before the package had a name
    (package if package.is_dir() else folder / "kernels").rename(folder / "kernels_old")
    sys.path.insert(0, str(folder))
    import kernels_old.cpu
    return kernels_old.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="the commit to compare with")
    ap.add_argument("--calls", type=int, default=24, help="calls of each version per case")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]
    from txray_kernels import cpu as new
    with tempfile.TemporaryDirectory() as tmp:
        old = old_kernels(args.against, Path(tmp))
        print(f"txray_kernels.cpu.select_topk: this tree against {args.against} (medians of "
              f"{args.calls} interleaved calls, blocks of at least 64 MiB)\n")
        print("| N | k | dtype | rows | before ms | now ms | speed-up | sum ms | now, % of sum "
              "| before, % of sum |\n|---|---|---|---|---|---|---|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for n, k, dtype in CASES:
            rows = max(8192, MIN_BLOCK_BYTES // (n * torch.finfo(dtype).bits // 8))
            blocks = [torch.randn(rows, n, generator=g).to(dtype) for _ in range(4)]
            fns = {"old": lambda x: old.select_topk(x, k), "new": lambda x: new.select_topk(x, k),
                   "sum": lambda x: x.sum()}
            names = list(fns)
            times = {name: [] for name in fns}
            for fn in fns.values():
                fn(blocks[0])  # compile
            turn = 0
            for i in range(args.calls):
                for name in names[i % 3:] + names[:i % 3]:  # who goes first rotates
                    x = blocks[turn % 4]  # a block no call read since three others
                    turn += 1
                    t = time.perf_counter()
                    fns[name](x)
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            print(f"| {n} | {k} | {str(dtype).split('.')[1]} | {rows:,} | {med['old']:.3f} "
                  f"| {med['new']:.3f} | {med['old'] / med['new']:.2f}x | {med['sum']:.3f} | "
                  f"{med['sum'] / med['new']:.0%} | {med['sum'] / med['old']:.0%} |")

if __name__ == "__main__":
    main()
