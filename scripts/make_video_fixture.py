#!/usr/bin/env python3
"""Write the small WebM videos that the playground's browser test decodes in Chromium.

What for: the playground takes a clip as a video file of any format the browser plays (mp4,
WebM, ...), and decodes it in the page: 25 frames a second from its start, each cropped to the
model's aspect about its centre and scaled to the model's frame size, and its sound's first
channel at the model's rate. The test (crates/perceiver-serve/tests/playground.rs, the
autoencoder's video test) chooses these files and checks what the page made of them against
what is written here. ``clip.webm``:

- 64 x 48 pixels, 25 frames a second, ``FRAMES`` frames (VP8, yuv420p);
- frame i is one colour, ``COLOURS[i]``, in its centre 48 x 48, with magenta bands 8 pixels
  wide at the left and the right: cropped to a square about its centre, a frame is its colour
  alone (the bands show if the page squashes the frame instead);
- its sound a ``TONE_HZ`` sine of amplitude ``AMPLITUDE``, mono, Opus at 48 kHz, as long as the
  frames.

``silent.webm`` is the same without sound; ``portrait.webm`` the same turned on its side (48 x
64, the bands at the top and the bottom), without sound. The files are committed (a few KB
each), so CI needs no Python; run this again only to change them.

How to run (from the repository root; needs PyAV, whose wheels bundle FFmpeg with libvpx and
libopus, and numpy)::

    python3 -m venv /tmp/avenv && /tmp/avenv/bin/pip install av==18.1.0 numpy==2.4.6
    /tmp/avenv/bin/python scripts/make_video_fixture.py tests/fixtures/multimodal
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AV_VERSION = "18.1.0"
WIDTH, HEIGHT = 64, 48
BAND = 8
FRAMES = 10
FPS = 25
# Distinct colours, each channel a few steps from the extremes (video's limited range clips 0
# and 255).
COLOURS = [
    (200, 40, 40),
    (40, 200, 60),
    (50, 60, 210),
    (210, 200, 40),
    (40, 190, 200),
    (190, 60, 190),
    (120, 120, 120),
    (220, 140, 60),
    (60, 110, 40),
    (140, 60, 30),
]
MAGENTA = (255, 0, 255)
SAMPLE_RATE = 48_000
TONE_HZ = 300.0
AMPLITUDE = 0.5


def frame_pixels(i: int, portrait: bool) -> np.ndarray:
    """Frame i, uint8 [HEIGHT, WIDTH, 3] (portrait: [WIDTH, HEIGHT, 3], the bands across)."""
    pixels = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:, :] = MAGENTA
    pixels[:, BAND : WIDTH - BAND] = COLOURS[i]
    return np.ascontiguousarray(pixels.transpose(1, 0, 2)) if portrait else pixels


def write_video(out: Path, sound: bool, portrait: bool) -> None:
    """The frames (`portrait`: turned), and with `sound` the tone, as a WebM file at `out`."""
    # bitexact: no random segment id or muxer version, so that the same script writes the same bytes.
    with av.open(str(out), mode="w", format="webm", container_options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("libvpx", rate=FPS)
        video.width, video.height = (HEIGHT, WIDTH) if portrait else (WIDTH, HEIGHT)
        video.pix_fmt = "yuv420p"
        # Near-lossless: the test's tolerance is for VP8's and the browser's colour conversions.
        video.options = {"crf": "4", "b:v": "1M", "deadline": "best"}
        # Every stream is added before the first packet is written.
        audio = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono") if sound else None
        if audio is not None:
            audio.time_base = Fraction(1, SAMPLE_RATE)

        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, portrait), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is None:
            return

        samples = SAMPLE_RATE * FRAMES // FPS
        t = np.arange(samples) / SAMPLE_RATE
        tone = (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
        chunk = 960  # 20 ms, an Opus frame
        for start in range(0, samples, chunk):
            part = tone[start : start + chunk]
            frame = av.AudioFrame.from_ndarray(part[None, :], format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write the .webm files in")
    args = parser.parse_args()
    if av.__version__ != AV_VERSION:
        raise SystemExit(f"PyAV {av.__version__} installed, this script is pinned to {AV_VERSION}")
    assert len(COLOURS) == FRAMES
    for name, sound, portrait in [
        ("clip.webm", True, False),
        ("silent.webm", False, False),
        ("portrait.webm", False, True),
    ]:
        out = args.out / name
        write_video(out, sound, portrait)
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
