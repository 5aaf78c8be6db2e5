//! A classifier's output: the decoder's one row per input projected onto the labels
//! (transformers' `PerceiverBasicDecoder.final_layer` inside `PerceiverClassificationDecoder`;
//! DeepMind's `ClassificationDecoder` final linear layer).

use crate::checkpoint::names::LinearNames;
use crate::checkpoint::Param;
use crate::error::Result;
use crate::layers::{Dense, Precision};

/// Label logits from decoded rows.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    final_layer: Dense,
}

impl ClassifierHead {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &LinearNames) -> Result<Self> {
        Ok(Self {
            final_layer: Dense::load(get, names)?,
        })
    }

    /// Labels.
    pub fn num_labels(&self) -> usize {
        self.final_layer.out_dim()
    }

    /// It stays f32 in bf16 mode: one row per input, and its rounding would reach every logit.
    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        self.final_layer.set_precision(Precision::F32);
    }

    pub(crate) fn forward(&self, hidden: &[f32], threads: usize) -> Vec<f32> {
        self.final_layer.forward(hidden, threads)
    }
}
