//! The byte-level masked language model (`deepmind/language-perceiver`).
//!
//! Mirrors transformers' `PerceiverForMaskedLM` (`PerceiverTextPreprocessor`, `PerceiverModel`
//! with a `PerceiverBasicDecoder`, `PerceiverEmbeddingDecoder`) and the model of DeepMind's
//! `masked_language_modelling.ipynb`. Inputs are byte ids plus a learned position per index;
//! outputs are logits over the 262 ids, from the decoder's output tied to the input embedding.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::variable;
use crate::model::decoder::BasicDecoder;
use crate::model::encoder::PerceiverEncoder;
use crate::model::ops;
use crate::model::text::TextPreprocessor;
use perceiver::checkpoint::names::MaskedLmNames;
use perceiver::config::PerceiverConfig;

/// The byte-level masked language model with trainable weights: embeddings and input positions,
/// encoder, decoder and the output projection tied to the embeddings.
#[derive(Debug, Clone)]
pub struct PerceiverForMaskedLM {
    /// Byte embeddings (also the tied output projection) and input positions.
    preprocessor: TextPreprocessor,
    encoder: PerceiverEncoder,
    decoder: BasicDecoder,
    /// `[vocab_size]`, added to the tied projection.
    output_bias: Tensor,
    config: PerceiverConfig,
}

impl PerceiverForMaskedLM {
    /// Builds the model from weights under the names of [`MaskedLmNames`] (transformers' names).
    /// The config must already be validated.
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let names = MaskedLmNames::new(cfg);
        Ok(Self {
            preprocessor: TextPreprocessor::new(&names.preprocessor, &vb)?,
            encoder: PerceiverEncoder::new(&names.encoder, cfg.num_blocks, &vb)?,
            decoder: BasicDecoder::new(&names.decoder, &vb)?,
            output_bias: variable(&vb, &names.output_bias)?,
            config: cfg.clone(),
        })
    }

    /// The model's architecture.
    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        self.output_bias.device()
    }

    /// The longest input (in ids, special tokens included) the model takes.
    pub fn max_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The encoder's input array: byte embeddings plus learned positions (transformers'
    /// `PerceiverTextPreprocessor`).
    ///
    /// # Shapes
    /// `input_ids`: `[batch, len]` u32 with `len ≤ max_len()`. Returns `[batch, len, d_model]`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.preprocessor.forward(input_ids)
    }

    /// The encoder (latents, cross-attention, self-attention blocks).
    pub fn encoder(&self) -> &PerceiverEncoder {
        &self.encoder
    }

    /// Encodes a batch of ids into latents.
    ///
    /// # Shapes
    /// `input_ids`: `[batch, len]` u32 with `len ≤ max_len()`; `attention_mask`: `[batch, len]`,
    /// 1 = real byte, 0 = padding. Returns `[batch, num_latents, d_latents]`.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.encoder.forward(&self.embed(input_ids)?, attention_mask)
    }

    /// Logits at the output positions `positions` (`[batch, n]` u32), `[batch, n, vocab]`.
    pub fn decode(&self, latents: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let hidden = self.decoder.forward(latents, positions)?;
        self.logits(&hidden)
    }

    /// Logits at every output position, `[batch, max_len, vocab]`: what transformers returns.
    pub fn decode_all(&self, latents: &Tensor) -> Result<Tensor> {
        let hidden = self.decoder.forward_all(latents)?;
        self.logits(&hidden)
    }

    /// Full forward pass as transformers runs it: every output position decoded.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let latents = self.encode(input_ids, attention_mask)?;
        self.decode_all(&latents)
    }

    /// Tied embedding decoder: `hidden · Eᵀ + bias`.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (batch, n, width) = hidden.dims3()?;
        let table = self.preprocessor.table();
        let logits = ops::linear(&hidden.reshape((batch * n, width))?, table, &self.output_bias)?;
        Ok(logits.reshape((batch, n, self.config.vocab_size))?)
    }
}
