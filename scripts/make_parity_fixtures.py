#!/usr/bin/env python3
"""Generate Perceiver IO parity fixtures from Hugging Face transformers (PyTorch).

The Rust crates are checked against the reference implementation
``transformers.PerceiverForMaskedLM`` (CPU, float32). This script builds a few
tiny models *from local configs only* (the Hugging Face hub is never contacted),
gives them seeded random weights that are large enough to make the logits
informative, and writes, for every model, a directory

    tests/fixtures/parity/<model_name>/
        config.json         exactly as ``model.save_pretrained(dir, safe_serialization=True)`` writes it
        model.safetensors   idem (HF tensor names, e.g. ``perceiver.encoder.self_attends.0.attention.self.query.weight``)
        cases.safetensors   for each case c: c.input_ids (int64 [B, L], padded with 0),
                            c.attention_mask (int64 [B, L], 1 = token, 0 = padding),
                            c.logits (float32 [B, max_position_embeddings, vocab_size]) =
                            model(inputs=input_ids, attention_mask=attention_mask).logits, run in
                            float64 and rounded to float32
        fill_mask.json      output of transformers' real fill-mask pipeline (top_k=5) with PerceiverTokenizer()

plus ``tests/fixtures/parity/README.md`` describing the models.
Everything is deterministic (fixed seeds; weights are drawn from seeded
``torch.Generator``s, independent of thread count).

How to run (from the repository root)::

    python3.11 -m venv .venv-ref
    .venv-ref/bin/pip install -r scripts/requirements-reference.txt
    #   (optional, smaller download: .venv-ref/bin/pip install torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu
    #    before the line above)
    .venv-ref/bin/python scripts/make_parity_fixtures.py            # writes tests/fixtures/parity/

A second mode builds the deepmind/language-perceiver layout with seeded random
weights: ``PerceiverConfig(qk_channels=256, v_channels=1280)``, i.e. the defaults
plus the two fields that transformers' conversion script
(convert_perceiver_haiku_to_pytorch.py, architecture "MLM") sets for that
checkpoint; 201,108,230 parameters. (A bare ``PerceiverConfig()`` has
qk_channels=None, hence 1280-wide self-attention queries/keys and 269,319,430
parameters, which is not the checkpoint's layout.) The output (~800 MB) is not
committed: it is what crates/perceiver/tests/full_model.rs checks when present, and
the bench model of ``perceiver-bench inference`` and ``perceiver-bench latent``
(crates/perceiver-bench/README.md), both of which look for it at this path::

    .venv-ref/bin/python scripts/make_parity_fixtures.py --full target/full-random

It writes config.json + model.safetensors via save_pretrained, and
cases.safetensors with one case ``single``: the 60-byte text
"This is an incomplete sentence where some words are missing." as byte ids
(byte + 6, no [CLS]/[SEP]), with ids[51:60] (0-based, end exclusive: " missing.")
set to the mask id 3, its all-ones attention mask, and logits [1, 2048, 262].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

# Never touch the network / hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "parity"

import reference_env  # noqa: E402

PINNED_TRANSFORMERS = "5.24.0"
PINNED_TORCH = "2.15.0"


def check_pins() -> None:
    reference_env.check_pins(transformers=PINNED_TRANSFORMERS, torch=PINNED_TORCH)

check_pins()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PerceiverConfig, PerceiverForMaskedLM, PerceiverTokenizer, pipeline  # noqa: E402
from transformers.models.perceiver.modeling_perceiver import PerceiverTrainablePositionEncoding  # noqa: E402

assert transformers.__version__ == PINNED_TRANSFORMERS, transformers.__version__
assert torch.__version__.split("+", 1)[0] == PINNED_TORCH, torch.__version__

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MASK_ID = 3
PAD_ID = 0
FIRST_BYTE_ID = 6  # ids 0..5 are [PAD] [BOS] [EOS] [MASK] [CLS] [SEP]; byte b has id b + 6
VOCAB = 262

# ---------------------------------------------------------------------------------------------
# Tiny models. Field names are HF PerceiverConfig fields. Constraints from the HF code:
#  * encoder: d_latents % num_self_attention_heads == 0 and d_latents % num_cross_attention_heads == 0;
#  * self-attention: qk = qk_channels or d_latents, v = v_channels or qk; the output projection is
#    Linear(v -> v) followed by a residual onto the d_latents stream, so v must equal d_latents;
#  * encoder cross-attention: qk = qk_channels, or (if None) d_model for shape "kv" / d_latents for
#    shape "q"; v = v_channels or qk; output projection Linear(v -> d_latents);
#  * MaskedLM decoder: hard-coded qk_channels=256, num_heads=8, v_channels=d_model, so d_model % 8 == 0.
# ---------------------------------------------------------------------------------------------
MODELS = [
    {
        "name": "tiny_qk_v_explicit",
        "covers": "qk_channels=24 differs from d_latents=48 and d_model=32 (v_channels=48=d_latents); "
        "exact-erf gelu; widening factors self=2 / cross=3; 4 self-attention heads, 2 cross-attention heads; "
        "2 self-attends in 1 block.",
        "config": dict(
            d_model=32, d_latents=48, num_latents=8, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=24, v_channels=48,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=2,
            cross_attention_widening_factor=3, hidden_act="gelu", use_query_residual=True,
            max_position_embeddings=64,
        ),
    },
    {
        "name": "tiny_shared_blocks",
        "covers": "weight sharing: num_blocks=3 x num_self_attends_per_block=2 (the same 2 layers applied 3 times); "
        "qk_channels=None, v_channels=None (cross-attention qk=v=d_model=24, self-attention qk=v=d_latents=32); "
        "gelu_new; widening self=4 / cross=2; 8 self-attention heads, 1 cross-attention head.",
        "config": dict(
            d_model=24, d_latents=32, num_latents=10, num_blocks=3, num_self_attends_per_block=2,
            num_self_attention_heads=8, num_cross_attention_heads=1, qk_channels=None, v_channels=None,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=4,
            cross_attention_widening_factor=2, hidden_act="gelu_new", use_query_residual=True,
            max_position_embeddings=48,
        ),
    },
    {
        "name": "tiny_q_shape_no_residual",
        "covers": "cross_attention_shape_for_attention='q' with qk_channels=None, v_channels=None "
        "(cross-attention qk=v=d_latents=64, not d_model=40); use_query_residual=False (no residual around the "
        "encoder cross-attention); gelu_pytorch_tanh; widening self=3 / cross=4; 2 self heads, 4 cross heads; "
        "num_blocks=2 x 1 self-attend.",
        "config": dict(
            d_model=40, d_latents=64, num_latents=16, num_blocks=2, num_self_attends_per_block=1,
            num_self_attention_heads=2, num_cross_attention_heads=4, qk_channels=None, v_channels=None,
            cross_attention_shape_for_attention="q", self_attention_widening_factor=3,
            cross_attention_widening_factor=4, hidden_act="gelu_pytorch_tanh", use_query_residual=False,
            max_position_embeddings=96,
        ),
    },
    {
        "name": "tiny_narrow_latents",
        "covers": "d_latents=24 < d_model=48; qk_channels=16 (per-head qk dim 2 in self-attention), v_channels=24; "
        "cross_attention_shape_for_attention='q' is ignored because qk_channels is set; 8 self heads, 4 cross heads; "
        "self widening 1, cross widening 2; exact gelu; 3 self-attends; max_position_embeddings=128 and the "
        "batch case has a row of full length 128.",
        "config": dict(
            d_model=48, d_latents=24, num_latents=4, num_blocks=1, num_self_attends_per_block=3,
            num_self_attention_heads=8, num_cross_attention_heads=4, qk_channels=16, v_channels=24,
            cross_attention_shape_for_attention="q", self_attention_widening_factor=1,
            cross_attention_widening_factor=2, hidden_act="gelu", use_query_residual=True,
            max_position_embeddings=128,
        ),
    },
    {
        "name": "tiny_v_only",
        "covers": "qk_channels=None but v_channels=32=d_latents (cross-attention qk=d_model=16 with v=32); "
        "8 cross heads (qk per head 2), 1 self-attention head; num_blocks=2 x 2 self-attends; gelu_new; "
        "widening self=2 / cross=4; layer_norm_eps=1e-3 in config.json, which HF IGNORES (all nn.LayerNorm use "
        "the PyTorch default eps=1e-5), so an implementation reading layer_norm_eps will be off here.",
        "config": dict(
            d_model=16, d_latents=32, num_latents=12, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=1, num_cross_attention_heads=8, qk_channels=None, v_channels=32,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=2,
            cross_attention_widening_factor=4, hidden_act="gelu_new", use_query_residual=True,
            max_position_embeddings=56, layer_norm_eps=1e-3,
        ),
    },
]

FILL_MASK_TEXTS = [
    "Hello [MASK]orld!",
    "Grüße [MASK]",
    "The [MASK]at sat on the [MASK]at.",
    "[MASK]b[MASK]d [MASK]",
    "naïve café [MASK] 日本",
]

# deepmind/language-perceiver = PerceiverConfig() defaults + these (see the module docstring)
FULL_CONFIG = dict(qk_channels=8 * 32, v_channels=1280)
FULL_TEXT = "This is an incomplete sentence where some words are missing."
FULL_MASK_RANGE = (51, 60)  # 0-based, end exclusive: " missing."

BASE_SEED = 20240611


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def reinit_(
    model: PerceiverForMaskedLM,
    seed: int,
    linear_gain: float = 1.0,
    qk_gain: float = 1.5,
    embed_std: float = 0.5,
) -> None:
    """Overwrite every parameter with seeded random values of a useful scale.

    LayerNorm weight ~ U(0.7, 1.3), bias ~ U(-0.3, 0.3); Linear weight ~ N(0, (g/sqrt(fan_in))^2) with
    g = qk_gain for attention query/key projections (sharper, more position-dependent attention) and
    g = linear_gain otherwise, bias ~ N(0, 0.2^2); token and input-position embeddings ~ N(0, embed_std^2)
    (the token embedding is also the output projection, so this sets the logit scale; the encoder
    layer-normalises its inputs); latents and decoder query positions ~ N(0, 1);
    embedding_decoder.bias ~ N(0, 0.5^2). Parameters are visited in named_modules() order.
    """
    gen = torch.Generator().manual_seed(seed)
    done = set()

    def normal(p, std, mean=0.0):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean)
        done.add(id(p))

    def uniform(p, lo, hi):
        with torch.no_grad():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo)
        done.add(id(p))

    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            uniform(module.weight, 0.7, 1.3)
            uniform(module.bias, -0.3, 0.3)
        elif isinstance(module, nn.Linear):
            gain = qk_gain if name.rsplit(".", 1)[-1] in ("query", "key") else linear_gain
            normal(module.weight, gain / math.sqrt(module.in_features))
            if module.bias is not None:
                normal(module.bias, 0.2)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, embed_std)
        elif isinstance(module, PerceiverTrainablePositionEncoding):
            normal(module.position_embeddings, 1.0)
    normal(model.perceiver.embeddings.latents, 1.0)
    normal(model.embedding_decoder.bias, 0.5)

    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missing, f"parameters not re-initialised: {missing}"


def build_model(config_kwargs: dict, seed: int, **reinit_kwargs) -> PerceiverForMaskedLM:
    torch.manual_seed(seed)
    config = PerceiverConfig(**config_kwargs)
    model = PerceiverForMaskedLM(config)
    reinit_(model, seed + 1, **reinit_kwargs)
    model.eval()
    return model


def save_model(model: PerceiverForMaskedLM, out_dir: Path) -> None:
    """save_pretrained, then delete whatever else it wrote (only files it created, nothing pre-existing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = {f.name for f in out_dir.iterdir()}
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for f in sorted(out_dir.iterdir()):
        if f.name not in ("config.json", "model.safetensors") and f.name not in before:
            print(f"  removing extra file written by save_pretrained: {f.name}")
            f.unlink() if f.is_file() else shutil.rmtree(f)
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()


@torch.no_grad()
def forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(inputs=input_ids, attention_mask=attention_mask).logits.float().contiguous()


def logits_stats(logits: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
    """Stats over all decoder positions (the decoder queries all max_position_embeddings positions)."""
    assert torch.isfinite(logits).all(), "non-finite logits"
    probs = logits.softmax(-1)
    top1 = probs.max(-1).values.flatten()
    return {
        "logits_mean": logits.mean().item(),
        "logits_std_over_vocab": logits.std(-1).mean().item(),
        "logits_std": logits.std().item(),
        "top1_mean": top1.mean().item(),
        "top1_std": top1.std().item(),
        "top1_min": top1.min().item(),
        "top1_max": top1.max().item(),
        "distinct_argmax": int(logits.argmax(-1).unique().numel()),
    }


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
def random_row(gen: torch.Generator, length: int, n_mask: int) -> torch.Tensor:
    row = torch.randint(FIRST_BYTE_ID, VOCAB, (length,), generator=gen, dtype=torch.int64)
    if n_mask:
        pos = torch.randperm(length, generator=gen)[:n_mask]
        row[pos] = MASK_ID
    return row


def padded(rows: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def make_cases(seed: int, max_pos: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    cases = {}
    # single: batch 1, no padding, 20..40 random byte ids with a few masks
    n = int(torch.randint(20, 41, (1,), generator=gen))
    row = random_row(gen, n, 3)
    cases["single"] = (row[None, :].clone(), torch.ones((1, n), dtype=torch.int64))
    # batch: 3 rows of different lengths, padded to max_position_embeddings; the middle row is full length
    mid = int(torch.randint(max_pos // 3, (2 * max_pos) // 3, (1,), generator=gen))
    short = int(torch.randint(5, 12, (1,), generator=gen))
    rows = [random_row(gen, mid, 4), random_row(gen, max_pos, 6), random_row(gen, short, 1)]
    cases["batch"] = padded(rows, max_pos)
    # batch_short: 2 rows padded to a width well below max_position_embeddings
    w = int(torch.randint(14, 20, (1,), generator=gen))
    rows = [random_row(gen, w - 6, 2), random_row(gen, w, 2)]
    cases["batch_short"] = padded(rows, w)
    return cases


def check_padding_invariance(model, ids, mask, logits) -> float:
    """Each padded row must give the same logits as the row alone without padding."""
    worst = 0.0
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = forward(model, ids[i : i + 1, :n], mask[i : i + 1, :n])
        worst = max(worst, (alone[0] - logits[i]).abs().max().item())
    return worst


def to_jsonable(x):
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (torch.Tensor, np.generic)):
        return x.item()
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    raise TypeError(f"cannot convert {type(x)} to JSON")


def fill_mask_cases(model, max_pos: int) -> list[dict]:
    tokenizer = PerceiverTokenizer()
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=5, device="cpu")
    out = []
    for text in FILL_MASK_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == 4 and ids[-1] == 5 and len(ids) <= max_pos, (text, ids)
        positions = [i for i, t in enumerate(ids) if t == MASK_ID]
        assert 1 <= len(positions) <= 3
        result = to_jsonable(fill(text))
        # cross-check against a direct forward pass
        logits = forward(model, torch.tensor([ids]), torch.ones((1, len(ids)), dtype=torch.int64))
        per_mask = result if len(positions) > 1 else [result]
        for pos, preds in zip(positions, per_mask):
            probs = logits[0, pos].softmax(-1)
            top = probs.topk(5)
            assert [p["token"] for p in preds] == top.indices.tolist(), (text, pos)
            assert np.allclose([p["score"] for p in preds], top.values.tolist(), rtol=1e-5, atol=1e-7)
        out.append({"text": text, "top_k": 5, "input_ids": ids, "mask_positions": positions, "output": result})
    return out


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------
def st_metadata(what: str) -> dict[str, str]:
    # A single key: safetensors writes the metadata map in arbitrary order, so several keys would make
    # the file bytes differ between runs. The torch local build suffix (+cpu, +cu132) is left out.
    return {
        "generator": f"{what}; transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}, "
        "CPU float32"
    }


def human(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def write_readme(out_root: Path, summaries: list[dict]) -> None:
    lines = [
        "# Parity fixtures (Hugging Face transformers reference)",
        "",
        "Generated by `scripts/make_parity_fixtures.py` with the environment pinned in",
        "`scripts/requirements-reference.txt` (transformers "
        f"{transformers.__version__}, torch {torch.__version__.split('+')[0]}, CPU, float32). Regenerate with:",
        "",
        "```sh",
        "python3.11 -m venv .venv-ref",
        ".venv-ref/bin/pip install -r scripts/requirements-reference.txt",
        ".venv-ref/bin/python scripts/make_parity_fixtures.py",
        "```",
        "",
        "The output is deterministic (seeded). Do not edit these files by hand.",
        "",
        "Besides these directories, the script writes `../activations.safetensors` (x on [-12, 12] and",
        "`ACT2FN[name](x)` for every parameter-free `hidden_act` name, computed in float64) and",
        "`../pytorch_bin/tiny_v_only/` (the same weights as `tiny_v_only`, as `torch.save(state_dict)`).",
        "",
        "Each directory holds a tiny `PerceiverForMaskedLM`:",
        "",
        "* `config.json`, `model.safetensors`: exactly what `model.save_pretrained(dir, safe_serialization=True)`",
        "  writes (HF tensor names). Weights are seeded random values, re-initialised at a larger scale than HF's",
        "  default init (see `reinit_` in the script: LayerNorm weight U(0.7,1.3), bias U(-0.3,0.3); Linear",
        "  weight N(0,(g/sqrt(fan_in))^2) with g=1.5 for attention query/key projections and g=1 otherwise,",
        "  bias N(0,0.2^2); token and input-position embeddings N(0,0.5^2); latents and decoder query",
        "  positions N(0,1); embedding_decoder.bias N(0,0.5^2)), so that the logits are far from uniform",
        "  and depend on position.",
        "* `cases.safetensors`: for each case `c` in `single` (batch 1, no padding), `batch` (batch 3, padded",
        "  to `max_position_embeddings`, one row of full length) and `batch_short` (batch 2, padded to a width",
        "  below `max_position_embeddings`): `c.input_ids` (int64 [B, L], random byte ids 6..261 with some",
        "  mask ids 3, padded with 0), `c.attention_mask` (int64 [B, L], 1 = token, 0 = padding) and",
        "  `c.logits` (float32 [B, max_position_embeddings, 262]) = `model(inputs=input_ids,",
        "  attention_mask=attention_mask).logits` run in float64, rounded to float32. The decoder always queries all `max_position_embeddings`",
        "  positions, whatever L is; logits at positions >= the row's length are still defined (they depend on",
        "  the input only through the latents). Padded rows give the same logits as the unpadded row alone",
        "  (checked by the script, up to float rounding of ~1e-4).",
        "* `fill_mask.json`: `pipeline(\"fill-mask\", model=model, tokenizer=PerceiverTokenizer(), top_k=5)` on",
        "  texts containing `[MASK]`: `{text, top_k, input_ids ([CLS]=4 ... [SEP]=5), mask_positions, output}`;",
        "  `output` is a list of `{score, token, token_str, sequence}` for one mask, or a list of such lists",
        "  (one per mask, in position order) for several masks. Note the pipeline's own quirks: with one mask",
        "  `sequence` is decoded with `skip_special_tokens=True`, with several masks with special tokens kept",
        "  (`[CLS]...[MASK]...[SEP]`); ids equal to 0 ([PAD]) are dropped from `sequence`; byte ids decode",
        "  to a string with `errors=\"replace\"` (so a lone byte >= 0x80 becomes U+FFFD).",
        "",
        "| model | covers | config | params | logits std | mean top-1 prob (min..max) | max abs f32 vs f64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        cfg = ", ".join(f"{k}={v}" for k, v in s["config"].items())
        st = s["stats"]
        lines.append(
            f"| `{s['name']}` | {s['covers']} | {cfg} | {s['params']} | {st['logits_std']:.2f} | "
            f"{st['top1_mean']:.3f} ({st['top1_min']:.3f}..{st['top1_max']:.3f}) | {st['f32_vs_f64_max_abs']:.1e} |"
        )
    lines += [
        "",
        "Logit statistics are over all positions of the `single` case. The stored logits come from a float64",
        "run of the model (rounded to float32), i.e. the exact answer of these weights; the last column is how",
        "far transformers' own float32 run is from it. The weights are scaled so that this stays below 2.5e-5",
        "(the script asserts it), so the Rust tests can hold a float32 implementation to 1e-4. Mistakes land",
        "far above that: gelu (erf) vs tanh-gelu moves logits by ~1e-2, LayerNorm eps 1e-12 instead of",
        "1e-5 by ~1e-3 and eps 1e-3 (`tiny_v_only`) by far more. gelu_new and gelu_pytorch_tanh are the same",
        "function and cannot be told apart (~2e-5).",
        "",
        "Notes on the HF reference code (transformers 5.24.0):",
        "",
        "* `attention_mask` is only applied in the encoder cross-attention (latents attending to the inputs),",
        "  as an additive mask of `torch.finfo(float32).min` on padded keys (not -inf). The self-attention",
        "  layers have no mask, and the decoder cross-attention ignores the mask it is handed. A row whose",
        "  mask is all zeros therefore does not give NaN: min + score rounds to min for every key, so the",
        "  latents attend uniformly (1/L) to all L padded inputs. With an all-ones mask no mask is built.",
        "* The decoder queries are the `max_position_embeddings` trainable position embeddings, whatever the",
        "  input length L (which must be <= max_position_embeddings); logits always have that many positions.",
        "* All LayerNorms are `nn.LayerNorm(dim)` with PyTorch's default eps = 1e-5; `layer_norm_eps` from the",
        "  config is not used.",
        "* The self-attention output projection is Linear(v_channels -> v_channels) followed by a residual onto",
        "  the d_latents stream, so `v_channels` (or `qk_channels` when `v_channels` is None) must equal",
        "  `d_latents`. The MaskedLM decoder hard-codes qk_channels=256, 8 heads, v_channels=d_model, no query",
        "  residual, widening 1, and no final projection; logits = decoder_output @ input_embeddings^T +",
        "  embedding_decoder.bias.",
        "",
    ]
    (out_root / "README.md").write_text("\n".join(lines))


# One model is also written as pytorch_model.bin (to tests/fixtures/pytorch_bin/<name>/).
PYTORCH_BIN_MODEL = "tiny_v_only"


# Every parameter-free `hidden_act` the Rust crate accepts, under each of its names.
ACTIVATION_NAMES = [
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh",
    "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "mish", "hardswish", "sigmoid",
    "tanh", "linear",
]


def write_activations(path: Path) -> None:
    """x on [-12, 12] and ACT2FN[name](x) for every name, computed in float64 from the float32 x."""
    from transformers.activations import ACT2FN

    x = torch.linspace(-12.0, 12.0, 4001, dtype=torch.float32)
    tensors = {"x": x}
    for name in ACTIVATION_NAMES:
        tensors[name] = ACT2FN[name](x.double()).float().contiguous()
    save_file(tensors, str(path), metadata=st_metadata("scripts/make_parity_fixtures.py, transformers ACT2FN"))


def run_fast(out_root: Path) -> None:
    out_root.mkdir(parents=True, exist_ok=True)
    write_activations(out_root.parent / "activations.safetensors")
    summaries = []
    for idx, spec in enumerate(MODELS):
        name, cfg = spec["name"], spec["config"]
        seed = BASE_SEED + 1000 * idx
        print(f"== {name}  (seed {seed})")
        model = build_model(cfg, seed)
        max_pos = model.config.max_position_embeddings
        out_dir = out_root / name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        save_model(model, out_dir)
        if name == PYTORCH_BIN_MODEL:
            # The same weights in the other format transformers writes: torch.save of the state dict.
            bin_dir = out_root.parent / "pytorch_bin" / name
            if bin_dir.exists():
                shutil.rmtree(bin_dir)
            bin_dir.mkdir(parents=True)
            shutil.copy(out_dir / "config.json", bin_dir / "config.json")
            torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")

        tensors = {}
        stats = None
        worst_f32 = 0.0
        for cname, (ids, mask) in make_cases(seed + 7, max_pos).items():
            logits32 = forward(model, ids, mask)
            assert logits32.shape == (ids.shape[0], max_pos, VOCAB), logits32.shape
            assert torch.isfinite(logits32).all()
            # The stored expectation is the float64 run (rounded to float32): the exact answer of
            # these weights, so a float32 implementation is judged by its own rounding only.
            logits = forward(model.double(), ids, mask)
            model.float()
            worst_f32 = max(worst_f32, (logits32.double() - logits.double()).abs().max().item())
            if cname == "single":
                stats = logits_stats(logits)
            else:
                diff = check_padding_invariance(model, ids, mask, logits32)
                print(f"  {cname}: padded vs unpadded max |diff| = {diff:.2e}")
                assert diff < 5e-5, diff
            tensors[f"{cname}.input_ids"] = ids.contiguous()
            tensors[f"{cname}.attention_mask"] = mask.contiguous()
            tensors[f"{cname}.logits"] = logits
            print(f"  case {cname}: input_ids {list(ids.shape)} lengths {mask.sum(1).tolist()} logits {list(logits.shape)}")
        save_file(
            tensors,
            str(out_dir / "cases.safetensors"),
            metadata=st_metadata(f"scripts/make_parity_fixtures.py, model {name}"),
        )

        # the saved weights reproduce the logits
        reloaded = PerceiverForMaskedLM.from_pretrained(str(out_dir)).eval()
        ids, mask = tensors["single.input_ids"], tensors["single.attention_mask"]
        assert torch.equal(forward(reloaded, ids, mask), forward(model, ids, mask)), "reloaded model differs"

        fm = fill_mask_cases(model, max_pos)
        (out_dir / "fill_mask.json").write_text(json.dumps(fm, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

        stats["f32_vs_f64_max_abs"] = worst_f32
        # Well-conditioned weights: transformers' own float32 run stays far inside the 1e-4 that
        # the Rust tests allow, so that tolerance measures implementation differences only.
        assert worst_f32 <= 2.5e-5, f"float32 rounding too amplified ({worst_f32:.2e}): lower the gains"
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"  params {n_params}; logits mean {stats['logits_mean']:.3f} std {stats['logits_std']:.3f} "
            f"(per-position std over vocab {stats['logits_std_over_vocab']:.3f}); top-1 prob mean "
            f"{stats['top1_mean']:.3f} std {stats['top1_std']:.3f} min {stats['top1_min']:.3f} max {stats['top1_max']:.3f}; "
            f"{stats['distinct_argmax']} distinct argmax tokens over {max_pos} positions; "
            f"max |f32 - f64| {stats['f32_vs_f64_max_abs']:.2e}"
        )
        assert stats["logits_std"] >= 2.0, "logits too flat"
        summaries.append({"name": name, "covers": spec["covers"], "config": cfg, "params": n_params, "stats": stats})

    write_readme(out_root, summaries)
    print("== files")
    total = 0
    extra = [out_root.parent / "activations.safetensors", *(out_root.parent / "pytorch_bin").rglob("*")]
    for f in sorted([*out_root.rglob("*"), *extra]):
        if f.is_file():
            size = f.stat().st_size
            total += size
            digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            print(f"  {size:>9}  {human(size):>10}  {digest}  {f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f}")
    print(f"  total {total} bytes ({human(total)})")
    assert total < 6 * 1024 * 1024, "fixtures too large"


def run_full(out_dir: Path) -> None:
    seed = BASE_SEED + 99
    print(
        f"== full deepmind/language-perceiver layout PerceiverConfig(**{FULL_CONFIG}) (seed {seed}), "
        f"torch threads {torch.get_num_threads()}"
    )
    t0 = time.perf_counter()
    # Same re-initialisation as the tiny models, except embed_std: the logits are <decoder output,
    # token embedding> over d_model=768 channels, and with embed_std=0.25 their std is ~19 (near one-hot
    # softmaxes); 0.06 brings it to a few units. (The encoder layer-normalises its inputs, so the
    # embedding scale matters little elsewhere.)
    model = build_model(FULL_CONFIG, seed, embed_std=0.06)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  built in {time.perf_counter() - t0:.1f} s; params {n_params}")
    assert n_params == 201_108_230, n_params
    cfg = model.config
    raw = FULL_TEXT.encode("utf-8")
    assert len(raw) == 60
    ids = torch.tensor([[b + FIRST_BYTE_ID for b in raw]], dtype=torch.int64)
    lo, hi = FULL_MASK_RANGE
    assert raw[lo:hi] == b" missing."
    ids[0, lo:hi] = MASK_ID
    mask = torch.ones_like(ids)

    t0 = time.perf_counter()
    logits = forward(model, ids, mask)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits2 = forward(model, ids, mask)
    second = time.perf_counter() - t0
    assert torch.equal(logits, logits2)
    assert logits.shape == (1, cfg.max_position_embeddings, cfg.vocab_size)
    logits64 = forward(model.double(), ids, mask)
    model.float()
    print(f"  transformers float32 vs float64: max |diff| {(logits.double() - logits64.double()).abs().max().item():.2e}")
    stats = logits_stats(logits)
    print(f"  forward [1, 60] -> logits {list(logits.shape)}: first {first:.2f} s, second {second:.2f} s")
    print(
        f"  logits mean {stats['logits_mean']:.3f} std {stats['logits_std']:.3f}; top-1 prob mean {stats['top1_mean']:.3f} "
        f"std {stats['top1_std']:.3f} min {stats['top1_min']:.3f} max {stats['top1_max']:.3f}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    save_model(model, out_dir)
    save_file(
        {"single.input_ids": ids, "single.attention_mask": mask, "single.logits": logits, "single.logits_f64": logits64},
        str(out_dir / "cases.safetensors"),
        metadata=st_metadata("scripts/make_parity_fixtures.py --full, deepmind/language-perceiver layout"),
    )
    print(f"  saved in {time.perf_counter() - t0:.1f} s")
    for f in sorted(out_dir.iterdir()):
        print(f"  {f.stat().st_size:>12}  {human(f.stat().st_size):>10}  {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", metavar="OUT_DIR", type=Path, help="build the full default config instead")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root of the tiny fixtures")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    if args.full is not None:
        run_full(args.full)
    else:
        run_fast(args.out)


if __name__ == "__main__":
    main()
