//! The latent stack: `num_blocks` × the same `num_self_attends_per_block` self-attention layers
//! (weights shared across blocks), on the latents only (transformers' `PerceiverEncoder.self_attends`;
//! DeepMind's `PerceiverEncoder`, second half). Most of a pass's work, and independent of the
//! input's and the output's sizes.

use crate::attention::AttentionLayer;
use crate::checkpoint::names::LayerNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::runtime::item_ranges;

/// Latent rows a group of a batch holds in [`LatentStack::forward`]: two texts of the language
/// model's 256 latents, one image of an ImageNet model's 512.
const GROUP_ROWS: usize = 512;

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
    ///
    /// Items are independent here, so a batch runs in groups of about [`GROUP_ROWS`] latent
    /// rows (at least one item), each group through every layer before the next: a layer's
    /// intermediates (normed rows, queries, keys, values) never exceed a group's, and products
    /// of that many rows keep their operands closer in cache than a whole batch's.
    pub(crate) fn forward(
        &self,
        latents: Vec<f32>,
        num_latents: usize,
        items: usize,
        threads: usize,
    ) -> Vec<f32> {
        self.forward_in_groups(latents, num_latents, items, GROUP_ROWS, threads)
    }

    /// [`forward`](Self::forward) in groups of about `group_rows` latent rows.
    pub(crate) fn forward_in_groups(
        &self,
        mut latents: Vec<f32>,
        num_latents: usize,
        items: usize,
        group_rows: usize,
        threads: usize,
    ) -> Vec<f32> {
        if items == 0 || latents.is_empty() {
            return latents;
        }
        let per_group = (group_rows / num_latents.max(1)).clamp(1, items);
        let item_len = latents.len() / items;
        if per_group == items {
            return self.forward_group(latents, num_latents, items, threads);
        }
        for group in latents.chunks_mut(per_group * item_len) {
            let out = self.forward_group(group.to_vec(), num_latents, group.len() / item_len, threads);
            group.copy_from_slice(&out);
        }
        latents
    }

    fn forward_group(
        &self,
        mut latents: Vec<f32>,
        num_latents: usize,
        items: usize,
        threads: usize,
    ) -> Vec<f32> {
        let items = item_ranges(std::iter::repeat_n(num_latents, items));
        for _ in 0..self.blocks {
            for layer in &self.layers {
                latents = layer.self_attend(latents, &items, threads);
            }
        }
        latents
    }

    /// Layer `index` of the block over `latents` (`[items · num_latents, d]`), its residuals
    /// added onto them.
    pub(crate) fn layer(
        &self,
        index: usize,
        latents: Vec<f32>,
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
        Ok(layer.self_attend(latents, &items, threads))
    }
}
