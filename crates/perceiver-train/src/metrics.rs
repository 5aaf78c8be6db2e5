//! `metrics.jsonl`: one JSON object per line, `"kind": "train"` (averaged over the logging
//! interval) or `"kind": "eval"`. A classifier's run writes the same records, its loss and
//! accuracy per text instead of per masked byte (and no bits per byte).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_at, Error, Result};
use crate::trainer::Evaluation;

/// One line of the metrics file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Training, over the updates since the previous train record.
    Train {
        /// The interval's last update.
        step: u64,
        /// Mean masked-byte cross-entropy over the interval, in nats.
        loss: f64,
        /// Mean top-1 accuracy on the masked bytes over the interval (0 to 1).
        accuracy: f64,
        /// The learning rate of the interval's last update.
        lr: f64,
        /// Mean global gradient norm over the interval, before clipping.
        grad_norm: f64,
        /// Real (unpadded) bytes trained on per second of update time over the interval.
        bytes_per_second: f64,
    },
    /// An evaluation on the held-out windows (or texts).
    Eval {
        /// The update after which it ran.
        step: u64,
        /// Mean cross-entropy over the masked bytes (or texts), in nats.
        loss: f64,
        /// Top-1 accuracy on the masked bytes (or texts) (0 to 1).
        accuracy: f64,
        /// `loss / ln 2`: bits per masked byte (a masked LM's only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bits_per_byte: Option<f64>,
    },
}

impl Record {
    /// The mean of consecutive steps (the last step names the record).
    pub fn train(steps: &[StepMetrics]) -> Record {
        let n = steps.len().max(1) as f64;
        let mean = |f: fn(&StepMetrics) -> f64| steps.iter().map(f).sum::<f64>() / n;
        let seconds: f64 = steps.iter().map(|s| s.seconds).sum();
        let bytes: usize = steps.iter().map(|s| s.bytes).sum();
        Record::Train {
            step: steps.last().map(|s| s.step).unwrap_or(0),
            loss: mean(|s| s.loss),
            accuracy: mean(|s| s.accuracy),
            lr: steps.last().map(|s| s.lr).unwrap_or(0.0),
            grad_norm: mean(|s| s.grad_norm),
            bytes_per_second: bytes as f64 / seconds.max(1e-9),
        }
    }

    /// The record of an evaluation run after update `step`.
    pub fn eval(step: u64, result: &Evaluation) -> Record {
        Record::Eval {
            step,
            loss: result.loss(),
            accuracy: result.accuracy(),
            bits_per_byte: match result {
                Evaluation::MaskedLm(r) => Some(r.bits_per_byte),
                Evaluation::Classify(_) => None,
            },
        }
    }

    /// The update the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Record::Train { step, .. } | Record::Eval { step, .. } => *step,
        }
    }
}

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// A new, empty log.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::write(path, "").map_err(io_at(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Continues a log at `step`: records written after that step (by the interrupted run, past
    /// its last checkpoint) are dropped so the curves show each step once.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        let kept: Vec<Record> = read(path)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.step() <= step)
            .collect();
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record).expect("record serialises"));
            text.push('\n');
        }
        let partial = path.with_extension("jsonl.partial");
        std::fs::write(&partial, text).map_err(io_at(&partial))?;
        std::fs::rename(&partial, path).map_err(io_at(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Appends `record` as one JSON line.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        append_line(
            &self.path,
            &serde_json::to_string(record).expect("record serialises"),
        )
    }
}

/// Reads a metrics file; a torn last line (a kill mid-write) is ignored.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(io_at(path))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => return Err(Error::Plot(format!("{} line {}: {e}", path.display(), i + 1))),
        }
    }
    Ok(records)
}

/// The metrics file's name in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// What one optimizer update did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Updates done, this one included (1 after the first).
    pub step: u64,
    /// Masked-byte (or per-text) cross-entropy in nats, the mean over the update's micro-batches.
    pub loss: f64,
    /// Fraction of the update's masked bytes whose top-1 prediction is the original byte (of
    /// its texts whose top label is theirs, for a classifier).
    pub accuracy: f64,
    /// The learning rate the update used.
    pub lr: f64,
    /// Global L2 norm of the accumulated gradients, before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) bytes in the update's windows.
    pub bytes: usize,
    /// Wall-clock time of the update in seconds (reading, masking, forward, backward, AdamW).
    pub seconds: f64,
}

/// Appends a line to a file (used by the metrics log).
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_at(path))?;
    writeln!(file, "{line}").map_err(io_at(path))
}
