#!/usr/bin/env python3
"""The PyTorch side of ``perceiver-bench inference`` and ``perceiver-bench latent``:
transformers' PerceiverForMaskedLM on the CPU.

``--serve DIR``
    A worker that ``perceiver-bench`` starts and drives over stdin/stdout, one JSON object per
    line, so that both implementations run in one session, alternating:

    - ``{"cmd": "prepare", "name": ..., "texts": [[ids...], ...], "dtype": "float32"|"bfloat16",
      "batch_sizes": [...]}``: builds the inputs (each batch padded to its longest text, with an
      attention mask, as transformers users do), runs the workload once per candidate batch size
      and keeps the fastest ("batch sizes as each does best"); answers
      ``{"ok": true, "batch_size": n}``.
    - ``{"cmd": "prepare_layer", "name": ..., "batch": b, "reps": r, "dtype": ...}`` (for
      ``perceiver-bench latent``): ``r`` passes of the model's first latent self-attention layer
      (``perceiver.encoder.self_attends[0]``) over ``b`` texts' random latents; answers
      ``{"ok": true}``.
    - ``{"cmd": "prepare_linear", "name": ..., "m": m, "n": n, "k": k, "reps": r, "dtype": ...}``:
      ``r`` calls of ``torch.nn.functional.linear`` on random ``[m, k]`` inputs, ``[n, k]``
      weights and an ``[n]`` bias; answers ``{"ok": true}``.
    - ``{"cmd": "run", "name": ...}``: runs the workload once, answers ``{"seconds": t}`` (the
      forward passes only, under ``torch.inference_mode()``).
    - ``{"cmd": "quit"}``.

    transformers always decodes every one of the 2048 output positions, whatever the input length;
    that is its way, and it is timed as such. bfloat16 is ``model.to(torch.bfloat16)``.

The bench model (the released deepmind/language-perceiver layout, 201M parameters, random
weights) is made by ``scripts/make_parity_fixtures.py --full DIR``; speed does not depend on the
weights' values, and both sides run the very same weights. Pinned environment:
scripts/requirements-reference.txt (checked at import). From the repository root::

    .venv-ref/bin/python scripts/make_parity_fixtures.py --full target/full-random
    cargo run --release -p perceiver-bench -- inference --model target/full-random

(see crates/perceiver-bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

# Importing the parity script checks the pins and sets the offline environment.
import make_parity_fixtures  # noqa: E402,F401

import torch  # noqa: E402
from transformers import PerceiverForMaskedLM  # noqa: E402


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Workload:
    def __init__(self, model, texts: list[list[int]], batch_size: int):
        self.model = model
        self.batches = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            longest = max(len(t) for t in chunk)
            ids = torch.zeros((len(chunk), longest), dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, text in enumerate(chunk):
                ids[row, : len(text)] = torch.tensor(text)
                mask[row, : len(text)] = 1
            self.batches.append((ids, mask))

    def run(self) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in self.batches:
                self.model(inputs=ids, attention_mask=mask).logits
        return time.perf_counter() - t0


class Repeated:
    """``reps`` calls of ``call``, timed together."""

    def __init__(self, call, reps: int):
        self.call = call
        self.reps = max(1, reps)

    def run(self) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(self.reps):
                self.call()
        return time.perf_counter() - t0


def latent_layer(model, batch: int, reps: int) -> Repeated:
    config = model.config
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(batch)
    hidden = torch.randn(batch, config.num_latents, config.d_latents, generator=generator).to(dtype)
    layer = model.perceiver.encoder.self_attends[0]
    return Repeated(lambda: layer(hidden), reps)


def linear(m: int, n: int, k: int, dtype, reps: int) -> Repeated:
    generator = torch.Generator().manual_seed(m * 31 + n * 7 + k)
    x = torch.randn(m, k, generator=generator).to(dtype)
    w = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype)
    b = torch.randn(n, generator=generator).to(dtype)
    return Repeated(lambda: torch.nn.functional.linear(x, w, b), reps)


def serve(model_dir: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    models = {"float32": PerceiverForMaskedLM.from_pretrained(str(model_dir)).float().eval()}
    reply(
        {
            "ready": True,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
        }
    )
    workloads: dict[str, Workload | Repeated] = {}

    def model_in(dtype: str):
        if dtype not in models:
            models[dtype] = PerceiverForMaskedLM.from_pretrained(str(model_dir)).to(getattr(torch, dtype)).eval()
        return models[dtype]

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            return
        if cmd in ("prepare_layer", "prepare_linear"):
            dtype = msg.get("dtype", "float32")
            if cmd == "prepare_layer":
                workload = latent_layer(model_in(dtype), msg["batch"], msg["reps"])
            else:
                workload = linear(msg["m"], msg["n"], msg["k"], getattr(torch, dtype), msg["reps"])
            workload.run()  # warm-up
            workloads[msg["name"]] = workload
            reply({"ok": True})
        elif cmd == "prepare":
            model = model_in(msg.get("dtype", "float32"))
            best = None
            for batch_size in msg.get("batch_sizes", [1]):
                workload = Workload(model, msg["texts"], batch_size)
                workload.run()  # warm-up
                seconds = workload.run()
                print(f"  pytorch {msg['name']}: batch size {batch_size}: {seconds:.3f} s", file=sys.stderr)
                if best is None or seconds < best[0]:
                    best = (seconds, batch_size, workload)
            workloads[msg["name"]] = best[2]
            reply({"ok": True, "batch_size": best[1]})
        elif cmd == "run":
            reply({"seconds": workloads[msg["name"]].run()})
        else:
            reply({"error": f"unknown command {cmd}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=Path, metavar="DIR", required=True, help="the model directory to time")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    serve(args.serve, args.threads)


if __name__ == "__main__":
    main()
