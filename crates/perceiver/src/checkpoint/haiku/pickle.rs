//! A pickle machine that cannot run code.
//!
//! It runs the opcodes of pickle protocols 0–5 (memo, frames, protocol-5 in-band buffers) but
//! builds only plain data ([`Value`]) and NumPy arrays and dtypes, from the few globals NumPy and
//! Haiku pickle them with. Any other global, and a REDUCE or BUILD of anything but those, is
//! refused with an error naming it. Every size is bounded by [`Limits`].

use crate::error::{Error, Result};

/// Bounds on what one pickle may make.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes of pickle read.
    pub max_input_bytes: u64,
    /// The deepest nesting of containers in the result (and of MARKs on the stack).
    pub max_depth: usize,
    /// The most memo entries.
    pub max_memo: usize,
    /// The most elements in one array.
    pub max_array_elements: u64,
    /// The most objects (a string's or array's bytes counted too) the result may hold.
    pub max_objects: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 8 << 30,
            max_depth: 256,
            max_memo: 1 << 22,
            max_array_elements: 1 << 31,
            max_objects: 16 << 30,
        }
    }
}

/// A NumPy dtype this reader understands: a kind (`f`, `i`, `u`, `b`, `c`, …), an item size in
/// bytes and a byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    /// NumPy's kind character (`f` float, `i` signed, `u` unsigned, `b` bool, `V` bfloat16-like void, …).
    pub kind: char,
    /// Bytes per element.
    pub itemsize: usize,
    /// Whether multi-byte elements are stored big-endian.
    pub big_endian: bool,
}

/// A NumPy array as pickled: its dtype, shape and raw bytes in C order (a Fortran-order array is
/// reordered when read), byte order as the dtype says.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The element type.
    pub dtype: Dtype,
    /// Extent of each axis.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.itemsize` bytes, row-major.
    pub data: Vec<u8>,
}

/// What a pickle may hold, once read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits (larger ones are refused).
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict, `collections.OrderedDict` or Haiku `FlatMapping`/`FlatMap`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A NumPy array (or NumPy scalar, as a 0-d array).
    Array(Array),
    /// A NumPy dtype on its own.
    Dtype(Dtype),
}

/// Reads one pickle from `bytes` (trailing bytes after its STOP are refused).
pub fn load(bytes: &[u8], limits: &Limits) -> Result<Value> {
    let _ = (bytes, limits);
    Err(Error::Pickle {
        path: None,
        offset: 0,
        reason: "not yet implemented".into(),
    })
}
