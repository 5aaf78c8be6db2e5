//! The composed forms of the fused ops: attention and activations built from candle's own ops,
//! each differentiated by candle. They are the path for other dtypes and devices, and the
//! reference the fused ops are tested against.

use crate::error::Result;
use candle_core::{DType, Tensor};
use perceiver::config::Activation;

use super::{matmul, softmax_last_dim, RightOperand};

/// [`attention`](super::attention) composed of separate ops (head split and merge, products, softmax), each with its own
/// backward pass: the path for other dtypes and devices, and the reference the fused op is tested
/// against.
pub fn attend_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    num_heads: usize,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, num_queries, qk_channels) = q.dims3()?;
    let (_, num_keys, v_channels) = v.dims3()?;
    let d_qk = qk_channels / num_heads;
    let d_v = v_channels / num_heads;
    // [batch, heads, tokens, per-head channels]
    let split = |x: &Tensor, tokens: usize, per_head: usize| -> candle_core::Result<Tensor> {
        x.reshape((batch, tokens, num_heads, per_head))?
            .transpose(1, 2)?
            .contiguous()
    };
    // Scaling q rather than the scores touches queries×d values instead of queries×keys.
    let q = split(&(q * (1.0 / (d_qk as f64).sqrt()))?, num_queries, d_qk)?;
    let k = split(k, num_keys, d_qk)?;
    let v = split(v, num_keys, d_v)?;
    let mut scores = matmul(&q, &k, RightOperand::Transposed)?; // [batch, heads, queries, keys]
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let weights = softmax_last_dim(&scores)?;
    let out = matmul(&weights, &v, RightOperand::Plain)?; // [batch, heads, queries, d_v]
    Ok(out
        .transpose(1, 2)?
        .reshape((batch, num_queries, num_heads * d_v))?)
}

/// [`gelu`](super::gelu) and the other activations from candle's own ops, which candle differentiates.
pub fn activate_composed(x: &Tensor, activation: Activation) -> Result<Tensor> {
    Ok(match activation {
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
        Activation::Relu => x.relu()?,
        Activation::ReluSquared => x.relu()?.sqr()?,
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::LeakyRelu => candle_nn::ops::leaky_relu(x, 0.01)?,
        Activation::Silu => x.silu()?,
        // softplus(x) = ln(1 + eˣ), computed as max(x, 0) + ln(1 + e^-|x|) to avoid overflow.
        Activation::Mish => {
            let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            (x * softplus.tanh()?)?
        }
        Activation::HardSwish => ((x * (x + 3.0)?.clamp(0f32, 6f32)?)? / 6.0)?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::Tanh => x.tanh()?,
        Activation::Linear => x.clone(),
    })
}

/// Additive attention bias from a padding mask: 0 where `mask` is 1 (a real key), the most
/// negative f32 where it is 0 (padding), as transformers does with `finfo(float32).min`.
///
/// # Shapes
/// `mask`: `[batch, keys]`, any dtype, 1 = attend, 0 = ignore. Returns `[batch, 1, 1, keys]` f32,
/// broadcastable over heads and queries.
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (batch, keys) = mask.dims2()?;
    let ignore = mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)?; // 1 where padded
    let bias = (ignore * f32::MIN as f64)?;
    Ok(bias.reshape((batch, 1, 1, keys))?)
}
