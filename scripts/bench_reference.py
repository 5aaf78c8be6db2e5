#!/usr/bin/env python3
"""The PyTorch side of ``perceiver bench inference``: transformers' PerceiverForMaskedLM on the CPU.

Two modes:

``--export DIR``
    Writes DIR/config.json and DIR/model.safetensors: transformers' default PerceiverConfig (the
    201M deepmind/language-perceiver layout) with random weights (seed ``--seed``), float32, as
    ``save_pretrained`` writes them. Speed does not depend on the weights' values; both sides then
    run the very same weights.

``--serve DIR``
    A worker that ``perceiver bench inference`` starts and drives over stdin/stdout, one JSON object
    per line, so that both implementations run in one session, alternating:

    - ``{"cmd": "prepare", "name": ..., "texts": [[ids...], ...], "dtype": "float32"|"bfloat16",
      "batch_sizes": [...]}``: builds the inputs (each batch padded to its longest text, with an
      attention mask, as transformers users do), runs the workload once per candidate batch size
      and keeps the fastest ("batch sizes as each does best"); answers
      ``{"ok": true, "batch_size": n, "flops": f}``.
    - ``{"cmd": "run", "name": ...}``: runs the workload once, answers ``{"seconds": t}`` (the
      forward passes only, under ``torch.inference_mode()``).
    - ``{"cmd": "quit"}``.

    transformers always decodes every one of the 2048 output positions, whatever the input length;
    that is its way, and it is timed as such. bfloat16 is ``model.to(torch.bfloat16)``.

Pinned environment: scripts/requirements-reference.txt (checked at import). Run from the
repository root::

    .venv-ref/bin/python scripts/bench_reference.py --export target/bench-model-201m
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
import make_parity_fixtures as parity  # noqa: E402

import torch  # noqa: E402
from transformers import PerceiverConfig, PerceiverForMaskedLM  # noqa: E402


def export(out_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = PerceiverForMaskedLM(PerceiverConfig()).float().eval()
    parity.save_model(model, out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out_dir} ({params / 1e6:.1f}M parameters)", file=sys.stderr)


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


def serve(model_dir: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    models = {"float32": PerceiverForMaskedLM.from_pretrained(str(model_dir)).float().eval()}
    reply({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()})
    workloads: dict[str, Workload] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            return
        if cmd == "prepare":
            dtype = msg.get("dtype", "float32")
            if dtype not in models:
                models[dtype] = PerceiverForMaskedLM.from_pretrained(str(model_dir)).to(getattr(torch, dtype)).eval()
            model = models[dtype]
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
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", type=Path, metavar="DIR")
    mode.add_argument("--serve", type=Path, metavar="DIR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.export:
        export(args.export, args.seed)
    else:
        serve(args.serve, args.threads)


if __name__ == "__main__":
    main()
