"""Checks that `perceiver convert` writes directories transformers loads, with DeepMind's numbers.

For each tiny DeepMind checkpoint in tests/fixtures/deepmind/ (made by DeepMind's own code, see
scripts/make_deepmind_fixtures.py), runs `perceiver convert` (its default activation, gelu_new,
and then --activation gelu), loads the directory with transformers'
PerceiverForMaskedLM.from_pretrained (no missing, unexpected or mis-shaped tensor allowed), runs
the recorded inputs with their attention masks, and compares the logits at every real (unpadded)
position with DeepMind's `apply` (the recorded float64 run). DeepMind's decoder masks padded
queries and transformers' does not, so padded positions are not compared.

The optical-flow fixture (tests/fixtures/deepmind/flow/, bare params as
optical_flow_checkpoint.pystate) the same way: converted without and with its config.json, loaded
with PerceiverForOpticalFlow.from_pretrained, run on each recorded tile (transformers' input: each
pixel's 3x3 patches in both frames, `[1, 2, 27, H, W]`), its logits compared with DeepMind's model
output at the recorded pixels, relative to the largest (tolerances as in
crates/perceiver/tests/deepmind.rs: 3e-4 on the Colab's 368x496 tile, 1e-4 on the 48x56 one).

The ImageNet fixtures (tests/fixtures/deepmind/imagenet_*/, `{"params", "state"}` as the
imagenet_*.pystate files): converted (with the Fourier model's config.json for its `config_json`
run), loaded with the class the written config.json names (no missing, unexpected or mis-shaped
tensor; BatchNorm's num_batches_tracked included), run on the recorded normalised pixels and
compared with DeepMind's logits (absolute, 1e-4). transformers' classes differ from DeepMind's
code in two places, which the converted config.json records under this library's own keys and
transformers ignores: the conv stem's padding (`stem_padding: "same"`, Haiku's 'SAME': 224 ->
112 -> 56 where transformers gives 55) and the learned model's decoder query residual
(`decoder_use_query_residual: false`; transformers always adds it). For those two models the
script reports transformers as it is (expected to differ), then asserts agreement after setting
transformers' modules to DeepMind's behaviour (the decoder attention's `use_query_residual`;
'SAME' padding in the stem's convolution and max-pool).

The video fixture (tests/fixtures/deepmind/video/, bare params as
video_autoencoding_checkpoint.pystate): converted with its config.json, loaded with
PerceiverForMultimodalAutoencoding.from_pretrained, run on the recorded video (`[1, T, 3, H, W]`),
audio (`[1, samples, 1]`) and an all-zero label with each recorded `subsampled_output_points`,
its audio, image and label logits compared with DeepMind's (absolute, 1e-4).

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
from transformers import PerceiverForMaskedLM, PerceiverForOpticalFlow

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


# (run, config.json it needs or None, tolerance relative to the largest output)
FLOW_RUNS = [("colab", None, 3e-4), ("config_json", "config.json", 1e-4)]


def flow_patches(frames_u8: np.ndarray) -> np.ndarray:
    """transformers' input `[1, 2, 27, H, W]` for frames `[2, H, W, 3]` (uint8): the Colab's
    normalize (float64, then float32), each pixel's 3x3 neighbourhood, zero outside the tile,
    channel (i*3 + j)*3 + c."""
    frames = (frames_u8.astype(np.float64) / 255.0 * 2 - 1).astype(np.float32)
    _, h, w, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.empty((2, 27, h, w), np.float32)
    for i in range(3):
        for j in range(3):
            for c in range(3):
                out[:, (i * 3 + j) * 3 + c] = padded[:, i : i + h, j : j + w, c]
    return out[None]


def flow_worst(model_dir: Path, run: str) -> float:
    model, info = PerceiverForOpticalFlow.from_pretrained(model_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{model_dir}: {problems}"
    model.eval()
    cases = load_file(str(FIXTURES / "flow" / "cases.safetensors"))
    if f"{run}.frames_small" in cases:
        frames = cases[f"{run}.frames_small"].repeat(8, axis=1).repeat(8, axis=2)
        pixels = cases[f"{run}.pixels"]
    else:
        frames = cases[f"{run}.frames"]
        pixels = np.arange(frames.shape[1] * frames.shape[2])
    with torch.no_grad():
        logits = model(inputs=torch.from_numpy(flow_patches(frames))).logits.numpy()
    ours = logits.reshape(-1, 2)[pixels]
    theirs = cases[f"{run}.output"]
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# (fixture, run, config.json it needs or None)
IMAGENET_RUNS = [
    ("imagenet_learned", "colab", None),
    ("imagenet_fourier", "colab", None),
    ("imagenet_fourier", "config_json", "config.json"),
    ("imagenet_conv", "colab", None),
]


def same_padding(n: int, window: int, stride: int):
    """TensorFlow's / Haiku's 'SAME': (before, after) for a side of n."""
    out = -(-n // stride)
    total = max((out - 1) * stride + window - n, 0)
    return total // 2, total - total // 2


class SamePad(torch.nn.Module):
    """Pads NCHW input as 'SAME' does for `window`/`stride`, with `value`."""

    def __init__(self, window: int, stride: int, value: float):
        super().__init__()
        self.window, self.stride, self.value = window, stride, value

    def forward(self, x):
        top, bottom = same_padding(x.shape[2], self.window, self.stride)
        left, right = same_padding(x.shape[3], self.window, self.stride)
        return torch.nn.functional.pad(x, (left, right, top, bottom), value=self.value)


def as_deepmind(model) -> list:
    """Sets transformers' modules to what DeepMind's code does where the converted config.json
    says so; returns what was changed."""
    config = model.config
    changed = []
    if getattr(config, "decoder_use_query_residual", True) is False:
        model.perceiver.decoder.decoder.decoding_cross_attention.attention.use_query_residual = False
        changed.append("decoder query residual off")
    if getattr(config, "stem_padding", None) == "same":
        stem = model.perceiver.input_preprocessor.convnet
        stem.conv.zero_pad_2d = SamePad(7, 2, 0.0)
        stem.max_pool = torch.nn.Sequential(SamePad(3, 2, float("-inf")), torch.nn.MaxPool2d(3, 2))
        changed.append("'SAME' stem")
    return changed


def imagenet_worst(model, fixture: Path, run: str) -> float:
    cases = load_file(str(fixture / "cases.safetensors"))
    worst = 0.0
    for c in range(100):
        if f"case{c}.pixels" not in cases:
            break
        pixels = torch.from_numpy(cases[f"case{c}.pixels"]).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            logits = model(inputs=pixels).logits.numpy()
        worst = max(worst, float(np.abs(logits - cases[f"{run}.case{c}.logits"]).max()))
    return worst


def check_imagenet(binary: str, tmp: str) -> bool:
    failed = False
    for name, run, config_name in IMAGENET_RUNS:
        fixture = FIXTURES / name
        out = Path(tmp) / f"{name}-{run}"
        command = [binary, "convert", str(fixture / "params.pystate"), "--out", str(out)]
        if config_name:
            command += ["--model-config", str(fixture / config_name)]
        printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
        assert (out / "preprocessor_config.json").is_file(), out
        architecture = json.loads((out / "config.json").read_text())["architectures"][0]
        cls = getattr(transformers, architecture)
        model, info = cls.from_pretrained(out, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{out}: {problems}"
        model.eval()
        as_is = imagenet_worst(model, fixture, run)
        changed = as_deepmind(model)
        label = f"{name}/{run}"
        if changed:
            print(f"{label:<30} transformers as is vs DeepMind: max |Δ logit| = {as_is:.2e} (differs by design)")
            worst = imagenet_worst(model, fixture, run)
            print(f"{label:<30} transformers + {', '.join(changed)} vs DeepMind: max |Δ logit| = {worst:.2e}")
        else:
            worst = as_is
            print(f"{label:<30} transformers vs DeepMind: max |Δ logit| = {worst:.2e}")
        print(f"    convert: {printed}")
        if worst > TOLERANCE:
            print(f"  FAILED: above {TOLERANCE}")
            failed = True
    return failed


def check_video(binary: str, tmp: str) -> bool:
    fixture = FIXTURES / "video"
    out = Path(tmp) / "video"
    command = [binary, "convert", str(fixture / "params.pystate"), "--out", str(out),
               "--model-config", str(fixture / "config.json")]
    subprocess.run(command, check=True, capture_output=True)
    model, info = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{out}: {problems}"
    model.eval()
    cases = load_file(str(fixture / "cases.safetensors"))
    inputs = dict(
        image=torch.from_numpy(cases["frames"]).permute(0, 3, 1, 2)[None].contiguous(),
        audio=torch.from_numpy(cases["audio"])[None, :, None],
        label=torch.zeros(1, model.config.num_labels),
    )
    failed = False
    for chunk in ["all", "chunk1of4"]:
        points = dict(
            image=torch.from_numpy(cases[f"{chunk}.image_points"]),
            audio=torch.from_numpy(cases[f"{chunk}.audio_points"]),
            label=None,
        )
        with torch.no_grad():
            logits = model(inputs=inputs, subsampled_output_points=points).logits
        worst = {k: float(np.abs(logits[k][0].numpy().reshape(-1) - cases[f"{chunk}.{k}"].reshape(-1)).max())
                 for k in ("audio", "image", "label")}
        print(f"video/{chunk:<24} transformers vs DeepMind: max |Δ| "
              + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        if max(worst.values()) > TOLERANCE:
            print(f"  FAILED: above {TOLERANCE}")
            failed = True
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(REPO_ROOT / "target" / "debug" / "perceiver"))
    parser.add_argument("--only", choices=["imagenet", "video"], help="check only these fixtures")
    args = parser.parse_args()

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "video"):
            failed |= check_video(args.binary, tmp)
        if args.only in (None, "imagenet"):
            failed |= check_imagenet(args.binary, tmp)
        if args.only is not None:
            return 1 if failed else 0
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
        fixture = FIXTURES / "flow"
        for run, config_name, tolerance in FLOW_RUNS:
            out = Path(tmp) / f"flow-{run}"
            command = [args.binary, "convert", str(fixture / "params.pystate"), "--out", str(out)]
            if config_name:
                command += ["--model-config", str(fixture / config_name)]
            subprocess.run(command, check=True, capture_output=True)
            worst = flow_worst(out, run)
            print(f"flow/{run:<17} transformers vs DeepMind: max |Δ output| / largest = {worst:.2e}")
            if worst > tolerance:
                print(f"  FAILED: above {tolerance}")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
