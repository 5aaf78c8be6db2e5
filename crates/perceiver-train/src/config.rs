//! The training run's own settings (not the model's: that is `perceiver::PerceiverConfig`):
//! everything that decides a run, saved in every checkpoint so a run resumes exactly.

use perceiver::PerceiverConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init::InitScheme;
use crate::masking::Masking;
use crate::optim::{AdamWConfig, Schedule};

/// What a run trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// A byte masked language model on text files (`mlm`).
    #[default]
    #[serde(rename = "mlm")]
    MaskedLm,
    /// A sequence classifier on labelled texts (`classify`): CSV or JSON lines with `text` and
    /// `label` ([`crate::labelled`]).
    #[serde(rename = "classify")]
    Classify,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mlm" => Ok(Self::MaskedLm),
            "classify" => Ok(Self::Classify),
            _ => Err(format!("unknown task {s:?} (mlm, classify)")),
        }
    }
}

/// Everything that decides a run, saved in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// What is trained (a masked LM unless the checkpoint says otherwise).
    #[serde(default)]
    pub task: Task,
    /// Where the model came from (`preset:small`, `config:FILE`, `pretrained:ID`), for the record.
    pub model: String,
    /// Initialisation of a from-scratch run.
    #[serde(default)]
    pub init: InitScheme,
    /// Training text: files, directories, globs (for [`Task::Classify`]: labelled CSV or JSON
    /// lines files).
    pub corpus: Vec<String>,
    /// Separate evaluation text; when empty, `eval_fraction` of the corpus is held out.
    pub eval_corpus: Vec<String>,
    /// Chance of each 64 KiB block of the corpus being held out for evaluation, in [0, 1)
    /// (0: none); unused when `eval_corpus` is given. For [`Task::Classify`]: the fraction of
    /// each label's texts held out.
    pub eval_fraction: f64,
    /// Windows evaluated each time (the first ones of the held-out text); a classifier is
    /// evaluated on every held-out text.
    pub eval_windows: usize,
    /// Window length in bytes (at most the model's `max_position_embeddings`); for
    /// [`Task::Classify`], the most ids of a text, `[CLS]` and `[SEP]` included (longer texts
    /// are cut).
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

/// The most windows in one micro-batch (`--batch-size`): a step's memory grows with it (the
/// activations of every window are kept for the backward pass). DeepMind pretrained the
/// language model on batches of 512 windows; larger effective batches come from
/// [`MAX_GRAD_ACCUM`].
pub const MAX_BATCH_SIZE: usize = 4096;
/// The most micro-batches per update (`--grad-accum`): each is a full forward and backward
/// pass, so one update costs this many times a micro-batch.
pub const MAX_GRAD_ACCUM: usize = 4096;
/// The most optimizer updates (`--steps`): even at a millisecond a step, 10⁹ steps take eleven
/// days; beyond, a count is a typo, not a plan.
pub const MAX_STEPS: u64 = 1_000_000_000;

impl TrainConfig {
    /// Checks the options against each other and the model, and every count against its bound
    /// ([`MAX_BATCH_SIZE`], [`MAX_GRAD_ACCUM`], [`MAX_STEPS`], the model's positions), so that
    /// options read from a checkpoint's training.json are held to the flags' limits.
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
        if self.task == Task::Classify && self.seq_len < 3 {
            return fail(format!(
                "--seq-len {} leaves no room for a byte between [CLS] and [SEP]: at least 3",
                self.seq_len
            ));
        }
        if self.batch_size == 0 || self.grad_accum == 0 || self.steps == 0 {
            return fail("batch size, gradient accumulation and steps must be positive".into());
        }
        for (flag, value, max) in [
            ("--batch-size", self.batch_size as u64, MAX_BATCH_SIZE as u64),
            ("--grad-accum", self.grad_accum as u64, MAX_GRAD_ACCUM as u64),
            ("--steps", self.steps, MAX_STEPS),
        ] {
            if value > max {
                return fail(format!("{flag} is {value}, at most {max}"));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamWConfig, Decay, Schedule};

    fn options() -> TrainConfig {
        TrainConfig {
            task: Task::MaskedLm,
            model: "test".into(),
            init: InitScheme::default(),
            corpus: vec!["corpus".into()],
            eval_corpus: Vec::new(),
            eval_fraction: 0.0,
            eval_windows: 1,
            seq_len: 64,
            batch_size: 2,
            grad_accum: 1,
            steps: 10,
            masking: Masking::default(),
            optimizer: AdamWConfig::default(),
            schedule: Schedule {
                peak_lr: 1e-3,
                warmup_steps: 0,
                total_steps: 10,
                decay: Decay::Cosine,
                min_lr_ratio: 0.1,
            },
            clip_norm: None,
            seed: 0,
            save_every: 5,
            eval_every: 5,
            log_every: 1,
            keep_checkpoints: 1,
            shuffle_windows: 16,
        }
    }

    #[test]
    fn counts_beyond_their_bounds_are_refused() {
        let model = PerceiverConfig {
            max_position_embeddings: 64,
            ..PerceiverConfig::default()
        };
        options().validate(&model).unwrap();
        /// A change to valid options, and part of the error it must cause.
        type Case = (fn(&mut TrainConfig), &'static str);
        let cases: [Case; 5] = [
            (
                |o| o.batch_size = MAX_BATCH_SIZE + 1,
                "--batch-size is 4097, at most 4096",
            ),
            (
                |o| o.grad_accum = MAX_GRAD_ACCUM + 1,
                "--grad-accum is 4097, at most 4096",
            ),
            (
                |o| o.steps = MAX_STEPS + 1,
                "--steps is 1000000001, at most 1000000000",
            ),
            (|o| o.seq_len = 65, "--seq-len 65 must be in 1..=64"),
            (|o| o.batch_size = 0, "must be positive"),
        ];
        for (change, needle) in cases {
            let mut o = options();
            change(&mut o);
            let err = o.validate(&model).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        let mut at_bounds = options();
        at_bounds.batch_size = MAX_BATCH_SIZE;
        at_bounds.grad_accum = MAX_GRAD_ACCUM;
        at_bounds.steps = MAX_STEPS;
        at_bounds.validate(&model).unwrap();
    }
}
