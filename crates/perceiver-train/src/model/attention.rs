//! Attention, the Perceiver's one operation: the pure [`attend`] function, and the layers built on
//! it — [`CrossAttention`] (queries from one array, keys/values from another) and
//! [`SelfAttention`] (on the latents), each an attention followed by an [`Mlp`].
//!
//! Mirrors transformers' `PerceiverSelfAttention`, `PerceiverAttention`, `PerceiverMLP` and
//! `PerceiverLayer`, and DeepMind's `attend`, `Attention`, `MLP`, `CrossAttention` and
//! `SelfAttention` in `perceiver.py`. Checkpoint paths are transformers'.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::model::ops;
use perceiver::checkpoint::names::{LayerNames, LinearNames, NormNames, Role, TensorName};
use perceiver::config::{Activation, AttentionSpec, LAYER_NORM_EPS};

pub use ops::attention_bias;

/// Multi-head scaled dot-product attention.
///
/// Scores are `q·kᵀ / √(channels per head)`, plus `bias` (from [`attention_bias`]) before the
/// softmax over keys; heads are concatenated in the output.
///
/// # Shapes
/// `q`: `[batch, queries, heads·d_qk]`, `k`: `[batch, keys, heads·d_qk]`,
/// `v`: `[batch, keys, heads·d_v]`, `bias`: `[batch, 1, 1, keys]`.
/// Returns `[batch, queries, heads·d_v]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, num_heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    ops::attention(q, k, v, num_heads, bias)
}

/// Applies the configured nonlinearity (the GELUs through [`ops::gelu`], which trains faster).
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    ops::gelu(x, activation)
}

/// LayerNorm over the last dimension (eps as transformers'), through [`ops::layer_norm`] so that
/// it trains: candle_nn's LayerNorm passes no gradient to its parameters.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// The norm named `names`, read from (or created in) `vb` at the root of the checkpoint.
    pub fn new(names: &NormNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: variable(vb, &names.weight)?,
            bias: variable(vb, &names.bias)?,
        })
    }

    /// Normalises `x` over its last dimension, then scales by the weight and adds the bias.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, LAYER_NORM_EPS)
    }
}

/// The tensor `t` from `vb` (rooted at the checkpoint's top level); a fresh variable gets
/// candle's initialiser for its role (training then draws its own: `crate::init`).
pub fn variable(vb: &VarBuilder, t: &TensorName) -> Result<Tensor> {
    let init = match t.role {
        Role::LinearWeight => candle_nn::init::DEFAULT_KAIMING_NORMAL,
        Role::NormWeight => Init::Const(1.0),
        Role::Embedding => Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
        Role::PositionTable | Role::Latents => Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        _ => Init::Const(0.0),
    };
    Ok(vb.get_with_hints(t.shape.as_slice(), &t.name, init)?)
}

/// A dense layer `x·Wᵀ + b` over the last dimension (transformers' `nn.Linear`; W is [out, in]).
///
/// Leading dimensions are flattened into one matrix product. candle_nn's Linear broadcasts W over
/// the batch instead, which in training makes candle copy W per batch element and sum the
/// per-element gradients back.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// The layer named `names`, from `vb` at the checkpoint's root.
    pub fn new(names: &LinearNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: variable(vb, &names.weight)?,
            bias: variable(vb, &names.bias)?,
        })
    }

    /// The `[out, in]` matrix.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = ops::linear(&x.reshape((rows, in_dim))?, &self.weight, &self.bias)?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dims()[0];
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// The Transformer MLP after each attention: `dense2(act(dense1(x)))`, hidden width
/// `widening_factor × width`.
#[derive(Debug, Clone)]
pub struct Mlp {
    dense1: Linear,
    dense2: Linear,
    activation: Activation,
}

impl Mlp {
    /// `dense1` then `dense2` of `names`, with `activation` between.
    pub fn new(names: &LayerNames, activation: Activation, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            dense1: Linear::new(&names.dense1, vb)?,
            dense2: Linear::new(&names.dense2, vb)?,
            activation,
        })
    }

    /// `x`: `[batch, tokens, width]` → same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = activate(&self.dense1.forward(x)?, self.activation)?;
        self.dense2.forward(&hidden)
    }
}

/// Normalise, project to queries/keys/values, [`attend`], project the heads back
/// (transformers' `PerceiverAttention`: `attention.self.*` and `attention.output.dense`).
#[derive(Debug, Clone)]
struct MultiHeadAttention {
    q_norm: LayerNorm,
    /// `None` for self-attention, where keys and values come from the normalised queries.
    kv_norm: Option<LayerNorm>,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    spec: AttentionSpec,
}

impl MultiHeadAttention {
    fn new(names: &LayerNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            q_norm: LayerNorm::new(&names.q_norm, vb)?,
            kv_norm: names
                .kv_norm
                .as_ref()
                .map(|n| LayerNorm::new(n, vb))
                .transpose()?,
            query: Linear::new(&names.query, vb)?,
            key: Linear::new(&names.key, vb)?,
            value: Linear::new(&names.value, vb)?,
            output: Linear::new(&names.output, vb)?,
            spec: names.spec,
        })
    }

    /// `queries`: `[batch, nq, q_dim]`; `inputs`: `[batch, nk, kv_dim]` for cross-attention,
    /// `None` for self-attention. Returns `[batch, nq, out]`.
    fn forward(&self, queries: &Tensor, inputs: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
        let q_in = self.q_norm.forward(queries)?;
        let kv_in = match (inputs, &self.kv_norm) {
            (Some(inputs), Some(norm)) => norm.forward(inputs)?,
            _ => q_in.clone(),
        };
        let q = self.query.forward(&q_in)?;
        let (_, nq, _) = q.dims3()?;
        if inputs.is_some() && self.spec.num_heads == 1 && self.spec.absorbs_keys(nq) {
            return self.forward_absorbed(&q, &kv_in, bias);
        }
        self.forward_projected(&q, &kv_in, bias)
    }

    /// The attention as the model is written, from the projected queries `q` and the normed
    /// keys' and values' input `x`.
    fn forward_projected(&self, q: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let k = self.key.forward(x)?;
        let v = self.value.forward(x)?;
        let heads = attend(q, &k, &v, self.spec.num_heads, bias)?;
        self.output.forward(&heads)
    }

    /// A one-head cross-attention with its key and value projections moved off the normed
    /// inputs `x` (as inference's encoder runs it where that is less work,
    /// [`AttentionSpec::absorbs_keys`]): the queries through the key weight score the rows of
    /// `x` themselves, and the weighted sum of those rows goes through the value projection.
    fn forward_absorbed(&self, q: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (batch, nq, qk) = q.dims3()?;
        let kv_dim = x.dim(2)?;
        // `attend` scales the scores by 1/√kv_dim (the width it is given); the layer's is 1/√qk.
        let rescale = (kv_dim as f64 / qk as f64).sqrt();
        let absorbed = q
            .reshape((batch * nq, qk))?
            .matmul(self.key.weight())?
            .affine(rescale, 0.0)?
            .reshape((batch, nq, kv_dim))?;
        let weighted = attend(&absorbed, x, x, 1, bias)?;
        // The key bias shifts each query's scores by one amount, which the softmax removes:
        // its gradient is zero, which it gets by joining the graph times a zero tensor (every
        // trained parameter is reached; candle would prune an `affine` by zero).
        let zero = Tensor::zeros((), self.key.bias().dtype(), self.key.bias().device())?;
        let unused_bias = self.key.bias().sum_all()?.mul(&zero)?;
        let heads = self.value.forward(&weighted)?.broadcast_add(&unused_bias)?;
        self.output.forward(&heads)
    }
}

/// Attention then MLP, each with a residual (transformers' `PerceiverLayer`).
#[derive(Debug, Clone)]
struct Layer {
    attention: MultiHeadAttention,
    use_query_residual: bool,
    mlp_norm: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(names: &LayerNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(names, vb)?,
            use_query_residual: names.spec.use_query_residual,
            mlp_norm: LayerNorm::new(&names.mlp_norm, vb)?,
            mlp: Mlp::new(names, names.spec.activation, vb)?,
        })
    }

    fn forward(&self, queries: &Tensor, inputs: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
        let mut x = self.attention.forward(queries, inputs, bias)?;
        if self.use_query_residual {
            // The residual is the queries before their LayerNorm.
            x = (x + queries)?;
        }
        let mlp_out = self.mlp.forward(&self.mlp_norm.forward(&x)?)?;
        Ok((x + mlp_out)?)
    }
}

/// Queries attend to a different array (encoder: latents ← inputs; decoder: outputs ← latents).
#[derive(Debug, Clone)]
pub struct CrossAttention(Layer);

impl CrossAttention {
    /// The layer named `names` (which name a key/value norm), from `vb` at the checkpoint's root.
    pub fn new(names: &LayerNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self(Layer::new(names, vb)?))
    }

    /// # Shapes
    /// `queries`: `[batch, nq, q_dim]`; `inputs`: `[batch, nk, kv_dim]`; `input_bias`: from
    /// [`attention_bias`], `[batch, 1, 1, nk]`, masking padded inputs. Returns `[batch, nq, q_dim]`.
    pub fn forward(&self, queries: &Tensor, inputs: &Tensor, input_bias: Option<&Tensor>) -> Result<Tensor> {
        self.0.forward(queries, Some(inputs), input_bias)
    }
}

/// The latents attend to themselves; no mask (every latent is real).
#[derive(Debug, Clone)]
pub struct SelfAttention(Layer);

impl SelfAttention {
    /// The layer named `names`, from `vb` at the checkpoint's root.
    pub fn new(names: &LayerNames, vb: &VarBuilder) -> Result<Self> {
        Ok(Self(Layer::new(names, vb)?))
    }

    /// `latents`: `[batch, num_latents, d_latents]` → same shape.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        self.0.forward(latents, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Single-head attention written out with loops, the plain definition.
    fn naive_attention(q: &[Vec<f32>], k: &[Vec<f32>], v: &[Vec<f32>], keep: &[bool]) -> Vec<Vec<f32>> {
        let d = q[0].len() as f32;
        q.iter()
            .map(|qi| {
                let scores: Vec<f32> = k
                    .iter()
                    .zip(keep)
                    .map(|(kj, &keep)| {
                        let s: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() / d.sqrt();
                        if keep {
                            s
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exp.iter().sum();
                (0..v[0].len())
                    .map(|c| exp.iter().zip(v).map(|(w, vj)| w / total * vj[c]).sum())
                    .collect()
            })
            .collect()
    }

    /// A one-head cross-attention with its projections absorbed gives the projected one's
    /// output and every parameter's gradient (the key bias's zero), up to rounding, with a
    /// padding mask.
    #[test]
    fn absorbed_keys_give_the_projected_attention_and_its_gradients() -> Result<()> {
        use candle_nn::VarMap;
        use perceiver::checkpoint::names::LayerNames;
        let dev = Device::Cpu;
        let spec = AttentionSpec {
            q_dim: 12,
            kv_dim: 5,
            qk_channels: 8,
            v_channels: 6,
            num_heads: 1,
            widening_factor: 1,
            use_query_residual: true,
            activation: Activation::GeluErf,
        };
        let (batch, nq, nk) = (2, 3, 7);
        assert!(spec.absorbs_keys(nq));
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev);
        let attention = MultiHeadAttention::new(&LayerNames::new("layer", spec, true), &vb)?;
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 1.0, var.shape(), &dev)?)?;
        }
        let queries = Tensor::randn(0f32, 1.0, (batch, nq, spec.q_dim), &dev)?;
        let inputs = Tensor::randn(0f32, 1.0, (batch, nk, spec.kv_dim), &dev)?;
        let mask = Tensor::new(&[[1u8, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], &dev)?;
        let bias = attention_bias(&mask)?;
        let weights = Tensor::randn(0f32, 1.0, (batch, nq, spec.q_dim), &dev)?;
        let run = |absorbed: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
            let q_in = attention.q_norm.forward(&queries)?;
            let x = attention
                .kv_norm
                .as_ref()
                .expect("a cross-attention")
                .forward(&inputs)?;
            let q = attention.query.forward(&q_in)?;
            let out = match absorbed {
                true => attention.forward_absorbed(&q, &x, Some(&bias))?,
                false => attention.forward_projected(&q, &x, Some(&bias))?,
            };
            let grads = (&out * &weights)?.sum_all()?.backward()?;
            let grads = varmap
                .all_vars()
                .iter()
                .map(|var| {
                    Ok(grads
                        .get(var.as_tensor())
                        .expect("every parameter reached")
                        .flatten_all()?
                        .to_vec1()?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((out.flatten_all()?.to_vec1()?, grads))
        };
        let ((projected, projected_grads), (absorbed, absorbed_grads)) = (run(false)?, run(true)?);
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let largest = |a: &[f32]| a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let out_worst = worst(&projected, &absorbed);
        println!(
            "absorbed against projected: output {out_worst:.2e} (largest {:.2})",
            largest(&projected)
        );
        assert!(
            out_worst < 1e-5 * largest(&projected).max(1.0),
            "output: {out_worst}"
        );
        let scale = projected_grads.iter().map(|g| largest(g)).fold(0f32, f32::max);
        for (i, (p, a)) in projected_grads.iter().zip(&absorbed_grads).enumerate() {
            let w = worst(p, a);
            assert!(w < 1e-4 * scale, "gradient {i}: {w} (largest of all {scale})");
        }
        Ok(())
    }

    #[test]
    fn attend_matches_the_definition_per_head_with_padding() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, d_qk, d_v, nq, nk) = (3, 4, 2, 5, 7);
        let q = Tensor::randn(0f32, 1.0, (1, nq, heads * d_qk), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, nk, heads * d_qk), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, nk, heads * d_v), &dev)?;
        let keep = [true, true, false, true, true, false, true];
        let mask = Tensor::new(&[keep.map(|b| b as u8)], &dev)?;
        let out = attend(&q, &k, &v, heads, Some(&attention_bias(&mask)?))?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        let rows = |t: &Tensor, h: usize, d: usize| -> Vec<Vec<f32>> {
            t.squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .iter()
                .map(|r| r[h * d..(h + 1) * d].to_vec())
                .collect()
        };
        for h in 0..heads {
            let expected = naive_attention(&rows(&q, h, d_qk), &rows(&k, h, d_qk), &rows(&v, h, d_v), &keep);
            for (i, row) in expected.iter().enumerate() {
                for (c, e) in row.iter().enumerate() {
                    let got = out[i][h * d_v + c];
                    assert!(
                        (got - e).abs() < 1e-5,
                        "head {h} query {i} channel {c}: {got} vs {e}"
                    );
                }
            }
        }
        Ok(())
    }
}
