#!/usr/bin/env bash
# Copies the newest checkpoint of runs/default into models/default (config.json + model.safetensors)
# and evaluates it on the held-out documents at 15% independent-byte masking, seed 0.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/default}"
latest=$(ls -d "$RUN"/step-* | sort | tail -1)
mkdir -p models/default
cp "$latest/config.json" "$latest/model.safetensors" models/default/
cp "$latest/training.json" models/default/training.json
echo "exported $latest"
./target/release/perceiver eval --model models/default data/corpus/heldout --mask-rate 0.15 --seed 0 --json
