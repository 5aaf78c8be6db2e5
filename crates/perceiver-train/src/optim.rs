//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), the learning-rate schedule and
//! gradient clipping by global norm.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;
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

/// Whether gradients train a tensor of this role: all but BatchNorm's running statistics and
/// count, which stay as loaded (the frozen BatchNorm of [`crate::model::image`]).
pub fn is_trained(role: Role) -> bool {
    !matches!(role, Role::NormStatistic | Role::Counter)
}

struct Param {
    name: String,
    var: Var,
    decayed: bool,
    moments: Moments,
}

/// A parameter's first and second moment estimates.
enum Moments {
    /// On the CPU in f32 (every model this trainer makes): plain buffers, updated together with
    /// the weights in one parallel pass ([`fused_update`]).
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Anywhere else: tensors, updated by candle's element-wise ops.
    Tensors { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros_for(var: &Var) -> Result<Self> {
        Ok(if is_host_f32(var.as_tensor()) {
            let n = var.elem_count();
            Self::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            Self::Tensors {
                m: var.zeros_like()?,
                v: var.zeros_like()?,
            }
        })
    }

    fn tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Self::Host { m, v } => (
                Tensor::from_slice(m, var.shape(), var.device())?,
                Tensor::from_slice(v, var.shape(), var.device())?,
            ),
            Self::Tensors { m, v } => (m.clone(), v.clone()),
        })
    }
}

fn is_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// One update's scalars, as f64 (the fused pass rounds them to f32 as candle's ops do).
#[derive(Clone, Copy)]
struct UpdateScalars {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// `1 − lr·weight_decay` for decayed tensors, else 1.
    decay: f64,
    /// `√(1 − β₂ᵗ)`.
    bias2_sqrt: f64,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f64,
    /// What the gradients are multiplied by first (clipping), 1 for none.
    grad_scale: f64,
}

/// AdamW over the trained variables of a [`VarMap`] ([`is_trained`]), in name order.
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
        let mut names: Vec<&String> = vars
            .keys()
            .filter(|name| tree.get(*name).is_none_or(|t| is_trained(t.role)))
            .collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                Ok(Param {
                    name: name.clone(),
                    decayed: tree.get(name).is_some_and(|t| is_decayed(t.role)),
                    moments: Moments::zeros_for(&var)?,
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

    /// One update at learning rate `lr` with `grads` (in the order of [`AdamW::names`]), each
    /// multiplied by `grad_scale` first: [`clip_factor`]'s, or 1.
    pub fn step(&mut self, grads: &[Tensor], grad_scale: f64, lr: f64) -> Result<()> {
        self.step_with(grads, grad_scale, lr, |_| Ok(()))
    }

    /// [`AdamW::step`], calling `after_update` with each variable as soon as it is updated
    /// (while its values are still in cache: the trainer repacks weights there).
    pub fn step_with(
        &mut self,
        grads: &[Tensor],
        grad_scale: f64,
        lr: f64,
        mut after_update: impl FnMut(&Var) -> Result<()>,
    ) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Options(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        if let Some((p, g)) = self
            .params
            .iter()
            .zip(grads)
            .find(|(p, g)| g.dims() != p.var.dims())
        {
            return Err(Error::Options(format!(
                "the gradient of {} has shape {:?}, the parameter {:?}",
                p.name,
                g.dims(),
                p.var.dims()
            )));
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (p, g) in self.params.iter_mut().zip(grads) {
            let scalars = UpdateScalars {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                decay: if p.decayed { 1.0 - lr * c.weight_decay } else { 1.0 },
                bias2_sqrt: bias2.sqrt(),
                step_size: lr / bias1,
                grad_scale,
            };
            match &mut p.moments {
                Moments::Host { m, v } if is_host_f32(g) => {
                    let g = g.contiguous()?;
                    p.var.as_tensor().inplace_op2(
                        &g,
                        &FusedUpdate {
                            moments: Mutex::new((m, v)),
                            scalars,
                        },
                    )?;
                }
                moments => {
                    let (m, v) = moments.tensors(&p.var)?;
                    let (w, m, v) = composed_update(p.var.as_tensor(), g, &m, &v, scalars)?;
                    p.var.set(&w)?;
                    *moments = Moments::Tensors { m, v };
                }
            }
            after_update(&p.var)?;
        }
        Ok(())
    }

    /// The moment estimates as named tensors (`m.<name>`, `v.<name>`), for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for p in &self.params {
            let (m, v) = p.moments.tensors(&p.var)?;
            state.insert(format!("m.{}", p.name), m);
            state.insert(format!("v.{}", p.name), v);
        }
        Ok(state)
    }

    /// Restores the moments saved by [`AdamW::state`] after `steps` updates.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for p in &mut self.params {
            let mut restored = Vec::with_capacity(2);
            for prefix in ["m", "v"] {
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
                restored.push(saved.to_device(p.var.device())?.to_dtype(p.var.dtype())?);
            }
            let (v, m) = (restored.pop(), restored.pop());
            let (Some(m), Some(v)) = (m, v) else {
                unreachable!("two moments restored")
            };
            p.moments = match p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// AdamW on one f32 tensor in one pass: the weights (the op's own storage) and the moments in
/// place, the gradient read once. candle's element-wise ops would make a dozen single-threaded
/// passes over a 201M-parameter model, each into a fresh buffer.
struct FusedUpdate<'a> {
    /// Borrowed for the op; a lock only because candle's ops are shared between threads.
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    scalars: UpdateScalars,
}

/// Elements per parallel task: large enough that scheduling is noise, small enough to spread
/// even a bias over the threads. The gradient norm's partial sums follow these chunks, so it does
/// not depend on how the threads split the work.
const UPDATE_CHUNK: usize = 1 << 14;

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (w, g) else {
            candle_core::bail!("the fused AdamW update runs on f32 tensors");
        };
        let (Some((w0, w1)), Some((g0, g1))) = (wl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("the fused AdamW update needs contiguous tensors");
        };
        let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let (m, v) = &mut *moments;
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "AdamW: {} weights, {} gradients, {} and {} moments",
                w.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        let s = self.scalars;
        // Each factor rounded to f32 and applied as candle's ops apply it ([`composed_update`]:
        // `x * f` and `x / f` multiply by f and 1/f), so that both make the same update, bit for
        // bit.
        let (b1, one_b1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
        let (b2, one_b2) = (s.beta2 as f32, (1.0 - s.beta2) as f32);
        let (eps, decay, inv_bias2_sqrt) = (s.eps as f32, s.decay as f32, (1.0 / s.bias2_sqrt) as f32);
        let (step_size, scale) = (s.step_size as f32, s.grad_scale as f32);
        w.par_chunks_mut(UPDATE_CHUNK)
            .zip(g.par_chunks(UPDATE_CHUNK))
            .zip(m.par_chunks_mut(UPDATE_CHUNK).zip(v.par_chunks_mut(UPDATE_CHUNK)))
            .for_each(|((w, g), (m, v))| {
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = g * scale;
                    *m = *m * b1 + g * one_b1;
                    *v = *v * b2 + (g * g) * one_b2;
                    let denom = v.sqrt() * inv_bias2_sqrt + eps;
                    *w = *w * decay - (*m / denom) * step_size;
                }
            });
        Ok(())
    }
}

/// The same update in candle's ops, for tensors the fused pass does not take: the new weights
/// and moments.
fn composed_update(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: UpdateScalars,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = if s.grad_scale == 1.0 {
        g.clone()
    } else {
        (g * s.grad_scale)?
    };
    let w = if s.decay == 1.0 { w.clone() } else { (w * s.decay)? };
    let m = ((m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
    let v = ((v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((v.sqrt()? / s.bias2_sqrt)? + s.eps)?;
    let update = ((&m / denom)? * s.step_size)?;
    Ok(((w - update)?, m, v))
}

/// The global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += if is_host_f32(g) {
            let g = g.contiguous()?;
            let (storage, layout) = g.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                unreachable!("a CPU f32 tensor has CPU f32 storage")
            };
            let (start, end) = layout.contiguous_offsets().expect("made contiguous");
            // Partial sums in parallel, added in order: the same norm whatever the threads did.
            let partial: Vec<f64> = data[start..end]
                .par_chunks(UPDATE_CHUNK)
                .map(|chunk| chunk.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            partial.iter().sum::<f64>()
        } else {
            g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?
        };
    }
    Ok(total.sqrt())
}

/// What gradients of global norm `norm` are multiplied by to have norm at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`, including its 1e-6 guard): 1 when they already do.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
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
        let grads = vec![Tensor::new(&[3f32, 0.0], &dev)?, Tensor::new(&[4f32], &dev)?];
        let norm = global_norm(&grads)?;
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((clip_factor(norm, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-15);
        assert_eq!(clip_factor(norm, 10.0), 1.0);
        // Not on the fast path (f64): the same norm.
        let wide: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_dtype(DType::F64))
            .collect::<candle_core::Result<_>>()?;
        assert!((global_norm(&wide)? - 5.0).abs() < 1e-12);
        Ok(())
    }

    /// The fused pass and candle's ops make the same update, bit for bit, with and without decay
    /// and clipping, over several steps (the bias correction changes), on a tensor of several
    /// parallel chunks.
    #[test]
    fn fused_update_matches_the_composed_ops() -> Result<()> {
        use rand::{Rng, SeedableRng};
        let dev = candle_core::Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 3 * UPDATE_CHUNK + 5;
        let mut random =
            |scale: f32| -> Vec<f32> { (0..n).map(|_| scale * rng.random_range(-1f32..1.0)).collect() };
        let (w0, grads): (Vec<f32>, Vec<Vec<f32>>) = (random(1.0), (0..3).map(|_| random(0.1)).collect());
        for (decay, grad_scale) in [(1.0, 1.0), (1.0 - 1e-3 * 0.01, 0.37)] {
            let fused = Var::from_slice(&w0, n, &dev)?;
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let mut composed = (
                Tensor::from_slice(&w0, n, &dev)?,
                Tensor::zeros(n, DType::F32, &dev)?,
            );
            let mut composed_v = Tensor::zeros(n, DType::F32, &dev)?;
            for (t, g) in grads.iter().enumerate() {
                let t = t as i32 + 1;
                let scalars = UpdateScalars {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    decay,
                    bias2_sqrt: (1.0 - 0.999f64.powi(t)).sqrt(),
                    step_size: 1e-3 / (1.0 - 0.9f64.powi(t)),
                    grad_scale,
                };
                let g = Tensor::from_slice(g, n, &dev)?;
                fused.as_tensor().inplace_op2(
                    &g,
                    &FusedUpdate {
                        moments: Mutex::new((&mut m, &mut v)),
                        scalars,
                    },
                )?;
                let (w, m, v) = composed_update(&composed.0, &g, &composed.1, &composed_v, scalars)?;
                composed = (w, m);
                composed_v = v;
            }
            let fused_w = fused.as_tensor().to_vec1::<f32>()?;
            let checks = [
                ("weights", fused_w, composed.0.to_vec1::<f32>()?),
                ("m", m, composed.1.to_vec1::<f32>()?),
                ("v", v, composed_v.to_vec1::<f32>()?),
            ];
            for (what, fused, composed) in checks {
                let differing = fused
                    .iter()
                    .zip(&composed)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differing, 0, "{what}: {differing} of {n} values differ");
            }
            assert_ne!(fused.as_tensor().to_vec1::<f32>()?, w0, "the weights moved");
        }
        Ok(())
    }

    /// Moments saved and restored continue the same updates.
    #[test]
    fn state_round_trips_host_moments() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let bias_of = |varmap: &VarMap| {
            varmap.get(
                4,
                "embedding_decoder.bias",
                candle_nn::Init::Const(0.5),
                DType::F32,
                &dev,
            )
        };
        let varmap = VarMap::new();
        let var = bias_of(&varmap)?;
        let config = PerceiverConfig::default();
        let mut a = AdamW::new(&varmap, &config, AdamWConfig::default())?;
        let g = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev)?;
        let misshapen = Tensor::zeros((2, 2), DType::F32, &dev)?;
        let err = a.step(&[misshapen], 1.0, 1e-2).unwrap_err().to_string();
        assert!(err.contains("has shape [2, 2], the parameter [4]"), "{err}");
        a.step(std::slice::from_ref(&g), 1.0, 1e-2)?;
        let state = a.state()?;
        assert_ne!(state["m.embedding_decoder.bias"].to_vec1::<f32>()?, vec![0f32; 4]);
        let after_one = var.to_vec1::<f32>()?;
        a.step(std::slice::from_ref(&g), 1.0, 1e-2)?;
        let after_two = var.to_vec1::<f32>()?;

        let mut other = VarMap::new();
        let restored_var = bias_of(&other)?;
        other.set_one("embedding_decoder.bias", Tensor::new(after_one.as_slice(), &dev)?)?;
        let mut b = AdamW::new(&other, &config, AdamWConfig::default())?;
        b.load_state(&state, 1)?;
        b.step(std::slice::from_ref(&g), 1.0, 1e-2)?;
        assert_eq!(restored_var.to_vec1::<f32>()?, after_two);
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
