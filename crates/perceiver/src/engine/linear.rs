//! One dense layer on the engine's kernels, outside a model: for timing the products of a given
//! shape as the engine runs them (`perceiver bench latent`), or for using the kernels directly.

use super::{on_pool, Dense, Param, Precision};
use crate::error::{Error, Result};

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
        if weight.len() != out_dim * in_dim {
            return Err(Error::InvalidInput(format!(
                "the weight has {} values, not {out_dim}x{in_dim} (bias length x in_dim)",
                weight.len()
            )));
        }
        let mut dense = Dense {
            weight: Param::owned(weight, vec![out_dim, in_dim]),
            bias: Param::owned(bias, vec![out_dim]),
            packed: None,
            packed_f32: None,
        };
        dense.set_precision(precision);
        Ok(Self { dense })
    }

    pub fn in_dim(&self) -> usize {
        self.dense.in_dim()
    }

    pub fn out_dim(&self) -> usize {
        self.dense.out_dim()
    }

    /// `x` (`[rows, in_dim]`, row-major) → `[rows, out_dim]`, on `threads` threads (0: rayon's
    /// pool size).
    pub fn forward(&self, x: &[f32], threads: usize) -> Result<Vec<f32>> {
        if x.len() % self.in_dim() != 0 {
            return Err(Error::InvalidInput(format!(
                "{} input values are not rows of {}",
                x.len(),
                self.in_dim()
            )));
        }
        let threads = if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        };
        Ok(on_pool(|| self.dense.forward(x, threads)))
    }

    /// The multiply-add work of [`forward`](Self::forward) over `rows` rows, 2 FLOP each.
    pub fn flops(&self, rows: usize) -> f64 {
        2.0 * (rows * self.in_dim() * self.out_dim()) as f64
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
    }
}
