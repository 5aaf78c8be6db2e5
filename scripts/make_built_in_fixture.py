#!/usr/bin/env python3
"""What transformers predicts with the model built into the binary (models/default).

Loads ``models/default`` with ``transformers.PerceiverForMaskedLM.from_pretrained`` (float32, CPU),
and for a few texts with masked bytes (our ``[MASK]`` / ``[MASK:n]`` syntax, byte ids + 6, no
[CLS]/[SEP], as ``perceiver fill-mask`` reads them by default) writes each masked position's five
most likely ids and their probabilities (softmax of the position's logits, as transformers'
fill-mask pipeline computes them) to ``tests/fixtures/built_in/fill_mask.json``, with the SHA-256
of the weights it read. ``crates/perceiver/tests/built_in.rs`` compares the built-in model's
answers with it. Rerun after ``scripts/export_default_model.sh`` replaces the model:

    .venv-ref/bin/python scripts/make_built_in_fixture.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import reference_env  # noqa: E402

reference_env.check_pins(transformers="5.24.0", torch="2.15.0")

import torch  # noqa: E402
from transformers import PerceiverForMaskedLM  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = REPO_ROOT / "models" / "default"
OUT = REPO_ROOT / "tests" / "fixtures" / "built_in" / "fill_mask.json"
MASK_ID = 3

# The README's example first; the others cover one mask, a run at the start and bytes of a
# multi-byte character.
TEXTS = [
    "Once upon a ti[MASK:2], there w[MASK:2] a king.",
    "Hello, w[MASK]rld!",
    "[MASK:3] cat sat on the mat.",
    "Il était une fois un r[MASK:2] très sage.",
]


def masked_ids(text: str) -> list[int]:
    """Byte ids (+6), each [MASK] or [MASK:n] as n mask ids."""
    ids, i = [], 0
    while i < len(text):
        if text.startswith("[MASK", i):
            end = text.index("]", i)
            spec = text[i + 5 : end]
            ids += [MASK_ID] * (int(spec[1:]) if spec.startswith(":") else 1)
            i = end + 1
        else:
            j = text.find("[MASK", i)
            j = len(text) if j < 0 else j
            ids += [b + 6 for b in text[i:j].encode()]
            i = j
    return ids


def main() -> None:
    torch.manual_seed(0)
    model = PerceiverForMaskedLM.from_pretrained(str(MODEL)).eval()
    cases = []
    with torch.no_grad():
        for text in TEXTS:
            ids = masked_ids(text)
            logits = model(inputs=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)))).logits[0]
            masks = []
            for pos in (p for p, t in enumerate(ids) if t == MASK_ID):
                top = logits[pos].softmax(-1).topk(5)
                masks.append({
                    "position": pos,
                    "candidates": [{"token": int(t), "score": float(s)} for t, s in zip(top.indices, top.values)],
                })
            cases.append({"text": text, "input_ids": ids, "masks": masks})
            print(text, [m["candidates"][0] for m in masks])
    weights = (MODEL / "model.safetensors").read_bytes()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "model": "models/default/model.safetensors",
        "sha256": hashlib.sha256(weights).hexdigest(),
        "reference": "transformers 5.24.0, torch 2.15.0, float32, CPU",
        "cases": cases,
    }, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
