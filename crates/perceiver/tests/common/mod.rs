//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use perceiver::{load_engine, load_masked_lm, MaskedLmEngine, ModelFiles, PerceiverForMaskedLM};

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn load(dir: &Path) -> PerceiverForMaskedLM {
    load_masked_lm(&ModelFiles::from_dir(dir).unwrap(), &Device::Cpu).unwrap()
}

/// The same model in the inference engine (weights memory-mapped).
pub fn load_fast(dir: &Path) -> MaskedLmEngine {
    load_engine(&ModelFiles::from_dir(dir).unwrap()).unwrap()
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
