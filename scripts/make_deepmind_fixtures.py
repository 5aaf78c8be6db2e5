#!/usr/bin/env python3
"""Fixtures made by DeepMind's own Perceiver IO code: Haiku checkpoints and the logits of its `apply`.

The Rust loader reads DeepMind's released checkpoints (`language_perceiver_io_bytes.pickle`, the
`*.pystate` files) and maps their Haiku parameters onto transformers' names. This script holds it
to DeepMind's numbers: it builds the byte-level masked language model exactly as DeepMind's
masked_language_modelling Colab builds it (`apply_perceiver`: `hk.Embed`, a trainable input
position encoding, `perceiver.Perceiver(PerceiverEncoder, BasicDecoder)`, `EmbeddingDecoder`), but
with tiny configs unlike the released one, draws random parameters with
`hk.transform(...).init` (fixed seed), pickles them as DeepMind's files are pickled, and records
what DeepMind's own `apply` returns for a few inputs. Nothing is fetched while it runs.

It does the same for the optical-flow model (`optical_flow_checkpoint.pystate`): a tiny model built
as the optical_flow Colab's `optical_flow` builds it, its bare params pickled as that file is, and
DeepMind's output for one tile under two settings of what no shape tells (the Colab's, with its
368x496 TRAIN_SIZE, and a config.json's); see `make_flow` and tests/fixtures/deepmind/README.md:

    tests/fixtures/deepmind/flow/
        params.pystate             the bare params (2021's FlatMapping layout, protocol 4)
        config.json                the transformers config.json of the `config_json` run
        cases.safetensors          per run: the frames (uint8), DeepMind's model output and the
                                   Colab's flow (x 20), float64 rounded to float32

    tests/fixtures/deepmind/<name>/
        params.p<N>.pickle         pickle.dumps(params, protocol=N): 2 and 5 for the first
                                   model, 3 for the second
        params.flatmapping.pickle  (first model only) the same params wrapped as 2021's Haiku
                                   pickled them: every mapping a `haiku._src.data_structures.
                                   FlatMapping` built from a dict, protocol 4
        config.json                (second model only) the transformers config.json a user names
                                   for what the shapes cannot tell (heads, blocks, query residual)
        cases.safetensors          for each case c: c.input_ids (int64 [B, L], L = max_seq_len,
                                   padded with 0), c.input_mask (int64 [B, L], 1 = token),
                                   c.logits (float32 [B, L, 262]): DeepMind's apply, run in
                                   float64 and rounded to float32
    tests/fixtures/deepmind/README.md

And for the three ImageNet classifiers (`imagenet_*.pystate`): tiny models built as the
imagenet_classification Colab's `imagenet_classifier` builds them (`hk.transform_with_state`; the
conv model's BatchNorm statistics are Haiku state), pickled as `{"params", "state"}`, with
DeepMind's logits for a few images; see `make_imagenet` and tests/fixtures/deepmind/README.md:

    tests/fixtures/deepmind/imagenet_{learned,fourier,conv}/
        params.pystate             {"params": ..., "state": ...} (FlatMapping layout, protocol 4)
        config.json                (Fourier only) the transformers config.json of its second run
        cases.safetensors          case<c>.pixels (normalised, float32 [B, H, W, 3]) and per run
                                   <run>.case<c>.logits, float64 rounded to float32

And for the video autoencoder (`video_autoencoding_checkpoint.pystate`): a tiny model built as
the video_autoencoding Colab's `video_autoencoder` builds it, its bare params pickled (float16),
DeepMind's audio, image and label outputs for every query and for one of the Colab's chunks; see
`make_video`:

    tests/fixtures/deepmind/video/
        params.pystate             the bare params (FlatMapping layout, float16, protocol 4)
        config.json                the transformers config.json of its (non-Colab) sizes
        cases.safetensors          frames, audio, and per subsampling the query indices and
                                   DeepMind's outputs, float64 rounded to float32

How DeepMind's files were pickled, and what this script pickles instead:

* In 2021 `hk.transform(...).init` returned Haiku `FlatMapping`s of JAX `DeviceArray`s.
  A DeviceArray pickled as the NumPy array it held (`__reduce__` forwarded to its value) and a
  FlatMapping as `FlatMapping(dict)`. The current Haiku (0.0.17) returns plain dicts of
  `jax.Array`, and a `jax.Array` now pickles through `jax._src.array._reconstruct_array`, which
  DeepMind's files never contain; so the arrays are turned into NumPy arrays first (as a
  DeviceArray pickled), and the plain-dict params are pickled as they are. The `flatmapping`
  variant re-creates the 2021 layout: the current Haiku still defines
  `haiku._src.data_structures.FlatMapping` ("only called from old checkpoints"), so the pickle
  names the same global the released files do. NumPy 2 pickles its arrays through
  `numpy._core.multiarray._reconstruct` (protocols 2-4) or `numpy._core.numeric._frombuffer`
  (protocol 5), where NumPy 1 wrote `numpy.core...`; a reader must take both.

How to run (from the repository root):

    python3.11 -m venv .venv-deepmind
    .venv-deepmind/bin/pip install -r scripts/requirements-deepmind.txt
    # DeepMind's code, at the pinned commit, into the ignored third_party/deepmind_perceiver/:
    # from a local clone (or bare mirror) of github.com/google-deepmind/deepmind-research
    .venv-deepmind/bin/python scripts/make_deepmind_fixtures.py --copy-from /path/to/deepmind-research
    .venv-deepmind/bin/python scripts/make_deepmind_fixtures.py     # writes tests/fixtures/deepmind/

DeepMind's files are Apache-2.0; they are still kept out of this repository (third_party/ is
ignored), and the script checks them by SHA-256 before importing them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
REQUIREMENTS = SCRIPT_DIR / "requirements-deepmind.txt"
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "deepmind"
DEEPMIND_DIR = REPO_ROOT / "third_party" / "deepmind_perceiver"

# google-deepmind/deepmind-research: the last commit that touched perceiver/ (2023-06-02).
DEEPMIND_COMMIT = "9176a9f23ced8e3d6024718d757be8d67cfb6927"
DEEPMIND_FILES = {
    "perceiver.py": "b68017bf5fd20f0de77b2068a2fee2548eb0b6f24c938bf21fcf35f56aa7b6ef",
    "io_processors.py": "785a6051ab4c873208276883d90b4aa0689b23eabd281954f5cbb35c32cae5dd",
    "position_encoding.py": "09e7f90a6c6bca67cdd58ecb8c84cf3a726dae711213692ea426635bc493a4aa",
    "bytes_tokenizer.py": "aeff20cb5a2d7118e9b29c7ea6acba4e56c725db10a93902a64f11b8afa9b9c3",
}


def check_pins() -> None:
    """Assert that every package pinned in requirements-deepmind.txt is installed at that version."""
    bad = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"unpinned requirement line in {REQUIREMENTS}: {line!r}"
        name, want = m.groups()
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != want:
            bad.append(f"{name}: installed {have}, pinned {want}")
    assert not bad, "environment does not match the pins:\n  " + "\n  ".join(bad)


def copy_deepmind_files(repo: Path) -> None:
    """Copies perceiver/*.py at DEEPMIND_COMMIT out of a local git clone or mirror (no network)."""
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    target = DEEPMIND_DIR / "perceiver"
    target.mkdir(parents=True, exist_ok=True)
    for name in DEEPMIND_FILES:
        text = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{DEEPMIND_COMMIT}:perceiver/{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (target / name).write_bytes(text)
    print(f"copied DeepMind's perceiver/*.py at {DEEPMIND_COMMIT} to {target}")


def check_deepmind_files() -> None:
    """Asserts that third_party/deepmind_perceiver/perceiver/ holds the pinned files."""
    folder = DEEPMIND_DIR / "perceiver"
    for name, want in DEEPMIND_FILES.items():
        path = folder / name
        assert path.is_file(), (
            f"{path} is missing: run this script with --copy-from <clone of deepmind-research>"
        )
        have = hashlib.sha256(path.read_bytes()).hexdigest()
        assert have == want, f"{path}: sha256 {have}, expected {want} (commit {DEEPMIND_COMMIT})"


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--copy-from", type=Path, metavar="GIT_REPO",
                    help="copy DeepMind's files at the pinned commit from this local clone, then exit")
parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
parser.add_argument("--only", choices=["imagenet", "video"],
                    help="write only these fixtures (and not the README): for development")
ARGS = parser.parse_args()

check_pins()
if ARGS.copy_from is not None:
    copy_deepmind_files(ARGS.copy_from)
    check_deepmind_files()
    sys.exit(0)
check_deepmind_files()
sys.path.insert(0, str(DEEPMIND_DIR))

import haiku as hk  # noqa: E402
import jax  # noqa: E402

# float64 runs give the exact answer of these weights; the params are still created in float32.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from haiku._src.data_structures import FlatMapping  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from perceiver import bytes_tokenizer, io_processors, perceiver, position_encoding  # noqa: E402

TOKENIZER = bytes_tokenizer.BytesTokenizer()
VOCAB = TOKENIZER.vocab_size  # 262
MASK_ID = TOKENIZER.mask_token  # 3
PAD_ID = TOKENIZER.pad_token  # 0
SEED = 20261202

# The Colab's encoder_config / decoder_config, with tiny sizes. The decoder keeps the Colab's
# qk_channels=8*32, num_heads=8, v_channels=D_MODEL, no query residual and no final projection:
# transformers' PerceiverForMaskedLM hard-codes that decoder, so a checkpoint with any other
# decoder could not be converted for it.
MODELS = [
    {
        "name": "mlm_colab_constants",
        "covers": "what shapes cannot tell is the Colab's (8 heads everywhere, 1 block, query "
        "residual), so no config.json is needed; qk_channels=16 (2 a head) differs from "
        "d_latents=32 and d_model=48; v_channels=32=d_latents; 3 self-attends; widening 1/1. "
        "Pickled three ways (protocol 2, protocol 5, 2021's FlatMapping).",
        "d_model": 48,
        "max_seq_len": 80,
        "encoder": dict(
            num_self_attends_per_block=3, num_blocks=1, z_index_dim=24, num_z_channels=32,
            num_self_attend_heads=8, num_cross_attend_heads=8, qk_channels=16, v_channels=32,
            use_query_residual=True, cross_attend_widening_factor=1, self_attend_widening_factor=1,
        ),
        "transformers_config": None,
        "pickles": {"params.p2.pickle": 2, "params.p5.pickle": 5},
        "flatmapping": True,
    },
    {
        "name": "mlm_config_json",
        "covers": "heads (4 self, 1 cross), num_blocks=2 and use_query_residual=False differ from "
        "the Colab's, so the model needs the config.json beside it; qk_channels=None and "
        "v_channels=None (cross-attention qk=v=d_model=40, self-attention qk=v=d_latents=32); "
        "widening self 2 / cross 3; 2 self-attends shared by 2 blocks.",
        "d_model": 40,
        "max_seq_len": 64,
        "encoder": dict(
            num_self_attends_per_block=2, num_blocks=2, z_index_dim=16, num_z_channels=32,
            num_self_attend_heads=4, num_cross_attend_heads=1, qk_channels=None, v_channels=None,
            use_query_residual=False, cross_attend_widening_factor=3, self_attend_widening_factor=2,
        ),
        "transformers_config": dict(
            architectures=["PerceiverForMaskedLM"], model_type="perceiver",
            d_model=40, d_latents=32, num_latents=16, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=4, num_cross_attention_heads=1, qk_channels=None, v_channels=None,
            cross_attention_shape_for_attention="kv", self_attention_widening_factor=2,
            cross_attention_widening_factor=3, use_query_residual=False, hidden_act="gelu_new",
            vocab_size=VOCAB, max_position_embeddings=64, attention_probs_dropout_prob=0.1,
            initializer_range=0.02, layer_norm_eps=1e-12,
        ),
        "pickles": {"params.p3.pickle": 3},
        "flatmapping": False,
    },
]


def forward_fn(model):
    """The Colab's `apply_perceiver` with the model's sizes."""
    d_model, max_seq_len = model["d_model"], model["max_seq_len"]
    encoder_config = dict(model["encoder"])
    d_latents = encoder_config["num_z_channels"]
    decoder_config = dict(
        output_num_channels=d_latents,
        position_encoding_type="trainable",
        output_index_dims=max_seq_len,
        num_z_channels=d_latents,
        qk_channels=8 * 32,
        v_channels=d_model,
        num_heads=8,
        final_project=False,
        use_query_residual=False,
        trainable_position_encoding_kwargs=dict(num_channels=d_model),
    )

    def apply_perceiver(inputs, input_mask):
        assert inputs.shape[1] == max_seq_len
        embedding_layer = hk.Embed(vocab_size=VOCAB, embed_dim=d_model)
        embedded_inputs = embedding_layer(inputs)
        batch_size = embedded_inputs.shape[0]
        input_pos_encoding = position_encoding.TrainablePositionEncoding(
            index_dim=max_seq_len, num_channels=d_model)
        embedded_inputs = embedded_inputs + input_pos_encoding(batch_size)
        perceiver_mod = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_config),
            decoder=perceiver.BasicDecoder(**decoder_config))
        output_embeddings = perceiver_mod(
            embedded_inputs, is_training=False, input_mask=input_mask, query_mask=input_mask)
        return io_processors.EmbeddingDecoder(embedding_matrix=embedding_layer.embeddings)(output_embeddings)

    return hk.transform(apply_perceiver)


def scale_up(params, rng: np.random.Generator):
    """Init's params at a scale that makes the logits informative, every LayerNorm and bias non-trivial.

    `init` gives linear weights of std ~1/sqrt(fan_in) (kept; x1.5 for the attention queries and
    keys, `linear` / `linear_1` under `attention`, for sharper attention), zero biases and
    LayerNorm offsets and unit scales (which would hide a swapped scale/offset or a lost bias:
    drawn instead, biases N(0, 0.2^2), scales U(0.7, 1.3), offsets U(-0.3, 0.3)), the byte
    embedding at std 1 (x0.5: it is also the output projection) and position tables at std 0.02
    (input positions x25, latents and decoder queries x50, so that position matters).
    """
    out = {}
    for module in sorted(params):
        out[module] = {}
        for name in sorted(params[module]):
            value = np.asarray(params[module][name], dtype=np.float32)
            shape = value.shape
            if name == "b" or module == "embedding_decoder":
                std = 0.5 if module == "embedding_decoder" else 0.2
                value = rng.normal(0.0, std, shape)
            elif name == "scale":
                value = rng.uniform(0.7, 1.3, shape)
            elif name == "offset":
                value = rng.uniform(-0.3, 0.3, shape)
            elif name == "w":
                if re.search(r"/attention/linear(_1)?$", module):
                    value = value * 1.5
            elif name == "embeddings":
                value = value * 0.5
            elif name == "pos_embs":
                value = value * (25.0 if module == "trainable_position_encoding" else 50.0)
            else:
                raise AssertionError(f"unexpected parameter {module}/{name}")
            out[module][name] = np.asarray(value, dtype=np.float32)
    return out


class _FlatMappingPickle:
    """Pickles as 2021's Haiku did: `FlatMapping(dict)` (the current Haiku's class of that name)."""

    def __init__(self, mapping):
        self.mapping = mapping

    def __reduce__(self):
        return FlatMapping, (self.mapping,)


def as_flatmapping(params):
    return _FlatMappingPickle({m: _FlatMappingPickle(dict(p)) for m, p in params.items()})


def cases_for(model, rng: np.random.Generator):
    """`full`: one text of max_seq_len ids, no mask (input_mask=None, as a full batch is run);
    `padded`: two shorter texts padded to max_seq_len, with input_mask = query_mask."""
    n = model["max_seq_len"]

    def text(length):
        ids = rng.integers(6, VOCAB, size=length)
        ids[rng.random(length) < 0.15] = MASK_ID
        return ids

    full = text(n)[None, :]
    lengths = [n * 5 // 8, 7]
    rows = [text(k) for k in lengths]
    if model["name"] == "mlm_colab_constants":
        # The Colab's own example: " missing." (bytes 51..60) masked.
        colab = np.asarray(TOKENIZER.to_int("This is an incomplete sentence where some words are missing."))
        colab[51:60] = MASK_ID
        rows[0] = colab
    padded = np.full((len(rows), n), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), n), dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {
        "full": (full.astype(np.int64), np.ones_like(full, dtype=np.int64), False),
        "padded": (padded, mask, True),
    }


def run(transformed, params, ids, mask, use_mask, dtype):
    cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), params)
    out = transformed.apply(
        cast, jax.random.PRNGKey(1), inputs=jnp.asarray(ids),
        input_mask=jnp.asarray(mask) if use_mask else None)
    return np.asarray(out, dtype=np.float64)


def make(model, out_dir: Path, rng: np.random.Generator):
    transformed = forward_fn(model)
    n = model["max_seq_len"]
    init_params = transformed.init(
        jax.random.PRNGKey(SEED), jnp.zeros((1, n), jnp.int32), jnp.ones((1, n), jnp.int32))
    assert all(np.asarray(a).dtype == np.float32 for p in init_params.values() for a in p.values())
    params = scale_up(init_params, rng)

    target = out_dir / model["name"]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    pickles = {name: pickle.dumps(params, protocol=p) for name, p in model["pickles"].items()}
    if model["flatmapping"]:
        pickles["params.flatmapping.pickle"] = pickle.dumps(as_flatmapping(params), protocol=4)
    for name, data in pickles.items():
        (target / name).write_bytes(data)
        back = pickle.loads(data)
        assert sorted(back) == sorted(params), name
        for module in params:
            assert sorted(back[module]) == sorted(params[module]), (name, module)
            for p in params[module]:
                np.testing.assert_array_equal(np.asarray(back[module][p]), params[module][p])
    if model["transformers_config"] is not None:
        (target / "config.json").write_text(json.dumps(model["transformers_config"], indent=2) + "\n")

    tensors = {}
    stats = {"f32_vs_f64": 0.0}
    for case, (ids, mask, use_mask) in cases_for(model, rng).items():
        exact = run(transformed, params, ids, mask, use_mask, jnp.float64)
        single = run(transformed, params, ids, mask, use_mask, jnp.float32)
        real = mask.astype(bool)
        stats["f32_vs_f64"] = max(stats["f32_vs_f64"], float(np.abs(exact - single)[real].max()))
        if case == "full":
            stats["std"] = float(exact[0].std())
            probs = np.exp(exact[0] - exact[0].max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            stats["top1"] = float(probs.max(-1).mean())
        tensors[f"{case}.input_ids"] = ids
        tensors[f"{case}.input_mask"] = mask
        tensors[f"{case}.logits"] = exact.astype(np.float32)
    # The logits are those of DeepMind's float32 code to well within the Rust tests' 1e-4.
    assert stats["f32_vs_f64"] < 2.5e-5, stats
    save_file(tensors, str(target / "cases.safetensors"))
    stats["params"] = int(sum(a.size for p in params.values() for a in p.values()))
    stats["modules"] = len(params)
    return stats


# ------------------------------------------------------------------------------------------------
# Optical flow: DeepMind's optical_flow Colab (`optical_flow_checkpoint.pystate`).

# The Colab's constants.
FLOW_SCALE_FACTOR = 20
COLAB_TRAIN_SIZE = (368, 496)
FLOW_NAME = "flow"
# The encoder's sizes (tiny): what the parameters' shapes pin. qk_channels is set (16) where the
# Colab leaves it unset (the cross-attention would take the input's 322 channels) to keep the
# pickle small; v_channels unset gives 16 everywhere. Widening 3 / 2 where the Colab has 1 / 1.
FLOW_ENCODER = dict(
    num_self_attends_per_block=2, z_index_dim=12, num_z_channels=16, qk_channels=16,
    cross_attend_widening_factor=3, self_attend_widening_factor=2,
)
# What no shape tells, two ways. `colab`: the Colab's heads (16 self, 1 cross), one block, the
# query residual, TRAIN_SIZE (368, 496): what a reader must assume for the released file, so the
# fixture runs DeepMind's model on a whole 368x496 tile (outputs kept at FLOW_SAMPLES pixels).
# `config_json`: heads 4 / 2, two blocks, no query residual and TRAIN_SIZE (48, 56), told by the
# transformers config.json beside the pickle. The parameters are the same for both: none of
# these settings shapes a parameter.
FLOW_RUNS = {
    "colab": dict(train_size=COLAB_TRAIN_SIZE, num_self_attend_heads=16, num_cross_attend_heads=1,
                  num_blocks=1, use_query_residual=True),
    "config_json": dict(train_size=(48, 56), num_self_attend_heads=4, num_cross_attend_heads=2,
                        num_blocks=2, use_query_residual=False),
}
FLOW_SAMPLES = 4096
# The `colab` frames are a small random image scaled up by this (nearest neighbour).
FLOW_COLAB_UPSCALE = 8


def flow_transformers_config(run):
    s = FLOW_RUNS[run]
    e = FLOW_ENCODER
    return dict(
        architectures=["PerceiverForOpticalFlow"], model_type="perceiver",
        d_model=322, d_latents=e["num_z_channels"], num_latents=e["z_index_dim"],
        num_blocks=s["num_blocks"], num_self_attends_per_block=e["num_self_attends_per_block"],
        num_self_attention_heads=s["num_self_attend_heads"],
        num_cross_attention_heads=s["num_cross_attend_heads"],
        qk_channels=e["qk_channels"], v_channels=None, cross_attention_shape_for_attention="kv",
        self_attention_widening_factor=e["self_attend_widening_factor"],
        cross_attention_widening_factor=e["cross_attend_widening_factor"],
        use_query_residual=s["use_query_residual"], hidden_act="gelu_new",
        train_size=list(s["train_size"]), attention_probs_dropout_prob=0.1,
        initializer_range=0.02, layer_norm_eps=1e-12,
    )


def flow_forward_fn(run):
    """The Colab's `optical_flow` with FLOW_ENCODER's sizes and the run's settings; returns the
    model's output and the Colab's (that times FLOW_SCALE_FACTOR)."""
    s = FLOW_RUNS[run]
    train_size = s["train_size"]

    def optical_flow(images):
        input_preprocessor = io_processors.ImagePreprocessor(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(
                num_bands=64, max_resolution=train_size, sine_only=False, concat_pos=True),
            n_extra_pos_mlp=0, prep_type="patches", spatial_downsample=1,
            conv_after_patching=True, temporal_downsample=2)
        encoder = perceiver.PerceiverEncoder(
            **FLOW_ENCODER,
            num_blocks=s["num_blocks"],
            num_cross_attend_heads=s["num_cross_attend_heads"],
            num_self_attend_heads=s["num_self_attend_heads"],
            use_query_residual=s["use_query_residual"],
            dropout_prob=0.0, z_pos_enc_init_scale=0.02, cross_attention_shape_for_attn="kv",
            name="perceiver_encoder")
        decoder = perceiver.FlowDecoder(
            train_size, rescale_factor=100.0, use_query_residual=False, output_num_channels=2,
            output_w_init=jnp.zeros, position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(
                concat_pos=True, max_resolution=train_size, num_bands=64, sine_only=False))
        model = perceiver.Perceiver(
            input_preprocessor=input_preprocessor, encoder=encoder, decoder=decoder,
            output_postprocessor=None)
        output = model(io_processors.patches_for_flow(images), is_training=False)
        return output, output * FLOW_SCALE_FACTOR

    return hk.transform(optical_flow)


def scale_up_flow(params, rng: np.random.Generator):
    """As `scale_up`, for the flow model: init's linear weights kept (attention queries and keys
    x1.5), biases N(0, 0.2^2), LayerNorm scales U(0.7, 1.3) and offsets U(-0.3, 0.3), the latents
    x50; the final layer, which the Colab initialises to zeros, drawn N(0, (3/sqrt(fan_in))^2) so
    that the flow is not 0. Every value is then rounded to bfloat16's precision (still pickled as
    float32, as DeepMind's are) so that git stores the ~1 MB pickle compressed."""
    import ml_dtypes

    out = {}
    for module in sorted(params):
        out[module] = {}
        for name in sorted(params[module]):
            value = np.asarray(params[module][name], dtype=np.float32)
            shape = value.shape
            if name == "b":
                value = rng.normal(0.0, 0.2, shape)
            elif name == "scale":
                value = rng.uniform(0.7, 1.3, shape)
            elif name == "offset":
                value = rng.uniform(-0.3, 0.3, shape)
            elif name == "w" and module.endswith("basic_decoder/output"):
                value = rng.normal(0.0, 3.0 / np.sqrt(shape[0]), shape)
            elif name == "w":
                if re.search(r"/attention/linear(_1)?$", module):
                    value = value * 1.5
            elif name == "pos_embs":
                value = value * 50.0
            else:
                raise AssertionError(f"unexpected parameter {module}/{name}")
            value = np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16)
            out[module][name] = value.astype(np.float32)
    return out


def flow_frames(rng: np.random.Generator, height: int, width: int):
    """Two uint8 RGB frames [2, H, W, 3]: random pixels, the second the first moved 2 rows down
    and 3 columns right (new random pixels where it uncovers)."""
    first = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    second = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    second[2:, 3:] = first[:-2, :-3]
    return np.stack([first, second])


def run_flow(transformed, params, frames_u8, dtype):
    """The Colab's `normalize` (`im / 255 * 2 - 1`, float64), then DeepMind's apply on the tile as
    `[1, 2, H, W, 3]`; both outputs as float64 `[H, W, 2]`. float32 runs as the Colab runs, with
    jax_enable_x64 off: with it on, the Fourier features (`jnp.linspace`) would be float64."""
    images = frames_u8.astype(np.float64) / 255.0 * 2 - 1
    with jax.enable_x64(dtype == jnp.float64):
        cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), params)
        raw, flow = transformed.apply(cast, jax.random.PRNGKey(42), jnp.asarray(images[None], dtype=dtype))
        assert raw.dtype == dtype, raw.dtype
    return np.asarray(raw, np.float64)[0], np.asarray(flow, np.float64)[0]


def make_flow(out_dir: Path, rng: np.random.Generator):
    shapes = None
    for run, settings in FLOW_RUNS.items():
        h, w = settings["train_size"]
        init = flow_forward_fn(run).init(
            jax.random.PRNGKey(SEED), jnp.zeros((1, 2, h, w, 3), jnp.float32))
        layout = {m: {p: np.shape(a) for p, a in ps.items()} for m, ps in init.items()}
        assert shapes is None or layout == shapes, "the runs' parameters differ in shape"
        shapes = layout
        if run == "colab":
            init_params = init
    # Under jax_enable_x64 the Fourier features are float64, and so are the parameters Haiku
    # creates after them; the Colab's (x64 off) are float32, as are these once scaled.
    params = scale_up_flow(init_params, rng)

    target = out_dir / FLOW_NAME
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    # Bare params, as the Colab reads optical_flow_checkpoint.pystate (`params =
    # pickle.loads(...)`, straight into `apply`), in 2021's FlatMapping layout.
    data = pickle.dumps(as_flatmapping(params), protocol=4)
    (target / "params.pystate").write_bytes(data)
    back = pickle.loads(data)
    assert sorted(back) == sorted(params)
    for module in params:
        for p in params[module]:
            np.testing.assert_array_equal(np.asarray(back[module][p]), params[module][p])
    (target / "config.json").write_text(json.dumps(flow_transformers_config("config_json"), indent=2) + "\n")

    tensors = {}
    stats = {}
    for run, settings in FLOW_RUNS.items():
        h, w = settings["train_size"]
        transformed = flow_forward_fn(run)
        if run == "colab":
            k = FLOW_COLAB_UPSCALE
            assert h % k == 0 and w % k == 0
            small = flow_frames(rng, h // k, w // k)
            frames = small.repeat(k, axis=1).repeat(k, axis=2)
            tensors[f"{run}.frames_small"] = small
            pixels = np.sort(rng.choice(h * w, size=FLOW_SAMPLES, replace=False)).astype(np.int64)
            tensors[f"{run}.pixels"] = pixels
        else:
            frames = flow_frames(rng, h, w)
            tensors[f"{run}.frames"] = frames
            pixels = np.arange(h * w, dtype=np.int64)
        raw, flow = run_flow(transformed, params, frames, jnp.float64)
        raw32, flow32 = run_flow(transformed, params, frames, jnp.float32)
        scale = float(np.abs(raw).max())
        stats[run] = dict(
            raw_max=scale, raw_std=float(raw.std()), flow_max=float(np.abs(flow).max()),
            f32_vs_f64=float(np.abs(raw - raw32).max()) / scale,
            scale_check=float(np.abs(flow - raw * FLOW_SCALE_FACTOR).max()),
        )
        take = lambda a: a.reshape(h * w, 2)[pixels].astype(np.float32)
        tensors[f"{run}.output"] = take(raw)
        tensors[f"{run}.flow"] = take(flow)
        # DeepMind's own float32 code, relative to its float64 run: ~6e-6 on the 48x56 tile, ~1.4e-4
        # on the 368x496 one (float32 Fourier phases reach ~780 rad there, each off by up to
        # ~3e-5); the Rust tests' tolerances are set from these.
        assert stats[run]["f32_vs_f64"] < 2e-4, stats
    save_file(tensors, str(target / "cases.safetensors"))
    stats["params"] = int(sum(a.size for p in params.values() for a in p.values()))
    stats["modules"] = len(params)
    return stats


# ------------------------------------------------------------------------------------------------
# ImageNet: DeepMind's imagenet_classification Colab (`imagenet_*.pystate`).

# The Colab's `normalize`: ImageNet's mean and std on the 0..255 scale.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IMAGENET_LABELS = 7
# The encoder's sizes (tiny, what the shapes pin): qk_channels / v_channels set to 16 where the
# Colab leaves them unset (the cross-attention's would be the input's 512 / 261 / 322 channels),
# to keep the pickles small; self-attention widening 2 where the Colab has 1.
IMAGENET_ENCODER = dict(
    num_self_attends_per_block=2, z_index_dim=8, num_z_channels=16, qk_channels=16, v_channels=16,
    cross_attend_widening_factor=1, self_attend_widening_factor=2, cross_attention_shape_for_attn="kv",
    dropout_prob=0, z_pos_enc_init_scale=0.02,
)
# What no shape tells, as the Colab sets it (its three configs agree on the encoder).
IMAGENET_COLAB = dict(num_blocks=8, num_cross_attend_heads=1, num_self_attend_heads=8, use_query_residual=True)
# `config_json` (Fourier model only): heads, blocks and both query residuals unlike the Colab's,
# told by a transformers config.json beside the pystate.
IMAGENET_CONFIG_JSON = dict(num_blocks=2, num_cross_attend_heads=2, num_self_attend_heads=4,
                            use_query_residual=False)

# Per model: the Colab's preprocessor config, its decoder's query residual, the image sizes of its
# cases (the learned model takes only its own size) and the runs made.
IMAGENET_MODELS = {
    "imagenet_learned": dict(
        architecture="PerceiverForImageClassificationLearned",
        preprocessor=dict(
            position_encoding_type="trainable",
            trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=256),
            prep_type="conv1x1", project_pos_dim=256, num_channels=256, spatial_downsample=1,
            concat_or_add_pos="concat"),
        decoder_query_residual=False, image_size=12, sizes=[(12, 12), (12, 12)],
        runs=["colab"]),
    "imagenet_fourier": dict(
        architecture="PerceiverForImageClassificationFourier",
        preprocessor=dict(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(
                concat_pos=True, max_resolution=(224, 224), num_bands=64, sine_only=False),
            prep_type="pixels", spatial_downsample=1),
        decoder_query_residual=True, image_size=None, sizes=[(20, 16), (15, 17)],
        runs=["colab", "config_json"]),
    "imagenet_conv": dict(
        architecture="PerceiverForImageClassificationConvProcessing",
        preprocessor=dict(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(
                concat_pos=True, max_resolution=(56, 56), num_bands=64, sine_only=False),
            prep_type="conv"),
        decoder_query_residual=True, image_size=None, sizes=[(32, 32), (29, 23)],
        runs=["colab"]),
}


def imagenet_settings(name, run):
    """What no shape tells for `run`: the Colab's, or the config.json's."""
    model = IMAGENET_MODELS[name]
    if run == "colab":
        return dict(IMAGENET_COLAB, decoder_query_residual=model["decoder_query_residual"])
    return dict(IMAGENET_CONFIG_JSON, decoder_query_residual=False)


def imagenet_forward_fn(name, run):
    """The Colab's `imagenet_classifier` (hk.transform_with_state) with IMAGENET_ENCODER's sizes."""
    model = IMAGENET_MODELS[name]
    s = imagenet_settings(name, run)
    d_latents = IMAGENET_ENCODER["num_z_channels"]

    def imagenet_classifier(images, is_training):
        input_preprocessor = io_processors.ImagePreprocessor(**model["preprocessor"])
        encoder = perceiver.PerceiverEncoder(
            **IMAGENET_ENCODER, num_blocks=s["num_blocks"],
            num_cross_attend_heads=s["num_cross_attend_heads"],
            num_self_attend_heads=s["num_self_attend_heads"],
            use_query_residual=s["use_query_residual"])
        decoder = perceiver.ClassificationDecoder(
            IMAGENET_LABELS, num_z_channels=d_latents, position_encoding_type="trainable",
            trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=d_latents),
            use_query_residual=s["decoder_query_residual"])
        model_ = perceiver.Perceiver(encoder=encoder, decoder=decoder, input_preprocessor=input_preprocessor)
        return model_(images, is_training=is_training)

    return hk.transform_with_state(imagenet_classifier)


def imagenet_transformers_config(name, run):
    s = imagenet_settings(name, run)
    e = IMAGENET_ENCODER
    config = dict(
        architectures=[IMAGENET_MODELS[name]["architecture"]], model_type="perceiver",
        d_latents=e["num_z_channels"], num_latents=e["z_index_dim"], num_blocks=s["num_blocks"],
        num_self_attends_per_block=e["num_self_attends_per_block"],
        num_self_attention_heads=s["num_self_attend_heads"],
        num_cross_attention_heads=s["num_cross_attend_heads"],
        qk_channels=e["qk_channels"], v_channels=e["v_channels"],
        cross_attention_shape_for_attention="kv",
        self_attention_widening_factor=e["self_attend_widening_factor"],
        cross_attention_widening_factor=e["cross_attend_widening_factor"],
        use_query_residual=s["use_query_residual"], hidden_act="gelu_new",
        num_labels=IMAGENET_LABELS, attention_probs_dropout_prob=0.1, initializer_range=0.02,
        layer_norm_eps=1e-12,
        # This library's key for DeepMind's decoder (transformers' always adds the query back).
        decoder_use_query_residual=s["decoder_query_residual"],
    )
    return config


def scale_up_imagenet(params, state, rng: np.random.Generator):
    """As `scale_up_flow`: init's linear and convolution weights kept (attention queries and keys
    x1.5), biases N(0, 0.2^2), LayerNorm and BatchNorm scales U(0.7, 1.3) and offsets
    U(-0.3, 0.3), position tables (latents, the decoder's query, the learned model's pixel
    positions) x50, the final layer N(0, 1/fan_in) (logits of std ~2: larger ones would carry
    more of float32's rounding of the Fourier phases, up to ~350 rad at 224's top band); the
    BatchNorm's moving mean N(0, 0.3^2) and variance U(0.5, 2) (`hidden` as `average`, counters
    1234). Every float rounded to bfloat16's precision, kept as float32 (git stores the pickles
    compressed)."""
    import ml_dtypes

    def rounded(value):
        return np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)

    out = {}
    for module in sorted(params):
        out[module] = {}
        for name in sorted(params[module]):
            value = np.asarray(params[module][name], dtype=np.float32)
            shape = value.shape
            if name == "b":
                value = rng.normal(0.0, 0.2, shape)
            elif name == "scale":
                value = rng.uniform(0.7, 1.3, shape)
            elif name == "offset":
                value = rng.uniform(-0.3, 0.3, shape)
            elif name == "w" and module.endswith("basic_decoder/output"):
                value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
            elif name == "w":
                if re.search(r"/attention/linear(_1)?$", module):
                    value = value * 1.5
            elif name == "pos_embs":
                value = value * 50.0
            else:
                raise AssertionError(f"unexpected parameter {module}/{name}")
            out[module][name] = rounded(value)
    new_state = {}
    for module in sorted(state):
        shape = np.shape(state[module]["average"])
        if module.endswith("mean_ema"):
            average = rounded(rng.normal(0.0, 0.3, shape))
        else:
            assert module.endswith("var_ema"), module
            average = rounded(rng.uniform(0.5, 2.0, shape))
        new_state[module] = dict(
            average=average, hidden=average.copy(), counter=np.asarray(1234, dtype=np.int32))
    return out, new_state


def imagenet_images(rng: np.random.Generator, height: int, width: int):
    """A uint8 RGB image [H, W, 3]: smooth colour gradients plus noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([
        128 + 100 * np.sin(x / width * np.pi * rng.uniform(1, 3) + rng.uniform(0, 6)),
        128 + 100 * np.cos(y / height * np.pi * rng.uniform(1, 3) + rng.uniform(0, 6)),
        128 + 80 * np.sin((x + y) / (width + height) * np.pi * 4),
    ], axis=-1)
    noisy = base + rng.normal(0, 25, base.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def run_imagenet(transformed, params, state, pixels, dtype):
    """DeepMind's apply (`is_training=False`) on normalised pixels `[B, H, W, 3]`: the logits as
    float64 `[B, labels]`. float32 runs with jax_enable_x64 off, as the Colab runs."""
    with jax.enable_x64(dtype == jnp.float64):
        cast = lambda tree: jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else jnp.asarray(a),
            tree)
        logits, _ = transformed.apply(
            cast(params), cast(state), jax.random.PRNGKey(42), jnp.asarray(pixels, dtype=dtype), False)
        assert logits.dtype == dtype, logits.dtype
    return np.asarray(logits, np.float64)


def make_imagenet(out_dir: Path, rng: np.random.Generator):
    all_stats = {}
    for name, model in IMAGENET_MODELS.items():
        transformed = imagenet_forward_fn(name, "colab")
        h, w = model["sizes"][0]
        params, state = transformed.init(
            jax.random.PRNGKey(SEED), jnp.zeros((1, h, w, 3), jnp.float32), True)
        params, state = scale_up_imagenet(params, state, rng)
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        # {"params", "state"} as the Colab reads `imagenet_*.pystate` (`ckpt['params']`,
        # `ckpt['state']`), each in 2021's FlatMapping layout (protocol 4).
        checkpoint = {"params": as_flatmapping(params), "state": as_flatmapping(state)}
        data = pickle.dumps(checkpoint, protocol=4)
        (target / "params.pystate").write_bytes(data)
        back = pickle.loads(data)
        for key, tree in [("params", params), ("state", state)]:
            assert sorted(back[key]) == sorted(tree)
            for module in tree:
                for p in tree[module]:
                    np.testing.assert_array_equal(np.asarray(back[key][module][p]), tree[module][p])
        if "config_json" in model["runs"]:
            (target / "config.json").write_text(
                json.dumps(imagenet_transformers_config(name, "config_json"), indent=2) + "\n")
        tensors = {}
        stats = {"params": int(sum(np.size(a) for p in params.values() for a in p.values())),
                 "modules": len(params), "state": len(state)}
        # Case 0 is two images, case 1 one (of another size where the model takes any); the
        # pixels are the Colab's `normalize` of uint8 images, rounded to float32.
        cases = []
        for c, (h, w) in enumerate(model["sizes"]):
            images = np.stack([imagenet_images(rng, h, w) for _ in range(2 if c == 0 else 1)])
            cases.append(((images.astype(np.float64) - np.array(MEAN_RGB)) / np.array(STDDEV_RGB)).astype(np.float32))
        for run in model["runs"]:
            transformed = imagenet_forward_fn(name, run)
            worst_f32 = 0.0
            largest = 0.0
            for c, pixels in enumerate(cases):
                exact = run_imagenet(transformed, params, state, pixels, jnp.float64)
                single = run_imagenet(transformed, params, state, pixels, jnp.float32)
                worst_f32 = max(worst_f32, float(np.abs(exact - single).max()))
                largest = max(largest, float(np.abs(exact).max()))
                if run == "colab":
                    tensors[f"case{c}.pixels"] = pixels
                tensors[f"{run}.case{c}.logits"] = exact.astype(np.float32)
            stats[run] = dict(largest=largest, f32_vs_f64=worst_f32,
                              std=float(np.std([tensors[k] for k in tensors if k.startswith(run + ".")][0])))
            # DeepMind's own float32 code is this close to its float64 run; the Rust tests' 1e-4
            # holds with room.
            assert worst_f32 < 5e-5, (name, run, stats)
        save_file(tensors, str(target / "cases.safetensors"))
        all_stats[name] = stats
        print(name, stats)
    return all_stats


# ------------------------------------------------------------------------------------------------
# Video autoencoding: DeepMind's video_autoencoding Colab (`video_autoencoding_checkpoint.pystate`).

VIDEO_NAME = "video"
# Sizes unlike the Colab's (16 frames of 224x224, 1920 audio samples a frame, 16 a patch, 700
# labels), so the model needs its config.json; none of them shapes a parameter except the
# samples per patch and the labels.
VIDEO = dict(num_frames=4, height=16, width=16, img_sz=6, audio_samples_per_frame=24,
             samples_per_patch=8, num_labels=5, output_num_channels=12, label_channels=20)
VIDEO_ENCODER = dict(
    num_self_attends_per_block=2, num_blocks=2, z_index_dim=8, num_z_channels=16, qk_channels=16,
    num_cross_attend_heads=2, num_self_attend_heads=4, cross_attend_widening_factor=2,
    self_attend_widening_factor=1, dropout_prob=0.0, z_pos_enc_init_scale=0.02,
    cross_attention_shape_for_attn="kv",
)
# The subsamplings recorded: every query at once, and the Colab's chunk 1 of 4.
VIDEO_CHUNKS = {"all": (0, 1), "chunk1of4": (1, 4)}


def video_forward_fn():
    """The Colab's `video_autoencoder` (hk.transform_with_state) with VIDEO's sizes."""
    v = VIDEO
    n_audio_samples = v["num_frames"] * v["audio_samples_per_frame"]
    max_resolution = (v["num_frames"], v["img_sz"], v["img_sz"])

    def video_autoencoder(images, audio, subsampling):
        input_preprocessor = io_processors.MultimodalPreprocessor(
            min_padding_size=4,
            modalities={
                "audio": io_processors.AudioPreprocessor(
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=dict(
                        num_bands=192, max_resolution=(n_audio_samples,), sine_only=False, concat_pos=True),
                    n_extra_pos_mlp=0, prep_type="patches", samples_per_patch=v["samples_per_patch"]),
                "image": io_processors.ImagePreprocessor(
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=dict(
                        num_bands=32, max_resolution=max_resolution, sine_only=False, concat_pos=True),
                    n_extra_pos_mlp=0, prep_type="patches", spatial_downsample=4, temporal_downsample=1),
                "label": io_processors.OneHotPreprocessor(),
            },
            mask_probs={"image": 0.0, "audio": 0.0, "label": 1.0},
        )
        output_postprocessor = io_processors.MultimodalPostprocessor(modalities={
            "audio": io_processors.AudioPostprocessor(samples_per_patch=v["samples_per_patch"]),
            "image": io_processors.ProjectionPostprocessor(num_outputs=3),
            "label": io_processors.ClassificationPostprocessor(num_classes=v["num_labels"]),
        })
        encoder = perceiver.PerceiverEncoder(**VIDEO_ENCODER, name="encoder")
        d_latents = VIDEO_ENCODER["num_z_channels"]
        subsampled_index_dims = {
            "audio": subsampling["audio"].shape[0], "image": subsampling["image"].shape[0], "label": 1}
        image_decoder = perceiver.BasicVideoAutoencodingDecoder(
            concat_preprocessed_input=False, subsampled_index_dims=subsampling["image"],
            output_shape=images.shape[:4], num_z_channels=d_latents,
            output_num_channels=v["output_num_channels"], use_query_residual=False,
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(
                num_bands=32, max_resolution=max_resolution, sine_only=False, concat_pos=True))
        decoder = perceiver.MultimodalDecoder(
            concat_preprocessed_input=False, subsampled_index_dims=subsampled_index_dims,
            modalities={
                "audio": perceiver.BasicDecoder(
                    concat_preprocessed_input=False, subsampled_index_dims=subsampling["audio"],
                    output_index_dims=(n_audio_samples // v["samples_per_patch"],),
                    num_z_channels=d_latents, output_num_channels=v["output_num_channels"],
                    use_query_residual=False, position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=dict(
                        num_bands=192, max_resolution=(n_audio_samples,), sine_only=False, concat_pos=True)),
                "image": image_decoder,
                "label": perceiver.ClassificationDecoder(
                    concat_preprocessed_input=False, num_classes=v["num_labels"], num_z_channels=d_latents,
                    use_query_residual=False, position_encoding_type="trainable",
                    trainable_position_encoding_kwargs=dict(num_channels=v["label_channels"], init_scale=0.02)),
            },
            num_outputs=None, output_num_channels=v["output_num_channels"], use_query_residual=False)
        model = perceiver.Perceiver(
            input_preprocessor=input_preprocessor, encoder=encoder, decoder=decoder,
            output_postprocessor=output_postprocessor)
        return model({"image": images, "audio": audio, "label": np.zeros((images.shape[0], v["num_labels"]))},
                     is_training=False, subsampled_output_points=subsampling)

    return hk.transform_with_state(video_autoencoder)


def video_transformers_config():
    v, e = VIDEO, VIDEO_ENCODER
    return dict(
        architectures=["PerceiverForMultimodalAutoencoding"], model_type="perceiver",
        d_latents=e["num_z_channels"], num_latents=e["z_index_dim"], num_blocks=e["num_blocks"],
        num_self_attends_per_block=e["num_self_attends_per_block"],
        num_self_attention_heads=e["num_self_attend_heads"],
        num_cross_attention_heads=e["num_cross_attend_heads"], qk_channels=e["qk_channels"],
        v_channels=None, cross_attention_shape_for_attention="kv",
        self_attention_widening_factor=e["self_attend_widening_factor"],
        cross_attention_widening_factor=e["cross_attend_widening_factor"], use_query_residual=True,
        hidden_act="gelu_new", num_frames=v["num_frames"], image_size=v["img_sz"],
        audio_samples_per_frame=v["audio_samples_per_frame"], samples_per_patch=v["samples_per_patch"],
        output_shape=[1, v["num_frames"], v["height"], v["width"]],
        output_num_channels=v["output_num_channels"], _label_trainable_num_channels=v["label_channels"],
        num_labels=v["num_labels"], attention_probs_dropout_prob=0.1, initializer_range=0.02,
        layer_norm_eps=1e-12,
    )


def scale_up_video(params, rng: np.random.Generator):
    """As `scale_up_flow`: linear weights kept (attention queries and keys x1.5), biases
    N(0, 0.2^2), LayerNorm scales U(0.7, 1.3) and offsets U(-0.3, 0.3), the latents, paddings,
    mask tokens and the label query x50; then every value rounded to float16 (kept so in the
    pickle: the decoder's 387-wide MLP alone is 300k values, and float16 halves the file;
    DeepMind's file is float32, which the reader takes the same way)."""
    out = {}
    for module in sorted(params):
        out[module] = {}
        for name in sorted(params[module]):
            value = np.asarray(params[module][name], dtype=np.float32)
            shape = value.shape
            if name == "b":
                value = rng.normal(0.0, 0.2, shape)
            elif name == "scale":
                value = rng.uniform(0.7, 1.3, shape)
            elif name == "offset":
                value = rng.uniform(-0.3, 0.3, shape)
            elif name == "w":
                if re.search(r"/attention/linear(_1)?$", module):
                    value = value * 1.5
            elif name == "pos_embs":
                value = value * 50.0
            else:
                raise AssertionError(f"unexpected parameter {module}/{name}")
            out[module][name] = np.asarray(value, dtype=np.float32).astype(np.float16)
    return out


def video_inputs(rng: np.random.Generator):
    """Frames in [0, 1] `[1, T, H, W, 3]` (smooth, moving, noisy) and mono audio in [-1, 1]
    `[1, samples, 1]`, both float32 (the Colab's `load_video` / 2**15 scaling)."""
    v = VIDEO
    t, y, x = np.mgrid[0:v["num_frames"], 0:v["height"], 0:v["width"]].astype(np.float64)
    frames = np.stack([
        0.5 + 0.4 * np.sin((x + 2 * t) / v["width"] * 2 * np.pi),
        0.5 + 0.4 * np.cos((y - t) / v["height"] * 2 * np.pi),
        0.5 + 0.3 * np.sin((x + y) / 8.0),
    ], axis=-1) + rng.normal(0, 0.05, (v["num_frames"], v["height"], v["width"], 3))
    frames = np.clip(frames, 0, 1)
    n = v["num_frames"] * v["audio_samples_per_frame"]
    audio = 0.6 * np.sin(np.arange(n) * 0.3) + rng.normal(0, 0.1, n)
    return (frames[None].astype(np.float32), np.clip(audio, -1, 1)[None, :, None].astype(np.float32))


def make_video(out_dir: Path, rng: np.random.Generator):
    v = VIDEO
    transformed = video_forward_fn()
    frames, audio = video_inputs(rng)
    n_pixels = v["num_frames"] * v["height"] * v["width"]
    n_patches = v["num_frames"] * v["audio_samples_per_frame"] // v["samples_per_patch"]

    def subsampling(chunk):
        index, chunks = VIDEO_CHUNKS[chunk]
        return {
            "image": jnp.arange(n_pixels // chunks * index, n_pixels // chunks * (index + 1)),
            "audio": jnp.arange(n_patches // chunks * index, n_patches // chunks * (index + 1)),
            "label": None,
        }

    params, state = transformed.init(jax.random.PRNGKey(SEED), frames, audio, subsampling("all"))
    assert not state, state
    params = scale_up_video(params, rng)
    target = out_dir / VIDEO_NAME
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    # Bare params, as the Colab reads video_autoencoding_checkpoint.pystate (`params =
    # pickle.loads(...)`, `state = {}`), in 2021's FlatMapping layout.
    data = pickle.dumps(as_flatmapping(params), protocol=4)
    (target / "params.pystate").write_bytes(data)
    back = pickle.loads(data)
    for module in params:
        for p in params[module]:
            np.testing.assert_array_equal(np.asarray(back[module][p]), params[module][p])
    (target / "config.json").write_text(json.dumps(video_transformers_config(), indent=2) + "\n")
    tensors = {"frames": frames[0], "audio": audio[0, :, 0]}
    stats = {"params": int(sum(np.size(a) for p in params.values() for a in p.values())),
             "modules": len(params)}
    for chunk in VIDEO_CHUNKS:
        sub = subsampling(chunk)
        outputs = {}
        for dtype in (jnp.float64, jnp.float32):
            with jax.enable_x64(dtype == jnp.float64):
                cast = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64), dtype=dtype), params)
                out, _ = transformed.apply(
                    cast, {}, jax.random.PRNGKey(42), jnp.asarray(frames, dtype), jnp.asarray(audio, dtype), sub)
                outputs[dtype] = {k: np.asarray(o, np.float64)[0] for k, o in out.items()}
        exact, single = outputs[jnp.float64], outputs[jnp.float32]
        for k in ("audio", "image", "label"):
            tensors[f"{chunk}.{k}"] = exact[k].astype(np.float32)
            stats[f"{chunk}.{k}"] = dict(largest=float(np.abs(exact[k]).max()),
                                         f32_vs_f64=float(np.abs(exact[k] - single[k]).max()))
        tensors[f"{chunk}.image_points"] = np.asarray(sub["image"], np.int64)
        tensors[f"{chunk}.audio_points"] = np.asarray(sub["audio"], np.int64)
    save_file(tensors, str(target / "cases.safetensors"))
    print(VIDEO_NAME, stats)
    return stats


def write_readme(out_dir: Path, all_stats, flow_stats, imagenet_stats, video_stats) -> None:
    rows = []
    for model, stats in zip(MODELS, all_stats):
        enc = ", ".join(f"{k}={v}" for k, v in model["encoder"].items())
        rows.append(
            f"| `{model['name']}` | {model['covers']} | d_model={model['d_model']}, "
            f"max_seq_len={model['max_seq_len']}, {enc} | {stats['params']} | {stats['std']:.2f} | "
            f"{stats['top1']:.3f} | {stats['f32_vs_f64']:.1e} |"
        )
    table = "\n".join(rows)
    enc_flow = ", ".join(f"{k}={v}" for k, v in FLOW_ENCODER.items())
    flow_table = "\n".join(
        f"| `{run}` | {flow_stats[run]['raw_max']:.3f} | {flow_stats[run]['raw_std']:.3f} | "
        f"{flow_stats[run]['flow_max']:.2f} | {flow_stats[run]['f32_vs_f64']:.1e} |"
        for run in FLOW_RUNS
    )
    imagenet_table = "\n".join(
        f"| `{name}` | {run} | {stats['params']} | {stats['state']} | {stats[run]['largest']:.2f} | "
        f"{stats[run]['std']:.2f} | {stats[run]['f32_vs_f64']:.1e} |"
        for name, stats in imagenet_stats.items()
        for run in IMAGENET_MODELS[name]["runs"]
    )
    enc_imagenet = ", ".join(f"{k}={v}" for k, v in IMAGENET_ENCODER.items())
    enc_video = ", ".join(f"{k}={v}" for k, v in VIDEO_ENCODER.items())
    video_sizes = ", ".join(f"{k}={v}" for k, v in VIDEO.items())
    video_table = "\n".join(
        f"| {chunk} | {k} | {video_stats[f'{chunk}.{k}']['largest']:.2f} | "
        f"{video_stats[f'{chunk}.{k}']['f32_vs_f64']:.1e} |"
        for chunk in VIDEO_CHUNKS for k in ("audio", "image", "label")
    )
    (out_dir / "README.md").write_text(f"""# DeepMind fixtures (DeepMind's JAX/Haiku code as the reference)

Generated by `scripts/make_deepmind_fixtures.py` with the environment pinned in
`scripts/requirements-deepmind.txt` (jax 0.10.2, dm-haiku 0.0.17, CPU) and DeepMind's
`perceiver/*.py` at google-deepmind/deepmind-research commit `{DEEPMIND_COMMIT}` (checked by
SHA-256; kept in the ignored `third_party/deepmind_perceiver/`). The script's docstring says how
to run it. The output is deterministic (seeded). Do not edit these files by hand.

Each `mlm_*` directory is one tiny byte-level masked language model built as DeepMind's
masked_language_modelling Colab builds it (`apply_perceiver`), its parameters from
`hk.transform(...).init` (then scaled, see `scale_up` in the script), and:

* `params.p<N>.pickle`: `pickle.dumps(params, protocol=N)` (2 and 5 for the first model, 3 for
  the second), params as the
  current Haiku returns them (a dict of dicts) with NumPy float32 arrays (2021's `DeviceArray`s
  pickled as NumPy arrays; a current `jax.Array` would pickle through a JAX global instead).
* `params.flatmapping.pickle` (first model): the same params as 2021's Haiku pickled them, every
  mapping a `haiku._src.data_structures.FlatMapping` built from a dict (protocol 4).
* `config.json` (second model): the transformers config.json a user names for what the shapes
  cannot tell: its heads, blocks and query residual are not the Colab's.
* `cases.safetensors`: for each case `c`: `c.input_ids` (int64 [B, L], L = max_seq_len, padded
  with 0), `c.input_mask` (int64 [B, L], 1 = token) and `c.logits` (float32 [B, L, 262]):
  DeepMind's `apply` run in float64, rounded to float32. `full` is one text of L ids run without
  a mask; `padded` is two shorter texts (in the first model the first is the
  Colab's "This is an incomplete sentence where some words are missing." with bytes 51..60
  masked) run with `input_mask` and `query_mask` both the mask, as the Colab does.

DeepMind's decoder masks padded *queries* (their attention output is zeroed), which transformers
and this library do not: logits at padded positions differ by design and are not compared. At
real positions the query mask changes nothing.

| model | covers | config | params | logits std | mean top-1 prob | max abs JAX f32 vs f64 |
|---|---|---|---|---|---|---|
{table}

## `{FLOW_NAME}/`: optical flow

A tiny optical-flow model built as DeepMind's optical_flow Colab builds it (`optical_flow`:
`ImagePreprocessor(prep_type='patches', conv_after_patching=True)` with 64-band Fourier features,
`PerceiverEncoder`, `FlowDecoder(rescale_factor=100)`, the output times `FLOW_SCALE_FACTOR` = 20),
encoder {enc_flow}, {flow_stats['params']} parameters in {flow_stats['modules']} modules (drawn
as `scale_up_flow` says, rounded to bfloat16 precision, pickled as float32), and:

* `params.pystate`: the bare params, as the Colab reads `optical_flow_checkpoint.pystate`
  (`params = pickle.loads(...)`, straight into `apply`), in 2021's FlatMapping layout (protocol 4).
* `config.json`: the transformers config.json for the `config_json` run.
* `cases.safetensors`, per run `r`: `r.output` (float32 `[pixels, 2]`): DeepMind's model output
  (the decoder's, already divided by 100; transformers' logits), run in float64 and rounded;
  `r.flow`: the Colab's flow, that output x 20 (in float64, then rounded); `r.pixels` (int64, row-major
  `y * W + x`, `colab` only): where those pixels are.
  * `colab`: what shapes cannot tell is the Colab's: 16 self-attention heads, 1 cross-attention
    head, 1 block, the query residual, TRAIN_SIZE (368, 496). `colab.frames_small` (uint8
    `[2, 46, 62, 3]`) scaled up {FLOW_COLAB_UPSCALE}x by repeating pixels is the 368x496 tile;
    {FLOW_SAMPLES} random pixels of its output are kept.
  * `config_json`: heads 4 / 2, 2 blocks, no query residual, TRAIN_SIZE (48, 56), as the
    config.json says; `config_json.frames` (uint8 `[2, 48, 56, 3]`) is the tile; every pixel kept.

  The tile goes in as the Colab's `normalize(im)` (`im / 255 * 2 - 1`), `[1, 2, H, W, 3]`.

| run | largest abs output | output std | largest abs flow (px) | max abs JAX f32 (x64 off, as the Colab runs) vs f64, relative to the largest output |
|---|---|---|---|---|
{flow_table}

## `imagenet_*/`: the three ImageNet classifiers

Tiny models built as DeepMind's imagenet_classification Colab builds them
(`imagenet_classifier`, `hk.transform_with_state`: `ImagePreprocessor` with the Colab's
`learned_pos_configs` / `fourier_pos_configs` / `conv_maxpool_configs` preprocessor settings,
`PerceiverEncoder`, `ClassificationDecoder` of {IMAGENET_LABELS} labels), encoder
{enc_imagenet}, their params and state from `init` (with `is_training=True`, which creates the
conv stem's BatchNorm state), drawn as `scale_up_imagenet` says (rounded to bfloat16 precision,
pickled as float32), and:

* `params.pystate`: `pickle.dumps({{"params": params, "state": state}}, protocol=4)`, as the Colab
  reads `imagenet_*.pystate` (`ckpt['params']`, `ckpt['state']`), each mapping in 2021's
  FlatMapping layout. Only the conv model has state: its BatchNorm's `mean_ema` / `var_ema`
  (`average`, `hidden`, an int32 `counter`).
* `config.json` (`imagenet_fourier` only): the transformers config.json of its `config_json` run.
* `cases.safetensors`: `case<c>.pixels` (float32 `[B, H, W, 3]`): the Colab's `normalize` of
  uint8 images, rounded to float32 (case 0 two 12x12 / 20x16 / 32x32 images, case 1 one image:
  12x12 / 15x17 / 29x23, the conv one odd-sized so that 'SAME' pads differently); and per run
  `r`, `r.case<c>.logits` (float32 `[B, {IMAGENET_LABELS}]`): DeepMind's `apply(...,
  is_training=False)` in float64, rounded.
  * `colab`: what shapes cannot tell is the Colab's: 8 self-attention heads, 1 cross-attention
    head, 8 blocks, the encoder's query residual; the decoder's query residual off for the
    learned model (`learned_pos_configs`), on for the others.
  * `config_json` (Fourier): heads 4 / 2, 2 blocks, no query residual in the encoder nor the
    decoder, as its config.json says.

DeepMind's code differs from transformers' classes in two places that matter here: the conv
stem pads as Haiku's `'SAME'` (the 7x7 stride-2 convolution 2 before / 3 after on even sides,
the 3x3 stride-2 max-pool up to `ceil(n / 2)`: 224 -> 112 -> 56, transformers 55), and the
learned model's decoder adds no query residual (transformers' always does). The Rust loader
records both in the config (`stem_padding`, `decoder_use_query_residual`).

| model | run | params | state modules | largest abs logit | logit std | max abs JAX f32 (x64 off) vs f64 |
|---|---|---|---|---|---|---|
{imagenet_table}

## `{VIDEO_NAME}/`: the video autoencoder

A tiny audio-video-label autoencoder built as DeepMind's video_autoencoding Colab builds it
(`video_autoencoder`, `hk.transform_with_state`: `MultimodalPreprocessor` of audio patches with
192 Fourier bands, 4x4 video patches with 32 bands and the label always masked;
`PerceiverEncoder` named `encoder`; `MultimodalDecoder` over an audio `BasicDecoder`, a
`BasicVideoAutoencodingDecoder` and a `ClassificationDecoder`; `MultimodalPostprocessor`), with
sizes unlike the Colab's ({video_sizes}; encoder {enc_video}), {video_stats['params']} parameters
in {video_stats['modules']} modules (drawn as `scale_up_video` says), and:

* `params.pystate`: the bare params, as the Colab reads `video_autoencoding_checkpoint.pystate`
  (`params = pickle.loads(...)`, `state = {{}}`), in 2021's FlatMapping layout (protocol 4),
  every array **float16** (the decoder's 387-wide MLP alone is 300k values; DeepMind's file is
  float32, which the reader takes the same way).
* `config.json`: the transformers config.json for these sizes (the Colab's 16 frames of
  224x224 would make the inputs megabytes), heads 4 / 2 and 2 blocks.
* `cases.safetensors`: `frames` (float32 `[T, H, W, 3]`, in [0, 1] as the Colab's
  `load_video`), `audio` (float32 `[samples]`, mono in [-1, 1]); per subsampling `s` (`all`: every
  query; `chunk1of4`: the Colab's chunk 1 of 4), `s.image_points` / `s.audio_points` (int64: the
  `subsampled_output_points`) and DeepMind's outputs `s.audio` (`[patches x samples_per_patch]`),
  `s.image` (`[pixels, 3]`), `s.label` (`[labels]`), run in float64 and rounded to float32. The
  label goes in as zeros (masked anyway), as in the Colab.

| subsampling | output | largest abs value | max abs JAX f32 (x64 off) vs f64 |
|---|---|---|---|
{video_table}
""")


def main() -> None:
    out_dir = ARGS.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if ARGS.only == "imagenet":
        make_imagenet(out_dir, np.random.default_rng(SEED + 2))
        return
    if ARGS.only == "video":
        make_video(out_dir, np.random.default_rng(SEED + 3))
        return
    rng = np.random.default_rng(SEED)
    all_stats = []
    for model in MODELS:
        stats = make(model, out_dir, rng)
        print(model["name"], stats)
        all_stats.append(stats)
    # Its own generator: the masked language models' fixtures do not move when the flow's change.
    flow_stats = make_flow(out_dir, np.random.default_rng(SEED + 1))
    print(FLOW_NAME, flow_stats)
    imagenet_stats = make_imagenet(out_dir, np.random.default_rng(SEED + 2))
    video_stats = make_video(out_dir, np.random.default_rng(SEED + 3))
    write_readme(out_dir, all_stats, flow_stats, imagenet_stats, video_stats)


if __name__ == "__main__":
    main()
