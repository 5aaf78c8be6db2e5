//! The optical-flow decoder: the encoder's own input rows are the queries (transformers'
//! `PerceiverOpticalFlowDecoder`, whose `decoder_query` returns the preprocessed inputs;
//! DeepMind's `FlowDecoder`: "we query the decoder using the first frame features"), one head,
//! no query residual. Every pixel of the tile is decoded.

use crate::attention::{AttentionLayer, Queries};
use crate::checkpoint::names::LayerNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::preprocess::InputArray;
use crate::runtime::item_ranges;

/// Input rows attending to the latents.
#[derive(Debug, Clone)]
pub struct FlowDecoder {
    cross_attention: AttentionLayer,
}

impl FlowDecoder {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &LayerNames) -> Result<Self> {
        Ok(Self {
            cross_attention: AttentionLayer::load(names, get)?,
        })
    }

    /// Channels of each decoded row (the input's width).
    pub fn channels(&self) -> usize {
        self.cross_attention.spec().q_dim
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        for dense in self.cross_attention.dense_layers() {
            dense.set_precision(precision);
        }
    }

    /// `[Σ input rows, channels]`: every row of `queries` (the encoder's input) decoded from
    /// its item's latents.
    pub(crate) fn forward(
        &self,
        latents: &[f32],
        num_latents: usize,
        queries: &InputArray,
        threads: usize,
    ) -> Result<Vec<f32>> {
        let items = queries.items.len();
        if latents.len() != items * num_latents * self.cross_attention.spec().kv_dim {
            return Err(Error::InvalidInput(format!(
                "{} latent values for {items} inputs of {num_latents} latents",
                latents.len()
            )));
        }
        let latent_items = item_ranges(std::iter::repeat_n(num_latents, items));
        Ok(self.cross_attention.forward(
            Queries::PerItem(&queries.values),
            &queries.items,
            Some((latents, &latent_items)),
            threads,
        ))
    }
}
