"""What the parts of ``gpu_check`` share: its arguments (parsed here, before torch and triton
are imported, so ``--smoke`` can turn the Triton interpreter on), the device, the engine's states
(without its Zarr store where zarr is missing, as on the GPU image), output, timers and inputs."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _parse():
    ap = argparse.ArgumentParser(description="One GPU check of the Triton hot path: correctness "
                                 "against the torch reference, then throughput.")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter check)")
    ap.add_argument("--out", default=None, help="also write the tables as markdown to this file")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the fused kernel's launch shapes (triton_dense.LAUNCH_SHAPES), "
                         "each checked against the reference")
    ap.add_argument("--sweep-n", default="1024,4096,16384",
                    help="comma-separated row widths N of the launch-shape sweep")
    ap.add_argument("--shapes", default="",
                    help="launch shapes of the sweep as tile/per_thread/groups/fewest_warps, "
                         "comma-separated (default: gpu_parts.sweep.SHAPE_GRID)")
    ap.add_argument("--sweep-rows", default="",
                    help="rows of the sweep as k:method:winners:dtype[:keys], comma-separated, "
                         "e.g. 8:candidates:batched:bfloat16:int32 (keys: int64, the default, or "
                         "int32, triton_dense.KEYS_16BIT; default rows: "
                         "gpu_parts.sweep.SWEEP_ROWS)")
    ap.add_argument("--breakdown", default="",
                    help="rows of the sweep's candidates breakdown as N:k:chunk:winners[:keys], "
                         "comma-separated (default: gpu_parts.sweep.BREAKDOWN_ROWS)")
    ap.add_argument("--launch-shapes", default="",
                    help="set triton_dense.LAUNCH_SHAPES entries for the whole run (every part), "
                         "as method:bytes=tile/per_thread/groups/fewest_warps, comma-separated, "
                         "e.g. candidates:2=2048/128/1/1 (methods: candidates, threshold, argmax, "
                         "scatter; bytes per activation: 2 or 4)")
    ap.add_argument("--candidate-width", default="",
                    help="set triton_dense.CANDIDATE_WIDTH for the whole run: the candidates' "
                         "widest chunk for k = 1 and for larger k, e.g. 32,8")
    ap.add_argument("--parts", default="1,2,2b,3,4",
                    help="comma-separated parts to run (Part 5 is --sweep), e.g. 1,2b,4")
    ap.add_argument("--budget", type=float, default=180.0,
                    help="seconds after which the remaining benchmark rows are skipped")
    return ap.parse_args()


ARGS = _parse()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]  # the image runs the tree without installing it

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
import txray_kernels as kernels  # noqa: E402
from txray_kernels import reference, triton_dense, triton_examples, triton_sparse  # noqa: E402

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


def set_launch_shapes(spec: str) -> list[str]:
    """``--launch-shapes``: sets the named ``triton_dense.LAUNCH_SHAPES`` entries; returns them
    as ``method:bytes=shape`` for the header. A malformed entry stops the run before any part."""
    done = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        try:
            key, shape = entry.split("=")
            method, width = key.split(":")
            if (method, int(width)) not in triton_dense.LAUNCH_SHAPES:
                raise ValueError("unknown method:bytes")
            fields = triton_dense.check_launch_shape(shape.split("/"))
        except ValueError as err:
            keys = ", ".join(f"{m}:{b}" for m, b in triton_dense.LAUNCH_SHAPES)
            raise SystemExit(f"error: --launch-shapes entry {entry!r}: expected "
                             f"method:bytes=tile/per_thread/groups/fewest_warps with method:bytes "
                             f"one of {keys} ({err})") from None
        triton_dense.LAUNCH_SHAPES[method, int(width)] = fields
        done.append(f"{method}:{width}={shape}")
    return done


def set_candidate_width(spec: str) -> str:
    """``--candidate-width``: sets ``triton_dense.CANDIDATE_WIDTH``; returns it for the header
    (empty: unchanged). A malformed value stops the run before any part."""
    if not spec:
        return ""
    try:
        widths = triton_dense.check_candidate_width(spec.split(","))
    except ValueError as err:
        raise SystemExit(f"error: --candidate-width {spec!r}: {err} (e.g. 32,8)") from None
    triton_dense.CANDIDATE_WIDTH = widths
    return f"{widths[0]},{widths[1]}"


@contextlib.contextmanager
def kernel_settings():
    """Restores the dense kernel's tunables (``triton_dense.LAUNCH_SHAPES``, ``ROUND_SCATTER``,
    ``CANDIDATE_WIDTH``, ``KEYS_16BIT``) on exit, for the parts that time or check other values
    of them; yields the values on entry, ``(shapes, round scatter, candidate width, 16-bit
    keys)``."""
    saved = (dict(triton_dense.LAUNCH_SHAPES), triton_dense.ROUND_SCATTER,
             triton_dense.CANDIDATE_WIDTH, triton_dense.KEYS_16BIT)
    try:
        yield saved
    finally:
        triton_dense.LAUNCH_SHAPES.update(saved[0])
        (triton_dense.ROUND_SCATTER, triton_dense.CANDIDATE_WIDTH,
         triton_dense.KEYS_16BIT) = saved[1:]


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
    except Exception as e:  # go on with the other rows: the table marks the row "(call)"
        print(f"(graph capture failed: {type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
        return None



def device_time(fn) -> tuple[float, bool]:
    """``(ms, from a graph)``: the CUDA-graph replay time of ``fn`` (device time alone), else the
    whole call's."""
    t = bench_graph(fn)
    return (t, True) if t is not None else (bench(fn), False)


def device_ms(fn) -> str:
    """:func:`device_time` as table text (a whole call's time marked)."""
    t, graph = device_time(fn)
    return f"{t:.3g}" if graph else f"{t:.3g} (call)"



def free_bytes() -> int:
    if DEVICE.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    return 8 << 30



#: Activation elements per call in Parts 2 and 5 (128 MB of bf16: e.g. 16 sequences of 1,024
#: tokens at N = 4,096), large enough that a call's device time is not hidden behind its host time.
BLOCK_ELEMS = 1 << 26


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


