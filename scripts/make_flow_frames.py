#!/usr/bin/env python3
"""Write two frames whose optical flow is known: a textured image and the same image shifted.

What for: the README's optical-flow picture is made by the CLI from these frames (the flow
model predicts the motion from frame1.png to frame2.png, and the library draws it with the
Middlebury colour coding, crates/perceiver/src/flow/). Because frame2 is frame1 moved by a
whole number of pixels, the true flow is the same everywhere, ``u = DX`` (right) and
``v = DY`` (down), so the picture should be one colour away from the borders, and a prediction
can be checked against it.

frame1.png is a deterministic (seeded) texture that a flow model can track: smooth colour
gradients, noise at several scales (fine grain to blotches), and random ellipses, rectangles
and triangles, the noise also over the shapes. frame2.png is frame1 shifted by ``--shift DY DX``
pixels: ``frame2[y, x] = frame1[y - DY, x - DX]``, with the pixels that enter at the border
edge-replicated (the nearest row or column of frame1 repeated). Both are 8-bit RGB PNGs of
``--size H W`` pixels (default 436 x 1024, the size of Sintel's frames, on which DeepMind's
``optical-flow-perceiver`` was evaluated).

How to run (from the repository root; needs numpy and Pillow, e.g. the pinned
reference environment)::

    .venv-ref/bin/python scripts/make_flow_frames.py --out /tmp/flow_frames
    .venv-ref/bin/python scripts/make_flow_frames.py --out /tmp/f --size 368 496 --shift -2 4 --seed 7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A textured RGB image, uint8 [height, width, 3], the same for the same arguments."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y /= max(height - 1, 1)
    x /= max(width - 1, 1)

    # Smooth gradients: a slow wave per channel, in different directions.
    img = np.empty((height, width, 3))
    for c in range(3):
        fy, fx = rng.uniform(0.3, 1.5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        img[..., c] = 0.5 + 0.3 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)

    # Noise blotches at coarse scales, upsampled smoothly (bilinear).
    for scale, weight in ((64, 0.25), (16, 0.15), (4, 0.1)):
        small = rng.normal(0.0, 1.0, size=(height // scale + 2, width // scale + 2, 3))
        for c in range(3):
            layer = Image.fromarray(small[..., c].astype(np.float32), mode="F")
            layer = layer.resize((width, height), Image.Resampling.BILINEAR)
            img[..., c] += weight * np.asarray(layer, dtype=np.float64)

    base = Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8), mode="RGB")

    # Shapes with sharp edges, sized relative to the image.
    draw = ImageDraw.Draw(base)
    side = min(height, width)
    for _ in range(max(8, (height * width) // 12000)):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.02, 0.12, size=2) * side
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        elif kind == 1:
            draw.rectangle((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, size=3)]
            draw.polygon(points, fill=colour)

    # Fine grain over everything, so flat shapes have texture too.
    out = np.asarray(base, dtype=np.float64) + rng.normal(0.0, 12.0, size=(height, width, 3))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved ``dy`` rows down and ``dx`` columns right, the border edge-replicated."""
    height, width = image.shape[:2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return image[rows[:, None], cols[None, :]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for frame1.png and frame2.png")
    parser.add_argument("--size", type=int, nargs=2, default=(436, 1024), metavar=("H", "W"),
                        help="frame height and width in pixels (default: 436 1024, Sintel's)")
    parser.add_argument("--shift", type=int, nargs=2, default=(3, 5), metavar=("DY", "DX"),
                        help="motion from frame1 to frame2, pixels down and right (default: 3 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the texture (default: 0)")
    args = parser.parse_args()

    height, width = args.size
    dy, dx = args.shift
    if height < 1 or width < 1:
        parser.error(f"--size must be positive, got {height} {width}")
    if abs(dy) >= height or abs(dx) >= width:
        parser.error(f"--shift {dy} {dx} moves the whole {height} x {width} frame out of view")

    frame1 = texture(height, width, args.seed)
    frame2 = shift(frame1, dy, dx)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("frame1.png", frame1), ("frame2.png", frame2)):
        Image.fromarray(frame, mode="RGB").save(args.out / name)
    print(f"wrote {args.out / 'frame1.png'} and {args.out / 'frame2.png'} ({height} x {width}); "
          f"true flow u = {dx}, v = {dy} pixels (right, down)")


if __name__ == "__main__":
    main()
