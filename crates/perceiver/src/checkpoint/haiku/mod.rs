//! DeepMind's own Perceiver IO checkpoints: Haiku parameters pickled with NumPy arrays.
//!
//! DeepMind released the language model as `language_perceiver_io_bytes.pickle` (the pickled
//! Haiku params) and other models as `*.pystate` (a pickled `{"params": …, "state": …}`). Both
//! are Python pickles, and an ordinary unpickler runs whatever code a pickle names. This module
//! reads them with [`pickle::load`], a pickle machine that builds plain data and NumPy arrays
//! only and refuses every other global by name, then lays the result out as Haiku does: module
//! path → parameter name → array ([`HaikuParams`]).

pub mod pickle;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// An n-dimensional array read from a pickle, converted to f32 (f16/bf16/f64/int arrays
/// converted; others refused). `data` is in C (row-major) order, `shape.iter().product()` long.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// Extent of each axis (empty for a 0-d array, which holds one value).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// Module path → parameter name → array (Haiku's two-level params/state layout), e.g.
/// `perceiver_encoder/~/self_attention_3/attention/linear_2` → {`w`, `b`}.
pub type HaikuParams = BTreeMap<String, BTreeMap<String, NdArray>>;

/// A DeepMind checkpoint: `.pickle` (params only) or `.pystate` (`{"params", "state"}`).
#[derive(Debug, Clone, PartialEq)]
pub struct HaikuCheckpoint {
    /// The trainable parameters.
    pub params: HaikuParams,
    /// Haiku state (batch-norm statistics, counters, …), when the file has one.
    pub state: Option<HaikuParams>,
}

/// Reads a DeepMind checkpoint file (`.pickle` or `.pystate`) without running any of its code.
pub fn read_haiku_file(path: &Path) -> Result<HaikuCheckpoint> {
    let _ = path;
    Err(Error::Pickle {
        path: Some(path.to_path_buf()),
        offset: 0,
        reason: "not yet implemented".into(),
    })
}

/// [`read_haiku_file`] on bytes already in memory.
pub fn read_haiku_bytes(bytes: &[u8]) -> Result<HaikuCheckpoint> {
    let _ = bytes;
    Err(Error::Pickle {
        path: None,
        offset: 0,
        reason: "not yet implemented".into(),
    })
}
