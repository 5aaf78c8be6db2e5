//! Multi-head attention as one trainable op.
//!
//! Composed from candle ops, attention is a dozen graph nodes: the per-head split and merge
//! (transposed copies), the scale, the bias, the softmax and two batched products, and candle's
//! backward pass adds a zero-filled gradient buffer and a sum for every one of them, on one
//! thread. Here the forward pass reads each head in place (strided views of q, k, v), and the
//! backward pass recomputes the attention weights from q and k (one product per head, instead of
//! keeping a `[batch, heads, queries, keys]` tensor) and writes dq, dk and dv directly.
//!
//! Only f32 on a CPU with the engine's AVX-512 kernel takes this path; elsewhere
//! [`super::composed::attend_composed`] composes candle ops. In a [`Precision::Bf16`] scope
//! ([`super::WeightPacks::scope`]) its six products per head round their operands to bf16 (the
//! attention weights included) and sum in f32; the softmax and its gradient stay f32.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use perceiver::Precision;
use perceiver_kernels::bf16::{PackedMatrix, Rows};
use perceiver_kernels::matmul::View;
use perceiver_kernels::sgemm::PackedWeights;
use perceiver_kernels::{rows, SendPtr};
use rayon::prelude::*;

use super::contiguous;
use super::products::transpose;

/// `softmax(q·kᵀ/√d + bias)·v` per head, heads concatenated.
///
/// `bias`: `[batch, keys]` additive (0 or a large negative number), not differentiated.
pub(crate) struct FusedAttention {
    pub(crate) num_heads: usize,
    pub(crate) bias: Option<Vec<f32>>,
    /// Of the products, forward and backward.
    pub(crate) precision: Precision,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    d_qk: usize,
    d_v: usize,
}

impl Dims {
    fn qk(&self) -> usize {
        self.heads * self.d_qk
    }
    fn vc(&self) -> usize {
        self.heads * self.d_v
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d_qk as f32).sqrt()
    }
}

impl FusedAttention {
    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<Dims> {
        let (&[batch, queries, qk], &[kb, keys, kc], &[vb, vk, vc]) = (lq.dims(), lk.dims(), lv.dims())
        else {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} must be [batch, tokens, channels]",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        };
        let heads = self.num_heads;
        if kb != batch
            || vb != batch
            || vk != keys
            || kc != qk
            || heads == 0
            || qk % heads != 0
            || vc % heads != 0
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        if let Some(bias) = &self.bias {
            if bias.len() != batch * keys {
                candle_core::bail!(
                    "attention: a bias of {} values for {batch} × {keys} keys",
                    bias.len()
                );
            }
        }
        Ok(Dims {
            batch,
            queries,
            keys,
            heads,
            d_qk: qk / heads,
            d_v: vc / heads,
        })
    }

    /// The attention weights of item `b`, head `h`: `[queries, keys]`, rows summing to 1.
    fn weights(&self, d: &Dims, q: &[f32], k: &[f32], b: usize, h: usize) -> Vec<f32> {
        let (nq, nk) = (d.queries, d.keys);
        let q_h = View::strided(&q[b * nq * d.qk() + h * d.d_qk..], nq, d.d_qk, d.qk());
        let k_h = View::strided(&k[b * nk * d.qk() + h * d.d_qk..], nk, d.d_qk, d.qk());
        let mut scores = head_product(self.precision, q_h, false, k_h, true, d.scale());
        if let Some(bias) = &self.bias {
            rows::add_to_rows(&mut scores, &bias[b * nk..(b + 1) * nk]);
        }
        rows::softmax_rows(&mut scores, nk);
        scores
    }
}

/// `scale · op(a) · op(b)` into a new dense `[m, n]` matrix, on the calling thread, where `op`
/// transposes the operands flagged (`a` is then `[k, m]`, `b` `[n, k]`): f32 on the packed
/// kernel (a transposed `a` read in place, the scale folded into the packed `b`), or with both
/// operands rounded to bf16 ([`Precision::Bf16`]; a transposed `a`, dense, copied first, as the
/// bf16 kernel reads rows; the scale applied to the f32 sums).
fn head_product(
    precision: Precision,
    a: View,
    a_transposed: bool,
    b: View,
    b_transposed: bool,
    scale: f32,
) -> Vec<f32> {
    let (m, k) = if a_transposed {
        (a.cols, a.rows)
    } else {
        (a.rows, a.cols)
    };
    let n = if b_transposed { b.rows } else { b.cols };
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    match precision {
        Precision::F32 => {
            let packed = PackedWeights::pack_view(b, b_transposed, scale, false);
            if a_transposed {
                packed.matmul_transposed_x(a, &mut c, n, 1);
            } else {
                packed.matmul_view(a, &mut c, n, 1);
            }
        }
        Precision::Bf16 => {
            let packed = PackedMatrix::pack_view(b, b_transposed, false);
            let dense;
            let copy_row = |r: usize, row: &mut [f32]| row.copy_from_slice(&a.data[r * a.stride..][..k]);
            let rows = if a_transposed {
                // A transposed `a` is always a whole matrix here (attention weights or their
                // gradient).
                assert_eq!(
                    a.stride, a.cols,
                    "head_product: a transposed left operand must be dense"
                );
                dense = transpose(&a.data[..a.rows * a.cols], a.rows, a.cols, false);
                Rows::Dense(&dense)
            } else if a.stride == k {
                Rows::Dense(&a.data[..m * k])
            } else {
                Rows::Made(&copy_row)
            };
            // SAFETY: `c` is m dense rows of n values, borrowed here alone.
            unsafe { packed.matmul_rows_raw(rows, m, c.as_mut_ptr(), n, 1) };
            if scale != 1.0 {
                c.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }
    c
}

/// Every (item, head) pair: the unit of parallel work.
fn tasks(d: &Dims) -> Vec<(usize, usize)> {
    (0..d.batch)
        .flat_map(|b| (0..d.heads).map(move |h| (b, h)))
        .collect()
}

fn cpu(s: &candle_core::Storage) -> candle_core::Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("attention backward: CPU tensors expected"),
    }
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(data) => contiguous(data, l, what),
        other => candle_core::bail!(
            "attention: {what} is {:?}, not f32",
            candle_core::backend::BackendStorage::dtype(other)
        ),
    }
}

/// Copies a dense `rows × width` block into `dst` at `offset`, rows `stride` apart.
///
/// # Safety
/// The block must lie inside the buffer behind `dst`, and no one else may touch it meanwhile.
unsafe fn scatter(dst: SendPtr, offset: usize, stride: usize, block: &[f32], width: usize) {
    for (r, row) in block.chunks_exact(width).enumerate() {
        // SAFETY: as the caller promises.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add(offset + r * stride), width) };
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "perceiver-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(lq, lk, lv)?;
        let (q, k, v) = (
            f32_data(sq, lq, "q")?,
            f32_data(sk, lk, "k")?,
            f32_data(sv, lv, "v")?,
        );
        let (nq, nk, vc) = (d.queries, d.keys, d.vc());
        let mut out = vec![0f32; d.batch * nq * vc];
        if nq > 0 && nk > 0 && d.d_v > 0 {
            let out_ptr = SendPtr(out.as_mut_ptr());
            tasks(&d).par_iter().for_each(|&(b, h)| {
                let weights = self.weights(&d, q, k, b, h);
                let v_h = View::strided(&v[b * nk * vc + h * d.d_v..], nk, d.d_v, vc);
                let out_h = out_ptr.get().wrapping_add(b * nq * vc + h * d.d_v);
                // SAFETY (both arms): the block (item b's rows, head h's d_v columns, row stride
                // vc) lies inside `out`; tasks write disjoint blocks and nothing reads `out`
                // meanwhile.
                match self.precision {
                    Precision::F32 => unsafe {
                        PackedWeights::pack_view(v_h, false, 1.0, false).matmul_view_raw(
                            View::dense(&weights, nq, nk),
                            out_h,
                            vc,
                            1,
                            false,
                        )
                    },
                    Precision::Bf16 => unsafe {
                        PackedMatrix::pack_view(v_h, false, false).matmul_rows_raw(
                            Rows::Dense(&weights),
                            nq,
                            out_h,
                            vc,
                            1,
                        )
                    },
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((d.batch, nq, vc))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let shapes = [q, k, v].map(|t| t.shape().clone());
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let (cq, ck, cv, cg) = (cpu(&sq)?, cpu(&sk)?, cpu(&sv)?, cpu(&sg)?);
        let d = self.dims(lq, lk, lv)?;
        let (q, k, v, g) = (
            f32_data(cq, lq, "q")?,
            f32_data(ck, lk, "k")?,
            f32_data(cv, lv, "v")?,
            f32_data(cg, lg, "gradient")?,
        );
        let (nq, nk, qk, vc) = (d.queries, d.keys, d.qk(), d.vc());
        let mut dq = vec![0f32; d.batch * nq * qk];
        let mut dk = vec![0f32; d.batch * nk * qk];
        let mut dv = vec![0f32; d.batch * nk * vc];
        if nq > 0 && nk > 0 && d.d_qk > 0 && d.d_v > 0 {
            let (dq_ptr, dk_ptr, dv_ptr) = (
                SendPtr(dq.as_mut_ptr()),
                SendPtr(dk.as_mut_ptr()),
                SendPtr(dv.as_mut_ptr()),
            );
            tasks(&d).par_iter().for_each(|&(b, h)| {
                let p = self.weights(&d, q, k, b, h);
                let q_h = View::strided(&q[b * nq * qk + h * d.d_qk..], nq, d.d_qk, qk);
                let k_h = View::strided(&k[b * nk * qk + h * d.d_qk..], nk, d.d_qk, qk);
                let v_h = View::strided(&v[b * nk * vc + h * d.d_v..], nk, d.d_v, vc);
                let g_h = View::strided(&g[b * nq * vc + h * d.d_v..], nq, d.d_v, vc);
                let precision = self.precision;
                // dV = Pᵀ·dO
                let dv_h = head_product(precision, View::dense(&p, nq, nk), true, g_h, false, 1.0);
                // dP = dO·Vᵀ, then through the softmax: dS = P ⊙ (dP − Σ_row dP ⊙ P), times the
                // scale of the scores.
                let mut ds = head_product(precision, g_h, false, v_h, true, 1.0);
                for (ds_row, p_row) in ds.chunks_exact_mut(nk).zip(p.chunks_exact(nk)) {
                    let dot: f32 = ds_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                    for (s, &p) in ds_row.iter_mut().zip(p_row) {
                        *s = p * (*s - dot) * d.scale();
                    }
                }
                // dQ = dS·K, dK = dSᵀ·Q
                let dq_h = head_product(precision, View::dense(&ds, nq, nk), false, k_h, false, 1.0);
                let dk_h = head_product(precision, View::dense(&ds, nq, nk), true, q_h, false, 1.0);
                // SAFETY: each block (item b's rows, head h's columns) lies inside its buffer;
                // tasks write disjoint blocks and nothing reads the buffers meanwhile.
                unsafe {
                    scatter(dq_ptr, b * nq * qk + h * d.d_qk, qk, &dq_h, d.d_qk);
                    scatter(dk_ptr, b * nk * qk + h * d.d_qk, qk, &dk_h, d.d_qk);
                    scatter(dv_ptr, b * nk * vc + h * d.d_v, vc, &dv_h, d.d_v);
                }
            });
        }
        let device = grad_res.device();
        Ok((
            Some(Tensor::from_vec(dq, shapes[0].clone(), device)?),
            Some(Tensor::from_vec(dk, shapes[1].clone(), device)?),
            Some(Tensor::from_vec(dv, shapes[2].clone(), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use perceiver::Precision;

    use super::super::composed::{attend_composed, attention_bias};
    use super::super::WeightPacks;
    use crate::error::Result;
    use crate::model::ops::max_abs_diff;

    /// Values and the gradients of q, k and v against candle's composed ops in f64, with and
    /// without a padding mask, on sizes that are not multiples of the kernel's blocks: in f32 to
    /// 1e-5; in a bf16 scope to 3e-2 of each one's largest value, and off by more than bf16's
    /// rounding somewhere (its products did round).
    #[test]
    fn fused_attention_matches_composed_ops() -> Result<()> {
        if !perceiver_kernels::sgemm::available() {
            println!("no AVX-512: attention takes candle's ops, nothing to compare");
            return Ok(());
        }
        let dev = Device::Cpu;
        let mut bf16_worst = 0f64;
        for (batch, nq, nk, heads, d_qk, d_v, masked) in [
            (1, 1, 1, 1, 1, 1, false),
            (2, 7, 13, 3, 5, 4, true),
            (3, 70, 33, 2, 16, 24, true),
            (1, 19, 130, 4, 8, 8, false),
        ] {
            let q = Tensor::randn(0f32, 1.0, (batch, nq, heads * d_qk), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (batch, nk, heads * d_qk), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (batch, nk, heads * d_v), &dev)?;
            let probe = Tensor::randn(0f32, 1.0, (batch, nq, heads * d_v), &dev)?;
            // Item i keeps its first nk - 2i keys (at least one).
            let mask: Vec<f32> = (0..batch)
                .flat_map(|i| {
                    (0..nk).map(move |j| {
                        if !masked || j + 2 * i < nk.max(2 * i + 1) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let bias = attention_bias(&Tensor::from_vec(mask, (batch, nk), &dev)?)?;

            let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
            let pass = || -> Result<_> {
                let out = super::super::attention(
                    vars[0].as_tensor(),
                    vars[1].as_tensor(),
                    vars[2].as_tensor(),
                    heads,
                    Some(&bias),
                )?;
                let grads = (&out * &probe)?.sum_all()?.backward()?;
                Ok((out, grads))
            };

            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let vars64 = [&q, &k, &v].map(|t| Var::from_tensor(&f64_of(t)).unwrap());
            let bias64 = f64_of(&bias).clamp(-1e30, 0.0)?.to_dtype(DType::F64)?;
            let want = attend_composed(
                vars64[0].as_tensor(),
                vars64[1].as_tensor(),
                vars64[2].as_tensor(),
                heads,
                Some(&bias64),
            )?;
            let want_grads = (&want * f64_of(&probe))?.sum_all()?.backward()?;

            let case = format!("batch {batch}, {nq}x{nk}, {heads} heads of {d_qk}/{d_v}, masked {masked}");
            for precision in [Precision::F32, Precision::Bf16] {
                let (out, grads) = WeightPacks::new(precision).scope(pass)?;
                let mut pairs = vec![("forward", &out, &want)];
                for (i, what) in ["dq", "dk", "dv"].into_iter().enumerate() {
                    pairs.push((
                        what,
                        grads.get(&vars[i]).unwrap(),
                        want_grads.get(&vars64[i]).unwrap(),
                    ));
                }
                for (what, got, want) in pairs {
                    let diff = max_abs_diff(got, want);
                    match precision {
                        Precision::F32 => assert!(diff < 1e-5, "{case}: {what} worst |Δ| {diff:e}"),
                        Precision::Bf16 => {
                            let largest = want.abs()?.max_all()?.to_scalar::<f64>()?;
                            let relative = diff / largest.max(1e-30);
                            println!("{case}, bf16: {what} worst |Δ| {relative:.2e} of the largest");
                            assert!(relative < 3e-2, "{case}: bf16 {what} worst |Δ| {relative:e}");
                            bf16_worst = bf16_worst.max(relative);
                        }
                    }
                }
            }
        }
        assert!(
            bf16_worst > 1e-4,
            "the bf16 products rounded nothing: {bf16_worst:e}"
        );
        Ok(())
    }
}
