//! Decoders map the latents to outputs by letting output queries cross-attend to them.
//! Mirrors transformers' `PerceiverBasicDecoder` (trainable position queries, no final
//! projection, as the masked language model uses it) and DeepMind's `BasicDecoder`.
//!
//! Each output query attends to the latents independently of every other query, so a caller
//! can decode any subset of output positions and get exactly the rows of a full decode.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::model::attention::CrossAttention;
use perceiver::config::AttentionSpec;
use perceiver::error::Result;
use crate::model::position::TrainablePositionEncoding;

#[derive(Debug, Clone)]
pub struct BasicDecoder {
    /// One learned query per output position: `[num_outputs, spec.q_dim]`.
    output_positions: TrainablePositionEncoding,
    cross_attention: CrossAttention,
}

impl BasicDecoder {
    /// `vb` points at `perceiver.decoder`.
    pub fn new(num_outputs: usize, spec: &AttentionSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            output_positions: TrainablePositionEncoding::new(
                num_outputs,
                spec.q_dim,
                "position_embeddings",
                vb.pp("output_position_encodings"),
            )?,
            cross_attention: CrossAttention::new(spec, vb.pp("decoding_cross_attention"))?,
        })
    }

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
