#!/usr/bin/env bash
# Copies the newest checkpoint of runs/default-mix (or of the run given) into models/default (config.json + model.safetensors +
# training.json), then evaluates it on the held-out documents (never trained on) at 15% independent-byte
# masking, seed 0: all of them together, then each source, as a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/default-mix}"
BIN=./target/release/perceiver
latest=$(ls -d "$RUN"/step-* | sort | tail -1)
mkdir -p models/default
cp "$latest/config.json" "$latest/model.safetensors" "$latest/training.json" models/default/
cp "$RUN/curves.svg" models/default/curves.svg 2>/dev/null || true
echo "exported $latest"
echo "now rerun: .venv-ref/bin/python scripts/make_built_in_fixture.py (built_in.rs checks the new weights against it)"
eval_json() { "$BIN" eval --model models/default "$@" --mask-rate 0.15 --seed 0 --json; }
echo "| held-out text | bytes masked | top-1 accuracy | bits per byte |"
echo "|---|---:|---:|---:|"
ROW_PY='import json, sys
r = json.loads(sys.stdin.read())
print("| %s | %d | %.1f%% | %.3f |" % (sys.argv[1], r["masked_bytes"], 100 * r["accuracy"], r["bits_per_byte"]))'
row() { python3 -c "$ROW_PY" "$1"; }
eval_json data/corpus/heldout | row "all held-out documents"
for f in data/corpus/heldout/*.txt; do
  # A held-out file shorter than one window has nothing to evaluate: skip it.
  if out=$(eval_json "$f" 2>/dev/null); then
    echo "$out" | row "$(basename "$f" .txt)"
  else
    echo "| $(basename "$f" .txt) | – | too short to evaluate | – |"
  fi
done
