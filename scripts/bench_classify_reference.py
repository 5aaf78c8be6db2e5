#!/usr/bin/env python3
"""The PyTorch side of ``perceiver-bench classify``: transformers' image classifier timed on the
same pixels as ours, printed as one JSON object.

Pixels are ``synthetic_pixels`` below, a formula both sides compute exactly (the Rust side has
the same one), so that the two sides classify the same images and their top-1 labels compare.
Each (precision, batch) is run once to warm up, then ``--rounds`` times; the medians are printed
with the top-1 label of every image.

    .venv-ref/bin/python scripts/bench_classify_reference.py --model target/fourier-random \\
        --batches 1,8 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from reference_env import print_bench_reply  # noqa: E402


def synthetic_pixels(batch: int, height: int, width: int) -> torch.Tensor:
    """Image ``b``'s value at flat index ``i`` (channel-first) is ``((i·2654435761 + b·40503) mod
    2000) / 1000 − 1``: roughly normalised values, the same on both sides."""
    n = 3 * height * width
    i = np.arange(n, dtype=np.uint64)
    images = []
    for b in range(batch):
        v = (i * np.uint64(2654435761) + np.uint64(b * 40503)) % np.uint64(2000)
        images.append(v.astype(np.float64) / 1000.0 - 1.0)
    return torch.tensor(np.stack(images).reshape(batch, 3, height, width), dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = AutoConfig.from_pretrained(args.model)
    cls = getattr(transformers, config.architectures[0])
    model = cls.from_pretrained(args.model).eval()
    results = []
    for precision, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        model = model.to(dtype)
        for batch in [int(b) for b in args.batches.split(",")]:
            pixels = synthetic_pixels(batch, args.size, args.size).to(dtype)
            times = []
            with torch.inference_mode():
                for r in range(args.rounds + 1):
                    start = time.perf_counter()
                    logits = model(inputs=pixels).logits
                    if r > 0:
                        times.append(time.perf_counter() - start)
            results.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "median_s": statistics.median(times),
                    "top1": logits.float().argmax(-1).tolist(),
                }
            )
    print_bench_reply(args.threads, results)


if __name__ == "__main__":
    main()
