//! The latent stack: `num_blocks` × the same `num_self_attends_per_block` self-attention layers
//! (weights shared across blocks), on the latents only (transformers' `PerceiverEncoder.self_attends`;
//! DeepMind's `PerceiverEncoder`, second half). Most of a pass's work, and independent of the
//! input's and the output's sizes.

use crate::attention::{AttentionLayer, Queries};
use crate::checkpoint::names::LayerNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::runtime::item_ranges;

/// Self-attention layers repeated over blocks.
#[derive(Debug, Clone)]
pub struct LatentStack {
    blocks: usize,
    layers: Vec<AttentionLayer>,
}

impl LatentStack {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        blocks: usize,
        names: &[LayerNames],
    ) -> Result<Self> {
        Ok(Self {
            blocks,
            layers: names
                .iter()
                .map(|layer| AttentionLayer::load(layer, get))
                .collect::<Result<_>>()?,
        })
    }

    /// Layers per block.
    pub fn layers_per_block(&self) -> usize {
        self.layers.len()
    }

    /// How many times the block runs.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        for layer in &mut self.layers {
            layer.set_precision(precision);
        }
    }

    /// Every block's layers over `latents` (`[items · num_latents, d]`).
    pub(crate) fn forward(
        &self,
        mut latents: Vec<f32>,
        num_latents: usize,
        items: usize,
        threads: usize,
    ) -> Vec<f32> {
        let items = item_ranges(std::iter::repeat_n(num_latents, items));
        for _ in 0..self.blocks {
            for layer in &self.layers {
                latents = layer.forward(Queries::PerItem(&latents), &items, None, threads);
            }
        }
        latents
    }

    /// Layer `index` of the block over `latents` (`[items · num_latents, d]`).
    pub(crate) fn layer(
        &self,
        index: usize,
        latents: &[f32],
        num_latents: usize,
        items: usize,
        threads: usize,
    ) -> Result<Vec<f32>> {
        let layer = self.layers.get(index).ok_or_else(|| {
            Error::InvalidInput(format!(
                "latent layer {index} does not exist: the model has {}",
                self.layers.len()
            ))
        })?;
        let items = item_ranges(std::iter::repeat_n(num_latents, items));
        Ok(layer.forward(Queries::PerItem(latents), &items, None, threads))
    }
}
