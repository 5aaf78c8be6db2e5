#!/usr/bin/env python3
"""Generate parity fixtures for Perceiver IO's optical flow from Hugging Face transformers.

Two tiny ``PerceiverForOpticalFlow`` models, built from local configs unlike the released one (the
hub is never contacted), with seeded random weights at a scale that makes the flow informative, and
frame pairs tiled as DeepMind's optical-flow Colab tiles them:

    tests/fixtures/flow/
        pairs.json                   every pair: model, name, frame files, frame size, tile size, the
                                     shift between the frames, the Colab's grid of tile starts
        frames/<model>-<pair>-1.png  the first frame (RGB, 8 bits)
        frames/<model>-<pair>-2.png  the second: the same content moved by pairs.json's ``shift``
        released_layout.json         deepmind/optical-flow-perceiver's config as transformers'
                                     conversion script sets it, every ``state_dict`` name and shape
                                     of a model built from it, and its parameter count
        <model>/
            config.json, model.safetensors   as ``save_pretrained`` writes them (weights stored in
                                     bfloat16 to keep the fixture small; every number below is
                                     computed from those bfloat16 values, so parity is exact)
            cases.safetensors        float32 arrays, keyed ``<pair>.<array>``:
                <pair>.patches       [1, 2, 27, th, tw] transformers' input for the pair's first
                                     tile; only for tiny_flow's grid2x2 (``PATCHES``): the same
                                     function of the frames for every pair, and ~0.6 MB each
                <pair>.tile_logits   [1, th, tw, 2] transformers' logits for that first tile (model
                                     run in float64, rounded to float32)
                <pair>.flow          [H, W, 2] the Colab's tiling around those logits, in pixels
                <pair>.grid          int64 [n, 2] tile starts (y, x) in the Colab's order

The pipeline transcribed (DeepMind's Colab; transformers takes its model, not its tiling):
frames scaled by ``im / 255 * 2 - 1`` (float64, then float32); per tile, each frame's 3x3
neighbourhood with zero padding around the *tile*, channel ``(i*3 + j)*3 + c`` for row offset i,
column offset j, colour c; tile starts ``range(0, H, th - 20)`` with the last replaced by ``H - th``
(the same for the width), in ``itertools.product(ys, xs)`` order; per tile the flow is the logits
× 20 (transformers' decoder has already divided by 100), weighted by ``min(x + 1, tw - x, y + 1,
th - y)`` and summed in float32; the flow is that sum ÷ the summed weights.

How to run (from the repository root; the environment of scripts/requirements-reference.txt)::

    .venv-ref/bin/python scripts/make_flow_fixtures.py

A second mode writes the released layout (transformers' own random initialisation, seeded) for
``scripts/bench_flow_reference.py`` (not committed; ~165 MB)::

    .venv-ref/bin/python scripts/make_flow_fixtures.py --full target/flow-random
"""

from __future__ import annotations

import itertools
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
OUT = REPO_ROOT / "tests" / "fixtures" / "flow"


from reference_env import check_pins  # noqa: E402

check_pins()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PerceiverConfig, PerceiverForOpticalFlow  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MIN_OVERLAP = 20  # the Colab's compute_grid_indices default
FLOW_SCALE_FACTOR = 20.0  # the Colab's; transformers' logits lack it
# Gain of the decoder's final projection: the flow is the logits × 0.2, and the rest of the
# re-initialised model gives logits of order 1, so this makes the flow a few pixels.
FINAL_LAYER_GAIN = 20.0


def reinit_(model: nn.Module, seed: int) -> None:
    """Seeded random values of a useful scale for every parameter.

    LayerNorm weight U(0.7, 1.3), bias U(-0.3, 0.3); Linear weight N(0, (g/sqrt(fan_in))^2) (g = 1.5
    for attention query/key, ``FINAL_LAYER_GAIN`` for the decoder's final projection, 1 otherwise),
    bias N(0, 0.2^2); latents N(0, 1).
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
            gain = {"query": 1.5, "key": 1.5, "final_layer": FINAL_LAYER_GAIN}.get(leaf, 1.0)
            normal(module.weight, gain / math.sqrt(module.in_features))
            normal(module.bias, 0.2)
    normal(model.perceiver.embeddings.latents, 1.0)
    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missing, f"parameters not re-initialised: {missing}"


# name → (config kwargs, pairs: (pair name, (H, W) of the frames, (dy, dx) shift of the content))
MODELS = {
    "tiny_flow": (
        dict(
            train_size=[48, 56], num_latents=16, d_latents=32, d_model=322, num_blocks=1,
            num_self_attends_per_block=2, num_self_attention_heads=4, num_cross_attention_heads=1,
            hidden_act="gelu", cross_attention_shape_for_attention="kv",
        ),
        [
            ("grid2x2", (54, 70), (2, 3)),
            # Exactly one tile's size: the Colab's grid then starts (0, 0) four times (range(0, 48,
            # 28) = [0, 28], its last replaced by 48 - 48 = 0), and averages four equal tiles.
            ("exact", (48, 56), (-1, 2)),
            ("grid2x3", (52, 100), (3, -2)),
        ],
    ),
    # d_model is left at its default (768): transformers sizes the flow model from its
    # preprocessor (64 + 258 Fourier channels = 322), never from d_model.
    "tiny_flow_q": (
        dict(
            train_size=[44, 60], num_latents=12, d_latents=40, num_blocks=2,
            num_self_attends_per_block=1, num_self_attention_heads=2, num_cross_attention_heads=2,
            hidden_act="gelu_new", cross_attention_shape_for_attention="q",
        ),
        [("grid2x2", (47, 75), (-2, -3))],
    ),
}


# The pairs whose first tile's patches are stored (the rest are checked through their logits).
PATCHES = {("tiny_flow", "grid2x2")}


def grid_indices(shape: tuple[int, int], tile: tuple[int, int]) -> list[tuple[int, int]]:
    """The Colab's compute_grid_indices, asserting that its slices stay inside the frame (for some
    sizes a start before the last lies past ``H - tile`` and the Colab's slice runs off the frame)."""
    h, w = shape
    th, tw = tile
    assert h >= th and w >= tw, f"frame {shape} smaller than the tile {tile}"
    ys = list(range(0, h, th - MIN_OVERLAP))
    xs = list(range(0, w, tw - MIN_OVERLAP))
    ys[-1] = h - th
    xs[-1] = w - tw
    assert all(y <= h - th for y in ys) and all(x <= w - tw for x in xs), (
        f"the Colab's grid for {shape} with tiles {tile} runs off the frame: ys {ys}, xs {xs}"
    )
    return list(itertools.product(ys, xs))


def make_frames(seed: int, size: tuple[int, int], shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth colour gradients with noise (as the classification fixtures' images), and the same
    content moved by ``shift`` = (dy, dx) pixels: frame2[y, x] = frame1[y - dy, x - dx]."""
    rng = np.random.default_rng(seed)
    h, w = size
    m = 4  # margin, larger than any shift
    assert max(abs(s) for s in shift) <= m
    y, x = np.mgrid[0 : h + 2 * m, 0 : w + 2 * m]
    channels = []
    for c in range(3):
        f = rng.uniform(0.5, 3.0, 2)
        wave = np.sin(f[0] * x / w * 6.28 + c) * np.cos(f[1] * y / h * 6.28 - c)
        channels.append(127.5 + 100 * wave + rng.normal(0, 12, (h + 2 * m, w + 2 * m)))
    big = np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)
    dy, dx = shift
    return big[m : m + h, m : m + w], big[m - dy : m - dy + h, m - dx : m - dx + w]


def normalize(im: np.ndarray) -> np.ndarray:
    """The Colab's normalize, in float64, then float32."""
    return (im.astype(np.float64) / 255.0 * 2 - 1).astype(np.float32)


def tile_patches(frames: np.ndarray, y: int, x: int, tile: tuple[int, int]) -> np.ndarray:
    """transformers' input [1, 2, 27, th, tw] for the tile at (y, x) of normalised frames [2, H, W, 3]:
    each pixel's 3x3 neighbourhood, zero outside the tile, channel (i*3 + j)*3 + c."""
    th, tw = tile
    padded = np.pad(frames[:, y : y + th, x : x + tw, :], ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.empty((2, 27, th, tw), np.float32)
    for i in range(3):
        for j in range(3):
            for c in range(3):
                out[:, (i * 3 + j) * 3 + c] = padded[:, i : i + th, j : j + tw, c]
    return out[None]


def unfold_patches(frames: np.ndarray, y: int, x: int, tile: tuple[int, int]) -> np.ndarray:
    """``tile_patches`` another way, as a check: torch's unfold (channels c·9 + i·3 + j) reordered."""
    th, tw = tile
    t = torch.from_numpy(frames[:, y : y + th, x : x + tw, :]).permute(0, 3, 1, 2)
    cols = nn.functional.unfold(t, kernel_size=3, padding=1).reshape(2, 3, 3, 3, th, tw)
    return cols.permute(0, 2, 3, 1, 4, 5).reshape(1, 2, 27, th, tw).numpy()


def tile_weights(tile: tuple[int, int]) -> np.ndarray:
    th, tw = tile
    wx, wy = np.meshgrid(np.arange(tw), np.arange(th))
    return np.minimum(np.minimum(wx + 1, tw - wx), np.minimum(wy + 1, th - wy))


def colab_flow(logits_of, frames: np.ndarray, grid, tile) -> np.ndarray:
    """The Colab's compute_optical_flow in float32 around ``logits_of(patches) -> [1, th, tw, 2]``."""
    _, h, w, _ = frames.shape
    th, tw = tile
    weights = tile_weights(tile).astype(np.float32)[None, :, :, None]
    flows = np.zeros((1, h, w, 2), np.float32)
    count = np.zeros((1, h, w, 1), np.float32)
    for y, x in grid:
        piece = logits_of(tile_patches(frames, y, x, tile)) * np.float32(FLOW_SCALE_FACTOR)
        pad = [(0, 0), (y, h - y - th), (x, w - x - tw), (0, 0)]
        flows += np.pad(piece * weights, pad)
        count += np.pad(weights, pad)
        assert flows.dtype == np.float32
    return (flows / count)[0]


def model_fn(model: nn.Module, dtype: torch.dtype):
    def logits_of(patches: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(inputs=torch.from_numpy(patches).to(dtype)).logits
        return logits.to(torch.float32).numpy()

    return logits_of


def write_model(name: str, seed: int) -> list[dict]:
    config_kwargs, pairs = MODELS[name]
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    config = PerceiverConfig(**config_kwargs)
    model = PerceiverForOpticalFlow(config).eval()
    reinit_(model, seed)
    # Stored in bfloat16 (half the bytes); the reference runs on exactly those values.
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["PerceiverForOpticalFlow"], saved["architectures"]
    model.to(torch.float64)
    tile = tuple(config.train_size)

    cases, listed = {}, []
    for k, (pair, size, shift) in enumerate(pairs):
        im1, im2 = make_frames(seed + 10 + k, size, shift)
        files = [f"{name}-{pair}-{i}.png" for i in (1, 2)]
        for file, im in zip(files, (im1, im2)):
            Image.fromarray(im, "RGB").save(OUT / "frames" / file)
            assert np.array_equal(np.asarray(Image.open(OUT / "frames" / file).convert("RGB")), im)
        frames = np.stack([normalize(im1), normalize(im2)])
        grid = grid_indices(size, tile)
        first = tile_patches(frames, *grid[0], tile)
        assert np.array_equal(first, unfold_patches(frames, *grid[0], tile))
        if (name, pair) in PATCHES:
            cases[f"{pair}.patches"] = torch.from_numpy(first)
        logits = model_fn(model, torch.float64)(first)
        flow = colab_flow(model_fn(model, torch.float64), frames, grid, tile)
        cases[f"{pair}.tile_logits"] = torch.from_numpy(logits)
        cases[f"{pair}.flow"] = torch.from_numpy(np.ascontiguousarray(flow))
        cases[f"{pair}.grid"] = torch.tensor(grid, dtype=torch.int64)
        # How far transformers' own float32 run lies from the float64 reference.
        flow32 = colab_flow(model_fn(model.to(torch.float32), torch.float32), frames, grid, tile)
        model.to(torch.float64)
        print(
            f"{name} {pair}: frames {size[0]}x{size[1]}, {len(grid)} tiles {grid}; logits std "
            f"{logits.std():.4f}; flow std {flow.std():.3f} px (u {flow[..., 0].std():.3f}, v "
            f"{flow[..., 1].std():.3f}), mean {flow.mean(axis=(0, 1)).round(3).tolist()}, max |flow| "
            f"{np.abs(flow).max():.3f} px; transformers float32 vs float64: max |Δflow| "
            f"{np.abs(flow32 - flow).max():.2e} px"
        )
        listed.append(
            {
                "model": name, "pair": pair, "frames": files, "height": size[0], "width": size[1],
                "tile": list(tile), "shift": list(shift), "grid": [list(g) for g in grid],
                "patches": (name, pair) in PATCHES,
            }
        )
    save_file({k: v.contiguous() for k, v in cases.items()}, out / "cases.safetensors")
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters")
    return listed


def released_config() -> PerceiverConfig:
    """deepmind/optical-flow-perceiver as transformers' conversion script configures it."""
    return PerceiverConfig(
        num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=24,
        num_self_attention_heads=16, num_cross_attention_heads=1, train_size=[368, 496],
    )


def released_layout() -> dict:
    config = released_config()
    with torch.device("meta"):
        model = PerceiverForOpticalFlow(config)
    tensors = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    parameters = sum(math.prod(s) for _, s in tensors)
    assert parameters == sum(p.numel() for p in model.parameters())
    config_dict = config.to_diff_dict()
    config_dict["architectures"] = ["PerceiverForOpticalFlow"]
    print(f"PerceiverForOpticalFlow (released layout): {len(tensors)} tensors, {parameters} parameters")
    return {"class": "PerceiverForOpticalFlow", "config": config_dict, "tensors": tensors, "parameters": parameters}


def write_full(out: Path) -> None:
    torch.manual_seed(0)
    model = PerceiverForOpticalFlow(released_config()).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--full":
        write_full(Path(sys.argv[2]))
        return
    assert len(sys.argv) == 1, __doc__
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "frames").mkdir(parents=True)
    listed = []
    for i, name in enumerate(MODELS):
        listed += write_model(name, 3000 + 100 * i)
    (OUT / "pairs.json").write_text(json.dumps(listed, indent=1) + "\n")
    (OUT / "released_layout.json").write_text(json.dumps(released_layout()) + "\n")


if __name__ == "__main__":
    main()
