//! The training run's own settings (not the model's: that is `perceiver::PerceiverConfig`):
//! everything that decides a run, saved in every checkpoint so a run resumes exactly.

use perceiver::{PerceiverConfig, Precision};
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
    /// [`Task::Classify`] from a classifier: give it the data's labels, with a fresh final
    /// layer (the rest of the model kept), instead of requiring the data's labels to be its own.
    #[serde(default)]
    pub new_labels: bool,
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
    /// (0, which `--keep-checkpoints` refuses, counts as 1: the newest is always kept).
    pub keep_checkpoints: usize,
    /// Windows in the shuffle buffer.
    pub shuffle_windows: usize,
    /// Number type of the dense layers' and attention's products in training steps:
    /// [`Precision::Bf16`] is mixed precision (operands rounded to bf16, sums, gradients, the
    /// optimizer's weights and every other op f32), for CPUs with bf16 products (AMX, AVX-512
    /// BF16). Evaluation runs in f32 either way.
    #[serde(default)]
    pub precision: Precision,
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
/// The most training windows a run may draw (`--steps × --batch-size × --grad-accum`): a resume
/// replays every window drawn so far to find its place in the shuffled stream, so this bounds the
/// cost of a resume (and of a training.json edited by hand). DeepMind's pretraining drew 2.6 × 10⁸.
pub const MAX_WINDOWS: u64 = 1 << 32;

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
        let windows = self
            .steps
            .saturating_mul(self.batch_size as u64 * self.grad_accum as u64);
        if windows > MAX_WINDOWS {
            return fail(format!(
                "--steps × --batch-size × --grad-accum is {windows} windows, at most {MAX_WINDOWS} \
                 (a resume replays them to find its place in the data)"
            ));
        }
        self.optimizer_and_schedule()?;
        if self.clip_norm.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return fail("--clip-norm must be positive and finite".into());
        }
        self.masking.validate()
    }

    /// AdamW's and the schedule's values: each outside its range trains to NaN, a negative or
    /// rising learning rate, or silently no decay.
    fn optimizer_and_schedule(&self) -> Result<()> {
        let (o, s) = (&self.optimizer, &self.schedule);
        let checks = [
            (
                "--lr",
                s.peak_lr,
                s.peak_lr > 0.0 && s.peak_lr.is_finite(),
                "positive and finite",
            ),
            ("--beta1", o.beta1, (0.0..1.0).contains(&o.beta1), "in [0, 1)"),
            ("--beta2", o.beta2, (0.0..1.0).contains(&o.beta2), "in [0, 1)"),
            (
                "--adam-eps",
                o.eps,
                o.eps > 0.0 && o.eps.is_finite(),
                "positive and finite",
            ),
            (
                "--weight-decay",
                o.weight_decay,
                o.weight_decay >= 0.0 && o.weight_decay.is_finite(),
                "at least 0 and finite",
            ),
            (
                "--min-lr-ratio",
                s.min_lr_ratio,
                (0.0..=1.0).contains(&s.min_lr_ratio),
                "in [0, 1]",
            ),
        ];
        for (flag, value, ok, range) in checks {
            if !ok {
                return Err(Error::Options(format!("{flag} must be {range}, got {value}")));
            }
        }
        // Decoupled decay multiplies the weights by 1 − lr × decay: past 1 it flips their sign.
        if s.peak_lr * o.weight_decay > 1.0 {
            return Err(Error::Options(format!(
                "--lr × --weight-decay is {}: above 1 the decay flips the weights' sign",
                s.peak_lr * o.weight_decay
            )));
        }
        if s.total_steps != self.steps {
            return Err(Error::Options(format!(
                "the schedule spans {} steps, the run {}",
                s.total_steps, self.steps
            )));
        }
        if s.warmup_steps > MAX_STEPS {
            return Err(Error::Options(format!(
                "--warmup-steps is {}, at most {MAX_STEPS}",
                s.warmup_steps
            )));
        }
        Ok(())
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
            precision: perceiver::Precision::F32,
            new_labels: false,
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
        at_bounds.schedule.total_steps = MAX_STEPS;
        let err = at_bounds.validate(&model).unwrap_err().to_string();
        assert!(err.contains("at most 4294967296"), "{err}");
        at_bounds.batch_size = 1;
        at_bounds.grad_accum = 1;
        at_bounds.validate(&model).unwrap();
    }

    #[test]
    fn optimizer_and_schedule_values_out_of_range_are_refused() {
        let model = PerceiverConfig {
            max_position_embeddings: 64,
            ..PerceiverConfig::default()
        };
        type Case = (fn(&mut TrainConfig), &'static str);
        let cases: [Case; 14] = [
            (|o| o.optimizer.beta1 = 1.0, "--beta1 must be in [0, 1), got 1"),
            (|o| o.optimizer.beta1 = -0.1, "--beta1"),
            (|o| o.optimizer.beta2 = 1.0, "--beta2"),
            (|o| o.optimizer.beta2 = f64::NAN, "--beta2"),
            (|o| o.optimizer.eps = -1e-8, "--adam-eps must be positive"),
            (|o| o.optimizer.eps = 0.0, "--adam-eps"),
            (|o| o.optimizer.weight_decay = f64::NAN, "--weight-decay"),
            (|o| o.optimizer.weight_decay = -0.01, "--weight-decay"),
            (
                |o| o.schedule.min_lr_ratio = -5.0,
                "--min-lr-ratio must be in [0, 1]",
            ),
            (|o| o.schedule.min_lr_ratio = 2.0, "--min-lr-ratio"),
            (|o| o.schedule.peak_lr = f64::INFINITY, "--lr"),
            (|o| o.schedule.peak_lr = 0.0, "--lr"),
            (
                |o| o.schedule.total_steps = 11,
                "the schedule spans 11 steps, the run 10",
            ),
            (|o| o.clip_norm = Some(f64::INFINITY), "--clip-norm"),
        ];
        for (change, needle) in cases {
            let mut o = options();
            change(&mut o);
            let err = o.validate(&model).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        let mut edges = options();
        edges.optimizer.beta1 = 0.0;
        edges.optimizer.weight_decay = 0.0;
        edges.schedule.min_lr_ratio = 1.0;
        edges.validate(&model).unwrap();
        edges.schedule.min_lr_ratio = 0.0;
        edges.validate(&model).unwrap();
    }
}
