//! The masked LM's output: `hidden · Eᵀ + bias`, E the input embedding table (tied), the bias its
//! own (transformers' `PerceiverEmbeddingDecoder`; DeepMind's `TextPostprocessor` on
//! `embed.embeddings`).

use crate::checkpoint::names::TensorName;
use crate::checkpoint::Param;
use crate::error::Result;
use crate::layers::{Dense, Precision};

/// Logits over the vocabulary from decoded rows.
#[derive(Debug, Clone)]
pub struct EmbeddingDecoder {
    output: Dense,
}

impl EmbeddingDecoder {
    /// `embeddings`: the preprocessor's table (shared, not copied); `bias` is read by name.
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        embeddings: Param,
        bias: &TensorName,
    ) -> Result<Self> {
        Ok(Self {
            output: Dense::new(embeddings, get(&bias.name)?),
        })
    }

    /// Logits per row.
    pub fn vocab_size(&self) -> usize {
        self.output.out_dim()
    }

    /// It stays f32 in bf16 mode: it is a small part of the work and its rounding would reach
    /// every logit.
    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        self.output.set_precision(Precision::F32);
    }

    pub(crate) fn forward(&self, hidden: &[f32], threads: usize) -> Vec<f32> {
        self.output.forward(hidden, threads)
    }
}
