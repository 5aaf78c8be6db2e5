#!/usr/bin/env python3
"""Time one masked-LM training step of transformers' PerceiverForMaskedLM (PyTorch, CPU, float32).

One step is: forward with labels (``model(inputs=..., attention_mask=..., labels=...)``), ``loss.backward()``,
``AdamW.step()``, ``zero_grad(set_to_none=True)``: no gradient clipping, dropout 0. The optimizer is
``torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)`` with the parameter groups of
``scripts/make_grad_fixtures.py`` (weight decay 0.1 on the 2-D weight of every nn.Linear, 0 elsewhere).

The model is a config.json (``--config``: the file, or a directory holding one) with seeded random weights
(transformers' own init, seed ``--seed``), or by default the built-in "bench" config::

    d_model 256, d_latents 256, num_latents 256, num_blocks 1, num_self_attends_per_block 4,
    8 self-attention heads, 8 cross-attention heads, max_position_embeddings 2048, vocab 262,
    widening factors 1, qk_channels / v_channels None, gelu, all dropout 0

The batch is ``--batch-size`` rows of ``--seq-len`` random byte ids (6..261, attention mask all ones),
with 15% of the positions of each row (rounded) replaced by [MASK]=3 and labelled with the original id
(-100 elsewhere; padded with -100 to max_position_embeddings, which transformers' loss needs).

Prints one JSON line on stdout::

    {"impl": "pytorch", "step_seconds": [...], "median": ..., ...}

(``step_seconds``: the ``--repeats`` timed steps, after ``--warmup`` untimed ones). Progress goes to stderr.
``--export DIR`` also writes DIR/config.json and DIR/model.safetensors (``save_pretrained``, float32, the
initial weights) so that the Rust implementation can time the same model; ``--export DIR --repeats 0``
only exports.

Run from the repository root (environment: scripts/requirements-reference.txt)::

    .venv-ref/bin/python scripts/bench_train_reference.py --threads 2
    .venv-ref/bin/python scripts/bench_train_reference.py --export target/bench-model --repeats 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

# Importing the parity script checks the pins (requirements-reference.txt) and sets the offline env.
import make_parity_fixtures as parity  # noqa: E402
from make_parity_fixtures import FIRST_BYTE_ID, MASK_ID  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PerceiverConfig, PerceiverForMaskedLM  # noqa: E402

BENCH_CONFIG = dict(
    d_model=256, d_latents=256, num_latents=256, num_blocks=1, num_self_attends_per_block=4,
    num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=None, v_channels=None,
    cross_attention_shape_for_attention="kv", self_attention_widening_factor=1, cross_attention_widening_factor=1,
    hidden_act="gelu", use_query_residual=True, max_position_embeddings=2048, vocab_size=262,
    attention_probs_dropout_prob=0.0,
)
MASK_FRACTION = 0.15
IGNORE_INDEX = -100
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.1


def load_config(path: Path | None) -> PerceiverConfig:
    if path is None:
        return PerceiverConfig(**BENCH_CONFIG)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"error: no config.json at {path}")
    return PerceiverConfig.from_json_file(str(file))


def build_model(config: PerceiverConfig, seed: int) -> PerceiverForMaskedLM:
    torch.manual_seed(seed)
    model = PerceiverForMaskedLM(config).float()
    model.train()
    return model


def export_model(model: PerceiverForMaskedLM, out_dir: Path) -> None:
    """config.json + model.safetensors, as save_pretrained writes them."""
    parity.save_model(model, out_dir)


def make_batch(config: PerceiverConfig, batch_size: int, seq_len: int, seed: int):
    max_pos = config.max_position_embeddings
    if not 1 <= seq_len <= max_pos:
        raise SystemExit(f"error: --seq-len {seq_len} must be in 1..max_position_embeddings={max_pos}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_BYTE_ID, config.vocab_size, (batch_size, seq_len), generator=gen, dtype=torch.int64)
    mask = torch.ones_like(ids)
    labels = torch.full((batch_size, max_pos), IGNORE_INDEX, dtype=torch.int64)
    k = max(1, round(MASK_FRACTION * seq_len))
    for i in range(batch_size):
        pos = torch.randperm(seq_len, generator=gen)[:k]
        labels[i, pos] = ids[i, pos]
        ids[i, pos] = MASK_ID
    return ids, mask, labels


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    decay = set()
    for mname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            decay.add(f"{mname}.weight")
    params = dict(model.named_parameters())
    groups = [
        {"params": [p for k, p in params.items() if k in decay], "weight_decay": WEIGHT_DECAY},
        {"params": [p for k, p in params.items() if k not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)


def autocast(precision: str):
    """The forward pass's context: f32 as it is, or bf16 mixed precision (``torch.autocast`` on the CPU:
    the products on bf16 operands, the weights and the optimizer f32), as ``perceiver train --precision``."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision != "f32":
        raise ValueError(f"precision {precision!r}: f32 or bf16")
    return contextlib.nullcontext()


class ImageStepper:
    """One image classification step of an ImageNet classifier from a directory (``--image-model``), as
    ``perceiver train --task classify`` takes it: ``model(inputs=pixel_values, labels=labels).loss``,
    backward, AdamW (the groups above), zero_grad; dropout 0 and every BatchNorm in eval() mode (our trainer
    freezes BatchNorm). The batch: ``batch_size`` 224 x 224 images of seeded normal pixels, labels 0 and 1
    alternately (the folders our bench writes)."""

    def __init__(self, model_dir: Path, batch_size: int, seed: int, precision: str = "f32"):
        from transformers import AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(str(model_dir)).float()
        self.model.config.attention_probs_dropout_prob = 0.0
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        gen = torch.Generator().manual_seed(seed + 1)
        self.pixels = torch.randn((batch_size, 3, 224, 224), generator=gen)
        self.labels = torch.arange(batch_size, dtype=torch.int64) % 2
        self.precision = precision
        self.opt = make_optimizer(self.model)
        self.model.zero_grad(set_to_none=True)
        self.last_loss = float("nan")

    def step(self) -> float:
        t0 = time.perf_counter()
        with autocast(self.precision):
            loss = self.model(inputs=self.pixels, labels=self.labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()
        return time.perf_counter() - t0


class Stepper:
    """One model + optimizer + batch; `step()` runs and times one training step."""

    def __init__(self, model: PerceiverForMaskedLM, batch_size: int, seq_len: int, seed: int, precision: str = "f32"):
        self.model = model
        self.precision = precision
        self.ids, self.mask, self.labels = make_batch(model.config, batch_size, seq_len, seed + 1)
        self.opt = make_optimizer(model)
        self.model.zero_grad(set_to_none=True)
        self.last_loss = float("nan")

    def step(self) -> float:
        t0 = time.perf_counter()
        with autocast(self.precision):
            loss = self.model(inputs=self.ids, attention_mask=self.mask, labels=self.labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()
        return time.perf_counter() - t0


def set_threads(n: int | None) -> int:
    if not n:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="config.json (or a directory with one); default: built-in bench config")
    ap.add_argument("--batch-size", "-B", type=int, default=1)
    ap.add_argument("--seq-len", "-L", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", type=Path, metavar="DIR", help="write DIR/config.json + DIR/model.safetensors")
    args = ap.parse_args()
    if args.batch_size < 1 or args.warmup < 0 or args.repeats < 0:
        raise SystemExit("error: --batch-size >= 1, --warmup >= 0, --repeats >= 0")

    threads = set_threads(args.threads)
    config = load_config(args.config)
    model = build_model(config, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"transformers {transformers.__version__}, torch {torch.__version__}; threads {threads}; "
        f"params {n_params}; batch {args.batch_size} x {args.seq_len}"
    )
    if args.export is not None:
        export_model(model, args.export)
        log(f"exported {args.export}/config.json, {args.export}/model.safetensors")
        if args.repeats == 0:
            return

    stepper = Stepper(model, args.batch_size, args.seq_len, args.seed)
    for i in range(args.warmup):
        log(f"warmup {i + 1}/{args.warmup}: {stepper.step():.4f} s (loss {stepper.last_loss:.4f})")
    times = []
    for i in range(args.repeats):
        times.append(stepper.step())
        log(f"step {i + 1}/{args.repeats}: {times[-1]:.4f} s (loss {stepper.last_loss:.4f})")
    result = {
        "impl": "pytorch",
        "step_seconds": [round(t, 6) for t in times],
        "median": round(statistics.median(times), 6) if times else None,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": threads,
        "params": n_params,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
