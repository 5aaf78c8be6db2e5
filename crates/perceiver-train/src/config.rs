//! The training run's own settings (not the model's: that is `perceiver::PerceiverConfig`):
//! everything that decides a run, saved in every checkpoint so a run resumes exactly.

use perceiver::PerceiverConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init::InitScheme;
use crate::masking::Masking;
use crate::optim::{AdamWConfig, Schedule};

/// Everything that decides a run, saved in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Where the model came from (`preset:small`, `config:FILE`, `pretrained:ID`), for the record.
    pub model: String,
    /// Initialisation of a from-scratch run.
    #[serde(default)]
    pub init: InitScheme,
    /// Training text: files, directories, globs.
    pub corpus: Vec<String>,
    /// Separate evaluation text; when empty, `eval_fraction` of the corpus is held out.
    pub eval_corpus: Vec<String>,
    /// Chance of each 64 KiB block of the corpus being held out for evaluation, in [0, 1)
    /// (0: none); unused when `eval_corpus` is given.
    pub eval_fraction: f64,
    /// Windows evaluated each time (the first ones of the held-out text).
    pub eval_windows: usize,
    /// Window length in bytes (at most the model's `max_position_embeddings`).
    pub seq_len: usize,
    /// Windows per micro-batch (an update sees `batch_size × grad_accum`); also the batch size
    /// of evaluation.
    pub batch_size: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    /// Total optimizer updates.
    pub steps: u64,
    /// Which bytes are masked and what replaces them.
    pub masking: Masking,
    /// AdamW's betas, epsilon and weight decay.
    pub optimizer: AdamWConfig,
    /// The learning rate of each update: warm-up, peak and decay.
    pub schedule: Schedule,
    /// Clip gradients to this global norm.
    pub clip_norm: Option<f64>,
    /// Seeds everything random: initialisation, the held-out split, shuffling and masking.
    pub seed: u64,
    /// Write a checkpoint every this many updates (0: only after the last update or when
    /// stopped).
    pub save_every: u64,
    /// Evaluate on the held-out windows every this many updates (0: only after the last).
    pub eval_every: u64,
    /// Append a train record (the mean over the interval) to `metrics.jsonl` every this many
    /// updates (0: one record, after the last update).
    pub log_every: u64,
    /// Newest checkpoints kept in the run directory; older ones are deleted after each save
    /// (0 counts as 1).
    pub keep_checkpoints: usize,
    /// Windows in the shuffle buffer.
    pub shuffle_windows: usize,
}

impl TrainConfig {
    /// Checks the options against each other and against `model` (a corpus given, `seq_len`
    /// within the model's positions, positive sizes, learning rate and clip norm, fractions in
    /// range, valid masking): an [`Error::Options`] naming the first problem.
    pub fn validate(&self, model: &PerceiverConfig) -> Result<()> {
        let fail = |m: String| Err(Error::Options(m));
        if self.corpus.is_empty() {
            return fail("no training corpus".into());
        }
        if self.seq_len == 0 || self.seq_len > model.max_position_embeddings {
            return fail(format!(
                "--seq-len {} must be in 1..={} (the model's max_position_embeddings)",
                self.seq_len, model.max_position_embeddings
            ));
        }
        if self.batch_size == 0 || self.grad_accum == 0 || self.steps == 0 {
            return fail("batch size, gradient accumulation and steps must be positive".into());
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return fail(format!(
                "--eval-fraction must be in [0, 1), got {}",
                self.eval_fraction
            ));
        }
        if !(self.schedule.peak_lr > 0.0 && self.schedule.peak_lr.is_finite()) {
            return fail(format!("--lr must be positive, got {}", self.schedule.peak_lr));
        }
        if self.clip_norm.is_some_and(|c| c <= 0.0 || c.is_nan()) {
            return fail("--clip-norm must be positive".into());
        }
        self.masking.validate()
    }
}
