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
    pub eval_fraction: f64,
    /// Windows evaluated each time (the first ones of the held-out text).
    pub eval_windows: usize,
    /// Window length in bytes (at most the model's `max_position_embeddings`).
    pub seq_len: usize,
    pub batch_size: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    /// Total optimizer updates.
    pub steps: u64,
    pub masking: Masking,
    pub optimizer: AdamWConfig,
    pub schedule: Schedule,
    /// Clip gradients to this global norm.
    pub clip_norm: Option<f64>,
    pub seed: u64,
    pub save_every: u64,
    pub eval_every: u64,
    pub log_every: u64,
    pub keep_checkpoints: usize,
    /// Windows in the shuffle buffer.
    pub shuffle_windows: usize,
}

impl TrainConfig {
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
