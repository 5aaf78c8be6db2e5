//! The library's error type: one enum whose variants carry the data a caller needs to act.

use std::path::PathBuf;

/// Everything that can go wrong between a model id and a logit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config.json that does not parse, or values that cannot build a model.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// A config count outside the range this library accepts: zero, or so large that loading
    /// or running the model would be absurd (see [`crate::config::bounds`] for each bound and
    /// why). `field` is the config.json field, or a quantity derived from several fields.
    #[error("invalid config: {field} is {value}, it must be in {min}..={max} ({why})")]
    ConfigOutOfRange {
        /// The field (or derived quantity).
        field: &'static str,
        /// Its value.
        value: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
        /// Why the bound is where it is.
        why: &'static str,
    },

    /// A file that cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A file that cannot be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// No weights file in a model directory.
    #[error("no weights in {}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin", dir.display())]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },

    /// A weights file whose header or contents cannot be decoded (truncated, corrupt, wrong format).
    #[error("corrupt or unreadable weights file {}: {reason}", path.display())]
    CorruptWeights {
        /// The file (or `<memory>`, `<built-in model>`).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The config asks for a tensor the weights do not have.
    #[error("the weights do not match the config: tensor {name} is missing")]
    MissingTensor {
        /// The tensor's transformers name.
        name: String,
    },

    /// A tensor whose shape differs from what the config implies.
    #[error("the weights do not match the config: tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor's transformers name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the weights.
        found: Vec<usize>,
    },

    /// A tensor the config has no place for (e.g. more layers than `num_self_attends_per_block`).
    #[error("the weights do not match the config: unexpected tensor {name} (shape {shape:?})")]
    UnexpectedTensor {
        /// The tensor's name in the weights.
        name: String,
        /// Its shape there.
        shape: Vec<usize>,
    },

    /// The model could not be fetched from, or found in the cache of, the Hugging Face hub.
    #[error("cannot get {file} of model {model_id}: {reason}")]
    Hub {
        /// The hub id asked for.
        model_id: String,
        /// The repository file that could not be had.
        file: String,
        /// What the hub client (or the cache look-up) said.
        reason: String,
    },

    /// A config.json whose `architectures` names a model class this library does not build.
    #[error(
        "unsupported architecture {name}: this library builds PerceiverForMaskedLM, \
         PerceiverForSequenceClassification, PerceiverForImageClassification{{Learned,Fourier,ConvProcessing}}, \
         PerceiverForOpticalFlow and PerceiverForMultimodalAutoencoding"
    )]
    UnsupportedArchitecture {
        /// The class named.
        name: String,
    },

    /// A text longer than the model's positions (or than the tokenizer's bound, for a text whose
    /// `[MASK:n]` runs expand beyond any model).
    #[error(
        "the text is {tokens} tokens long or more (special tokens included), more than allowed: at most {max}"
    )]
    TooLong {
        /// Ids the text expands to (at least).
        tokens: usize,
        /// The most allowed: the model's positions, or the tokenizer's bound before a model is known.
        max: usize,
    },

    /// A text the model cannot take: no mask, malformed mask syntax, …
    #[error("{0}")]
    InvalidInput(String),

    /// A pickle (a DeepMind Haiku checkpoint, or a `pytorch_model.bin`'s `data.pkl`) that cannot
    /// be read safely: a global or call this reader does not allow, a malformed or truncated
    /// stream, sizes beyond its bounds, a tensor outside its storage, or contents that are not
    /// the layout of Haiku parameters.
    #[error(
        "cannot read the pickle{}{}: {reason}",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(),
        offset.map(|o| format!(" (at byte {o})")).unwrap_or_default()
    )]
    Pickle {
        /// The file, when the pickle came from one.
        path: Option<PathBuf>,
        /// Where in the pickle the reader stopped (the start of the opcode it refused), when the
        /// error is about the stream rather than what it holds.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// Bytes that are not an image this library decodes: empty, another kind of file, a format
    /// outside JPEG, PNG, WebP, BMP, GIF and TIFF, or a truncated or corrupt file.
    #[error("cannot decode the image{}: {reason}", format.map(|f| format!(" ({f})")).unwrap_or_default())]
    InvalidImage {
        /// The format its first bytes announce, when they announce one.
        format: Option<&'static str>,
        /// What is wrong with it.
        reason: String,
    },

    /// An image (as its header states it, before any pixel is decoded) or an intermediate image
    /// (a centre crop) with more pixels than a limit allows.
    #[error(
        "the {limit} is {width} x {height} pixels (width x height: {}), more than the limit of {max_pixels} pixels",
        width.saturating_mul(*height)
    )]
    ImageTooLarge {
        /// Its width in pixels.
        width: u64,
        /// Its height in pixels.
        height: u64,
        /// The most pixels allowed.
        max_pixels: u64,
        /// What is over the limit: `image` (an image over
        /// [`DecodeLimits::max_pixels`](crate::image::DecodeLimits::max_pixels)), `centre crop`
        /// or `resize target`.
        limit: &'static str,
    },

    /// Bytes that are not a Middlebury `.flo` optical flow file this library reads: a wrong tag,
    /// sizes that are not positive or beyond [`crate::flow::flo::MAX_FLO_PIXELS`], a payload
    /// shorter than the header promises, or bytes after it.
    #[error(
        "not a valid .flo file{}: {reason}",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    InvalidFlo {
        /// The file, when the bytes came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },

    /// A DeepMind checkpoint (Haiku params) whose modules or shapes are not those of a model this
    /// library builds: a module or parameter missing, one the model has no place for, a shape
    /// that disagrees, or widths no transformers config can express.
    #[error("{}: not a DeepMind checkpoint this library reads: {reason}", path.display())]
    DeepMindCheckpoint {
        /// The `.pickle` / `.pystate` file (or `<memory>`).
        path: PathBuf,
        /// What is wrong, naming DeepMind's module and parameter.
        reason: String,
    },
}

/// `Result` with the library's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
