#!/usr/bin/env bash
# Install everything and run the test suite (what CI runs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
