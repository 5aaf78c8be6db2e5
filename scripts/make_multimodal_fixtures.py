#!/usr/bin/env python3
"""Generate parity fixtures for Perceiver IO's multimodal autoencoder from Hugging Face transformers.

One tiny ``PerceiverForMultimodalAutoencoding`` (video + audio + label), built from a local config
unlike the released one (the hub is never contacted), with seeded random weights at a scale that
makes every output informative:

    tests/fixtures/multimodal/
        released_layout.json         deepmind/multimodal-perceiver's config as transformers'
                                     conversion script sets it, every ``state_dict`` name and shape
                                     of a model built from it, and its parameter count
        tiny_multimodal/
            config.json, model.safetensors   as ``save_pretrained`` writes them (weights stored in
                                     bfloat16 to keep the fixture small; every number below is
                                     computed from those bfloat16 values, so parity is exact)
            cases.safetensors        float32 arrays (int64 for indices):
                image                [1, T, 3, S, S] the video, values in [0, 1] as the Colab's
                audio                [1, T * audio_samples_per_frame, 1] samples in [-1, 1]
                label                [1, num_labels] (random: the model replaces it by its mask token)
                full.{image,audio,label}      one call with ``subsampled_output_points`` naming
                                     every query: image [1, T*S*S, 3], audio [1, n_audio], label
                                     [1, num_labels] (model in float64, rounded to float32)
                chunked.{image,audio,label}   the same assembled from ``len(CHUNKS)`` calls, each
                                     decoding one contiguous range of image and audio queries (the
                                     Colab's loop; the label from the last call)
                chunked.image_bounds, chunked.audio_bounds   int64 [chunks + 1] the ranges' ends
                scattered.{image_points,audio_points}   int64: unsorted query indices of one call
                scattered.{image,audio,label}   its outputs ([1, n, 3], [1, n * samples_per_patch],
                                     [1, num_labels])
                variant.image, variant.audio, variant.full.{image,audio,label}   the same weights
                                     under the sizes of ``variant.json`` (no tensor depends on
                                     them): image_size 8 for 16x12 frames, 3 frames out for 2 in;
                                     every query in one call
            variant.json             those config fields

What transformers does, and these fixtures pin (modeling_perceiver.py, 5.24):
- Inputs: audio cut into patches of ``samples_per_patch`` samples + 1-D Fourier features (192
  bands, max resolution the audio length); video ``space_to_depth`` by 4 (channels (dh, dw, c)) +
  3-D Fourier features (32 bands, max resolution (num_frames, image_size, image_size)) over the
  (T, S/4, S/4) grid; the label as one row. Each modality is padded with its own trainable row to
  the widest + 4 channels, then masked: the label row is *always* replaced by the trainable mask
  token (``mask_probs`` label 1.0, applied in eval too), so the label input never reaches the model.
  Rows in sorted modality order: audio, image, label.
- Decoding: queries are the Fourier features of ``-1 + 2 * index / size`` for each unravelled
  query index (``subsampled_output_points``; without them transformers' image query fails: it
  builds its positions over the input's channel count), the label's one trainable query; each
  padded to the widest + 2 channels; one cross-attention (1 head, no query residual), a final
  layer to ``output_num_channels``, then per modality a linear layer (audio: samples_per_patch
  samples per query; image: RGB; label: logits).

How to run (from the repository root; the environment of scripts/requirements-reference.txt)::

    .venv-ref/bin/python scripts/make_multimodal_fixtures.py

A second mode writes the released layout (``released_config()``) with transformers' own random
initialisation, seeded (``torch.manual_seed(0)``), for ``perceiver-bench autoencode`` and
``scripts/bench_autoencode_reference.py`` (not committed; ~80 MB)::

    .venv-ref/bin/python scripts/make_multimodal_fixtures.py --full target/multimodal-random
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
OUT = REPO_ROOT / "tests" / "fixtures" / "multimodal"


from reference_env import check_pins  # noqa: E402

check_pins()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PerceiverConfig, PerceiverForMultimodalAutoencoding  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

NAME = "tiny_multimodal"
NUM_LABELS = 5
# Unlike the released model: 2 frames of 16x16, 48 samples a frame in patches of 8, 12 latents of
# 32 channels, two latent layers run twice, explicit encoder widths (qk 16; the decoder's are still
# resolved by the "kv" rule), the tanh GELU, small output and label-query widths. d_model is set to
# the preprocessor's width as the conversion script does (704 for the released model); transformers
# never reads it for this class.
CONFIG = dict(
    num_frames=2, image_size=16, audio_samples_per_frame=48, samples_per_patch=8,
    output_shape=[1, 2, 16, 16], output_num_channels=24, _label_trainable_num_channels=40,
    num_latents=12, d_latents=32, d_model=397, num_blocks=2, num_self_attends_per_block=2,
    num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=16, v_channels=32,
    cross_attention_shape_for_attention="kv", hidden_act="gelu_new",
    id2label={i: f"class_{i}" for i in range(NUM_LABELS)},
)
# Contiguous ranges of (image, audio) queries, one call each: uneven on purpose.
CHUNKS = 3
# The same weights under other sizes no tensor depends on: the video positions' top frequency in
# space (image_size) unlike the frames' size, non-square frames, and more frames out than in.
VARIANT = dict(image_size=8, output_shape=[1, 3, 16, 12])


def reinit_(model: nn.Module, seed: int) -> None:
    """Seeded random values of a useful scale for every parameter.

    LayerNorm weight U(0.7, 1.3), bias U(-0.3, 0.3); Linear weight N(0, (g/sqrt(fan_in))^2) (g = 1.5
    for attention query/key, 1 otherwise), bias N(0, 0.2^2); latents, paddings, mask tokens and the
    label query N(0, 1).
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
        elif isinstance(module, nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            gain = {"query": 1.5, "key": 1.5}.get(leaf, 1.0)
            normal(module.weight, gain / math.sqrt(module.in_features))
            normal(module.bias, 0.2)
    for name, p in model.named_parameters():
        if id(p) not in done:
            assert any(k in name for k in ("latents", "padding", "mask", "position_embeddings")), name
            normal(p, 1.0)


def make_inputs(seed: int, config: PerceiverConfig) -> dict[str, torch.Tensor]:
    """A smooth moving colour pattern with noise in [0, 1] (as the Colab's frames / 255) of the
    reconstruction's frame size, two tones with noise in [-1, 1], and a random label vector."""
    rng = np.random.default_rng(seed)
    t, (h, w) = config.num_frames, config.output_shape[2:]
    s = max(h, w)
    tt, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    channels = []
    for c in range(3):
        f = rng.uniform(0.5, 2.0, 2)
        wave = np.sin(f[0] * (x + 2 * tt) / s * 6.28 + c) * np.cos(f[1] * y / s * 6.28 - c)
        channels.append(0.5 + 0.4 * wave + rng.normal(0, 0.05, wave.shape))
    image = np.clip(np.stack(channels, 1), 0, 1)[None]  # [1, T, 3, S, S]
    n = t * config.audio_samples_per_frame
    k = np.arange(n)
    audio = 0.5 * np.sin(k / 3.0) + 0.3 * np.sin(k / 11.0 + 1) + rng.normal(0, 0.05, n)
    label = rng.normal(0, 1, (1, config.num_labels))
    return {
        "image": torch.from_numpy(image.astype(np.float32)),
        "audio": torch.from_numpy(np.clip(audio, -1, 1).astype(np.float32)[None, :, None]),
        "label": torch.from_numpy(label.astype(np.float32)),
    }


def run(model, inputs, image_points, audio_points) -> dict[str, np.ndarray]:
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model(
            inputs={k: v.to(dtype) for k, v in inputs.items()},
            subsampled_output_points={
                "image": torch.as_tensor(image_points, dtype=torch.int64),
                "audio": torch.as_tensor(audio_points, dtype=torch.int64),
                "label": None,
            },
        ).logits
    return {k: v.to(torch.float32).numpy() for k, v in out.items()}


def bounds(total: int, chunks: int) -> list[int]:
    """Ends of ``chunks`` contiguous ranges covering 0..total, as even as integers allow."""
    return [total * i // chunks for i in range(chunks + 1)]


def write_model(seed: int) -> None:
    out = OUT / NAME
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    config = PerceiverConfig(**CONFIG)
    model = PerceiverForMultimodalAutoencoding(config).eval()
    reinit_(model, seed)
    # Stored in bfloat16 (half the bytes); the reference runs on exactly those values.
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["PerceiverForMultimodalAutoencoding"], saved["architectures"]
    for key in ("num_frames", "image_size", "audio_samples_per_frame", "samples_per_patch",
                "output_shape", "output_num_channels", "_label_trainable_num_channels", "id2label"):
        assert key in saved, f"config.json lacks {key}"
    model.to(torch.float64)

    inputs = make_inputs(seed + 1, config)
    n_image = math.prod(config.output_shape[1:])
    n_audio = config.num_frames * config.audio_samples_per_frame // config.samples_per_patch
    cases = {k: v for k, v in inputs.items()}

    full = run(model, inputs, np.arange(n_image), np.arange(n_audio))
    for k, v in full.items():
        cases[f"full.{k}"] = torch.from_numpy(v)

    image_bounds, audio_bounds = bounds(n_image, CHUNKS), bounds(n_audio, CHUNKS)
    parts = [
        run(model, inputs, np.arange(image_bounds[i], image_bounds[i + 1]),
            np.arange(audio_bounds[i], audio_bounds[i + 1]))
        for i in range(CHUNKS)
    ]
    chunked = {
        "image": np.concatenate([p["image"] for p in parts], axis=1),
        "audio": np.concatenate([p["audio"] for p in parts], axis=1),
        "label": parts[-1]["label"],
    }
    for k, v in chunked.items():
        cases[f"chunked.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
        diff = np.abs(v - full[k]).max()
        assert diff < 1e-6 * max(1.0, np.abs(full[k]).max()), f"chunked {k} differs by {diff}"
    cases["chunked.image_bounds"] = torch.tensor(image_bounds, dtype=torch.int64)
    cases["chunked.audio_bounds"] = torch.tensor(audio_bounds, dtype=torch.int64)

    rng = np.random.default_rng(seed + 2)
    image_points = rng.choice(n_image, 40, replace=False)
    audio_points = rng.choice(n_audio, 5, replace=False)
    scattered = run(model, inputs, image_points, audio_points)
    cases["scattered.image_points"] = torch.from_numpy(image_points.astype(np.int64))
    cases["scattered.audio_points"] = torch.from_numpy(audio_points.astype(np.int64))
    for k, v in scattered.items():
        cases[f"scattered.{k}"] = torch.from_numpy(v)
    spp = config.samples_per_patch
    assert np.allclose(scattered["image"][0], full["image"][0, image_points], rtol=0, atol=1e-9)
    full_audio = full["audio"][0].reshape(n_audio, spp)
    assert np.allclose(scattered["audio"][0].reshape(-1, spp), full_audio[audio_points], rtol=0, atol=1e-9)

    # The label input is masked away: another label gives the same outputs.
    other = dict(inputs, label=torch.zeros_like(inputs["label"]))
    again = run(model, other, np.arange(8), np.arange(2))
    assert np.array_equal(again["label"], full["label"]) and np.array_equal(again["image"][0], full["image"][0, :8])

    # The variant sizes on the same weights (every query in one call).
    variant_config = PerceiverConfig(**dict(CONFIG, **VARIANT))
    variant = PerceiverForMultimodalAutoencoding(variant_config).eval().to(torch.float64)
    variant.load_state_dict(model.state_dict())
    variant_inputs = make_inputs(seed + 3, variant_config)
    n_variant = math.prod(variant_config.output_shape[1:])
    variant_out = run(variant, variant_inputs, np.arange(n_variant), np.arange(n_audio))
    cases["variant.image"] = variant_inputs["image"]
    cases["variant.audio"] = variant_inputs["audio"]
    for k, v in variant_out.items():
        cases[f"variant.full.{k}"] = torch.from_numpy(v)
    (out / "variant.json").write_text(json.dumps(VARIANT) + "\n")
    print(f"variant {VARIANT}: image {list(variant_out['image'].shape)}, std {variant_out['image'].std():.4f}")

    # How far transformers' own float32 run lies from the float64 reference.
    full32 = run(model.to(torch.float32), inputs, np.arange(n_image), np.arange(n_audio))
    model.to(torch.float64)
    save_file({k: v.contiguous() for k, v in cases.items()}, out / "cases.safetensors")
    params = sum(p.numel() for p in model.parameters())
    print(f"{NAME}: {params} parameters; queries: {n_audio} audio, {n_image} image, 1 label")
    for k in ("image", "audio", "label"):
        v = full[k]
        print(
            f"  {k}: shape {list(v.shape)}, std {v.std():.4f}, max |v| {np.abs(v).max():.4f}; "
            f"transformers float32 vs float64: max |Δ| {np.abs(full32[k] - v).max():.2e}"
        )


def released_config() -> PerceiverConfig:
    """deepmind/multimodal-perceiver as transformers' conversion script configures it (image_size,
    num_frames, audio and output sizes stay at their defaults; the labels are Kinetics-700's 700)."""
    config = PerceiverConfig(
        num_latents=28 * 28 * 1, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
        num_self_attention_heads=8, num_cross_attention_heads=1,
    )
    config.num_labels = 700
    return config


def released_layout() -> dict:
    config = released_config()
    with torch.device("meta"):
        model = PerceiverForMultimodalAutoencoding(config)
    tensors = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    parameters = sum(math.prod(s) for _, s in tensors)
    assert parameters == sum(p.numel() for p in model.parameters())
    config_dict = config.to_diff_dict()
    config_dict["architectures"] = ["PerceiverForMultimodalAutoencoding"]
    print(f"PerceiverForMultimodalAutoencoding (released layout): {len(tensors)} tensors, {parameters} parameters")
    return {
        "class": "PerceiverForMultimodalAutoencoding", "config": config_dict, "tensors": tensors,
        "parameters": parameters,
    }


def write_full(out: Path) -> None:
    """The released layout with transformers' own seeded random initialisation, as
    ``save_pretrained`` writes it (safetensors, float32)."""
    torch.manual_seed(0)
    model = PerceiverForMultimodalAutoencoding(released_config()).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--full":
        write_full(Path(sys.argv[2]))
        return
    assert len(sys.argv) == 1, __doc__
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    write_model(4000)
    (OUT / "released_layout.json").write_text(json.dumps(released_layout()) + "\n")


if __name__ == "__main__":
    main()
