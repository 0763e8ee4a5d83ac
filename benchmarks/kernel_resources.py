"""What the fused select + scatter kernel costs a GPU, found without one: each launch compiled for
a GPU architecture, as ``txray_kernels.triton_dense`` makes it, with its registers, spills, shared
memory, the occupancy they allow and the instructions of its machine code::

    python benchmarks/kernel_resources.py [--arch 90] [--n 1024,4096,16384] [--k 1,8,32]
        [--dtype bfloat16,float32] [--streams 1] [--shapes 2048/128/4/1,2048/128/1/1]
        [--candidate-width 32,8] [--flags] [--rows]

Compiles with the installed Triton and the ``ptxas`` and ``cuobjdump`` that its NVIDIA backend
ships (no GPU, no CUDA driver): the launch goes through the launcher's own plan
(``triton_dense._launch_plan`` with the GPU launch shapes) and Triton's own argument
specialization, so the code is the code a GPU would run with this Triton version (the GPU image
has triton 3.6; a ``pip install triton==3.6.0`` in a second environment compiles what it runs).

Columns: the candidates' chunk width, the launch (rows per row group x groups per program,
warps), registers per thread, its stack frame in local memory (cuobjdump's STACK: register
spills and arrays indexed at run time; its LOCAL reads 0 either way), shared memory (the cubin's
static and the dynamic that Triton asks for at launch), resident warps per SM (the least of the
architecture's warp, block, register and shared-memory limits, counted as CUDA's occupancy
calculator does), the count of machine instructions (padding NOPs left out), of which global
loads, warp reductions (``REDUX``), shuffles and global atomics, and the loops (backward
branches: a loop's body counts once in the instructions, however many times it runs).
Static figures: they explain a timing (a latency-bound kernel gains from more resident warps),
they do not replace one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]  # runnable without installing
from txray_kernels import triton_dense  # noqa: E402

#: Per-SM limits by compute capability: (warps, blocks, 32-bit registers, shared memory bytes,
#: shared memory reserved per block). CUDA C Programming Guide, "Compute capabilities"; the same
#: as CUDA's occupancy calculator (``cuda_occupancy.h``).
ARCH_LIMITS = {80: (64, 32, 65536, 167936, 1024), 86: (48, 16, 65536, 102400, 1024),
               89: (48, 24, 65536, 102400, 1024), 90: (64, 32, 65536, 233472, 1024)}
#: Registers are allocated per warp in units of 256 (8 per thread), each warp's from one of the
#: SM's 4 sub-partitions of the register file (a quarter each); shared memory in units of 128 B.
REGISTER_UNIT, REGISTER_PARTS, SHARED_UNIT = 256, 4, 128
#: Instruction counts reported beside the total: (column, SASS opcodes without their modifiers)
OPCODES = (("loads", {"LDG"}), ("REDUX", {"REDUX"}), ("SHFL", {"SHFL"}),
           ("atomics", {"RED", "REDG", "ATOM", "ATOMG"}))
#: Columns after the opcodes: backward branches (a loop's body counts once in the instructions)
EXTRA = ("loops",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Resources:
    """What one compiled launch uses."""
    registers: int
    stack_bytes: int  # local memory per thread: spills, local arrays
    static_shared: int  # in the cubin
    dynamic_shared: int  # asked for at launch (Triton's scratch)
    warps: int
    instructions: int
    opcodes: dict


def resident_warps(registers: int, shared_bytes: int, warps: int, arch: int) -> int:
    """Warps of blocks of ``warps`` warps, ``registers`` per thread and ``shared_bytes`` of
    shared memory (static and dynamic) that fit on one SM of compute capability ``arch``
    (``arch // 10 . arch % 10``), as CUDA's occupancy calculator counts them; 0 where such a
    block cannot launch."""
    max_warps, max_blocks, regs, smem, reserved = ARCH_LIMITS[arch]
    if warps > 32:  # more than 1,024 threads
        return 0
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    warps_by_regs = (regs // REGISTER_PARTS // per_warp) * REGISTER_PARTS
    per_block = -(-shared_bytes // SHARED_UNIT) * SHARED_UNIT + reserved
    blocks = min(max_blocks, max_warps // warps, warps_by_regs // warps, smem // per_block)
    return blocks * warps


def _tool(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise SystemExit(f"error: {path} is missing: this Triton has no NVIDIA backend binaries "
                         "(install the triton wheel from PyPI)")
    return str(path)


def compile_launch(grid, args, meta, arch: int):
    """The kernel of one launch (``triton_dense._launch_plan``'s output) compiled for ``sm_<arch>``
    with Triton's own argument specialization (the binder a GPU launch uses)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = triton_dense._select_scatter_kernel
    if not hasattr(fn, "_pack_args"):
        raise SystemExit("error: the kernel was built for the Triton interpreter: unset "
                         "TRITON_INTERPRET to compile it for a GPU")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(meta, debug=bool(fn.debug or knobs.runtime.debug))  # (as a launch sets it)
    for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # (the launch sets these)
        if hasattr(knobs.compilation, knob):
            kwargs[knob] = getattr(knobs.compilation, knob)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def resources(compiled) -> Resources:
    """Registers, stack (spills), shared memory and instruction counts of a compiled kernel (read
    from its cubin with ``cuobjdump``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        Path(cubin).write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], check=True,
                              capture_output=True, text=True).stdout

    def field(name):
        return int(re.search(rf"{name}:(\d+)", usage).group(1))

    ops = [op for op in re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z0-9_]+)",
                                   sass, re.M) if op != "NOP"]  # (NOPs: padding)
    counts = {col: sum(op in names for op in ops) for col, names in OPCODES}
    # loops: branches back to an earlier address (not the branch-to-self that pads the end)
    counts["loops"] = sum(int(target, 16) < int(at, 16) for at, target in re.findall(
        r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]\s+)?BRA(?:\.[A-Z.]+)?\s+0x([0-9a-f]+)",
        sass, re.M))
    return Resources(field("REG"), field("STACK"), field("SHARED"), compiled.metadata.shared,
                     compiled.metadata.num_warps, len(ops), counts)


class _State:
    """A dense target (the launch reads its tensors' types and alignment, never their values)."""

    def __init__(self, n: int, v: int):
        self.n_neurons, self.n_features = n, v
        self.count = torch.empty(n * v, dtype=torch.int64)
        self.mass = torch.empty(n * v, dtype=torch.float64)
        self.peak = torch.empty(n * v, dtype=torch.float32)


def plan(n: int, k: int, dtype: torch.dtype, streams: int = 1, method: str = "auto",
         p: int | None = None, v: int = 17, flags: bool = False, rows: bool = False):
    """The launch ``dense_select_accumulate`` makes for ``[p, n]`` activations (p = 2**26 / n, as
    ``gpu_check`` Part 2) of ``dtype``, ``k`` and ``streams`` dense streams of ``v`` features,
    with the GPU launch shapes; with ``flags`` it flags the rows holding NaN/inf, with ``rows``
    it reads rows given by index (the engine's selection: ``streams=0, flags=True``, and
    ``rows=True`` for a masked batch). Returns ``(method name, grid, args, meta)``; raises
    ``ValueError`` for a launch the library refuses."""
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N) for a selection, got k={k}, N={n}")
    if not 0 <= streams <= triton_dense.MAX_STREAMS:
        raise ValueError(f"streams must be in [0, {triton_dense.MAX_STREAMS}], got {streams}")
    p = p or max(1024, (1 << 26) // n)
    method_id = triton_dense._pick_method(method, k, n, dtype.itemsize)
    if method_id not in triton_dense._SELECTING:
        raise ValueError(f"N={n} is wider than one fused tile: a torch selection, then the "
                         f"scatter launch")
    x = torch.empty((p, n), dtype=dtype)
    group = [(torch.empty(p, dtype=torch.int64), _State(n, v), v) for _ in range(streams)]
    out_v = torch.empty((p, k), dtype=torch.float32)
    out_i = torch.empty((p, k), dtype=torch.int64)
    grid, args, meta = triton_dense._launch_plan(
        method_id, x, n, k, group, "direct", out_v, out_i, True,
        torch.empty(p, dtype=torch.int8) if flags else None,
        torch.empty(p, dtype=torch.int64) if rows else None, interpret=False)
    return triton_dense._SHAPE_KEY[method_id], grid, args, meta


def _ints(spec: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --{what} takes comma-separated integers, got {spec!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"error: --{what} takes positive integers, got {spec!r}")
    return values


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(ARCH_LIMITS),
                    help="compute capability (90: H100/H200)")
    ap.add_argument("--n", default="1024,4096,16384", help="neurons per row (comma-separated)")
    ap.add_argument("--k", default="1,8,32", help="neurons kept per row (comma-separated)")
    ap.add_argument("--dtype", default="bfloat16,float32",
                    help="activation dtypes: bfloat16, float16, float32 (comma-separated)")
    ap.add_argument("--streams", type=int, default=1,
                    help=f"dense streams scattered into (0-{triton_dense.MAX_STREAMS})")
    ap.add_argument("--flags", action="store_true",
                    help="the launch also flags the rows holding NaN/inf (as the engine's)")
    ap.add_argument("--rows", action="store_true",
                    help="the launch reads rows given by index (a masked batch's, as the engine's)")
    ap.add_argument("--method", default="auto",
                    choices=["auto", "argmax", "candidates", "threshold"])
    ap.add_argument("--shapes", default="",
                    help="launch shapes to compare, tile/per_thread/groups/fewest_warps "
                         "(comma-separated; triton_dense.LAUNCH_SHAPES), each in place of the "
                         "method's own; default: the method's own")
    ap.add_argument("--candidate-width", default="",
                    help="the candidates' widest chunk for k = 1 and for larger k, e.g. 32,8 "
                         "(triton_dense.CANDIDATE_WIDTH; default: its value)")
    args = ap.parse_args(argv)
    args.n, args.k = _ints(args.n, "n"), _ints(args.k, "k")
    unknown = [d for d in args.dtype.split(",") if d not in DTYPES]
    if unknown:
        raise SystemExit(f"error: --dtype: {', '.join(unknown)} (choose from {', '.join(DTYPES)})")
    args.dtype = [DTYPES[d] for d in args.dtype.split(",")]
    if not 0 <= args.streams <= triton_dense.MAX_STREAMS:
        raise SystemExit(f"error: --streams must be in [0, {triton_dense.MAX_STREAMS}]")
    try:
        args.shapes = [triton_dense.check_launch_shape(s.split("/"))
                       for s in args.shapes.split(",") if s]
    except ValueError as err:
        raise SystemExit(f"error: --shapes: {err}") from None
    try:
        args.candidate_width = triton_dense.check_candidate_width(
            args.candidate_width.split(",") if args.candidate_width else
            triton_dense.CANDIDATE_WIDTH)
    except ValueError as err:
        raise SystemExit(f"error: --candidate-width: {err}") from None
    return args


def main(argv=None) -> int:
    args = _args(argv)
    import triton
    print(f"# Fused kernel resources, sm_{args.arch}, triton {triton.__version__}, "
          f"{args.streams} dense stream(s){', flags' if args.flags else ''}"
          f"{', rows by index' if args.rows else ''}\n")
    print("| N | k | dtype | method | chunk | launch shape | rows x groups, warps | registers "
          "| stack (B) | shared (B), static + dynamic | warps/SM | instructions | "
          + " | ".join([c for c, _ in OPCODES] + list(EXTRA)) + " |")
    print("|" + "---|" * (12 + len(OPCODES) + len(EXTRA)))
    saved = dict(triton_dense.LAUNCH_SHAPES), triton_dense.CANDIDATE_WIDTH
    triton_dense.CANDIDATE_WIDTH = args.candidate_width
    options = dict(streams=args.streams, method=args.method, flags=args.flags, rows=args.rows)
    try:
        for dtype in args.dtype:
            for n in args.n:
                for k in args.k:
                    if k >= n:
                        print(f"(N={n}, k={k}: no selection to compile)")
                        continue
                    try:
                        name = plan(n, k, dtype, **options)[0]
                    except ValueError as err:
                        raise SystemExit(f"error: N={n}, k={k}, {dtype}: {err}") from None
                    key = (name, 2 if dtype.itemsize <= 2 else 4)
                    for shape in args.shapes or [saved[0][key]]:
                        triton_dense.LAUNCH_SHAPES[key] = shape
                        _, grid, largs, meta = plan(n, k, dtype, **options)
                        r = resources(compile_launch(grid, largs, meta, args.arch))
                        shared = r.static_shared + r.dynamic_shared
                        warps = resident_warps(r.registers, shared, r.warps, args.arch)
                        print(f"| {n} | {k} | {str(dtype)[6:]} | {name} | {meta['CM'] or '-'} | "
                              f"{' / '.join(map(str, shape))} | {meta['ROWS']} x "
                              f"{meta['GROUPS']}, {r.warps} | {r.registers} | {r.stack_bytes} | "
                              f"{r.static_shared} + {r.dynamic_shared} | {warps} | "
                              f"{r.instructions} | "
                              + " | ".join(str(r.opcodes[c]) for c in
                                           [c for c, _ in OPCODES] + list(EXTRA)) + " |",
                              flush=True)
    finally:
        triton_dense.LAUNCH_SHAPES.update(saved[0])
        triton_dense.CANDIDATE_WIDTH = saved[1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
