//! `perceiver-bench train-step`: the time of one training step, printed as JSON for
//! `scripts/bench_train.py` (which runs the PyTorch reference in the same session).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;
use perceiver::{LoadOptions, ModelFiles, PerceiverForMaskedLM};
use perceiver_train::masking::Masking;
use perceiver_train::objective::{masked_lm_loss, MaskedBatch};
use perceiver_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use perceiver_train::trainer::{gradients, set_weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Args)]
pub struct TrainStepArgs {
    /// A model directory (config.json + weights) whose layout is timed.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Bytes per window (default: the model's max_position_embeddings).
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long, default_value_t = 0.15)]
    mask_rate: f64,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print {"impl", "step_seconds", "median"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TrainStepArgs) -> Result<()> {
    let device = Device::Cpu;
    let files = ModelFiles::resolve(&args.model, &LoadOptions::default())?;
    let (config, tensors) = perceiver::loading::load_masked_lm_tensors(&files, &device)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let varmap = VarMap::new();
    let model = PerceiverForMaskedLM::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    set_weights(&varmap, &tensors.into_iter().collect())?;
    let mut optimizer = AdamW::new(&varmap, AdamWConfig::default())?;
    let seq_len = args.seq_len.unwrap_or(config.max_position_embeddings);
    let masking = Masking {
        rate: args.mask_rate,
        ..Masking::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<_> = (0..args.batch_size)
        .map(|_| {
            let bytes: Vec<u8> = (0..seq_len).map(|_| rng.random_range(b' '..=b'z')).collect();
            masking.apply(&bytes, &mut rng)
        })
        .collect();
    let batch = MaskedBatch::new(&examples, &device)?;
    let mut times = Vec::new();
    for i in 0..args.warmup + args.repeats {
        let started = Instant::now();
        let out = masked_lm_loss(&model, &batch)?;
        let store = out.loss.backward()?;
        let mut grads = gradients(&optimizer, &store)?;
        clip_grad_norm(&mut grads, 1.0)?;
        optimizer.step(&grads, 1e-4)?;
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
        println!(
            "train step, batch {} × {} bytes: median {:.1} ms over {} runs",
            args.batch_size,
            seq_len,
            1e3 * median,
            times.len()
        );
    }
    Ok(())
}
