#!/usr/bin/env python3
"""Checks that an image classifier written by `perceiver train --task classify` loads in transformers
and gives our probabilities.

DIR is a checkpoint directory (config.json, model.safetensors, preprocessor_config.json), e.g. a run's
step-NNNNNN; IMAGES are image files or directories of them (searched recursively). For example::

    perceiver train --task classify --init-from tests/fixtures/classification/tiny_image_conv \\
        --new-labels --train images/ --out /tmp/run --steps 6 --batch-size 6
    .venv-ref/bin/python scripts/check_image_classifier_checkpoint.py /tmp/run/step-000006 images/

The model is loaded with AutoModelForImageClassification (it must build the class config.json's
``architectures`` names, with no missing, unexpected or mismatched weights), the images are prepared by
transformers' PerceiverImageProcessorPil from the checkpoint's preprocessor_config.json (read as
transformers' image pipeline reads them: load_image, RGB), and the model
is run in float64, one image at a time. The same images go through ``perceiver classify --json`` with
every label shown; the worst |Δ probability| over all images and labels is printed, and whether the
top-1 labels agree. Exit status 1 when a weight does not load (or transformers warns while loading),
a label differs, or a probability differs by more than --tolerance (1e-4). The hub is never contacted. Pins:
scripts/requirements-reference.txt.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent

from reference_env import check_pins  # noqa: E402

check_pins(transformers="5.24.0", torch="2.15.0")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForImageClassification  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402
from transformers.models.perceiver.image_processing_pil_perceiver import PerceiverImageProcessorPil  # noqa: E402

TOLERANCE = 1e-4
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

transformers.utils.logging.disable_progress_bar()


def image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


class Recorder(logging.Handler):
    """Keeps the warnings transformers logs while loading."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def ours(perceiver: Path, model_dir: Path, files: list[Path], num_labels: int) -> list[dict[str, float]]:
    """`perceiver classify --json` on every file: label → probability, one dict per file."""
    cmd = [str(perceiver), "classify", "--model", str(model_dir), "--json", "-k", str(num_labels)]
    cmd += [str(f) for f in files]
    print("$ " + " ".join(cmd))
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"perceiver classify failed (exit status {run.returncode}):\n{run.stderr.strip()}")
    out = run.stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == len(files), f"perceiver classify printed {len(rows)} lines for {len(files)} images"
    probs = []
    for file, row in zip(files, rows):
        assert all(entry["input"] == str(file) for entry in row), f"line for {file} names {row[0]['input']}"
        assert len(row) == num_labels, f"{file}: {len(row)} labels shown, the model has {num_labels}"
        probs.append({entry["label"]: entry["score"] for entry in row})
    return probs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="checkpoint directory")
    parser.add_argument("images", type=Path, nargs="+", help="image files or directories")
    parser.add_argument(
        "--perceiver",
        type=Path,
        default=Path(os.environ.get("PERCEIVER_BIN", REPO_ROOT / "target" / "release" / "perceiver")),
        help="the CLI (default: $PERCEIVER_BIN, else target/release/perceiver)",
    )
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args()
    if not args.perceiver.is_file():
        parser.error(f"no perceiver binary at {args.perceiver} (build it, or give --perceiver)")
    torch.set_num_threads(1)
    failed = False

    config = json.loads((args.dir / "config.json").read_text())
    architecture = config["architectures"][0]
    recorder = Recorder()
    transformers.utils.logging.get_logger("transformers").addHandler(recorder)
    model, info = AutoModelForImageClassification.from_pretrained(str(args.dir), output_loading_info=True)
    transformers.utils.logging.get_logger("transformers").removeHandler(recorder)
    model = model.double().eval()
    id2label = model.config.id2label
    num_labels = model.config.num_labels
    print(
        f"{args.dir}: {type(model).__name__}, labels {[id2label[i] for i in range(num_labels)]}, "
        f"{model.num_parameters()} parameters"
    )
    if type(model).__name__ != architecture:
        print(f"config.json names {architecture}, AutoModelForImageClassification built {type(model).__name__}")
        failed = True
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            print(f"{kind}: {sorted(info[kind])}")
            failed = True
    if recorder.messages:
        # transformers has printed them above (its LOAD REPORT table for missing or unexpected keys).
        print(f"transformers logged {len(recorder.messages)} warning(s) while loading the model")
        failed = True

    processor = PerceiverImageProcessorPil.from_pretrained(str(args.dir))
    files = image_files(args.images)
    assert files, "no images"
    theirs = []
    with torch.no_grad():
        for file in files:
            pixels = processor(load_image(str(file)), return_tensors="pt")["pixel_values"]
            logits = model(inputs=pixels.to(torch.float64)).logits[0]
            p = torch.softmax(logits, -1)
            theirs.append({id2label[i]: p[i].item() for i in range(num_labels)})

    worst, worst_at, disagree = 0.0, None, []
    for file, mine, hf in zip(files, ours(args.perceiver, args.dir, files, num_labels), theirs):
        if set(mine) != set(hf):
            print(f"{file}: perceiver's labels {sorted(mine)}, transformers' {sorted(hf)}")
            failed = True
            continue
        top_ours, top_hf = max(mine, key=mine.get), max(hf, key=hf.get)
        diff = max(abs(mine[k] - hf[k]) for k in hf)
        if diff > worst:
            worst, worst_at = diff, file
        if top_ours != top_hf:
            disagree.append(file)
        print(f"  {top_hf:>12} {hf[top_hf]:.6f}  |Δp| {diff:.2e}  {'' if top_ours == top_hf else f'ours: {top_ours}  '}{file}")
    print(f"top-1 labels agree: {len(files) - len(disagree)}/{len(files)}")
    print(f"worst |Δ probability| against transformers (float64): {worst:.2e} ({worst_at})")
    if disagree or worst > args.tolerance:
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
