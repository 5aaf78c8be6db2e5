#!/usr/bin/env python3
"""Generate parity fixtures for Perceiver IO's classifiers from Hugging Face transformers.

Four tiny models, one of each classification class transformers has, built from local configs
unlike the released ones (the hub is never contacted), with seeded random weights at a scale that
makes the logits informative:

    tests/fixtures/classification/<name>/
        config.json, model.safetensors   as ``save_pretrained`` writes them
        preprocessor_config.json         image models: a ``PerceiverImageProcessorPil`` with
                                         non-default sizes (``save_pretrained``)
        cases.safetensors                ``c.pixel_values`` (float32 [B, 3, H, W]) or ``c.input_ids`` /
                                         ``c.attention_mask`` (int64 [B, L], 0-padded) and
                                         ``c.logits`` (float32 [B, num_labels]), the model run in
                                         float64 and rounded to float32
        pipeline.json                    transformers' classification pipeline (float32) on inputs the
                                         Rust tests can give too: image models on the PNG images
                                         written beside it, the text model on a few texts

and ``tests/fixtures/classification/released_layouts.json``: for each released ImageNet class,
its config (as transformers' conversion script sets it) and every ``state_dict`` name and shape
of a model built from it (random weights, nothing saved but the names and shapes).

How to run (from the repository root; the environment of scripts/requirements-reference.txt)::

    .venv-ref/bin/python scripts/make_classification_fixtures.py

A second mode writes a released layout (``--full-fourier``: ``deepmind/vision-perceiver-fourier``,
48.4M parameters; ``--full-conv``, ``--full-learned``) with transformers' own random
initialisation, seeded, and transformers' default image processor: the models
``perceiver-bench classify`` times (not committed; ~200 MB each)::

    .venv-ref/bin/python scripts/make_classification_fixtures.py --full-fourier target/fourier-random
    .venv-ref/bin/python scripts/make_classification_fixtures.py --full-conv target/conv-random
    .venv-ref/bin/python scripts/make_classification_fixtures.py --full-learned target/learned-random
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
OUT = REPO_ROOT / "tests" / "fixtures" / "classification"


from reference_env import check_pins  # noqa: E402

check_pins()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    PerceiverConfig,
    PerceiverForImageClassificationConvProcessing,
    PerceiverForImageClassificationFourier,
    PerceiverForImageClassificationLearned,
    PerceiverForSequenceClassification,
    PerceiverTokenizer,
    pipeline,
)
from transformers.models.perceiver.image_processing_pil_perceiver import PerceiverImageProcessorPil  # noqa: E402
from transformers.models.perceiver.modeling_perceiver import PerceiverTrainablePositionEncoding  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def reinit_(model: nn.Module, seed: int) -> None:
    """Seeded random values of a useful scale for every parameter and BatchNorm statistic.

    LayerNorm weight U(0.7, 1.3), bias U(-0.3, 0.3); Linear and Conv2d weight N(0, (g/sqrt(fan_in))^2)
    (g = 1.5 for attention query/key, 1 otherwise), bias N(0, 0.2^2); BatchNorm weight U(0.5, 1.5),
    bias U(-0.5, 0.5), running mean N(0, 0.3^2), running variance U(0.5, 2); embeddings N(0, 0.5^2);
    position tables, latents and decoder queries N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    done = set()

    def normal(p, std):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
        done.add(id(p))

    def uniform(p, lo, hi):
        with torch.no_grad():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo)
        done.add(id(p))

    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            uniform(module.weight, 0.7, 1.3)
            uniform(module.bias, -0.3, 0.3)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            gain = 1.5 if name.rsplit(".", 1)[-1] in ("query", "key") else 1.0
            fan_in = module.weight[0].numel()
            normal(module.weight, gain / math.sqrt(fan_in))
            if module.bias is not None:
                normal(module.bias, 0.2)
        elif isinstance(module, nn.BatchNorm2d):
            uniform(module.weight, 0.5, 1.5)
            uniform(module.bias, -0.5, 0.5)
            normal(module.running_mean, 0.3)
            uniform(module.running_var, 0.5, 2.0)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 0.5)
        elif isinstance(module, PerceiverTrainablePositionEncoding):
            normal(module.position_embeddings, 1.0)
    normal(model.perceiver.embeddings.latents, 1.0)
    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missing, f"parameters not re-initialised: {missing}"


def labels(n: int, stem: str) -> dict[int, str]:
    return {i: f"{stem} {i}" for i in range(n)}


# name → (class, config kwargs, processor kwargs or None, image sizes of the pixel cases)
MODELS = {
    "tiny_image_fourier": (
        PerceiverForImageClassificationFourier,
        dict(
            num_latents=16, d_latents=48, d_model=261, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=4, num_cross_attention_heads=3, hidden_act="gelu",
            id2label=labels(7, "fourier class"),
        ),
        # A non-square output and a crop unlike the default ratio.
        dict(size={"height": 20, "width": 24}, crop_size={"height": 24, "width": 30}),
        [(20, 24)],
    ),
    "tiny_image_conv": (
        PerceiverForImageClassificationConvProcessing,
        dict(
            num_latents=12, d_latents=40, d_model=322, num_blocks=1, num_self_attends_per_block=3,
            num_self_attention_heads=5, num_cross_attention_heads=2, hidden_act="gelu_new",
            id2label=labels(5, "conv class"),
        ),
        dict(size={"height": 32, "width": 40}, crop_size={"height": 36, "width": 44}),
        [(32, 40)],
    ),
    "tiny_image_learned": (
        PerceiverForImageClassificationLearned,
        dict(
            num_latents=10, d_latents=32, d_model=512, num_blocks=3, num_self_attends_per_block=1,
            num_self_attention_heads=2, num_cross_attention_heads=4, hidden_act="gelu",
            cross_attention_shape_for_attention="q", image_size=12,
            id2label=labels(6, "learned class"),
        ),
        dict(size={"height": 12, "width": 12}, crop_size={"height": 16, "width": 16}),
        [(12, 12)],
    ),
    "tiny_text_classifier": (
        PerceiverForSequenceClassification,
        dict(
            num_latents=12, d_latents=36, d_model=40, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=3, num_cross_attention_heads=2, qk_channels=24, v_channels=36,
            max_position_embeddings=64, hidden_act="gelu",
            id2label={0: "negative", 1: "neutral", 2: "positive"},
        ),
        None,
        None,
    ),
}

# Images the pipeline reads (and the Rust tests read through the same files): odd sizes, and
# one grey image.
PIPELINE_IMAGES = [("wide.png", (37, 23), "RGB"), ("tall_grey.png", (19, 41), "L")]
PIPELINE_TEXTS = ["This is great!", "Not sure about this one.", "Terrible, awful, bad."]


def make_image(seed: int, size: tuple[int, int], mode: str) -> Image.Image:
    """Smooth colour gradients with noise: resampling sees structure, not only noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    channels = []
    for c in range(3):
        f = rng.uniform(0.5, 3.0, 2)
        wave = np.sin(f[0] * x / w * 6.28 + c) * np.cos(f[1] * y / h * 6.28 - c)
        channels.append(127.5 + 100 * wave + rng.normal(0, 12, (h, w)))
    rgb = np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def image_cases(seed: int, sizes) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cases = {}
    for h, w in sizes:
        # Normalised pixel values are roughly standard normal.
        cases["single.pixel_values"] = torch.randn((1, 3, h, w), generator=gen)
        cases["batch.pixel_values"] = torch.randn((3, 3, h, w), generator=gen)
    return cases


def text_cases(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def row(length):
        ids = torch.randint(6, 262, (length,), generator=gen)
        ids[0], ids[-1] = 4, 5  # [CLS] ... [SEP]
        return ids

    cases = {}
    for name, lengths, width in [("single", [29], 29), ("batch", [64, 17, 40], 64)]:
        ids = torch.zeros((len(lengths), width), dtype=torch.int64)
        mask = torch.zeros((len(lengths), width), dtype=torch.int64)
        for i, n in enumerate(lengths):
            ids[i, :n] = row(n)
            mask[i, :n] = 1
        cases[f"{name}.input_ids"] = ids
        cases[f"{name}.attention_mask"] = mask
    return cases


def forward64(model, cases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model64 = model.to(torch.float64)
    out = {}
    with torch.no_grad():
        for key in [k for k in cases if k.endswith(".pixel_values")]:
            logits = model64(inputs=cases[key].to(torch.float64)).logits
            out[key.replace("pixel_values", "logits")] = logits.to(torch.float32)
        for key in [k for k in cases if k.endswith(".input_ids")]:
            mask = cases[key.replace("input_ids", "attention_mask")]
            logits = model64(inputs=cases[key], attention_mask=mask).logits
            out[key.replace("input_ids", "logits")] = logits.to(torch.float32)
    model.to(torch.float32)
    return out


def write_model(name: str, seed: int) -> dict:
    cls, config_kwargs, processor_kwargs, sizes = MODELS[name]
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    config = PerceiverConfig(**config_kwargs)
    model = cls(config).eval()
    reinit_(model, seed)
    model.save_pretrained(out, safe_serialization=True)

    cases = image_cases(seed + 1, sizes) if sizes else text_cases(seed + 1)
    cases.update(forward64(model, cases))
    save_file({k: v.contiguous() for k, v in cases.items()}, out / "cases.safetensors")

    if processor_kwargs is not None:
        processor = PerceiverImageProcessorPil(**processor_kwargs)
        processor.save_pretrained(out)
        classify = pipeline("image-classification", model=model, image_processor=processor)
        results = []
        for i, (file, size, mode) in enumerate(PIPELINE_IMAGES):
            make_image(seed + 10 + i, size, mode).save(out / file)
            results.append({"input": file, "top_k": 3, "output": classify(str(out / file), top_k=3)})
    else:
        classify = pipeline("text-classification", model=model, tokenizer=PerceiverTokenizer())
        results = [{"input": t, "top_k": None, "output": classify(t, top_k=None)} for t in PIPELINE_TEXTS]
    (out / "pipeline.json").write_text(json.dumps(results, indent=1) + "\n")
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {cls.__name__}, {params} parameters, {config.num_labels} labels")
    return {"name": name, "class": cls.__name__, "parameters": params}


def released_layouts() -> list[dict]:
    """The ImageNet layouts as transformers' conversion script configures them."""
    base = dict(
        num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6,
        num_cross_attention_heads=1, num_self_attention_heads=8, qk_channels=None, v_channels=None,
        id2label=labels(1000, "imagenet class"),
    )
    layouts = [
        (PerceiverForImageClassificationLearned, dict(d_model=512, image_size=224)),
        (PerceiverForImageClassificationFourier, dict(d_model=261)),
        (PerceiverForImageClassificationConvProcessing, dict(d_model=322)),
    ]
    out = []
    for cls, extra in layouts:
        config = PerceiverConfig(**base, **extra)
        with torch.device("meta"):
            model = cls(config)
        tensors = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        config_dict = config.to_diff_dict()
        config_dict["architectures"] = [cls.__name__]
        config_dict.pop("id2label")
        config_dict.pop("label2id", None)
        config_dict["num_labels"] = 1000
        out.append({"class": cls.__name__, "config": config_dict, "tensors": tensors})
        print(f"{cls.__name__}: {len(tensors)} tensors, {sum(math.prod(s) for _, s in tensors)} values")
    return out


FULL_LAYOUTS = {
    "--full-fourier": (PerceiverForImageClassificationFourier, dict(d_model=261)),
    "--full-conv": (PerceiverForImageClassificationConvProcessing, dict(d_model=322)),
    "--full-learned": (PerceiverForImageClassificationLearned, dict(d_model=512, image_size=224)),
}


def write_full(flag: str, out: Path) -> None:
    """A released ImageNet layout (as ``released_layouts`` configures it) with transformers' own
    random initialisation, seeded, and transformers' default image processor."""
    cls, extra = FULL_LAYOUTS[flag]
    base = dict(
        num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6,
        num_cross_attention_heads=1, num_self_attention_heads=8, qk_channels=None, v_channels=None,
        id2label=labels(1000, "imagenet class"),
    )
    torch.manual_seed(0)
    model = cls(PerceiverConfig(**base, **extra)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    PerceiverImageProcessorPil().save_pretrained(out)
    print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] in FULL_LAYOUTS:
        write_full(sys.argv[1], Path(sys.argv[2]))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(MODELS):
        write_model(name, 1000 + 100 * i)
    (OUT / "released_layouts.json").write_text(json.dumps(released_layouts()) + "\n")


if __name__ == "__main__":
    main()
