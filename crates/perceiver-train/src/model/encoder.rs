//! The Perceiver encoder: a learned latent array cross-attends to the inputs once, then a block
//! of self-attention layers is applied `num_blocks` times with shared weights.
//! Mirrors transformers' `PerceiverEmbeddings` + `PerceiverEncoder` and DeepMind's
//! `PerceiverEncoder`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::{attention_bias, variable, CrossAttention, SelfAttention};
use perceiver::checkpoint::names::EncoderNames;

/// The encoder: learned latents cross-attend to the inputs, then a block of self-attention layers
/// runs `num_blocks` times with shared weights.
#[derive(Debug, Clone)]
pub struct PerceiverEncoder {
    /// `[num_latents, d_latents]`, shared by every batch item.
    latents: Tensor,
    cross_attention: CrossAttention,
    /// One block; applied `num_blocks` times.
    self_attends: Vec<SelfAttention>,
    num_blocks: usize,
}

impl PerceiverEncoder {
    /// The encoder named `names`, from `vb` at the checkpoint's root; its layers repeat
    /// `num_blocks` times.
    pub fn new(names: &EncoderNames, num_blocks: usize, vb: &VarBuilder) -> Result<Self> {
        let latents = variable(vb, &names.latents)?;
        let cross_attention = CrossAttention::new(&names.cross_attention, vb)?;
        let self_attends = names
            .self_attends
            .iter()
            .map(|layer| SelfAttention::new(layer, vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents,
            cross_attention,
            self_attends,
            num_blocks,
        })
    }

    /// Encodes inputs into latents.
    ///
    /// # Shapes
    /// `inputs`: `[batch, len, d_model]`; `input_mask`: `[batch, len]`, 1 for real positions and
    /// 0 for padding (padded positions contribute nothing); `None` means all real.
    /// Returns `[batch, num_latents, d_latents]`.
    pub fn forward(&self, inputs: &Tensor, input_mask: Option<&Tensor>) -> Result<Tensor> {
        let (batch, _, _) = inputs.dims3()?;
        let latents = self.latents.unsqueeze(0)?.repeat((batch, 1, 1))?;
        let bias = input_mask.map(attention_bias).transpose()?;
        let mut z = self.cross_attention.forward(&latents, inputs, bias.as_ref())?;
        for _ in 0..self.num_blocks {
            for layer in &self.self_attends {
                z = layer.forward(&z)?;
            }
        }
        Ok(z)
    }
}
