//! The Perceiver encoder: a learned latent array cross-attends to the inputs once, then a block
//! of self-attention layers is applied `num_blocks` times with shared weights.
//! Mirrors transformers' `PerceiverEmbeddings` + `PerceiverEncoder` and DeepMind's
//! `PerceiverEncoder`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::model::attention::{attention_bias, CrossAttention, SelfAttention};
use perceiver::config::PerceiverConfig;
use perceiver::error::Result;

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
    /// `vb` points at the model's `perceiver.` prefix: the latents live in `embeddings.latents`,
    /// the layers under `encoder.`.
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let latents = vb
            .pp("embeddings")
            .get((cfg.num_latents, cfg.d_latents), "latents")?;
        let enc = vb.pp("encoder");
        let cross_attention =
            CrossAttention::new(&cfg.encoder_cross_attention_spec(), enc.pp("cross_attention"))?;
        let spec = cfg.self_attention_spec();
        let self_attends = (0..cfg.num_self_attends_per_block)
            .map(|i| SelfAttention::new(&spec, enc.pp("self_attends").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents,
            cross_attention,
            self_attends,
            num_blocks: cfg.num_blocks,
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
