"""Checks that a text classifier written by `perceiver train --task classify` loads in transformers
as PerceiverForSequenceClassification and gives our logits.

DIR holds the checkpoint (config.json, model.safetensors) and ours.json: {"texts", "input_ids",
"logits"}, our ids ([CLS] bytes [SEP]) and logits for each text. The fine-tuning test writes such a
directory when asked:

    PERCEIVER_KEEP_CLASSIFIER=/tmp/cls cargo test -p perceiver-train -p perceiver-cli --test classify
    .venv-ref/bin/python scripts/check_classifier_checkpoint.py /tmp/cls

The texts are tokenized again with transformers' PerceiverTokenizer (the ids must be ours), run one
by one and as one padded batch (attention mask), in float32 and float64; the worst |Δ logit| of each
is printed. Exit status 1 when an id differs, a label differs, or a float32 logit differs by more than
1e-4. Pins: scripts/requirements-reference.txt.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import PerceiverForSequenceClassification, PerceiverTokenizer

TOLERANCE = 1e-4


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    ours = json.loads((args.dir / "ours.json").read_text())
    texts, our_ids, our_logits = ours["texts"], ours["input_ids"], torch.tensor(ours["logits"], dtype=torch.float64)
    model, info = PerceiverForSequenceClassification.from_pretrained(str(args.dir), output_loading_info=True)
    model = model.eval()
    config = model.config
    print(f"{args.dir}: {type(model).__name__}, labels {config.id2label}, {model.num_parameters()} parameters")
    failed = False
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            print(f"{kind}: {sorted(info[kind])}")
            failed = True

    tokenizer = PerceiverTokenizer()
    for text, ids in zip(texts, our_ids):
        theirs = tokenizer(text)["input_ids"]
        if theirs != ids:
            print(f"ids differ for {text!r}: ours {ids}, PerceiverTokenizer {theirs}")
            failed = True

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    worst = {}
    for dtype in (torch.float32, torch.float64):
        model = model.to(dtype)
        with torch.no_grad():
            one_by_one = torch.cat([model(inputs=torch.tensor([ids])).logits for ids in our_ids])
            padded = model(inputs=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for how, logits in (("one by one", one_by_one), ("padded batch", padded)):
            diff = (logits.double() - our_logits).abs().max().item()
            worst[(dtype, how)] = diff
            print(f"  {str(dtype).removeprefix('torch.')}, {how}: worst |Δ logit| {diff:.2e}")
        labels_theirs = one_by_one.argmax(-1).tolist()
        labels_ours = our_logits.argmax(-1).tolist()
        if labels_theirs != labels_ours:
            print(f"labels differ: ours {labels_ours}, transformers {labels_theirs}")
            failed = True
    for text, row in zip(texts, our_logits):
        label = config.id2label[int(row.argmax())]
        print(f"  {label:>6}  {text}")
    worst32 = max(v for (dtype, _), v in worst.items() if dtype == torch.float32)
    print(f"worst |Δ logit| against transformers (float32): {worst32:.2e}")
    if worst32 > TOLERANCE:
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
