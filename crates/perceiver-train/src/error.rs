//! The training crate's error type.

use std::path::PathBuf;

/// Everything that can stop training, evaluation or plotting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model-side failure (config, weights, tensors).
    #[error(transparent)]
    Model(#[from] perceiver::Error),

    /// A file or directory that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The corpus names nothing usable (no files, a bad glob, no text long enough).
    #[error("corpus: {0}")]
    Corpus(String),

    /// A labelled-data file (CSV or JSON lines) with a missing column, an empty label or text, or
    /// a malformed line.
    #[error("{}", data_message(path, *line, reason))]
    Data {
        /// The file.
        path: PathBuf,
        /// The line at fault (1-based), when one is.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// Options that cannot work together or out of range.
    #[error("invalid training options: {0}")]
    Options(String),

    /// A checkpoint directory that is incomplete, corrupt or from an incompatible run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory, or the file in it that is at fault.
        path: PathBuf,
        /// What is wrong with it (e.g. `optimizer.safetensors is missing`).
        reason: String,
    },

    /// A line of `metrics.jsonl` that is not a record.
    #[error("{} line {line}: {reason}", path.display())]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// The line at fault (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },

    /// The gradients stopped being finite: training diverged.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// Drawing the curves failed.
    #[error("plot: {0}")]
    Plot(String),
}

fn data_message(path: &std::path::Path, line: Option<u64>, reason: &str) -> String {
    match line {
        Some(line) => format!("{} line {line}: {reason}", path.display()),
        None => format!("{}: {reason}", path.display()),
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(perceiver::Error::from(e))
    }
}

/// The training crate's result type: [`Error`] unless another error type is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
