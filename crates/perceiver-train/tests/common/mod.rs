//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

/// The parity fixtures and their comparison, shared with the inference crate's tests.
#[path = "../../../perceiver/tests/common/parity_cases.rs"]
pub mod parity_cases;

#[allow(unused_imports)] // not every test binary compares tensors
pub use parity_cases::max_abs_diff;

use std::path::{Path, PathBuf};

use candle_core::Device;
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
