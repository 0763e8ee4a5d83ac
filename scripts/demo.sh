#!/usr/bin/env bash
# The main job, from a fresh machine: set up, fetch the review corpus, and run the TX-Ray paper
# pipeline (RQ1-3 and pruning) offline on the CPU. Extra arguments go to `txray demo`
# (e.g. --config full, --out DIR, --seeds 0,1,2, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/txray demo "$@"
