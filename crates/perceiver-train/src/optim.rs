//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), the learning-rate schedule and
//! gradient clipping by global norm.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init::tensor_names;
use perceiver::checkpoint::names::Role;
use perceiver::PerceiverConfig;

/// AdamW's hyper-parameters (the learning rate comes from the [`Schedule`] each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Decay rate of the first-moment (gradient mean) estimate.
    pub beta1: f64,
    /// Decay rate of the second-moment (uncentred gradient variance) estimate.
    pub beta2: f64,
    /// Added to the bias-corrected `√v` in the denominator, for numerical stability.
    pub eps: f64,
    /// Applied to linear weights only: never to LayerNorms, biases, embeddings, position tables or
    /// latents.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether weight decay applies to a tensor of this role: linear weights only.
pub fn is_decayed(role: Role) -> bool {
    role == Role::LinearWeight
}

struct Param {
    name: String,
    var: Var,
    decayed: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over every variable of a [`VarMap`], in name order.
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    steps: u64,
}

impl AdamW {
    /// AdamW over the variables of `varmap`, the model `model` describes (whose name tree says
    /// which tensors decay).
    pub fn new(varmap: &VarMap, model: &PerceiverConfig, config: AdamWConfig) -> Result<Self> {
        let tree = tensor_names(model)?;
        let vars = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                Ok(Param {
                    name: name.clone(),
                    decayed: tree.get(name).is_some_and(|t| is_decayed(t.role)),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            config,
            steps: 0,
        })
    }

    /// Updates applied so far (the `t` of the bias correction).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Parameter names in update order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The variables, in the order of [`AdamW::names`].
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    /// One update with `grads` (in the order of [`AdamW::names`]) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Options(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (p, g) in self.params.iter_mut().zip(grads) {
            let mut w = p.var.as_tensor().clone();
            if p.decayed && c.weight_decay > 0.0 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            p.m = ((&p.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((p.v.sqrt()? / bias2.sqrt())? + c.eps)?;
            let update = ((&p.m / denom)? * (lr / bias1))?;
            p.var.set(&(w - update)?)?;
        }
        Ok(())
    }

    /// The moment estimates as named tensors (`m.<name>`, `v.<name>`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for p in &self.params {
            state.insert(format!("m.{}", p.name), p.m.clone());
            state.insert(format!("v.{}", p.name), p.v.clone());
        }
        state
    }

    /// Restores the moments saved by [`AdamW::state`] after `steps` updates.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for p in &mut self.params {
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let saved = state
                    .get(&key)
                    .ok_or_else(|| Error::Options(format!("optimizer state has no {key}")))?;
                if saved.dims() != p.var.dims() {
                    return Err(Error::Options(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        saved.dims(),
                        p.var.dims()
                    )));
                }
                *slot = saved.to_device(p.var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// The global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales `grads` so their global norm is at most `max_norm` (`torch.nn.utils.clip_grad_norm_`,
/// including its 1e-6 guard). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine from `peak_lr` down to the floor.
    Cosine,
    /// A straight line from `peak_lr` down to the floor.
    Linear,
    /// None: `peak_lr` to the end.
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            _ => Err(format!("unknown schedule {s:?} (cosine, linear, constant)")),
        }
    }
}

/// Linear warm-up from 0 to `peak_lr`, then decay to `min_lr_ratio × peak_lr` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Updates of warm-up: update `i < warmup_steps` uses `peak_lr × (i + 1) / warmup_steps`.
    pub warmup_steps: u64,
    /// The update at which the decay reaches the floor; later updates stay there.
    pub total_steps: u64,
    /// The shape of the decay after warm-up.
    pub decay: Decay,
    /// The floor, as a fraction of `peak_lr` (unused by [`Decay::Constant`]).
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of update number `step` (counted from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.min_lr_ratio;
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - (1.0 - floor) * progress,
            Decay::Cosine => floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
        let linear = Schedule {
            decay: Decay::Linear,
            ..s
        };
        assert!((linear.lr(60) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let mut grads = vec![Tensor::new(&[3f32, 0.0], &dev)?, Tensor::new(&[4f32], &dev)?];
        assert!((clip_grad_norm(&mut grads, 1.0)? - 5.0).abs() < 1e-6);
        assert!((global_norm(&grads)? - 1.0).abs() < 1e-5);
        let before = global_norm(&grads)?;
        clip_grad_norm(&mut grads, 10.0)?;
        assert_eq!(global_norm(&grads)?, before);
        Ok(())
    }

    #[test]
    fn decay_applies_to_linear_weights_only() {
        let names = tensor_names(&PerceiverConfig::default()).unwrap();
        let decayed: Vec<&str> = names
            .values()
            .filter(|t| is_decayed(t.role))
            .map(|t| t.name.as_str())
            .collect();
        assert!(decayed.contains(&"perceiver.encoder.cross_attention.attention.self.key.weight"));
        for name in [
            "perceiver.encoder.cross_attention.attention.self.key.bias",
            "perceiver.encoder.cross_attention.layernorm.weight",
            "perceiver.input_preprocessor.embeddings.weight",
            "perceiver.input_preprocessor.position_embeddings.weight",
            "perceiver.decoder.output_position_encodings.position_embeddings",
            "perceiver.embeddings.latents",
            "embedding_decoder.bias",
        ] {
            assert!(names.contains_key(name), "{name} is in the tree");
            assert!(!decayed.contains(&name), "{name}");
        }
        // A classifier's tree: its final layer decays, its query does not.
        let mut classifier = PerceiverConfig::default();
        classifier.extra.insert(
            "architectures".into(),
            serde_json::json!(["PerceiverForSequenceClassification"]),
        );
        classifier.extra.insert("num_labels".into(), 3.into());
        let names = tensor_names(&classifier).unwrap();
        let decoder = "perceiver.decoder.decoder";
        assert!(is_decayed(names[&format!("{decoder}.final_layer.weight")].role));
        assert!(!is_decayed(
            names[&format!("{decoder}.output_position_encodings.position_embeddings")].role
        ));
        assert!(!names.contains_key("embedding_decoder.bias"));
    }
}
