"""``benchmarks/kernel_resources.py``: the fused kernel compiled for sm_90 on this CPU (Triton's
bundled ptxas / cuobjdump), and the occupancy arithmetic."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import kernel_resources  # noqa: E402


def _compile(*args: str) -> str:
    """The script's table for ``args``, compiled for sm_90 (not under the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"),
                          *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("registers, shared, warps, arch, expected", [
    (146, 1024, 1, 90, 12),  # 152 per thread, 4,864 per warp: 3 in each 16,384-register quarter
    (62, 1024, 1, 90, 32),  # the 32 blocks of an SM
    (66, 1024, 2, 90, 28),  # 72 per thread: 7 warps per quarter, 28 -> 14 blocks of 2
    (86, 0, 1, 90, 20),  # 88 per thread: 5 per quarter (65,536 // 2,816 would give 23)
    (255, 0, 4, 90, 8),  # 256 per thread: 2 warps per quarter, 2 blocks of 4
    (32, 100 * 1024, 4, 90, 8),  # shared memory: 2 blocks of 101 KiB in 228 KiB
    (32, 100 * 1024 + 1, 4, 90, 8),  # (rounded up to 128 B)
    (32, 0, 1, 86, 16),  # the 16 blocks of an sm_86 SM
    (32, 0, 64, 90, 0),  # more than 1,024 threads: no launch
])
def test_resident_warps(registers, shared, warps, arch, expected):
    assert kernel_resources.resident_warps(registers, shared, warps, arch) == expected


def test_compiles_the_launch_for_sm90():
    """One launch compiled for sm_90 as the launcher makes it (N = 256, k = 8, bf16: the
    candidates in one warp with 16-bit keys), its cubin read back: sane figures, and the
    scatter's atomics and the warp reductions of the rounds are there."""
    out = _compile("--n", "256", "--k", "8", "--dtype", "bfloat16")
    rows = [line for line in out.splitlines() if line.startswith("| 256 ")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    (n, k, dtype, method, chunk, shape, launch, regs, spills, shared, resident, instructions,
     loads, redux, shfl, atomics, loops) = cells
    static, dynamic = (int(v) for v in shared.split(" + "))
    assert (n, k, dtype, method, chunk) == ("256", "8", "bfloat16", "candidates", "8")
    assert launch.endswith(", 1")  # one warp
    assert 16 <= int(regs) <= 255 and int(spills) == 0
    assert 1 <= int(resident) <= 64
    assert int(instructions) > 100 and int(loads) > 0
    assert int(atomics) >= 3  # count, mass, peak of one stream (REDG/ATOMG, not REDUX)
    assert 0 < static + dynamic <= 227 * 1024  # an H100 block's shared memory
    assert int(redux) + int(shfl) > 0  # the rounds' warp reductions
    assert int(loops) >= 1  # the loop over the program's row groups


def test_compiles_the_engines_selection():
    """The engine's selecting launch: no stream, NaN/inf flags, rows read by index."""
    out = _compile("--n", "256", "--k", "1,256", "--dtype", "float16", "--streams", "0",
                   "--flags", "--rows")
    assert "0 dense stream(s), flags, rows by index" in out
    assert "(N=256, k=256: no selection to compile)" in out
    row = [line for line in out.splitlines() if line.startswith("| 256 | 1 ")]
    assert len(row) == 1 and row[0].split("|")[-2].strip().isdigit()
    atomics = row[0].split("|")[-3].strip()
    assert atomics == "0"  # no stream: nothing scattered


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float64"], "--dtype: float64"), (["--k", "8,x"], "--k takes"),
    (["--n", "0"], "--n takes positive"), (["--streams", "5"], "--streams must be"),
    (["--shapes", "2048/0/4/1"], "--shapes: a launch shape"),
    (["--candidate-width", "32,6"], "--candidate-width: the candidate width"),
    (["--candidate-width", "32,x"], "--candidate-width: the candidate width"),
])
def test_refuses_bad_arguments(args, message):
    """The script's own argument checks (in this process: a run of the script costs seconds of
    imports; test_refuses_the_interpreter runs it)."""
    with pytest.raises(SystemExit) as exc:
        kernel_resources._args(args)
    assert str(exc.value).startswith("error: ") and message in str(exc.value)


def test_refuses_the_interpreter():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"),
                          "--n", "256", "--k", "8", "--dtype", "bfloat16"],
                         env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "unset TRITON_INTERPRET" in out.stderr


def test_reports_the_stack_of_a_launch_that_spills():
    """The stack column is cuobjdump's STACK (spills, arrays indexed at run time); its LOCAL, read
    before, is 0 for every launch, so the column never showed one. Sixteen rows of N = 100 with
    their candidates, flags and four streams in one warp keep 4,360 bytes per thread there
    (168 registers, triton 3.9)."""
    out = _compile("--n", "100", "--k", "2", "--dtype", "float16", "--streams", "4", "--flags",
                   "--rows")
    row = [line for line in out.splitlines() if line.startswith("| 100 | 2 ")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert int(cells[8]) > 0, row
