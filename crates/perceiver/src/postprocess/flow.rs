//! The optical-flow output: each decoded row projected onto two channels (u, v) and divided
//! by the decoder's `rescale_factor` (transformers' `PerceiverBasicDecoder.final_layer` then
//! `PerceiverOpticalFlowDecoder`'s `preds /= rescale_factor`; DeepMind's `FlowDecoder`).
//!
//! The result is transformers' logits. DeepMind's Colab multiplies them by its
//! `FLOW_SCALE_FACTOR` (20) to get pixels; [`crate::tasks::flow`] does the same.

use crate::checkpoint::names::LinearNames;
use crate::checkpoint::Param;
use crate::error::Result;
use crate::layers::{Dense, Precision};

/// The decoders' `rescale_factor` in both reference implementations.
pub const FLOW_RESCALE_FACTOR: f32 = 100.0;

/// Two flow channels per decoded row.
#[derive(Debug, Clone)]
pub struct FlowHead {
    final_layer: Dense,
}

impl FlowHead {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &LinearNames) -> Result<Self> {
        Ok(Self {
            final_layer: Dense::load(get, names)?,
        })
    }

    /// Values per row: 2.
    pub fn channels(&self) -> usize {
        self.final_layer.out_dim()
    }

    /// It stays f32 in bf16 mode: two outputs per row, a negligible product.
    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        self.final_layer.set_precision(Precision::F32);
    }

    pub(crate) fn forward(&self, hidden: &[f32], threads: usize) -> Vec<f32> {
        let mut flow = self.final_layer.forward(hidden, threads);
        for value in &mut flow {
            *value /= FLOW_RESCALE_FACTOR;
        }
        flow
    }
}
