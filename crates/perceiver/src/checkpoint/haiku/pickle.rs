//! A pickle machine that cannot run code.
//!
//! Python's unpickler imports and calls whatever a pickle names (`GLOBAL os system` then
//! `REDUCE` is a shell command). This one runs the opcodes of pickle protocols 2–5 (and the few
//! protocol 0/1 ones that only build plain data) but builds nothing except plain data
//! ([`Value`]) and NumPy arrays and dtypes, from the handful of globals NumPy, JAX and Haiku
//! pickle them with. Any other global is refused where it is named, before anything could use
//! it; a REDUCE or BUILD of anything else, or with arguments other than the ones those libraries
//! write, is refused too. Every size is bounded by [`Limits`], so a hostile pickle costs at most
//! a bounded amount of memory and time and ends in an [`Error::Pickle`].
//!
//! The globals allowed, and what they build:
//!
//! | global | pickled by | built as |
//! |---|---|---|
//! | `numpy.core.multiarray._reconstruct` (`numpy._core…` in NumPy 2) | `ndarray.__reduce__` | an array, filled by the BUILD that follows |
//! | `numpy.ndarray` | its first argument | — |
//! | `numpy.dtype` | `dtype.__reduce__` | a dtype (byte order from its BUILD) |
//! | `numpy.core.numeric._frombuffer` (`numpy._core…`) | `ndarray.__reduce_ex__(5)` | an array from an in-band buffer |
//! | `numpy.core.multiarray.scalar` (`numpy._core…`) | NumPy scalars | a 0-d array |
//! | `ml_dtypes.bfloat16` | bfloat16 dtypes | the argument of `numpy.dtype` only |
//! | `_codecs.encode`, `builtins.bytes` (`__builtin__`) | `bytes` at protocol 2 | bytes |
//! | `haiku._src.data_structures.FlatMapping` / `FlatMap` / `frozendict` | Haiku ≤ 0.0.9 params | a mapping |
//! | `collections.OrderedDict` | — | a mapping |
//! | `jax._src.device_array.reconstruct_device_array`, `jax._src.array._reconstruct_array` | JAX arrays | an array |
//!
//! [`load_torch`] reads the pickle of a `torch.save` archive (`pytorch_model.bin`) instead. There
//! the NumPy globals are refused, and a state dict's own are allowed: `collections.OrderedDict`,
//! the storage classes (`torch.FloatStorage`, …) inside a persistent id (`BINPERSID`, which
//! names a storage in the archive), and `torch._utils._rebuild_tensor_v2` /
//! `_rebuild_parameter`, which become a [`TorchTensor`]: a view of a storage, checked to lie
//! inside it. Reading the storages is the archive reader's job (`checkpoint::pytorch`).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{Error, Result};

/// Bounds on what one pickle may make. The defaults fit DeepMind's largest released checkpoint
/// (804 MB of f32) with room to spare; fuzzing uses far smaller ones.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes of pickle read.
    pub max_input_bytes: u64,
    /// The deepest nesting of containers in the result (also the most open MARKs). Keep it in
    /// the hundreds: a [`Value`] is built, compared and dropped recursively.
    pub max_depth: usize,
    /// The most memo entries.
    pub max_memo: usize,
    /// The most elements in one array (the product of its shape).
    pub max_array_elements: u64,
    /// The most objects the reader makes or pushes while it runs, plus the nodes of the result
    /// (a memoised object referenced twice is counted twice there, so a pickle that references
    /// references cannot blow up), plus the bytes of strings and arrays the result holds more
    /// than once.
    pub max_objects: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 4 GiB: five times the 201M model's 804 MB of f32.
            max_input_bytes: 4 << 30,
            // A Haiku checkpoint nests about six deep (dict, dict, array, state tuple, dtype).
            max_depth: 100,
            // A checkpoint memoises some twenty objects an array.
            max_memo: 1 << 22,
            max_array_elements: 1 << 32,
            // A checkpoint makes some thirty objects an array: this is two million arrays, and
            // bounds the time a pickle that refers to references can take to be refused.
            max_objects: 1 << 26,
        }
    }
}

/// The element types this reader builds arrays of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// `bool`, one byte.
    Bool,
    /// `int8`.
    I8,
    /// `int16`.
    I16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
    /// `uint8`.
    U8,
    /// `uint16`.
    U16,
    /// `uint32`.
    U32,
    /// `uint64`.
    U64,
    /// `float16`.
    F16,
    /// `bfloat16` (`ml_dtypes`).
    BF16,
    /// `float32`.
    F32,
    /// `float64`.
    F64,
}

impl Element {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Element::Bool | Element::I8 | Element::U8 => 1,
            Element::I16 | Element::U16 | Element::F16 | Element::BF16 => 2,
            Element::I32 | Element::U32 | Element::F32 => 4,
            Element::I64 | Element::U64 | Element::F64 => 8,
        }
    }

    /// Whether it is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Element::F16 | Element::BF16 | Element::F32 | Element::F64)
    }

    /// From a NumPy type string without byte order (`f4`, `i8`, `b1`, …).
    fn from_numpy(name: &str) -> Option<Self> {
        Some(match name {
            "b1" | "?" | "bool" => Element::Bool,
            "i1" | "int8" => Element::I8,
            "i2" | "int16" => Element::I16,
            "i4" | "int32" => Element::I32,
            "i8" | "int64" => Element::I64,
            "u1" | "uint8" => Element::U8,
            "u2" | "uint16" => Element::U16,
            "u4" | "uint32" => Element::U32,
            "u8" | "uint64" => Element::U64,
            "f2" | "float16" => Element::F16,
            "f4" | "float32" => Element::F32,
            "f8" | "float64" => Element::F64,
            _ => return None,
        })
    }
}

/// A NumPy dtype this reader understands: an element type and a byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    /// The element type.
    pub element: Element,
    /// Whether multi-byte elements are stored big-endian.
    pub big_endian: bool,
}

/// A NumPy array as pickled: its dtype, shape and raw bytes in C (row-major) order (a
/// Fortran-order array is reordered when read), each element in the dtype's byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The element type and byte order.
    pub dtype: Dtype,
    /// Extent of each axis (empty for a 0-d array or a NumPy scalar).
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.element.size()` bytes, row-major.
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
    /// A key set twice appears twice (no checkpoint does that; readers of it refuse it).
    Dict(Vec<(Value, Value)>),
    /// A NumPy or JAX array (or NumPy scalar, as a 0-d array).
    Array(Array),
    /// A NumPy dtype on its own.
    Dtype(Dtype),
    /// A tensor of a `torch.save` archive ([`load_torch`] only).
    Tensor(TorchTensor),
}

/// A tensor as `torch.save` pickles it: a strided view of a storage that the archive holds as
/// the file `data/<storage>`. [`load_torch`] has checked that every element the view reaches
/// lies inside the storage's `storage_len` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    /// The storage's key: its file in the archive's `data/` folder.
    pub storage: String,
    /// The storage's element type.
    pub element: Element,
    /// Elements in the storage.
    pub storage_len: usize,
    /// The view's first element, in elements from the storage's start.
    pub offset: usize,
    /// Extent of each axis.
    pub shape: Vec<usize>,
    /// Elements between neighbours along each axis.
    pub strides: Vec<usize>,
}

impl TorchTensor {
    /// About the bytes it holds, for the reader's count of what a pickle makes.
    fn bytes(&self) -> u64 {
        (self.storage.len() + 8 * (self.shape.len() + self.strides.len())) as u64
    }
}

/// Reads one pickle from `bytes`; bytes after its STOP are refused.
pub fn load(bytes: &[u8], limits: &Limits) -> Result<Value> {
    load_as(bytes, limits, false)
}

/// Reads the pickle of a `torch.save` archive (its `data.pkl`): plain data, mappings and
/// tensors ([`Value::Tensor`]); bytes after its STOP are refused.
pub fn load_torch(bytes: &[u8], limits: &Limits) -> Result<Value> {
    load_as(bytes, limits, true)
}

fn load_as(bytes: &[u8], limits: &Limits, torch: bool) -> Result<Value> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(pickle_error(
            0,
            format!(
                "the pickle is {} bytes, more than the {} allowed",
                bytes.len(),
                limits.max_input_bytes
            ),
        ));
    }
    let mut machine = Machine::new(bytes, limits);
    machine.torch = torch;
    let root = machine.run()?;
    machine.into_value(root)
}

fn pickle_error(offset: usize, reason: String) -> Error {
    Error::Pickle {
        path: None,
        offset: Some(offset as u64),
        reason,
    }
}

/// Why a global is refused, in every such message.
const ONLY_ARRAYS: &str = "a DeepMind checkpoint only needs numpy arrays and mappings";
/// The same for [`load_torch`].
const ONLY_TENSORS: &str = "a PyTorch state dict only needs tensors and mappings";
/// The longest storage key [`load_torch`] takes; `torch.save` numbers its storages.
const MAX_STORAGE_KEY: usize = 32;

/// The callables and classes a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: an empty array for BUILD.
    Reconstruct,
    /// `numpy.ndarray`: only as `_reconstruct`'s first argument.
    NdArray,
    /// `numpy.dtype(name, align, copy)`.
    DtypeClass,
    /// `numpy.core.numeric._frombuffer(buffer, dtype, shape, order)`.
    FromBuffer,
    /// `numpy.core.multiarray.scalar(dtype, bytes)`.
    Scalar,
    /// `ml_dtypes.bfloat16`: only as `numpy.dtype`'s first argument.
    BFloat16,
    /// `_codecs.encode(text, 'latin1')`: how protocol 2 writes bytes.
    CodecsEncode,
    /// `bytes()`: how protocol 2 writes empty bytes.
    BytesClass,
    /// A Haiku mapping class or `OrderedDict`, called with a mapping (or nothing).
    Mapping,
    /// `reconstruct_device_array(fun, args, state, aval_state)`: a JAX array as the NumPy array
    /// `fun(*args)` with `state` set.
    JaxArray,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    /// metadata])`.
    TorchTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: the tensor.
    TorchParameter,
    /// A storage class such as `torch.FloatStorage`: only inside a persistent id.
    TorchStorage(Element),
}

impl Global {
    /// The global a pickle names, among those a checkpoint of its kind uses.
    fn find(module: &str, name: &str, torch: bool) -> Option<Self> {
        if torch {
            return Some(match (module, name) {
                ("collections", "OrderedDict") => Global::Mapping,
                ("torch._utils", "_rebuild_tensor_v2") => Global::TorchTensor,
                ("torch._utils", "_rebuild_parameter") => Global::TorchParameter,
                ("torch", storage) => Global::TorchStorage(match storage {
                    "FloatStorage" => Element::F32,
                    "DoubleStorage" => Element::F64,
                    "HalfStorage" => Element::F16,
                    "BFloat16Storage" => Element::BF16,
                    "LongStorage" => Element::I64,
                    "IntStorage" => Element::I32,
                    "ShortStorage" => Element::I16,
                    "CharStorage" => Element::I8,
                    "ByteStorage" => Element::U8,
                    "BoolStorage" => Element::Bool,
                    _ => return None,
                }),
                _ => return None,
            });
        }
        Some(match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::Reconstruct,
            ("numpy", "ndarray") => Global::NdArray,
            ("numpy", "dtype") => Global::DtypeClass,
            ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Global::FromBuffer,
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::Scalar,
            ("ml_dtypes" | "ml_dtypes._ml_dtypes_ext", "bfloat16") => Global::BFloat16,
            ("_codecs", "encode") => Global::CodecsEncode,
            ("builtins" | "__builtin__", "bytes") => Global::BytesClass,
            ("haiku._src.data_structures", "FlatMapping" | "FlatMap" | "frozendict") => Global::Mapping,
            ("collections", "OrderedDict") => Global::Mapping,
            ("jax._src.device_array", "reconstruct_device_array") => Global::JaxArray,
            ("jax._src.array", "_reconstruct_array") => Global::JaxArray,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Global::Reconstruct => "numpy's _reconstruct",
            Global::NdArray => "numpy.ndarray",
            Global::DtypeClass => "numpy.dtype",
            Global::FromBuffer => "numpy's _frombuffer",
            Global::Scalar => "numpy's scalar",
            Global::BFloat16 => "ml_dtypes.bfloat16",
            Global::CodecsEncode => "_codecs.encode",
            Global::BytesClass => "bytes",
            Global::Mapping => "a mapping class",
            Global::JaxArray => "jax's array reconstructor",
            Global::TorchTensor => "torch's _rebuild_tensor_v2",
            Global::TorchParameter => "torch's _rebuild_parameter",
            Global::TorchStorage(_) => "a torch storage class",
        }
    }
}

/// An index into the machine's arena of objects.
type Id = usize;

/// An array being built: its data may still borrow the pickle's bytes.
#[derive(Debug)]
struct ArrayObj<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// One object the pickle made. Strings and bytes borrow the input where they can, so an 800 MB
/// checkpoint is not copied until its arrays are handed out.
#[derive(Debug)]
enum Obj<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    /// An array from `_reconstruct`, waiting for the BUILD that gives it its contents.
    EmptyArray,
    Array(ArrayObj<'a>),
    /// A dtype from `numpy.dtype(...)`; its BUILD (optional) sets the byte order.
    Dtype(Dtype),
    /// Bytes whose owned buffer became an array's data (protocol 2 writes each array's data as
    /// a fresh object, so nothing refers to them again).
    Moved,
    /// A storage named by a persistent id ([`load_torch`] only): waits for `_rebuild_tensor_v2`.
    Storage {
        element: Element,
        key: Cow<'a, str>,
        len: usize,
    },
    /// A tensor ([`load_torch`] only).
    Tensor(TorchTensor),
}

impl Obj<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "a bool",
            Obj::Int(_) => "an int",
            Obj::Float(_) => "a float",
            Obj::Str(_) => "a str",
            Obj::Bytes(_) => "bytes",
            Obj::List(_) => "a list",
            Obj::Tuple(_) => "a tuple",
            Obj::Dict(_) => "a dict",
            Obj::Global(g) => g.describe(),
            Obj::EmptyArray => "an unfilled array",
            Obj::Array(_) => "an array",
            Obj::Dtype(_) => "a dtype",
            Obj::Moved => "bytes already used as an array's data",
            Obj::Storage { .. } => "a torch storage",
            Obj::Tensor(_) => "a tensor",
        }
    }
}

struct Machine<'a, 'l> {
    input: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for errors.
    at: usize,
    limits: &'l Limits,
    arena: Vec<Obj<'a>>,
    stack: Vec<Id>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// Objects made or pushed so far (see [`Limits::max_objects`]).
    units: u64,
    /// Reading a `torch.save` pickle ([`load_torch`]) rather than a Haiku one.
    torch: bool,
}

impl<'a, 'l> Machine<'a, 'l> {
    fn new(input: &'a [u8], limits: &'l Limits) -> Self {
        Machine {
            input,
            pos: 0,
            at: 0,
            limits,
            arena: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            units: 0,
            torch: false,
        }
    }

    /// Why a global or opcode is refused, for the kind of checkpoint being read.
    fn only(&self) -> &'static str {
        if self.torch {
            ONLY_TENSORS
        } else {
            ONLY_ARRAYS
        }
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        pickle_error(self.at, reason.into())
    }

    fn spend(&mut self, units: u64) -> Result<()> {
        self.units = self.units.saturating_add(units);
        if self.units > self.limits.max_objects {
            return Err(self.error(format!(
                "the pickle makes more than {} objects",
                self.limits.max_objects
            )));
        }
        Ok(())
    }

    // --- reading the input ---

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.input.len());
        let Some(end) = end else {
            return Err(self.error(format!(
                "truncated: the opcode needs {n} more bytes, the pickle has {}",
                self.input.len() - self.pos
            )));
        };
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64_len(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.error(format!("a length of {n} bytes")))
    }

    /// A newline-terminated line (protocol 0 arguments, GLOBAL's module and name), as text.
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.input[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.error("truncated: a text argument has no end of line"));
        };
        let line = &rest[..len];
        self.pos += len + 1;
        std::str::from_utf8(line).map_err(|_| self.error("a text argument is not UTF-8"))
    }

    fn utf8(&self, bytes: &'a [u8]) -> Result<&'a str> {
        // Python writes lone surrogates with `surrogatepass`, which is not UTF-8; no checkpoint
        // has them in a name.
        std::str::from_utf8(bytes).map_err(|_| self.error("a string is not valid UTF-8"))
    }

    // --- the stack ---

    fn new_obj(&mut self, obj: Obj<'a>) -> Result<Id> {
        self.spend(1)?;
        self.arena.push(obj);
        Ok(self.arena.len() - 1)
    }

    fn push(&mut self, obj: Obj<'a>) -> Result<()> {
        let id = self.new_obj(obj)?;
        self.stack.push(id);
        Ok(())
    }

    fn push_id(&mut self, id: Id) -> Result<()> {
        self.spend(1)?;
        self.stack.push(id);
        Ok(())
    }

    fn stack_floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.stack_floor() {
            return Err(self.error("the stack is empty where the opcode needs an object"));
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.stack_floor() {
            return Err(self.error("the stack is empty where the opcode needs an object"));
        }
        Ok(*self.stack.last().expect("checked non-empty"))
    }

    /// The objects since the last MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.error("the opcode needs a MARK and there is none"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        if !self.memo.contains_key(&key) && self.memo.len() >= self.limits.max_memo {
            return Err(self.error(format!("more than {} memo entries", self.limits.max_memo)));
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(self.error(format!("memo index {key} was never stored")));
        };
        self.push_id(id)
    }

    // --- running ---

    fn run(&mut self) -> Result<Id> {
        loop {
            self.at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let version = self.u8()?;
                    if version > 5 {
                        return Err(self.error(format!("pickle protocol {version}; this reader knows 0–5")));
                    }
                }
                // FRAME: a length hint for buffered readers; the whole pickle is in memory.
                0x95 => {
                    let len = self.u64_len()?;
                    if len > self.input.len() - self.pos {
                        return Err(self.error(format!(
                            "truncated: a frame of {len} bytes, the pickle has {} left",
                            self.input.len() - self.pos
                        )));
                    }
                }
                // STOP
                b'.' => {
                    let root = self.pop()?;
                    if !self.marks.is_empty() {
                        return Err(self.error("STOP with a MARK still open"));
                    }
                    if !self.stack.is_empty() {
                        return Err(self.error("STOP with more than one object on the stack"));
                    }
                    if self.pos != self.input.len() {
                        return Err(self.error(format!(
                            "{} bytes after the pickle's end",
                            self.input.len() - self.pos
                        )));
                    }
                    return Ok(root);
                }
                // MARK
                b'(' => {
                    if self.marks.len() >= self.limits.max_depth {
                        return Err(self.error(format!("more than {} MARKs open", self.limits.max_depth)));
                    }
                    self.marks.push(self.stack.len());
                }
                // POP
                b'0' => {
                    // POP at a MARK drops the mark (what CPython does).
                    if self.stack.len() == self.stack_floor() && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let id = self.top()?;
                    self.push_id(id)?;
                }

                // Constants and numbers.
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Obj::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Obj::Int(v.into()))?;
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let bytes = self.take(n)?;
                    let v = self.long(bytes)?;
                    self.push(Obj::Int(v))?;
                }
                // INT (text; "00"/"01" are False/True)
                b'I' => {
                    let line = self.line()?;
                    let obj = match line {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        _ => Obj::Int(line.parse().map_err(|_| {
                            self.error(format!("INT {} is not a 64-bit integer", shown(line)))
                        })?),
                    };
                    self.push(obj)?;
                }
                // LONG (text, with an optional L)
                b'L' => {
                    let line = self.line()?;
                    let digits = line.strip_suffix('L').unwrap_or(line);
                    let v = digits
                        .parse()
                        .map_err(|_| self.error(format!("LONG {} is not a 64-bit integer", shown(line))))?;
                    self.push(Obj::Int(v))?;
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Obj::Float(v))?;
                }
                // FLOAT (text)
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .parse()
                        .map_err(|_| self.error(format!("FLOAT {} is not a number", shown(line))))?;
                    self.push(Obj::Float(v))?;
                }

                // Strings.
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.u8()? as usize,
                        b'X' => self.u32()? as usize,
                        _ => self.u64_len()?,
                    };
                    let bytes = self.take(n)?;
                    let text = self.utf8(bytes)?;
                    self.push(Obj::Str(Cow::Borrowed(text)))?;
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64_len()?,
                    };
                    let bytes = self.take(n)?;
                    self.push(Obj::Bytes(Cow::Borrowed(bytes)))?;
                }
                // STRING, BINSTRING, SHORT_BINSTRING, UNICODE: Python 2's str and protocol 0's
                // text, which Python 3 never writes at protocol 2 or above.
                b'S' | b'T' | b'U' | b'V' => {
                    return Err(self.error(format!(
                        "opcode {:?} (a Python 2 or protocol 0 string) is not supported",
                        op as char
                    )));
                }

                // Containers.
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b']' => self.push(Obj::List(Vec::new()))?,
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Obj::Dict(pairs))?;
                }
                // APPEND
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, vec![item])?;
                }
                // APPENDS
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, items)?;
                }
                // SETITEM
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.extend_dict(dict, vec![(key, value)])?;
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    self.extend_dict(dict, pairs)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET
                0x8f..=0x91 => {
                    return Err(self.error("sets are not part of a checkpoint"));
                }

                // The memo.
                b'q' => {
                    let key = self.u8()?;
                    self.memo_put(key.into())?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(key.into())?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let key = line
                        .parse()
                        .map_err(|_| self.error(format!("PUT {} is not a memo index", shown(line))))?;
                    self.memo_put(key)?;
                }
                b'h' => {
                    let key = self.u8()?;
                    self.memo_get(key.into())?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.memo_get(key.into())?;
                }
                b'g' => {
                    let line = self.line()?;
                    let key = line
                        .parse()
                        .map_err(|_| self.error(format!("GET {} is not a memo index", shown(line))))?;
                    self.memo_get(key)?;
                }

                // Globals and calls.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Obj::Str(module), Obj::Str(name)) = (&self.arena[module], &self.arena[name]) else {
                        return Err(self.error("STACK_GLOBAL's module and name are not strings"));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.push_global(&module, &name)?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    return Err(self.refused(module, name));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.reduce(callable, args)?;
                    self.push(result)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                b'o' | 0x81 | 0x92 => {
                    return Err(self.error(format!(
                        "{} makes an instance of a class; {}",
                        match op {
                            b'o' => "OBJ",
                            0x81 => "NEWOBJ",
                            _ => "NEWOBJ_EX",
                        },
                        self.only()
                    )));
                }
                // BINPERSID: in a torch.save pickle, a storage of the archive.
                b'Q' if self.torch => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(storage)?;
                }
                b'P' | b'Q' => {
                    return Err(self.error(format!(
                        "a persistent id{}; {}",
                        if self.torch {
                            " as text"
                        } else {
                            " (what torch.save writes)"
                        },
                        self.only()
                    )));
                }
                0x82..=0x84 => {
                    return Err(self.error(format!(
                        "an extension-registry global (EXT opcode); {}",
                        self.only()
                    )));
                }
                // NEXT_BUFFER
                0x97 => {
                    return Err(
                        self.error("an out-of-band buffer: this pickle's array data was written outside it")
                    );
                }
                // READONLY_BUFFER: only marks the buffer on the stack read-only.
                0x98 => {
                    let id = self.top()?;
                    if !matches!(self.arena[id], Obj::Bytes(_)) {
                        return Err(self.error("READONLY_BUFFER of something that is not a buffer"));
                    }
                }
                _ => return Err(self.error(format!("unknown opcode 0x{op:02x}"))),
            }
        }
    }

    /// A little-endian two's complement integer (LONG1, LONG4).
    fn long(&self, bytes: &[u8]) -> Result<i64> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let fill = if negative { 0xff } else { 0 };
        // Bytes past the eighth must only extend the sign.
        if bytes.len() > 8 {
            let (_, high) = bytes.split_at(8);
            if high.iter().any(|&b| b != fill) || ((bytes[7] & 0x80 != 0) != negative) {
                return Err(self.error("an integer wider than 64 bits"));
            }
        }
        let mut le = [fill; 8];
        let n = bytes.len().min(8);
        le[..n].copy_from_slice(&bytes[..n]);
        Ok(i64::from_le_bytes(le))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if items.len() & 1 == 1 {
            return Err(self.error("an odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Result<()> {
        let kind = self.arena[list].kind();
        match &mut self.arena[list] {
            Obj::List(existing) => {
                existing.extend(items);
                Ok(())
            }
            _ => Err(self.error(format!("APPEND to {kind}"))),
        }
    }

    fn extend_dict(&mut self, dict: Id, pairs: Vec<(Id, Id)>) -> Result<()> {
        let kind = self.arena[dict].kind();
        match &mut self.arena[dict] {
            Obj::Dict(existing) => {
                existing.extend(pairs);
                Ok(())
            }
            _ => Err(self.error(format!("SETITEM on {kind}"))),
        }
    }

    fn refused(&self, module: &str, name: &str) -> Error {
        self.error(format!(
            "refused global {}.{}: {}",
            shown_bare(module),
            shown_bare(name),
            self.only()
        ))
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::find(module, name, self.torch) {
            Some(global) => self.push(Obj::Global(global)),
            None => Err(self.refused(module, name)),
        }
    }

    // --- calls ---

    fn tuple_args(&self, args: Id, what: &str) -> Result<&[Id]> {
        match &self.arena[args] {
            Obj::Tuple(items) => Ok(items),
            other => Err(self.error(format!(
                "the arguments of {what} are {}, not a tuple",
                other.kind()
            ))),
        }
    }

    fn reduce(&mut self, callable: Id, args: Id) -> Result<Obj<'a>> {
        let global = match &self.arena[callable] {
            Obj::Global(global) => *global,
            other => {
                return Err(self.error(format!(
                    "REDUCE calls {}, which is not callable here",
                    other.kind()
                )))
            }
        };
        let what = global.describe();
        let args = self.tuple_args(args, what)?.to_vec();
        let bad = |machine: &Self, expected: &str| {
            machine.error(format!(
                "{what} called with unexpected arguments (expected {expected})"
            ))
        };
        match global {
            Global::Reconstruct => {
                // _reconstruct(ndarray, (0,), b'b'): NumPy's empty array of the base class.
                let [class, shape, typecode] = args[..] else {
                    return Err(bad(self, "ndarray, (0,), b'b'"));
                };
                if self.arena[class] != Obj::Global(Global::NdArray) {
                    return Err(bad(self, "numpy.ndarray as the class"));
                }
                if !matches!(&self.arena[shape], Obj::Tuple(_))
                    || !matches!(&self.arena[typecode], Obj::Bytes(_))
                {
                    return Err(bad(self, "ndarray, (0,), b'b'"));
                }
                Ok(Obj::EmptyArray)
            }
            Global::DtypeClass => {
                // dtype(name, align, copy)
                let (name, flags) = match args.split_first() {
                    Some((&name, flags)) if flags.len() <= 2 => (name, flags),
                    _ => return Err(bad(self, "a type name, align, copy")),
                };
                if flags
                    .iter()
                    .any(|&f| !matches!(self.arena[f], Obj::Bool(_) | Obj::Int(_)))
                {
                    return Err(bad(self, "a type name, align, copy"));
                }
                let dtype = self.dtype_from_name(name)?;
                Ok(Obj::Dtype(dtype))
            }
            Global::FromBuffer => {
                // _frombuffer(buffer, dtype, shape, order)
                let [buffer, dtype, shape, order] = args[..] else {
                    return Err(bad(self, "buffer, dtype, shape, order"));
                };
                let dtype = self.dtype_of(dtype)?;
                let shape = self.shape_of(shape)?;
                let fortran = match &self.arena[order] {
                    Obj::Str(order) if order == "C" => false,
                    Obj::Str(order) if order == "F" => true,
                    Obj::Str(order) => {
                        return Err(self.error(format!("array order {}; expected C or F", shown(order))))
                    }
                    _ => return Err(bad(self, "order 'C' or 'F'")),
                };
                let data = self.take_bytes(buffer, "_frombuffer's buffer")?;
                Ok(Obj::Array(self.array(dtype, shape, fortran, data)?))
            }
            Global::Scalar => {
                // scalar(dtype, bytes)
                let [dtype, data] = args[..] else {
                    return Err(bad(self, "dtype, bytes"));
                };
                let dtype = self.dtype_of(dtype)?;
                let data = self.take_bytes(data, "a numpy scalar's data")?;
                Ok(Obj::Array(self.array(dtype, Vec::new(), false, data)?))
            }
            Global::CodecsEncode => {
                // encode(text, 'latin1'): protocol 2's bytes, one char per byte.
                let [text, encoding] = args[..] else {
                    return Err(bad(self, "text, 'latin1'"));
                };
                match (&self.arena[text], &self.arena[encoding]) {
                    (Obj::Str(text), Obj::Str(encoding)) if encoding == "latin1" || encoding == "latin-1" => {
                        let mut bytes = Vec::with_capacity(text.len());
                        for c in text.chars() {
                            let byte = u8::try_from(u32::from(c))
                                .map_err(|_| self.error("_codecs.encode of a character beyond latin-1"))?;
                            bytes.push(byte);
                        }
                        Ok(Obj::Bytes(Cow::Owned(bytes)))
                    }
                    _ => Err(bad(self, "text, 'latin1'")),
                }
            }
            Global::BytesClass => {
                if !args.is_empty() {
                    return Err(bad(self, "no arguments"));
                }
                Ok(Obj::Bytes(Cow::Borrowed(&[])))
            }
            Global::Mapping => match args[..] {
                [] => Ok(Obj::Dict(Vec::new())),
                [mapping] => match &self.arena[mapping] {
                    // The new mapping is a copy of the dict, which no pickle changes afterwards.
                    Obj::Dict(pairs) => {
                        let pairs = pairs.clone();
                        self.spend(pairs.len() as u64)?;
                        Ok(Obj::Dict(pairs))
                    }
                    // OrderedDict([(key, value), ...])
                    Obj::List(items) => {
                        let items = items.clone();
                        self.spend(items.len() as u64)?;
                        let mut pairs = Vec::with_capacity(items.len());
                        for item in items {
                            match &self.arena[item] {
                                Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => pairs.push((kv[0], kv[1])),
                                _ => return Err(bad(self, "a list of (key, value) pairs")),
                            }
                        }
                        Ok(Obj::Dict(pairs))
                    }
                    _ => Err(bad(self, "a dict")),
                },
                _ => Err(bad(self, "one dict")),
            },
            Global::JaxArray => {
                // reconstruct(fun, args, arr_state, aval_state): fun(*args).__setstate__(arr_state)
                let [fun, fun_args, state, aval] = args[..] else {
                    return Err(bad(self, "fun, args, state, aval_state"));
                };
                if self.arena[fun] != Obj::Global(Global::Reconstruct) {
                    return Err(bad(self, "numpy's _reconstruct as the function"));
                }
                if !matches!(self.arena[aval], Obj::Dict(_) | Obj::None) {
                    return Err(bad(self, "a dict as aval_state"));
                }
                match self.reduce(fun, fun_args)? {
                    Obj::EmptyArray => {}
                    _ => unreachable!("_reconstruct makes an empty array"),
                }
                Ok(Obj::Array(self.array_from_state(state)?))
            }
            Global::TorchTensor => {
                // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]);
                // the metadata (tensor attributes such as names) changes no value.
                let expected = "storage, offset, size, stride, requires_grad, hooks";
                if args.len() > 7 {
                    return Err(bad(self, expected));
                }
                let [storage, offset, shape, strides, requires_grad, hooks] = args[..args.len().min(6)]
                else {
                    return Err(bad(self, expected));
                };
                if !matches!(self.arena[requires_grad], Obj::Bool(_))
                    || !matches!(self.arena[hooks], Obj::Dict(_))
                {
                    return Err(bad(self, "requires_grad a bool and hooks a mapping"));
                }
                Ok(Obj::Tensor(self.torch_tensor(storage, offset, shape, strides)?))
            }
            Global::TorchParameter => {
                // _rebuild_parameter(tensor, requires_grad, hooks)
                let [tensor, requires_grad, hooks] = args[..] else {
                    return Err(bad(self, "tensor, requires_grad, hooks"));
                };
                if !matches!(self.arena[requires_grad], Obj::Bool(_))
                    || !matches!(self.arena[hooks], Obj::Dict(_))
                {
                    return Err(bad(self, "requires_grad a bool and hooks a mapping"));
                }
                let Obj::Tensor(tensor) = &self.arena[tensor] else {
                    return Err(bad(self, "a tensor"));
                };
                let tensor = tensor.clone();
                self.spend(tensor.bytes())?;
                Ok(Obj::Tensor(tensor))
            }
            Global::NdArray | Global::BFloat16 | Global::TorchStorage(_) => Err(self.error(format!(
                "REDUCE calls {what}, which only appears as an argument; {}",
                self.only()
            ))),
        }
    }

    // --- torch ---

    /// A `torch.save` persistent id: `('storage', storage class, key, location, elements)`.
    fn persistent_load(&mut self, pid: Id) -> Result<Obj<'a>> {
        let expected = "a persistent id that is not ('storage', class, key, location, size)";
        let Obj::Tuple(items) = &self.arena[pid] else {
            return Err(self.error(expected));
        };
        let [tag, class, key, location, len] = items[..] else {
            return Err(self.error(expected));
        };
        if !matches!(&self.arena[tag], Obj::Str(tag) if tag == "storage")
            || !matches!(self.arena[location], Obj::Str(_))
        {
            return Err(self.error(expected));
        }
        let Obj::Global(Global::TorchStorage(element)) = self.arena[class] else {
            return Err(self.error(format!(
                "a storage of class {}, not a torch storage class",
                self.arena[class].kind()
            )));
        };
        let key = match &self.arena[key] {
            // The key is a file name in the archive's data folder (torch numbers them).
            Obj::Str(key)
                if (1..=MAX_STORAGE_KEY).contains(&key.len())
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                key.clone()
            }
            Obj::Str(key) => return Err(self.error(format!("a storage key {}", shown(key)))),
            _ => return Err(self.error(expected)),
        };
        let len = match self.arena[len] {
            Obj::Int(n) if n >= 0 && (n as u64) <= self.limits.max_array_elements => n as usize,
            Obj::Int(n) => {
                return Err(self.error(format!(
                    "a storage of {n} elements (at most {} allowed)",
                    self.limits.max_array_elements
                )))
            }
            _ => return Err(self.error(expected)),
        };
        Ok(Obj::Storage { element, key, len })
    }

    /// `_rebuild_tensor_v2`'s view of a storage, checked to stay inside it and to hold no more
    /// elements than it (an expanded view, stride 0, would let a small storage stand for a huge
    /// tensor).
    fn torch_tensor(&mut self, storage: Id, offset: Id, shape: Id, strides: Id) -> Result<TorchTensor> {
        let (element, key, len) = match &self.arena[storage] {
            Obj::Storage { element, key, len } => (*element, key.to_string(), *len),
            other => return Err(self.error(format!("_rebuild_tensor_v2 of {}, not a storage", other.kind()))),
        };
        let offset = match self.arena[offset] {
            Obj::Int(n) if n >= 0 && n as u64 <= len as u64 => n as usize,
            _ => {
                return Err(self.error(format!(
                    "a tensor's offset is not an element of its storage of {len}"
                )))
            }
        };
        let shape = self.shape_of(shape)?;
        let strides = self.strides_of(strides)?;
        self.spend(key.len() as u64)?;
        if strides.len() != shape.len() {
            return Err(self.error(format!(
                "a tensor of {} dimensions with {} strides",
                shape.len(),
                strides.len()
            )));
        }
        // shape_of bounded the count by max_array_elements.
        let count: usize = shape.iter().product();
        if count > len {
            return Err(self.error(format!(
                "a tensor of shape {shape:?} has more elements than its storage's {len}"
            )));
        }
        // The last element the view reaches; a view of no elements reaches none.
        if count > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |at, (&d, &s)| at.checked_add((d - 1).checked_mul(s)?));
            if last.is_none_or(|last| last >= len) {
                return Err(self.error(format!(
                    "a tensor of shape {shape:?}, strides {strides:?} from element {offset} reaches past \
                     its storage's {len} elements"
                )));
            }
        }
        Ok(TorchTensor {
            storage: key,
            element,
            storage_len: len,
            offset,
            shape,
            strides,
        })
    }

    /// A tensor's strides: at most the storage's elements each.
    fn strides_of(&mut self, id: Id) -> Result<Vec<usize>> {
        let strides = self.small_ints(id, "a tensor's strides", "a tensor stride")?;
        strides
            .into_iter()
            .map(|s| match usize::try_from(s) {
                Ok(s) if s as u64 <= self.limits.max_array_elements => Ok(s),
                _ => Err(self.error(format!("a tensor stride of {s}, beyond any storage"))),
            })
            .collect()
    }

    fn build(&mut self, target: Id, state: Id) -> Result<()> {
        match &self.arena[target] {
            Obj::EmptyArray => {
                let array = self.array_from_state(state)?;
                self.arena[target] = Obj::Array(array);
                Ok(())
            }
            Obj::Dtype(dtype) => {
                let dtype = self.dtype_state(*dtype, state)?;
                self.arena[target] = Obj::Dtype(dtype);
                Ok(())
            }
            // An OrderedDict's attributes: a state dict's `_metadata` (module versions).
            Obj::Dict(_) if self.torch && matches!(self.arena[state], Obj::Dict(_)) => Ok(()),
            other => Err(self.error(format!("BUILD of {}; {}", other.kind(), self.only()))),
        }
    }

    // --- NumPy ---

    /// `numpy.dtype`'s first argument: a type string such as `'f4'` (`'<f4'` too), or the
    /// bfloat16 class.
    fn dtype_from_name(&self, name: Id) -> Result<Dtype> {
        match &self.arena[name] {
            Obj::Str(name) => {
                let (big_endian, bare) = match name.as_bytes().first() {
                    Some(b'>') => (true, &name[1..]),
                    Some(b'<' | b'=' | b'|') => (false, &name[1..]),
                    _ => (false, &name[..]),
                };
                match Element::from_numpy(bare) {
                    Some(element) => Ok(Dtype { element, big_endian }),
                    None => Err(self.error(format!(
                        "numpy dtype {} is not supported (numbers and bools only)",
                        shown(name)
                    ))),
                }
            }
            Obj::Global(Global::BFloat16) => Ok(Dtype {
                element: Element::BF16,
                big_endian: false,
            }),
            other => Err(self.error(format!("numpy.dtype of {}", other.kind()))),
        }
    }

    /// A dtype's BUILD state `(version, byteorder, subarray, names, fields, elsize, alignment,
    /// flags[, metadata])`: only plain (non-structured) dtypes, whose byte order it sets.
    fn dtype_state(&self, dtype: Dtype, state: Id) -> Result<Dtype> {
        let bad = |why: &str| self.error(format!("a dtype's state {why}"));
        let Obj::Tuple(items) = &self.arena[state] else {
            return Err(bad("is not a tuple"));
        };
        if !(8..=9).contains(&items.len()) {
            return Err(bad("has an unexpected length (a structured or old dtype?)"));
        }
        if !matches!(self.arena[items[0]], Obj::Int(3 | 4)) {
            return Err(bad("has a version other than 3 or 4"));
        }
        let order = match &self.arena[items[1]] {
            Obj::Str(order) => order.as_ref(),
            _ => return Err(bad("has no byte order")),
        };
        let big_endian = match order {
            ">" => true,
            "<" | "|" | "=" => false,
            _ => return Err(bad(&format!("has byte order {}", shown(order)))),
        };
        for &i in &items[2..5] {
            if self.arena[i] != Obj::None {
                return Err(bad(
                    "describes a structured or sub-array dtype, which is not supported",
                ));
            }
        }
        for &i in &items[5..7] {
            match self.arena[i] {
                Obj::Int(-1) => {}
                Obj::Int(n) if n == dtype.element.size() as i64 => {}
                _ => return Err(bad("has an item size that does not match its type")),
            }
        }
        Ok(Dtype { big_endian, ..dtype })
    }

    fn dtype_of(&self, id: Id) -> Result<Dtype> {
        match &self.arena[id] {
            Obj::Dtype(dtype) => Ok(*dtype),
            other => Err(self.error(format!("{} where a dtype belongs", other.kind()))),
        }
    }

    /// A tuple of at most 64 non-negative integers (`what`, each an `item`): an array's shape or
    /// a tensor's strides. They are paid for like a string's bytes, so that a pickle calling a
    /// constructor over and over with one memoised tuple cannot make them without bound.
    fn small_ints(&mut self, id: Id, what: &str, item: &str) -> Result<Vec<u64>> {
        let Obj::Tuple(items) = &self.arena[id] else {
            return Err(self.error(format!("{} where {what} belongs", self.arena[id].kind())));
        };
        if items.len() > 64 {
            return Err(self.error(format!("{what} of {} entries (at most 64)", items.len())));
        }
        let ints = items
            .iter()
            .map(|&i| match self.arena[i] {
                Obj::Int(n) if n >= 0 => Ok(n as u64),
                Obj::Int(n) => Err(self.error(format!("{item} of {n}"))),
                _ => Err(self.error(format!("{what} holds something other than integers"))),
            })
            .collect::<Result<Vec<_>>>()?;
        self.spend(8 * ints.len() as u64)?;
        Ok(ints)
    }

    /// An array's shape, of at most [`Limits::max_array_elements`] elements.
    fn shape_of(&mut self, id: Id) -> Result<Vec<usize>> {
        let dims = self.small_ints(id, "an array's shape", "an array dimension")?;
        let count = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if count.is_none_or(|c| c > self.limits.max_array_elements) {
            return Err(self.error(format!(
                "an array of shape {dims:?}: more than the {} elements allowed",
                self.limits.max_array_elements
            )));
        }
        // Each dimension is at most the count, which fits in memory's bounds checked later.
        dims.into_iter()
            .map(|d| usize::try_from(d).map_err(|_| self.error(format!("an array dimension of {d}"))))
            .collect()
    }

    /// The bytes of a bytes object, taken out of it when it owns them (see [`Obj::Moved`]).
    fn take_bytes(&mut self, id: Id, what: &str) -> Result<Cow<'a, [u8]>> {
        match &mut self.arena[id] {
            Obj::Bytes(Cow::Borrowed(bytes)) => Ok(Cow::Borrowed(*bytes)),
            Obj::Bytes(Cow::Owned(_)) => {
                let Obj::Bytes(bytes) = std::mem::replace(&mut self.arena[id], Obj::Moved) else {
                    unreachable!("matched above");
                };
                Ok(bytes)
            }
            other => {
                let kind = other.kind();
                Err(self.error(format!("{what} is {kind}, not bytes")))
            }
        }
    }

    /// An ndarray's BUILD state `([version,] shape, dtype, is_fortran, data)`.
    fn array_from_state(&mut self, state: Id) -> Result<ArrayObj<'a>> {
        let Obj::Tuple(items) = &self.arena[state] else {
            return Err(self.error(format!(
                "an array's state is {}, not a tuple",
                self.arena[state].kind()
            )));
        };
        let items = match items[..] {
            [version, shape, dtype, fortran, data] => {
                if self.arena[version] != Obj::Int(1) {
                    return Err(self.error("an array's state has a version other than 1"));
                }
                [shape, dtype, fortran, data]
            }
            [shape, dtype, fortran, data] => [shape, dtype, fortran, data],
            _ => return Err(self.error("an array's state is not (version, shape, dtype, is_fortran, data)")),
        };
        let [shape, dtype, fortran, data] = items;
        let shape = self.shape_of(shape)?;
        let dtype = self.dtype_of(dtype)?;
        let fortran = match self.arena[fortran] {
            Obj::Bool(b) => b,
            Obj::Int(i) => i != 0,
            _ => return Err(self.error("an array's is_fortran flag is not a bool")),
        };
        if matches!(self.arena[data], Obj::List(_)) {
            return Err(self.error("an array of Python objects; numbers only"));
        }
        let data = self.take_bytes(data, "an array's data")?;
        self.array(dtype, shape, fortran, data)
    }

    /// Checks the data against shape × dtype and puts it in C order.
    fn array(
        &self,
        dtype: Dtype,
        shape: Vec<usize>,
        fortran: bool,
        data: Cow<'a, [u8]>,
    ) -> Result<ArrayObj<'a>> {
        let size = dtype.element.size();
        // shape_of bounded the product by max_array_elements (< 2^64 / 8).
        let count = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let expected = count.and_then(|c| c.checked_mul(size as u64));
        if expected != Some(data.len() as u64) {
            return Err(self.error(format!(
                "an array of shape {shape:?} and {:?} needs {} bytes, its data has {}",
                dtype.element,
                expected.map_or("too many".into(), |e| e.to_string()),
                data.len()
            )));
        }
        let data = if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
            Cow::Owned(fortran_to_c(&data, &shape, size))
        } else {
            data
        };
        Ok(ArrayObj { dtype, shape, data })
    }

    // --- the result ---

    /// Converts the object graph under `root` into a tree of [`Value`]s. A first walk counts
    /// the tree's nodes against the limits (a memoised object referenced twice is two nodes)
    /// and how often each object is reached, so the second can move an array's data out of the
    /// arena at its last use instead of copying it.
    fn into_value(mut self, root: Id) -> Result<Value> {
        self.at = self.input.len();
        let mut uses = vec![0u64; self.arena.len()];
        self.count(root, &mut uses)?;
        Ok(self.convert(root, &mut uses))
    }

    /// Walks the tree under `root` (without recursion: the walk is bounded by the limits, not
    /// by the thread's stack), counting its nodes and each object's uses.
    fn count(&mut self, root: Id, uses: &mut [u64]) -> Result<()> {
        let max_depth = self.limits.max_depth;
        let max_objects = self.limits.max_objects;
        let mut units = self.units;
        let mut todo = vec![(root, 0usize)];
        while let Some((id, depth)) = todo.pop() {
            if depth > max_depth {
                return Err(self.error(format!(
                    "the pickle nests more than {max_depth} deep (or refers to itself)"
                )));
            }
            uses[id] += 1;
            let obj = &self.arena[id];
            // Data held more than once in the result is copied.
            let copied = match obj {
                Obj::Str(s) if uses[id] > 1 => s.len() as u64,
                Obj::Bytes(b) if uses[id] > 1 => b.len() as u64,
                Obj::Array(a) if uses[id] > 1 => (a.data.len() + 8 * a.shape.len()) as u64,
                Obj::Tensor(t) if uses[id] > 1 => t.bytes(),
                _ => 0,
            };
            units = units.saturating_add(1 + copied);
            if units > max_objects {
                return Err(self.error(format!("the pickle makes more than {max_objects} objects")));
            }
            match obj {
                Obj::List(items) | Obj::Tuple(items) => {
                    todo.extend(items.iter().map(|&child| (child, depth + 1)));
                }
                Obj::Dict(pairs) => {
                    todo.extend(pairs.iter().flat_map(|&(k, v)| [(k, depth + 1), (v, depth + 1)]));
                }
                Obj::Global(g) => {
                    return Err(self.error(format!(
                        "the result holds {} itself; {}",
                        g.describe(),
                        self.only()
                    )));
                }
                Obj::EmptyArray => return Err(self.error("an array that was never filled (no BUILD)")),
                Obj::Moved => return Err(self.error("bytes that were already used as an array's data")),
                Obj::Storage { .. } => return Err(self.error("a torch storage outside a tensor")),
                _ => {}
            }
        }
        self.units = units;
        Ok(())
    }

    fn convert(&mut self, id: Id, uses: &mut [u64]) -> Value {
        uses[id] -= 1;
        let last = uses[id] == 0;
        let obj = if last {
            std::mem::replace(&mut self.arena[id], Obj::Moved)
        } else {
            // Only containers and shared data get here; copying a container copies ids.
            match &self.arena[id] {
                Obj::List(items) => Obj::List(items.clone()),
                Obj::Tuple(items) => Obj::Tuple(items.clone()),
                Obj::Dict(pairs) => Obj::Dict(pairs.clone()),
                Obj::Str(s) => Obj::Str(s.clone()),
                Obj::Bytes(b) => Obj::Bytes(b.clone()),
                Obj::Array(a) => Obj::Array(ArrayObj {
                    dtype: a.dtype,
                    shape: a.shape.clone(),
                    data: a.data.clone(),
                }),
                Obj::None => Obj::None,
                Obj::Bool(b) => Obj::Bool(*b),
                Obj::Int(i) => Obj::Int(*i),
                Obj::Float(f) => Obj::Float(*f),
                Obj::Dtype(d) => Obj::Dtype(*d),
                Obj::Tensor(t) => Obj::Tensor(t.clone()),
                Obj::Global(_) | Obj::EmptyArray | Obj::Moved | Obj::Storage { .. } => {
                    unreachable!("refused by count")
                }
            }
        };
        match obj {
            Obj::None => Value::None,
            Obj::Bool(b) => Value::Bool(b),
            Obj::Int(i) => Value::Int(i),
            Obj::Float(f) => Value::Float(f),
            Obj::Str(s) => Value::Str(s.into_owned()),
            Obj::Bytes(b) => Value::Bytes(b.into_owned()),
            Obj::List(items) => Value::List(items.into_iter().map(|i| self.convert(i, uses)).collect()),
            Obj::Tuple(items) => Value::Tuple(items.into_iter().map(|i| self.convert(i, uses)).collect()),
            Obj::Dict(pairs) => Value::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| (self.convert(k, uses), self.convert(v, uses)))
                    .collect(),
            ),
            Obj::Array(a) => Value::Array(Array {
                dtype: a.dtype,
                shape: a.shape,
                data: a.data.into_owned(),
            }),
            Obj::Dtype(d) => Value::Dtype(d),
            Obj::Tensor(t) => Value::Tensor(t),
            Obj::Global(_) | Obj::EmptyArray | Obj::Moved | Obj::Storage { .. } => {
                unreachable!("refused by count")
            }
        }
    }
}

impl PartialEq for Obj<'_> {
    /// Only what the checks above compare: globals and small scalars.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Obj::None, Obj::None) => true,
            (Obj::Int(a), Obj::Int(b)) => a == b,
            (Obj::Global(a), Obj::Global(b)) => a == b,
            _ => false,
        }
    }
}

/// Text from the pickle, quoted, escaped and cut short, for an error message.
fn shown(text: &str) -> String {
    format!("\"{}\"", shown_bare(text))
}

/// [`shown`] without the quotes (a global's module and name read as Python spells them).
fn shown_bare(text: &str) -> String {
    const MOST: usize = 80;
    let mut out: String = text.chars().take(MOST).flat_map(char::escape_debug).collect();
    if text.chars().nth(MOST).is_some() {
        out.push('…');
    }
    out
}

/// Reorders a column-major array's elements into row-major order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let count: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    // Strides of the Fortran layout, in elements.
    let mut f_strides = vec![1usize; shape.len()];
    for axis in 1..shape.len() {
        f_strides[axis] = f_strides[axis - 1] * shape[axis - 1];
    }
    let mut index = vec![0usize; shape.len()];
    for c in 0..count {
        let f: usize = index.iter().zip(&f_strides).map(|(i, s)| i * s).sum();
        out[c * size..(c + 1) * size].copy_from_slice(&data[f * size..(f + 1) * size]);
        // Advance the row-major index: the last axis fastest.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(bytes: &[u8]) -> Result<i64> {
        Machine::new(&[], &Limits::default()).long(bytes)
    }

    #[test]
    fn long_integers_are_twos_complement_and_bounded() {
        assert_eq!(int(&[]).unwrap(), 0);
        assert_eq!(int(&[0xff]).unwrap(), -1);
        assert_eq!(int(&[0x80]).unwrap(), -128);
        assert_eq!(int(&[0xff, 0x00]).unwrap(), 255);
        assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0x80]).unwrap(), i64::MIN);
        // Sign extension past eight bytes is allowed, more magnitude is not.
        assert_eq!(
            int(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap(),
            -2
        );
        assert_eq!(
            int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]).unwrap(),
            i64::MAX
        );
        assert!(int(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0x00]).is_err()); // 2^63
        assert!(int(&[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err()); // 2^64
        assert!(int(&[0, 0, 0, 0, 0, 0, 0, 0x7f, 0xff]).is_err()); // -2^63 - 2^56·…
    }

    #[test]
    fn text_in_messages_is_escaped_and_short() {
        assert_eq!(shown("f4"), "\"f4\"");
        assert_eq!(shown_bare("os\nsystem"), "os\\nsystem");
        let long = "x".repeat(1000);
        assert_eq!(shown_bare(&long).chars().count(), 81);
    }

    #[test]
    fn fortran_order_becomes_row_major() {
        // A 2×3 array [[0, 1, 2], [3, 4, 5]] stored column by column: 0 3 1 4 2 5.
        let column_major = [0u8, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&column_major, &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
        // Two-byte elements move whole.
        let wide: Vec<u8> = column_major.iter().flat_map(|&b| [b, 0xa0 + b]).collect();
        let expected: Vec<u8> = (0..6u8).flat_map(|b| [b, 0xa0 + b]).collect();
        assert_eq!(fortran_to_c(&wide, &[2, 3], 2), expected);
        // 2×2×2: element (i, j, k) at i + 2j + 4k.
        let data: Vec<u8> = (0..8).collect();
        let c = fortran_to_c(&data, &[2, 2, 2], 1);
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    assert_eq!(c[i * 4 + j * 2 + k] as usize, i + 2 * j + 4 * k);
                }
            }
        }
    }
}
