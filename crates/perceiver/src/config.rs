//! The model configuration, as Hugging Face's `PerceiverConfig` writes it to `config.json`.
//!
//! Field names are transformers' (DeepMind's Haiku names in comments). [`PerceiverConfig::validate`]
//! checks the values, and the `*_spec` methods resolve the `None`s of the config into concrete
//! channel counts exactly as transformers' `PerceiverAttention` does, so that the same config.json
//! builds the same shapes here and there.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The range of every count in a config, and why: checked by [`PerceiverConfig::validate`]
/// before anything is built from the config.
///
/// Most counts are pinned by the shape of a tensor in the weights file (a config that disagrees
/// with its weights fails on the first mismatched tensor), so for a loaded model their ranges
/// only keep the arithmetic on them finite. Some are not: `num_blocks` (the latent blocks
/// share one set of weights, so any value matches any weights file, and each block repeats the
/// work of every latent layer), the head counts (they only have to divide the channels), and,
/// for a model trained from scratch, all of them (there are no weights yet). Those ranges are
/// what stop a config from asking for hours of work or terabytes of memory. docs/DESIGN.md
/// lists them with every other bound of the program.
pub mod bounds {
    use crate::error::{Error, Result};

    /// An inclusive range of a count, with the reason for its ends (shown in the error).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Range {
        /// The least allowed.
        pub min: u64,
        /// The most allowed.
        pub max: u64,
        /// Why the ends are where they are.
        pub why: &'static str,
    }

    impl Range {
        /// [`Error::ConfigOutOfRange`] naming `field` unless `value` is in the range.
        pub fn check(&self, field: &'static str, value: u64) -> Result<()> {
            if (self.min..=self.max).contains(&value) {
                return Ok(());
            }
            Err(Error::ConfigOutOfRange {
                field,
                value,
                min: self.min,
                max: self.max,
                why: self.why,
            })
        }
    }

    /// How many times the latent block runs. DeepMind's released models use 1 (language, 26
    /// layers a block) and 8 (ImageNet, 6 layers a block). No tensor pins it, and each block
    /// repeats the work of all the latent layers: at 32, four times the largest released
    /// value, the 201M model's latent stack does 32 times its usual work, slow but finite.
    pub const NUM_BLOCKS: Range = Range {
        min: 1,
        max: 32,
        why: "DeepMind's released models use 1 and 8, and every block repeats the work of all the latent layers",
    };

    /// Latent layers in a block (26 in the language model, 6 in ImageNet's). Each has its own
    /// weights, so a loaded model pins it; for a model from scratch [`PARAMETERS`] bounds it too.
    pub const NUM_SELF_ATTENDS_PER_BLOCK: Range = Range {
        min: 1,
        max: 1024,
        why: "DeepMind's released models use 6 and 26",
    };

    /// Latent vectors. Released models use 256 (language) to 2048 (optical flow); the latent
    /// self-attention's work grows with its square.
    pub const NUM_LATENTS: Range = Range {
        min: 1,
        max: 4096,
        why: "DeepMind's released models use 256 to 2048, and self-attention work grows with its square",
    };

    /// Channel widths: `d_latents`, `d_model`, and `qk_channels` / `v_channels` when set.
    /// Released models use at most 1280; the bound keeps products of widths (matrix sizes) far
    /// from overflow, and [`PARAMETERS`] bounds the model they build.
    pub const WIDTH: Range = Range {
        min: 1,
        max: 16384,
        why: "DeepMind's released models use at most 1280 channels",
    };

    /// Attention heads. They must divide the channel widths they split (checked after the
    /// ranges), so they never exceed those widths; this range is the widths'.
    pub const HEADS: Range = Range {
        min: 1,
        max: WIDTH.max,
        why: "a head has at least one channel",
    };

    /// MLP widening factors (the MLP's hidden width is this times its input width). Pinned by
    /// the MLP matrices of a loaded model.
    pub const WIDENING_FACTOR: Range = Range {
        min: 1,
        max: 64,
        why: "transformers' default and the released language model use 1",
    };

    /// Vocabulary: at least the bytes tokenizer's 262 ids. Ids beyond them are never input and
    /// decode to nothing, yet every decoded position computes a logit for each.
    pub const VOCAB_SIZE: Range = Range {
        min: crate::tokenizer::VOCAB_SIZE as u64,
        max: 4096,
        why: "the bytes tokenizer has 262 ids, and larger vocabularies are only padding",
    };

    /// Input positions, and decoder queries (projected once at load: `positions × 256` f32).
    /// The language model uses 2048.
    pub const MAX_POSITION_EMBEDDINGS: Range = Range {
        min: 1,
        max: 65536,
        why: "the released language model uses 2048, and the decoder's queries are projected for every position at load",
    };

    /// Class labels of a classifier (`id2label`, else `num_labels`). ImageNet's 1000 labels are
    /// the most a released model has; each label is a row of the final projection.
    pub const NUM_LABELS: Range = Range {
        min: 1,
        max: 1 << 20,
        why: "every label is a row of the classifier's final projection",
    };

    /// Side of the square image of `PerceiverForImageClassificationLearned`, whose trainable
    /// position table has one row per pixel (224 in the released model: 50,176 rows).
    pub const IMAGE_SIZE: Range = Range {
        min: 1,
        max: 2048,
        why: "the released learned-position model uses 224, and its position table has a row per pixel",
    };

    /// Each side of the optical-flow model's `train_size` (368 × 496 released): one tile of
    /// that size is one pass, its pixels the rows the encoder and the decoder attend over.
    pub const TRAIN_SIZE: Range = Range {
        min: 1,
        max: 2048,
        why: "the released flow model uses 368x496, and every pixel of a tile is a row of its input and of its output",
    };

    /// Video frames of the multimodal autoencoder (`num_frames`, 16 released). transformers'
    /// image preprocessor drops a time axis of one frame, after which its three-dimensional
    /// position features no longer fit, so a single frame is refused.
    pub const NUM_FRAMES: Range = Range {
        min: 2,
        max: 64,
        why: "the released multimodal model uses 16 frames, and transformers fails on a single frame",
    };

    /// Audio samples per video frame of the multimodal autoencoder (1920 released: 48 kHz at
    /// 25 frames a second).
    pub const AUDIO_SAMPLES_PER_FRAME: Range = Range {
        min: 1,
        max: 48_000,
        why: "the released multimodal model uses 1920 (48 kHz at 25 frames a second); at most a second of 48 kHz audio a frame",
    };

    /// Audio samples in one patch (one input row and one output query) of the multimodal
    /// autoencoder (16 released).
    pub const SAMPLES_PER_PATCH: Range = Range {
        min: 1,
        max: 4096,
        why: "the released multimodal model uses 16 samples a patch",
    };

    /// Rows of the multimodal autoencoder's input (derived: audio patches + video patches + the
    /// label; 52,097 released): the encoder streams them a block at a time, but every row is
    /// made and attended on every pass.
    pub const MULTIMODAL_INPUT_ROWS: Range = Range {
        min: 1,
        max: 1 << 20,
        why: "the released multimodal model has 52,097 input rows, and the encoder attends every one of them",
    };

    /// Output queries of the multimodal autoencoder (derived: `output_shape`'s pixels + audio
    /// patches; 804,736 released): its reconstruction holds a value per pixel and channel.
    pub const MULTIMODAL_OUTPUT_QUERIES: Range = Range {
        min: 1,
        max: 1 << 24,
        why: "the released multimodal model decodes 804,736 queries, and the reconstruction holds them all",
    };

    /// Parameters of the whole model, derived from the counts above: 2³¹ f32 parameters are
    /// 8 GiB, ten times the released 201M model. This bounds what a config trained from
    /// scratch allocates (the weights, then gradients and optimizer moments of the same size).
    pub const PARAMETERS: Range = Range {
        min: 1,
        max: 1 << 31,
        why: "8 GiB of f32 weights, ten times the released 201M-parameter model",
    };
}

/// The MLP nonlinearity named by `hidden_act` in config.json: transformers' `ACT2FN` names that
/// need no parameters of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// `"gelu"` (or `"gelu_python"`): the exact GELU, `x·Φ(x)` with the error function
    /// (transformers' choice for the released checkpoint's config).
    #[serde(rename = "gelu", alias = "gelu_python")]
    GeluErf,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`, `"gelu_accurate"`, `"gelu_python_tanh"`:
    /// the tanh approximation (what DeepMind's `jax.nn.gelu` computes and what the released
    /// weights were trained with).
    #[serde(
        rename = "gelu_new",
        alias = "gelu_pytorch_tanh",
        alias = "gelu_fast",
        alias = "gelu_accurate",
        alias = "gelu_python_tanh"
    )]
    GeluTanh,
    /// `"quick_gelu"`: `x·σ(1.702·x)`.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `"relu"`: `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
    /// `"relu2"`: `relu(x)²`.
    #[serde(rename = "relu2")]
    ReluSquared,
    /// `"relu6"`: `min(max(x, 0), 6)`.
    #[serde(rename = "relu6")]
    Relu6,
    /// `"leaky_relu"` with PyTorch's default slope 0.01.
    #[serde(rename = "leaky_relu")]
    LeakyRelu,
    /// `"silu"` / `"swish"`: `x·σ(x)`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `"mish"`: `x·tanh(softplus(x))`.
    #[serde(rename = "mish")]
    Mish,
    /// `"hardswish"`: `x·relu6(x + 3)/6`.
    #[serde(rename = "hardswish")]
    HardSwish,
    /// `"sigmoid"`: `σ(x)`.
    #[serde(rename = "sigmoid")]
    Sigmoid,
    /// `"tanh"`: `tanh(x)`.
    #[serde(rename = "tanh")]
    Tanh,
    /// `"linear"`: the identity.
    #[serde(rename = "linear")]
    Linear,
}

impl Activation {
    /// Every variant, for tests and documentation.
    pub const ALL: [Activation; 13] = [
        Self::GeluErf,
        Self::GeluTanh,
        Self::QuickGelu,
        Self::Relu,
        Self::ReluSquared,
        Self::Relu6,
        Self::LeakyRelu,
        Self::Silu,
        Self::Mish,
        Self::HardSwish,
        Self::Sigmoid,
        Self::Tanh,
        Self::Linear,
    ];

    /// The name transformers gives it in `hidden_act` (the first of its aliases).
    pub fn name(self) -> &'static str {
        match self {
            Self::GeluErf => "gelu",
            Self::GeluTanh => "gelu_new",
            Self::QuickGelu => "quick_gelu",
            Self::Relu => "relu",
            Self::ReluSquared => "relu2",
            Self::Relu6 => "relu6",
            Self::LeakyRelu => "leaky_relu",
            Self::Silu => "silu",
            Self::Mish => "mish",
            Self::HardSwish => "hardswish",
            Self::Sigmoid => "sigmoid",
            Self::Tanh => "tanh",
            Self::Linear => "linear",
        }
    }
}

impl From<Activation> for perceiver_kernels::Activation {
    /// The kernels' function of the same name: transformers' names and serde stay here, the
    /// arithmetic is the kernels'.
    fn from(activation: Activation) -> Self {
        use perceiver_kernels::Activation as Kernel;
        match activation {
            Activation::GeluErf => Kernel::GeluErf,
            Activation::GeluTanh => Kernel::GeluTanh,
            Activation::QuickGelu => Kernel::QuickGelu,
            Activation::Relu => Kernel::Relu,
            Activation::ReluSquared => Kernel::ReluSquared,
            Activation::Relu6 => Kernel::Relu6,
            Activation::LeakyRelu => Kernel::LeakyRelu,
            Activation::Silu => Kernel::Silu,
            Activation::Mish => Kernel::Mish,
            Activation::HardSwish => Kernel::HardSwish,
            Activation::Sigmoid => Kernel::Sigmoid,
            Activation::Tanh => Kernel::Tanh,
            Activation::Linear => Kernel::Linear,
        }
    }
}

/// How the encoder cross-attention picks its query/key width when `qk_channels` is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrossAttentionShape {
    /// Use the width of the queries (the latents, `d_latents`).
    #[serde(rename = "q")]
    Query,
    /// Use the width of the keys/values (the inputs, `d_model`). transformers' default.
    #[serde(rename = "kv")]
    KeyValue,
}

/// `config.json` of a Perceiver IO model (transformers' `PerceiverConfig`).
///
/// Defaults are transformers' defaults. They are the layout of `deepmind/language-perceiver` except
/// for `qk_channels` / `v_channels`, which that checkpoint's config.json sets to 256 / 1280 (with
/// both unset, the attentions are wider: 269M parameters instead of 201M).
/// Fields transformers keeps for the image, flow and multimodal models are carried through
/// untouched in `extra` so that a config read and written again loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerceiverConfig {
    /// Number of latent vectors. DeepMind: `z_index_dim`.
    pub num_latents: usize,
    /// Width of each latent. DeepMind: `num_z_channels`.
    pub d_latents: usize,
    /// Width of the embedded inputs and of the decoder queries.
    pub d_model: usize,
    /// How many times the block of self-attention layers is applied (weights shared).
    pub num_blocks: usize,
    /// Self-attention layers in one block. DeepMind: `num_self_attends_per_block`.
    pub num_self_attends_per_block: usize,
    /// Heads of each latent self-attention (DeepMind: `num_self_attend_heads`).
    pub num_self_attention_heads: usize,
    /// Heads of the encoder's cross-attention (DeepMind: `num_cross_attend_heads`).
    pub num_cross_attention_heads: usize,
    /// Query/key width of the encoder's attentions; `None` resolves as transformers does.
    pub qk_channels: Option<usize>,
    /// Value width of the encoder's attentions; `None` resolves as transformers does.
    pub v_channels: Option<usize>,
    /// Whose width the encoder's queries/keys take when `qk_channels` is unset.
    pub cross_attention_shape_for_attention: CrossAttentionShape,
    /// MLP hidden width ÷ latent width in the latent layers.
    pub self_attention_widening_factor: usize,
    /// MLP hidden width ÷ latent width in the encoder's cross-attention layer.
    pub cross_attention_widening_factor: usize,
    /// The MLPs' activation (transformers' `ACT2FN` name).
    pub hidden_act: Activation,
    /// Dropout on attention probabilities during training (transformers' only dropout).
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of transformers' initialisation (training from scratch with `--init transformers`).
    pub initializer_range: f64,
    /// Written by transformers but never used: its LayerNorms use PyTorch's default eps (1e-5),
    /// which is [`LAYER_NORM_EPS`].
    pub layer_norm_eps: f64,
    /// Residual from the latents around the encoder cross-attention.
    pub use_query_residual: bool,
    /// Token ids: 262 for the bytes tokenizer.
    pub vocab_size: usize,
    /// Length of the input position table and number of decoder queries.
    pub max_position_embeddings: usize,
    /// Everything else in config.json (architectures, model_type, image fields, …), kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The LayerNorm epsilon every Perceiver LayerNorm uses, in both reference implementations.
pub const LAYER_NORM_EPS: f64 = 1e-5;

impl Default for PerceiverConfig {
    fn default() -> Self {
        Self {
            num_latents: 256,
            d_latents: 1280,
            d_model: 768,
            num_blocks: 1,
            num_self_attends_per_block: 26,
            num_self_attention_heads: 8,
            num_cross_attention_heads: 8,
            qk_channels: None,
            v_channels: None,
            cross_attention_shape_for_attention: CrossAttentionShape::KeyValue,
            self_attention_widening_factor: 1,
            cross_attention_widening_factor: 1,
            hidden_act: Activation::GeluErf,
            attention_probs_dropout_prob: 0.1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            use_query_residual: true,
            vocab_size: 262,
            max_position_embeddings: 2048,
            extra: serde_json::Map::new(),
        }
    }
}

/// Concrete widths of one attention + MLP layer (transformers' `PerceiverLayer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpec {
    /// Width of the queries' input (and of the layer's output).
    pub q_dim: usize,
    /// Width of the keys'/values' input (equal to `q_dim` for self-attention).
    pub kv_dim: usize,
    /// Width of the queries and keys (all heads).
    pub qk_channels: usize,
    /// Width of the values and of the heads' concatenated output.
    pub v_channels: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width = `widening_factor * q_dim`.
    pub widening_factor: usize,
    /// Add the (un-normalised) queries to the attention output.
    pub use_query_residual: bool,
    /// The MLP's activation.
    pub activation: Activation,
}

impl AttentionSpec {
    /// Whether this cross-attention, with `queries` query rows, is fewer multiply-adds with its
    /// key and value projections moved off the input rows: each head's queries through the
    /// key weight (`q·W_k`, `W_k` as stored, `[qk_channels, kv_dim]`; once), scored against the
    /// normed input rows themselves, whose weighted sum then goes through the value projection
    /// (once per query). That is
    /// `2·heads·kv_dim` multiply-adds per query and input row, against `qk_channels +
    /// v_channels` per query and input row plus `kv_dim·(qk_channels + v_channels)` per input
    /// row as the model is written: less for inputs no wider than the keys (pixels with their
    /// Fourier features, a video's patches), more for the language model's 8 narrow heads.
    /// The same attention up to rounding: the key bias shifts each query's scores by one
    /// amount, which the softmax removes, and the value bias, each query's weights summing to
    /// one, is added once.
    pub fn absorbs_keys(&self, queries: usize) -> bool {
        let absorbed = (2 * self.num_heads)
            .saturating_mul(self.kv_dim)
            .saturating_mul(queries);
        let projected = (self.kv_dim.saturating_add(queries))
            .saturating_mul(self.qk_channels.saturating_add(self.v_channels));
        absorbed < projected
    }

    /// Parameters of one layer (transformers' `PerceiverLayer`): two or three LayerNorms, the
    /// query/key/value/output projections and the MLP. Saturating, as
    /// [`PerceiverConfig::num_parameters`].
    fn num_parameters(&self, is_cross: bool) -> u64 {
        let n = |v: usize| v as u64;
        let dense = |inputs: u64, outputs: u64| inputs.saturating_mul(outputs).saturating_add(outputs);
        let (q, kv, qk, v) = (
            n(self.q_dim),
            n(self.kv_dim),
            n(self.qk_channels),
            n(self.v_channels),
        );
        let hidden = q.saturating_mul(n(self.widening_factor));
        // Cross-attention projects back to the queries' width, self-attention to v_channels.
        let out = if is_cross { q } else { v };
        let norms = q
            .saturating_mul(4)
            .saturating_add(if is_cross { kv.saturating_mul(2) } else { 0 });
        [
            dense(q, qk),
            dense(kv, qk),
            dense(kv, v),
            dense(v, out),
            dense(q, hidden),
            dense(hidden, q),
        ]
        .into_iter()
        .fold(norms, u64::saturating_add)
    }

    fn check(&self, what: &'static str) -> Result<()> {
        let fields = [
            ("q_dim", self.q_dim),
            ("kv_dim", self.kv_dim),
            ("qk_channels", self.qk_channels),
            ("v_channels", self.v_channels),
            ("num_heads", self.num_heads),
            ("widening_factor", self.widening_factor),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(Error::InvalidConfig(format!("{what}: {name} must be positive")));
            }
        }
        for (name, value) in [("qk_channels", self.qk_channels), ("v_channels", self.v_channels)] {
            if value % self.num_heads != 0 {
                return Err(Error::InvalidConfig(format!(
                    "{what}: {name} ({value}) must be divisible by the number of heads ({})",
                    self.num_heads
                )));
            }
        }
        Ok(())
    }
}

/// The most bytes [`PerceiverConfig::from_file`] reads: transformers' config.json files are a
/// few kilobytes, and a larger file (or a device that never ends) is not one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The decoder of `PerceiverForMaskedLM`: transformers hard-codes 8 heads of 32 query/key
/// channels, values as wide as `d_model`, no query residual and an MLP widening factor of 1.
pub const MASKED_LM_DECODER_HEADS: usize = 8;
/// See [`MASKED_LM_DECODER_HEADS`].
pub const MASKED_LM_DECODER_QK_CHANNELS: usize = 8 * 32;

impl PerceiverConfig {
    /// Reads and validates a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `config.json` file (at most [`MAX_CONFIG_BYTES`] of it).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::InvalidConfig(format!(
                "{}: larger than {MAX_CONFIG_BYTES} bytes (a config.json is a few kilobytes)",
                path.display()
            )));
        }
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidConfig(msg) => Error::InvalidConfig(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The layout of `deepmind/language-perceiver` (transformers' defaults with qk 256 / v 1280).
    pub fn language_perceiver() -> Self {
        Self {
            qk_channels: Some(256),
            v_channels: Some(1280),
            ..Self::default()
        }
    }

    /// The config serialised as transformers writes it (with `model_type` and `architectures`).
    pub fn to_json_string(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let map = value.as_object_mut().expect("config is an object");
        map.entry("model_type").or_insert_with(|| "perceiver".into());
        map.entry("architectures")
            .or_insert_with(|| serde_json::json!(["PerceiverForMaskedLM"]));
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// Checks every value and every resolved layer shape; errors echo the offending values.
    ///
    /// Every count is checked against its range in [`bounds`] first, so that nothing below
    /// (resolved widths, products of widths, tensor lists) can overflow or be proportional to
    /// an absurd value.
    pub fn validate(&self) -> Result<()> {
        for (field, value, range) in self.counts() {
            range.check(field, value)?;
        }
        if Architecture::of(self).ok() == Some(Architecture::MultimodalAutoencoding) {
            // Its own counts first: the parameter count below is derived from them.
            self.multimodal()?;
        }
        bounds::PARAMETERS.check("parameters (implied by the config)", self.num_parameters())?;
        if let Some(model_type) = self.extra.get("model_type").and_then(|v| v.as_str()) {
            if model_type != "perceiver" {
                return Err(Error::InvalidConfig(format!(
                    "model_type is {model_type:?}, expected \"perceiver\""
                )));
            }
        }
        self.encoder_cross_attention_spec()
            .check("encoder cross-attention")?;
        let self_attention = self.self_attention_spec();
        self_attention.check("latent self-attention")?;
        // transformers projects self-attention outputs to v_channels and adds them to the latents.
        if self_attention.v_channels != self.d_latents {
            return Err(Error::InvalidConfig(format!(
                "v_channels ({}) must equal d_latents ({}) for the latent self-attention residual",
                self_attention.v_channels, self.d_latents
            )));
        }
        match Architecture::of(self)? {
            Architecture::MaskedLm => self.masked_lm_decoder_spec().check("decoder cross-attention")?,
            Architecture::OpticalFlow => {
                for side in self.train_size()? {
                    bounds::TRAIN_SIZE.check("train_size", side as u64)?;
                }
                self.flow_decoder_spec().check("decoder cross-attention")?;
            }
            Architecture::MultimodalAutoencoding => {
                self.multimodal_decoder_spec().check("decoder cross-attention")?;
            }
            _ => {
                self.classification_decoder_spec()
                    .check("decoder cross-attention")?;
                self.stem_padding()?;
                if let Some(v) = self.extra.get(CLASSIFIER_QUERY_RESIDUAL_KEY) {
                    if !v.is_boolean() {
                        return Err(Error::InvalidConfig(format!(
                            "{CLASSIFIER_QUERY_RESIDUAL_KEY} must be true or false, found {v}"
                        )));
                    }
                }
                if let Some(labels) = self.num_labels()? {
                    bounds::NUM_LABELS.check("num_labels", labels as u64)?;
                }
            }
        }
        Ok(())
    }

    /// Every count of the config with its range, in config.json order of importance. Unset
    /// `qk_channels` / `v_channels` resolve to other widths, checked in their own right.
    fn counts(&self) -> Vec<(&'static str, u64, bounds::Range)> {
        use bounds::*;
        let mut counts = vec![
            ("num_blocks", self.num_blocks, NUM_BLOCKS),
            (
                "num_self_attends_per_block",
                self.num_self_attends_per_block,
                NUM_SELF_ATTENDS_PER_BLOCK,
            ),
            ("num_latents", self.num_latents, NUM_LATENTS),
            ("d_latents", self.d_latents, WIDTH),
            ("d_model", self.d_model, WIDTH),
        ];
        counts.extend(self.qk_channels.map(|v| ("qk_channels", v, WIDTH)));
        counts.extend(self.v_channels.map(|v| ("v_channels", v, WIDTH)));
        counts.extend([
            ("num_self_attention_heads", self.num_self_attention_heads, HEADS),
            ("num_cross_attention_heads", self.num_cross_attention_heads, HEADS),
            (
                "self_attention_widening_factor",
                self.self_attention_widening_factor,
                WIDENING_FACTOR,
            ),
            (
                "cross_attention_widening_factor",
                self.cross_attention_widening_factor,
                WIDENING_FACTOR,
            ),
            ("vocab_size", self.vocab_size, VOCAB_SIZE),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITION_EMBEDDINGS,
            ),
        ]);
        if Architecture::of(self).ok() == Some(Architecture::ImageClassificationLearned) {
            counts.push(("image_size", self.image_size(), IMAGE_SIZE));
        }
        counts.into_iter().map(|(f, v, r)| (f, v as u64, r)).collect()
    }

    /// The number of parameters of the model this config describes (every
    /// tensor [`crate::checkpoint::expected_tensors`] lists, summed). Saturates instead of
    /// overflowing, so that it can be asked of any config, validated or not.
    pub fn num_parameters(&self) -> u64 {
        let n = |v: usize| v as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let (d_model, vocab, positions) = (
            n(self.d_model),
            n(self.vocab_size),
            n(self.max_position_embeddings),
        );
        let text = [
            mul(vocab, d_model),     // byte embedding (tied with the MLM's output projection)
            mul(positions, d_model), // input position table
        ];
        let mut fixed = vec![
            mul(n(self.num_latents), n(self.d_latents)), // latents
            self.encoder_cross_attention_spec().num_parameters(true),
        ];
        let classifier = || {
            let labels = n(self.num_labels().ok().flatten().unwrap_or(1));
            let d = n(self.d_latents);
            [
                d, // the one query
                self.classification_decoder_spec().num_parameters(true),
                mul(d, labels).saturating_add(labels), // final projection
            ]
        };
        match Architecture::of(self) {
            Ok(Architecture::MaskedLm) | Err(_) => {
                fixed.extend(text);
                fixed.extend([
                    vocab,                   // output bias
                    mul(positions, d_model), // decoder query table
                    self.masked_lm_decoder_spec().num_parameters(true),
                ]);
            }
            Ok(Architecture::SequenceClassification) => {
                fixed.extend(text);
                fixed.extend(classifier());
            }
            Ok(Architecture::OpticalFlow) => {
                let (patches, features) = (n(FLOW_PATCH_CHANNELS), n(FLOW_FEATURES));
                let q = n(self.input_channels());
                fixed.extend([
                    patches * features + features, // conv_after_patches
                    self.flow_decoder_spec().num_parameters(true),
                    q * 2 + 2, // final layer: two flow channels
                ]);
            }
            // An invalid multimodal config has no parameter count (validate names the field).
            Ok(Architecture::MultimodalAutoencoding) => match self.multimodal() {
                Ok(spec) => fixed.extend(spec.num_parameters(&self.multimodal_decoder_spec())),
                Err(_) => return u64::MAX,
            },
            Ok(_) => {
                fixed.push(
                    self.image_input()
                        .map_or(0, |input| input.num_parameters(self.image_size())),
                );
                fixed.extend(classifier());
            }
        }
        let latent_stack = mul(
            n(self.num_self_attends_per_block),
            self.self_attention_spec().num_parameters(false),
        );
        fixed.into_iter().fold(latent_stack, u64::saturating_add)
    }

    /// Class labels from `id2label` (keys `"0"`, `"1"`, …, all present), else `num_labels`;
    /// `None` when the config has neither (the loader then counts the final projection's rows).
    pub fn num_labels(&self) -> Result<Option<usize>> {
        if let Some(map) = self.extra.get("id2label").filter(|v| !v.is_null()) {
            let map = map
                .as_object()
                .ok_or_else(|| Error::InvalidConfig("id2label must map label ids to names".into()))?;
            return Ok(Some(map.len()));
        }
        match self.extra.get("num_labels").filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|v| Some(v as usize))
                .ok_or_else(|| Error::InvalidConfig(format!("num_labels must be a count, found {v}"))),
        }
    }

    /// The label of every class, in id order: `id2label`'s names, else transformers' fallback
    /// `LABEL_0`, `LABEL_1`, … for `count` classes.
    pub fn labels(&self, count: usize) -> Result<Vec<String>> {
        let Some(map) = self.extra.get("id2label").and_then(|v| v.as_object()) else {
            return Ok((0..count).map(|i| format!("LABEL_{i}")).collect());
        };
        let mut labels = vec![None; map.len()];
        for (key, name) in map {
            let id = key
                .parse::<usize>()
                .ok()
                .filter(|&id| id < labels.len())
                .ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "id2label has key {key:?}; its keys must be the ids 0..{}",
                        map.len()
                    ))
                })?;
            let name = name
                .as_str()
                .ok_or_else(|| Error::InvalidConfig(format!("id2label[{key}] is not a string")))?;
            labels[id] = Some(name.to_string());
        }
        let labels: Vec<String> = labels.into_iter().flatten().collect();
        if labels.len() != count {
            return Err(Error::InvalidConfig(format!(
                "id2label names {} labels but the classifier has {count}",
                labels.len()
            )));
        }
        Ok(labels)
    }

    /// `image_size` (transformers' default 56): the side of the square image the
    /// learned-position classifier's position table covers.
    pub fn image_size(&self) -> usize {
        self.extra
            .get("image_size")
            .and_then(|v| v.as_u64())
            .map_or(DEFAULT_IMAGE_SIZE, |v| v as usize)
    }

    /// How an image classifier turns pixels into the encoder's input (fixed by its
    /// transformers class, not by config.json); `None` for text models.
    pub fn image_input(&self) -> Option<ImageInputSpec> {
        let spec = ImageInputSpec::of(Architecture::of(self).ok()?)?;
        Some(match spec {
            ImageInputSpec::Conv {
                channels, fourier, ..
            } => ImageInputSpec::Conv {
                channels,
                fourier,
                padding: self.stem_padding().unwrap_or(StemPadding::Transformers),
            },
            other => other,
        })
    }

    /// Channels of the encoder's input array: the byte embeddings' `d_model` for text, the
    /// image preprocessor's output for images (transformers sizes the encoder by
    /// `input_preprocessor.num_channels`, whatever `d_model` says).
    pub fn input_channels(&self) -> usize {
        match Architecture::of(self).ok() {
            Some(Architecture::OpticalFlow) => return self.flow_input().channels(),
            Some(Architecture::MultimodalAutoencoding) => {
                if let Ok(spec) = self.multimodal() {
                    return spec.input_channels();
                }
            }
            _ => {}
        }
        self.image_input().map_or(self.d_model, |input| input.channels())
    }

    /// `train_size` (transformers' default `[368, 496]`): the frame size, height then width,
    /// the optical-flow model was trained on and runs on (the Colab tiles larger frames).
    pub fn train_size(&self) -> Result<[usize; 2]> {
        let Some(value) = self.extra.get("train_size").filter(|v| !v.is_null()) else {
            return Ok(DEFAULT_TRAIN_SIZE);
        };
        let sides: Option<Vec<usize>> = value
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .unwrap_or(None);
        match sides.as_deref() {
            Some(&[height, width]) => Ok([height, width]),
            _ => Err(Error::InvalidConfig(format!(
                "train_size must be [height, width], found {value}"
            ))),
        }
    }

    /// The optical-flow model's input part, its Fourier features over `train_size`.
    pub fn flow_input(&self) -> FlowInputSpec {
        FlowInputSpec {
            fourier: FourierSpec {
                num_bands: 64,
                max_resolution: self.train_size().unwrap_or(DEFAULT_TRAIN_SIZE),
                concat_pos: true,
                sine_only: false,
            },
        }
    }

    /// The encoder cross-attention (latents attend to inputs), resolved as transformers'
    /// `PerceiverAttention(is_cross_attention=True, …)`, its key/value width the input's.
    pub fn encoder_cross_attention_spec(&self) -> AttentionSpec {
        let (qk_channels, v_channels) = match self.qk_channels {
            // Unset: the width follows `cross_attention_shape_for_attention`, and values take it too.
            None => {
                let qk = match self.cross_attention_shape_for_attention {
                    CrossAttentionShape::Query => self.d_latents,
                    CrossAttentionShape::KeyValue => self.input_channels(),
                };
                (qk, self.v_channels.unwrap_or(qk))
            }
            Some(qk) => (qk, self.v_channels.unwrap_or(qk)),
        };
        AttentionSpec {
            q_dim: self.d_latents,
            kv_dim: self.input_channels(),
            qk_channels,
            v_channels,
            num_heads: self.num_cross_attention_heads,
            widening_factor: self.cross_attention_widening_factor,
            use_query_residual: self.use_query_residual,
            activation: self.hidden_act,
        }
    }

    /// One latent self-attention layer, resolved as transformers' `PerceiverAttention` does.
    pub fn self_attention_spec(&self) -> AttentionSpec {
        let qk_channels = self.qk_channels.unwrap_or(self.d_latents);
        AttentionSpec {
            q_dim: self.d_latents,
            kv_dim: self.d_latents,
            qk_channels,
            v_channels: self.v_channels.unwrap_or(qk_channels),
            num_heads: self.num_self_attention_heads,
            widening_factor: self.self_attention_widening_factor,
            use_query_residual: true,
            activation: self.hidden_act,
        }
    }

    /// The decoder cross-attention of the masked language model (queries = output positions).
    pub fn masked_lm_decoder_spec(&self) -> AttentionSpec {
        AttentionSpec {
            q_dim: self.d_model,
            kv_dim: self.d_latents,
            qk_channels: MASKED_LM_DECODER_QK_CHANNELS,
            v_channels: self.d_model,
            num_heads: MASKED_LM_DECODER_HEADS,
            widening_factor: 1,
            use_query_residual: false,
            activation: self.hidden_act,
        }
    }

    /// The classifiers' decoder cross-attention (transformers' `PerceiverClassificationDecoder`):
    /// one trainable query of `d_latents` channels attends to the latents with one head, its
    /// widths left for `PerceiverAttention` to resolve (both shape rules give `d_latents`), with
    /// the query residual.
    pub fn classification_decoder_spec(&self) -> AttentionSpec {
        AttentionSpec {
            q_dim: self.d_latents,
            kv_dim: self.d_latents,
            qk_channels: self.d_latents,
            v_channels: self.d_latents,
            num_heads: 1,
            widening_factor: 1,
            use_query_residual: self.classifier_query_residual(),
            activation: self.hidden_act,
        }
    }

    /// Whether the classifiers' decoder adds its query back after attending
    /// ([`CLASSIFIER_QUERY_RESIDUAL_KEY`]; transformers' classes always do, and so does
    /// DeepMind's ImageNet Colab for the Fourier and conv models, but not for the learned one).
    /// A value that is not a boolean is refused by [`validate`](Self::validate).
    pub fn classifier_query_residual(&self) -> bool {
        self.extra
            .get(CLASSIFIER_QUERY_RESIDUAL_KEY)
            .and_then(|v| v.as_bool())
            .unwrap_or(true)
    }

    /// How the conv stem pads ([`STEM_PADDING_KEY`]): transformers' (absent) or DeepMind's
    /// (`"same"`). An unknown value is an error.
    pub fn stem_padding(&self) -> Result<StemPadding> {
        match self.extra.get(STEM_PADDING_KEY).filter(|v| !v.is_null()) {
            None => Ok(StemPadding::Transformers),
            Some(serde_json::Value::String(s)) if s == "same" => Ok(StemPadding::Same),
            Some(serde_json::Value::String(s)) if s == "transformers" => Ok(StemPadding::Transformers),
            Some(other) => Err(Error::InvalidConfig(format!(
                "{STEM_PADDING_KEY} must be \"same\" (DeepMind's) or \"transformers\", found {other}"
            ))),
        }
    }
}

/// config.json key (this library's; transformers keeps it as an unused attribute): whether a
/// classifier's decoder adds its query back (default `true`, transformers' fixed choice).
/// DeepMind's ImageNet Colab builds the learned-position model's decoder without it, so a
/// config read from that checkpoint says `false`.
pub const CLASSIFIER_QUERY_RESIDUAL_KEY: &str = "decoder_use_query_residual";

/// config.json key (this library's; transformers ignores it): how the conv-stem classifier
/// pads its 7×7 stride-2 convolution and 3×3 stride-2 max-pool. See [`StemPadding`].
pub const STEM_PADDING_KEY: &str = "stem_padding";

/// How `PerceiverForImageClassificationConvProcessing`'s stem pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StemPadding {
    /// transformers': the convolution pads 3 on every side whatever the size, and the max-pool
    /// does not pad (224 → 112 → 55).
    Transformers,
    /// DeepMind's (Haiku's `padding='SAME'`, TensorFlow's rule) for both: the output has
    /// `ceil(n / stride)` rows, the `max(0, (out − 1)·stride + window − n)` padding split with
    /// the extra one after (224 → 112 → 56; the convolution pads 2 before and 3 after).
    Same,
}

impl PerceiverConfig {
    /// The optical-flow decoder's cross-attention (transformers' `PerceiverOpticalFlowDecoder`):
    /// every input row queries the latents with one head and no query residual. Its widths are
    /// left for `PerceiverAttention` to resolve: as a cross-attention with `qk_channels` unset,
    /// queries and keys take the width `cross_attention_shape_for_attention` names (the latents'
    /// for `"kv"`), and values the same.
    pub fn flow_decoder_spec(&self) -> AttentionSpec {
        let q_dim = self.input_channels();
        let qk = match self.cross_attention_shape_for_attention {
            CrossAttentionShape::Query => q_dim,
            CrossAttentionShape::KeyValue => self.d_latents,
        };
        AttentionSpec {
            q_dim,
            kv_dim: self.d_latents,
            qk_channels: qk,
            v_channels: qk,
            num_heads: 1,
            widening_factor: 1,
            use_query_residual: false,
            activation: self.hidden_act,
        }
    }
}

impl PerceiverConfig {
    /// The multimodal autoencoder's sizes (transformers' `PerceiverForMultimodalAutoencoding`
    /// constructor reads them from these config fields, with these defaults: `num_frames` 16,
    /// `image_size` 56, `audio_samples_per_frame` 1920, `samples_per_patch` 16, `output_shape`
    /// `[1, 16, 224, 224]`, `output_num_channels` 512, `_label_trainable_num_channels` 1024, and
    /// the labels of `id2label` / `num_labels`, else 2), checked against their bounds.
    pub fn multimodal(&self) -> Result<MultimodalSpec> {
        let count = |key: &'static str, default: usize| -> Result<usize> {
            match self.extra.get(key).filter(|v| !v.is_null()) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| Error::InvalidConfig(format!("{key} must be a count, found {v}"))),
            }
        };
        let output_shape = match self.extra.get("output_shape").filter(|v| !v.is_null()) {
            None => DEFAULT_OUTPUT_SHAPE,
            Some(value) => {
                let sides: Option<Vec<usize>> = value
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
                    .unwrap_or(None);
                match sides.as_deref() {
                    Some(&[batch, frames, height, width]) => [batch, frames, height, width],
                    _ => {
                        return Err(Error::InvalidConfig(format!(
                            "output_shape must be [batch, frames, height, width], found {value}"
                        )))
                    }
                }
            }
        };
        let spec = MultimodalSpec {
            num_frames: count("num_frames", 16)?,
            image_size: self.image_size(),
            audio_samples_per_frame: count("audio_samples_per_frame", 1920)?,
            samples_per_patch: count("samples_per_patch", 16)?,
            output_dims: [output_shape[1], output_shape[2], output_shape[3]],
            output_num_channels: count("output_num_channels", 512)?,
            label_query_channels: count("_label_trainable_num_channels", 1024)?,
            num_labels: self.num_labels()?.unwrap_or(DEFAULT_NUM_LABELS),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The multimodal autoencoder's decoder cross-attention (transformers'
    /// `PerceiverMultimodalDecoder`'s inner `PerceiverBasicDecoder`): every query, padded to the
    /// common query width, attends the latents with one head and no query residual; its widths
    /// resolved by `cross_attention_shape_for_attention` as for the flow decoder.
    pub fn multimodal_decoder_spec(&self) -> AttentionSpec {
        let q_dim = self
            .multimodal()
            .map_or(self.d_latents, |spec| spec.query_channels());
        let qk = match self.cross_attention_shape_for_attention {
            CrossAttentionShape::Query => q_dim,
            CrossAttentionShape::KeyValue => self.d_latents,
        };
        AttentionSpec {
            q_dim,
            kv_dim: self.d_latents,
            qk_channels: qk,
            v_channels: qk,
            num_heads: 1,
            widening_factor: 1,
            use_query_residual: false,
            activation: self.hidden_act,
        }
    }
}

/// transformers' `PerceiverConfig.output_shape` default: the multimodal model's reconstruction,
/// `[batch, frames, height, width]`.
pub const DEFAULT_OUTPUT_SHAPE: [usize; 4] = [1, 16, 224, 224];

/// The labels transformers gives a config that names none (`PretrainedConfig`'s default).
pub const DEFAULT_NUM_LABELS: usize = 2;

/// Pixels a side of one video patch of the multimodal model (`spatial_downsample`).
pub const VIDEO_PATCH: usize = 4;
/// Values of one video patch: 4 × 4 pixels × RGB, in `space_to_depth`'s order (row, column,
/// colour).
pub const VIDEO_PATCH_CHANNELS: usize = VIDEO_PATCH * VIDEO_PATCH * IMAGE_CHANNELS;
/// Fourier bands of the multimodal model's audio positions.
pub const AUDIO_FOURIER_BANDS: usize = 192;
/// Fourier bands of the multimodal model's video positions (each of time, rows, columns).
pub const VIDEO_FOURIER_BANDS: usize = 32;
/// Channels the multimodal preprocessor pads every modality's rows beyond the widest
/// (`min_padding_size`).
pub const MULTIMODAL_INPUT_PADDING: usize = 4;
/// Channels the multimodal decoder pads every modality's queries beyond the widest
/// (`PerceiverMultimodalDecoder`'s default `min_padding_size`, which the model keeps).
pub const MULTIMODAL_QUERY_PADDING: usize = 2;

/// The sizes of `PerceiverForMultimodalAutoencoding` (video + audio + label), from its config
/// ([`PerceiverConfig::multimodal`]). The modalities are always handled in transformers' sorted
/// order: audio, image (the video), label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultimodalSpec {
    /// Video frames in (`num_frames`); also the video positions' top frequency in time.
    pub num_frames: usize,
    /// The video positions' top frequencies in space (`image_size`, in both directions). Only
    /// that: transformers cuts frames of any size into patches, and the frames this library
    /// takes are the reconstruction's ([`frame_size`](Self::frame_size)). DeepMind's
    /// video_autoencoding Colab uses 56 (`IMG_SZ`, the patch grid of its 224×224 frames) for
    /// both the input's and the queries' features, as transformers' default does.
    pub image_size: usize,
    /// Audio samples per frame (`audio_samples_per_frame`).
    pub audio_samples_per_frame: usize,
    /// Audio samples per patch (`samples_per_patch`), dividing the audio's length.
    pub samples_per_patch: usize,
    /// The video queries' grid: frames, rows, columns (`output_shape[1..4]`); rows and columns
    /// are also the size of the frames in.
    pub output_dims: [usize; 3],
    /// Width of every decoded row before the per-modality projections (`output_num_channels`).
    pub output_num_channels: usize,
    /// Width of the label's trainable query (`_label_trainable_num_channels`).
    pub label_query_channels: usize,
    /// Labels (one-hot input width and logits out).
    pub num_labels: usize,
}

impl MultimodalSpec {
    /// Audio samples in: `num_frames · audio_samples_per_frame`.
    pub fn audio_samples(&self) -> usize {
        self.num_frames.saturating_mul(self.audio_samples_per_frame)
    }

    /// Audio patches: input rows and output queries of the audio (0 for a `samples_per_patch`
    /// of 0, which [`validate`](Self::validate) refuses).
    pub fn audio_patches(&self) -> usize {
        self.audio_samples()
            .checked_div(self.samples_per_patch)
            .unwrap_or(0)
    }

    /// The pixels of one clip: `num_frames` frames of [`frame_size`](Self::frame_size).
    pub fn clip_pixels(&self) -> u64 {
        let (h, w) = self.frame_size();
        (self.num_frames as u64)
            .saturating_mul(h as u64)
            .saturating_mul(w as u64)
    }

    /// The size (height, width) of the frames in: the reconstruction's (`output_shape[2..4]`),
    /// as an autoencoder's input and output share one size.
    pub fn frame_size(&self) -> (usize, usize) {
        (self.output_dims[1], self.output_dims[2])
    }

    /// The grid of video patches: frames, patch rows, patch columns.
    pub fn patch_grid(&self) -> [usize; 3] {
        let (h, w) = self.frame_size();
        [self.num_frames, h / VIDEO_PATCH, w / VIDEO_PATCH]
    }

    /// Video input rows: a row per 4 × 4 patch of every frame.
    pub fn video_rows(&self) -> usize {
        self.patch_grid().into_iter().fold(1, usize::saturating_mul)
    }

    /// Input rows: audio patches, video patches, the label.
    pub fn input_rows(&self) -> usize {
        self.audio_patches()
            .saturating_add(self.video_rows())
            .saturating_add(1)
    }

    /// Video queries: one per pixel of [`output_dims`](Self::output_dims).
    pub fn image_queries(&self) -> usize {
        self.output_dims.into_iter().fold(1, usize::saturating_mul)
    }

    /// The most chunks the queries can be decoded in without an empty one: the modality with
    /// the most queries, one of them a chunk (the label joins the last).
    pub fn most_chunks(&self) -> usize {
        self.image_queries().max(self.audio_patches()).max(1)
    }

    /// The audio positions' Fourier features (input rows and queries): 192 bands over the
    /// audio's length.
    pub fn audio_fourier(&self) -> FourierSpec<1> {
        FourierSpec {
            num_bands: AUDIO_FOURIER_BANDS,
            max_resolution: [self.audio_samples()],
            concat_pos: true,
            sine_only: false,
        }
    }

    /// The video positions' Fourier features (input rows and queries): 32 bands over
    /// `(num_frames, image_size, image_size)`.
    pub fn video_fourier(&self) -> FourierSpec<3> {
        FourierSpec {
            num_bands: VIDEO_FOURIER_BANDS,
            max_resolution: [self.num_frames, self.image_size, self.image_size],
            concat_pos: true,
            sine_only: false,
        }
    }

    /// Channels of each modality's preprocessed rows before padding: audio, image, label.
    pub fn modality_channels(&self) -> [usize; 3] {
        [
            self.samples_per_patch
                .saturating_add(self.audio_fourier().channels()),
            VIDEO_PATCH_CHANNELS + self.video_fourier().channels(),
            self.num_labels,
        ]
    }

    /// Channels of every input row: the widest modality + 4 (the encoder's key/value width).
    pub fn input_channels(&self) -> usize {
        let widest = self.modality_channels().into_iter().max().unwrap_or(0);
        widest.saturating_add(MULTIMODAL_INPUT_PADDING)
    }

    /// Channels of each modality's queries before padding: audio, image, label.
    pub fn modality_query_channels(&self) -> [usize; 3] {
        [
            self.audio_fourier().channels(),
            self.video_fourier().channels(),
            self.label_query_channels,
        ]
    }

    /// Channels of every query: the widest modality's + 2.
    pub fn query_channels(&self) -> usize {
        let widest = self.modality_query_channels().into_iter().max().unwrap_or(0);
        widest.saturating_add(MULTIMODAL_QUERY_PADDING)
    }

    /// Checks every count against its bound, and the divisibility the reshapes need (what
    /// [`PerceiverConfig::multimodal`] checks). The fields are public, so a spec built by hand
    /// may be absurd: the counts above saturate rather than overflow, and this refuses them.
    pub fn validate(&self) -> Result<()> {
        use bounds::*;
        NUM_FRAMES.check("num_frames", self.num_frames as u64)?;
        IMAGE_SIZE.check("image_size", self.image_size as u64)?;
        AUDIO_SAMPLES_PER_FRAME.check("audio_samples_per_frame", self.audio_samples_per_frame as u64)?;
        SAMPLES_PER_PATCH.check("samples_per_patch", self.samples_per_patch as u64)?;
        NUM_FRAMES.check("output_shape[1] (frames)", self.output_dims[0] as u64)?;
        IMAGE_SIZE.check("output_shape[2] (height)", self.output_dims[1] as u64)?;
        IMAGE_SIZE.check("output_shape[3] (width)", self.output_dims[2] as u64)?;
        WIDTH.check("output_num_channels", self.output_num_channels as u64)?;
        WIDTH.check("_label_trainable_num_channels", self.label_query_channels as u64)?;
        NUM_LABELS.check("num_labels", self.num_labels as u64)?;
        let (h, w) = self.frame_size();
        if !h.is_multiple_of(VIDEO_PATCH) || !w.is_multiple_of(VIDEO_PATCH) {
            return Err(Error::InvalidConfig(format!(
                "output_shape's frames ({h}x{w}) must be multiples of {VIDEO_PATCH} a side: the frames in, of that size, are cut into {VIDEO_PATCH}x{VIDEO_PATCH} patches"
            )));
        }
        if !self.audio_samples().is_multiple_of(self.samples_per_patch) {
            return Err(Error::InvalidConfig(format!(
                "samples_per_patch ({}) must divide the audio's num_frames x audio_samples_per_frame = {} samples",
                self.samples_per_patch,
                self.audio_samples()
            )));
        }
        MULTIMODAL_INPUT_ROWS.check(
            "input rows (audio patches + video patches + 1)",
            self.input_rows() as u64,
        )?;
        MULTIMODAL_OUTPUT_QUERIES.check(
            "output queries (output_shape pixels + audio patches)",
            (self.image_queries() + self.audio_patches()) as u64,
        )?;
        WIDTH.check(
            "input channels (widest modality + 4)",
            self.input_channels() as u64,
        )?;
        WIDTH.check("query channels (widest query + 2)", self.query_channels() as u64)?;
        Ok(())
    }

    /// Parameters outside the encoder and latent stack: paddings, mask tokens, the label query,
    /// the decoder (`decoder`: its cross-attention) and the projections.
    fn num_parameters(&self, decoder: &AttentionSpec) -> [u64; 7] {
        let n = |v: usize| v as u64;
        let (input, query) = (n(self.input_channels()), n(self.query_channels()));
        let padding: u64 = self.modality_channels().iter().map(|&c| input - n(c)).sum();
        let query_padding: u64 = self.modality_query_channels().iter().map(|&c| query - n(c)).sum();
        let out = n(self.output_num_channels);
        let heads = [n(self.samples_per_patch), n(IMAGE_CHANNELS), n(self.num_labels)]
            .iter()
            .map(|&k| out * k + k)
            .sum();
        [
            padding,
            3 * input, // a mask token per modality
            n(self.label_query_channels),
            query_padding,
            decoder.num_parameters(true),
            query * out + out, // final layer
            heads,
        ]
    }
}

/// transformers' `PerceiverConfig.train_size` default (the optical-flow model's frame size).
pub const DEFAULT_TRAIN_SIZE: [usize; 2] = [368, 496];

/// The optical-flow model's input part (transformers' `PerceiverImagePreprocessor` as
/// `PerceiverForOpticalFlow` builds it, DeepMind's `ImagePreprocessor(prep_type='patches')`):
/// each pixel's 3×3 neighbourhood in both frames (54 values), a linear layer to
/// [`FLOW_FEATURES`] channels, then Fourier features of the pixel's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInputSpec {
    /// The position features, their top frequencies set by `train_size`.
    pub fourier: FourierSpec,
}

/// Frames of a flow input.
pub const FLOW_FRAMES: usize = 2;
/// The side of each pixel's patch in a flow input.
pub const FLOW_PATCH: usize = 3;
/// Channels of a pixel's patches in both frames: 2 × 3 × 3 × RGB.
pub const FLOW_PATCH_CHANNELS: usize = FLOW_FRAMES * FLOW_PATCH * FLOW_PATCH * IMAGE_CHANNELS;
/// The width the patches are projected to (`conv_after_patches`).
pub const FLOW_FEATURES: usize = 64;

impl FlowInputSpec {
    /// Channels of each row of the encoder's input (322 for the released model).
    pub fn channels(&self) -> usize {
        FLOW_FEATURES + self.fourier.channels()
    }
}

/// transformers' `PerceiverConfig.image_size` default.
pub const DEFAULT_IMAGE_SIZE: usize = 56;

/// Fourier position features (transformers' `PerceiverFourierPositionEncoding`, DeepMind's
/// `FourierPositionEncoding`): for each of the `N` dimensions, `num_bands`
/// frequencies spaced linearly from 1 to half the resolution, their sines and cosines, and the
/// raw positions in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FourierSpec<const N: usize = 2> {
    /// Frequency bands per dimension.
    pub num_bands: usize,
    /// The resolution each dimension's top frequency is the Nyquist frequency of (one per
    /// dimension: 2 for images, 3 for video, 1 for audio).
    pub max_resolution: [usize; N],
    /// Put the positions themselves in front of the features.
    pub concat_pos: bool,
    /// Sines only (no cosines).
    pub sine_only: bool,
}

impl<const N: usize> FourierSpec<N> {
    /// Channels per position.
    pub fn channels(&self) -> usize {
        let dims = N;
        let phases = if self.sine_only { 1 } else { 2 };
        dims * self.num_bands * phases + if self.concat_pos { dims } else { 0 }
    }
}

/// How an image classifier's preprocessor turns pixels into the encoder's input: fixed by the
/// transformers class (its constructor's arguments), not read from config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageInputSpec {
    /// `PerceiverForImageClassificationLearned`: a 1×1 convolution to `channels`, concatenated
    /// with a trainable position per pixel (`image_size²` rows) projected by a linear layer.
    Conv1x1 {
        /// Output channels of the convolution, and of the position projection.
        channels: usize,
    },
    /// `PerceiverForImageClassificationFourier`: the pixels themselves with Fourier features.
    Pixels {
        /// The features concatenated to each pixel.
        fourier: FourierSpec,
    },
    /// `PerceiverForImageClassificationConvProcessing`: a 7×7 stride-2 convolution, BatchNorm,
    /// ReLU and a 3×3 stride-2 max-pool (4× smaller per side), with Fourier features.
    Conv {
        /// Output channels of the convolution.
        channels: usize,
        /// The features concatenated to each position.
        fourier: FourierSpec,
        /// How the convolution and the max-pool pad (config.json's [`STEM_PADDING_KEY`]).
        padding: StemPadding,
    },
}

/// Colour channels of an image.
pub const IMAGE_CHANNELS: usize = 3;

impl ImageInputSpec {
    /// The preprocessor of an image classifier's class; `None` for other classes.
    pub fn of(architecture: Architecture) -> Option<Self> {
        let fourier = |resolution| FourierSpec {
            num_bands: 64,
            max_resolution: [resolution; 2],
            concat_pos: true,
            sine_only: false,
        };
        match architecture {
            Architecture::ImageClassificationLearned => Some(Self::Conv1x1 { channels: 256 }),
            Architecture::ImageClassificationFourier => Some(Self::Pixels {
                fourier: fourier(224),
            }),
            Architecture::ImageClassificationConvProcessing => Some(Self::Conv {
                channels: 64,
                fourier: fourier(56),
                padding: StemPadding::Transformers,
            }),
            Architecture::MaskedLm
            | Architecture::SequenceClassification
            | Architecture::OpticalFlow
            | Architecture::MultimodalAutoencoding => None,
        }
    }

    /// Channels of each row of the encoder's input.
    pub fn channels(&self) -> usize {
        match self {
            Self::Conv1x1 { channels } => 2 * channels,
            Self::Pixels { fourier } => IMAGE_CHANNELS + fourier.channels(),
            Self::Conv {
                channels, fourier, ..
            } => channels + fourier.channels(),
        }
    }

    /// Parameters of the preprocessor (BatchNorm statistics included).
    fn num_parameters(&self, image_size: usize) -> u64 {
        let n = |v: usize| v as u64;
        match *self {
            Self::Conv1x1 { channels } => {
                let c = n(channels);
                let conv = n(IMAGE_CHANNELS) * c + c;
                let table = n(image_size).saturating_mul(n(image_size)).saturating_mul(c);
                let projection = c * c + c;
                conv.saturating_add(table).saturating_add(projection)
            }
            Self::Pixels { .. } => 0,
            // Kernel, then BatchNorm's weight, bias, mean and variance.
            Self::Conv { channels, .. } => n(channels) * n(IMAGE_CHANNELS) * 49 + 4 * n(channels),
        }
    }
}

/// The model classes of transformers' Perceiver family this library builds, named as in a
/// config.json's `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Architecture {
    /// `PerceiverForMaskedLM`: bytes in, a logit per vocabulary id at every position out.
    MaskedLm,
    /// `PerceiverForSequenceClassification`: bytes in, one logit per label out.
    SequenceClassification,
    /// `PerceiverForImageClassificationLearned`: pixels through a 1×1 convolution, with
    /// trainable positions.
    ImageClassificationLearned,
    /// `PerceiverForImageClassificationFourier`: raw pixels with Fourier position features.
    ImageClassificationFourier,
    /// `PerceiverForImageClassificationConvProcessing`: a convolutional stem, then Fourier
    /// position features.
    ImageClassificationConvProcessing,
    /// `PerceiverForOpticalFlow`: two frames' 3×3 patches with Fourier position features in, a
    /// flow vector per pixel out, the input's own rows as the decoder's queries.
    OpticalFlow,
    /// `PerceiverForMultimodalAutoencoding`: video, audio and a (masked) label in, any subset
    /// of the video's pixels, the audio's patches and the label's logits out.
    MultimodalAutoencoding,
}

impl Architecture {
    /// Every architecture, for tests and documentation.
    pub const ALL: [Architecture; 7] = [
        Self::MaskedLm,
        Self::SequenceClassification,
        Self::ImageClassificationLearned,
        Self::ImageClassificationFourier,
        Self::ImageClassificationConvProcessing,
        Self::OpticalFlow,
        Self::MultimodalAutoencoding,
    ];

    /// transformers' class name, as config.json's `architectures` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MaskedLm => "PerceiverForMaskedLM",
            Self::SequenceClassification => "PerceiverForSequenceClassification",
            Self::ImageClassificationLearned => "PerceiverForImageClassificationLearned",
            Self::ImageClassificationFourier => "PerceiverForImageClassificationFourier",
            Self::ImageClassificationConvProcessing => "PerceiverForImageClassificationConvProcessing",
            Self::OpticalFlow => "PerceiverForOpticalFlow",
            Self::MultimodalAutoencoding => "PerceiverForMultimodalAutoencoding",
        }
    }

    /// Whether the model answers with one set of label logits per input.
    pub fn is_classifier(self) -> bool {
        !matches!(
            self,
            Self::MaskedLm | Self::OpticalFlow | Self::MultimodalAutoencoding
        )
    }

    /// Whether the model reads single images (else token ids, or frame pairs for flow).
    pub fn reads_images(self) -> bool {
        ImageInputSpec::of(self).is_some()
    }

    /// The architecture config.json's `architectures` names (its first entry, as transformers'
    /// auto classes read it); a config without one is the masked LM, the layout this crate
    /// started with.
    pub fn of(config: &PerceiverConfig) -> Result<Self> {
        let named = config
            .extra
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        let Some(named) = named else {
            return Ok(Self::MaskedLm);
        };
        Self::ALL
            .into_iter()
            .find(|a| a.name() == named)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                name: named.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let c = PerceiverConfig::default();
        c.validate().unwrap();
        let enc = c.encoder_cross_attention_spec();
        assert_eq!((enc.qk_channels, enc.v_channels), (768, 768));
        let sa = c.self_attention_spec();
        assert_eq!((sa.qk_channels, sa.v_channels), (1280, 1280));
    }

    #[test]
    fn released_checkpoint_config_parses() {
        // The fields of deepmind/language-perceiver's config.json that matter.
        let text = r#"{"architectures":["PerceiverForMaskedLM"],"model_type":"perceiver",
            "d_latents":1280,"d_model":768,"hidden_act":"gelu","qk_channels":256,"v_channels":1280,
            "num_latents":256,"num_blocks":1,"num_self_attends_per_block":26,
            "cross_attention_shape_for_attention":"kv","layer_norm_eps":1e-12,
            "image_size":56,"train_size":[368,496],"torch_dtype":"float32"}"#;
        let c = PerceiverConfig::from_json_str(text).unwrap();
        assert_eq!(c.hidden_act, Activation::GeluErf);
        let enc = c.encoder_cross_attention_spec();
        assert_eq!((enc.qk_channels, enc.v_channels), (256, 1280));
        let dec = c.masked_lm_decoder_spec();
        assert_eq!((dec.qk_channels, dec.v_channels, dec.num_heads), (256, 768, 8));
        // Unknown fields survive a round trip.
        let again = PerceiverConfig::from_json_str(&c.to_json_string()).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.extra["train_size"], serde_json::json!([368, 496]));
    }

    #[test]
    fn tanh_gelu_names_map_to_one_variant() {
        for name in ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"] {
            let c = PerceiverConfig::from_json_str(&format!(
                r#"{{"hidden_act":"{name}","qk_channels":256,"v_channels":1280}}"#
            ))
            .unwrap();
            assert_eq!(c.hidden_act, Activation::GeluTanh);
        }
    }

    #[test]
    fn bad_configs_are_rejected_with_their_values() {
        let err = PerceiverConfig::from_json_str(r#"{"qk_channels": 250}"#).unwrap_err();
        assert!(err.to_string().contains("250"), "{err}");
        let err = PerceiverConfig::from_json_str(r#"{"v_channels": 512}"#).unwrap_err();
        assert!(err.to_string().contains("512"), "{err}");
        let err = PerceiverConfig::from_json_str(r#"{"d_latents": 1284, "v_channels": 1284}"#).unwrap_err();
        assert!(err.to_string().contains("1284"), "{err}");
        let err = PerceiverConfig::from_json_str(r#"{"hidden_act": "swiglu"}"#).unwrap_err();
        assert!(err.to_string().contains("swiglu"), "{err}");
        assert!(PerceiverConfig::from_json_str(r#"{"num_latents": 0}"#).is_err());
        assert!(PerceiverConfig::from_json_str("not json").is_err());
    }

    /// A small valid layout to change one field of at a time.
    fn small() -> serde_json::Map<String, serde_json::Value> {
        let json = serde_json::json!({
            "num_latents": 8, "d_latents": 32, "d_model": 16, "num_self_attends_per_block": 2,
            "num_self_attention_heads": 2, "num_cross_attention_heads": 2,
            "max_position_embeddings": 64, "qk_channels": 16, "v_channels": 32
        });
        json.as_object().unwrap().clone()
    }

    fn with(field: &str, value: serde_json::Value) -> Result<PerceiverConfig> {
        let mut json = small();
        json.insert(field.into(), value);
        PerceiverConfig::from_json_str(&serde_json::Value::Object(json).to_string())
    }

    /// The error names the field, its value and the bound, as data and in its message.
    fn assert_out_of_range(result: Result<PerceiverConfig>, field: &str, value: u64, bound: u64) {
        let err = result.unwrap_err();
        let message = err.to_string();
        match err {
            Error::ConfigOutOfRange {
                field: f,
                value: v,
                min,
                max,
                ..
            } => {
                assert_eq!((f, v), (field, value), "{message}");
                assert!(bound == min || bound == max, "{message}");
            }
            other => panic!("{field} = {value}: expected ConfigOutOfRange, got {other}"),
        }
        for needle in [field.to_string(), value.to_string(), bound.to_string()] {
            assert!(message.contains(&needle), "{message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn num_blocks_is_bounded_though_no_tensor_pins_it() {
        assert_eq!(bounds::NUM_BLOCKS.max, 32);
        with("num_blocks", 32.into()).unwrap();
        assert_out_of_range(with("num_blocks", 33.into()), "num_blocks", 33, 32);
        assert_out_of_range(
            with("num_blocks", 1_000_000_000_000u64.into()),
            "num_blocks",
            1_000_000_000_000,
            32,
        );
        assert_out_of_range(with("num_blocks", 0.into()), "num_blocks", 0, 1);
        let message = with("num_blocks", 33.into()).unwrap_err().to_string();
        assert!(message.contains("1 and 8"), "the reason is given: {message}");
    }

    #[test]
    fn every_count_is_refused_above_and_below_its_range() {
        use bounds::*;
        let fields = [
            ("num_blocks", NUM_BLOCKS),
            ("num_self_attends_per_block", NUM_SELF_ATTENDS_PER_BLOCK),
            ("num_latents", NUM_LATENTS),
            ("d_latents", WIDTH),
            ("d_model", WIDTH),
            ("qk_channels", WIDTH),
            ("v_channels", WIDTH),
            ("num_self_attention_heads", HEADS),
            ("num_cross_attention_heads", HEADS),
            ("self_attention_widening_factor", WIDENING_FACTOR),
            ("cross_attention_widening_factor", WIDENING_FACTOR),
            ("vocab_size", VOCAB_SIZE),
            ("max_position_embeddings", MAX_POSITION_EMBEDDINGS),
        ];
        for (field, range) in fields {
            assert_out_of_range(
                with(field, (range.max + 1).into()),
                field,
                range.max + 1,
                range.max,
            );
            assert_out_of_range(with(field, u64::MAX.into()), field, u64::MAX, range.max);
            assert_out_of_range(
                with(field, (range.min - 1).into()),
                field,
                range.min - 1,
                range.min,
            );
        }
        // Every count the config has is in the list above (the unset widths resolve to others).
        let listed: Vec<&str> = PerceiverConfig::default().counts().iter().map(|c| c.0).collect();
        for field in listed {
            assert!(fields.iter().any(|f| f.0 == field), "{field} untested");
        }
    }

    #[test]
    fn counts_at_their_upper_bound_are_accepted_when_the_model_is_small() {
        with("num_blocks", bounds::NUM_BLOCKS.max.into()).unwrap();
        with("num_latents", bounds::NUM_LATENTS.max.into()).unwrap();
        with("vocab_size", bounds::VOCAB_SIZE.max.into()).unwrap();
        with(
            "max_position_embeddings",
            bounds::MAX_POSITION_EMBEDDINGS.max.into(),
        )
        .unwrap();
        with(
            "cross_attention_widening_factor",
            bounds::WIDENING_FACTOR.max.into(),
        )
        .unwrap();
    }

    #[test]
    fn wrong_types_and_negative_counts_are_refused() {
        for value in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("8"),
            serde_json::json!(1e30),
        ] {
            let err = with("num_blocks", value.clone()).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{value}: {err}");
        }
    }

    #[test]
    fn the_parameter_count_is_the_tensors_sum() {
        let mut configs = vec![PerceiverConfig::language_perceiver(), PerceiverConfig::default()];
        for (shape, residual, widening) in [
            (CrossAttentionShape::Query, false, 4),
            (CrossAttentionShape::KeyValue, true, 2),
        ] {
            let mut c =
                PerceiverConfig::from_json_str(&serde_json::Value::Object(small()).to_string()).unwrap();
            c.cross_attention_shape_for_attention = shape;
            c.use_query_residual = residual;
            c.self_attention_widening_factor = widening;
            c.cross_attention_widening_factor = widening + 1;
            c.qk_channels = None;
            c.v_channels = None;
            configs.push(c);
        }
        // The multimodal autoencoder with transformers' defaults (the released sizes but for the
        // labels), and a small one with the "q" shape rule.
        for (shape, labels) in [("kv", 700), ("q", 3)] {
            let text = format!(
                r#"{{"architectures": ["PerceiverForMultimodalAutoencoding"], "num_latents": 16,
                "d_latents": 64, "num_cross_attention_heads": 1, "num_self_attends_per_block": 2,
                "cross_attention_shape_for_attention": "{shape}", "num_labels": {labels}}}"#
            );
            configs.push(PerceiverConfig::from_json_str(&text).unwrap());
        }
        for config in configs {
            let tensors = crate::checkpoint::expected_tensors(&config).unwrap();
            let sum: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert_eq!(config.num_parameters(), sum as u64, "{config:?}");
        }
        assert_eq!(
            PerceiverConfig::language_perceiver().num_parameters(),
            201_108_230
        );
    }

    #[test]
    fn a_model_too_large_to_build_is_refused_by_its_parameter_count() {
        // Every field in range, but 26 layers of six 16384² matrices: over 40G parameters.
        let text = r#"{"d_latents": 16384, "qk_channels": 16384, "v_channels": 16384}"#;
        let err = PerceiverConfig::from_json_str(text).unwrap_err();
        assert!(
            matches!(err, Error::ConfigOutOfRange { field, max, .. } if field.starts_with("parameters") && max == 1 << 31),
            "{err}"
        );
        // Unvalidated extremes saturate instead of overflowing.
        let huge = PerceiverConfig {
            d_latents: usize::MAX,
            num_self_attends_per_block: usize::MAX,
            ..PerceiverConfig::default()
        };
        assert_eq!(huge.num_parameters(), u64::MAX);
    }

    #[test]
    fn an_oversized_config_file_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let padding = " ".repeat(MAX_CONFIG_BYTES as usize);
        std::fs::write(&path, format!("{{{padding}}}")).unwrap();
        let err = PerceiverConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
        std::fs::write(&path, "{}").unwrap();
        PerceiverConfig::from_file(&path).unwrap();
    }

    /// A spec built by hand (its fields are public) with absurd counts: its derived counts
    /// saturate instead of overflowing (a panic in debug builds, a wrapped count in release),
    /// and `validate` refuses it.
    #[test]
    fn a_hand_built_multimodal_spec_never_overflows() {
        let released = PerceiverConfig::from_json_str(
            r#"{"architectures":["PerceiverForMultimodalAutoencoding"],"num_labels":700}"#,
        )
        .unwrap()
        .multimodal()
        .unwrap();
        released.validate().unwrap();
        let absurd = MultimodalSpec {
            num_frames: usize::MAX,
            audio_samples_per_frame: 2,
            samples_per_patch: 0,
            output_dims: [usize::MAX, 8, 8],
            output_num_channels: usize::MAX,
            label_query_channels: usize::MAX,
            num_labels: usize::MAX,
            ..released
        };
        assert_eq!(absurd.audio_samples(), usize::MAX);
        assert_eq!(absurd.audio_patches(), 0);
        assert_eq!(absurd.image_queries(), usize::MAX);
        assert_eq!(absurd.video_rows(), usize::MAX);
        assert_eq!(absurd.input_rows(), usize::MAX);
        assert_eq!(absurd.input_channels(), usize::MAX);
        assert_eq!(absurd.query_channels(), usize::MAX);
        assert!(absurd.validate().is_err());
        let patches = MultimodalSpec {
            samples_per_patch: usize::MAX,
            ..released
        };
        assert_eq!(patches.modality_channels()[0], usize::MAX);
        assert!(patches.validate().is_err());
    }
}
