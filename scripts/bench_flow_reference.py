#!/usr/bin/env python3
"""The PyTorch side of the optical-flow bench: transformers' ``PerceiverForOpticalFlow`` timed on
one tile, printed as one JSON object.

The input is one tile of the model's ``train_size`` (368x496 for the released layout) as
transformers takes it, ``[1, 2, 27, H, W]``, standard normal from a seeded generator. Each precision
(f32; bf16 as the classify bench does it, ``model.to(torch.bfloat16)``) runs in a fresh subprocess so
that its peak resident memory (``ru_maxrss``) is its own: one warm-up, then ``--runs`` timed runs,
of which the median is reported.

    .venv-ref/bin/python scripts/make_flow_fixtures.py --full target/flow-random
    .venv-ref/bin/python scripts/bench_flow_reference.py --model target/flow-random --runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from reference_env import peak_rss_mb, print_bench_reply

os.environ["HF_HUB_OFFLINE"] = "1"

PRECISIONS = ("f32", "bf16")


def worker(args) -> dict:
    import torch
    import transformers
    from transformers import PerceiverForOpticalFlow

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    model = PerceiverForOpticalFlow.from_pretrained(args.model).eval().to(dtype)
    height, width = model.config.train_size
    gen = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn((1, 2, 27, height, width), generator=gen).to(dtype)
    loaded_rss = peak_rss_mb()
    times = []
    with torch.inference_mode():
        for r in range(args.runs + 1):
            start = time.perf_counter()
            logits = model(inputs=inputs).logits
            if r > 0:
                times.append(time.perf_counter() - start)
    return {
        "precision": args.precision,
        "tile": [height, width],
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_load_mb": loaded_rss,
        "logits_std": logits.float().std().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="target/flow-random")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)  # the worker's
    args = ap.parse_args()
    if args.precision:
        print(json.dumps(worker(args)))
        return
    results = []
    for precision in args.precisions.split(","):
        cmd = [sys.executable, __file__, "--model", args.model, "--runs", str(args.runs),
               "--threads", str(args.threads), "--seed", str(args.seed), "--precision", precision]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print_bench_reply(args.threads, results, runs=args.runs)


if __name__ == "__main__":
    main()
