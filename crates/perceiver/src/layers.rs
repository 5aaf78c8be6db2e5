//! The two parameterised building blocks every Perceiver IO part is made of: a dense layer and a
//! LayerNorm, on the kernels of `perceiver-kernels`, plus [`Linear`], a dense layer usable outside
//! a model (to time products of a given shape as the model runs them).
//!
//! A dense layer keeps its weights as read from the checkpoint and, once the model's
//! [`Precision`] is set, packed for that precision's kernel; the packed copy is then the only one
//! resident (the checkpoint's pages are released).

use crate::checkpoint::names::{LinearNames, NormNames};
use crate::checkpoint::Param;
use crate::config::{Activation, LAYER_NORM_EPS};
use crate::error::{Error, Result};
use crate::runtime::on_pool;
use perceiver_kernels::matmul::{matmul, Rhs, StackedRows, View};
use perceiver_kernels::{bf16, rows, sgemm};

/// Number type of the weight matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32: transformers' numbers.
    #[default]
    F32,
    /// Weight matrix products with bf16 operands and f32 accumulation: on AMX tiles where the
    /// CPU has them, on `vdpbf16ps` where it has a fast one (AMD's AVX-512 BF16), else as f32
    /// multiply-adds over bf16 widened to f32 (AVX-512 or AVX2). Where the bf16 products do not
    /// widen, so are attention's scores and weighted sums for heads at least 64 wide on that
    /// side (both sides in a streamed cross-attention); on AMX and `vdpbf16ps` every head of up
    /// to 2,048 keys, whatever its widths, as one loop over a strip of query rows at a time (its
    /// exponentials rounded to bf16 there), and on `vdpbf16ps` every streamed cross-attention's
    /// head so, a block of keys at a time. Softmax, norms and activations stay in f32.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::InvalidInput(format!(
                "unknown precision {other:?}: use f32 or bf16"
            ))),
        }
    }
}

/// A dense layer `x·Wᵀ + b` (W stored `[out, in]` as transformers stores it).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    /// Rows of W (outputs) and its columns (inputs).
    n: usize,
    k: usize,
    /// W as read; `None` in a stack of layers ([`Dense::stacked`]) once packed, which keeps
    /// only its packed copy.
    weight: Option<Param>,
    bias: Param,
    /// W packed for the bf16 kernel, when the engine runs in bf16.
    packed: Option<bf16::PackedMatrix>,
    /// W packed for the f32 kernel (AVX-512 or AVX2), when the engine runs in f32 on such a CPU
    /// (shared by clones).
    packed_f32: Option<std::sync::Arc<sgemm::PackedWeights>>,
}

impl Dense {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &LinearNames) -> Result<Self> {
        Ok(Self::new(get(&names.weight.name)?, get(&names.bias.name)?))
    }

    /// A layer of `weight` (`[out, in]`) and `bias` (`[out]`), not yet packed.
    pub(crate) fn new(weight: Param, bias: Param) -> Self {
        Self {
            n: weight.shape()[0],
            k: weight.shape()[1],
            weight: Some(weight),
            bias,
            packed: None,
            packed_f32: None,
        }
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }

    /// The weight (`[out, in]`) and bias as read (`None` for a packed stack of layers).
    pub(crate) fn parts(&self) -> Option<(&Param, &Param)> {
        Some((self.weight.as_ref()?, &self.bias))
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.k
    }

    /// Packs W for `precision`'s kernel. A packed stack of layers ([`Dense::stacked`]) has no
    /// W left to pack: it is stacked again from its parts instead.
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        let Some(weight) = &self.weight else {
            debug_assert!(false, "a packed stack of layers is stacked again, not repacked");
            return;
        };
        // f32 weights already packed are shared by clones: kept.
        if precision == Precision::F32 && self.packed_f32.is_some() {
            self.packed = None;
            return;
        }
        let parts = [View::dense(weight.data(), self.n, self.k)];
        (self.packed, self.packed_f32) = packed_for(StackedRows::new(&parts), precision);
        if self.packed.is_some() || self.packed_f32.is_some() {
            weight.release_pages();
        }
    }

    /// Layers that read the same input as one layer, packed for `precision`: their weights
    /// stacked (`[Σ out, in]`), so each output row holds theirs side by side, in order
    /// (attention's key and value projections, and in self-attention its query's: one product
    /// and one conversion of the input instead of three). A packed kernel's stack is packed
    /// from the parts' rows where they lie, and keeps no f32 copy; the parts are not packed,
    /// and their mapped pages are released.
    ///
    /// The parts' input widths agree in any model that loaded: the checkpoint's shapes are
    /// checked against the config, which gives the parts of a layer one input.
    pub(crate) fn stacked(parts: &[&Dense], precision: Precision) -> Self {
        let k = parts.first().expect("a stack of layers has parts").k;
        let weights: Vec<View> = parts
            .iter()
            .map(|part| {
                assert!(part.k == k, "stacked layers read one input");
                let weight = part.weight.as_ref().expect("stacked layers have their weights");
                View::dense(weight.data(), part.n, k)
            })
            .collect();
        let n = parts.iter().map(|part| part.n).sum();
        let bias = parts.iter().flat_map(|part| part.bias.data()).copied().collect();
        let rows = StackedRows::new(&weights);
        let (packed, packed_f32) = packed_for(rows, precision);
        // Only the portable product needs W as one matrix in memory.
        let weight = (packed.is_none() && packed_f32.is_none()).then(|| {
            let weight = (0..n).flat_map(|r| rows.row(r)).copied().collect();
            Param::owned(weight, vec![n, k]).expect("n·k values")
        });
        let stack = Dense {
            n,
            k,
            weight,
            bias: Param::owned(bias, vec![n]).expect("n values"),
            packed,
            packed_f32,
        };
        for part in parts {
            if let Some(weight) = &part.weight {
                weight.release_pages();
            }
        }
        stack
    }

    /// `x` (`[rows, in]`) → `[rows, out]`.
    pub(crate) fn forward(&self, x: &[f32], threads: usize) -> Vec<f32> {
        self.forward_activated(x, None, threads)
    }

    /// `act(x·Wᵀ + b)`: on the packed kernels the bias and the activation are applied by the
    /// product's tasks on their blocks of the output ([`sgemm::PackedWeights::linear`],
    /// [`bf16::PackedMatrix::linear`]).
    pub(crate) fn forward_activated(
        &self,
        x: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        let activation = activation.map(perceiver_kernels::Activation::from);
        let rows = x.len() / self.in_dim();
        match (&self.packed, &self.packed_f32) {
            (Some(bf16), _) => return bf16.linear(x, rows, self.bias.data(), activation, threads),
            (None, Some(f32)) => return f32.linear(x, rows, self.bias.data(), activation, threads),
            (None, None) => {}
        }
        let mut out = rows::repeat_rows(self.bias.data(), rows);
        self.accumulate(x, &mut out, threads);
        if let Some(act) = activation {
            rows::activate(&mut out, act);
        }
        out
    }

    /// `act(norm(x)·Wᵀ + b)`. In bf16 each row is normed into a scratch row and converted to
    /// bf16 from there ([`bf16::Rows::Made`]), so the normed rows are never stored whole in f32.
    pub(crate) fn forward_normed(
        &self,
        norm: &Norm,
        x: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        let Some(packed) = &self.packed else {
            return self.forward_activated(&norm.forward(x), activation, threads);
        };
        let k = self.k;
        let make = |r: usize, row: &mut [f32]| norm.forward_row(&x[r * k..(r + 1) * k], row);
        let activation = activation.map(perceiver_kernels::Activation::from);
        let rows = x.len() / k;
        packed.linear_rows(
            bf16::Rows::Made(&make),
            rows,
            self.bias.data(),
            activation,
            threads,
        )
    }

    /// [`forward_normed`](Self::forward_normed) kept as `next`'s bf16 input where both run on
    /// AMX tiles ([`bf16::PackedMatrix::linear_rows_to_tiles`]), for
    /// [`forward_into_from_tiles`](Self::forward_into_from_tiles); `None` elsewhere.
    pub(crate) fn forward_normed_to_tiles(
        &self,
        norm: &Norm,
        x: &[f32],
        activation: Option<Activation>,
        next: &Dense,
        threads: usize,
    ) -> Option<bf16::TileRows> {
        let (packed, _) = (self.packed.as_ref()?, next.packed.as_ref()?);
        let k = self.k;
        let make = |r: usize, row: &mut [f32]| norm.forward_row(&x[r * k..(r + 1) * k], row);
        let activation = activation.map(perceiver_kernels::Activation::from);
        packed.linear_rows_to_tiles(
            bf16::Rows::Made(&make),
            x.len() / k,
            self.bias.data(),
            activation,
            threads,
        )
    }

    /// [`forward_into`](Self::forward_into) from the bf16 input that the layer before made
    /// ([`forward_normed_to_tiles`](Self::forward_normed_to_tiles) with this as `next`).
    pub(crate) fn forward_into_from_tiles(&self, x: &bf16::TileRows, out: &mut [f32], threads: usize) {
        let packed = self
            .packed
            .as_ref()
            .expect("tiles are made only for a layer in bf16");
        packed.linear_into_from_tiles(x, self.bias.data(), out, threads);
    }

    /// `out += x·Wᵀ + b`: the residual stream takes the layer's output without another pass.
    /// On the packed kernels each task adds the bias to its block of `out` as it takes it.
    pub(crate) fn forward_into(&self, x: &[f32], out: &mut [f32], threads: usize) {
        let rows = x.len() / self.k;
        match (&self.packed, &self.packed_f32) {
            (Some(bf16), _) => bf16.linear_into(x, rows, self.bias.data(), out, threads),
            (None, Some(f32)) => f32.linear_into(x, rows, self.bias.data(), out, threads),
            (None, None) => {
                rows::add_to_rows(out, self.bias.data());
                self.accumulate(x, out, threads);
            }
        }
    }

    pub(crate) fn accumulate(&self, x: &[f32], out: &mut [f32], threads: usize) {
        let (n, k) = (self.n, self.k);
        let rows = x.len() / k;
        match (&self.packed, &self.packed_f32, &self.weight) {
            (Some(bf16), _, _) => bf16.matmul_accumulate(x, rows, out, threads),
            (None, Some(f32), _) => f32.matmul_accumulate(x, rows, out, threads),
            (None, None, Some(weight)) => matmul(
                out,
                n,
                View::dense(x, rows, k),
                Rhs::Transposed(View::dense(weight.data(), n, k)),
                1.0,
                true,
                threads,
            ),
            (None, None, None) => unreachable!("a layer without its weight is packed"),
        }
    }
}

/// W (its rows where they lie) packed for `precision`'s kernel: bf16 panels, or f32 panels
/// where a packed f32 kernel runs; neither where the portable product runs (it reads W as is).
fn packed_for(
    w: StackedRows,
    precision: Precision,
) -> (
    Option<bf16::PackedMatrix>,
    Option<std::sync::Arc<sgemm::PackedWeights>>,
) {
    match precision {
        Precision::Bf16 => (Some(bf16::PackedMatrix::pack_stacked(w)), None),
        Precision::F32 if sgemm::available() => (
            None,
            Some(std::sync::Arc::new(sgemm::PackedWeights::pack_stacked(w))),
        ),
        Precision::F32 => (None, None),
    }
}

/// A LayerNorm over the last dimension (eps 1e-5, as every Perceiver LayerNorm in transformers).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    weight: Param,
    bias: Param,
}

impl Norm {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &NormNames) -> Result<Self> {
        Ok(Self {
            weight: get(&names.weight.name)?,
            bias: get(&names.bias.name)?,
        })
    }

    /// `x`: rows of the norm's width; each row normalised with transformers' eps.
    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        rows::layer_norm(x, self.weight.data(), self.bias.data(), LAYER_NORM_EPS as f32)
    }

    /// [`forward`](Self::forward) of one row into `out`, on the calling thread.
    pub(crate) fn forward_row(&self, x: &[f32], out: &mut [f32]) {
        let (weight, bias) = (self.weight.data(), self.bias.data());
        rows::layer_norm_into(x, out, weight, bias, LAYER_NORM_EPS as f32);
    }
}

/// `x·Wᵀ + b`, with W stored `[out, in]` as transformers stores it, packed for `precision`'s
/// kernel exactly as the engine packs its layers' weights.
#[derive(Debug, Clone)]
pub struct Linear {
    dense: Dense,
}

impl Linear {
    /// `weight`: `[out_dim, in_dim]` row-major; `bias`: `[out_dim]` (its length sets `out_dim`).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, in_dim: usize, precision: Precision) -> Result<Self> {
        let out_dim = bias.len();
        if in_dim == 0 || out_dim == 0 {
            return Err(Error::InvalidInput(format!(
                "a linear layer needs positive widths, got {out_dim}x{in_dim}"
            )));
        }
        if out_dim.checked_mul(in_dim) != Some(weight.len()) {
            return Err(Error::InvalidInput(format!(
                "the weight has {} values, not {out_dim}x{in_dim} (bias length x in_dim)",
                weight.len()
            )));
        }
        let mut dense = Dense::new(
            Param::owned(weight, vec![out_dim, in_dim])?,
            Param::owned(bias, vec![out_dim])?,
        );
        dense.set_precision(precision);
        Ok(Self { dense })
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.dense.in_dim()
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.dense.out_dim()
    }

    /// `x` (`[rows, in_dim]`, row-major) → `[rows, out_dim]`, on `threads` threads (0: rayon's
    /// pool size; at most [`MAX_THREADS`](crate::model::MAX_THREADS)).
    pub fn forward(&self, x: &[f32], threads: usize) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.in_dim()) {
            return Err(Error::InvalidInput(format!(
                "{} input values are not rows of {}",
                x.len(),
                self.in_dim()
            )));
        }
        let threads = if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads.min(crate::model::MAX_THREADS)
        };
        Ok(on_pool(|| self.dense.forward(x, threads)))
    }

    /// The multiply-add work of [`forward`](Self::forward) over `rows` rows, 2 FLOP each.
    pub fn flops(&self, rows: usize) -> f64 {
        // In f64: the product of the counts may overflow usize.
        2.0 * rows as f64 * self.in_dim() as f64 * self.out_dim() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of `x` and `w` plus `b` in f64, each operand first passed through `round`.
    fn plain(x: &[f32], w: &[f32], b: &[f32], in_dim: usize, round: fn(f32) -> f32) -> Vec<f32> {
        let (rows, out_dim) = (x.len() / in_dim, b.len());
        let mut out = vec![0f32; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                let dot: f64 = (0..in_dim)
                    .map(|i| round(x[r * in_dim + i]) as f64 * round(w[o * in_dim + i]) as f64)
                    .sum();
                out[r * out_dim + o] = (dot + b[o] as f64) as f32;
            }
        }
        out
    }

    /// Both precisions against a plain loop, on a shape with odd widths; for bf16 the loop's
    /// operands are rounded to bf16 first, as the kernels round them.
    #[test]
    fn forward_matches_the_plain_product() {
        let (rows, in_dim, out_dim) = (29, 37, 21);
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| ((i * 7) % 19) as f32 * 0.113 - 0.9)
            .collect();
        let b: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.25 - 2.0).collect();
        let x: Vec<f32> = (0..rows * in_dim)
            .map(|i| ((i * 5) % 23) as f32 * 0.097 - 1.1)
            .collect();
        use perceiver_kernels::bf16::{from_bf16_bits, to_bf16_bits};
        let to_bf16 = |v: f32| from_bf16_bits(to_bf16_bits(v));
        for (precision, round) in [
            (Precision::F32, (|v| v) as fn(f32) -> f32),
            (Precision::Bf16, to_bf16),
        ] {
            let expected = plain(&x, &w, &b, in_dim, round);
            let linear = Linear::new(w.clone(), b.clone(), in_dim, precision).unwrap();
            assert_eq!((linear.in_dim(), linear.out_dim()), (in_dim, out_dim));
            let got = linear.forward(&x, 2).unwrap();
            let worst = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (g - e).abs())
                .fold(0f32, f32::max);
            println!("{precision:?}: worst difference {worst:e}");
            assert!(worst <= 1e-4, "{precision:?}: worst difference {worst}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(Linear::new(vec![0.0; 6], vec![0.0; 4], 2, Precision::F32).is_err());
        assert!(Linear::new(vec![], vec![], 3, Precision::F32).is_err());
        let linear = Linear::new(vec![0.0; 6], vec![0.0; 3], 2, Precision::F32).unwrap();
        assert!(linear.forward(&[1.0; 5], 1).is_err());
        assert_eq!(linear.forward(&[1.0; 4], 1).unwrap().len(), 6);
        // out_dim × in_dim overflows: an error, not a panic (or a wrapped product that matched).
        assert!(Linear::new(vec![], vec![0.0; 2], usize::MAX, Precision::F32).is_err());
        assert!(Linear::new(vec![], vec![0.0; 2], 1 << 63, Precision::F32).is_err());
        // Any thread count runs; the work of any row count is a finite number.
        assert_eq!(linear.forward(&[1.0; 4], usize::MAX).unwrap().len(), 6);
        assert!(linear.flops(usize::MAX).is_finite());
    }
}
