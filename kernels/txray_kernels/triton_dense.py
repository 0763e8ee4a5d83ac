"""Fused top-k selection + dense scatter-accumulate, in Triton (the CUDA hot path).

One launch reads a block of activations ``[P, N]`` (fp32 / fp16 / bf16, any row and column
stride) once, selects the top-``k`` neurons of every row with the engine's tie-break (equal values:
the lower neuron index wins, i.e. the first ``k`` of a stable descending sort, see
:mod:`txray_kernels.reference`) and adds the events into the dense accumulators of up to
``MAX_STREAMS`` target streams at once::

    count[n * V + f] += 1;  mass[n * V + f] += max(a, 0);  peak[n * V + f] = max(peak, a)

for every selected ``(n, a)`` of a row whose feature ``f`` (per stream) is ``>= 0``.

Selection strategies (``method="auto"`` picks the one measured fastest on an H200, see
:func:`_auto_method` and BENCHMARKS.md):

* ``k == N`` -- ``"all"``: no selection, every element is an event.
* ``k <= 16`` (``k == 1``: 2-byte inputs), or ``k <= CANDIDATES_MAX_K`` where the row tile
  (next power of two of N) is at least ``256 k``, or 1,024 where the keys are 16-bit
  (``KEYS_16BIT``, 2-byte rows); only where the tile holds at least ``4 k``
  chunks of 4+ elements -- ``"candidates"``: the row's maxima per chunk of ``CM`` (up to 32
  for ``k == 1``, 16 for larger ``k``: ``CANDIDATE_WIDTH``)
  columns, ``k`` rounds of argmax over those chunk maxima (packed keys, ties to the lower chunk)
  name the ``k`` winning chunks, which hold the row's top ``k`` (a chunk ranked above an
  element's own chunk holds its maximum, which ranks above that element: larger, or equal at a
  lower index; ``k`` such chunks leave it out), and ``k`` rounds of argmax run over the ``k * CM`` elements of the winners only,
  re-read from L1/L2. Per element of the row: one widening and one max; everything else is per
  row. Exact for any finite row, ties included.
* else ``k <= ARGMAX_MAX_K`` -- ``"argmax"``: for ``k == 1`` one fp32 row max and one int32 min
  of the indices holding it (the reference tie-break: the lowest index among equal values); for larger
  ``k``, ``k`` rounds of a row max over packed int64 keys
  ``(order-preserving int32 of the value) << 32 | (2**31 - 1 - n)``, whose max is the largest value
  and, among equal values, the lowest index, the winner's key then knocked out
  (``ARGMAX_ROUNDS = "fp32"``: rounds of fp32 max and index min instead, half the registers;
  ``KEYS_16BIT``: for fp16/bf16 rows, int32 keys ``(16-bit order-preserving key) << 16 |
  (65535 - n)``, here and in the candidates' rounds; and a 16-step threshold search).
  Gives the selection in compact form, so the scatter is ``k`` small vector atomics per row. Each
  program takes several groups of rows (``LAUNCH_SHAPES``) and loads the next group while it works
  on the current one (all selecting methods do). Where N is a power of two the tile needs no column
  mask.
* otherwise -- ``"threshold"``: a 32-step bitwise search for the k-th largest int32 key of each row
  (``count(key >= t) >= k``), then ``key > t`` plus the first ``k - count(key > t)`` entries equal to
  ``t`` in index order (a cumsum), i.e. exactly the stable-sort tie-break; predicated atomics over
  the row (in column chunks for wide rows), and a cumsum compaction for the ``[P, k]`` output.
* rows wider than ``MAX_FUSED_BLOCK_N`` -- ``"torch"``: :func:`txray_kernels.reference.select_topk`
  selects and a scatter-only launch of the same kernel adds the ``[P, k]`` selection.

Values are compared as fp32 (fp16/bf16 are widened exactly); ``-0.0`` ranks equal to ``+0.0`` (as in
torch) and the argmax/threshold paths report it as ``+0.0`` (they rebuild values from the keys).
:func:`dense_scatter_events` is the scatter alone, for a selection made elsewhere (the counterpart
of ``txray_kernels.reference.scatter_events``).

For the engine's path (``txray_kernels.select_rows``), the selecting launches also flag the rows holding
NaN/inf from the tile they hold (``flags=``: the exponent bits, so no second pass over the
activations) and read only the kept rows of a masked batch, in place (``rows=``);
:func:`totals_target` lets the per-neuron totals ride in the streams' scatter launch.

Accumulation modes (``mode=``):

* ``"direct"`` (default): the kernel adds straight into the exact master of ``DenseState``
  (int64 count with 64-bit integer atomics, float64 mass with fp64 atomics -- each event adds its
  fp32 value to the float64 sum, so the result differs from the reference only by float64 rounding
  of a different summation order, well within ``same_sums``' 1e-12 -- and float32 peak with
  ``tl.atomic_max``, which Triton lowers to the int-mapped trick: signed-int max for ``a >= 0``,
  unsigned-int min for ``a < 0``; exact). Nothing to flush, no extra memory, the state is
  complete when the call returns.
* ``"partial"``: count and mass go into per-state int32 / fp32 *partials* (32-bit atomics), which are
  flushed into the int64 / float64 master by :func:`flush`. Policy: a state is flushed before its
  partials would hold more than ``PARTIAL_FLUSH_ROWS`` (default 4096) positions; a call with more
  rows than that is split into chunks. A cell gains at most 1 per position, so an int32 count can
  never pass 4096 (far from 2**31), and an fp32 mass partial sums at most 4096 terms before it is
  added to the float64 master (relative error <= 4096 * 2**-24 ~ 2.4e-4 in the worst case, about
  sqrt(4096) * 2**-24 ~ 4e-6 typically; this does *not* meet ``same_sums``' 1e-12). Peak always goes
  to the master (it is exact either way). **The master is stale until flushed: call
  ``flush(state)`` (or ``flush()``) before reading, merging or saving a state.** The flush costs a
  pass over all ``N * V`` cells (~40 bytes each), so this mode only pays off for small ``N * V``.

Under ``TRITON_INTERPRET=1`` (tests on CPU) the launchers accept CPU tensors; otherwise CUDA only.
This module holds the launcher and its tunables; the ``@triton.jit`` entry point is in
:mod:`txray_kernels.triton_dense_kernel`, its device functions in :mod:`txray_kernels.triton_select`.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from . import reference
from .triton_dense_kernel import _select_scatter_kernel
from .triton_targets import (_PARTIALS, MAX_STREAMS, _check_device, _dense_targets,  # noqa: F401
                             _stream_args, flush, totals_target)

__all__ = ["ARGMAX_MAX_K", "CANDIDATES_MAX_K", "LAUNCH_SHAPES", "MAX_FUSED_BLOCK_N", "MAX_STREAMS",
           "PARTIAL_FLUSH_ROWS", "check_candidate_width", "check_launch_shape",
           "dense_scatter_events", "dense_select_accumulate", "flush", "select_topk",
           "totals_target"]

#: Largest k for the repeated-argmax selection over the whole row; larger k use the bitwise
#: threshold search (where the candidates selection does not apply).
ARGMAX_MAX_K = 16
#: Largest k for the candidates selection (argmax rounds over the elements of the k chunks with
#: the largest maxima).
CANDIDATES_MAX_K = 32
#: How the argmax rounds of 1 < k <= ARGMAX_MAX_K compare: ``"int64"`` packed (value, index) keys,
#: one reduction per round; ``"fp32"`` a float max and an index min per round on half the
#: registers (rows must be finite, as everywhere in the engine).
ARGMAX_ROUNDS = "int64"
#: Whether the selections of fp16 / bf16 rows key the values on 16 bits: the argmax rounds
#: (``"argmax"`` with int64 rounds, and ``"candidates"``) pack (value, index) into int32 keys,
#: ``(order-preserving 16-bit key) << 16 | (65535 - n)`` (the same selection with half the key
#: registers, and one 32-bit shuffle and max per reduction step instead of 64-bit ones), and
#: ``"threshold"`` searches 16 bits instead of 32 (half the steps, each a count over the row).
#: For k > 1 (H200, ``gpu_check --sweep``, bf16, 2²⁶ activations: k = 8 0.0555 against 0.0892 ms
#: at N = 4,096, 0.0576 against 0.0924 at N = 16,384; k = 16 0.111 against 0.198; k = 32
#: threshold 0.954 against 1.20); k = 1 keeps the 32-bit keys (0.0625 against 0.0453 ms at
#: N = 16,384, a tie at 4,096).
KEYS_16BIT = True
#: Widest row tile (next power of two of N) held in registers by one program.
MAX_FUSED_BLOCK_N = 16384
#: GPU launch shape per (selection method, bytes per activation) (tunables, from the H200 sweep of
#: ``benchmarks/gpu_check.py --sweep``, see BENCHMARKS.md): (row-tile elements per program --
#: several rows per program when N is small, register-tile elements per thread -- sets num_warps,
#: up to 32, row groups per program -- the next group's tile is read while the current one is
#: processed, 1 turns that off, fewest warps per program). Few warps per row make the per-row
#: reductions cheap (one warp: shuffles only, no barrier); 4-byte inputs hold half the elements
#: per thread. "scatter": the scatter-only launches (k == N, or a selection made elsewhere).
LAUNCH_SHAPES = {
    ("candidates", 2): (2048, 128, 4, 1), ("candidates", 4): (2048, 128, 4, 1),
    ("threshold", 2): (16384, 128, 4, 4), ("threshold", 4): (16384, 32, 4, 4),
    ("argmax", 2): (8192, 32, 4, 4), ("argmax", 4): (2048, 64, 4, 1),
    ("scatter", 2): (8192, 32, 1, 4), ("scatter", 4): (8192, 32, 1, 4),
}
#: How the argmax rounds of ``k > 1`` hand their winners to the scatter: ``"batched"`` keeps them
#: in a ``[rows, next_pow2(k)]`` tile and scatters and writes it after the last round (``k``
#: lanes per atomic, one vector store); ``"per_round"`` scatters and writes each round's winner.
#: (The ``ARGMAX_ROUNDS = "fp32"`` rounds always scatter per round.)
ROUND_SCATTER = "batched"
#: Widest candidate chunk: (for k == 1, for larger k) (H200, ``gpu_check --sweep``: at k = 8, 16
#: against 32 took 0.148 against 0.245 ms at N = 1,024, 0.089 against 0.103 at N = 4,096).
CANDIDATE_WIDTH = (32, 16)
#: Column chunk of the scatter loops.
SCATTER_CHUNK = 2048
#: Partial mode: positions a state's int32/fp32 partials may hold before they are flushed.
PARTIAL_FLUSH_ROWS = 4096

_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_METHODS = ("auto", "all", "argmax", "candidates", "threshold", "torch")
_M_ALL, _M_ARGMAX, _M_THRESHOLD, _M_PRESELECTED = 0, 1, 2, 3  # the kernel's METHOD
_M_CANDIDATES = 4  # launched as METHOD 1 with a candidate chunk (CM > 0)
_SELECTING = (_M_ARGMAX, _M_THRESHOLD, _M_CANDIDATES)  # launches that read and select the rows
_SHAPE_KEY = {_M_ARGMAX: "argmax", _M_CANDIDATES: "candidates", _M_THRESHOLD: "threshold"}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` (``triton.cdiv`` is a jit constexpr function: ~5 us per host call)."""
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def check_launch_shape(shape) -> tuple[int, int, int, int]:
    """``shape`` as a value of :data:`LAUNCH_SHAPES`, checked: ``(tile, elements per thread, row
    groups, fewest warps)``, positive integers, the tile, elements per thread and fewest warps
    powers of two (so the warps of every launch are) and at most 32 warps (1,024 threads). Raises
    ``ValueError`` saying what is wrong: a GPU launch would fail on it."""
    try:
        fields = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        fields = ()
    if len(fields) != 4 or min(fields) < 1 or fields[3] > 32 or \
            any(v & (v - 1) for v in (fields[0], fields[1], fields[3])):
        raise ValueError(f"a launch shape is (tile, elements per thread, row groups, fewest "
                         f"warps): positive integers, the tile, elements per thread and fewest "
                         f"warps powers of two, the warps at most 32; got {shape!r}")
    return fields


def check_candidate_width(widths) -> tuple[int, int]:
    """``widths`` as a value of :data:`CANDIDATE_WIDTH`, checked: the widest candidate chunk for
    k = 1 and for larger k, two powers of two of at least 4 (a chunk of the row tile). Raises
    ``ValueError`` saying what is wrong."""
    try:
        fields = tuple(int(v) for v in widths)
    except (TypeError, ValueError):
        fields = ()
    if len(fields) != 2 or any(w < 4 or w & (w - 1) for w in fields):
        raise ValueError(f"the candidate width is (widest chunk for k = 1, for larger k): two "
                         f"powers of two of at least 4; got {widths!r}")
    return fields


def _launch_config(p: int, block_n: int, method: str, itemsize: int, interpret: bool
                   ) -> tuple[int, int, int, int]:
    """(rows per group, row groups per program, column chunk of the scatter loops, num_warps)."""
    if interpret:  # 8 rows per group, 2 groups (the interpreter pays per program and per op);
        # small chunks so that the tests walk the chunked loops
        rows = min(8, _next_pow2(p))
        return rows, 2 if p > rows else 1, min(block_n, 16), 1
    tile, per_thread, groups, min_warps = LAUNCH_SHAPES[method, 2 if itemsize <= 2 else 4]
    rows = max(1, min(16, tile // block_n, _next_pow2(p)))
    warps = max(min_warps, min(32, rows * block_n // (32 * per_thread)))
    chunk = min(block_n, max(1, SCATTER_CHUNK // rows))
    groups = max(1, min(groups, _cdiv(p, rows)))
    return rows, groups, chunk, warps


def _check_cuda(t: torch.Tensor, what: str) -> None:
    if t.device.type != "cuda" and not _interpret():
        raise ValueError(f"the Triton kernels need CUDA tensors, {what} is on {t.device} (use "
                         "txray_kernels.reference on the CPU, or set TRITON_INTERPRET=1 to test)")


def _launch(method_id, x, n, k, group, mode, out_v, out_i, write_out, flags=None, src_rows=None):
    """One launch. ``x``: activations ``[P, n]``, or for ``_M_PRESELECTED`` the selected values
    ``[P, k]`` with their indices in ``out_i`` (any strides). ``flags``: int8 ``[P]`` that a
    selecting launch fills with its rows' non-finite flags; ``src_rows``: int64 ``[R]``, the rows
    of ``x`` a selecting launch selects (then ``R`` outputs)."""
    grid, args, meta = _launch_plan(method_id, x, n, k, group, mode, out_v, out_i, write_out,
                                    flags, src_rows, _interpret())
    _select_scatter_kernel[grid](*args, **meta)


def _launch_plan(method_id, x, n, k, group, mode, out_v, out_i, write_out, flags, src_rows,
                 interpret):
    """``(grid, arguments, keyword arguments)`` of the kernel for :func:`_launch` (launch shapes
    for the interpreter where ``interpret``, else for a GPU); ``benchmarks/kernel_resources.py``
    compiles the same launch for a GPU architecture."""
    p = x.shape[0] if src_rows is None else src_rows.shape[0]
    block_n = _next_pow2(k if method_id == _M_PRESELECTED else n)
    rows, groups, chunk, warps = _launch_config(
        p, block_n, _SHAPE_KEY.get(method_id, "scatter"), x.element_size(), interpret)
    selecting = method_id in _SELECTING
    if not selecting:
        groups = 1
    cm = _candidate_chunk(block_n, k) if method_id == _M_CANDIDATES else 0
    args = (x, x.stride(0), x.stride(1), out_v, out_i, out_i if flags is None else flags,
            out_i if src_rows is None else src_rows, out_i.stride(0), out_i.stride(1), p, n, k,
            *_stream_args(group, mode, x.device))
    meta = dict(
        METHOD=_M_ARGMAX if method_id == _M_CANDIDATES else method_id, NUM_STREAMS=len(group),
        WRITE_OUT=write_out, ROWS=rows, GROUPS=groups, BLOCK_N=block_n, CHUNK=chunk,
        KC=k if method_id in (_M_ARGMAX, _M_CANDIDATES) else 0,
        FP32_ROUNDS=ARGMAX_ROUNDS == "fp32" and method_id == _M_ARGMAX,
        EVEN_N=selecting and block_n == n, CM=cm,
        KCP=_next_pow2(k) if method_id in (_M_ARGMAX, _M_CANDIDATES) else 0,
        BATCHED=ROUND_SCATTER == "batched" and k > 1,  # (one round: nothing to batch)
        FLAGS=selecting and flags is not None, GATHER=selecting and src_rows is not None,
        KEY16=_key16(method_id, k, x.dtype, block_n), num_warps=warps)
    return (_cdiv(p, rows * groups),), args, meta


def _keys16_apply(method_id: int, k: int, itemsize: int, block_n: int) -> bool:
    """Whether the selection keys the values on 16 bits (``KEYS_16BIT``): 2-byte rows, k > 1
    (k = 1 keeps the 32-bit keys: 0.0625 against 0.0453 ms at N = 16,384), a method with keys
    (not the fp32 rounds of ``"argmax"``), and a tile whose indices fit the keys' 16 bits."""
    return KEYS_16BIT and itemsize == 2 and k > 1 and block_n <= 65536 and \
        method_id in _SELECTING and not (method_id == _M_ARGMAX and ARGMAX_ROUNDS == "fp32")


def _key16(method_id: int, k: int, dtype: torch.dtype, block_n: int) -> int:
    """The kernel's ``KEY16``: 1 (bf16) or 2 (fp16) where :func:`_keys16_apply`, else 0 (keys of
    fp32 values, or no keys)."""
    if not _keys16_apply(method_id, k, dtype.itemsize, block_n):
        return 0
    return {torch.bfloat16: 1, torch.float16: 2}[dtype]


def _candidate_chunk(block_n: int, k: int) -> int | None:
    """Chunk width of the candidates selection for a row tile of ``block_n`` and ``k``, or
    ``None`` where it does not apply: at least ``4 k`` chunks (the k winners then hold a small
    share of the row) of at least 4 elements; ``CANDIDATE_WIDTH`` elements where the row allows."""
    if k > CANDIDATES_MAX_K:
        return None
    widest = CANDIDATE_WIDTH[0 if k == 1 else 1]
    chunk = block_n // max(4 * _next_pow2(k), block_n // widest)
    return chunk if chunk >= 4 else None


def _auto_method(k: int, n: int, itemsize: int) -> int:
    """The fastest selection measured on the H200 (BENCHMARKS.md, Part 3 and the sweep)."""
    block_n = _next_pow2(n)
    if block_n > MAX_FUSED_BLOCK_N:
        return _M_PRESELECTED
    if _candidate_chunk(block_n, k) is not None:
        # k = 1: one max per element beats max + index min for 2-byte inputs; fp32 rows are
        # read at ~80% of copy bandwidth by the max + index min already. k > 16: with 32-bit
        # keys the winners' k * CM elements must stay a small share of the row, else the
        # threshold search wins; with 16-bit keys the candidates win from rows of 1,024 (k = 32:
        # 0.445 against 0.954 ms at N = 1,024, 0.209 against 0.954 at 4,096; narrower rows are
        # not timed)
        keys16 = block_n >= 1024 and _keys16_apply(_M_CANDIDATES, k, itemsize, block_n)
        if (k > 1 or itemsize <= 2) and (k <= 16 or keys16 or block_n >= 256 * k):
            return _M_CANDIDATES
    return _M_ARGMAX if k <= ARGMAX_MAX_K else _M_THRESHOLD


def _pick_method(method: str, k: int, n: int, itemsize: int = 2) -> int:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if k == n:
        return _M_ALL
    if method == "auto":
        return _auto_method(k, n, itemsize)
    if method == "all":
        raise ValueError(f"method='all' needs k == N ({n}), got k={k}")
    if method in ("argmax", "candidates", "threshold") and _next_pow2(n) > MAX_FUSED_BLOCK_N:
        raise ValueError(f"rows of {n} neurons are wider than one fused tile ({MAX_FUSED_BLOCK_N}): "
                         f"use method='auto' or 'torch' (a torch selection, then the scatter "
                         f"kernel)")
    if method == "candidates":
        if _candidate_chunk(_next_pow2(n), k) is None:
            raise ValueError(f"method='candidates' needs k <= {CANDIDATES_MAX_K} and a row tile "
                             f"(next power of two of N) of 4 k chunks of 4+ neurons, got k={k}, "
                             f"N={n}: use 'argmax' or 'threshold'")
        return _M_CANDIDATES
    return {"argmax": _M_ARGMAX, "threshold": _M_THRESHOLD, "torch": _M_PRESELECTED}[method]


def _check_acts(acts, k) -> None:
    if not isinstance(acts, torch.Tensor):
        raise ValueError(f"activations must be a torch.Tensor, got {type(acts).__name__}")
    if acts.dim() != 2:
        raise ValueError(f"activations must be [positions, neurons], got shape {tuple(acts.shape)}")
    if acts.dtype not in _ACT_DTYPES:
        raise ValueError(f"activations must be float32, float16 or bfloat16, got {acts.dtype}")
    _check_cuda(acts, "the activations")
    n = acts.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}], got {k!r}")


def _check_mode(mode: str) -> None:
    if mode not in ("direct", "partial"):
        raise ValueError(f"mode must be 'direct' or 'partial', got {mode!r}")


def _before_partial(dense, p: int) -> None:
    for _, s, _ in dense:
        part = _PARTIALS.get(s)
        if part is not None and part.rows + p > PARTIAL_FLUSH_ROWS:
            flush(s)


def _after_partial(dense, p: int) -> None:
    for _, s, _ in dense:
        _PARTIALS[s].rows += p


def _groups(dense):
    return [dense[i:i + MAX_STREAMS] for i in range(0, len(dense), MAX_STREAMS)]


def select_topk(acts: torch.Tensor, k: int, *, method: str = "auto",
                flags: torch.Tensor | None = None, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of every row with the reference tie-break, on the GPU; ``(values f32, indices i64)``
    ``[P, k]``, order inside a row unspecified (same contract as :func:`txray_kernels.reference.select_topk`).
    ``flags``, ``rows``: see :func:`dense_select_accumulate`."""
    return dense_select_accumulate(acts, k, [], method=method, flags=flags, rows=rows)


def dense_scatter_events(values: torch.Tensor, indices: torch.Tensor,
                         targets: Sequence[tuple[torch.Tensor, object]], *, mode: str = "direct") -> None:
    """Scatter-only: add a selection ``(values [P, k] float32, indices [P, k] int64)`` (any strides,
    e.g. an expanded ``arange`` for all neurons) into dense targets ``(features [P], state)``; the
    counterpart of :func:`txray_kernels.reference.scatter_events`. Neuron ids outside the state are
    dropped."""
    _check_mode(mode)
    if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor) or \
            values.dim() != 2 or values.shape != indices.shape:
        raise ValueError("values and indices must be [P, k] tensors of one shape")
    if values.dtype != torch.float32 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"values must be float32 and indices int64, got {values.dtype}, "
                         f"{indices.dtype}")
    _check_cuda(values, "values")
    _check_device(indices, "indices", values.device)
    if not targets:
        return
    p, k = values.shape
    n = getattr(targets[0][1], "n_neurons", None) if len(targets[0]) == 2 else None
    if not isinstance(n, int):
        raise ValueError(f"target 0: the state ({type(targets[0][1]).__name__}) is not a dense "
                         "state (no n_neurons)")
    dense = _dense_targets(targets, p, n, values.device)
    if mode == "partial" and p > PARTIAL_FLUSH_ROWS:
        for i in range(0, p, PARTIAL_FLUSH_ROWS):
            j = i + PARTIAL_FLUSH_ROWS
            dense_scatter_events(values[i:j], indices[i:j], [(f[i:j], s) for f, s, _ in dense],
                                 mode=mode)
        return
    if p == 0 or k == 0:
        return
    if mode == "partial":
        _before_partial(dense, p)
    for group in _groups(dense):
        _launch(_M_PRESELECTED, values, n, k, group, mode, values, indices, False)
    if mode == "partial":
        _after_partial(dense, p)


def dense_select_accumulate(acts: torch.Tensor, k: int, targets: Sequence[tuple[torch.Tensor, object]],
                            *, method: str = "auto", mode: str = "direct",
                            flags: torch.Tensor | None = None, rows: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused top-k + scatter into dense states; same contract as
    :func:`txray_kernels.reference.select_accumulate` (every target state must be dense: ``count`` int64,
    ``mass`` float64, ``peak`` float32 flat tensors of ``n_neurons * n_features`` cells).

    ``method``: ``"auto"`` (see the module docstring), or force ``"argmax"``, ``"candidates"``,
    ``"threshold"``, ``"torch"`` (torch selection + scatter kernel); ``mode``: ``"direct"`` or ``"partial"`` (then call
    :func:`flush` before reading the states).

    ``flags``: a contiguous int8 ``[P]`` tensor on the activations' device to fill with 1 for the
    rows holding NaN/inf (as float32) and 0 for the others; the selecting launch finds them in
    the tile it reads anyway (the torch selection, which rows wider than one tile take, and
    ``k == N`` flag the rows whose float32 sum is not finite: a superset). ``rows``: int64
    ``[R]`` indices of the rows of ``acts`` to take (each in range: they are not checked, which
    would wait for the device), read in place by the selecting launch; then ``P`` is ``R``
    (outputs, features and flags are per taken row).

    Returns ``(values [P, k] float32, indices [P, k] int64)``.
    """
    _check_acts(acts, k)
    _check_mode(mode)
    n = acts.shape[1]
    device = acts.device
    method_id = _pick_method(method, k, n, acts.element_size())
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype != torch.int64:
            raise ValueError(f"rows must be a 1-D int64 tensor of row indices, got "
                             f"{getattr(rows, 'dtype', type(rows).__name__)} "
                             f"{tuple(getattr(rows, 'shape', ()))}")
        _check_device(rows, "rows", device)
        if method_id not in _SELECTING:  # the torch selection and k == N take a copy
            acts, rows = acts.index_select(0, rows), None
        else:
            rows = rows.contiguous()
    p = acts.shape[0] if rows is None else rows.shape[0]
    dense = _dense_targets(targets, p, n, device)
    if flags is not None and (not isinstance(flags, torch.Tensor) or flags.dtype != torch.int8 or
                              tuple(flags.shape) != (p,) or not flags.is_contiguous()):
        raise ValueError(f"flags must be a contiguous int8 tensor of shape ({p},), got "
                         f"{getattr(flags, 'dtype', type(flags).__name__)} "
                         f"{tuple(getattr(flags, 'shape', ()))}")
    if flags is not None:
        _check_device(flags, "flags", device)

    if mode == "partial" and p > PARTIAL_FLUSH_ROWS:  # chunk so no partial holds more rows
        parts = [dense_select_accumulate(acts if rows is not None else
                                         acts[i:i + PARTIAL_FLUSH_ROWS], k,
                                         [(f[i:i + PARTIAL_FLUSH_ROWS], s) for f, s, _ in dense],
                                         method=method, mode=mode,
                                         flags=None if flags is None else
                                         flags[i:i + PARTIAL_FLUSH_ROWS],
                                         rows=None if rows is None else
                                         rows[i:i + PARTIAL_FLUSH_ROWS])
                 for i in range(0, p, PARTIAL_FLUSH_ROWS)]
        return torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])

    if method_id == _M_ALL:
        values, indices = acts.float(), torch.arange(n, device=device).expand(p, n)
    elif method_id == _M_PRESELECTED:
        values, indices = reference.select_topk(acts, k)
    else:
        values = torch.empty((p, k), dtype=torch.float32, device=device)
        indices = torch.empty((p, k), dtype=torch.int64, device=device)
    if p == 0:
        return values, indices
    if mode == "partial":
        _before_partial(dense, p)

    groups = _groups(dense)
    if method_id in _SELECTING:  # the first launch selects (and serves 4 streams)
        _launch(method_id, acts, n, k, groups[0] if groups else [], mode, values, indices, True,
                flags, rows)
        groups = groups[1:]
    elif flags is not None:
        flags.copy_(reference.suspect_rows(acts))
    for group in groups:  # the other groups: the selection is known
        if method_id == _M_ALL:  # re-reading bf16/fp16 activations beats reading fp32 values
            _launch(_M_ALL, acts, n, k, group, mode, values, indices, False)
        else:
            _launch(_M_PRESELECTED, values, n, k, group, mode, values, indices, False)
    if mode == "partial":
        _after_partial(dense, p)
    return values, indices
