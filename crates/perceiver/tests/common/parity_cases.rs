//! The parity fixtures that `scripts/make_parity_fixtures.py` wrote to `tests/fixtures/parity/`
//! and how they are compared: shared by the inference tests (`crates/perceiver/tests/parity.rs`)
//! and the differentiable model's (`crates/perceiver-train/tests/parity.rs`, which includes this
//! file by path).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};

/// Largest accepted |Δ logit| against transformers (float32 on both sides).
pub const LOGIT_TOLERANCE: f32 = 1e-4;
/// Largest accepted |Δ probability| for fill-mask scores.
pub const SCORE_TOLERANCE: f32 = 2e-5;

pub fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "expected the parity fixtures in {}",
        root.display()
    );
    dirs
}

pub struct Case {
    pub name: String,
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub logits: Tensor,
}

pub fn cases(dir: &Path) -> Vec<Case> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".logits").map(str::to_string))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Case {
            input_ids: tensors[&format!("{name}.input_ids")]
                .to_dtype(DType::U32)
                .unwrap(),
            attention_mask: tensors[&format!("{name}.attention_mask")]
                .to_dtype(DType::U32)
                .unwrap(),
            logits: tensors[&format!("{name}.logits")].clone(),
            name,
        })
        .collect()
}

impl Case {
    /// Each row's ids without its padding.
    pub fn unpadded_texts(&self) -> Vec<Vec<u32>> {
        let (batch, _) = self.input_ids.dims2().unwrap();
        (0..batch)
            .map(|row| {
                let len = self
                    .attention_mask
                    .i(row)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap();
                let ids = self.input_ids.i(row).unwrap().to_vec1::<u32>().unwrap();
                ids[..len as usize].to_vec()
            })
            .collect()
    }
}

/// Returns `worst` after asserting it is within [`LOGIT_TOLERANCE`]; `what` names the case.
pub fn within_tolerance(worst: f32, what: impl Fn() -> String) -> f32 {
    assert!(worst <= LOGIT_TOLERANCE, "{}: max |Δ logit| {worst:e}", what());
    worst
}

/// Largest |a − b| over all elements (shapes must agree).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
