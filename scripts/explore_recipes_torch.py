"""Explore training recipes for the default model on a GPU, with transformers' PerceiverForMaskedLM.

This script does NOT make the shipped model (`perceiver train` does, see train_default_model.sh). It
answers one question cheaply on a borrowed GPU: which recipe leaves the unigram plateau (the model
predicting the byte distribution without looking at context) soonest, and how fast accuracy climbs
after. It reproduces our trainer's setup: DeepMind's initialisation (crates/perceiver-train/src/init.rs),
15% independent-byte masking with [MASK], loss on masked bytes only, AdamW with decay on linear weights
only, linear warmup then cosine decay, clipping at global norm 1.

    python3 scripts/explore_recipes_torch.py --data DIR --seconds 300 --out runs.jsonl NAME...

DIR holds train/*.txt and heldout/*.txt. Each NAME (see RECIPES) runs in its own process on the same
GPU; every `--eval-every` steps one JSON line (recipe, step, held-out masked-byte accuracy, loss) is
appended to --out.
"""

import argparse
import glob
import json
import math
import multiprocessing as mp
import os
import time

import numpy as np
import torch
from transformers import PerceiverConfig, PerceiverForMaskedLM

MASK_ID = 3
BYTE_OFFSET = 6
DEFAULT_CONFIG = dict(
    d_latents=256, d_model=128, num_latents=128, num_blocks=1, num_self_attends_per_block=4,
    num_self_attention_heads=8, num_cross_attention_heads=8, self_attention_widening_factor=4,
    cross_attention_widening_factor=1, max_position_embeddings=256, vocab_size=262,
    attention_probs_dropout_prob=0.0, hidden_act="gelu", use_query_residual=True,
)

# name -> overrides of: lr, batch, seq, warmup, pos_std (position tables and latents), emb_std
# (byte embedding), pos_lr_mult, config (model config overrides)
RECIPES = {
    "base": {},
    "lr3e-3": dict(lr=3e-3),
    "bs64": dict(batch=64, lr=2e-3),
    "pos1": dict(pos_std=1.0),
    "pos1-lr3e-3": dict(pos_std=1.0, lr=3e-3),
    "emb02": dict(emb_std=0.02),
    "poslr10": dict(pos_lr_mult=10.0),
    "seq128": dict(seq=128, batch=32),
    "pos1-bs64": dict(pos_std=1.0, batch=64, lr=2e-3),
    "pos1-lat64": dict(pos_std=1.0, config=dict(num_latents=64)),
    "pos1-lr5e-3": dict(pos_std=1.0, lr=5e-3),
    "local": dict(local=True),
    "local-lr3e-3": dict(local=True, lr=3e-3),
    "local-bs64": dict(local=True, batch=64, lr=2e-3),
    "local-soft": dict(local=dict(enc_gain=0.5, dec_gain=0.7), lr=2e-3),
    "local-sharp": dict(local=dict(enc_gain=1.1, dec_gain=1.3), lr=2e-3),
}


def position_code(positions, n_freq):
    """[len(positions), 2 n_freq]: cos/sin at frequencies pi/2, pi/4, ... (octaves)."""
    w = math.pi / 2.0 ** torch.arange(1, n_freq + 1, dtype=torch.float64)
    a = positions[:, None].double() * w[None, :]
    return torch.stack([a.cos(), a.sin()], -1).reshape(len(positions), 2 * n_freq)


def rotation(shift, n_freq):
    """R with R @ code(p) = code(p + shift)."""
    w = math.pi / 2.0 ** torch.arange(1, n_freq + 1, dtype=torch.float64)
    r = torch.zeros(2 * n_freq, 2 * n_freq, dtype=torch.float64)
    for k in range(n_freq):
        c, s = math.cos(w[k] * shift), math.sin(w[k] * shift)
        r[2 * k:2 * k + 2, 2 * k:2 * k + 2] = torch.tensor([[c, -s], [s, c]])
    return r


def local_init(model, config, enc_gain=0.8, dec_gain=1.0, latent_scale=6.0):
    """Each latent starts attending to the bytes around its own span, and each output position to the
    latents around it: position codes in reserved channels, query/key blocks that compare them."""
    p = dict(model.named_parameters())
    n_lat, m = config.num_latents, config.max_position_embeddings
    enc_heads, dec_heads = config.num_cross_attention_heads, 8
    enc_q = p["perceiver.encoder.cross_attention.attention.self.query.weight"]
    enc_hd = enc_q.shape[0] // enc_heads
    dec_q = p["perceiver.decoder.decoding_cross_attention.attention.self.query.weight"]
    dec_hd = dec_q.shape[0] // dec_heads
    r = min(enc_hd, dec_hd, 2 * math.ceil(math.log2(m)))
    r -= r % 2
    nf = r // 2
    pos = torch.arange(m)
    code = position_code(pos, nf)
    centers = (torch.arange(n_lat) + 0.5) * m / n_lat - 0.5
    with torch.no_grad():
        emb = p["perceiver.input_preprocessor.embeddings.weight"]
        emb[:, :r] = 0
        content = math.sqrt(emb.shape[1] - r)
        pin = p["perceiver.input_preprocessor.position_embeddings.weight"]
        pin.zero_(); pin[:, :r] = (code * content / math.sqrt(nf)).float()
        lat = p["perceiver.embeddings.latents"]
        lat[:, :r] = (position_code(centers, nf) * latent_scale).float()
        shifts = [-3, -2, -1, 0, 1, 2, 3, 4]
        enc_k = p["perceiver.encoder.cross_attention.attention.self.key.weight"]
        enc_k.zero_()
        for h in range(enc_heads):
            rows = slice(h * enc_hd, h * enc_hd + r)
            enc_q[h * enc_hd:(h + 1) * enc_hd, :] = 0
            enc_q[rows, :r] = (enc_gain * rotation(shifts[h % len(shifts)], nf)).float()
            enc_k[rows, :r] = enc_gain * torch.eye(r)
        for name, w in p.items():
            if name.startswith("perceiver.encoder.") and (name.endswith("output.dense.weight") or name.endswith("mlp.dense2.weight")):
                w[:r, :] = 0
        out_pos = p["perceiver.decoder.output_position_encodings.position_embeddings"]
        out_pos.zero_(); out_pos[:, :r] = code.float()
        dec_k = p["perceiver.decoder.decoding_cross_attention.attention.self.key.weight"]
        dshifts = [-6, -4, -2, 0, 0, 2, 4, 6]
        for h in range(dec_heads):
            dec_q[h * dec_hd:(h + 1) * dec_hd, :] = 0
            dec_k[h * dec_hd:h * dec_hd + r, :] = 0
            dec_q[h * dec_hd:h * dec_hd + r, :r] = (dec_gain * rotation(dshifts[h], nf)).float()
            dec_k[h * dec_hd:h * dec_hd + r, :r] = dec_gain * torch.eye(r)


def read_bytes(pattern):
    return b"".join(open(p, "rb").read() for p in sorted(glob.glob(pattern)))


def trunc_normal_(t, std, gen):
    with torch.no_grad():
        t.copy_(torch.nn.init.trunc_normal_(torch.empty_like(t), 0.0, 1.0, -2.0, 2.0, generator=gen) * std)


def deepmind_init(model, pos_std, emb_std, seed):
    gen = torch.Generator().manual_seed(seed)
    correction = 0.8796256610342398
    for name, p in model.named_parameters():
        last = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if "layernorm" in name:
            torch.nn.init.constant_(p, 1.0 if name.endswith(".weight") else 0.0)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        elif name.endswith(".weight") and last in ("query", "key", "value", "dense", "dense1", "dense2"):
            trunc_normal_(p, (1.0 / p.shape[1]) ** 0.5 / correction, gen)
        elif name.endswith("input_preprocessor.embeddings.weight"):
            trunc_normal_(p, emb_std, gen)
        else:
            trunc_normal_(p, pos_std, gen)


def batch_from(data, rng, batch, seq):
    starts = rng.integers(0, len(data) - seq, size=batch)
    ids = np.stack([np.frombuffer(data[s:s + seq], dtype=np.uint8) for s in starts]).astype(np.int64) + BYTE_OFFSET
    mask = rng.random(ids.shape) < 0.15
    inputs = np.where(mask, MASK_ID, ids)
    labels = np.where(mask, ids, -100)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def masked_loss(model, inputs, labels):
    logits = model(inputs=inputs).logits[:, : inputs.shape[1]]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    hit = ((logits.argmax(-1) == labels) & (labels != -100)).sum()
    return loss, hit, (labels != -100).sum()


def run(name, args):
    r = dict(lr=1e-3, batch=16, seq=256, warmup=200, pos_std=0.02, emb_std=1.0, pos_lr_mult=1.0, config={}, local=False)
    r.update(RECIPES[name])
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = args.device
    config = PerceiverConfig(**{**DEFAULT_CONFIG, **r["config"]})
    model = PerceiverForMaskedLM(config)
    deepmind_init(model, r["pos_std"], r["emb_std"], 0)
    if r["local"]:
        local_init(model, config, **(r["local"] if isinstance(r["local"], dict) else {}))
    model.to(dev).train()
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2 and "embeddings" not in n and "position" not in n]
    pos = [p for n, p in model.named_parameters() if ("position" in n or "latents" in n)]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in decay + pos)]
    groups = [dict(params=decay, weight_decay=0.01, mult=1.0), dict(params=rest, weight_decay=0.0, mult=1.0),
              dict(params=pos, weight_decay=0.0, mult=r["pos_lr_mult"])]
    opt = torch.optim.AdamW(groups, lr=r["lr"], betas=(0.9, 0.999), eps=1e-8)
    train = read_bytes(os.path.join(args.data, "train", "*.txt"))
    held = read_bytes(os.path.join(args.data, "heldout", "*.txt"))
    rng = np.random.default_rng(1)
    eval_rng = np.random.default_rng(12345)
    evals = [batch_from(held, eval_rng, 64, r["seq"]) for _ in range(4)]
    total = args.total_steps
    start = time.time()
    step = 0
    while time.time() - start < args.seconds:
        lr_scale = min(1.0, (step + 1) / r["warmup"])
        if step >= r["warmup"]:
            progress = min(1.0, (step - r["warmup"]) / max(1, total - r["warmup"]))
            lr_scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = r["lr"] * lr_scale * g["mult"]
        inputs, labels = batch_from(train, rng, r["batch"], r["seq"])
        loss, _, _ = masked_loss(model, inputs.to(dev), labels.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                tl, th, tn = 0.0, 0, 0
                for inputs, labels in evals:
                    l, h, n = masked_loss(model, inputs.to(dev), labels.to(dev))
                    tl += l.item() * n.item(); th += h.item(); tn += n.item()
            model.train()
            line = dict(recipe=name, step=step, bytes=step * r["batch"] * r["seq"], seconds=round(time.time() - start, 1),
                        acc=round(th / tn, 4), loss=round(tl / tn, 4))
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--total-steps", type=int, default=20000, help="cosine horizon")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("recipes", nargs="+")
    args = ap.parse_args()
    mp.set_start_method("spawn")
    procs = [mp.Process(target=run, args=(n, args)) for n in args.recipes]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    last = {}
    for line in open(args.out):
        d = json.loads(line)
        last.setdefault(d["recipe"], []).append(d)
    for name, rows in last.items():
        first_escape = next((d["step"] for d in rows if d["acc"] > 0.25), None)
        print(f"{name:14s} steps {rows[-1]['step']:6d}  acc {rows[-1]['acc']:.3f}  loss {rows[-1]['loss']:.3f}  first>25% at {first_escape}")


if __name__ == "__main__":
    main()
