//! `perceiver train`, `perceiver eval` and `perceiver plot`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressStyle};
use perceiver::{Architecture, Loader, PerceiverConfig, Precision};
use perceiver_train::classification::{self, ClassifierEval, EVAL_FILE};
use perceiver_train::config::{Task, MAX_BATCH_SIZE, MAX_GRAD_ACCUM, MAX_STEPS};
use perceiver_train::corpus::{self, Corpus, Part, Split};
use perceiver_train::init::InitScheme;
use perceiver_train::optim::{AdamWConfig, Decay, Schedule};
use perceiver_train::presets::{preset, PRESET_NAMES};
use perceiver_train::trainer::mask_for_eval;
use perceiver_train::{
    Evaluation, Event, Masking, MaskingStrategy, ModelInit, Outcome, TrainConfig, Trainer,
};

use crate::model::ModelArgs;
use crate::numbers::whole;

/// Which bytes are masked, for training and evaluation alike.
#[derive(Args)]
struct MaskingArgs {
    /// Which bytes to mask: bytes (independently), whole-words, spans.
    #[arg(long, default_value = "bytes")]
    masking: MaskingStrategy,

    /// Fraction of bytes masked.
    #[arg(long, default_value_t = 0.15)]
    mask_rate: f64,

    /// Mean span length with --masking spans.
    #[arg(long, default_value_t = 3.0)]
    mean_span: f64,
}

impl MaskingArgs {
    fn masking(&self, bert_replacement: bool) -> Masking {
        Masking {
            strategy: self.masking,
            rate: self.mask_rate,
            bert_replacement,
            mean_span: self.mean_span,
        }
    }
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  perceiver train --preset tiny --init local --corpus texts/ --out runs/tiny --steps 2000\n  \
perceiver train --init-from deepmind/language-perceiver --corpus 'mine/*.txt' --out runs/ft --lr 1e-5\n  \
perceiver train --resume runs/tiny --steps 4000\n  \
perceiver train --task classify --init-from default --train reviews.csv --out runs/cls --steps 300 --lr 3e-4\n  \
perceiver train --task classify --init-from deepmind/vision-perceiver-conv --new-labels --train photos/ --out runs/pets --lr 1e-4"
)]
pub struct TrainArgs {
    /// What to train: mlm (a byte masked language model on text) or classify (a classifier: of
    /// texts on labelled texts, CSV with the columns text and label or JSON lines; of images
    /// on image folders, a folder per label).
    #[arg(long, default_value = "mlm", conflicts_with = "resume")]
    task: Task,

    /// Training text: files, directories (recursive) or glob patterns; with --task classify,
    /// labelled .csv / .jsonl files, or for an image classifier directories holding a folder of
    /// images per label (DIR/cat/1.jpg, DIR/dog/2.png).
    #[arg(long, visible_alias = "train", num_args = 1.., required_unless_present = "resume")]
    corpus: Vec<String>,

    /// Run directory: checkpoints, metrics.jsonl, curves.svg.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,

    /// Continue a run (its directory, or its newest checkpoint) exactly where it stopped, with
    /// the options it was started with: only --steps (a new total), --stop-at and --plot may be
    /// given with it.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["corpus", "out", "preset", "config", "init_from"])]
    resume: Option<PathBuf>,

    /// Train from scratch with a named layout (tiny, small, base = the 201M layout); without
    /// --preset, --config or --init-from: small.
    #[arg(long, conflicts_with_all = ["config", "init_from"])]
    preset: Option<String>,

    /// Train from scratch with the layout of a transformers config.json.
    #[arg(long, value_name = "FILE", conflicts_with = "init_from")]
    config: Option<PathBuf>,

    /// Fine-tune: start from a model directory, a hub id, a DeepMind checkpoint (.pickle) or
    /// `default` (the built-in model). With --task classify, a byte masked LM (its decoder is
    /// replaced), a text classifier or an ImageNet classifier.
    #[arg(long, value_name = "MODEL")]
    init_from: Option<String>,

    /// With --task classify from a classifier: train it on the data's labels, with a fresh final
    /// layer (the rest of the model kept), instead of requiring the data's labels to be its own
    /// (an ImageNet classifier taught your own classes).
    #[arg(long)]
    new_labels: bool,

    /// With --init-from a DeepMind checkpoint: a transformers config.json for what its shapes
    /// cannot tell (heads, blocks, query residual, activation); default: DeepMind's Colab values.
    #[arg(long, value_name = "FILE", requires = "init_from")]
    model_config: Option<PathBuf>,

    /// Initialisation from scratch: deepmind (truncated normals: 1/fan_in for linears, 1.0 for
    /// the byte embedding, 0.02 for positions and latents), transformers (normal 0.02), or local
    /// (deepmind's, with both cross-attentions starting local; leaves the unigram plateau soonest).
    #[arg(long, default_value = "deepmind")]
    init: InitScheme,

    /// Held-out text (files, directories, globs); otherwise --eval-fraction of the corpus.
    #[arg(long, visible_alias = "eval", num_args = 1..)]
    eval_corpus: Vec<String>,

    /// Fraction of the corpus held out for evaluation [default: 0.01 in 64 KiB blocks; with
    /// --task classify 0.1 of each label's texts].
    #[arg(long)]
    eval_fraction: Option<f64>,

    /// Held-out windows evaluated each time.
    #[arg(long, default_value_t = 256)]
    eval_windows: usize,

    /// Window length in bytes (default: the model's max_position_embeddings); with --task
    /// classify, the most ids of a text ([CLS] and [SEP] included): longer texts are cut.
    #[arg(long, value_parser = whole::<usize>(1, MAX_SEQ_LEN))]
    seq_len: Option<usize>,

    /// Windows (texts, images) per micro-batch (at most 4096).
    #[arg(long, default_value_t = 16, value_parser = whole::<usize>(1, MAX_BATCH_SIZE as u64))]
    batch_size: usize,

    /// Micro-batches per optimizer update (at most 4096).
    #[arg(long, default_value_t = 1, value_parser = whole::<usize>(1, MAX_GRAD_ACCUM as u64))]
    grad_accum: usize,

    /// Optimizer updates [default: 1000] (with --resume: the new total, not below the step
    /// reached; at most 10⁹, and at most 2³² windows: steps × batch size × accumulation).
    #[arg(long, value_parser = whole::<u64>(1, MAX_STEPS))]
    steps: Option<u64>,

    #[command(flatten)]
    masking: MaskingArgs,

    /// BERT's 80/10/10: of the chosen bytes, 10% get a random byte and 10% stay unchanged.
    #[arg(long)]
    bert_replacement: bool,

    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,

    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,

    /// Decay after warm-up: cosine, linear, constant.
    #[arg(long, default_value = "cosine")]
    schedule: Decay,

    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    min_lr_ratio: f64,

    /// Decoupled weight decay on linear weights (none on LayerNorms, biases, embeddings,
    /// position tables, latents).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,

    #[arg(long, default_value_t = 0.9)]
    beta1: f64,

    #[arg(long, default_value_t = 0.999)]
    beta2: f64,

    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,

    /// Clip gradients to this global L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,

    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Checkpoint every N steps (and at the end, and on Ctrl-C, SIGTERM or SIGHUP).
    #[arg(long, default_value_t = 500)]
    save_every: u64,

    /// Evaluate on the held-out windows every N steps.
    #[arg(long, default_value_t = 250)]
    eval_every: u64,

    /// Append a metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,

    /// Checkpoints kept (oldest deleted first; at least 1).
    #[arg(long, default_value_t = 3, value_parser = whole::<usize>(1, usize::MAX as u64))]
    keep_checkpoints: usize,

    /// Windows in the shuffle buffer [default: 64 MiB of windows, e.g. 262,144 of 256 bytes]. Files
    /// are read one after another, so a buffer much smaller than the corpus trains on one file at a
    /// time and the model drifts with it (held-out accuracy fell 72% -> 69% with 1 MB over 26 MB).
    #[arg(long)]
    shuffle_windows: Option<usize>,

    /// Number type of the dense layers' and attention's products in training steps: f32, or
    /// bf16 (mixed precision: their operands rounded to bf16; sums, gradients, the weights and
    /// every other op f32). Faster on CPUs with AVX-512 BF16 or AMX, not on AVX2. Evaluation runs
    /// in f32.
    #[arg(long, default_value = "f32")]
    precision: Precision,

    /// Stop (with a checkpoint) once this step is reached, keeping the schedule of --steps: a
    /// long run done in parts, each continued with --resume.
    #[arg(long, value_name = "STEP")]
    stop_at: Option<u64>,

    /// Draw curves.svg when the run ends.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    plot: bool,
}

fn model_init(args: &TrainArgs) -> Result<(ModelInit, String)> {
    if let Some(model) = &args.init_from {
        // The loader every other subcommand uses: a directory, a hub id or a DeepMind file.
        let mut loader = Loader::new(model.as_str());
        if let Some(config) = &args.model_config {
            loader = loader.model_config(config);
        }
        let (checkpoint, processor_file) = loader
            .checkpoint_with_preprocessor_config()
            .with_context(|| format!("cannot load model {model}"))?;
        // Refused before its weights are converted or any note about it is printed.
        perceiver_train::trainer::check_trainable(
            perceiver::Architecture::of(checkpoint.config())?,
            args.task,
        )?;
        let tensors = perceiver_train::model::checkpoint_tensors(&checkpoint, &perceiver_train::Device::Cpu)
            .with_context(|| format!("cannot load model {model}"))?;
        let config = checkpoint.config().clone();
        // Images are prepared for training as the model's own files prepare them for inference.
        let image_processor = processor_file
            .filter(|_| config.image_input().is_some())
            .map(|path| image_processor_file(&path))
            .transpose()?;
        if config.attention_probs_dropout_prob > 0.0 {
            note!(
                "note: the model's config asks for attention dropout {}; this trainer applies no dropout",
                config.attention_probs_dropout_prob
            );
        }
        return Ok((
            ModelInit::Pretrained {
                config,
                tensors,
                image_processor,
            },
            format!("pretrained:{model}"),
        ));
    }
    if let Some(path) = &args.config {
        let config = PerceiverConfig::from_file(path)
            .with_context(|| format!("cannot use config {}", path.display()))?;
        return Ok((ModelInit::Scratch(config), format!("config:{}", path.display())));
    }
    let name = args.preset.as_deref().unwrap_or("small");
    let config = preset(name)
        .with_context(|| format!("unknown preset {name:?} (one of {})", PRESET_NAMES.join(", ")))?;
    Ok((ModelInit::Scratch(config), format!("preset:{name}")))
}

/// A model's `preprocessor_config.json`.
fn image_processor_file(path: &Path) -> Result<perceiver::image::ImageProcessor> {
    perceiver::image::ImageProcessor::from_file(path)
        .with_context(|| format!("cannot use {}", path.display()))
}

/// `--seq-len`: 1 to the most positions any config may have (the model's own
/// max_position_embeddings is checked once it is loaded).
const MAX_SEQ_LEN: u64 = perceiver::config::bounds::MAX_POSITION_EMBEDDINGS.max;

/// The shuffle buffer's size when --shuffle-windows is not given, in bytes of windows.
const DEFAULT_SHUFFLE_BYTES: usize = 64 << 20;

/// The flags of `train` given on the command line (not defaulted), as `--name`.
/// A stop signal this soon after the first is the same stop delivered twice, not a second
/// request (which exits without saving).
const REPEATED_SIGNAL: std::time::Duration = std::time::Duration::from_secs(1);

pub fn typed_flags(matches: &ArgMatches) -> Vec<String> {
    TrainArgs::augment_args(clap::Command::new("train"))
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(|long| format!("--{long}")))
        .collect()
}

/// The flags a resume obeys; every other option is the checkpoint's.
const RESUME_FLAGS: [&str; 4] = ["--resume", "--steps", "--stop-at", "--plot"];

/// `typed`: the flags given on the command line ([`typed_flags`]).
pub fn run_train(args: TrainArgs, typed: &[String]) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            let ignored: Vec<&str> = typed
                .iter()
                .map(String::as_str)
                .filter(|f| !RESUME_FLAGS.contains(f))
                .collect();
            if !ignored.is_empty() {
                bail!(
                    "{} cannot change a resumed run, which keeps the options in its checkpoint's \
                     training.json: leave them out, or start a new run from the checkpoint with \
                     --init-from",
                    ignored.join(", ")
                );
            }
            Trainer::resume(dir, args.steps).with_context(|| format!("cannot resume {}", dir.display()))?
        }
        None => {
            // `> 0.0` alone took -1 and NaN for "off".
            if !(args.clip_norm >= 0.0 && args.clip_norm.is_finite()) {
                bail!(
                    "--clip-norm must be 0 (off) or a positive finite norm, got {}",
                    args.clip_norm
                );
            }
            if args.new_labels && args.task != Task::Classify {
                bail!("--new-labels gives a classifier new labels: it goes with --task classify");
            }
            let (init, model) = model_init(&args)?;
            let config = match &init {
                ModelInit::Scratch(c) | ModelInit::Pretrained { config: c, .. } => c.clone(),
            };
            let steps = args.steps.unwrap_or(1000);
            let seq_len = args.seq_len.unwrap_or(config.max_position_embeddings);
            let eval_fraction = args.eval_fraction.unwrap_or(match args.task {
                Task::MaskedLm => 0.01,
                Task::Classify => 0.1,
            });
            let options = TrainConfig {
                task: args.task,
                model,
                init: args.init,
                corpus: args.corpus.clone(),
                eval_corpus: args.eval_corpus.clone(),
                eval_fraction,
                eval_windows: args.eval_windows,
                seq_len,
                batch_size: args.batch_size,
                grad_accum: args.grad_accum,
                steps,
                masking: args.masking.masking(args.bert_replacement),
                optimizer: AdamWConfig {
                    beta1: args.beta1,
                    beta2: args.beta2,
                    eps: args.adam_eps,
                    weight_decay: args.weight_decay,
                },
                schedule: Schedule {
                    peak_lr: args.lr,
                    warmup_steps: args.warmup_steps,
                    total_steps: steps,
                    decay: args.schedule,
                    min_lr_ratio: args.min_lr_ratio,
                },
                clip_norm: (args.clip_norm > 0.0).then_some(args.clip_norm),
                seed: args.seed,
                save_every: args.save_every,
                eval_every: args.eval_every,
                log_every: args.log_every,
                keep_checkpoints: args.keep_checkpoints,
                shuffle_windows: args
                    .shuffle_windows
                    .unwrap_or(DEFAULT_SHUFFLE_BYTES / seq_len.max(1)),
                new_labels: args.new_labels,
                precision: args.precision,
            };
            let out = args.out.clone().expect("clap requires --out without --resume");
            Trainer::start(options, &out, init)?
        }
    };

    // Ctrl-C, and (ctrlc's "termination" feature) SIGTERM and SIGHUP: what timeout, kill,
    // systemd, docker stop and Slurm send, and a closed terminal. Each saves like a first Ctrl-C.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let first = std::sync::OnceLock::new();
        ctrlc::set_handler(move || {
            let first = *first.get_or_init(std::time::Instant::now);
            if stop.swap(true, Ordering::SeqCst) {
                // One stop often arrives twice: `timeout` signals its child and then the child's
                // process group, a closed terminal hangs up the group and the shell re-sends
                // SIGHUP. Only a signal a moment later is a request to exit at once.
                if first.elapsed() < REPEATED_SIGNAL {
                    return;
                }
                note!("\nsecond interrupt: exiting without saving");
                std::process::exit(130);
            }
            note!(
                "\ninterrupted (Ctrl-C, SIGTERM or SIGHUP): saving a checkpoint after this step \
                 (interrupt again to exit without saving)"
            );
        })
        .context("cannot install the handler of Ctrl-C, SIGTERM and SIGHUP")?;
    }

    let options = trainer.options().clone();
    let progress = trainer.progress();
    match trainer.classifier_data() {
        None => note!(
            "training {} ({:.2}M parameters) in {}: steps {}..{} of {} windows × {} bytes (×{} accumulation), {} held-out windows",
            options.model,
            trainer.num_parameters() as f64 / 1e6,
            trainer.run_dir().display(),
            progress.step,
            options.steps,
            options.batch_size,
            options.seq_len,
            options.grad_accum,
            trainer.eval_windows(),
        ),
        Some(data) => {
            let what = if data.images.is_some() { "images" } else { "texts" };
            note!(
                "training a classifier from {} ({:.2}M parameters) in {}: steps {}..{}, {} {what} a batch (×{} accumulation); \
                 labels {}; {} training {what}, {} held out",
                options.model,
                trainer.num_parameters() as f64 / 1e6,
                trainer.run_dir().display(),
                progress.step,
                options.steps,
                options.batch_size,
                options.grad_accum,
                data.labels.join(", "),
                data.train.len(),
                data.eval.len(),
            );
            if data.truncated > 0 {
                note!(
                    "note: {} texts are longer than {} ids: each was cut to its first {} bytes",
                    data.truncated,
                    options.seq_len,
                    options.seq_len - 2
                );
            }
            if data.eval.is_empty() {
                note!("note: no held-out {what} (--eval-fraction 0 and no --eval): no accuracy will be measured");
            }
        }
    }
    let bar = ProgressBar::new(options.steps).with_position(progress.step);
    let interactive = std::io::stderr().is_terminal();
    if interactive {
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // An image run's speed is in images a second (it reads no bytes of text).
    let images = trainer.classifier_data().is_some_and(|d| d.images.is_some());
    let examples = if images { "images" } else { "texts" };
    let per_step = (options.batch_size * options.grad_accum) as f64;
    let mut recent: Vec<(f64, f64, f64)> = Vec::new(); // loss, accuracy, bytes (images) a second
    let mut final_eval: Option<ClassifierEval> = None;
    let log_every = options.log_every.max(1);
    // Without a terminal the bar is hidden, and so would be its println: write lines directly.
    let say = |line: String| {
        if interactive {
            bar.println(line)
        } else {
            note!("{line}")
        }
    };
    let outcome = trainer.run(&stop, args.stop_at, &mut |event| match event {
        Event::Step(m) => {
            let done = if images { per_step } else { m.bytes as f64 };
            recent.push((m.loss, m.accuracy, done / m.seconds.max(1e-9)));
            if recent.len() > 20 {
                recent.remove(0);
            }
            let n = recent.len() as f64;
            let (loss, acc, speed) = recent.iter().fold((0.0, 0.0, 0.0), |a, r| {
                (a.0 + r.0 / n, a.1 + r.1 / n, a.2 + r.2 / n)
            });
            let speed = match images {
                true => format!("{speed:.2} images/s"),
                false => format!("{speed:.0} B/s"),
            };
            let msg = format!("loss {loss:.4} acc {:.1}% {speed} lr {:.2e}", 100.0 * acc, m.lr);
            bar.set_position(m.step);
            bar.set_message(msg.clone());
            if !interactive && m.step % log_every == 0 {
                note!("step {}/{} {msg}", m.step, options.steps);
            }
        }
        Event::Eval { step, result, last } => match result {
            Evaluation::MaskedLm(result) => say(format!(
                "step {step}: held-out loss {:.4} accuracy {:.2}% bits/byte {:.4} ({} masked bytes)",
                result.loss,
                100.0 * result.accuracy,
                result.bits_per_byte,
                result.masked_bytes
            )),
            Evaluation::Classify(result) => {
                say(format!(
                    "step {step}: held-out loss {:.4} accuracy {:.2}% ({} {examples})",
                    result.loss,
                    100.0 * result.accuracy,
                    result.examples
                ));
                if last {
                    final_eval = Some(result.clone());
                }
            }
        },
        Event::Saved(dir) => say(format!("saved {}", dir.display())),
    })?;
    bar.finish_and_clear();
    if args.plot {
        match perceiver_train::plot::plot_run(trainer.run_dir()) {
            Ok(path) => note!("curves: {}", path.display()),
            Err(e) => note!("note: no curves drawn: {e}"),
        }
    }
    match outcome {
        Outcome::Finished(dir) => {
            note!("finished: {}", dir.display());
            if let Some(result) = final_eval {
                print_classifier_eval("held-out accuracy", examples, &result)?;
                outln!("(also in {})", trainer.run_dir().join(EVAL_FILE).display());
            }
            Ok(())
        }
        Outcome::Interrupted(dir) => {
            note!(
                "stopped at {}; continue with: perceiver train --resume {}",
                dir.display(),
                trainer.run_dir().display()
            );
            if stop.load(Ordering::SeqCst) {
                // The conventional status of a Ctrl-C'd program, whichever signal it was: the
                // handler is not told which.
                std::process::exit(130);
            }
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Text files, directories or globs to evaluate on (for a text classifier: labelled .csv /
    /// .jsonl files, for an image classifier: directories with a folder of images per label, as
    /// `train --task classify` reads).
    #[arg(required = true, num_args = 1..)]
    files: Vec<String>,

    #[command(flatten)]
    masking: MaskingArgs,

    /// Masking seed (the same seed masks the same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Window length in bytes (default: the model's max_position_embeddings).
    #[arg(long, value_parser = whole::<usize>(1, MAX_SEQ_LEN))]
    seq_len: Option<usize>,

    /// Evaluate at most this many windows (at least 1).
    #[arg(long, default_value_t = 100_000, value_parser = whole::<usize>(1, usize::MAX as u64))]
    max_windows: usize,

    /// Windows per forward pass (at most 4096).
    #[arg(long, default_value_t = 16, value_parser = whole::<usize>(1, MAX_BATCH_SIZE as u64))]
    batch_size: usize,

    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A classifier's accuracy (`what`: held-out or not) on `examples` (texts or images) and its
/// confusion table, on standard output.
fn print_classifier_eval(what: &str, examples: &str, result: &ClassifierEval) -> Result<()> {
    outln!(
        "{what} {:.2}% ({} {examples}), loss {:.4}",
        100.0 * result.accuracy,
        result.examples,
        result.loss
    );
    std::io::Write::write_all(&mut std::io::stdout(), result.table().as_bytes())?;
    Ok(())
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    let masking = args.masking.masking(false);
    masking.validate().map_err(|e| match e {
        perceiver_train::Error::Options(why) => anyhow::anyhow!("invalid masking: {why}"),
        other => other.into(),
    })?;
    // The files exist before a model is loaded (or downloaded).
    let corpus = Corpus::discover(&args.files)?;
    let (checkpoint, processor_file) = args.model.checkpoint()?;
    match Architecture::of(checkpoint.config())? {
        a if a.is_classifier() => return run_classifier_eval(&args, &checkpoint, processor_file),
        Architecture::MaskedLm => {}
        other => bail!(
            "eval needs a PerceiverForMaskedLM or a classifier, not a {}",
            other.name()
        ),
    }
    let model = perceiver_train::model::loading::masked_lm_of(&checkpoint, &perceiver_train::Device::Cpu)
        .with_context(|| format!("cannot load model {}", args.model.model))?;
    let max_len = model.max_len();
    let seq_len = args.seq_len.unwrap_or(max_len);
    if seq_len == 0 || seq_len > max_len {
        bail!("--seq-len {seq_len} must be in 1..={max_len} (the model's max_position_embeddings)");
    }
    let windows = corpus::windows(&corpus, Split::NONE, Part::All, seq_len, args.max_windows)?;
    if windows.is_empty() {
        bail!(
            "no text to evaluate (files empty or shorter than {} bytes)",
            corpus::min_window_len(seq_len)
        );
    }
    let examples = mask_for_eval(&windows, &masking, args.seed);
    let result = perceiver_train::evaluate(&model, &examples, args.batch_size)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": args.model.model,
                "files": corpus.files().len(),
                "windows": result.windows,
                "masked_bytes": result.masked_bytes,
                "mask_rate": masking.rate,
                "masking": masking.strategy,
                "seed": args.seed,
                "seq_len": seq_len,
                "accuracy": result.accuracy,
                "loss": result.loss,
                "bits_per_byte": result.bits_per_byte,
            })
        );
    } else {
        outln!(
            "{}: {} windows of ≤{} bytes from {} files, {} masked bytes ({}, rate {}, seed {})",
            args.model.model,
            result.windows,
            seq_len,
            corpus.files().len(),
            result.masked_bytes,
            masking.strategy,
            masking.rate,
            args.seed
        );
        outln!("accuracy (top-1)  {:.2}%", 100.0 * result.accuracy);
        outln!("loss              {:.4} nats", result.loss);
        outln!("bits per byte     {:.4}", result.bits_per_byte);
    }
    Ok(())
}

/// `perceiver eval` of a classifier: accuracy, loss and the confusion table on labelled files
/// (texts) or image folders (images, prepared by the model's `preprocessor_config.json`, found at
/// `processor_file`, or the default).
fn run_classifier_eval(
    args: &EvalArgs,
    checkpoint: &perceiver::Checkpoint,
    processor_file: Option<PathBuf>,
) -> Result<()> {
    let labels = classification::config_labels(checkpoint.config())?;
    let model = perceiver_train::model::loading::classifier_of(checkpoint, &perceiver_train::Device::Cpu)
        .with_context(|| format!("cannot load model {}", args.model.model))?;
    let (examples, truncated, processor) = match model.max_len() {
        Some(max_len) => {
            let seq_len = args.seq_len.unwrap_or(max_len);
            if !(3..=max_len).contains(&seq_len) {
                bail!("--seq-len {seq_len} must be in 3..={max_len} (the model's max_position_embeddings)");
            }
            let rows = perceiver_train::labelled::read_all(&args.files)?;
            let (examples, truncated) = classification::examples(&rows, &labels, seq_len)?;
            if truncated > 0 && !args.json {
                note!("note: {truncated} texts longer than {seq_len} ids were cut");
            }
            (examples, truncated, None)
        }
        None => {
            let given = processor_file
                .map(|path| image_processor_file(&path))
                .transpose()?;
            let processor = classification::image_processor_for(checkpoint.config(), given)?
                .context("an image classifier has an image processor")?;
            let rows = perceiver_train::labelled::read_image_folders(&args.files)?;
            (
                classification::image_examples(&rows, &labels)?,
                0,
                Some(processor),
            )
        }
    };
    let result =
        classification::evaluate_classifier(&model, &examples, args.batch_size, &labels, processor.as_ref())?;
    let what = if processor.is_some() { "images" } else { "texts" };
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": args.model.model,
                what: result.examples,
                "truncated": truncated,
                "accuracy": result.accuracy,
                "loss": result.loss,
                "labels": result.labels,
                "confusion": result.confusion,
            })
        );
    } else {
        outln!("{}: {} labelled {what}", args.model.model, result.examples);
        print_classifier_eval("accuracy", what, &result)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct PlotArgs {
    /// A training run directory (with metrics.jsonl).
    run_dir: PathBuf,
}

pub fn run_plot(args: PlotArgs) -> Result<()> {
    let path = perceiver_train::plot::plot_run(&args.run_dir)?;
    outln!("{}", path.display());
    Ok(())
}
