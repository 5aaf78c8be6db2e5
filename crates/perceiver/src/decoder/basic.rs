//! The basic decoder: one trainable query per output position, normed and projected once when the
//! weights are packed, gathered per pass for the positions asked (transformers'
//! `PerceiverBasicDecoder` with trainable `output_position_encodings`; DeepMind's `BasicDecoder`).
//!
//! Queries are independent of each other, so decoding a subset of positions gives exactly those
//! rows of a full decode: the masked LM decodes only its masked bytes.

use crate::attention::{AttentionLayer, Queries};
use crate::checkpoint::names::BasicDecoderNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::position::TrainablePositions;
use crate::runtime::{item_ranges, on_pool};

/// Output-position queries attending to the latents.
#[derive(Debug, Clone)]
pub struct BasicDecoder {
    /// `[num_outputs, query channels]`.
    queries: TrainablePositions,
    /// `[num_outputs, qk_channels]`: the queries after the cross-attention's LayerNorm and query
    /// projection, the same for every pass (computed whenever the weights are packed). On the
    /// packed kernels a row's values do not depend on the rows computed with it, so gathering
    /// them gives bit for bit what projecting the gathered rows would; on the `gemm` crate's
    /// path, the same up to rounding.
    projected: Vec<f32>,
    cross_attention: AttentionLayer,
}

impl BasicDecoder {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        names: &BasicDecoderNames,
    ) -> Result<Self> {
        Ok(Self {
            queries: TrainablePositions::load(get, &names.queries)?,
            projected: Vec::new(),
            cross_attention: AttentionLayer::load(&names.cross_attention, get)?,
        })
    }

    /// Output positions with a query.
    pub fn num_outputs(&self) -> usize {
        self.queries.num_positions()
    }

    /// Channels of each decoded row (the queries' width).
    pub fn channels(&self) -> usize {
        self.queries.channels()
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.cross_attention.set_precision(precision);
        let threads = rayon::current_num_threads();
        self.projected = on_pool(|| {
            self.cross_attention
                .project_queries(self.queries.table(), threads)
        });
    }

    /// `[Σ positions, channels]`, item `i`'s rows after those of the items before it.
    pub(crate) fn forward(
        &self,
        latents: &[f32],
        num_latents: usize,
        positions: &[&[usize]],
        threads: usize,
    ) -> Result<Vec<f32>> {
        let spec = self.cross_attention.spec();
        let (qk, d) = (spec.qk_channels, self.channels());
        let count = positions.iter().map(|p| p.len()).sum::<usize>();
        // The queries themselves serve only as the residual.
        let residual = spec.use_query_residual;
        let mut queries = Vec::with_capacity(if residual { count * d } else { 0 });
        let mut projected = Vec::with_capacity(count * qk);
        let outputs = self.num_outputs();
        for &p in positions.iter().flat_map(|p| p.iter()) {
            if p >= outputs {
                return Err(Error::InvalidInput(format!(
                    "output position {p} is outside the model's {outputs}"
                )));
            }
            let row = self.queries.row(p)?;
            if residual {
                queries.extend_from_slice(row);
            }
            projected.extend_from_slice(&self.projected[p * qk..][..qk]);
        }
        let query_items = item_ranges(positions.iter().map(|p| p.len()));
        let latent_items = item_ranges(std::iter::repeat_n(num_latents, positions.len()));
        Ok(self.cross_attention.forward(
            Queries::Projected {
                rows: &queries,
                projected: &projected,
            },
            &query_items,
            Some((latents, &latent_items)),
            threads,
        ))
    }
}
