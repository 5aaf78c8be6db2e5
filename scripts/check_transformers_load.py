"""Checks that a checkpoint written by `perceiver train` loads in transformers and gives our numbers.

Loads DIR with transformers' PerceiverForMaskedLM.from_pretrained, fills the masks of a few texts,
and compares the top-k token ids and probabilities with `perceiver fill-mask --model DIR --json`.
Pins: scripts/requirements-reference.txt (run with .venv-ref/bin/python).

    .venv-ref/bin/python scripts/check_transformers_load.py runs/default/step-000400
"""

import argparse
import json
import subprocess
import sys

import torch
from transformers import PerceiverForMaskedLM

TEXTS = [
    "The quick brown fox jumps over the [MASK:4] dog.",
    "Please send the report to me by Friday[MASK] Thank you for your h[MASK:3].",
    "In 1969, two astronauts walked on the surface of the m[MASK:3].",
]


def masked_ids(text):
    """Byte ids (+6) with [MASK]=3, as our tokenizer reads [MASK] / [MASK:n] (no special tokens)."""
    ids, i = [], 0
    while i < len(text):
        if text.startswith("[MASK", i):
            end = text.index("]", i)
            spec = text[i + 5 : end]
            n = int(spec[1:]) if spec.startswith(":") else 1
            ids += [3] * n
            i = end + 1
        else:
            j = i
            while j < len(text) and not text.startswith("[MASK", j):
                j += 1
            ids += [b + 6 for b in text[i:j].encode()]
            i = j
    return ids


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("--binary", default="target/release/perceiver")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()

    model = PerceiverForMaskedLM.from_pretrained(args.model_dir).eval()
    worst = 0.0
    for text in TEXTS:
        ours = json.loads(
            subprocess.run(
                [args.binary, "fill-mask", "--model", args.model_dir, "--json", "-k", str(args.k), text],
                check=True,
                capture_output=True,
            ).stdout
        )
        ids = masked_ids(text)
        with torch.no_grad():
            logits = model(inputs=torch.tensor([ids])).logits[0]
        probs = logits.softmax(-1)
        for mask in ours["masks"]:
            pos = mask["position"]
            top = probs[pos].topk(args.k)
            their_ids = top.indices.tolist()
            our_ids = [c["token"] for c in mask["candidates"]]
            if their_ids != our_ids:
                print(f"MISMATCH at {pos} of {text!r}: ours {our_ids}, transformers {their_ids}")
                sys.exit(1)
            for c, p in zip(mask["candidates"], top.values.tolist()):
                worst = max(worst, abs(c["score"] - p))
    print(f"{args.model_dir}: transformers {len(TEXTS)} texts, top-{args.k} ids equal, worst |Δ probability| {worst:.2e}")
    if worst > 1e-5:
        sys.exit(1)


if __name__ == "__main__":
    main()
