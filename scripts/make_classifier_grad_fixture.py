#!/usr/bin/env python3
"""Generate the sequence classifier's training-step fixture (loss and every gradient) from transformers.

The Rust classifier's backward pass (``perceiver_train::model::PerceiverForSequenceClassification`` with
``classification::classification_loss``) is checked against ``transformers.PerceiverForSequenceClassification``
(CPU, float64). One tiny model from a local config (the hub is never contacted), with the seeded weights of
``scripts/make_classification_fixtures.py`` (its ``reinit_``), and one padded batch of three texts:

    tests/fixtures/grad/classifier/
        config.json, model.safetensors   as ``save_pretrained`` writes them (float32)
        step.safetensors                 input_ids, attention_mask (int64 [B, L], 0-padded), labels (int64 [B]);
                                         loss, grad_norm (float64 [1]); grad.<param> (float64) for every parameter,
                                         computed in float64 from the float32 weights

The loss is transformers' ``single_label_classification`` loss: ``CrossEntropyLoss()`` over the texts (mean).
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
from transformers import PerceiverConfig, PerceiverForSequenceClassification, PerceiverTokenizer  # noqa: E402

OUT = classification.REPO_ROOT / "tests" / "fixtures" / "grad" / "classifier"
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


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = PerceiverForSequenceClassification(PerceiverConfig(**CONFIG))
    classification.reinit_(model, SEED + 1)
    params = dict(model.named_parameters())
    assert set(params) == set(model.state_dict()), "state_dict holds non-parameters"
    if OUT.exists():
        shutil.rmtree(OUT)
    model.save_pretrained(str(OUT), safe_serialization=True)
    for extra in OUT.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    saved = load_file(str(OUT / "model.safetensors"))
    assert set(saved) == set(params), sorted(set(saved) ^ set(params))

    batch = PerceiverTokenizer()(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.tensor(TARGETS, dtype=torch.int64)
    assert ids.shape[1] <= CONFIG["max_position_embeddings"]

    model.double().train()
    model.zero_grad(set_to_none=True)
    out = model(inputs=ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    out.loss.backward()
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    assert abs(ce.item() - out.loss.item()) <= 1e-14 * out.loss.item()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads.values())).item()
    # Every parameter trains; the attention key biases are the exception (softmax shift invariance).
    key_bias = [k for k in params if k.endswith(KEY_BIAS_SUFFIX)]
    noise = max(grads[k].abs().max().item() for k in key_bias)
    assert noise <= 1e-12 * grad_norm, noise
    weak = [k for k in params if k not in key_bias and grads[k].abs().max().item() < 1e-6 * grad_norm]
    assert not weak, f"parameters with a negligible gradient: {weak}"

    tensors = {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "labels": labels,
        "loss": torch.tensor([out.loss.item()], dtype=torch.float64),
        "grad_norm": torch.tensor([grad_norm], dtype=torch.float64),
        "logits": out.logits.detach().contiguous(),
    }
    for k, g in grads.items():
        tensors[f"grad.{k}"] = g.contiguous()
    save_file(
        tensors,
        str(OUT / "step.safetensors"),
        metadata={
            "generator": f"scripts/make_classifier_grad_fixture.py; transformers {transformers.__version__}, "
            f"torch {torch.__version__.split('+')[0]}, CPU float64"
        },
    )
    n = sum(p.numel() for p in params.values())
    print(
        f"{OUT}: {n} parameters in {len(params)} tensors; batch {list(ids.shape)} lengths {mask.sum(1).tolist()}; "
        f"loss {out.loss.item():.10f}; grad_norm {grad_norm:.6f}; key-bias gradient noise {noise:.0e}"
    )
    for f in sorted(OUT.iterdir()):
        print(f"  {f.stat().st_size:>8}  {f.name}")


if __name__ == "__main__":
    main()
