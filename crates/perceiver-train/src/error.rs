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

    /// Another process is training in the run directory (it holds the directory's lock file).
    #[error(
        "run directory {} is in use by another training process (it holds {})",
        dir.display(),
        dir.join(crate::trainer::LOCK_FILE).display()
    )]
    RunInUse {
        /// The run directory.
        dir: PathBuf,
    },

    /// An error that stopped a run, with what became of the steps since its last checkpoint:
    /// saved when the state was sound (`checkpoint`), or why not.
    #[error("{error}; {what_became}")]
    Stopped {
        /// What went wrong.
        error: Box<Error>,
        /// The checkpoint written on the way out, if one could be.
        checkpoint: Option<PathBuf>,
        /// What became of the run, for the message (where it is saved and how to go on).
        what_became: String,
    },

    /// The gradients stopped being finite: training diverged.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// Drawing the curves failed.
    #[error("plot: {0}")]
    Plot(String),

    /// A failure inside the tensor library (candle) that the differentiable model runs on.
    #[error("tensor error: {}", candle_message(.0))]
    Tensor(#[from] candle_core::Error),
}

/// The message of a candle error without the layers candle wraps around it (file path,
/// context, and a multi-line backtrace when `RUST_BACKTRACE` is set): one line a user can read.
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } | candle_core::Error::WithBacktrace { inner, .. } => {
            candle_message(inner)
        }
        candle_core::Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other.to_string().replace('\n', "; "),
    }
}

fn data_message(path: &std::path::Path, line: Option<u64>, reason: &str) -> String {
    match line {
        Some(line) => format!("{} line {line}: {reason}", path.display()),
        None => format!("{}: {reason}", path.display()),
    }
}

/// The training crate's result type: [`Error`] unless another error type is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
