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
pub use pickle::{Array, Dtype, Element, Limits, TorchTensor, Value};

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
    let with_path = |e: Error| match e {
        Error::Pickle { offset, reason, .. } => Error::Pickle {
            path: Some(path.to_path_buf()),
            offset,
            reason,
        },
        other => other,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let limits = pickle::Limits::default();
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > limits.max_input_bytes {
        return Err(with_path(Error::Pickle {
            path: None,
            offset: None,
            reason: format!(
                "the file is {len} bytes, more than the {} allowed",
                limits.max_input_bytes
            ),
        }));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    read_with(&bytes, &limits).map_err(with_path)
}

/// [`read_haiku_file`] on bytes already in memory.
pub fn read_haiku_bytes(bytes: &[u8]) -> Result<HaikuCheckpoint> {
    read_with(bytes, &pickle::Limits::default())
}

/// [`read_haiku_bytes`] under other bounds (tests and fuzzing use small ones).
pub fn read_haiku_bytes_with(bytes: &[u8], limits: &pickle::Limits) -> Result<HaikuCheckpoint> {
    read_with(bytes, limits)
}

fn read_with(bytes: &[u8], limits: &pickle::Limits) -> Result<HaikuCheckpoint> {
    let value = pickle::load(bytes, limits)?;
    checkpoint_from_value(value)
}

fn layout_error(reason: String) -> Error {
    Error::Pickle {
        path: None,
        offset: None,
        reason,
    }
}

/// Lays out a loaded pickle as a checkpoint: `{"params": …, "state": …}` (a `.pystate`, as
/// DeepMind's image models and transformers' conversion script read it) or the params alone.
pub fn checkpoint_from_value(value: Value) -> Result<HaikuCheckpoint> {
    let Value::Dict(entries) = value else {
        return Err(layout_error(format!(
            "the pickle holds {}, not a mapping of Haiku modules",
            kind(&value)
        )));
    };
    // A `.pystate`'s `params` is a mapping of mappings; a module named `params` would map
    // parameter names to arrays.
    let is_pystate = entries.iter().any(|(k, v)| {
        matches!(k, Value::Str(k) if k == "params")
            && matches!(v, Value::Dict(modules) if modules.iter().all(|(_, m)| matches!(m, Value::Dict(_))))
    });
    if !is_pystate {
        return Ok(HaikuCheckpoint {
            params: params_from_entries(entries, "")?,
            state: None,
        });
    }
    let mut params = None;
    let mut state = None;
    for (key, value) in entries {
        let Value::Str(key) = key else { continue };
        let Value::Dict(inner) = value else {
            if key == "params" || key == "state" {
                return Err(layout_error(format!("{key} is {}, not a mapping", kind(&value))));
            }
            continue;
        };
        // Other entries (an optimiser's state, a step counter) are not the model's.
        match key.as_str() {
            "params" => params = Some(params_from_entries(inner, "params/")?),
            "state" => state = Some(params_from_entries(inner, "state/")?),
            _ => {}
        }
    }
    Ok(HaikuCheckpoint {
        params: params.expect("is_pystate found params"),
        state,
    })
}

fn params_from_entries(modules: Vec<(Value, Value)>, prefix: &str) -> Result<HaikuParams> {
    let mut params = HaikuParams::new();
    for (module, names) in modules {
        let Value::Str(module) = module else {
            return Err(layout_error(format!(
                "{prefix}: a module key is {}, not a string",
                kind(&module)
            )));
        };
        let Value::Dict(names) = names else {
            return Err(layout_error(format!(
                "{prefix}{module} is {}, not a mapping of parameter names to arrays",
                kind(&names)
            )));
        };
        let mut arrays = BTreeMap::new();
        for (name, array) in names {
            let Value::Str(name) = name else {
                return Err(layout_error(format!(
                    "{prefix}{module}: a parameter key is {}, not a string",
                    kind(&name)
                )));
            };
            let Value::Array(array) = array else {
                return Err(layout_error(format!(
                    "{prefix}{module}/{name} is {}, not an array",
                    kind(&array)
                )));
            };
            let converted = NdArray::from_array(&array)
                .map_err(|reason| layout_error(format!("{prefix}{module}/{name}: {reason}")))?;
            if arrays.insert(name.clone(), converted).is_some() {
                return Err(layout_error(format!("{prefix}{module}/{name} appears twice")));
            }
        }
        if params.insert(module.clone(), arrays).is_some() {
            return Err(layout_error(format!("{prefix}{module} appears twice")));
        }
    }
    Ok(params)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a mapping",
        Value::Array(_) => "an array",
        Value::Dtype(_) => "a dtype",
        Value::Tensor(_) => "a torch tensor",
    }
}

impl NdArray {
    /// Converts a pickled array to f32: floats are rounded (f64) or widened (f16, bf16),
    /// integers and bools become their values; big-endian data is swapped.
    pub fn from_array(array: &Array) -> std::result::Result<Self, String> {
        let size = array.dtype.element.size();
        let count = array
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n.checked_mul(size) == Some(array.data.len()))
            .ok_or_else(|| {
                format!(
                    "{} bytes do not hold an array of shape {:?} and {:?}",
                    array.data.len(),
                    array.shape,
                    array.dtype.element
                )
            })?;
        let big = array.dtype.big_endian;
        // Each element's bytes, in little-endian order.
        fn le<const N: usize>(chunk: &[u8], big: bool) -> [u8; N] {
            let mut b: [u8; N] = chunk.try_into().expect("chunks_exact gives N bytes");
            if big {
                b.reverse();
            }
            b
        }
        let chunks = array.data.chunks_exact(size);
        let data: Vec<f32> = match array.dtype.element {
            Element::Bool => chunks.map(|c| if c[0] != 0 { 1.0 } else { 0.0 }).collect(),
            Element::I8 => chunks.map(|c| c[0] as i8 as f32).collect(),
            Element::U8 => chunks.map(|c| c[0] as f32).collect(),
            Element::I16 => chunks.map(|c| i16::from_le_bytes(le(c, big)) as f32).collect(),
            Element::U16 => chunks.map(|c| u16::from_le_bytes(le(c, big)) as f32).collect(),
            Element::I32 => chunks.map(|c| i32::from_le_bytes(le(c, big)) as f32).collect(),
            Element::U32 => chunks.map(|c| u32::from_le_bytes(le(c, big)) as f32).collect(),
            Element::I64 => chunks.map(|c| i64::from_le_bytes(le(c, big)) as f32).collect(),
            Element::U64 => chunks.map(|c| u64::from_le_bytes(le(c, big)) as f32).collect(),
            Element::F16 => chunks
                .map(|c| half::f16::from_le_bytes(le(c, big)).to_f32())
                .collect(),
            Element::BF16 => chunks
                .map(|c| half::bf16::from_le_bytes(le(c, big)).to_f32())
                .collect(),
            Element::F32 => chunks.map(|c| f32::from_le_bytes(le(c, big))).collect(),
            Element::F64 => chunks.map(|c| f64::from_le_bytes(le(c, big)) as f32).collect(),
        };
        debug_assert_eq!(data.len(), count);
        Ok(NdArray {
            shape: array.shape.clone(),
            data,
        })
    }
}
