#!/usr/bin/env python3
"""The PyTorch side of ``perceiver-bench autoencode``: transformers'
``PerceiverForMultimodalAutoencoding`` autoencoding one clip as DeepMind's video-autoencoding Colab
does, printed as one JSON object.

The clip is ``synthetic_clip`` below, a formula both sides compute exactly (the Rust side has the
same one): the model's ``num_frames`` frames of its reconstruction's size (``output_shape[2:]``,
224x224 for the released layout; ``image_size`` is only the positions' top frequency) in [0, 1],
and ``num_frames * audio_samples_per_frame`` audio samples in [-1, 1]; the label input is zeros
(the model replaces it by its mask token).

Every query is decoded in ``--chunks`` calls of the model (the Colab's 128), each call's
``subsampled_output_points`` naming one contiguous range of the image queries and one of the audio
queries (``bounds()`` of scripts/make_multimodal_fixtures.py, whose ``chunked`` fixtures pin that
loop), the label from the last call. As in the Colab, each call runs the whole model: the
preprocessing, the encoder and the latent stack run again in every chunk's call; that is how
transformers is used, and it is timed as such.

Each precision (f32; bf16 as the other benches do it, ``model.to(torch.bfloat16)`` with the
inputs in bfloat16) runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``)
is its own: one warm-up *call* (the first chunk's; a whole clip is ``--chunks`` such calls of one
shape), then ``--rounds`` timed clips, of which the median is reported. A precision transformers
cannot run is reported with its ``error`` (bf16 in transformers 5.24: the preprocessor's masks are
built in float32, which makes the encoder's input float32 against its bfloat16 layer norm). With
``--outputs DIR`` the last clip's reconstruction is written as raw little-endian float32 files
``DIR/transformers-<precision>.{image,audio,label}.f32`` for the agreement check.

    .venv-ref/bin/python scripts/make_multimodal_fixtures.py --full target/multimodal-random
    .venv-ref/bin/python scripts/bench_autoencode_reference.py --model target/multimodal-random \\
        --rounds 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from reference_env import peak_rss_mb, print_bench_reply

os.environ["HF_HUB_OFFLINE"] = "1"

PRECISIONS = ("f32", "bf16")


def synthetic_clip(frames: int, height: int, width: int, samples: int):
    """Video value at flat index ``i`` of ``[frames, 3, height, width]`` (each frame channel-first)
    is ``((i·2654435761) mod 1001) / 1000``, in [0, 1]; audio sample ``k`` is ``((k·40503) mod 2001)
    / 1000 − 1``, in [-1, 1]. Computed in float64, rounded to float32, the same on both sides."""
    import numpy as np
    import torch

    i = np.arange(frames * 3 * height * width, dtype=np.uint64)
    video = (i * np.uint64(2654435761) % np.uint64(1001)).astype(np.float64) / 1000.0
    k = np.arange(samples, dtype=np.uint64)
    audio = (k * np.uint64(40503) % np.uint64(2001)).astype(np.float64) / 1000.0 - 1.0
    return (
        torch.tensor(video.reshape(1, frames, 3, height, width), dtype=torch.float32),
        torch.tensor(audio.reshape(1, samples, 1), dtype=torch.float32),
    )


def worker(args) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import PerceiverForMultimodalAutoencoding

    from make_multimodal_fixtures import bounds

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    model = PerceiverForMultimodalAutoencoding.from_pretrained(args.model).eval().to(dtype)
    config = model.config
    _, frames, height, width = config.output_shape
    samples = config.num_frames * config.audio_samples_per_frame
    video, audio = synthetic_clip(config.num_frames, height, width, samples)
    inputs = {
        "image": video.to(dtype),
        "audio": audio.to(dtype),
        "label": torch.zeros((1, config.num_labels), dtype=dtype),
    }
    n_image = frames * height * width
    n_audio = samples // config.samples_per_patch
    image_bounds, audio_bounds = bounds(n_image, args.chunks), bounds(n_audio, args.chunks)
    loaded_rss = peak_rss_mb()

    def call(chunk: int):
        points = {
            "image": torch.arange(image_bounds[chunk], image_bounds[chunk + 1]),
            "audio": torch.arange(audio_bounds[chunk], audio_bounds[chunk + 1]),
            "label": None,
        }
        return model(inputs=inputs, subsampled_output_points=points).logits

    times, call_times = [], []
    with torch.inference_mode():
        try:
            call(0)  # the warm-up
        except RuntimeError as e:
            # transformers 5.24 fails in bfloat16: the preprocessor's masks (``torch.full`` of
            # ``mask_probs``, which name every modality) are float32, which makes every row of
            # the input array float32 against the encoder's bfloat16 layer norm. Reported as
            # such, not worked around.
            return {"precision": args.precision, "error": f"{type(e).__name__}: {e}"}
        for _ in range(args.rounds):
            parts = []
            start = time.perf_counter()
            for chunk in range(args.chunks):
                begin = time.perf_counter()
                parts.append(call(chunk))
                call_times.append(time.perf_counter() - begin)
            times.append(time.perf_counter() - start)
    image = torch.cat([p["image"] for p in parts], dim=1).float().numpy()
    audio_out = torch.cat([p["audio"] for p in parts], dim=1).float().numpy()
    label = parts[-1]["label"].float().numpy()
    if args.outputs:
        for name, array in (("image", image), ("audio", audio_out), ("label", label)):
            path = os.path.join(args.outputs, f"transformers-{args.precision}.{name}.f32")
            array.astype("<f4").tofile(path)
    return {
        "precision": args.precision,
        "chunks": args.chunks,
        "median_s": statistics.median(times),
        "times_s": times,
        "call_median_s": statistics.median(call_times),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_load_mb": loaded_rss,
        "image_shape": list(image.shape),
        "audio_shape": list(audio_out.shape),
        "top1": int(np.argmax(label[0])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "queries": [n_image, n_audio, math.prod(label.shape[1:])],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="target/multimodal-random")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--outputs", help="write each precision's reconstruction into this directory")
    ap.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)  # the worker's
    args = ap.parse_args()
    if args.rounds < 1 or args.chunks < 1:
        ap.error("need at least one round and one chunk")
    if args.precision:
        print(json.dumps(worker(args)))
        return
    results = []
    for precision in args.precisions.split(","):
        cmd = [sys.executable, __file__, "--model", args.model, "--rounds", str(args.rounds),
               "--chunks", str(args.chunks), "--threads", str(args.threads), "--precision", precision]
        if args.outputs:
            cmd += ["--outputs", args.outputs]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the {precision} worker failed: {done.stderr.strip()}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print_bench_reply(args.threads, results, rounds=args.rounds, chunks=args.chunks)


if __name__ == "__main__":
    main()
