//! Matrix products that train, on the engine's f32 kernels.
//!
//! candle's CPU matmul is the `gemm` crate, which on stable Rust stops at AVX2: on a CPU with
//! AVX-512 it runs at half the FMA width, and the products are most of a training step. [`matmul`]
//! is a candle custom op whose forward and backward products go to the engine's AVX-512 kernel
//! ([`perceiver_kernels::sgemm`]) when the CPU has it, and to `gemm` on strided views otherwise.
//!
//! Only f32 on the CPU takes this path; other dtypes and devices use candle's matmul (which
//! candle differentiates), so the f64 gradient checks and GPU runs are unchanged.
//!
//! Inside a [`WeightPacks::scope`] of [`Precision::Bf16`] (mixed precision), the dense layers'
//! three products (the output, the input's gradient, the weight's gradient) round their operands
//! to bf16 and sum in f32 on the engine's bf16 kernel ([`perceiver_kernels::bf16`]): AMX tiles
//! or `vdpbf16ps` where the CPU has them. Their outputs, every other op, the gradients' sums and
//! the optimizer's master weights stay f32.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, TensorId};
use perceiver::Precision;
use perceiver_kernels::bf16::PackedMatrix;
use perceiver_kernels::matmul::{self as engine_matmul, Rhs, View};
use perceiver_kernels::sgemm::{self, PackedWeights};
use rayon::prelude::*;

use super::contiguous;
use crate::error::Result;

/// How the right operand of [`matmul`] is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RightOperand {
    /// `b` is `[…, k, n]`: the product is `a·b`.
    Plain,
    /// `b` is `[…, n, k]`: the product is `a·bᵀ` (a weight as PyTorch stores it, or attention
    /// keys for `q·kᵀ`).
    Transposed,
}

/// `a·b` or `a·bᵀ` over the last two dimensions, leading dimensions equal (no broadcasting),
/// with a backward pass for both operands.
///
/// # Shapes
/// `a`: `[…, m, k]`; `b`: `[…, k, n]` ([`RightOperand::Plain`]) or `[…, n, k]`
/// ([`RightOperand::Transposed`]). Returns `[…, m, n]`.
pub fn matmul(a: &Tensor, b: &Tensor, right: RightOperand) -> Result<Tensor> {
    if !a.device().is_cpu() || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Ok(match right {
            RightOperand::Plain => a.matmul(b)?,
            RightOperand::Transposed => a.matmul(&b.t()?)?,
        });
    }
    let op = Product {
        a_transposed: false,
        b_transposed: right == RightOperand::Transposed,
    };
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, op)?)
}

/// `x·Wᵀ + b` (a dense layer, `W` stored `[out, in]` as PyTorch does), with a backward pass for
/// all three. The bias is written into the output before the product accumulates onto it, and its
/// gradient is one pass of column sums: no separate broadcast add and reduction.
///
/// # Shapes
/// `x`: `[rows, in]`, `weight`: `[out, in]`, `bias`: `[out]`. Returns `[rows, out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let all_f32 = [x, weight, bias].iter().all(|t| t.dtype() == DType::F32);
    if !x.device().is_cpu() || !all_f32 {
        return Ok(x.matmul(&weight.t()?)?.broadcast_add(bias)?);
    }
    let weight = weight.contiguous()?;
    let op = Linear {
        weight: weight.is_variable().then(|| weight.id()),
    };
    Ok(x.contiguous()?.apply_op3(&weight, &bias.contiguous()?, op)?)
}

struct Linear {
    /// The weight's id when it is a variable: its packs may be kept ([`WeightPacks`]).
    weight: Option<TensorId>,
}

impl candle_core::CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "perceiver-linear"
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
        let (x_dims, w_dims, b_dims) = (l1.dims(), l2.dims(), l3.dims());
        let (&[m, k], &[n, k_w], &[n_b]) = (x_dims, w_dims, b_dims) else {
            candle_core::bail!(
                "linear: input {x_dims:?}, weight {w_dims:?}, bias {b_dims:?}: need 2, 2 and 1 dimensions"
            );
        };
        if k != k_w || n != n_b {
            candle_core::bail!("linear: input {x_dims:?}, weight {w_dims:?} and bias {b_dims:?} do not fit");
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (s1, s2, s3) else {
            candle_core::bail!("linear: f32 operands only");
        };
        let (x, w, b) = (
            contiguous(x, l1, "linear input")?,
            contiguous(w, l2, "linear weight")?,
            contiguous(b, l3, "linear bias")?,
        );
        let mut y = perceiver_kernels::rows::repeat_rows(b, m);
        if m > 0 && n > 0 && k > 0 {
            let threads = rayon::current_num_threads();
            let kept = with_kept_pack(self.weight, Packing::Forward, w, n, k, |packed| {
                packed.accumulate(x, m, &mut y, threads)
            });
            if kept.is_none() {
                let product = Product {
                    a_transposed: false,
                    b_transposed: true,
                };
                product.one(&mut y, x, w, m, k, n, threads);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let plain = Product {
            a_transposed: false,
            b_transposed: false,
        };
        let g_transposed = Product {
            a_transposed: true,
            b_transposed: false,
        };
        let g = grad_res.contiguous()?;
        let (m, n) = g.dims2()?;
        let k = x.dim(1)?;
        let x = x.contiguous()?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = weight.storage_and_layout();
        let (
            candle_core::Storage::Cpu(CpuStorage::F32(g_data)),
            candle_core::Storage::Cpu(CpuStorage::F32(x_data)),
            candle_core::Storage::Cpu(CpuStorage::F32(w_data)),
        ) = (&*g_storage, &*x_storage, &*w_storage)
        else {
            candle_core::bail!("linear backward: f32 CPU tensors expected");
        };
        let (g_rows, x_rows, w_rows) = (
            contiguous(g_data, g_layout, "linear gradient")?,
            contiguous(x_data, x_layout, "linear input")?,
            contiguous(w_data, w_layout, "linear weight")?,
        );
        // dX = G·W.
        let mut dx = zeroed(m * k);
        if m > 0 && n > 0 && k > 0 {
            let threads = rayon::current_num_threads();
            let weight_id = weight.is_variable().then(|| weight.id());
            let kept = with_kept_pack(weight_id, Packing::InputGradient, w_rows, n, k, |packed| {
                packed.accumulate(g_rows, m, &mut dx, threads)
            });
            if kept.is_none() {
                plain.one(&mut dx, g_rows, w_rows, m, n, k, threads);
            }
        }
        let dx = Tensor::from_vec(dx, (m, k), g.device())?;
        // dW += Gᵀ·X, db += the column sums of G.
        let weight_gradient = |dw: &mut [f32]| {
            if m > 0 && n > 0 && k > 0 {
                let threads = rayon::current_num_threads();
                if scope_precision() == Precision::Bf16 && sgemm::available() {
                    // The bf16 kernel reads its left operand by rows: Gᵀ is made (n·m copies
                    // against n·m·k multiply-adds), X packed as the right one.
                    let g_t = transpose(g_rows, m, n, threads > 1);
                    let x_packed = PackedMatrix::pack_view(View::dense(x_rows, m, k), false, threads > 1);
                    x_packed.matmul_accumulate(&g_t, n, dw, threads);
                } else {
                    g_transposed.one(dw, g_rows, x_rows, n, m, k, threads);
                }
            }
        };
        let bias_gradient = |db: &mut [f32]| {
            for row in g_rows.chunks_exact(n.max(1)).take(m) {
                db.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
        };
        let dw = if accumulate_dense_grad(weight, n * k, weight_gradient) {
            None
        } else {
            let mut dw = zeroed(n * k);
            weight_gradient(&mut dw);
            Some(Tensor::from_vec(dw, (n, k), g.device())?)
        };
        let db = if accumulate_dense_grad(bias, n, bias_gradient) {
            None
        } else {
            let mut db = vec![0f32; n];
            bias_gradient(&mut db);
            Some(Tensor::from_vec(db, n, g.device())?)
        };
        Ok((Some(dx), dw, db))
    }
}

/// What a dense layer's weight `W` (`[out, in]`) is packed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Packing {
    /// The forward product `X·Wᵀ`.
    Forward,
    /// The input's gradient `G·W`.
    InputGradient,
}

impl Packing {
    /// `w` (`[out, in]`) packed for this product, its values rounded to bf16 for
    /// [`Precision::Bf16`].
    fn pack(self, precision: Precision, w: &[f32], out: usize, inputs: usize) -> Pack {
        let (view, transposed) = (View::dense(w, out, inputs), self == Packing::Forward);
        // The product's depth and width: `in` and `out` forward, the other way for the gradient.
        let (depth, width) = if transposed { (inputs, out) } else { (out, inputs) };
        let kind = match precision {
            Precision::F32 => PackKind::F32(PackedWeights::pack_view(view, transposed, 1.0, true)),
            Precision::Bf16 => PackKind::Bf16(PackedMatrix::pack_view(view, transposed, true)),
        };
        Pack { kind, depth, width }
    }

    /// `w` packed again into `packed`, in its precision.
    fn repack(self, w: &[f32], out: usize, inputs: usize, packed: &mut Pack) {
        let (view, transposed) = (View::dense(w, out, inputs), self == Packing::Forward);
        match &mut packed.kind {
            PackKind::F32(p) => p.repack(view, transposed, 1.0, true),
            PackKind::Bf16(p) => p.repack(view, transposed, true),
        }
    }
}

/// A dense layer's weight packed for one of its products.
struct Pack {
    kind: PackKind,
    /// The product's depth (the left operand's columns).
    depth: usize,
    /// The product's width (the output's columns).
    width: usize,
}

enum PackKind {
    F32(PackedWeights),
    /// Rounded to bf16, for [`Precision::Bf16`] scopes.
    Bf16(PackedMatrix),
}

impl Pack {
    /// `c[m, width] += a[m, depth] · W`, both dense: with `a` rounded to bf16 if the pack is.
    fn accumulate(&self, a: &[f32], m: usize, c: &mut [f32], threads: usize) {
        match &self.kind {
            PackKind::F32(p) => p.matmul_view(View::dense(a, m, self.depth), c, self.width, threads),
            PackKind::Bf16(p) => p.matmul_accumulate(a, m, c, threads),
        }
    }
}

/// Dense layers' weights packed for the kernel, kept from one training step to the next.
///
/// Outside a [`WeightPacks::scope`], every product packs its weight again: a copy of the whole
/// matrix, which in a step comes cold from memory, twice a pass (forward, then the input's
/// gradient) for every layer. Inside one, a variable's packs are made at its first product and
/// kept; the optimizer repacks them right after it updates the weight ([`WeightPacks::refresh`]),
/// while the weight is still in cache. Whoever changes a variable otherwise must refresh its
/// packs or [`clear`](WeightPacks::clear) them all.
#[derive(Default)]
pub struct WeightPacks {
    packs: HashMap<(TensorId, Packing), Pack>,
    precision: Precision,
}

impl WeightPacks {
    /// No packs yet; the dense layers' products inside [`scope`](Self::scope) run in
    /// `precision` (f32 for [`WeightPacks::default`]).
    pub fn new(precision: Precision) -> Self {
        Self {
            packs: HashMap::new(),
            precision,
        }
    }

    /// The precision of the dense layers' products inside [`scope`](Self::scope).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs `f` (forward and backward passes) with the dense layers using and keeping these packs.
    pub fn scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _installed = Installed::new(&KEPT_PACKS, self);
        f()
    }

    /// Repacks the packs of `weight`, if any, from its current values.
    pub fn refresh(&mut self, weight: &Tensor) -> Result<()> {
        for packing in [Packing::Forward, Packing::InputGradient] {
            let Some(packed) = self.packs.get_mut(&(weight.id(), packing)) else {
                continue;
            };
            let (storage, layout) = weight.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                return Err(crate::Error::Options(
                    "a packed weight must be an f32 CPU tensor".into(),
                ));
            };
            let (out, inputs) = layout.shape().dims2()?;
            packing.repack(contiguous(data, layout, "packed weight")?, out, inputs, packed);
        }
        Ok(())
    }

    /// Forgets every pack.
    pub fn clear(&mut self) {
        self.packs.clear();
    }
}

/// Runs `f` on the kept pack for `packing` of the variable `weight` (values `w`, `[out, in]`),
/// made first if there is none, inside a [`WeightPacks::scope`] when the kernel runs; `None`,
/// and `f` not run, otherwise.
fn with_kept_pack<R>(
    weight: Option<TensorId>,
    packing: Packing,
    w: &[f32],
    out: usize,
    inputs: usize,
    f: impl FnOnce(&Pack) -> R,
) -> Option<R> {
    let weight = weight.filter(|_| sgemm::available())?;
    KEPT_PACKS.with(|cell| {
        let mut kept = cell.borrow_mut();
        let kept = kept.as_mut()?;
        let precision = kept.precision;
        let packed = kept
            .packs
            .entry((weight, packing))
            .or_insert_with(|| packing.pack(precision, w, out, inputs));
        Some(f(packed))
    })
}

/// The precision of the [`WeightPacks::scope`] running on this thread (f32 outside one).
pub(super) fn scope_precision() -> Precision {
    KEPT_PACKS.with(|cell| {
        cell.borrow()
            .as_ref()
            .map_or(Precision::F32, |kept| kept.precision)
    })
}

thread_local! {
    /// The kept packs while a [`WeightPacks::scope`] runs on this thread.
    static KEPT_PACKS: RefCell<Option<WeightPacks>> = const { RefCell::new(None) };

    /// The buffers dense layers accumulate their parameters' gradients into, while a
    /// [`collecting_dense_grads`] call runs on this thread (candle runs a backward pass on the
    /// thread that called it).
    static DENSE_GRADS: RefCell<Option<HashMap<TensorId, Vec<f32>>>> = const { RefCell::new(None) };
}

/// Runs `backward` with the dense layers ([`linear`]) adding their weight and bias gradients
/// into `grads` (one buffer per variable, by tensor id, made at its first gradient) instead of
/// handing them to candle, whose backward pass would start each as zeros and add every
/// contribution into a fresh tensor, on one thread.
pub(crate) fn collecting_dense_grads<R>(
    grads: &mut HashMap<TensorId, Vec<f32>>,
    backward: impl FnOnce() -> R,
) -> R {
    let _installed = Installed::new(&DENSE_GRADS, grads);
    backward()
}

/// A map lent to a thread-local for a scope: given back when the scope ends, a panic included,
/// and whatever the thread-local held before put back (scopes nest).
struct Installed<'a, T: Default + 'static> {
    cell: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    lent: &'a mut T,
    previous: Option<T>,
}

impl<'a, T: Default + 'static> Installed<'a, T> {
    fn new(cell: &'static std::thread::LocalKey<RefCell<Option<T>>>, lent: &'a mut T) -> Self {
        let previous = cell.with(|c| c.replace(Some(std::mem::take(lent))));
        Self { cell, lent, previous }
    }
}

impl<T: Default + 'static> Drop for Installed<'_, T> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.lent = self.cell.with(|c| c.replace(previous)).unwrap_or_default();
    }
}

/// Adds a gradient into `param`'s buffer with `add` (given the buffer of `len` elements), if
/// gradients are being collected and `param` is a variable; false otherwise.
fn accumulate_dense_grad(param: &Tensor, len: usize, add: impl FnOnce(&mut [f32])) -> bool {
    if !param.is_variable() {
        return false;
    }
    DENSE_GRADS.with(|cell| {
        let mut collecting = cell.borrow_mut();
        let Some(grads) = collecting.as_mut() else {
            return false;
        };
        let buffer = grads.entry(param.id()).or_insert_with(|| zeroed(len));
        if buffer.len() != len {
            return false;
        }
        add(buffer);
        true
    })
}

/// `len` zeros, written by all threads when there are many (a gradient or a product's output is
/// tens of MB: one thread's memset would leave the others idle).
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    const PARALLEL_FROM: usize = 1 << 18;
    if len < PARALLEL_FROM {
        return vec![0f32; len];
    }
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()
        .par_chunks_mut(PARALLEL_FROM / 4)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: all `len` elements were initialised just above.
    unsafe { v.set_len(len) };
    v
}

/// `op(a)·op(b)` per leading index, where `op` transposes the operands flagged. The differentiable
/// op ([`matmul`]) never transposes `a`; its backward products do (`Aᵀ·G`).
#[derive(Debug, Clone, Copy)]
struct Product {
    a_transposed: bool,
    b_transposed: bool,
}

/// Leading count and the trailing two dimensions of a layout of rank ≥ 2.
fn batched(layout: &Layout, what: &str) -> candle_core::Result<(Vec<usize>, usize, usize)> {
    let dims = layout.dims();
    if dims.len() < 2 {
        candle_core::bail!("matmul: {what} has shape {dims:?}, needs two dimensions at least");
    }
    let (lead, last2) = dims.split_at(dims.len() - 2);
    Ok((lead.to_vec(), last2[0], last2[1]))
}

/// `src` (`rows × cols`, row-major) transposed, tile by tile so that both sides stay in L1.
/// `parallel` splits the output's rows over rayon's pool.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, parallel: bool) -> Vec<f32> {
    const TILE: usize = 16;
    assert_eq!(src.len(), rows * cols, "transpose: not {rows}x{cols}");
    let mut dst = vec![0f32; src.len()];
    if src.is_empty() {
        return dst;
    }
    // One band: TILE rows of the output (TILE columns of `src`), all of its columns.
    let band = |(b, out): (usize, &mut [f32])| {
        let c0 = b * TILE;
        let width = out.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for r in r0..r1 {
                let from = &src[r * cols + c0..][..width];
                for (c, &v) in from.iter().enumerate() {
                    // SAFETY: c < width and r < rows, so c·rows + r < width·rows = out.len().
                    unsafe { *out.get_unchecked_mut(c * rows + r) = v };
                }
            }
        }
    };
    if parallel {
        dst.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        dst.chunks_mut(TILE * rows).enumerate().for_each(band);
    }
    dst
}

impl Product {
    /// `c += op(a)·op(b)` for one leading index: `op(a)` is `m × k`, `op(b)` is `k × n`, `c` is
    /// `m × n`.
    #[allow(clippy::too_many_arguments)]
    fn one(&self, c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, threads: usize) {
        let b_view = if self.b_transposed {
            View::dense(b, n, k)
        } else {
            View::dense(b, k, n)
        };
        if sgemm::available() {
            // Packing B costs k·n copies against m·k·n multiply-adds; a transposed A is read in
            // place by the kernel.
            let packed = PackedWeights::pack_view(b_view, self.b_transposed, 1.0, threads > 1);
            if self.a_transposed {
                packed.matmul_transposed_x(View::dense(a, k, m), c, n, threads);
            } else {
                packed.matmul_view(View::dense(a, m, k), c, n, threads);
            }
        } else {
            let a_rows;
            let a = if self.a_transposed {
                a_rows = transpose(a, k, m, threads > 1);
                &a_rows[..]
            } else {
                a
            };
            let rhs = if self.b_transposed {
                Rhs::Transposed(b_view)
            } else {
                Rhs::Plain(b_view)
            };
            engine_matmul::matmul(c, n, View::dense(a, m, k), rhs, 1.0, true, threads);
        }
    }

    fn apply(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, self)
    }
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "perceiver-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (lead_a, a_r, a_c) = batched(l1, "the left operand")?;
        let (lead_b, b_r, b_c) = batched(l2, "the right operand")?;
        let (m, k) = if self.a_transposed { (a_c, a_r) } else { (a_r, a_c) };
        let (k_b, n) = if self.b_transposed { (b_c, b_r) } else { (b_r, b_c) };
        if lead_a != lead_b || k != k_b {
            candle_core::bail!(
                "matmul: operands {:?} and {:?} do not multiply (transposed: {}, {})",
                l1.dims(),
                l2.dims(),
                self.a_transposed,
                self.b_transposed
            );
        }
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!(
                "matmul: f32 operands only, not {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            );
        };
        let a = contiguous(a, l1, "matmul left operand")?;
        let b = contiguous(b, l2, "matmul right operand")?;
        let count: usize = lead_a.iter().product();
        let mut c = zeroed(count * m * n);
        if m > 0 && n > 0 && k > 0 {
            if count == 1 {
                self.one(&mut c, a, b, m, k, n, rayon::current_num_threads());
            } else {
                // Many small products (batch × heads): one per task.
                c.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| {
                    self.one(c, &a[i * m * k..][..m * k], &b[i * k * n..][..k * n], m, k, n, 1)
                });
            }
        }
        let mut dims = lead_a;
        dims.extend([m, n]);
        Ok((CpuStorage::F32(c), Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.a_transposed {
            candle_core::bail!("matmul: the backward pass of a transposed left operand is not implemented");
        }
        let product = |a_transposed, b_transposed| Product {
            a_transposed,
            b_transposed,
        };
        let g = grad_res;
        let (da, db) = if self.b_transposed {
            // C = A·Bᵀ: dA = G·B, dB = Gᵀ·A.
            (
                product(false, false).apply(g, b)?,
                product(true, false).apply(g, a)?,
            )
        } else {
            // C = A·B: dA = G·Bᵀ, dB = Aᵀ·G.
            (
                product(false, true).apply(g, b)?,
                product(true, false).apply(a, g)?,
            )
        };
        Ok((Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::model::ops::max_abs_diff;

    /// max |got − want| relative to max |want|.
    fn worst_relative(got: &Tensor, want: &Tensor) -> f64 {
        let scale = want
            .to_dtype(DType::F64)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        max_abs_diff(got, want) / scale.to_scalar::<f64>().unwrap().max(1e-30)
    }

    /// Forward and both gradients against candle's own matmul in f64, on odd shapes (sizes that
    /// are not multiples of the kernel's 6 rows or 64-feature panels), batched and not.
    #[test]
    fn products_and_gradients_match_candle_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        for (lead, m, k, n) in [
            (vec![], 1usize, 1usize, 1usize),
            (vec![], 7, 13, 5),
            (vec![], 67, 129, 70),
            (vec![2, 3], 9, 17, 11),
            (vec![4], 6, 64, 65),
        ] {
            for right in [RightOperand::Plain, RightOperand::Transposed] {
                let shape = |r: usize, c: usize| {
                    let mut d = lead.clone();
                    d.extend([r, c]);
                    d
                };
                let a = Tensor::randn(0f32, 1.0, shape(m, k), &dev)?;
                let b_dims = match right {
                    RightOperand::Plain => shape(k, n),
                    RightOperand::Transposed => shape(n, k),
                };
                let b = Tensor::randn(0f32, 1.0, b_dims, &dev)?;
                let probe = Tensor::randn(0f32, 1.0, shape(m, n), &dev)?;

                let (av, bv) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
                let out = matmul(av.as_tensor(), bv.as_tensor(), right)?;
                let grads = (&out * &probe)?.sum_all()?.backward()?;

                let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                let (av64, bv64) = (Var::from_tensor(&f64_of(&a))?, Var::from_tensor(&f64_of(&b))?);
                let want = matmul(av64.as_tensor(), bv64.as_tensor(), right)?; // candle's matmul
                let want_grads = (&want * f64_of(&probe))?.sum_all()?.backward()?;

                let case = format!("{lead:?} {m}x{k}x{n} {right:?}");
                let tolerance = 1e-5;
                for (what, got, want) in [
                    ("forward", &out, &want),
                    ("da", grads.get(&av).unwrap(), want_grads.get(&av64).unwrap()),
                    ("db", grads.get(&bv).unwrap(), want_grads.get(&bv64).unwrap()),
                ] {
                    assert_eq!(got.dims(), want.dims(), "{case} {what}");
                    let worst = worst_relative(got, want);
                    assert!(worst < tolerance, "{case} {what}: worst relative |Δ| {worst:e}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn linear_and_its_gradients_match_candle_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        for (m, k, n) in [(1usize, 1usize, 1usize), (13, 7, 5), (70, 33, 65), (300, 64, 262)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, n, &dev)?;
            let probe = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
            let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
            let out = linear(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?;
            let grads = (&out * &probe)?.sum_all()?.backward()?;

            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let vars64 = [&x, &w, &b].map(|t| Var::from_tensor(&f64_of(t)).unwrap());
            // f64 takes candle's composed ops.
            let want = linear(
                vars64[0].as_tensor(),
                vars64[1].as_tensor(),
                vars64[2].as_tensor(),
            )?;
            let want_grads = (&want * f64_of(&probe))?.sum_all()?.backward()?;
            let worst = worst_relative(&out, &want);
            assert!(worst < 1e-5, "{m}x{k}x{n} forward: {worst:e}");
            for (i, what) in ["dx", "dweight", "dbias"].iter().enumerate() {
                let (got, want) = (grads.get(&vars[i]).unwrap(), want_grads.get(&vars64[i]).unwrap());
                assert_eq!(got.dims(), want.dims(), "{m}x{k}x{n} {what}");
                let worst = worst_relative(got, want);
                assert!(worst < 1e-5, "{m}x{k}x{n} {what}: worst relative |Δ| {worst:e}");
            }
        }
        Ok(())
    }

    /// In a bf16 scope a dense layer's three products round their operands to bf16 and sum in
    /// f32: against f64 products of the operands so rounded (1e-5 of the largest value), and
    /// measurably off the unrounded ones (the test would fail on f32 products). The bias's
    /// gradient is the f32 column sums.
    #[test]
    fn bf16_scope_rounds_the_products_operands() -> Result<()> {
        if !sgemm::available() {
            println!("no packed kernel on this CPU: products stay f32");
            return Ok(());
        }
        let dev = Device::Cpu;
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let rounded = |t: &Tensor| f64_of(&t.to_dtype(DType::BF16).unwrap());
        for (m, k, n) in [(13usize, 70usize, 37usize), (300, 129, 262)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, n, &dev)?;
            let g = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
            let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
            let mut packs = WeightPacks::new(Precision::Bf16);
            let (y, grads) = packs.scope(|| -> Result<_> {
                let y = linear(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?;
                let grads = (&y * &g)?.sum_all()?.backward()?;
                Ok((y, grads))
            })?;
            let got = [
                y,
                grads.get(&vars[0]).unwrap().clone(),
                grads.get(&vars[1]).unwrap().clone(),
                grads.get(&vars[2]).unwrap().clone(),
            ];
            let want = |operand: &dyn Fn(&Tensor) -> Tensor| -> Result<[Tensor; 3]> {
                let (x, w, g) = (operand(&x), operand(&w), operand(&g));
                Ok([
                    x.matmul(&w.t()?)?.broadcast_add(&f64_of(&b))?,
                    g.matmul(&w)?,
                    g.t()?.matmul(&x)?,
                ])
            };
            let (want_rounded, want_exact) = (want(&rounded)?, want(&f64_of)?);
            for (i, what) in ["forward", "dx", "dweight"].iter().enumerate() {
                let worst = worst_relative(&got[i], &want_rounded[i]);
                let off_exact = worst_relative(&got[i], &want_exact[i]);
                println!("{m}x{k}x{n} {what}: {worst:e} of the rounded operands' product, {off_exact:e} of the exact");
                assert!(worst < 1e-5, "{m}x{k}x{n} {what}: worst relative |Δ| {worst:e}");
                assert!(
                    off_exact > 1e-4,
                    "{m}x{k}x{n} {what}: operands not rounded ({off_exact:e})"
                );
            }
            let sums = f64_of(&g).sum(0)?;
            let worst = worst_relative(&got[3], &sums);
            assert!(worst < 1e-6, "{m}x{k}x{n} dbias: {worst:e}");
        }
        Ok(())
    }

    /// Inside a [`WeightPacks::scope`], a dense layer's forward product and its input's gradient
    /// use the packs kept from the first pass: after the weight changes they are stale until
    /// [`WeightPacks::refresh`], and refreshed they give what packing afresh gives, bit for bit,
    /// in either precision.
    #[test]
    fn kept_packs_follow_refreshed_weights() -> Result<()> {
        if !sgemm::available() {
            println!("no f32 kernel on this CPU: nothing is packed");
            return Ok(());
        }
        let dev = Device::Cpu;
        let (m, k, n) = (9, 70, 37);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
        let pass = || -> Result<(Vec<f32>, Vec<f32>)> {
            let y = linear(x.as_tensor(), w.as_tensor(), b.as_tensor())?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let dx = grads.get(x.as_tensor()).expect("dx");
            Ok((y.flatten_all()?.to_vec1()?, dx.flatten_all()?.to_vec1()?))
        };
        for precision in [Precision::F32, Precision::Bf16] {
            let fresh = || WeightPacks::new(precision).scope(pass);
            let mut packs = WeightPacks::new(precision);
            let first = packs.scope(pass)?;
            if precision == Precision::F32 {
                assert_eq!(
                    first,
                    pass()?,
                    "kept f32 packs give the unpacked product's numbers"
                );
            }
            assert_eq!(first, fresh()?);
            assert_eq!(
                packs.packs.len(),
                2,
                "one pack for the forward product, one for dx"
            );

            w.set(&Tensor::randn(0f32, 1.0, (n, k), &dev)?)?;
            let (stale_y, stale_dx) = packs.scope(pass)?;
            let (want_y, want_dx) = fresh()?;
            assert!(
                stale_y != want_y && stale_dx != want_dx,
                "{precision:?}: stale packs hold the old weight"
            );
            packs.refresh(w.as_tensor())?;
            assert_eq!(packs.scope(pass)?, (want_y, want_dx), "{precision:?}");
        }
        Ok(())
    }

    /// The thread-locals are lent only for their scopes: a panic inside one, or a scope inside
    /// another, leaves them as they were before.
    #[test]
    fn scopes_end_with_their_calls() {
        let in_packs_scope = || KEPT_PACKS.with(|c| c.borrow().is_some());
        let collecting = || DENSE_GRADS.with(|c| c.borrow().is_some());
        let mut packs = WeightPacks::default();
        let mut grads = HashMap::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            packs.scope(|| collecting_dense_grads(&mut grads, || panic!("inside both scopes")))
        }));
        assert!(caught.is_err());
        assert!(!in_packs_scope() && !collecting());

        let (mut outer, mut inner) = (WeightPacks::default(), WeightPacks::default());
        outer.scope(|| {
            inner.scope(|| assert!(in_packs_scope()));
            assert!(in_packs_scope(), "the outer scope's packs are back");
        });
        assert!(!in_packs_scope());
    }

    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (1, 40), (37, 19), (16, 32), (70, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            for parallel in [false, true] {
                let t = transpose(&src, rows, cols, parallel);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(t[c * rows + r], src[r * cols + c], "{rows}x{cols} at {r},{c}");
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_operands_are_an_error() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((5, 6), DType::F32, &dev).unwrap();
        assert!(matmul(&a, &b, RightOperand::Plain).is_err());
        let batched = Tensor::zeros((2, 4, 6), DType::F32, &dev).unwrap();
        assert!(matmul(&a, &batched, RightOperand::Plain).is_err());
    }
}
