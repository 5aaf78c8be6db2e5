//! DeepMind's initialisation for training from scratch (Haiku defaults in `perceiver.py`):
//! linear weights from a truncated normal with variance 1/fan_in (VarianceScaling(1.0)), biases 0,
//! LayerNorm scale 1 and offset 0, position tables and latents from a truncated normal with
//! std 0.02, the byte embedding from a truncated normal with std 1. transformers instead draws
//! everything from normal(0, 0.02).

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::corpus::splitmix64;
use crate::error::Result;

/// Haiku's correction so that a normal truncated at ±2σ keeps the requested std.
const TRUNCATION_STD_CORRECTION: f64 = 0.879_625_661_034_239_8;

/// How one parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    Constant(f64),
    /// Normal(0, std) truncated at ±2 std.
    TruncatedNormal(f64),
    /// Normal(0, std).
    Normal(f64),
}

/// Linear layers, by the last component of their transformers name.
pub fn is_linear_weight(name: &str) -> bool {
    let Some(module) = name.strip_suffix(".weight") else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or("");
    matches!(last, "query" | "key" | "value" | "dense" | "dense1" | "dense2")
}

/// The initialisation of the parameter `name` with `shape` (transformers names).
pub fn param_init(name: &str, shape: &[usize]) -> ParamInit {
    if name.contains("layernorm") {
        ParamInit::Constant(if name.ends_with(".weight") { 1.0 } else { 0.0 })
    } else if name.ends_with(".bias") {
        ParamInit::Constant(0.0)
    } else if is_linear_weight(name) {
        let fan_in = shape.get(1).copied().unwrap_or(1) as f64;
        ParamInit::TruncatedNormal((1.0 / fan_in).sqrt() / TRUNCATION_STD_CORRECTION)
    } else if name.ends_with("input_preprocessor.embeddings.weight") {
        ParamInit::TruncatedNormal(1.0)
    } else {
        // Latents, input and output position tables.
        ParamInit::TruncatedNormal(0.02)
    }
}

/// Which initialisation a from-scratch run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// DeepMind's (see the module docs).
    DeepMind,
    /// transformers' `_init_weights`: normal(0, initializer_range) for every weight matrix, table
    /// and latent array; LayerNorm 1/0; biases 0.
    Transformers,
}

impl Default for InitScheme {
    fn default() -> Self {
        Self::DeepMind
    }
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deepmind" => Ok(Self::DeepMind),
            "transformers" | "hf" => Ok(Self::Transformers),
            _ => Err(format!("unknown init {s:?} (deepmind, transformers)")),
        }
    }
}

/// The initialisation of `name` under transformers' scheme.
pub fn transformers_param_init(name: &str, initializer_range: f64) -> ParamInit {
    if name.contains("layernorm") {
        ParamInit::Constant(if name.ends_with(".weight") { 1.0 } else { 0.0 })
    } else if name.ends_with(".bias") {
        ParamInit::Constant(0.0)
    } else {
        ParamInit::Normal(initializer_range)
    }
}

/// Re-initialises every variable of `varmap` with `scheme` (see [`deepmind_init`]).
pub fn initialize(varmap: &VarMap, scheme: InitScheme, initializer_range: f64, seed: u64) -> Result<()> {
    match scheme {
        InitScheme::DeepMind => fill(varmap, seed, |name, shape| param_init(name, shape)),
        InitScheme::Transformers => fill(varmap, seed, |name, _| {
            transformers_param_init(name, initializer_range)
        }),
    }
}

/// Re-initialises every variable of `varmap` as DeepMind does. Each parameter draws from its own
/// stream seeded by `seed` and its name, so the result does not depend on iteration order.
pub fn deepmind_init(varmap: &VarMap, seed: u64) -> Result<()> {
    fill(varmap, seed, |name, shape| param_init(name, shape))
}

fn fill(varmap: &VarMap, seed: u64, init: impl Fn(&str, &[usize]) -> ParamInit) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        let shape = var.dims().to_vec();
        let count: usize = shape.iter().product();
        let mut h = seed;
        for b in name.bytes() {
            h = splitmix64(h ^ b as u64);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(h);
        let values: Vec<f32> = match init(name, &shape) {
            ParamInit::Constant(c) => vec![c as f32; count],
            ParamInit::Normal(std) => (0..count)
                .map(|_| (Distribution::<f64>::sample(&StandardNormal, &mut rng) * std) as f32)
                .collect::<Vec<f32>>(),
            ParamInit::TruncatedNormal(std) => (0..count)
                .map(|_| loop {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    if z.abs() <= 2.0 {
                        break (z * std) as f32;
                    }
                })
                .collect(),
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_deepmind_inits() {
        let q = "perceiver.encoder.self_attends.0.attention.self.query.weight";
        assert_eq!(
            param_init(q, &[256, 64]),
            ParamInit::TruncatedNormal(0.125 / TRUNCATION_STD_CORRECTION)
        );
        let ln = "perceiver.encoder.self_attends.0.attention.self.layernorm1.weight";
        assert_eq!(param_init(ln, &[64]), ParamInit::Constant(1.0));
        assert_eq!(
            param_init("perceiver.encoder.cross_attention.layernorm.bias", &[64]),
            ParamInit::Constant(0.0)
        );
        assert_eq!(
            param_init("embedding_decoder.bias", &[262]),
            ParamInit::Constant(0.0)
        );
        assert_eq!(
            param_init("perceiver.embeddings.latents", &[8, 64]),
            ParamInit::TruncatedNormal(0.02)
        );
        assert_eq!(
            param_init("perceiver.input_preprocessor.embeddings.weight", &[262, 64]),
            ParamInit::TruncatedNormal(1.0)
        );
        assert!(!is_linear_weight(
            "perceiver.input_preprocessor.position_embeddings.weight"
        ));
        assert!(is_linear_weight(
            "perceiver.decoder.decoding_cross_attention.mlp.dense2.weight"
        ));
    }
}
