#!/usr/bin/env python3
"""Time a masked-LM training step of PyTorch (transformers) and of our Rust trainer side by side.

Both time the same model (``scripts/bench_train_reference.py``'s built-in "bench" config, or
``--config``), exported once to ``--model-dir`` (config.json + model.safetensors, float32), on
``--batch-size`` x ``--seq-len`` batches with 15% of the positions masked. The two alternate for
``--rounds`` rounds, so that slow phases of a shared machine hit both:

* PyTorch, in this process: ``--warmup`` untimed steps once at the start, then one timed step per round
  (forward with labels, backward, AdamW step, zero_grad; see bench_train_reference.py);
* ours, one process per round::

      target/release/perceiver-bench train-step --model DIR --batch-size B --seq-len L \\
          --warmup W --repeats 1 --json

  which must print (its last stdout line) ``{"impl": "perceiver", "step_seconds": [t], "median": t, ...}``.

``--image-model DIR`` times an ImageNet classifier's fine-tuning step instead (DIR as
``scripts/make_classification_fixtures.py --full-fourier`` writes it; no export): PyTorch on a batch of
random 224 x 224 pixels (``bench_train_reference.ImageStepper``), ours through ``train-step --model DIR``,
which reads random-pixel PNG files through the model's image processor inside the timed step.

Threads: ``--threads N`` sets torch's thread count and, for the Rust process, ``RAYON_NUM_THREADS=N``
(candle's CPU backend and our kernels use rayon's global pool); default: all cores for both.

Prints per-round times and a table: median PyTorch, median ours, ratio PyTorch / ours (> 1: ours is
faster). ``--json`` also prints the summary as one JSON line.

Run from the repository root, after ``cargo build --release -p perceiver-bench``::

    .venv-ref/bin/python scripts/bench_train.py --threads 2 --rounds 7
    .venv-ref/bin/python scripts/bench_train.py --threads 2 --rounds 3 --warmup 1 --batch-size 2 \\
        --image-model target/fourier-random

``--precision bf16`` times mixed precision on both sides: PyTorch's forward under ``torch.autocast("cpu",
dtype=torch.bfloat16)``, ours with ``--precision bf16`` (the dense layers' and attention's products on bf16
operands).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

import bench_train_reference as ref  # noqa: E402  (checks the pinned reference environment)

import torch  # noqa: E402

REPO_ROOT = SCRIPT_DIR.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "perceiver-bench"
DEFAULT_MODEL_DIR = REPO_ROOT / "target" / "bench-train-model"


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(1)


def check_binary(binary: Path, env: dict) -> None:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        die(f"{binary} not found (or not executable); build it with `cargo build --release -p perceiver-bench`")
    probe = subprocess.run(
        [str(binary), "train-step", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    if probe.returncode != 0:
        why = (probe.stderr or probe.stdout).strip().splitlines()
        die(
            f"{binary} has no `train-step` subcommand (exit {probe.returncode}: "
            f"{why[0] if why else 'no output'}); this driver expects "
            "`perceiver-bench train-step --model DIR --batch-size B --seq-len L --warmup W --repeats 1 --json`"
        )


def run_ours(binary: Path, model_dir: Path, args, env: dict) -> float:
    cmd = [
        str(binary), "train-step", "--model", str(model_dir), "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len), "--warmup", str(args.warmup), "--repeats", "1", "--json",
        "--precision", args.precision,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        die(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.lstrip().startswith("{")]
    if not lines:
        die(f"`{' '.join(cmd)}` printed no JSON line; stdout was:\n{proc.stdout.strip()}")
    try:
        result = json.loads(lines[-1])
        assert result.get("impl") == "perceiver", f"impl is {result.get('impl')!r}, expected 'perceiver'"
        times = result["step_seconds"]
        assert isinstance(times, list) and len(times) == 1, f"step_seconds is {times!r}, expected one value"
        return float(times[0])
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        die(f"unexpected JSON from `{' '.join(cmd)}`: {lines[-1]!r} ({e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="config.json (or a directory with one); default: built-in bench config")
    ap.add_argument("--batch-size", "-B", type=int, default=1)
    ap.add_argument("--seq-len", "-L", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (PyTorch: once; ours: in every process)")
    ap.add_argument("--rounds", "-R", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the model is exported (overwritten)")
    ap.add_argument("--image-model", type=Path, help="an ImageNet classifier's directory: time its fine-tuning step")
    ap.add_argument(
        "--precision", choices=["f32", "bf16"], default="f32",
        help="bf16: mixed precision on both sides (torch.autocast on the CPU; ours --precision bf16)",
    )
    ap.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    args = ap.parse_args()
    if args.batch_size < 1 or args.warmup < 0 or args.rounds < 1:
        die("--batch-size >= 1, --warmup >= 0, --rounds >= 1")

    threads = ref.set_threads(args.threads)
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(threads)
    check_binary(args.binary, env)

    if args.image_model is not None:
        args.model_dir = args.image_model
        stepper = ref.ImageStepper(args.image_model, args.batch_size, args.seed, args.precision)
        model, shape = stepper.model, f"{args.batch_size} images of 224 x 224"
    else:
        config = ref.load_config(args.config)
        model = ref.build_model(config, args.seed)
        if args.model_dir.exists():
            shutil.rmtree(args.model_dir)
        ref.export_model(model, args.model_dir)
        stepper = ref.Stepper(model, args.batch_size, args.seq_len, args.seed, args.precision)
        shape = f"{args.batch_size} x {args.seq_len}"
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__}, {threads} threads; model {args.model_dir} ({n_params} params); "
        f"batch {shape}; {args.precision}; warmup {args.warmup}; {args.rounds} rounds",
        flush=True,
    )
    for _ in range(args.warmup):
        stepper.step()

    py, ours = [], []
    for r in range(args.rounds):
        py.append(stepper.step())
        ours.append(run_ours(args.binary, args.model_dir, args, env))
        print(f"round {r + 1}/{args.rounds}: pytorch {py[-1]:.4f} s   perceiver {ours[-1]:.4f} s", flush=True)

    med_py, med_ours = statistics.median(py), statistics.median(ours)
    ratio = med_py / med_ours
    print()
    print(f"| impl | median step (s) | min (s) | max (s) |")
    print(f"|---|---|---|---|")
    print(f"| pytorch | {med_py:.4f} | {min(py):.4f} | {max(py):.4f} |")
    print(f"| perceiver | {med_ours:.4f} | {min(ours):.4f} | {max(ours):.4f} |")
    print(f"\nratio pytorch / perceiver (median): {ratio:.2f}  ({'ours faster' if ratio > 1 else 'pytorch faster'})")
    if args.json:
        print(json.dumps({
            "pytorch": {"step_seconds": [round(t, 6) for t in py], "median": round(med_py, 6)},
            "perceiver": {"step_seconds": [round(t, 6) for t in ours], "median": round(med_ours, 6)},
            "ratio_pytorch_over_perceiver": round(ratio, 4),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": threads, "rounds": args.rounds,
            "precision": args.precision,
        }))


if __name__ == "__main__":
    main()
