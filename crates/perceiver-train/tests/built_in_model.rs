//! The built-in model through both paths: the inference model (weights read in place from the
//! binary) and the differentiable model give the same logits on the trained weights.

use candle_core::{Device, Tensor};
use perceiver::{BytesTokenizer, LoadOptions, Loader};
use perceiver_train::model::load_masked_lm_from;

#[test]
fn inference_and_differentiable_models_agree_on_the_built_in_weights() {
    let text = "The quick brown fox jumps over the lazy dog, and then it runs back home.";
    let ids = BytesTokenizer.encode(text);
    let positions: Vec<usize> = (0..ids.len()).step_by(3).collect();
    let fast = Loader::new("default")
        .load()
        .unwrap()
        .logits_at(&[&ids], &[&positions])
        .unwrap();
    let model = load_masked_lm_from("default", &LoadOptions::default(), &Device::Cpu).unwrap();
    let ids_t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
    let pos_t = Tensor::new(pos.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let slow = model
        .decode(&model.encode(&ids_t, None).unwrap(), &pos_t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(fast.len(), slow.len());
    let worst = fast
        .iter()
        .zip(&slow)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("built-in model, inference vs differentiable: max |Δ logit| = {worst:.2e}");
    assert!(worst < 1e-4, "max |Δ logit| {worst}");
}
