//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod parity_cases;

#[allow(unused_imports)] // not every test binary compares tensors
pub use parity_cases::max_abs_diff;

use std::path::{Path, PathBuf};

use perceiver::{Loader, PerceiverModel};

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The model of a fixture directory (weights memory-mapped).
pub fn load_fast(dir: &Path) -> PerceiverModel {
    Loader::new(dir.to_string_lossy()).load().unwrap()
}
