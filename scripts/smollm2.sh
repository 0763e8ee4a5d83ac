#!/usr/bin/env bash
# Example: set up, write the offline Wikipedia corpus, collect
# neuron x feature statistics of SmolLM2-135M on it, and summarise the store.
# Options via environment: OUT (default out/smollm2), DOCS (paragraphs, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh smollm2
OUT=${OUT:-out/smollm2}
DOCS=${DOCS:-100}
TX=.venv/bin/txray
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
[ -s "$OUT/wikipedia.txt" ] || $TX corpus wikipedia --out "$OUT/wikipedia.txt"
$TX collect --model smollm2 --corpus "$OUT/wikipedia.txt" --max-documents "$DOCS" \
  --layers model.layers.0.mlp.act_fn --layers model.layers.15.mlp.act_fn \
  --layers model.layers.29.mlp.act_fn --streams token,pos,predicted -k 1 \
  --store "$OUT/store.zarr" --stage wikipedia --max-length 128 --batch-size 8 --overwrite
$TX info "$OUT/store.zarr"
$TX neurons "$OUT/store.zarr" --stage wikipedia --top 2
