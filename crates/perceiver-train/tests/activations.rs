//! Every `hidden_act` name the config accepts computes what transformers' `ACT2FN[name]` does,
//! on x ∈ [-12, 12] (values written by `scripts/make_parity_fixtures.py`, float64 in torch).

use candle_core::Device;
use perceiver::Activation;
use perceiver_train::model::attention::activate;

mod common;

/// |Δ| allowed, relative to max(1, |expected|).
const TOLERANCE: f32 = 2e-6;

#[test]
fn activations_match_transformers() {
    let path = common::fixtures().join("activations.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let x = &tensors["x"];
    let mut names: Vec<&String> = tensors.keys().filter(|k| *k != "x").collect();
    names.sort();
    let mut covered = std::collections::HashSet::new();
    for name in names {
        let activation: Activation = serde_json::from_value(serde_json::json!(name))
            .unwrap_or_else(|e| panic!("hidden_act {name:?} is not accepted: {e}"));
        covered.insert(activation);
        let got = activate(x, activation).unwrap().to_vec1::<f32>().unwrap();
        let want = tensors[name].to_vec1::<f32>().unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0f32, f32::max);
        println!("{name:<18} max relative |Δ| = {worst:.1e}");
        assert!(worst <= TOLERANCE, "{name}: {worst:e}");
    }
    for activation in Activation::ALL {
        assert!(
            covered.contains(&activation),
            "{} has no reference values",
            activation.name()
        );
    }
}
