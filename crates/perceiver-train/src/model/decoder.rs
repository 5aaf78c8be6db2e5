//! Decoders map the latents to outputs by letting output queries cross-attend to them.
//! Mirrors transformers' `PerceiverBasicDecoder` (trainable position queries, no final
//! projection, as the masked language model uses it) and DeepMind's `BasicDecoder`.
//!
//! Each output query attends to the latents independently of every other query, so a caller
//! can decode any subset of output positions and get exactly the rows of a full decode.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::CrossAttention;
use crate::model::position::TrainablePositionEncoding;
use perceiver::checkpoint::names::BasicDecoderNames;

/// The decoder: one learned query per output position cross-attends to the latents (no final
/// projection).
#[derive(Debug, Clone)]
pub struct BasicDecoder {
    /// One learned query per output position: `[num_outputs, spec.q_dim]`.
    output_positions: TrainablePositionEncoding,
    cross_attention: CrossAttention,
}

impl BasicDecoder {
    /// The decoder named `names`, from `vb` at the checkpoint's root.
    pub fn new(names: &BasicDecoderNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            output_positions: TrainablePositionEncoding::new(&names.queries, vb)?,
            cross_attention: CrossAttention::new(&names.cross_attention, vb)?,
        })
    }

    /// Output positions it can decode (the rows of its query table).
    pub fn num_outputs(&self) -> usize {
        self.output_positions.num_positions()
    }

    /// Decodes the output positions `positions` (`[batch, n]` u32, each below
    /// [`Self::num_outputs`]) from `latents` (`[batch, num_latents, d_latents]`).
    /// Returns `[batch, n, q_dim]`.
    pub fn forward(&self, latents: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let queries = self.output_positions.select(positions)?;
        self.cross_attention.forward(&queries, latents, None)
    }

    /// Decodes every output position: `[batch, num_outputs, q_dim]`.
    pub fn forward_all(&self, latents: &Tensor) -> Result<Tensor> {
        let (batch, _, _) = latents.dims3()?;
        let all = Tensor::arange(0u32, self.num_outputs() as u32, latents.device())?
            .unsqueeze(0)?
            .repeat((batch, 1))?;
        self.forward(latents, &all)
    }
}
