#!/usr/bin/env python3
"""Generate the classifiers' training-step fixtures (loss and every gradient) from transformers.

The Rust classifiers' backward pass (``perceiver_train::model`` with ``classification::classification_loss``)
is checked against transformers' four classification classes (CPU, float64): one tiny model of each, built
from a local config (the hub is never contacted), with the seeded weights of
``scripts/make_classification_fixtures.py`` (its ``reinit_``), and one batch of three inputs with distinct labels.

The text classifier (``PerceiverForSequenceClassification``), on one padded batch of three texts::

    tests/fixtures/grad/classifier/
        config.json, model.safetensors   as ``save_pretrained`` writes them (float32)
        step.safetensors                 input_ids, attention_mask (int64 [B, L], 0-padded), labels (int64 [B]);
                                         loss, grad_norm (float64 [1]); logits (float64 [B, num_labels]);
                                         grad.<param> (float64) for every parameter, computed in float64 from
                                         the float32 weights

The three ImageNet classifiers, each on one batch of three images (seeded ``torch.randn``: normalised pixels
are roughly standard normal)::

    tests/fixtures/grad/image_learned/   PerceiverForImageClassificationLearned         8 x 8 images
    tests/fixtures/grad/image_fourier/   PerceiverForImageClassificationFourier         6 x 8 images
    tests/fixtures/grad/image_conv/      PerceiverForImageClassificationConvProcessing  16 x 20 images
        config.json, model.safetensors   as ``save_pretrained`` writes them (float32; the conv model's also holds
                                         its BatchNorm running_mean, running_var (float32) and
                                         num_batches_tracked (int64))
        step.safetensors                 pixel_values (float32 [B, 3, H, W]), labels (int64 [B]); loss, grad_norm
                                         (float64 [1]); logits (float64 [B, num_labels]); grad.<param> (float64)
                                         for every parameter

The image steps run with the model in ``train()`` mode but every ``nn.BatchNorm2d`` in ``eval()`` mode, as the Rust
trainer freezes BatchNorm: it normalises with the running statistics as loaded (they stay unchanged, checked) and
trains only its weight and bias.

The loss is transformers' ``single_label_classification`` loss: ``CrossEntropyLoss()`` over the batch (mean).
The optimizer step itself is task-independent and checked by the masked-LM fixtures
(``scripts/make_grad_fixtures.py``).

How to run (from the repository root; the environment of scripts/requirements-reference.txt)::

    .venv-ref/bin/python scripts/make_classifier_grad_fixture.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

# Checks the pins, sets the offline environment; its reinit_ gives every parameter a useful scale.
import make_classification_fixtures as classification  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    PerceiverConfig,
    PerceiverForImageClassificationConvProcessing,
    PerceiverForImageClassificationFourier,
    PerceiverForImageClassificationLearned,
    PerceiverForSequenceClassification,
    PerceiverTokenizer,
)

GRAD = classification.REPO_ROOT / "tests" / "fixtures" / "grad"
OUT = GRAD / "classifier"
SEED = 20250411
LABELS = ["negative", "neutral", "positive"]
CONFIG = dict(
    d_model=8, d_latents=6, num_latents=5, num_blocks=2, num_self_attends_per_block=2,
    num_self_attention_heads=2, num_cross_attention_heads=1, qk_channels=4, v_channels=6,
    cross_attention_shape_for_attention="kv", self_attention_widening_factor=2,
    cross_attention_widening_factor=1, hidden_act="gelu", use_query_residual=True,
    max_position_embeddings=20, vocab_size=262, attention_probs_dropout_prob=0.0,
    id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)},
)
TEXTS = ["Fine, thanks!", "Grüße :(", "so-so"]
TARGETS = [2, 0, 1]
KEY_BIAS_SUFFIX = ".attention.self.key.bias"

# The image classes fix the encoder's input width themselves (the preprocessor's output: learned 256 conv1x1
# channels + 256 projected position channels = 512; Fourier 3 pixel channels + 258 Fourier features = 261;
# conv 64 stem channels + 258 = 322) and ignore the config's d_model; config.json states it as d_model all the
# same, as the tiny_image_* models of make_classification_fixtures.py do. The shapes follow those models at a
# smaller width; qk_channels is set where the "kv" rule would make the encoder's queries and keys 261 or 322
# wide. The learned model's size is mostly fixed by its class: the 256 x 256 position projection alone is
# 65,792 of its parameters.
IMAGE_LABELS = ["cat", "dog", "bird", "fish"]
IMAGE_COMMON = dict(
    attention_probs_dropout_prob=0.0,
    id2label=dict(enumerate(IMAGE_LABELS)), label2id={l: i for i, l in enumerate(IMAGE_LABELS)},
)
# name → (class, config kwargs, (H, W) of pixel_values, labels, seed)
IMAGE_CASES = {
    "image_learned": (
        PerceiverForImageClassificationLearned,
        # The position table has image_size² rows: the images are image_size x image_size.
        dict(
            d_model=512, num_latents=5, d_latents=8, num_blocks=2, num_self_attends_per_block=1,
            num_self_attention_heads=2, num_cross_attention_heads=4, hidden_act="gelu",
            cross_attention_shape_for_attention="q", image_size=8,
        ),
        (8, 8),
        [2, 0, 3],
        20250421,
    ),
    "image_fourier": (
        PerceiverForImageClassificationFourier,
        # Fourier features are computed for the input's own size (max_resolution stays 224 x 224).
        dict(
            d_model=261, num_latents=5, d_latents=6, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=3, num_cross_attention_heads=3, qk_channels=6, hidden_act="gelu",
        ),
        (6, 8),
        [1, 3, 0],
        20250431,
    ),
    "image_conv": (
        PerceiverForImageClassificationConvProcessing,
        # The stem: 7x7 stride-2 convolution padded 3 on every side (16 x 20 -> 8 x 10), BatchNorm, ReLU,
        # 3x3 stride-2 max-pool without padding (8 x 10 -> 3 x 4): 12 input positions.
        dict(
            d_model=322, num_latents=4, d_latents=6, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=2, num_cross_attention_heads=2, qk_channels=4, v_channels=6,
            self_attention_widening_factor=2, hidden_act="gelu_new",
        ),
        (16, 20),
        [3, 1, 2],
        20250441,
    ),
}
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def save_model(model: nn.Module, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    for extra in out.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()


def check_gradients(params: dict, grads: dict, grad_norm: float) -> float:
    """Every parameter trains; the attention key biases are the exception (softmax shift invariance).
    Returns the key biases' gradient noise."""
    key_bias = [k for k in params if k.endswith(KEY_BIAS_SUFFIX)]
    noise = max(grads[k].abs().max().item() for k in key_bias)
    assert noise <= 1e-12 * grad_norm, noise
    weak = [k for k in params if k not in key_bias and grads[k].abs().max().item() < 1e-6 * grad_norm]
    assert not weak, f"parameters with a negligible gradient: {weak}"
    return noise


def write_step(out: Path, tensors: dict, grads: dict) -> None:
    for k, g in grads.items():
        tensors[f"grad.{k}"] = g.contiguous()
    save_file(
        tensors,
        str(out / "step.safetensors"),
        metadata={
            "generator": f"scripts/make_classifier_grad_fixture.py; transformers {transformers.__version__}, "
            f"torch {torch.__version__.split('+')[0]}, CPU float64"
        },
    )


def print_files(out: Path) -> None:
    total = 0
    for f in sorted(out.iterdir()):
        total += f.stat().st_size
        print(f"  {f.stat().st_size:>8}  {f.name}")
    print(f"  {total:>8}  in all")


def backward(model, params, labels, **inputs):
    """transformers' loss of `inputs` (checked to be the mean cross-entropy) and its backward pass: the output,
    every parameter's gradient, their global norm and the key biases' gradient noise."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    out.loss.backward()
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    assert abs(ce.item() - out.loss.item()) <= 1e-14 * out.loss.item()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads.values())).item()
    return out, grads, grad_norm, check_gradients(params, grads, grad_norm)


def text_case() -> None:
    torch.manual_seed(SEED)
    model = PerceiverForSequenceClassification(PerceiverConfig(**CONFIG))
    classification.reinit_(model, SEED + 1)
    params = dict(model.named_parameters())
    assert set(params) == set(model.state_dict()), "state_dict holds non-parameters"
    save_model(model, OUT)
    saved = load_file(str(OUT / "model.safetensors"))
    assert set(saved) == set(params), sorted(set(saved) ^ set(params))

    batch = PerceiverTokenizer()(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.tensor(TARGETS, dtype=torch.int64)
    assert ids.shape[1] <= CONFIG["max_position_embeddings"]

    model.double().train()
    out, grads, grad_norm, noise = backward(model, params, labels, inputs=ids, attention_mask=mask)

    tensors = {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "labels": labels,
        "loss": torch.tensor([out.loss.item()], dtype=torch.float64),
        "grad_norm": torch.tensor([grad_norm], dtype=torch.float64),
        "logits": out.logits.detach().contiguous(),
    }
    write_step(OUT, tensors, grads)
    n = sum(p.numel() for p in params.values())
    print(
        f"{OUT}: {n} parameters in {len(params)} tensors; batch {list(ids.shape)} lengths {mask.sum(1).tolist()}; "
        f"loss {out.loss.item():.10f}; grad_norm {grad_norm:.6f}; key-bias gradient noise {noise:.0e}"
    )
    print_files(OUT)


def image_case(name: str) -> None:
    cls, config_kwargs, (height, width), targets, seed = IMAGE_CASES[name]
    out_dir = GRAD / name
    torch.manual_seed(seed)
    model = cls(PerceiverConfig(**config_kwargs, **IMAGE_COMMON))
    classification.reinit_(model, seed + 1)
    params = dict(model.named_parameters())
    batchnorms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    buffers = {f"{n}.{b}" for n in batchnorms for b in BATCHNORM_BUFFERS}
    state = model.state_dict()
    assert not set(params) & buffers and set(state) == set(params) | buffers, sorted(
        set(state) ^ (set(params) | buffers)
    )
    assert (name == "image_conv") == bool(batchnorms), list(batchnorms)
    save_model(model, out_dir)
    saved = load_file(str(out_dir / "model.safetensors"))
    assert set(saved) == set(state), sorted(set(saved) ^ set(state))
    for k, v in saved.items():
        want = torch.int64 if k.endswith(".num_batches_tracked") else torch.float32
        assert v.dtype == want and torch.equal(v, state[k]), k

    gen = torch.Generator().manual_seed(seed + 2)
    pixel_values = torch.randn((len(targets), 3, height, width), generator=gen, dtype=torch.float32)
    labels = torch.tensor(targets, dtype=torch.int64)
    assert len(set(targets)) == len(targets)

    model.double().train()
    # The Rust trainer freezes BatchNorm: running statistics as loaded, only weight and bias train.
    for bn in batchnorms.values():
        bn.eval()
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in buffers}
    out, grads, grad_norm, noise = backward(model, params, labels, inputs=pixel_values.to(torch.float64))
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"
    assert out.logits.dtype == torch.float64 and out.logits.shape == (len(targets), len(IMAGE_LABELS))

    tensors = {
        "pixel_values": pixel_values.contiguous(),
        "labels": labels,
        "loss": torch.tensor([out.loss.item()], dtype=torch.float64),
        "grad_norm": torch.tensor([grad_norm], dtype=torch.float64),
        "logits": out.logits.detach().contiguous(),
    }
    write_step(out_dir, tensors, grads)
    n = sum(p.numel() for p in params.values())
    print(
        f"{out_dir}: {cls.__name__}, {n} parameters in {len(params)} tensors"
        f"{f' + {len(buffers)} BatchNorm buffers' if buffers else ''}; "
        f"pixel_values {list(pixel_values.shape)}, labels {targets}; "
        f"loss {out.loss.item():.10f}; grad_norm {grad_norm:.6f}; key-bias gradient noise {noise:.0e}"
    )
    print_files(out_dir)


def main() -> None:
    torch.set_num_threads(1)
    text_case()
    for name in IMAGE_CASES:
        image_case(name)


if __name__ == "__main__":
    main()
