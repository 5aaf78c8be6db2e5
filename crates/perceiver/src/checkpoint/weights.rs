//! Where the engine's weights live: read in place from memory-mapped safetensors files (or from
//! bytes compiled into the binary), copied only when they must be converted.
//!
//! The 201M model's f32 weights are 804 MB. Reading them in place keeps the process at about
//! that size (the pages are the file's, shared with the page cache); candle's loader copies every
//! tensor out of the mapping, which doubled the resident size. Matrices the engine packs for its
//! kernels give their pages back ([`Param::release_pages`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Bytes that hold one safetensors file.
pub(crate) enum Backing {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
    /// Bytes handed over by the caller; their heap buffer does not move with the value.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(map) => map,
            Backing::Static(bytes) => bytes,
            Backing::Owned(bytes) => bytes,
        }
    }
}

/// One f32 tensor, borrowed from its file or owned.
#[derive(Clone)]
pub struct Param {
    data: ParamData,
    shape: Vec<usize>,
}

#[derive(Clone)]
enum ParamData {
    Shared {
        backing: Arc<Backing>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<[f32]>),
}

impl Param {
    /// A tensor that owns its values (row-major, `shape`'s product of them).
    pub fn owned(data: Vec<f32>, shape: Vec<usize>) -> Result<Self> {
        let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(Error::InvalidInput(format!(
                "{} values do not fill a tensor of shape {shape:?}",
                data.len()
            )));
        }
        Ok(Self {
            data: ParamData::Owned(data.into()),
            shape,
        })
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.data {
            ParamData::Shared { backing, offset, len } => {
                let bytes = &backing[*offset..*offset + *len * 4];
                // SAFETY: `Param::shared` checked that the range is in bounds and 4-byte
                // aligned, and the bytes are little-endian f32 on a little-endian target.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            ParamData::Owned(data) => data,
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Drops this tensor's pages of a file mapping from the process's resident memory (the
    /// kernel reads them back from the page cache if they are touched again). For weights that
    /// were copied into a packed layout and are not read again. A no-op for other storage.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let ParamData::Shared { backing, offset, len } = &self.data {
            if let Backing::Mapped(map) = &**backing {
                const PAGE: usize = 4096;
                // Only whole pages inside the tensor: its neighbours may still be in use.
                let start = offset.next_multiple_of(PAGE);
                let end = (offset + len * 4) / PAGE * PAGE;
                if end > start {
                    // SAFETY: the mapping is private and read-only; dropping its pages only
                    // makes later reads fault them back in from the file.
                    let _ = unsafe {
                        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                    };
                }
            }
        }
    }

    /// Whether the data is read in place from a file mapping or bytes in memory.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, ParamData::Shared { .. })
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param")
            .field("shape", &self.shape)
            .field("borrowed", &self.is_borrowed())
            .finish()
    }
}

/// Where a tensor is inside a file.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

/// Tensors smaller than this are copied out of a mapped file when read (see
/// [`SafetensorsStore::get`]).
const SMALL_TENSOR_BYTES: usize = 1 << 20;

/// Tensors by name across one or more safetensors files.
pub(crate) struct SafetensorsStore {
    files: Vec<(Arc<Backing>, PathBuf)>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsStore {
    /// Memory-maps each file and reads its header.
    pub(crate) fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut backings = Vec::with_capacity(paths.len());
        for path in paths {
            let file = std::fs::File::open(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the mapping is read-only; like every mmap-based loader (candle's,
            // safetensors'), we rely on the file not being truncated while the model is loaded.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            backings.push((Backing::Mapped(map), path.clone()));
        }
        Self::from_backings(backings)
    }

    /// A store over bytes that live for the whole program (a model compiled in).
    pub(crate) fn from_static(bytes: &'static [u8], name: &str) -> Result<Self> {
        Self::from_backings(vec![(Backing::Static(bytes), PathBuf::from(name))])
    }

    /// A store over bytes it keeps (a file read into memory).
    pub(crate) fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        Self::from_backings(vec![(Backing::Owned(bytes), PathBuf::from(name))])
    }

    fn from_backings(backings: Vec<(Backing, PathBuf)>) -> Result<Self> {
        let mut files = Vec::with_capacity(backings.len());
        let mut entries = HashMap::new();
        for (index, (backing, path)) in backings.into_iter().enumerate() {
            let corrupt = |reason: String| Error::CorruptWeights {
                path: path.clone(),
                reason,
            };
            let parsed = SafeTensors::deserialize(&backing).map_err(|e| corrupt(e.to_string()))?;
            let base = backing.as_ptr() as usize;
            for (name, view) in parsed.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let entry = Entry {
                    file: index,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(corrupt(format!("tensor {name} appears in more than one file")));
                }
            }
            files.push((Arc::new(backing), path));
        }
        Ok(Self { files, entries })
    }

    /// Refuses integer tensors other than those `counter` accepts (BatchNorm's batch counters,
    /// int64 as PyTorch keeps them): an integer weight would otherwise be read as floats
    /// silently.
    pub(crate) fn check_dtypes(&self, counter: impl Fn(&str) -> bool) -> Result<()> {
        for (name, entry) in &self.entries {
            let accepted = match entry.dtype {
                Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => true,
                Dtype::I64 => counter(name),
                _ => false,
            };
            if !accepted {
                return Err(Error::CorruptWeights {
                    path: self.files[entry.file].1.clone(),
                    reason: not_a_float_weight(name, entry.dtype),
                });
            }
        }
        Ok(())
    }

    /// Every tensor's name and shape, to check against a config.
    pub(crate) fn shapes(&self) -> std::collections::BTreeMap<String, Vec<usize>> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.shape.clone()))
            .collect()
    }

    /// The tensor `name` as f32: in place when it is stored as aligned little-endian f32,
    /// converted (bf16, f16, f64) otherwise.
    pub(crate) fn get(&self, name: &str) -> Result<Param> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let (backing, path) = &self.files[entry.file];
        let bytes = &backing[entry.start..entry.end];
        let count: usize = entry.shape.iter().product();
        let corrupt = |reason: String| Error::CorruptWeights {
            path: path.clone(),
            reason,
        };
        let width = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            // BatchNorm's batch counter is an int64 scalar (check_dtypes refused any other
            // integer tensor when the checkpoint was opened).
            Dtype::F64 | Dtype::I64 => 8,
            other => {
                return Err(corrupt(format!(
                    "tensor {name} has dtype {other:?}; only floating-point weights (and int64 counters) are supported"
                )))
            }
        };
        if bytes.len() != count * width {
            return Err(corrupt(format!(
                "tensor {name} holds {} bytes, its shape needs {}",
                bytes.len(),
                count * width
            )));
        }
        let shape = entry.shape.clone();
        // Small tensors (biases, norms) are copied out of a file mapping: they are read in every
        // pass, and a read of a mapped page can bring in a large folio of its neighbours too
        // (2 MiB with transparent huge pages), pages of matrices that were packed and released.
        let small = count * 4 < SMALL_TENSOR_BYTES && matches!(**backing, Backing::Mapped(_));
        if entry.dtype == Dtype::F32
            && cfg!(target_endian = "little")
            && (bytes.as_ptr() as usize).is_multiple_of(4)
            && !small
        {
            let param = Param {
                data: ParamData::Shared {
                    backing: backing.clone(),
                    offset: entry.start,
                    len: count,
                },
                shape,
            };
            check_finite(name, param.data()).map_err(corrupt)?;
            return Ok(param);
        }
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            _ => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
        };
        if entry.dtype != Dtype::I64 {
            check_finite(name, &values).map_err(corrupt)?;
        }
        Param::owned(values, shape)
    }
}

/// Why the weight `name` cannot be used, if one of its values is a NaN or an infinity: a
/// model with one answers NaN for every input, which is better refused when it loads, by name.
pub(crate) fn check_finite(name: &str, values: &[f32]) -> std::result::Result<(), String> {
    match crate::runtime::first_non_finite(values) {
        Some(index) => Err(format!(
            "tensor {name} holds {} (at flat index {index}): weights must be finite numbers",
            values[index]
        )),
        None => Ok(()),
    }
}

/// Why the tensor `name` of `dtype`, not a float, cannot be used: the only integer tensors are
/// BatchNorm's batch counters, and any other would be read as floats silently.
pub(crate) fn not_a_float_weight(name: &str, dtype: impl std::fmt::Debug) -> String {
    format!(
        "tensor {name} has dtype {dtype:?}; only floating-point weights (and int64 BatchNorm \
         counters, num_batches_tracked) are supported"
    )
}
