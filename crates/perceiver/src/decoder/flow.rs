//! The optical-flow decoder: the encoder's own input rows are the queries (transformers'
//! `PerceiverOpticalFlowDecoder`, whose `decoder_query` returns the preprocessed inputs;
//! DeepMind's `FlowDecoder`: "we query the decoder using the first frame features"), one head,
//! no query residual. Every pixel of the tile is decoded.

use crate::attention::AttentionLayer;
use crate::checkpoint::names::LayerNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Precision;
use crate::preprocess::RowSource;
use crate::runtime::item_ranges;

/// Queries decoded at a time: every pixel of a tile is a query (182,528 for the released
/// model), and a chunk's intermediates (normed and projected queries, attention output, MLP)
/// are all the decoder holds at once.
const QUERY_CHUNK_ROWS: usize = 8192;

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
        self.cross_attention.set_precision(precision);
    }

    /// Every row of each item's `queries` (the encoder's input, made a chunk at a time) decoded
    /// from its item's latents, each chunk of decoded rows (`[rows, channels]`) through
    /// `project` (the final projection) as soon as it is made: the projected rows, in order.
    pub(crate) fn forward(
        &self,
        latents: &[f32],
        num_latents: usize,
        queries: &[&dyn RowSource],
        threads: usize,
        project: &dyn Fn(Vec<f32>) -> Vec<f32>,
    ) -> Result<Vec<f32>> {
        let items = queries.len();
        if latents.len() != items * num_latents * self.cross_attention.spec().kv_dim {
            return Err(Error::InvalidInput(format!(
                "{} latent values for {items} inputs of {num_latents} latents",
                latents.len()
            )));
        }
        let latent_items = item_ranges(std::iter::repeat_n(num_latents, items));
        Ok(self.cross_attention.forward_in_chunks(
            queries,
            (latents, &latent_items),
            QUERY_CHUNK_ROWS,
            threads,
            project,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::Queries;
    use crate::decoder::Decoder;
    use crate::preprocess::InputArray;

    /// Decoding in chunks of query rows gives what one pass over all rows gives, for chunks
    /// that split items and end mid-item (the fixture's 2,688-pixel tiles fit one chunk of the
    /// real size, so smaller chunks are forced here).
    #[test]
    fn chunks_of_queries_decode_as_one_pass() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow/tiny_flow");
        let model = crate::Loader::new(dir.to_str().unwrap()).load().unwrap();
        let Decoder::Flow(decoder) = model.decoder() else {
            panic!("not a flow decoder")
        };
        let layer = &decoder.cross_attention;
        let (q_dim, d) = (layer.spec().q_dim, layer.spec().kv_dim);
        let (rows, latents) = ([700usize, 333], 16);
        let value = |i: usize, scale: f32| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale;
        let queries: Vec<f32> = (0..(rows[0] + rows[1]) * q_dim).map(|i| value(i, 1.0)).collect();
        let z: Vec<f32> = (0..2 * latents * d).map(|i| value(i + 3, 2.0)).collect();
        let query_items = item_ranges(rows);
        let latent_items = item_ranges([latents, latents]);
        let whole = layer.forward(
            Queries::PerItem(&queries),
            &query_items,
            Some((&z, &latent_items)),
            2,
        );
        let array = InputArray {
            values: queries.clone(),
            items: query_items.clone(),
        };
        let sources = [array.item_rows(0), array.item_rows(1)];
        let sources: Vec<&dyn RowSource> = sources.iter().map(|s| s as &dyn RowSource).collect();
        for chunk in [1, 64, 250, 700, 5000] {
            let chunked = layer.forward_in_chunks(&sources, (&z, &latent_items), chunk, 2, &|rows| rows);
            assert_eq!(chunked.len(), whole.len());
            let worst = chunked
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "chunks of {chunk}: {worst}");
        }
    }
}
