//! Fused LayerNorm and softmax that also train, and matrix products on the engine's kernels
//! ([`matmul`]).
//!
//! candle's own fused `layer_norm` and `softmax_last_dim` have no backward pass: parameters behind
//! them silently get no gradient. These are candle custom ops with a one-pass CPU forward (as fast
//! as candle's) and a backward pass, so the same model code serves inference and training. On
//! devices other than the CPU they fall back to composed candle ops, which candle differentiates.
//!
//! LayerNorm uses a two-pass mean and variance (candle's fused op uses E\[x²\]−E\[x\]², which loses
//! digits when |mean| ≫ std).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D};
use perceiver_kernels::rows;
use rayon::prelude::*;

use crate::error::Result;
use perceiver::config::Activation;

mod composed;
mod fused_attention;
mod products;

pub use composed::{activate_composed, attend_composed, attention_bias};
pub(crate) use products::collecting_dense_grads;
pub use products::{linear, matmul, RightOperand, WeightPacks};

/// Scalar types the CPU kernels run in.
trait Float: WithDType + num_traits::Float + Send + Sync {}
impl Float for f32 {}
impl Float for f64 {}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `softmax(x)` over the last dimension, with a backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    Ok(x.contiguous()?.apply_op1(SoftmaxLastDim)?)
}

struct SoftmaxLastDim;

fn softmax_rows<T: Float>(src: &[T], width: usize) -> Vec<T> {
    let mut dst = vec![T::zero(); src.len()];
    dst.par_chunks_mut(width)
        .zip(src.par_chunks(width))
        .for_each(|(dst, src)| {
            let max = src
                .iter()
                .fold(T::neg_infinity(), |m, &v| num_traits::Float::max(m, v));
            let mut total = T::zero();
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s - max).exp();
                total += *d;
            }
            let inv = total.recip();
            dst.iter_mut().for_each(|d| *d *= inv);
        });
    dst
}

/// dx = y ⊙ (g − Σ g⊙y), row by row.
fn softmax_backward_rows<T: Float>(y: &[T], grad: &[T], width: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    dx.par_chunks_mut(width)
        .zip(y.par_chunks(width).zip(grad.par_chunks(width)))
        .for_each(|(dx, (y, g))| {
            let dot = y.iter().zip(g).fold(T::zero(), |acc, (&y, &g)| acc + y * g);
            for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *d = y * (g - dot);
            }
        });
    dx
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "perceiver-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(data) => {
                // The engine's vectorised kernel (the generic one calls libm's expf per value).
                let mut out = contiguous(data, layout, "softmax input")?.to_vec();
                rows::softmax(&mut out, width);
                CpuStorage::F32(out)
            }
            CpuStorage::F64(data) => {
                CpuStorage::F64(softmax_rows(contiguous(data, layout, "softmax input")?, width))
            }
            other => candle_core::bail!("softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let width = res.dim(D::Minus1)?;
        let grad = grad_res.contiguous()?;
        let dx = match res.dtype() {
            DType::F32 => {
                let (y, g) = (
                    res.flatten_all()?.to_vec1::<f32>()?,
                    grad.flatten_all()?.to_vec1::<f32>()?,
                );
                Tensor::from_vec(softmax_backward_rows(&y, &g, width), res.shape(), res.device())?
            }
            DType::F64 => {
                let (y, g) = (
                    res.flatten_all()?.to_vec1::<f64>()?,
                    grad.flatten_all()?.to_vec1::<f64>()?,
                );
                Tensor::from_vec(softmax_backward_rows(&y, &g, width), res.shape(), res.device())?
            }
            other => candle_core::bail!("softmax backward: unsupported dtype {other:?}"),
        };
        Ok(Some(dx))
    }
}

/// Multi-head attention ([`crate::model::attention::attend`]'s contract) as one op with a backward pass
/// (`fused_attention`); f32 on a CPU with AVX-512. Elsewhere, candle's composed ops.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    num_heads: usize,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let all_f32 = [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if !q.device().is_cpu() || !all_f32 || !perceiver_kernels::sgemm::available() {
        return composed::attend_composed(q, k, v, num_heads, bias);
    }
    let bias = match bias {
        Some(bias) => Some(bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let op = fused_attention::FusedAttention {
        num_heads,
        bias,
        precision: products::scope_precision(),
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// A GELU (`act`: [`Activation::GeluErf`] or [`Activation::GeluTanh`]) with a one-pass
/// backward: candle differentiates its GELUs with a dozen elementwise passes, each a fresh tensor.
/// Other activations, dtypes and devices go to [`crate::model::attention::activate`]'s candle ops.
pub fn gelu(x: &Tensor, act: Activation) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || !rows::has_fused_gradient(act.into()) {
        return composed::activate_composed(x, act);
    }
    Ok(x.contiguous()?.apply_op1(FusedActivation { act: act.into() })?)
}

struct FusedActivation {
    act: perceiver_kernels::Activation,
}

impl CustomOp1 for FusedActivation {
    fn name(&self) -> &'static str {
        "perceiver-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gelu: f32 only, not {:?}", storage.dtype());
        };
        let mut out = contiguous(data, layout, "gelu input")?.to_vec();
        rows::activate(&mut out, self.act);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut dx = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("gelu backward: f32 CPU input expected");
        };
        rows::activation_gradient(contiguous(data, layout, "gelu input")?, &mut dx, self.act);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `(x − mean) / √(var + eps) · weight + bias` over the last dimension, with a backward pass for
/// `x`, `weight` and `bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)?);
    }
    Ok(x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps })?)
}

struct LayerNormOp {
    eps: f64,
}

/// Mean and 1/std of one row, two-pass.
fn row_stats<T: Float>(row: &[T], eps: T) -> (T, T) {
    let n = T::from(row.len()).unwrap_or_else(T::one);
    let mean = row.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = row.iter().fold(T::zero(), |a, &v| a + (v - mean) * (v - mean)) / n;
    (mean, (var + eps).sqrt().recip())
}

fn layer_norm_rows<T: Float>(x: &[T], weight: &[T], bias: &[T], eps: T) -> Vec<T> {
    let width = weight.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(out, row)| {
            let (mean, inv_std) = row_stats(row, eps);
            for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (v - mean) * inv_std * w + b;
            }
        });
    out
}

/// Gradients of LayerNorm: (dx, dweight, dbias).
///
/// With x̂ = (x − μ)·r and ĝ = g ⊙ w: dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)),
/// dweight = Σ_rows g ⊙ x̂, dbias = Σ_rows g.
fn layer_norm_backward_rows<T: Float>(x: &[T], weight: &[T], grad: &[T], eps: T) -> (Vec<T>, Vec<T>, Vec<T>) {
    let width = weight.len();
    let n = T::from(width).unwrap_or_else(T::one);
    let mut dx = vec![T::zero(); x.len()];
    // Rows are grouped in fixed-size chunks whose partial parameter gradients are summed in chunk
    // order: the result does not depend on how rayon schedules the work, so training runs (and
    // resumed runs) repeat bit for bit.
    const ROWS_PER_CHUNK: usize = 32;
    let chunk = width * ROWS_PER_CHUNK;
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .map(|(dx, (rows, grads))| {
            let (mut dw, mut db) = (vec![T::zero(); width], vec![T::zero(); width]);
            for (dx, (row, g)) in dx
                .chunks_mut(width)
                .zip(rows.chunks(width).zip(grads.chunks(width)))
            {
                let (mean, inv_std) = row_stats(row, eps);
                let (mut sum_gw, mut sum_gw_xhat) = (T::zero(), T::zero());
                for c in 0..width {
                    let xhat = (row[c] - mean) * inv_std;
                    let gw = g[c] * weight[c];
                    sum_gw += gw;
                    sum_gw_xhat += gw * xhat;
                    dw[c] += g[c] * xhat;
                    db[c] += g[c];
                }
                let (mean_gw, mean_gw_xhat) = (sum_gw / n, sum_gw_xhat / n);
                for c in 0..width {
                    let xhat = (row[c] - mean) * inv_std;
                    dx[c] = inv_std * (g[c] * weight[c] - mean_gw - xhat * mean_gw_xhat);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dweight, mut dbias) = (vec![T::zero(); width], vec![T::zero(); width]);
    for (dw, db) in partials {
        dweight.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    (dx, dweight, dbias)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "perceiver-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = l1.dims().last().copied().unwrap_or(0);
        if l2.dims() != [width] || l3.dims() != [width] {
            candle_core::bail!(
                "layer norm: input {:?} with weight {:?} and bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(layer_norm_rows(
                contiguous(x, l1, "layer norm input")?,
                contiguous(w, l2, "layer norm weight")?,
                contiguous(b, l3, "layer norm bias")?,
                self.eps as f32,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(layer_norm_rows(
                contiguous(x, l1, "layer norm input")?,
                contiguous(w, l2, "layer norm weight")?,
                contiguous(b, l3, "layer norm bias")?,
                self.eps,
            )),
            _ => candle_core::bail!(
                "layer norm: unsupported dtypes {:?} {:?} {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        macro_rules! backward {
            ($t:ty) => {{
                let (dx, dw, db) = layer_norm_backward_rows(
                    &x.flatten_all()?.to_vec1::<$t>()?,
                    &weight.to_vec1::<$t>()?,
                    &grad.flatten_all()?.to_vec1::<$t>()?,
                    self.eps as $t,
                );
                (
                    Tensor::from_vec(dx, x.shape(), x.device())?,
                    Tensor::from_vec(dw, weight.shape(), x.device())?,
                    Tensor::from_vec(db, bias.shape(), x.device())?,
                )
            }};
        }
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => backward!(f32),
            DType::F64 => backward!(f64),
            other => candle_core::bail!("layer norm backward: unsupported dtype {other:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// max |a − b| over all elements, in f64: the comparison the op tests make.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    (f64_of(a) - f64_of(b))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Central finite differences of `f` (a scalar function of `x`) at every element of `x`.
    fn numeric_grad(x: &Tensor, f: impl Fn(&Tensor) -> f64) -> Vec<f64> {
        let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        (0..base.len())
            .map(|i| {
                let mut plus = base.clone();
                plus[i] += h;
                let mut minus = base.clone();
                minus[i] -= h;
                let at = |v: Vec<f64>| f(&Tensor::from_vec(v, x.shape(), x.device()).unwrap());
                (at(plus) - at(minus)) / (2.0 * h)
            })
            .collect()
    }

    fn assert_close(got: &Tensor, want: &[f64], what: &str) {
        let got = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-6, "{what}: worst |Δ| {worst:e}");
    }

    #[test]
    fn layer_norm_matches_composed_ops_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // Odd width, and a mean far from zero, where E[x²]−E[x]² would lose digits.
        let x = (Tensor::randn(0f64, 1.0, (2, 3, 7), &dev)? + 100.0)?;
        let w = Tensor::randn(0f64, 1.0, 7, &dev)?;
        let b = Tensor::randn(0f64, 1.0, 7, &dev)?;
        let probe = Tensor::randn(0f64, 1.0, (2, 3, 7), &dev)?; // loss = Σ probe ⊙ LN(x)
        let fused = layer_norm(&x, &w, &b, 1e-5)?;
        let plain = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5)?;
        assert_close(&fused, &plain.flatten_all()?.to_vec1::<f64>()?, "forward");

        let (xv, wv, bv) = (
            Var::from_tensor(&x)?,
            Var::from_tensor(&w)?,
            Var::from_tensor(&b)?,
        );
        let loss = (layer_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5)? * &probe)?.sum_all()?;
        let grads = loss.backward()?;
        let scalar = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            (layer_norm(x, w, b, 1e-5).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert_close(
            grads.get(&xv).unwrap(),
            &numeric_grad(&x, |x| scalar(x, &w, &b)),
            "dx",
        );
        assert_close(
            grads.get(&wv).unwrap(),
            &numeric_grad(&w, |w| scalar(&x, w, &b)),
            "dweight",
        );
        assert_close(
            grads.get(&bv).unwrap(),
            &numeric_grad(&b, |b| scalar(&x, &w, b)),
            "dbias",
        );
        Ok(())
    }

    #[test]
    fn softmax_matches_candle_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 2.0, (3, 2, 5), &dev)?;
        let probe = Tensor::randn(0f64, 1.0, (3, 2, 5), &dev)?;
        let plain = candle_nn::ops::softmax(&x, D::Minus1)?;
        assert_close(
            &softmax_last_dim(&x)?,
            &plain.flatten_all()?.to_vec1::<f64>()?,
            "forward",
        );
        let xv = Var::from_tensor(&x)?;
        let grads = (softmax_last_dim(xv.as_tensor())? * &probe)?
            .sum_all()?
            .backward()?;
        let want = numeric_grad(&x, |x| {
            (softmax_last_dim(x).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        });
        assert_close(grads.get(&xv).unwrap(), &want, "dx");
        Ok(())
    }

    /// The fused GELUs against candle's composed ops in f64: values and gradients.
    #[test]
    fn gelus_and_their_gradients_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::rand(-6f32, 6.0, (37, 41), &dev)?).to_dtype(DType::F32)?;
        let probe = Tensor::randn(0f32, 1.0, (37, 41), &dev)?;
        for act in [Activation::GeluErf, Activation::GeluTanh] {
            let xv = Var::from_tensor(&x)?;
            let fused = gelu(xv.as_tensor(), act)?;
            let grads = (&fused * &probe)?.sum_all()?.backward()?;
            let x64 = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
            let plain = composed::activate_composed(x64.as_tensor(), act)?;
            let want = (&plain * probe.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            let forward = max_abs_diff(&fused, &plain);
            assert!(forward < 2e-6, "{act:?} forward: worst |Δ| {forward:e}");
            let backward = max_abs_diff(grads.get(&xv).unwrap(), want.get(&x64).unwrap());
            assert!(backward < 1e-5, "{act:?} gradient: worst |Δ| {backward:e}");
        }
        Ok(())
    }

    #[test]
    fn f32_forward_equals_f64_to_rounding() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (4, 33), &dev)?;
        let (w, b) = (
            Tensor::randn(0f32, 1.0, 33, &dev)?,
            Tensor::randn(0f32, 1.0, 33, &dev)?,
        );
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let ln32 = layer_norm(&x, &w, &b, 1e-5)?.to_dtype(DType::F64)?;
        let ln64 = layer_norm(&f64_of(&x), &f64_of(&w), &f64_of(&b), 1e-5)?;
        let worst = (ln32 - ln64)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(worst < 1e-5, "layer norm f32 vs f64: {worst:e}");
        let sm32 = softmax_last_dim(&x)?.to_dtype(DType::F64)?;
        let worst = (sm32 - softmax_last_dim(&f64_of(&x))?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(worst < 1e-6, "softmax f32 vs f64: {worst:e}");
        Ok(())
    }
}
