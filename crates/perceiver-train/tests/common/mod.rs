//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use perceiver::ModelFiles;
use perceiver_train::model::load_masked_lm;
use perceiver_train::PerceiverForMaskedLM;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The differentiable model of a fixture directory.
pub fn load(dir: &Path) -> PerceiverForMaskedLM {
    load_masked_lm(&ModelFiles::from_dir(dir).unwrap(), &Device::Cpu).unwrap()
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
