//! `perceiver-bench train-step`: the time of one optimizer update of the trainer, printed as JSON
//! for `scripts/bench_train.py` (which runs the PyTorch reference in the same session).
//!
//! What is timed is [`Trainer::train_step`] itself, so the bench can never drift from what
//! `perceiver train` runs: the model's weights are loaded as a fine-tuning run would load them,
//! and the trainer reads its windows from a throw-away corpus of random printable bytes in a
//! temporary directory (random text is as fast to train on as real text). An image classifier's
//! step is a classification step on random-pixel PNG files (224 × 224, in folders named after two
//! of its labels), read and prepared by its image processor inside the timed step, as in a run.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::image::ImageProcessor;
use perceiver::{LoadOptions, ModelFiles, PerceiverConfig, Precision};
use perceiver_train::init::InitScheme;
use perceiver_train::masking::Masking;
use perceiver_train::optim::{AdamWConfig, Decay, Schedule};
use perceiver_train::{ModelInit, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Args)]
pub struct TrainStepArgs {
    /// A model directory (config.json + weights) whose layout is timed.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Bytes per window (default: the model's max_position_embeddings); unused for an image
    /// classifier.
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long, default_value_t = 0.15)]
    mask_rate: f64,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Number type of the dense layers' and attention's products: f32 or bf16 (mixed precision,
    /// as `perceiver train --precision`).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Print {"impl", "step_seconds", "median"} as JSON.
    #[arg(long)]
    json: bool,
}

/// The learning rate of every timed step (its value does not change the step's time).
const LEARNING_RATE: f64 = 1e-4;
/// The gradient clipping of every timed step: clipping is part of a step's work.
const CLIP_NORM: f64 = 1.0;

pub fn run(args: TrainStepArgs) -> Result<()> {
    let steps = args.warmup + args.repeats;
    if args.batch_size == 0 || steps == 0 {
        bail!("--batch-size and --warmup + --repeats must be at least 1");
    }
    let files = ModelFiles::resolve(&args.model, &LoadOptions::default())?;
    let (config, tensors) =
        perceiver_train::model::load_masked_lm_tensors(&files, &perceiver_train::Device::Cpu)
            .with_context(|| format!("cannot load model {}", args.model))?;
    let images = config.image_input().is_some();
    let seq_len = args.seq_len.unwrap_or(config.max_position_embeddings);
    let image_processor = match files.preprocessor_config.as_ref().filter(|_| images) {
        Some(path) => Some(ImageProcessor::from_file(path)?),
        None => None,
    };

    let scratch = tempfile::tempdir().context("cannot make a temporary directory")?;
    let corpus = scratch.path().join("corpus");
    std::fs::create_dir(&corpus).with_context(|| format!("cannot make {}", corpus.display()))?;
    let count = steps * args.batch_size;
    if images {
        write_images(&corpus, &config, count)?;
    } else {
        write_windows(&corpus, seq_len, count)?;
    }

    let options = TrainConfig {
        task: match images {
            true => perceiver_train::config::Task::Classify,
            false => perceiver_train::config::Task::MaskedLm,
        },
        model: format!("bench:{}", args.model),
        init: InitScheme::DeepMind,
        corpus: vec![corpus.to_string_lossy().into_owned()],
        eval_corpus: Vec::new(),
        eval_fraction: 0.0,
        eval_windows: 0,
        seq_len,
        batch_size: args.batch_size,
        grad_accum: 1,
        steps: steps as u64,
        masking: Masking {
            rate: args.mask_rate,
            ..Masking::default()
        },
        optimizer: AdamWConfig::default(),
        schedule: Schedule {
            peak_lr: LEARNING_RATE,
            warmup_steps: 0,
            total_steps: steps as u64,
            decay: Decay::Constant,
            min_lr_ratio: 1.0,
        },
        clip_norm: Some(CLIP_NORM),
        seed: 0,
        // Never reached: the run is driven one step at a time and never saved.
        save_every: 0,
        eval_every: 0,
        log_every: 0,
        keep_checkpoints: 1,
        // The corpus holds just the windows the steps read: nothing to shuffle them with.
        shuffle_windows: 1,
        new_labels: false,
        precision: args.precision,
    };
    let mut trainer = Trainer::start(
        options,
        &scratch.path().join("run"),
        ModelInit::Pretrained {
            config,
            tensors,
            image_processor,
        },
    )?;
    let mut times = Vec::new();
    for i in 0..steps {
        let started = Instant::now();
        trainer.train_step()?;
        if i >= args.warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"impl": "perceiver", "step_seconds": times, "median": median})
        );
    } else {
        let what = match images {
            true => "images".to_string(),
            false => format!("× {seq_len} bytes"),
        };
        println!(
            "train step, batch {} {what}: median {:.1} ms over {} runs",
            args.batch_size,
            1e3 * median,
            times.len()
        );
    }
    Ok(())
}

/// The corpus of a masked LM's steps: exactly the windows they read, one file each (the trainer
/// cuts files into blocks, and a block's remainder would make a shorter window), each `seq_len`
/// random bytes of ' '..='z' (one byte each in UTF-8: no window is cut at a character boundary).
fn write_windows(corpus: &Path, seq_len: usize, count: usize) -> Result<()> {
    if seq_len > perceiver_train::corpus::BLOCK_BYTES {
        bail!(
            "--seq-len {seq_len} is longer than the trainer's read block ({} bytes)",
            perceiver_train::corpus::BLOCK_BYTES
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for window in 0..count {
        let text: Vec<u8> = (0..seq_len).map(|_| rng.random_range(b' '..=b'z')).collect();
        let path = corpus.join(format!("{window:06}.txt"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The side of the images an image classifier's steps read: transformers' default output size.
const IMAGE_SIDE: u32 = 224;

/// The images of an image classifier's steps: `count` PNG files of random pixels, alternately in
/// folders named after its first two labels (its own labels: its final layer stays as it is).
fn write_images(corpus: &Path, config: &PerceiverConfig, count: usize) -> Result<()> {
    let labels = config.labels(config.num_labels()?.unwrap_or(0))?;
    let [first, second, ..] = labels.as_slice() else {
        bail!("the image classifier has fewer than two labels");
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for i in 0..count {
        let folder = corpus.join(if i % 2 == 0 { first } else { second });
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot make {}", folder.display()))?;
        let pixels: Vec<u8> = (0..3 * IMAGE_SIDE * IMAGE_SIDE).map(|_| rng.random()).collect();
        let image = image::RgbImage::from_raw(IMAGE_SIDE, IMAGE_SIDE, pixels).context("image size")?;
        let path = folder.join(format!("{i:06}.png"));
        image
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
