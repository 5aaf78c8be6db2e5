//! The encoder: a cross-attention from the learned latent array onto the input array (transformers'
//! `PerceiverEncoder.cross_attention` with `PerceiverEmbeddings`; DeepMind's `PerceiverEncoder`,
//! first half). Its output, `num_latents` rows per item whatever the input's length, is what the
//! latent stack ([`crate::process`]) works on.

use crate::attention::{AttentionLayer, Queries};
use crate::checkpoint::names::EncoderNames;
use crate::checkpoint::Param;
use crate::error::Result;
use crate::layers::Precision;
use crate::preprocess::{InputArray, RowSource};
use crate::runtime::item_ranges;

/// Learned latents attending to the input.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `[num_latents, d_latents]`, the same queries for every item.
    latents: Param,
    cross_attention: AttentionLayer,
}

impl Encoder {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &EncoderNames) -> Result<Self> {
        Ok(Self {
            latents: get(&names.latents.name)?,
            cross_attention: AttentionLayer::load(&names.cross_attention, get)?,
        })
    }

    /// Latent rows per item.
    pub fn num_latents(&self) -> usize {
        self.latents.shape()[0]
    }

    /// Channels per latent.
    pub fn d_latents(&self) -> usize {
        self.latents.shape()[1]
    }

    /// Lets narrower heads of the cross-attention run on the bf16 kernel (for tests on small
    /// models).
    #[cfg(test)]
    pub(crate) fn set_bf16_min_head_width(&mut self, width: usize) {
        self.cross_attention.set_bf16_min_head_width(width);
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.cross_attention.set_precision(precision);
    }

    /// Each item's input rows onto the latents: `[items · num_latents, d_latents]`, item `i`'s
    /// latents in rows `i·num_latents..`.
    pub(crate) fn forward(&self, input: &InputArray, threads: usize) -> Vec<f32> {
        let latent_items = item_ranges(std::iter::repeat_n(self.num_latents(), input.items.len()));
        // Every item's queries are the same learned latents: normed and projected once.
        self.cross_attention.forward(
            Queries::Shared(self.latents.data()),
            &latent_items,
            Some((&input.values, &input.items)),
            threads,
        )
    }

    /// Each item's input rows onto the latents as [`forward`](Self::forward) does, with each
    /// item's rows made `block_rows` at a time by `sources(i)` and cross-attended block by
    /// block (for inputs too long to hold whole with their keys and values). Items run one after
    /// another; the latents are normed and projected once.
    pub(crate) fn forward_streamed<'a>(
        &self,
        items: usize,
        sources: &mut dyn FnMut(usize) -> Result<Box<dyn RowSource + 'a>>,
        block_rows: usize,
        threads: usize,
    ) -> Result<Vec<f32>> {
        let latents = self.latents.data();
        let projected = self.cross_attention.project_queries(latents, threads);
        let mut out = Vec::with_capacity(items * latents.len());
        for item in 0..items {
            let source = sources(item)?;
            out.extend(
                self.cross_attention
                    .forward_streamed(latents, &projected, &*source, block_rows, threads),
            );
        }
        Ok(out)
    }
}
