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
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        loss: f64,
        /// Mean top-1 accuracy on the masked bytes over the interval (0 to 1).
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        accuracy: f64,
        /// The learning rate of the interval's last update.
        lr: f64,
        /// Mean global gradient norm over the interval, before clipping.
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        grad_norm: f64,
        /// Real (unpadded) bytes trained on per second of update time over the interval (0
        /// for images).
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        bytes_per_second: f64,
        /// Examples (windows, texts or images) trained on per second of update time over the
        /// interval (0 in records written before it was).
        #[serde(default, deserialize_with = "nullable_f64::deserialize")]
        examples_per_second: f64,
        /// Written when a run stopped before the interval's end, so its curves reach the last
        /// step; a resume drops it and writes the whole interval's record in its place.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    },
    /// An evaluation on the held-out windows (or texts).
    Eval {
        /// The update after which it ran.
        step: u64,
        /// Mean cross-entropy over the masked bytes (or texts), in nats.
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        loss: f64,
        /// Top-1 accuracy on the masked bytes (or texts) (0 to 1).
        #[serde(deserialize_with = "nullable_f64::deserialize")]
        accuracy: f64,
        /// `loss / ln 2`: bits per masked byte (a masked LM's only).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "nullable_bits"
        )]
        bits_per_byte: Option<f64>,
    },
}

impl Record {
    /// The mean of consecutive steps (the last step names the record).
    pub fn train(steps: &[StepMetrics]) -> Record {
        let mut window = Window::default();
        steps.iter().for_each(|s| window.push(s));
        window.record()
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

/// The updates since the last train record, summed as they come: what the next record averages.
/// A checkpoint keeps it (in `training.json`), so a run stopped between two records and resumed
/// writes the record an uninterrupted run would. The sums are stored as their bits: a decimal
/// round trip could change the last bit, and a NaN loss has no JSON number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Updates summed (0: none since the last record).
    pub steps: u64,
    /// The newest update's number.
    pub last_step: u64,
    /// Σ loss.
    #[serde(with = "f64_bits")]
    pub loss: f64,
    /// Σ accuracy.
    #[serde(with = "f64_bits")]
    pub accuracy: f64,
    /// Σ gradient norm.
    #[serde(with = "f64_bits")]
    pub grad_norm: f64,
    /// The newest update's learning rate.
    #[serde(with = "f64_bits")]
    pub lr: f64,
    /// Σ real bytes.
    pub bytes: u64,
    /// Σ examples (0 in checkpoints written before it was counted).
    #[serde(default)]
    pub examples: u64,
    /// Σ update seconds.
    #[serde(with = "f64_bits")]
    pub seconds: f64,
}

impl Window {
    /// Adds one update.
    pub fn push(&mut self, m: &StepMetrics) {
        self.steps += 1;
        self.last_step = m.step;
        self.loss += m.loss;
        self.accuracy += m.accuracy;
        self.grad_norm += m.grad_norm;
        self.lr = m.lr;
        self.bytes += m.bytes as u64;
        self.examples += m.examples as u64;
        self.seconds += m.seconds;
    }

    /// Whether no update is pending.
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }

    /// The train record of the window: the means over its updates.
    pub fn record(&self) -> Record {
        let n = self.steps.max(1) as f64;
        Record::Train {
            step: self.last_step,
            loss: self.loss / n,
            accuracy: self.accuracy / n,
            lr: self.lr,
            grad_norm: self.grad_norm / n,
            bytes_per_second: self.bytes as f64 / self.seconds.max(1e-9),
            examples_per_second: self.examples as f64 / self.seconds.max(1e-9),
            partial: false,
        }
    }
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// A record's number as written: a NaN or infinite loss has no JSON number and is written as
/// `null`, read back as NaN.
mod nullable_f64 {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
    }
}

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
}

/// Whether `path` is a file holding nothing.
pub(crate) fn is_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

impl MetricsLog {
    /// A new, empty log; an existing file is an error (it is another run's history) unless it
    /// is empty (a start that failed or diverged before its first record left it).
    pub fn create(path: &Path) -> Result<Self> {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path);
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_empty_file(path) => {}
            Err(e) => return Err(io_at(path)(e)),
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Continues a log at `step`: records written after that step (by the interrupted run, past
    /// its last checkpoint) are dropped so the curves show each step once. A missing file starts
    /// empty (a checkpoint copied to a new directory); an unreadable one is an error, never wiped.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        let records = match read(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other?,
        };
        let kept: Vec<Record> = records
            .into_iter()
            .filter(|r| r.step() <= step && !matches!(r, Record::Train { partial: true, .. }))
            .collect();
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record).expect("record serialises"));
            text.push('\n');
        }
        crate::atomic::write(path, text.as_bytes())?;
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
            Err(e) => {
                return Err(Error::Metrics {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(records)
}

fn nullable_bits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    // Present but null: a non-finite value written as null.
    Option::<f64>::deserialize(d).map(|v| Some(v.unwrap_or(f64::NAN)))
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
    /// Real (unpadded) bytes in the update's windows (or texts; 0 for images).
    pub bytes: usize,
    /// Windows, texts or images in the update (its batches' rows).
    pub examples: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            loss,
            accuracy: 0.25,
            lr: 1e-3,
            grad_norm: 0.1 * step as f64,
            bytes: 100,
            examples: 4,
            seconds: 0.01,
        }
    }

    #[test]
    fn a_nan_loss_round_trips_and_a_bad_line_is_refused_not_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let mut log = MetricsLog::create(&path).unwrap();
        log.append(&Record::train(&[step(1, f64::NAN)])).unwrap();
        log.append(&Record::train(&[step(2, 1.5)])).unwrap();
        MetricsLog::resume(&path, 2).unwrap();
        let records = read(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert!(matches!(records[0], Record::Train { loss, .. } if loss.is_nan()));
        // Never truncated by a fresh log.
        assert!(MetricsLog::create(&path).is_err());
        assert_eq!(read(&path).unwrap().len(), 2);

        let text = std::fs::read_to_string(&path).unwrap();
        let broken = format!("{{\"kind\": \"train\"}}\n{text}");
        std::fs::write(&path, &broken).unwrap();
        let err = MetricsLog::resume(&path, 2).err().unwrap().to_string();
        assert!(err.contains("metrics.jsonl line 1"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
    }

    #[test]
    fn a_window_survives_json_bit_for_bit() {
        let mut window = Window::default();
        for (i, loss) in [0.1 + 0.2, 1.0 / 3.0, f64::NAN].into_iter().enumerate() {
            window.push(&step(i as u64 + 1, loss));
        }
        let back: Window = serde_json::from_str(&serde_json::to_string(&window).unwrap()).unwrap();
        assert_eq!(back.loss.to_bits(), window.loss.to_bits());
        assert_eq!((back.grad_norm, back.seconds), (window.grad_norm, window.seconds));
        assert_eq!(back.steps, 3);
    }
}
