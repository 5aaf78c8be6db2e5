//! The gradients of one update: candle's backward pass, with the dense layers' weight and bias
//! gradients accumulated in place beside it.
//!
//! candle's backward pass starts every gradient as zeros and adds each contribution into a fresh
//! tensor, one thread doing both: for the dense layers' weights, nearly all of a model's
//! parameters, that is a memset and an add over every matrix in every step. While
//! [`Gradients::accumulate`] runs, the dense layers ([`crate::model::ops::linear`]) add their
//! weight and bias gradients straight into one buffer per parameter instead (their products
//! accumulate onto it), so micro-batches of one update also share those buffers.

use std::collections::HashMap;

use candle_core::{Tensor, TensorId, Var};

use crate::error::Result;
use crate::model::ops::collecting_dense_grads;

/// The summed gradients of some parameters over one or more backward passes.
pub struct Gradients {
    params: Vec<Var>,
    /// Gradients candle's backward pass computed, per parameter (summed over passes).
    candle: Vec<Option<Tensor>>,
    /// Gradients the dense layers accumulated, by tensor id.
    dense: HashMap<TensorId, Vec<f32>>,
}

impl Gradients {
    /// No gradients yet, for `params` (in the order [`Gradients::into_tensors`] returns them).
    pub fn new<'a>(params: impl IntoIterator<Item = &'a Var>) -> Self {
        let params: Vec<Var> = params.into_iter().cloned().collect();
        Self {
            candle: vec![None; params.len()],
            params,
            dense: HashMap::new(),
        }
    }

    /// Adds the gradients of `loss` (a scalar) with respect to the parameters.
    pub fn accumulate(&mut self, loss: &Tensor) -> Result<()> {
        let store = collecting_dense_grads(&mut self.dense, || loss.backward())?;
        for (param, sum) in self.params.iter().zip(&mut self.candle) {
            if let Some(grad) = store.get(param.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(previous) => (previous + grad)?,
                    None => grad.clone(),
                });
            }
        }
        Ok(())
    }

    /// The gradient of each parameter, in the order given to [`Gradients::new`]; `None` for a
    /// parameter no pass reached.
    pub fn into_tensors(mut self) -> Result<Vec<Option<Tensor>>> {
        self.params
            .iter()
            .zip(self.candle)
            .map(|(param, from_candle)| {
                let dense = match self.dense.remove(&param.as_tensor().id()) {
                    Some(buffer) => Some(Tensor::from_vec(buffer, param.shape(), param.device())?),
                    None => None,
                };
                Ok(match (dense, from_candle) {
                    (Some(a), Some(b)) => Some((a + b)?),
                    (a, b) => a.or(b),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::linear;
    use candle_core::{DType, Device};

    /// A dense layer applied twice (a shared block), over two passes (two micro-batches), gets
    /// the gradients candle's own backward pass gives it.
    #[test]
    fn dense_gradients_collected_in_place_equal_candles() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 5, &dev)?)?;
        let scale = Var::from_tensor(&Tensor::randn(0f32, 1.0, 5, &dev)?)?;
        let inputs: Vec<Tensor> = (0..2)
            .map(|_| Tensor::randn(0f32, 1.0, (3, 7), &dev))
            .collect::<candle_core::Result<_>>()?;
        let loss = |x: &Tensor| -> Result<Tensor> {
            // y = linear(linear(x)[:, :5] padded back to 7 inputs) ⊙ scale, summed.
            let h = linear(x, w.as_tensor(), b.as_tensor())?;
            let h = Tensor::cat(&[&h, &h.narrow(1, 0, 2)?], 1)?;
            let y = linear(&h, w.as_tensor(), b.as_tensor())?;
            Ok(y.broadcast_mul(scale.as_tensor())?.sqr()?.sum_all()?)
        };
        let mut collected = Gradients::new([&w, &b, &scale]);
        let mut want: Vec<Tensor> = Vec::new();
        for x in &inputs {
            let l = loss(x)?;
            collected.accumulate(&l)?;
            let store = l.backward()?;
            let plain: Vec<Tensor> = [&w, &b, &scale]
                .iter()
                .map(|v| store.get(v.as_tensor()).unwrap().clone())
                .collect();
            want = if want.is_empty() {
                plain
            } else {
                want.iter()
                    .zip(&plain)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?
            };
        }
        // The dense layer's gradients came from the buffers, not from candle.
        for param in [&w, &b] {
            assert!(collected.dense.contains_key(&param.as_tensor().id()));
        }
        assert!(collected.candle[0].is_none() && collected.candle[1].is_none());
        assert!(collected.candle[2].is_some());
        let got = collected.into_tensors()?;
        for ((got, want), what) in got.iter().zip(&want).zip(["weight", "bias", "scale"]) {
            let got = got.as_ref().unwrap_or_else(|| panic!("{what}: no gradient"));
            assert_eq!(got.dims(), want.dims(), "{what}");
            let diff = (got - want)?
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let size = want.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(
                diff <= 1e-5 * size,
                "{what}: differs by {diff:e} (largest {size:e})"
            );
        }
        Ok(())
    }

    /// A parameter no pass reaches has no gradient.
    #[test]
    fn an_unreached_parameter_has_none() -> Result<()> {
        let dev = Device::Cpu;
        let used = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev)?)?;
        let unused = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev)?)?;
        let mut grads = Gradients::new([&used, &unused]);
        grads.accumulate(&used.as_tensor().sum_all()?)?;
        let got = grads.into_tensors()?;
        assert!(got[0].is_some() && got[1].is_none());
        Ok(())
    }
}
