//! The training loop: a batch → loss → gradients → AdamW, with evaluation, metrics and
//! checkpoints on schedule, and an exact resume. One loop for both tasks: the masked LM (windows
//! of text, masked) and the classifiers (labelled texts or images); only drawing a batch, its
//! loss and the evaluation differ ([`Task`]).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::{PerceiverClassifier, PerceiverForMaskedLM};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceiver::image::ImageProcessor;
use perceiver::{Architecture, PerceiverConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, Progress, TrainingFile};
use crate::classification::{
    classification_loss, classifier_config, classifier_start, config_labels, evaluate_classifier,
    image_processor_for, write_eval, ClassBatch, ClassifierData, ClassifierEval, Example, ExampleStream,
};
use crate::config::{Task, TrainConfig, MAX_STEPS};
use crate::corpus::{self, splitmix64, Corpus, Part, Split, TrainStream};
use crate::error::{io_at, Error, Result};
use crate::gradients::Gradients;
use crate::init::initialize;
use crate::masking::{MaskedExample, Masking};
use crate::metrics::{MetricsLog, Record, StepMetrics, Window, METRICS_FILE};
use crate::model::ops::WeightPacks;
use crate::objective::{evaluate, masked_lm_loss, BatchLoss, EvalResult, MaskedBatch};
use crate::optim::{clip_factor, global_norm, AdamW};

/// How the weights start.
pub enum ModelInit {
    /// From scratch with DeepMind's initialisation.
    Scratch(PerceiverConfig),
    /// From existing weights (fine-tuning), by transformers name.
    Pretrained {
        /// The architecture the tensors belong to.
        config: PerceiverConfig,
        /// Every tensor of the model by transformers name, with its shape; none may be missing
        /// or extra. A classifier run may start from a masked LM's: its body is kept and a
        /// fresh decoder drawn ([`crate::classification::classifier_start`]).
        tensors: BTreeMap<String, Tensor>,
        /// An image classifier's image processor (its `preprocessor_config.json`); `None`:
        /// the one inference uses without that file
        /// ([`perceiver::tasks::classify::default_image_processor`]).
        image_processor: Option<ImageProcessor>,
    },
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// Masked-byte metrics of a masked LM on held-out windows.
    MaskedLm(EvalResult),
    /// A classifier on the held-out texts or images: accuracy, loss, confusion table.
    Classify(ClassifierEval),
}

impl Evaluation {
    /// Mean cross-entropy, in nats (per masked byte, or per text).
    pub fn loss(&self) -> f64 {
        match self {
            Self::MaskedLm(r) => r.loss,
            Self::Classify(r) => r.loss,
        }
    }

    /// Top-1 accuracy (of masked bytes, or of texts).
    pub fn accuracy(&self) -> f64 {
        match self {
            Self::MaskedLm(r) => r.accuracy,
            Self::Classify(r) => r.accuracy,
        }
    }
}

/// The model a run trains, with the data it draws from.
// One per run, held in place by the trainer: boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum TaskState {
    MaskedLm {
        model: PerceiverForMaskedLM,
        stream: TrainStream,
        eval_set: Vec<MaskedExample>,
    },
    Classify {
        model: PerceiverClassifier,
        data: ClassifierData,
        stream: ExampleStream,
    },
}

impl TaskState {
    fn consumed(&self) -> u64 {
        match self {
            Self::MaskedLm { stream, .. } => stream.consumed(),
            Self::Classify { stream, .. } => stream.consumed(),
        }
    }
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    /// An update finished, with what it did.
    Step(&'a StepMetrics),
    /// An evaluation on the held-out windows (or texts) finished.
    Eval {
        /// The update after which it ran.
        step: u64,
        /// What it measured.
        result: &'a Evaluation,
        /// Whether it is the run's last (after the final update).
        last: bool,
    },
    /// A checkpoint was written to this directory.
    Saved(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step done; the newest checkpoint (the last step's).
    Finished(PathBuf),
    /// Stopped early (Ctrl-C); the checkpoint written on the way out.
    Interrupted(PathBuf),
}

/// A training run.
pub struct Trainer {
    options: TrainConfig,
    run_dir: PathBuf,
    config: PerceiverConfig,
    varmap: VarMap,
    task: TaskState,
    optimizer: AdamW,
    /// The dense layers' weights packed for the kernel, kept between steps.
    weight_packs: WeightPacks,
    progress: Progress,
    metrics: MetricsLog,
    /// The updates since the last train record (saved with each checkpoint).
    pending: Window,
    /// The step of the newest checkpoint (0: none yet): the steps after it are what an error
    /// would lose.
    saved_step: Cell<u64>,
    /// An optimizer update is being applied: the weights may be part old, part new.
    updating: bool,
    /// The run directory's lock, held while the trainer lives (`None` where the file system has
    /// no locks).
    _lock: Option<File>,
}

/// The file in a run directory that a training process holds locked while it runs: a second
/// process on the same directory would interleave its metrics and delete the other's partial
/// checkpoints.
pub const LOCK_FILE: &str = ".lock";

/// Locks `run_dir` for this process, or says that another holds it. Where the lock file cannot be
/// opened or the file system has no locks, the run goes on unlocked, as before locks.
fn lock_run_dir(run_dir: &Path) -> Result<Option<File>> {
    lock_run_dir_opening(run_dir, |path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .or_else(|_| File::open(path))
    })
}

/// [`lock_run_dir`] with the lock file opened by `open` (the tests' way to open a removed one).
fn lock_run_dir_opening(
    run_dir: &Path,
    mut open: impl FnMut(&Path) -> std::io::Result<File>,
) -> Result<Option<File>> {
    let path = run_dir.join(LOCK_FILE);
    // A start that fails removes the lock file it made. A process that opened the file before
    // that removal may lock it afterwards: it then holds a lock on a file no longer in the
    // directory, while a third process makes a new one and locks that. So the lock counts only
    // while the path still names the locked file; otherwise it is taken again.
    for _ in 0..LOCK_ATTEMPTS {
        let Ok(file) = open(&path) else {
            return Ok(None);
        };
        match file.try_lock() {
            Ok(()) if still_named(&file, &path) => return Ok(Some(file)),
            Ok(()) => continue,
            // Held by another start that opened the same removed file: the directory's own
            // lock file may be free.
            Err(std::fs::TryLockError::WouldBlock) if !still_named(&file, &path) => continue,
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::RunInUse {
                    dir: run_dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(_)) => return Ok(None),
        }
    }
    // The lock file was replaced under every attempt: other starts keep failing there.
    Err(Error::RunInUse {
        dir: run_dir.to_path_buf(),
    })
}

/// Attempts of [`lock_run_dir`] at a lock file that is replaced while it is locked.
const LOCK_ATTEMPTS: usize = 8;

/// Whether `path` still names the open `file` (not removed or replaced since it was opened).
#[cfg(unix)]
fn still_named(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Whether `path` still names the open `file`: elsewhere std offers no file identity to compare,
/// and the lock counts as taken.
#[cfg(not(unix))]
fn still_named(_file: &File, _path: &Path) -> bool {
    true
}

/// An error unless a model of `architecture` can be trained here for `task`: a byte masked LM,
/// or a classifier of texts or images with [`Task::Classify`] (flow and video are not trained).
pub fn check_trainable(architecture: Architecture, task: Task) -> Result<()> {
    let fail = |why: &str| {
        Err(Error::Options(format!(
            "the model is a {}: {why}",
            architecture.name()
        )))
    };
    match (architecture.is_classifier(), task) {
        (true, Task::MaskedLm) => fail("train it with --task classify"),
        (true, Task::Classify) => Ok(()),
        _ if architecture == Architecture::MaskedLm => Ok(()),
        _ => fail("this tool trains byte masked LMs and classifiers of texts and images only"),
    }
}

/// Files a run writes into its directory besides checkpoints: a directory holding any of them
/// holds another run, which a fresh start would overwrite.
const RUN_FILES: [&str; 3] = [
    METRICS_FILE,
    crate::classification::EVAL_FILE,
    crate::plot::CURVES_FILE,
];

/// The RNG that masks window number `index` of the stream: a pure function of the seed and the
/// index, so a resumed run masks exactly as the uninterrupted one.
fn window_rng(seed: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(index.wrapping_add(1))))
}

const EVAL_SEED_SALT: u64 = 0xe7a1_0000_0000_0001;

/// Masks evaluation windows the same way every time for a given seed: `masking` without BERT's
/// replacement (accuracy is measured on `[MASK]` inputs).
pub fn mask_for_eval(windows: &[Vec<u8>], masking: &Masking, seed: u64) -> Vec<MaskedExample> {
    let masking = Masking {
        bert_replacement: false,
        ..*masking
    };
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| masking.apply(w, &mut window_rng(seed ^ EVAL_SEED_SALT, i as u64)))
        .collect()
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must hold no checkpoint, metrics, evaluation or
    /// curves yet). A directory it creates is removed again if the start fails. The corpus is
    /// saved by absolute path, so that a resume from anywhere reads the same files.
    pub fn start(options: TrainConfig, run_dir: &Path, init: ModelInit) -> Result<Self> {
        let created = !run_dir.exists();
        std::fs::create_dir_all(run_dir).map_err(io_at(run_dir))?;
        let lock_path = run_dir.join(LOCK_FILE);
        let had_lock_file = lock_path.exists();
        let started = lock_run_dir(run_dir).and_then(|lock| {
            // The trainer gets a handle of its own on the locked file (the same lock), so that
            // this one still holds it while a failed start removes the file it made: removed
            // after the lock's release, another start could lock it first and run beside a third
            // that makes a new one. Without a second handle the trainer takes this one.
            let (given, kept) = match lock.as_ref().map(File::try_clone) {
                Some(Ok(handle)) => (Some(handle), lock),
                _ => (lock, None),
            };
            let started = Self::start_in(options, run_dir, init, given);
            if started.is_err() && !had_lock_file {
                let _ = std::fs::remove_file(&lock_path);
            }
            drop(kept);
            started
        });
        match &started {
            // Another process's directory: nothing here is this start's.
            Err(Error::RunInUse { .. }) | Ok(_) => {}
            Err(_) => {
                // Only what this start wrote (the lock file is gone already), and the directory
                // only if then empty: nothing of the user's is ever deleted.
                if created {
                    let metrics = run_dir.join(METRICS_FILE);
                    if crate::metrics::is_empty_file(&metrics) {
                        let _ = std::fs::remove_file(metrics);
                    }
                    let _ = std::fs::remove_dir(run_dir);
                }
            }
        }
        started
    }

    fn start_in(
        mut options: TrainConfig,
        run_dir: &Path,
        init: ModelInit,
        lock: Option<File>,
    ) -> Result<Self> {
        if !checkpoint::list(run_dir)?.is_empty() {
            return Err(Error::Options(format!(
                "{} already holds checkpoints: resume it with --resume, or choose another --out",
                run_dir.display()
            )));
        }
        // An empty metrics file is no run's history: a start that failed or diverged at its
        // first step leaves one, and starting again must work.
        let holds = |file: &str| {
            let path = run_dir.join(file);
            path.exists() && !(file == METRICS_FILE && crate::metrics::is_empty_file(&path))
        };
        if let Some(file) = RUN_FILES.into_iter().find(|file| holds(file)) {
            // No checkpoint here (checked above): a metrics.jsonl alone is a run killed before
            // its first save, which nothing can resume; the way on is to start it again.
            let why = match file {
                METRICS_FILE => format!(
                    " but no checkpoint (a run stopped before its first save, which cannot be \
                     resumed): to start again here, remove {}; or choose another --out",
                    run_dir.join(file).display()
                ),
                _ => ": choose another --out (or move it away)".to_string(),
            };
            return Err(Error::Options(format!(
                "{} already holds a run's {file}{why}",
                run_dir.display()
            )));
        }
        options.corpus = corpus::absolute_specs(&options.corpus)?;
        options.eval_corpus = corpus::absolute_specs(&options.eval_corpus)?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let (config, weights, image_processor) = match init {
            ModelInit::Scratch(config) => (config, None, None),
            ModelInit::Pretrained {
                config,
                tensors,
                image_processor,
            } => (config, Some(tensors), image_processor),
        };
        config.validate()?;
        options.validate(&config)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let architecture = Architecture::of(&config)?;
        check_trainable(architecture, options.task)?;
        let (config, task) = match options.task {
            Task::MaskedLm => {
                let model = PerceiverForMaskedLM::new(&config, vb)?;
                match weights {
                    None => initialize(&varmap, options.init, &config, options.seed)?,
                    Some(tensors) => set_weights(&varmap, &tensors.into_iter().collect())?,
                }
                let task = masked_lm_task(&options, model)?;
                (config, task)
            }
            Task::Classify => {
                // A classifier keeps its labels unless told to take the data's (a fresh final
                // layer); a masked LM takes the data's (a fresh decoder).
                if options.new_labels && !architecture.is_classifier() {
                    return Err(Error::Options(format!(
                        "--new-labels gives a classifier new labels: a classifier trained from a {} \
                         takes the data's labels anyway",
                        architecture.name()
                    )));
                }
                let keeps_labels = architecture.is_classifier() && !options.new_labels;
                let known = keeps_labels.then(|| config_labels(&config)).transpose()?;
                let images = image_processor_for(&config, image_processor)?;
                let advice = match keeps_labels {
                    true => {
                        "; to train it on the data's labels instead (a fresh final layer), add --new-labels"
                    }
                    false => "",
                };
                let data = ClassifierData::load(&options, known, images, advice)?;
                let (config, weights) = match weights {
                    Some(tensors) if keeps_labels => (config, Some(tensors)),
                    Some(tensors) => {
                        let (config, tensors) =
                            classifier_start(&config, &tensors, &data.labels, options.seed)?;
                        (config, Some(tensors))
                    }
                    None if keeps_labels => (config, None),
                    None => (classifier_config(&config, &data.labels)?, None),
                };
                let model = PerceiverClassifier::new(&config, vb)?;
                match weights {
                    None => initialize(&varmap, options.init, &config, options.seed)?,
                    Some(tensors) => set_weights(&varmap, &tensors.into_iter().collect())?,
                }
                let stream = ExampleStream::new(data.train.len(), options.seed);
                (config, TaskState::Classify { model, data, stream })
            }
        };
        let metrics = MetricsLog::create(&run_dir.join(METRICS_FILE))?;
        Self::assemble(
            options,
            run_dir,
            config,
            varmap,
            task,
            metrics,
            Progress::default(),
            lock,
        )
    }

    /// Continues the run of a checkpoint (or the newest checkpoint of a run directory), exactly
    /// where it stopped. `steps` may extend the run.
    pub fn resume(path: &Path, steps: Option<u64>) -> Result<Self> {
        // A run directory named as such is locked before anything is read from it, so that a
        // second process is told it is in use whatever state the first has got it to; a
        // directory without a run's metrics is locked only once it turns out to hold checkpoints
        // (a mistaken `--resume ~` leaves no lock file behind).
        let named_run_dir = path.is_dir() && !path.join(checkpoint::TRAINING_FILE).is_file();
        let early_lock = (named_run_dir && path.join(METRICS_FILE).is_file())
            .then(|| lock_run_dir(path))
            .transpose()?;
        let mut dir = checkpoint::resolve(path)?;
        if dir.file_name().is_none() {
            // `.` or `..`: their parent is not the run directory; the real names tell it.
            dir = dir.canonicalize().map_err(io_at(&dir))?;
        }
        // `step-000004` has the parent "", which is no directory to save into.
        let run_dir = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        // A checkpoint named by itself saves its run into the directory that holds it: one that
        // is no run's (a copy made elsewhere) would get step directories, metrics and curves
        // strewn into it. Refused before the lock, which would be a file strewn there too.
        if !named_run_dir && !run_dir.join(METRICS_FILE).is_file() {
            let name = match checkpoint::read_training(&dir) {
                Ok(training) => checkpoint::step_dir_name(training.progress.step),
                Err(_) => "step-NNNNNN".to_string(),
            };
            return Err(Error::Checkpoint {
                path: dir.clone(),
                reason: format!(
                    "not inside a run directory ({} holds no {METRICS_FILE}), and a resume saves \
                     next to the checkpoint: give it a run directory of its own: mkdir NEW && cp -r \
                     {} NEW/{name} && perceiver train --resume NEW",
                    run_dir.display(),
                    dir.display(),
                ),
            });
        }
        // Before anything is read or written: another process may be saving here.
        let lock = match early_lock {
            Some(lock) => lock,
            None => lock_run_dir(&run_dir)?,
        };
        let device = Device::Cpu;
        let saved = checkpoint::load(&dir, &device)?;
        let training_path = dir.join(checkpoint::TRAINING_FILE);
        let bad_file = |reason: String| Error::Checkpoint {
            path: training_path.clone(),
            reason,
        };
        // The file's own options first: a hand-edited training.json is held to the flags' limits.
        saved
            .training
            .options
            .validate(&saved.config)
            .map_err(|e| bad_file(e.to_string()))?;
        let progress = saved.training.progress;
        // `progress.windows` windows are replayed below to reach the stream's position: only as
        // many as the run's own steps drew (at most MAX_WINDOWS, by validate), never a count
        // written into the file by hand.
        let drawn = progress
            .step
            .checked_mul(
                (saved.training.options.batch_size as u64)
                    .saturating_mul(saved.training.options.grad_accum as u64),
            )
            .filter(|_| progress.step <= MAX_STEPS);
        if drawn != Some(progress.windows) {
            return Err(bad_file(format!(
                "progress.windows is {} and progress.step {}: a run of at most {MAX_STEPS} \
                 steps draws {} windows × {} micro-batches a step, no other count",
                progress.windows,
                progress.step,
                saved.training.options.batch_size,
                saved.training.options.grad_accum,
            )));
        }
        if progress.step > saved.training.options.steps {
            return Err(bad_file(format!(
                "progress.step {} is past the run's {} steps",
                progress.step, saved.training.options.steps
            )));
        }
        // Saving here continues the history of the run dir's newest checkpoint; an older one
        // would fork it (and a later --resume of the directory would pick the wrong branch).
        if let Some((newest, newest_dir)) = checkpoint::list(&run_dir)?.pop() {
            if newest_dir.file_name() != dir.file_name() {
                return Err(Error::Checkpoint {
                    path: dir.clone(),
                    reason: format!(
                        "not the newest checkpoint of {} (step {newest} is): to continue from it in \
                         a new run directory (its metrics up to that step kept), copy both there: \
                         mkdir NEW && cp -r {} {} NEW/ && perceiver train --resume NEW",
                        run_dir.display(),
                        dir.display(),
                        run_dir.join(METRICS_FILE).display(),
                    ),
                });
            }
        }
        let mut options = saved.training.options.clone();
        if let Some(steps) = steps {
            if steps < progress.step {
                return Err(Error::Options(format!(
                    "--steps {steps} is below the checkpoint's step {}: a resumed run can only go on",
                    progress.step
                )));
            }
            options.steps = steps;
            options.schedule.total_steps = steps;
            options.validate(&saved.config)?;
        }
        let pending = saved.training.pending;
        let window_fits = if pending.is_empty() {
            true
        } else {
            pending.last_step == progress.step
                && pending.steps <= progress.step
                && (options.log_every == 0 || pending.steps < options.log_every)
        };
        if !window_fits {
            return Err(bad_file(format!(
                "pending holds {} updates up to step {}, which do not end at step {} inside one \
                 --log-every {} interval",
                pending.steps, pending.last_step, progress.step, options.log_every
            )));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let task = match options.task {
            Task::MaskedLm => masked_lm_task(&options, PerceiverForMaskedLM::new(&saved.config, vb)?),
            Task::Classify => {
                let model = PerceiverClassifier::new(&saved.config, vb)?;
                image_processor_for(&saved.config, saved.image_processor.clone())
                    .and_then(|images| {
                        ClassifierData::load(&options, Some(config_labels(&saved.config)?), images, "")
                    })
                    .map(|data| {
                        let stream = ExampleStream::new(data.train.len(), options.seed);
                        TaskState::Classify { model, data, stream }
                    })
            }
        };
        // Older versions saved the corpus as given: relative to where the run was started.
        let relative = options
            .corpus
            .iter()
            .chain(&options.eval_corpus)
            .any(|spec| Path::new(spec).is_relative());
        let task = task.map_err(|e| match e {
            Error::Corpus(what) if relative => Error::Corpus(format!(
                "{what} (the run names its corpus relative to the directory it was started in: \
                 resume it from there)"
            )),
            other => other,
        })?;
        set_weights(&varmap, &saved.weights)?;
        let metrics = MetricsLog::resume(&run_dir.join(METRICS_FILE), progress.step)?;
        let mut trainer = Self::assemble(
            options,
            &run_dir,
            saved.config,
            varmap,
            task,
            metrics,
            progress,
            lock,
        )?;
        trainer.pending = pending;
        trainer.saved_step.set(progress.step);
        trainer.optimizer.load_state(&saved.optimizer, progress.step)?;
        match &mut trainer.task {
            TaskState::MaskedLm { stream, .. } => stream.skip(progress.windows)?,
            TaskState::Classify { stream, .. } => stream.skip(progress.windows),
        }
        Ok(trainer)
    }

    // The parts of a trainer, from a start or a resume.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        options: TrainConfig,
        run_dir: &Path,
        config: PerceiverConfig,
        varmap: VarMap,
        task: TaskState,
        metrics: MetricsLog,
        progress: Progress,
        lock: Option<File>,
    ) -> Result<Self> {
        options.validate(&config)?;
        let optimizer = AdamW::new(&varmap, &config, options.optimizer)?;
        Ok(Self {
            weight_packs: WeightPacks::new(options.precision),
            options,
            run_dir: run_dir.to_path_buf(),
            config,
            varmap,
            task,
            optimizer,
            progress,
            metrics,
            pending: Window::default(),
            saved_step: Cell::new(0),
            updating: false,
            _lock: lock,
        })
    }

    /// The run's options (with a resume's new `steps`).
    pub fn options(&self) -> &TrainConfig {
        &self.options
    }

    /// The model's architecture.
    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// Where the run stands now.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// The masked LM being trained (`None` for a classifier run).
    pub fn masked_lm(&self) -> Option<&PerceiverForMaskedLM> {
        match &self.task {
            TaskState::MaskedLm { model, .. } => Some(model),
            TaskState::Classify { .. } => None,
        }
    }

    /// The classifier being trained (`None` for a masked-LM run).
    pub fn classifier(&self) -> Option<&PerceiverClassifier> {
        match &self.task {
            TaskState::Classify { model, .. } => Some(model),
            TaskState::MaskedLm { .. } => None,
        }
    }

    /// A classifier run's data: labels, training and held-out texts (`None` for a masked LM).
    pub fn classifier_data(&self) -> Option<&ClassifierData> {
        match &self.task {
            TaskState::Classify { data, .. } => Some(data),
            TaskState::MaskedLm { .. } => None,
        }
    }

    /// The directory of the run's checkpoints and `metrics.jsonl`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.optimizer.vars().map(|v| v.elem_count()).sum()
    }

    /// Windows (texts, for a classifier) held out for evaluation.
    pub fn eval_windows(&self) -> usize {
        match &self.task {
            TaskState::MaskedLm { eval_set, .. } => eval_set.len(),
            TaskState::Classify { data, .. } => data.eval.len(),
        }
    }

    /// One optimizer update over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let lr = self.options.schedule.lr(self.progress.step);
        let accum = self.options.grad_accum;
        let mut grads = Gradients::new(self.optimizer.vars());
        // The dense layers' packed weights are kept from step to step (refreshed below), in the
        // run's precision.
        let mut packs = std::mem::take(&mut self.weight_packs);
        let passes = packs.scope(|| -> Result<_> {
            let mut totals = (0f64, 0usize, 0usize, 0usize);
            for _ in 0..accum {
                let (out, batch_targets, batch_bytes) = self.micro_batch_loss()?;
                totals.0 += out.loss.to_scalar::<f32>()? as f64;
                totals.1 += out.correct;
                totals.2 += batch_targets;
                totals.3 += batch_bytes;
                grads.accumulate(&(out.loss / accum as f64)?)?;
            }
            Ok(totals)
        });
        self.weight_packs = packs;
        let (loss_sum, correct, targets, bytes) = passes?;
        let grads = gradients(&self.optimizer, grads)?;
        let grad_norm = global_norm(&grads)?;
        if !grad_norm.is_finite() {
            // Before the update: the weights are still the last good ones (`run` saves them).
            return Err(Error::Diverged(format!(
                "the gradient norm is {grad_norm} at step {}",
                self.progress.step + 1
            )));
        }
        // An error inside leaves the weights part updated: nothing of it may be saved.
        self.updating = true;
        let grad_scale = self
            .options
            .clip_norm
            .map_or(1.0, |max| clip_factor(grad_norm, max));
        let packs = &mut self.weight_packs;
        self.optimizer
            .step_with(&grads, grad_scale, lr, |var| packs.refresh(var.as_tensor()))?;
        self.updating = false;
        let seconds = started.elapsed().as_secs_f64();
        self.progress.step += 1;
        self.progress.windows = self.task.consumed();
        self.progress.bytes += bytes as u64;
        self.progress.train_seconds += seconds;
        Ok(StepMetrics {
            step: self.progress.step,
            loss: loss_sum / accum as f64,
            accuracy: correct as f64 / targets.max(1) as f64,
            lr,
            grad_norm,
            bytes,
            examples: self.options.batch_size * accum,
            seconds,
        })
    }

    /// The next micro-batch's loss, with its targets (masked bytes, or texts) and real bytes.
    fn micro_batch_loss(&mut self) -> Result<(BatchLoss, usize, usize)> {
        let batch_size = self.options.batch_size;
        match &mut self.task {
            TaskState::MaskedLm { model, stream, .. } => {
                let mut examples = Vec::with_capacity(batch_size);
                for _ in 0..batch_size {
                    let window = stream.next_window()?;
                    let index = stream.consumed() - 1;
                    examples.push(
                        self.options
                            .masking
                            .apply(&window, &mut window_rng(self.options.seed, index)),
                    );
                }
                let batch = MaskedBatch::new(&examples, model.device())?;
                let out = masked_lm_loss(model, &batch)?;
                Ok((out, batch.num_targets, batch.num_bytes))
            }
            TaskState::Classify { model, data, stream } => {
                let examples: Vec<&Example> = (0..batch_size)
                    .map(|_| &data.train[stream.next_index()])
                    .collect();
                let batch = ClassBatch::new(&examples, data.images.as_ref(), model.device())?;
                let out = classification_loss(model, &batch)?;
                Ok((out, batch.size, batch.num_bytes))
            }
        }
    }

    /// Metrics on the held-out windows or texts, if there are any.
    pub fn evaluate(&self) -> Result<Option<Evaluation>> {
        let batch_size = self.options.batch_size;
        Ok(match &self.task {
            TaskState::MaskedLm { eval_set, .. } if eval_set.is_empty() => None,
            TaskState::MaskedLm { model, eval_set, .. } => {
                Some(Evaluation::MaskedLm(evaluate(model, eval_set, batch_size)?))
            }
            TaskState::Classify { data, .. } if data.eval.is_empty() => None,
            TaskState::Classify { model, data, .. } => Some(Evaluation::Classify(evaluate_classifier(
                model,
                &data.eval,
                batch_size,
                &data.labels,
                data.images.as_ref(),
            )?)),
        })
    }

    /// The current weights by transformers name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let vars = self.varmap.data().lock().expect("varmap lock");
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes a checkpoint of the current step and prunes old ones.
    pub fn save(&self) -> Result<PathBuf> {
        let training = TrainingFile {
            options: self.options.clone(),
            progress: self.progress,
            pending: self.pending,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let image_processor = match &self.task {
            TaskState::Classify { data, .. } => data.images.as_ref().map(|p| p.config()),
            TaskState::MaskedLm { .. } => None,
        };
        let dir = checkpoint::save(
            &self.run_dir,
            &self.config,
            &self.weights(),
            &self.optimizer.state()?,
            &training,
            image_processor,
        )?;
        self.saved_step.set(self.progress.step);
        checkpoint::prune(&self.run_dir, self.options.keep_checkpoints)?;
        Ok(dir)
    }

    /// Trains until `options.steps`, until `stop` is raised, or until step `stop_at` (a session's
    /// share of a longer run: the schedule still spans `options.steps`); the last state is saved.
    /// An error after steps not yet saved saves them first, when the weights are those of the
    /// last complete step ([`Error::Stopped`] says where, or why not).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        self.run_steps(stop, stop_at, on_event)
            .map_err(|error| self.save_after(error, on_event))
    }

    fn run_steps(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let every = |n: u64, step: u64| n > 0 && step.is_multiple_of(n);
        while self.progress.step < self.options.steps {
            if stop.load(Ordering::SeqCst) || stop_at.is_some_and(|s| self.progress.step >= s) {
                self.log_partial()?;
                let dir = self.save()?;
                on_event(Event::Saved(&dir));
                return Ok(Outcome::Interrupted(dir));
            }
            let metrics = match self.train_step() {
                Err(Error::Diverged(what)) => return Err(self.diverged(what, on_event)),
                other => other?,
            };
            on_event(Event::Step(&metrics));
            self.pending.push(&metrics);
            let step = metrics.step;
            let last = step == self.options.steps;
            if every(self.options.log_every, step) || last {
                self.metrics.append(&self.pending.record())?;
                self.pending = Window::default();
            }
            if every(self.options.eval_every, step) || last {
                if let Some(result) = self.evaluate()? {
                    self.metrics.append(&Record::eval(step, &result))?;
                    if let (Evaluation::Classify(result), true) = (&result, last) {
                        write_eval(&self.run_dir, step, result)?;
                    }
                    on_event(Event::Eval {
                        step,
                        result: &result,
                        last,
                    });
                }
            }
            if every(self.options.save_every, step) || last {
                let dir = self.save()?;
                on_event(Event::Saved(&dir));
            }
        }
        let dir = checkpoint::resolve(&self.run_dir)?;
        Ok(Outcome::Finished(dir))
    }
}

impl Trainer {
    /// `error` stopped the run: the steps since the last checkpoint are saved first if the state
    /// is sound (the weights of the last complete step, and a metrics file that holds every
    /// record due), so that the run can be resumed once the cause is fixed.
    fn save_after(&mut self, error: Error, on_event: &mut dyn FnMut(Event)) -> Error {
        let step = self.progress.step;
        let saved_step = self.saved_step.get();
        // A diverged run saved what it could already; with nothing new there is nothing to save.
        if matches!(error, Error::Diverged(_)) || step == saved_step {
            return error;
        }
        let run_dir = self.run_dir.display().to_string();
        match self.save_sound_state() {
            Ok(dir) => {
                on_event(Event::Saved(&dir));
                let what_became = format!(
                    "the run is saved at step {step} ({}): once that is fixed, continue with: perceiver \
                     train --resume {run_dir}",
                    dir.display()
                );
                Error::Stopped {
                    error: Box::new(error),
                    checkpoint: Some(dir),
                    what_became,
                }
            }
            Err(why) => {
                let newest = match saved_step {
                    0 => format!(
                        "no checkpoint was saved, so the run must start again (remove {} first)",
                        self.run_dir.join(METRICS_FILE).display()
                    ),
                    s => format!(
                        "the newest checkpoint is step {s}: continue from it with: perceiver train \
                         --resume {run_dir}"
                    ),
                };
                Error::Stopped {
                    error: Box::new(error),
                    checkpoint: None,
                    what_became: format!(
                        "steps {}..={step} are not saved ({why}); {newest}",
                        saved_step + 1
                    ),
                }
            }
        }
    }

    /// Saves the last complete step after an error, or says why it cannot.
    fn save_sound_state(&mut self) -> Result<PathBuf, String> {
        let step = self.progress.step;
        if self.updating {
            return Err(format!("the update of step {} stopped partway", step + 1));
        }
        // A record due at this step but not written (its append failed) goes first: a resume
        // would not write it, and refuses a window that spans more than one interval.
        let due = |n: u64| n > 0 && step.is_multiple_of(n);
        if !self.pending.is_empty()
            && self.pending.last_step == step
            && (due(self.options.log_every) || step == self.options.steps)
        {
            self.metrics
                .append(&self.pending.record())
                .map_err(|e| format!("the metrics cannot be written: {e}"))?;
            self.pending = Window::default();
        }
        // The curves reach the last step; a resume replaces this record. Not needed to resume.
        let _ = self.log_partial();
        self.save().map_err(|e| format!("saving them failed too: {e}"))
    }

    /// Logs the updates since the last train record as a partial record (a resume replaces it).
    fn log_partial(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut record = self.pending.record();
        if let Record::Train { partial, .. } = &mut record {
            *partial = true;
        }
        self.metrics.append(&record)
    }

    /// The error of a step whose gradients were not finite, after saving the weights before it
    /// (up to `save_every − 1` steps would be lost otherwise). A resume keeps the run's
    /// options, so the way on is a new run from those weights.
    fn diverged(&mut self, what: String, on_event: &mut dyn FnMut(Event)) -> Error {
        if self.progress.step == 0 {
            return Error::Diverged(format!("{what}: start again with a lower --lr or a --clip-norm"));
        }
        match self.log_partial().and_then(|()| self.save()) {
            Ok(dir) => {
                on_event(Event::Saved(&dir));
                Error::Diverged(format!(
                    "{what}; the weights before it are saved in {}: train on from them in a new \
                     run with a lower --lr or a --clip-norm (perceiver train --init-from {} --out \
                     NEW_DIR ...), since --resume keeps a run's options",
                    dir.display(),
                    dir.display()
                ))
            }
            Err(e) => Error::Diverged(format!("{what}; saving the weights before it failed: {e}")),
        }
    }
}

/// A masked-LM run's data: the training stream and the masked held-out windows.
fn masked_lm_task(options: &TrainConfig, model: PerceiverForMaskedLM) -> Result<TaskState> {
    let corpus = Corpus::discover(&options.corpus)?;
    let split = Split {
        eval_fraction: if options.eval_corpus.is_empty() {
            options.eval_fraction
        } else {
            0.0
        },
        seed: options.seed,
    };
    let eval_windows = if !options.eval_corpus.is_empty() {
        corpus::windows(
            &Corpus::discover(&options.eval_corpus)?,
            Split::NONE,
            Part::All,
            options.seq_len,
            options.eval_windows,
        )?
    } else if split.eval_fraction > 0.0 {
        corpus::windows(&corpus, split, Part::Eval, options.seq_len, options.eval_windows)?
    } else {
        Vec::new()
    };
    let eval_set = mask_for_eval(&eval_windows, &options.masking, options.seed);
    // Fail now, not after the banner, when nothing is left to train on.
    if corpus::windows(&corpus, split, Part::Train, options.seq_len, 1)?.is_empty() {
        return Err(Error::Corpus(format!(
            "no training text: every block is held out or shorter than {} bytes",
            corpus::min_window_len(options.seq_len)
        )));
    }
    let stream = TrainStream::new(
        corpus,
        split,
        options.seq_len,
        options.shuffle_windows,
        options.seed,
    );
    Ok(TaskState::MaskedLm {
        model,
        stream,
        eval_set,
    })
}

/// The gradient of every parameter, in the optimizer's order (`grads` made with
/// [`AdamW::vars`]). A parameter without one is an error: it would silently never train (as
/// behind candle's fused LayerNorm).
pub fn gradients(optimizer: &AdamW, grads: Gradients) -> Result<Vec<Tensor>> {
    optimizer
        .names()
        .zip(grads.into_tensors()?)
        .map(|(name, grad)| {
            grad.ok_or_else(|| Error::Options(format!("parameter {name} received no gradient")))
        })
        .collect()
}

/// Copies `tensors` into the variables of `varmap`; every variable must be present with its shape.
pub fn set_weights(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        let tensor = tensors
            .get(name)
            .ok_or_else(|| perceiver::Error::MissingTensor { name: name.clone() })?;
        if tensor.dims() != var.dims() {
            return Err(perceiver::Error::ShapeMismatch {
                name: name.clone(),
                expected: var.dims().to_vec(),
                found: tensor.dims().to_vec(),
            }
            .into());
        }
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = tensors.keys().find(|k| !vars.contains_key(*k)) {
        return Err(perceiver::Error::UnexpectedTensor {
            name: extra.clone(),
            shape: tensors[extra].dims().to_vec(),
        }
        .into());
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_lock_on_a_removed_or_replaced_lock_file_is_not_the_run_directorys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let first = File::create(&path).unwrap();
        assert!(still_named(&first, &path));
        std::fs::remove_file(&path).unwrap();
        assert!(!still_named(&first, &path), "removed");
        let second = File::create(&path).unwrap();
        assert!(!still_named(&first, &path), "replaced");
        assert!(still_named(&second, &path));
        // A start that opened the lock file before its removal locks that one first, then
        // takes the lock of the file the directory holds now.
        let mut orphan = Some(first);
        let mut opened = 0;
        let held = lock_run_dir_opening(dir.path(), |path| {
            opened += 1;
            match orphan.take() {
                Some(file) => Ok(file),
                None => File::options().write(true).open(path),
            }
        });
        let held = held.unwrap().expect("this file system has locks");
        assert_eq!(opened, 2);
        assert!(still_named(&held, &path));
        assert!(matches!(lock_run_dir(dir.path()), Err(Error::RunInUse { .. })));
        drop(held);

        // A start that finds the removed file locked by another such start is not refused for
        // it: the directory's lock file is free.
        let old = dir.path().join("old");
        let ours = File::create(&old).unwrap();
        let theirs = File::options().write(true).open(&old).unwrap();
        std::fs::remove_file(&old).unwrap();
        theirs.try_lock().unwrap();
        let mut ours = Some(ours);
        let held = lock_run_dir_opening(dir.path(), |path| match ours.take() {
            Some(file) => Ok(file),
            None => File::options().write(true).open(path),
        });
        let held = held.unwrap().expect("this file system has locks");
        assert!(still_named(&held, &path));
    }
}
