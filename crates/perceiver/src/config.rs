//! The model configuration, as Hugging Face's `PerceiverConfig` writes it to `config.json`.
//!
//! Field names are transformers' (DeepMind's Haiku names in comments). [`PerceiverConfig::validate`]
//! checks the values, and the `*_spec` methods resolve the `None`s of the config into concrete
//! channel counts exactly as transformers' `PerceiverAttention` does, so that the same config.json
//! builds the same shapes here and there.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    #[serde(rename = "sigmoid")]
    Sigmoid,
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
    pub num_self_attention_heads: usize,
    pub num_cross_attention_heads: usize,
    /// Query/key width of the encoder's attentions; `None` resolves as transformers does.
    pub qk_channels: Option<usize>,
    /// Value width of the encoder's attentions; `None` resolves as transformers does.
    pub v_channels: Option<usize>,
    pub cross_attention_shape_for_attention: CrossAttentionShape,
    pub self_attention_widening_factor: usize,
    pub cross_attention_widening_factor: usize,
    pub hidden_act: Activation,
    /// Dropout on attention probabilities during training (transformers' only dropout).
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    /// Written by transformers but never used: its LayerNorms use PyTorch's default eps (1e-5),
    /// which is [`LAYER_NORM_EPS`].
    pub layer_norm_eps: f64,
    /// Residual from the latents around the encoder cross-attention.
    pub use_query_residual: bool,
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
    pub qk_channels: usize,
    pub v_channels: usize,
    pub num_heads: usize,
    /// MLP hidden width = `widening_factor * q_dim`.
    pub widening_factor: usize,
    /// Add the (un-normalised) queries to the attention output.
    pub use_query_residual: bool,
    pub activation: Activation,
}

impl AttentionSpec {
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

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
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
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_latents", self.num_latents),
            ("d_latents", self.d_latents),
            ("d_model", self.d_model),
            ("num_blocks", self.num_blocks),
            ("num_self_attends_per_block", self.num_self_attends_per_block),
            ("num_self_attention_heads", self.num_self_attention_heads),
            ("num_cross_attention_heads", self.num_cross_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::InvalidConfig(format!("{name} must be positive")));
            }
        }
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
        self.masked_lm_decoder_spec().check("decoder cross-attention")?;
        if self.vocab_size < crate::tokenizer::VOCAB_SIZE {
            return Err(Error::InvalidConfig(format!(
                "vocab_size ({}) is smaller than the bytes tokenizer's {} ids",
                self.vocab_size,
                crate::tokenizer::VOCAB_SIZE
            )));
        }
        Ok(())
    }

    /// The encoder cross-attention (latents attend to inputs), resolved as transformers'
    /// `PerceiverAttention(is_cross_attention=True, …)`.
    pub fn encoder_cross_attention_spec(&self) -> AttentionSpec {
        let (qk_channels, v_channels) = match self.qk_channels {
            // Unset: the width follows `cross_attention_shape_for_attention`, and values take it too.
            None => {
                let qk = match self.cross_attention_shape_for_attention {
                    CrossAttentionShape::Query => self.d_latents,
                    CrossAttentionShape::KeyValue => self.d_model,
                };
                (qk, self.v_channels.unwrap_or(qk))
            }
            Some(qk) => (qk, self.v_channels.unwrap_or(qk)),
        };
        AttentionSpec {
            q_dim: self.d_latents,
            kv_dim: self.d_model,
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
}
