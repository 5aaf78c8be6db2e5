//! Decoders: build output queries and cross-attend the latents with them (transformers'
//! `PerceiverBasicDecoder` and its relatives; DeepMind's decoders in `perceiver.py`, with their
//! one interface: queries, then attention).
//!
//! A new task adds a decoder here (a file and a [`Decoder`] variant) when its queries are built
//! differently (one trainable query for classification, the input's own features for optical
//! flow); the attention layer and the kernels are shared.

pub mod basic;
pub mod flow;
pub mod multimodal;

pub use basic::BasicDecoder;
pub use flow::FlowDecoder;
pub use multimodal::{MultimodalDecoder, MultimodalQueries};

use crate::error::Result;
use crate::layers::Precision;

/// The decoders the models are built from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Decoder {
    /// Trainable output-position queries, any subset of them decoded.
    Basic(BasicDecoder),
    /// The input's own rows as queries (optical flow).
    Flow(FlowDecoder),
    /// Per-modality position queries, padded and decoded together (multimodal autoencoding).
    Multimodal(Box<MultimodalDecoder>),
}

impl Decoder {
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        match self {
            Self::Basic(basic) => basic.set_precision(precision),
            Self::Flow(flow) => flow.set_precision(precision),
            Self::Multimodal(m) => m.set_precision(precision),
        }
    }

    /// Output positions the decoder has queries for (the flow decoder's queries are its
    /// input's rows, and the multimodal decoder's are per modality: 0).
    pub fn num_outputs(&self) -> usize {
        match self {
            Self::Basic(basic) => basic.num_outputs(),
            Self::Flow(_) | Self::Multimodal(_) => 0,
        }
    }

    /// Channels of each decoded row.
    pub fn channels(&self) -> usize {
        match self {
            Self::Basic(basic) => basic.channels(),
            Self::Flow(flow) => flow.channels(),
            Self::Multimodal(m) => m.channels(),
        }
    }

    /// Decodes `positions[i]` of item `i` from its latents: `[Σ positions, channels]`.
    pub(crate) fn forward(
        &self,
        latents: &[f32],
        num_latents: usize,
        positions: &[&[usize]],
        threads: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Self::Basic(basic) => basic.forward(latents, num_latents, positions, threads),
            Self::Flow(_) => Err(crate::error::Error::InvalidInput(
                "the optical-flow decoder's queries are its input's rows, not output positions".into(),
            )),
            Self::Multimodal(_) => Err(crate::error::Error::InvalidInput(
                "the multimodal decoder's queries are per modality: use PerceiverModel::decode_multimodal"
                    .into(),
            )),
        }
    }
}
