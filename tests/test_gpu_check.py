"""``benchmarks/gpu_check.py`` is the one command a GPU machine runs: its smoke mode (tiny shapes
under ``TRITON_INTERPRET=1``) must pass on the CPU, so that a lent GPU's minutes are not spent on
a broken script. Without zarr too, as on the GPU image (the script imports the states without the
package's Zarr store)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_passes_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    blocked = tmp_path / "blocked" / "zarr"  # the GPU image has no zarr
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('zarr is not installed here')\n")
    path = os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                          "--sweep", "--launch-shapes", "candidates:2=2048/128/1/1",
                          "--candidate-width", "32,8", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    assert "Part 1: ALL PASS" in text
    assert "Launch shapes set for this run: candidates:2=2048/128/1/1" in text
    assert "Candidate width set for this run: 32,8" in text
    for part in ("## Part 2", "## Part 3", "## Part 4", "## Part 5"):
        assert part in text, f"{part} missing"
    assert "WRONG" not in text and "FAIL " not in text


LAUNCH_SHAPES_BAD = ["candidates:2=2048/128/1", "candidate:2=2048/128/1/1",
                     "candidates:3=2048/128/1/1", "candidates:2=2048/0/1/1",
                     "candidates:2=2048/128/1/3", "candidates:2=2048/40/1/1",
                     "candidates:2=2048/128/1/64"]
CANDIDATE_WIDTH_BAD = ["32", "32,6", "32,2", "a,8"]

# every malformed value through the script's own checks, in one process (each run of the script
# costs seconds of imports); the two runs below show the script stops on them before any part
_CHECK_ALL = """
import json, sys
root, shapes, widths = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.argv = ["gpu_check.py", "--smoke", "--parts", ""]  # what gpu_parts.common parses on import
sys.path.insert(0, root)
from gpu_parts.common import set_candidate_width, set_launch_shapes
out = {}
for fn, values in ((set_launch_shapes, shapes), (set_candidate_width, widths)):
    for v in values:
        try:
            fn(v)
            out[v] = None
        except SystemExit as e:
            out[v] = str(e)
print(json.dumps(out))
"""


def test_gpu_check_refuses_malformed_launch_shapes_and_candidate_widths():
    """Each bad ``--launch-shapes`` entry and ``--candidate-width`` value gets a message with
    what to write."""
    import json
    run = subprocess.run([sys.executable, "-c", _CHECK_ALL, str(ROOT / "benchmarks"),
                          json.dumps(LAUNCH_SHAPES_BAD), json.dumps(CANDIDATE_WIDTH_BAD)],
                         cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    messages = json.loads(run.stdout.splitlines()[-1])
    for entry in LAUNCH_SHAPES_BAD:
        assert f"--launch-shapes entry {entry!r}" in messages[entry], entry
        assert "candidates:2" in messages[entry]
    for width in CANDIDATE_WIDTH_BAD:
        assert f"--candidate-width {width!r}" in messages[width], width


@pytest.mark.parametrize("flag, value", [("--launch-shapes", LAUNCH_SHAPES_BAD[0]),
                                         ("--candidate-width", CANDIDATE_WIDTH_BAD[1])])
def test_gpu_check_stops_on_a_malformed_value_before_any_part(flag, value):
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                          "--parts", "1", flag, value], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and f"{flag} {value!r}" in run.stderr.replace(" entry", "")
    assert "# gpu_check" not in run.stdout and "Traceback" not in run.stderr


def test_engine_ops_counts_the_device_path():
    """``benchmarks/engine_ops.py`` (the operators of the CUDA branch, through the interpreter):
    one Triton launch per layer on each side, and the totals inside the scatter launch."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_ops.py"), "--layers",
                          "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    prepare, commit = run.stdout.splitlines()[-2:]
    assert prepare.startswith("prepare:") and "{'triton dense': 3}" in prepare
    assert commit.startswith("commit:") and "{'triton dense': 3}" in commit
    assert "index_add_" not in commit
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_ops.py"), "--layers",
                          "2", "--sparse", "--k", "3"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "'triton insert': 4" in run.stdout.splitlines()[-1]  # 2 layers x 2 sparse streams


def test_engine_ops_times_the_host_work():
    """``engine_ops.py --host``: the same calls with the kernels stubbed, timed per layer, and
    the functions that take the time."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_ops.py"), "--layers",
                          "2", "--sparse", "--k", "3", "--host", "--repeat", "2"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert re.match(r"prepare: \d+ µs per layer", lines[1]), lines[1]
    assert re.match(r"commit: \d+ µs per layer", lines[2]), lines[2]
    # 2 layers: 2 selecting + 2 scatter launches and 2 x 2 sparse inserts per batch
    assert lines[3] == "stubbed launches per batch: 4 dense, 4 insert", lines[3]
    assert any("accumulate" in line for line in lines[5:])
