"""Checks that `perceiver convert` writes directories transformers loads, with DeepMind's numbers.

For each tiny DeepMind checkpoint in tests/fixtures/deepmind/ (made by DeepMind's own code, see
scripts/make_deepmind_fixtures.py), runs `perceiver convert` (its default activation, gelu_new,
and then --activation gelu), loads the directory with transformers'
PerceiverForMaskedLM.from_pretrained (no missing, unexpected or mis-shaped tensor allowed), runs
the recorded inputs with their attention masks, and compares the logits at every real (unpadded)
position with DeepMind's `apply` (the recorded float64 run). DeepMind's decoder masks padded
queries and transformers' does not, so padded positions are not compared.

Pins: scripts/requirements-reference.txt (run with .venv-ref/bin/python), from the repository root:

    cargo build -p perceiver-cli
    .venv-ref/bin/python scripts/check_convert_transformers.py --binary target/debug/perceiver
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
import transformers
from transformers import PerceiverForMaskedLM

transformers.utils.logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "deepmind"
# (fixture, pickle, config.json the model needs or None)
MODELS = [
    ("mlm_colab_constants", "params.p2.pickle", None),
    ("mlm_config_json", "params.p3.pickle", "config.json"),
]
TOLERANCE = 1e-4


def worst_difference(model_dir: Path, fixture: Path) -> float:
    model, info = PerceiverForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{model_dir}: {problems}"
    model.eval()
    cases = load_file(str(fixture / "cases.safetensors"))
    names = sorted(k[: -len(".logits")] for k in cases if k.endswith(".logits"))
    worst = 0.0
    for name in names:
        ids = torch.from_numpy(cases[f"{name}.input_ids"])
        mask = torch.from_numpy(cases[f"{name}.input_mask"])
        with torch.no_grad():
            logits = model(inputs=ids, attention_mask=mask).logits.numpy()
        real = cases[f"{name}.input_mask"].astype(bool)
        diff = np.abs(logits - cases[f"{name}.logits"])[real]
        worst = max(worst, float(diff.max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(REPO_ROOT / "target" / "debug" / "perceiver"))
    args = parser.parse_args()

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for fixture_name, pickle_name, config_name in MODELS:
            fixture = FIXTURES / fixture_name
            for activation in [None, "gelu"]:
                out = Path(tmp) / f"{fixture_name}-{activation or 'default'}"
                command = [args.binary, "convert", str(fixture / pickle_name), "--out", str(out)]
                if config_name:
                    command += ["--model-config", str(fixture / config_name)]
                if activation:
                    command += ["--activation", activation]
                subprocess.run(command, check=True, capture_output=True)
                written = json.loads((out / "config.json").read_text())["hidden_act"]
                worst = worst_difference(out, fixture)
                print(f"{fixture_name:<22} hidden_act={written:<9} transformers vs DeepMind: max |Δ logit| = {worst:.2e}")
                if activation is None and worst > TOLERANCE:
                    print(f"  FAILED: above {TOLERANCE}")
                    failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
