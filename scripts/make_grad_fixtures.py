#!/usr/bin/env python3
"""Generate masked-LM training-step fixtures (loss, gradients, one AdamW step) from Hugging Face transformers.

The Rust training code (backward pass, gradient clipping, AdamW) is checked against
``transformers.PerceiverForMaskedLM`` + ``torch.optim.AdamW`` (CPU). This script builds tiny models
*from local configs only* (the Hugging Face hub is never contacted), gives them the same kind of
seeded random weights as ``scripts/make_parity_fixtures.py`` (its ``reinit_``), and writes, for
every case, a directory

    tests/fixtures/grad/<case>/
        config.json         exactly as ``model.save_pretrained(dir, safe_serialization=True)`` writes it
        model.safetensors   idem: float32 weights, HF tensor names (the PerceiverForMaskedLM state_dict)
        step.safetensors    one training step on one batch, computed in float64 from those float32 weights:
                            input_ids, attention_mask, labels (int64 [B, L]); loss, grad_norm (float64 [1]);
                            grad.<param> for every parameter; clip_max_norm, clip_coef and the AdamW
                            hyper-parameters (float64 [1]); updated.<param> (float64) after
                            clip_grad_norm_ + AdamW.step()

plus ``tests/fixtures/grad/README.md`` describing the tensors. Everything is deterministic (fixed
seeds, weights drawn from seeded ``torch.Generator``s, one torch thread).

How to run (from the repository root; see make_parity_fixtures.py for creating .venv-ref)::

    .venv-ref/bin/python scripts/make_grad_fixtures.py            # writes tests/fixtures/grad/

Notes on the reference (transformers 5.24.0, torch 2.15.0):

* ``PerceiverForMaskedLM`` computes ``CrossEntropyLoss()(logits.view(-1, vocab), labels.view(-1))``
  (mean over labels != -100). Its logits always have ``max_position_embeddings`` positions, so the
  labels it is given must be [B, max_position_embeddings]. The stored ``labels`` are [B, L]; when
  L < max_position_embeddings (case ``tanh_noresidual``) transformers was given them padded with -100
  to [B, max_position_embeddings], i.e. decoder positions >= L carry no label.
* There is no separate output-embedding parameter: the logits are
  ``decoder_output @ perceiver.input_preprocessor.embeddings.weight^T + embedding_decoder.bias``,
  so the token embedding gets gradient from both its uses, summed into the one ``grad.`` tensor.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

# Importing the parity script checks the pins (requirements-reference.txt) and sets the offline env.
import make_parity_fixtures as parity  # noqa: E402
from make_parity_fixtures import FIRST_BYTE_ID, MASK_ID, PAD_ID, REPO_ROOT, VOCAB, human, reinit_  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PerceiverConfig, PerceiverForMaskedLM  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "grad"
IGNORE_INDEX = -100

# Optimizer of the step (the Rust trainer's defaults are expected to be the same).
LR = 1e-3
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.999)
EPS = 1e-8
# clip_max_norm = CLIP_FRACTION * grad_norm, rounded down to 2 significant digits: clipping is active.
CLIP_FRACTION = 0.5

GRAD_SEED = 20250301

# ---------------------------------------------------------------------------------------------
# Cases. The MaskedLM decoder hard-codes a 256-wide query/key projection (query Linear(d_model -> 256),
# key Linear(d_latents -> 256)) and the token embedding is [262, d_model]; with float32 weights plus
# float64 gradients and updated weights (20 bytes per parameter, plus ~400 bytes of safetensors header per
# parameter tensor) that is what bounds the size: d_model is the smallest the decoder's 8 heads allow and
# d_latents is 6, to keep each directory under 200 KB.
# ---------------------------------------------------------------------------------------------
CASES = [
    {
        "name": "erf_residual",
        "covers": "exact-erf gelu; use_query_residual=True; weight sharing (num_blocks=2 x 2 self-attends: each "
        "self-attention layer's gradient is the sum over its 2 applications); d_latents=6 < d_model=8; "
        "qk_channels=4 (differs from both; per-head qk 2 in self-attention) with v_channels=6=d_latents; "
        "2 self heads, 1 cross head; widening 1/1; L = max_position_embeddings = 20 (row 0 full length, row 1 padded).",
        "config": dict(
            d_model=8, d_latents=6, num_latents=6, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=2, num_cross_attention_heads=1, qk_channels=4, v_channels=6,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=1,
            cross_attention_widening_factor=1, hidden_act="gelu", use_query_residual=True,
            max_position_embeddings=20, vocab_size=VOCAB, attention_probs_dropout_prob=0.0,
        ),
        "texts": ["Perceiver reads text", "Grüße, Welt!"],
        "width": 20,
    },
    {
        "name": "tanh_noresidual",
        "covers": "gelu_new (tanh approximation); use_query_residual=False (no residual around the encoder "
        "cross-attention); qk_channels=None, v_channels=None (cross-attention qk=v=d_model=8, output Linear(8 -> 6); "
        "self-attention qk=v=d_latents=6); widening self=2 / cross=3; 3 self heads, 2 cross heads; "
        "1 block x 2 self-attends; L = 16 < max_position_embeddings = 20 (decoder positions 16..19 unlabelled).",
        "config": dict(
            d_model=8, d_latents=6, num_latents=5, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=3, num_cross_attention_heads=2, qk_channels=None, v_channels=None,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=2,
            cross_attention_widening_factor=3, hidden_act="gelu_new", use_query_residual=False,
            max_position_embeddings=20, vocab_size=VOCAB, attention_probs_dropout_prob=0.0,
        ),
        "texts": ["The cat sat, ok?", "naïve café"],
        "width": 16,
    },
]
MASK_FRACTION = 0.2
# d loss / d (attention key bias) is 0 in exact arithmetic (softmax shift invariance)
KEY_BIAS_SUFFIX = ".attention.self.key.bias"


# ---------------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------------
def make_batch(texts: list[str], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Byte ids (byte + 6) padded with 0 to `width`; round(MASK_FRACTION * n) (>= 1) seeded positions per row
    replaced by [MASK]=3; labels = original id there, -100 elsewhere (padding included)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(texts), width), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(texts), width), dtype=torch.int64)
    labels = torch.full((len(texts), width), IGNORE_INDEX, dtype=torch.int64)
    for i, text in enumerate(texts):
        raw = text.encode("utf-8")
        n = len(raw)
        assert 1 <= n <= width, (text, n, width)
        ids[i, :n] = torch.tensor([b + FIRST_BYTE_ID for b in raw], dtype=torch.int64)
        mask[i, :n] = 1
        k = max(1, round(MASK_FRACTION * n))
        pos = torch.randperm(n, generator=gen)[:k]
        labels[i, pos] = ids[i, pos]
        ids[i, pos] = MASK_ID
    return ids, mask, labels


def hf_labels(labels: torch.Tensor, max_pos: int) -> torch.Tensor:
    """Labels as transformers needs them: [B, max_position_embeddings], -100 beyond L."""
    b, width = labels.shape
    out = torch.full((b, max_pos), IGNORE_INDEX, dtype=torch.int64)
    out[:, :width] = labels
    return out


# ---------------------------------------------------------------------------------------------
# optimizer
# ---------------------------------------------------------------------------------------------
def decay_param_names(model: nn.Module) -> set[str]:
    """The 2-D `.weight` of every nn.Linear; everything else (LayerNorms, biases, embeddings, position
    tables, latents, embedding_decoder.bias) is not decayed."""
    names = set()
    for mname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert module.weight.dim() == 2
            names.add(f"{mname}.weight")
    return names


def round_down_2sig(x: float) -> float:
    e = math.floor(math.log10(x)) - 1
    return float(f"{math.floor(x / 10**e)}e{e}")


def manual_adamw(p: torch.Tensor, g: torch.Tensor, wd: float) -> torch.Tensor:
    """The first AdamW step written out (torch's single-tensor algorithm, step = 1, zero state)."""
    b1, b2 = BETAS
    p = p * (1 - LR * wd)
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    bc1, bc2 = 1 - b1, 1 - b2
    return p - (LR / bc1) * m / ((v.sqrt() / math.sqrt(bc2)) + EPS)


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------
def train_step(model, ids, mask, lab, clip_max_norm: float | None = None) -> dict:
    """forward with labels, backward, clip_grad_norm_, AdamW.step(), in the model's dtype. clip_max_norm
    defaults to CLIP_FRACTION * grad_norm, rounded down to 2 significant digits."""
    model.train()
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    out = model(inputs=ids, attention_mask=mask, labels=lab)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    assert all(g.dtype == torch.float64 for g in grads.values()) or all(g.dtype == torch.float32 for g in grads.values())
    grad_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    if clip_max_norm is None:
        clip_max_norm = round_down_2sig(CLIP_FRACTION * grad_norm)
    total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=clip_max_norm).item()
    assert abs(total - grad_norm) <= 1e-5 * grad_norm, (total, grad_norm)
    clip_coef = clip_max_norm / (grad_norm + 1e-6)
    assert clip_coef < 1.0
    if grads[next(iter(grads))].dtype == torch.float64:
        assert abs(total - grad_norm) <= 1e-12 * grad_norm, (total, grad_norm)
        for k, p in params.items():
            assert torch.allclose(p.grad, grads[k] * clip_coef, rtol=1e-14, atol=0), k
    decay = decay_param_names(model)
    assert decay <= set(params)
    groups = [
        {"params": [p for k, p in params.items() if k in decay], "weight_decay": WEIGHT_DECAY},
        {"params": [p for k, p in params.items() if k not in decay], "weight_decay": 0.0},
    ]
    before = {k: p.detach().clone() for k, p in params.items()}
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    opt.step()
    updated = {k: p.detach().clone() for k, p in params.items()}
    opt.zero_grad(set_to_none=True)
    return {
        "params": params, "loss": out.loss.item(), "logits": out.logits.detach(), "grads": grads,
        "grad_norm": grad_norm, "clip_max_norm": clip_max_norm, "clip_coef": clip_coef,
        "before": before, "updated": updated,
    }


def run_case(spec: dict, idx: int, out_root: Path) -> dict:
    name, cfg = spec["name"], spec["config"]
    seed = GRAD_SEED + 1000 * idx
    print(f"== {name}  (seed {seed})")
    torch.manual_seed(seed)
    model = PerceiverForMaskedLM(PerceiverConfig(**cfg))
    reinit_(model, seed + 1)
    max_pos = model.config.max_position_embeddings
    params = dict(model.named_parameters())
    assert set(params) == set(model.state_dict()), "state_dict holds non-parameters"

    out_dir = out_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    parity.save_model(model, out_dir)
    saved = load_file(str(out_dir / "model.safetensors"))
    assert set(saved) == set(params), sorted(set(saved) ^ set(params))
    for k, v in saved.items():
        assert v.dtype == torch.float32 and torch.equal(v, params[k].detach()), k

    ids, mask, labels = make_batch(spec["texts"], spec["width"], seed + 7)
    assert ids.shape[1] <= max_pos
    n_labels = int((labels != IGNORE_INDEX).sum())
    n_real = int(mask.sum())
    lab = hf_labels(labels, max_pos)

    # transformers' own float32 step (same weights), to measure float32 rounding only
    model32 = copy.deepcopy(model)
    # the reference step, float64
    model.double()
    step = train_step(model, ids, mask, lab)
    params, grads, updated = step["params"], step["grads"], step["updated"]
    loss64, grad_norm, clip_max_norm, clip_coef = step["loss"], step["grad_norm"], step["clip_max_norm"], step["clip_coef"]
    decay = decay_param_names(model)
    # the loss is what it should be: mean cross-entropy over the labelled positions
    ce = nn.functional.cross_entropy(step["logits"][:, : ids.shape[1]].reshape(-1, VOCAB), labels.reshape(-1))
    assert abs(ce.item() - loss64) <= 1e-14 * loss64, (loss64, ce.item())

    # Every parameter is used: its gradient has a non-zero element. The attention key biases are the exception
    # in exact arithmetic: adding a constant to every key's score leaves the softmax unchanged, so
    # d loss / d key.bias = 0 and what is stored is float64 rounding noise (~1e-16).
    zero = [k for k, g in grads.items() if not bool((g != 0).any())]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    key_bias = [k for k in params if k.endswith(KEY_BIAS_SUFFIX)]
    assert len(key_bias) == 2 + cfg["num_self_attends_per_block"], key_bias
    noise = max(grads[k].abs().max().item() for k in key_bias)
    assert noise <= 1e-12 * grad_norm, f"key.bias gradient not ~0: {noise:.1e}"
    weak = [k for k in params if k not in key_bias and grads[k].abs().max().item() < 1e-6 * grad_norm]
    assert not weak, f"parameters with a negligible gradient: {weak}"
    worst_manual = 0.0
    for k in params:
        wd = WEIGHT_DECAY if k in decay else 0.0
        ref = manual_adamw(step["before"][k], grads[k] * clip_coef, wd)
        worst_manual = max(worst_manual, (ref - updated[k]).abs().max().item())
    assert worst_manual <= 1e-15, worst_manual
    max_step = max((updated[k] - step["before"][k]).abs().max().item() for k in params)

    s32 = train_step(model32, ids, mask, lab, clip_max_norm=clip_max_norm)
    rel = abs(s32["loss"] - loss64) / abs(loss64)
    print(f"  loss f64 {loss64:.12f}  f32 {s32['loss']:.9f}  |rel diff| {rel:.2e}  ({n_labels} labels / {n_real} tokens)")
    assert rel <= 1e-6, f"float32 loss too far from float64 ({rel:.2e})"
    # float32 gradients: worst over tensors of max|g32 - g64| / max|g64|; float32 update: max |u32 - u64|
    # (key biases left out: their float32 gradient is float32 noise, ~1e-7, and its AdamW step up to ~lr)
    others = [k for k in params if k not in key_bias]
    g32_rel = max(((s32["grads"][k].double() - grads[k]).abs().max() / grads[k].abs().max()).item() for k in others)
    u32_abs = max((s32["updated"][k].double() - updated[k]).abs().max().item() for k in others)
    u32_kb = max((s32["updated"][k].double() - updated[k]).abs().max().item() for k in key_bias)
    g32_kb = max(s32["grads"][k].abs().max().item() for k in key_bias)
    print(
        f"  float32 run: grad_norm {s32['grad_norm']:.6f}; except key biases: worst per-tensor "
        f"max|g32-g64|/max|g64| {g32_rel:.1e}, max|updated32 - updated64| {u32_abs:.1e}; key biases: "
        f"max|g64| {noise:.1e}, max|g32| {g32_kb:.1e}, max|updated32 - updated64| {u32_kb:.1e}"
    )
    assert g32_rel <= 1e-3 and u32_abs <= 1e-6, "float32 step too far from float64"

    f64 = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    tensors = {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "labels": labels.contiguous(),
        "loss": f64(loss64),
        "grad_norm": f64(grad_norm),
        "clip_max_norm": f64(clip_max_norm),
        "clip_coef": f64(clip_coef),
        "lr": f64(LR),
        "weight_decay": f64(WEIGHT_DECAY),
        "beta1": f64(BETAS[0]),
        "beta2": f64(BETAS[1]),
        "eps": f64(EPS),
    }
    for k in params:
        tensors[f"grad.{k}"] = grads[k].contiguous()
        tensors[f"updated.{k}"] = updated[k].contiguous()
    save_file(
        tensors,
        str(out_dir / "step.safetensors"),
        metadata={
            "generator": f"scripts/make_grad_fixtures.py, case {name}; transformers {transformers.__version__}, "
            f"torch {torch.__version__.split('+')[0]}, CPU float64"
        },
    )

    # the saved weights reproduce the loss
    reloaded = PerceiverForMaskedLM.from_pretrained(str(out_dir)).double().train()
    with torch.no_grad():
        again = reloaded(inputs=ids, attention_mask=mask, labels=lab).loss.item()
    assert again == loss64, (again, loss64)

    with torch.no_grad():
        logits = step["logits"][:, : ids.shape[1]]
        lab_pos = labels != IGNORE_INDEX
        probs = logits[lab_pos].softmax(-1)
        p_true = probs.gather(1, labels[lab_pos][:, None]).squeeze(1)
    small = min(grads[k][grads[k] != 0].abs().min().item() for k in others)
    n_params = sum(p.numel() for p in params.values())
    n_decay = sum(params[k].numel() for k in decay)
    print(
        f"  params {n_params} ({len(params)} tensors; decay {n_decay} in {len(decay)} tensors); grad_norm {grad_norm:.6f}; "
        f"clip_max_norm {clip_max_norm} (coef {clip_coef:.6f}); logits std at labels {logits[lab_pos].std().item():.3f}, "
        f"p(true) {p_true.min().item():.2e}..{p_true.max().item():.2e}; smallest |grad| != 0: {small:.1e}; "
        f"largest |update| {max_step:.2e}; AdamW vs formula {worst_manual:.1e}"
    )
    print(f"  input_ids {list(ids.shape)} lengths {mask.sum(1).tolist()} labels per row {lab_pos.sum(1).tolist()}")
    return {
        "name": name,
        "covers": spec["covers"],
        "config": cfg,
        "texts": spec["texts"],
        "shape": list(ids.shape),
        "params": n_params,
        "tensors": len(params),
        "n_labels": n_labels,
        "loss": loss64,
        "loss_f32_rel": rel,
        "grad_f32_rel": g32_rel,
        "key_bias_noise": noise,
        "key_bias_f32": g32_kb,
        "updated_f32_abs": u32_abs,
        "updated_f32_kb": u32_kb,
        "smallest_grad": small,
        "grad_norm": grad_norm,
        "clip_max_norm": clip_max_norm,
        "names": list(params),
        "decay": sorted(decay, key=list(params).index),
    }


# ---------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------
def write_readme(out_root: Path, summaries: list[dict]) -> None:
    tv = f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}"
    lines = [
        "# Training-step fixtures (Hugging Face transformers + torch.optim reference)",
        "",
        "Generated by `scripts/make_grad_fixtures.py` with the environment pinned in",
        f"`scripts/requirements-reference.txt` ({tv}, CPU). Regenerate with:",
        "",
        "```sh",
        ".venv-ref/bin/python scripts/make_grad_fixtures.py",
        "```",
        "",
        "(creating `.venv-ref`: see `tests/fixtures/parity/README.md`). The output is deterministic (seeded,",
        "one torch thread). Do not edit these files by hand.",
        "",
        "Each directory holds a tiny `PerceiverForMaskedLM` and one training step on one batch:",
        "",
        "* `config.json`, `model.safetensors`: exactly what `model.save_pretrained(dir, safe_serialization=True)`",
        "  writes: float32 weights under the HF parameter names (the model's `state_dict`, which holds parameters",
        "  only). The weights are seeded random values at the scale of the parity fixtures (`reinit_` in",
        "  `scripts/make_parity_fixtures.py`). All dropout probabilities are 0.",
        "* `step.safetensors`: the step, computed by transformers/torch in **float64** from these float32 weights",
        "  (`model.double()`; float32 -> float64 is exact), model in `train()` mode:",
        "",
        "| tensor | dtype | shape | meaning |",
        "|---|---|---|---|",
        "| `input_ids` | int64 | [B, L] | UTF-8 bytes of the texts as ids (byte + 6), padded with [PAD]=0; masked positions hold [MASK]=3 |",
        "| `attention_mask` | int64 | [B, L] | 1 = token, 0 = padding |",
        "| `labels` | int64 | [B, L] | original id at masked positions, -100 elsewhere (padding included) |",
        "| `loss` | float64 | [1] | `model(inputs=input_ids, attention_mask=attention_mask, labels=...).loss`: mean cross-entropy over the labelled positions |",
        "| `grad_norm` | float64 | [1] | global L2 norm over all parameter gradients, before clipping |",
        "| `grad.<param>` | float64 | shape of `<param>` | d loss / d param, before clipping, for every parameter of `model.safetensors` |",
        "| `clip_max_norm` | float64 | [1] | `max_norm` given to `torch.nn.utils.clip_grad_norm_` (below `grad_norm`: clipping is active) |",
        "| `clip_coef` | float64 | [1] | `clip_max_norm / (grad_norm + 1e-6)`: the factor clip_grad_norm_ applied to every gradient (note torch's `+ 1e-6`) |",
        "| `lr`, `weight_decay`, `beta1`, `beta2`, `eps` | float64 | [1] | AdamW hyper-parameters: "
        f"{LR}, {WEIGHT_DECAY}, {BETAS[0]}, {BETAS[1]}, {EPS} |",
        "| `updated.<param>` | float64 | shape of `<param>` | the parameter after `clip_grad_norm_` + one `AdamW.step()` |",
        "",
        "The optimizer is `torch.optim.AdamW(groups, lr, betas=(beta1, beta2), eps, foreach=False)` with two",
        "parameter groups: **decay** (`weight_decay`): the 2-D `.weight` of every `nn.Linear` (attention",
        "query/key/value, attention output `dense`, MLP `dense1`/`dense2`, in encoder and decoder); **no decay**",
        "(weight decay 0): everything else: LayerNorm weights and biases, every bias, the token embedding",
        "`perceiver.input_preprocessor.embeddings.weight`, the position tables",
        "`perceiver.input_preprocessor.position_embeddings.weight` and",
        "`perceiver.decoder.output_position_encodings.position_embeddings`, `perceiver.embeddings.latents` and",
        "`embedding_decoder.bias`. It is the first step (zero moments), so with `g = clip_coef * grad`:",
        "",
        "```",
        "p1 = p * (1 - lr * wd)",
        "m = (1 - beta1) * g;  v = (1 - beta2) * g^2",
        "updated = p1 - (lr / (1 - beta1)) * m / (sqrt(v) / sqrt(1 - beta2) + eps)",
        "```",
        "",
        "(the script checks torch's result against this formula to 1e-15; `wd` is the group's weight decay).",
        "",
        "**Attention key biases.** `d loss / d key.bias` is exactly 0 in exact arithmetic for every attention",
        "(`*.attention.self.key.bias`: encoder cross-attention, each self-attention, decoder cross-attention):",
        "adding the same vector to every key adds a constant to each query's scores, which the softmax ignores",
        "(the padding mask is additive too). The stored `grad.*key.bias` are float64 rounding noise (~1e-16,",
        "checked <= 1e-12 * grad_norm); a float32 implementation gets noise of ~1e-7 instead. Because the",
        "first AdamW step is about `lr * g / (|g| + eps)`, that noise moves `updated.*key.bias` by up to ~`lr`",
        "in float32 (measured: see the table) while the float64 fixture barely moves them. Compare key-bias",
        "gradients with an absolute tolerance, and key-bias updates with a tolerance of `lr` (or skip them).",
        "Every other tensor has a gradient well away from 0 (checked: max |g| >= 1e-6 * grad_norm). Some",
        "elements are exactly 0 (e.g. position-table rows beyond the longest row, decoder query rows of",
        "unlabelled positions).",
        "",
        "Loss details (transformers): `PerceiverForMaskedLM` computes `CrossEntropyLoss()(logits.view(-1, 262),",
        "labels.view(-1))`. Its logits always have `max_position_embeddings` positions (the decoder queries the",
        "whole position table), so transformers needs labels of shape [B, max_position_embeddings]; where",
        "L < max_position_embeddings (`tanh_noresidual`) it was given the stored labels padded with -100, i.e.",
        "decoder positions >= L have no label and do not enter the loss. The logits are",
        "`decoder_output @ embeddings.weight^T + embedding_decoder.bias`: the token embedding is used both as",
        "the input embedding and as the output projection (one parameter), so its gradient is the sum of the",
        "two paths, stored once as `grad.perceiver.input_preprocessor.embeddings.weight`. With",
        "`num_blocks` > 1 the same self-attention layers are applied `num_blocks` times and their gradients",
        "are summed over the applications. `attention_mask` only masks the encoder cross-attention keys.",
        "",
        "| case | covers | config | B x L | params | labels | loss (f64) | grad_norm | clip_max_norm | f32: loss rel. diff | f32: grad rel. diff | f32: updated abs. diff | key-bias grad f64 / f32 | f32: key-bias updated abs. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        cfg = ", ".join(f"{k}={v}" for k, v in s["config"].items())
        lines.append(
            f"| `{s['name']}` | {s['covers']} Texts: {', '.join(json.dumps(t, ensure_ascii=False) for t in s['texts'])}. "
            f"| {cfg} | {s['shape'][0]} x {s['shape'][1]} | {s['params']} ({s['tensors']} tensors) | {s['n_labels']} "
            f"| {s['loss']:.6f} | {s['grad_norm']:.6f} | {s['clip_max_norm']} | {s['loss_f32_rel']:.1e} "
            f"| {s['grad_f32_rel']:.1e} | {s['updated_f32_abs']:.1e} | {s['key_bias_noise']:.0e} / {s['key_bias_f32']:.0e} "
            f"| {s['updated_f32_kb']:.1e} |"
        )
    lines += [
        "",
        "The `f32:` columns are transformers' own float32 run of the same step (same weights, same",
        "`clip_max_norm`) against the stored float64 values: the loss relative difference (asserted <= 1e-6),",
        "the worst per-tensor max|g32 - g64| / max|g64| and the max |updated32 - updated64| over all tensors",
        "except the key biases, and for the key biases the largest |grad| in float64 / float32 and the max",
        "|updated32 - updated64|. They show what a float32 implementation can be held to.",
        "",
    ]
    (out_root / "README.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = [run_case(spec, idx, args.out) for idx, spec in enumerate(CASES)]
    write_readme(args.out, summaries)
    print("== parameter names (model.safetensors; grad.<name> / updated.<name> in step.safetensors)")
    for s in summaries:
        print(f"  {s['name']}: " + ", ".join(f"{n}{' [decay]' if n in s['decay'] else ''}" for n in s["names"]))
    print("== files")
    for case_dir in sorted(d for d in args.out.iterdir() if d.is_dir()):
        sub = 0
        for f in sorted(case_dir.iterdir()):
            size = f.stat().st_size
            sub += size
            digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            shown = f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f
            print(f"  {size:>9}  {human(size):>10}  {digest}  {shown}")
        print(f"  {case_dir.name}: {sub} bytes ({human(sub)})")
        assert sub < 200 * 1024, f"{case_dir.name}: fixtures too large"


if __name__ == "__main__":
    main()
