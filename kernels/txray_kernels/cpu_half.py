"""The CPU selection for 16-bit activations (bfloat16, float16), read as they are.

A model run in bf16 or fp16 on the CPU hands the engine 16-bit activations. Widening the whole
block with ``tensor.float()`` first costs more than the selection itself (torch's CPU conversion
runs at ~2 GB/s here: 15 ms for 8,192 x 1,024 bf16 values, against ~1 ms for the float32
selection). Instead every row is widened exactly, in numba, into a float32 row buffer that stays in
L1, and the float32 row kernels of :mod:`txray_kernels.cpu` select from it: the activations are read
once, at two bytes each.

Widening to float32 bits:

- bfloat16 is the upper half of a float32: ``bits << 16``.
- float16: LLVM's ``fpext half to float`` (``vcvtph2ps`` on x86 with F16C: ~45 ns per 1,024-value
  row, against ~460 ns in integer arithmetic), on x86-64 with F16C with numba compiling for this
  CPU (elsewhere LLVM makes it a runtime call that numba's JIT cannot link), and where a check at
  first use finds it equal to the integer path on all 65,536 patterns (a signalling NaN comes back
  quieted: still a NaN of its sign, and flagged the same). Otherwise, in integer arithmetic: sign,
  exponent ``e``
  (5 bits) and mantissa ``m`` (10 bits). Exponent and mantissa
  move up 13 bits and the exponent gains the bias difference 112: ``sign | (e + 112) << 23 |
  m << 13`` for normal numbers; ``e == 31`` (inf, NaN) gains it twice, giving exponent 255;
  zeros keep their sign; a subnormal ``m * 2**-24`` with its leading bit at ``p`` becomes
  ``sign | (p + 103) << 23 | (m << (23 - p)) & 0x7FFFFF`` (rare: fixed in a second pass over the
  row). Every float16 value is exactly representable in float32.
"""

from __future__ import annotations

import numpy as np

from .cpu import AVAILABLE

BF16, FP16 = 0, 1

#: Whether fp16 widens through LLVM's ``fpext`` (one instruction per 8 values with F16C), set at
#: import where it is an instruction, by a check of every bit pattern; else the integer path.
FPEXT = False

if AVAILABLE:
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    from .cpu import _BLOCK, _MIN_CHUNK, _row_max, _select_row, _top1_row

    @intrinsic
    def _fpext_half(typingctx, h):
        """Float32 bits of the fp16 bits ``h`` (uint16), by LLVM's ``fpext half to float``."""
        if not isinstance(h, types.Integer) or h.bitwidth != 16:
            return None

        def codegen(context, builder, signature, args):
            wide = builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
            return builder.bitcast(wide, ir.IntType(32))

        return types.uint32(h), codegen

    @njit(boundscheck=False, cache=True)
    def _fpext_row(h, out):
        for j in range(h.shape[0]):
            out[j] = _fpext_half(h[j])

    def _native_fpext() -> bool:
        """Whether LLVM turns ``fpext half`` into an instruction here: x86-64 with F16C, numba
        compiling for this CPU. Elsewhere it becomes a call to a runtime function that numba's
        JIT cannot link (calling it crashes the process), so the integer path is taken."""
        import platform

        from llvmlite import binding
        from numba.core import config

        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        if config.CPU_NAME not in (None, "host"):  # e.g. "generic", for caches shared by machines
            return False
        features = config.CPU_FEATURES
        if features is not None:
            return "+f16c" in features.split(",")
        return bool(binding.get_host_cpu_features().get("f16c", False))

    def _probe_fpext() -> bool:
        """Whether ``fpext`` is an instruction here (:func:`_native_fpext`) and widens every fp16
        pattern as the integer path does (a NaN may come back quieted: still a NaN of its
        sign)."""
        if not _native_fpext():
            return False
        try:
            bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
            got, want = np.empty(1 << 16, np.uint32), np.empty(1 << 16, np.uint32)
            _fpext_row(bits, got)
            _fp16_bits(bits, want)
        except Exception:  # pragma: no cover - an LLVM/numba without half floats
            return False
        nan = np.isnan(want.view(np.float32))
        return bool(np.array_equal(got[~nan], want[~nan]) and
                    np.array_equal(np.isnan(got.view(np.float32)), nan) and
                    np.array_equal(got >> 31, want >> 31))

    @njit(boundscheck=False, inline="always", cache=True)
    def _widen(h, kind, out):
        """Row ``h`` (uint16 bits of bf16 or fp16) as float32 bits into ``out``."""
        n = h.shape[0]
        if kind == BF16:
            for j in range(n):
                out[j] = np.uint32(h[j]) << np.uint32(16)
        elif FPEXT:
            for j in range(n):
                out[j] = _fpext_half(h[j])
        else:
            _fp16_bits(h, out)

    @njit(boundscheck=False, inline="always", cache=True)
    def _fp16_bits(h, out):
        """fp16 bits ``h`` as float32 bits into ``out``, in integer arithmetic (the fallback
        where ``fpext`` does not compile)."""
        n = h.shape[0]
        subnormal = np.uint32(0)
        step = np.uint32(112 << 23)  # exponent bias 127 - 15, once more for e == 31
        for j in range(n):
            x = np.uint32(h[j])
            e = x & np.uint32(0x7C00)
            adjust = np.uint32(e != 0) * step + np.uint32(e == np.uint32(0x7C00)) * step
            out[j] = ((x & np.uint32(0x8000)) << np.uint32(16)) | \
                (((x & np.uint32(0x7FFF)) << np.uint32(13)) + adjust)
            subnormal |= np.uint32(e == 0) & np.uint32((x & np.uint32(0x3FF)) != 0)
        if subnormal:
            for j in range(n):
                x = np.uint32(h[j])
                m = x & np.uint32(0x3FF)
                if (x >> np.uint32(10)) & np.uint32(0x1F) == 0 and m != 0:
                    p = 9
                    while (m >> np.uint32(p)) == 0:
                        p -= 1
                    out[j] = ((x & np.uint32(0x8000)) << np.uint32(16)) | \
                        (np.uint32(p + 103) << np.uint32(23)) | \
                        ((m << np.uint32(23 - p)) & np.uint32(0x7FFFFF))

    @njit(boundscheck=False, inline="always", cache=True)
    def _top1_row16(h, kind, row):
        """``(non-finite, index of the maximum)`` of row ``h`` (16-bit patterns), read as it is:
        16-bit floats order like their patterns as :func:`txray_kernels.cpu._top1_row` uses float32's
        (a positive signed maximum *is* the largest value; +inf/NaN at or above ``0x7F80`` (bf16)
        or ``0x7C00`` (fp16) signed, -inf/-NaN at or above ``0xFF80`` / ``0xFC00`` unsigned), at
        twice the values per vector instruction. Rows whose maximum is not positive are widened
        into ``row`` and take the float32 path."""
        hi, uhi, j = _row_max(h)
        if hi <= 0:
            _widen(h, kind, row)
            return _top1_row(row)
        pos, neg = (0x7F80, 0xFF80) if kind == BF16 else (0x7C00, 0xFC00)
        return np.int32(hi) >= pos or np.int32(uhi) >= neg, j

    @njit(parallel=True, boundscheck=False, cache=True)
    def _select16(h, kind, src, k, vals, idx, bad):
        """Rows ``src`` of ``h`` (uint16 bits ``[P, N]`` of bf16 or fp16, ``kind``; an empty
        ``src``: every row) into ``vals``/``idx`` ``[R, k]`` and ``bad`` ``[R]``, as
        :func:`txray_kernels.cpu._top1` / ``_select`` do for float32."""
        n = h.shape[1]
        rows = vals.shape[0]
        for blk in prange((rows + _BLOCK - 1) // _BLOCK):
            row = np.empty(n, np.uint32)
            x = row.view(np.float32)
            keys = np.empty(k, np.int32)
            ids = np.empty(k, np.int64)
            cmax = np.empty((n + _MIN_CHUNK - 1) // _MIN_CHUNK, np.int32)
            cand = np.empty(n, np.int64)
            for t in range(blk * _BLOCK, min(rows, blk * _BLOCK + _BLOCK)):
                r = h[src[t] if src.shape[0] else t]
                if k == 1:  # on the 16-bit patterns; one value widened
                    b, j = _top1_row16(r, kind, row)
                    bad[t] = b
                    idx[t, 0] = j
                    _widen(r[j:j + 1], kind, row)
                    vals[t, 0] = x[0]
                else:
                    _widen(r, kind, row)
                    bad[t] = _select_row(row, k, cmax, cand, keys, ids)
                    for j in range(k):
                        idx[t, j] = ids[j]
                        vals[t, j] = x[ids[j]]

    @njit(boundscheck=False, cache=True)
    def _widen_row(h, kind, out):
        _widen(h, kind, out)

    FPEXT = _probe_fpext()


def widen(bits: np.ndarray, kind: int) -> np.ndarray:
    """Float32 values of a 1-D array of bf16 (``BF16``) or fp16 (``FP16``) bits (uint16)."""
    out = np.empty(bits.shape[0], np.uint32)
    _widen_row(np.ascontiguousarray(bits, np.uint16), kind, out)
    return out.view(np.float32)
