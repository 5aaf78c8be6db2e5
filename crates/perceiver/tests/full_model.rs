//! The full 201M `deepmind/language-perceiver` layout with random weights, against transformers.
//!
//! Not run by default (the weights are 800 MB). Produce them once, then run:
//! ```sh
//! .venv-ref/bin/python scripts/make_parity_fixtures.py --full target/full-random
//! cargo test --release -p perceiver --test full_model -- --ignored --nocapture
//! ```
//! `PERCEIVER_FULL_FIXTURE` overrides the directory.

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::max_abs_diff;
use perceiver::{load_masked_lm, ModelFiles};

mod common;

#[test]
#[ignore = "needs the 800 MB fixture written by scripts/make_parity_fixtures.py --full"]
fn full_language_perceiver_layout_matches_transformers() {
    let dir = std::env::var_os("PERCEIVER_FULL_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/full-random"));
    let model = load_masked_lm(&ModelFiles::from_dir(&dir).unwrap(), &Device::Cpu).unwrap();
    let cases = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    let ids = cases["single.input_ids"].to_dtype(DType::U32).unwrap();
    let expected = &cases["single.logits"];
    let logits = model.forward(&ids, None).unwrap();
    let worst = max_abs_diff;
    let vs_f32 = worst(&logits, expected);
    println!(
        "201M layout, 60-byte input, 2048 x 262 logits: max |Δ logit| vs transformers float32 = {vs_f32:.2e}"
    );
    if let Some(exact) = cases.get("single.logits_f64") {
        println!("  vs transformers float64 = {:.2e}", worst(&logits, exact));
        println!(
            "  transformers float32 vs float64 = {:.2e}",
            worst(expected, exact)
        );
    }
    assert!(vs_f32 <= 1e-4, "max |Δ logit| {vs_f32:e}");
    let top1 = |t: &candle_core::Tensor| {
        t.argmax(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    };
    let (argmax_ours, argmax_theirs) = (top1(&logits), top1(expected));
    let same = argmax_ours
        .iter()
        .zip(&argmax_theirs)
        .filter(|(a, b)| a == b)
        .count();
    println!("  top-1 ids equal at {same} of {} positions", argmax_ours.len());
    assert_eq!(same, argmax_ours.len(), "top-1 ids differ");
}
