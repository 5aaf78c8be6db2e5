//! `perceiver-bench batch-cost`: where could batching's throughput come from? The library's
//! forward pass alone, no HTTP: milliseconds per text at several batch sizes, with batches taken
//! in arrival order (mixed lengths, padded to the longest) and grouped by length (little padding).
//!
//! ```sh
//! perceiver-bench batch-cost MODEL_DIR [TEXTS] [BATCH,SIZES]
//! ```
//!
//! A benchmark, not a test: the figures depend on the machine and its load.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::{FillMask, Loader, MaskedText};

use crate::load::synthetic_texts;

#[derive(Args)]
pub struct BatchCostArgs {
    /// The model (a directory: config.json + weights).
    model_dir: PathBuf,
    /// Texts (generated, 24-160 bytes, one masked word each).
    #[arg(default_value_t = 64)]
    texts: usize,
    /// Batch sizes, comma-separated.
    #[arg(value_delimiter = ',', default_value = "1,4,16,32")]
    batch_sizes: Vec<usize>,
}

pub fn run(args: BatchCostArgs) -> Result<()> {
    let (count, sizes) = (args.texts, args.batch_sizes);
    if count == 0 || sizes.is_empty() || sizes.contains(&0) {
        bail!("the number of texts and the batch sizes must be positive");
    }
    let fill = FillMask::new(Loader::new(args.model_dir.to_string_lossy()).load()?)?;
    let inputs: Vec<MaskedText> = synthetic_texts(count, fill.model().max_len(), 1)
        .iter()
        .map(|t| fill.prepare(t, false))
        .collect::<Result<_, _>>()?;
    let mut by_length = inputs.clone();
    by_length.sort_by_key(|i| i.ids.len());
    // One untimed pass: first-touch allocations.
    fill.predict(&inputs[..1], 5)?;
    // The products' work without padding: what GFLOP/s are counted against.
    let lens: Vec<usize> = inputs.iter().map(|i| i.ids.len()).collect();
    let counts: Vec<usize> = inputs.iter().map(|i| i.mask_positions.len()).collect();
    let gflop = fill
        .model()
        .forward_flops(&lens, &counts)
        .context("not a masked LM")?
        / 1e9;
    println!("{count} texts of 24-160 bytes, one masked word each ({gflop:.1} GFLOP unpadded); ms per text");
    println!(
        "| batch | arrival order | grouped by length | GFLOP/s grouped | padded tokens, arrival / grouped |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        let mut row = Vec::new();
        let mut padded = Vec::new();
        for order in [&inputs, &by_length] {
            let start = Instant::now();
            let mut tokens = 0;
            for batch in order.chunks(size) {
                fill.predict(batch, 5)?;
                tokens += batch.len() * batch.iter().map(|i| i.ids.len()).max().unwrap_or(0);
            }
            row.push(start.elapsed().as_secs_f64() * 1e3 / count as f64);
            padded.push(tokens);
        }
        println!(
            "| {size} | {:.2} | {:.2} | {:.0} | {} / {} |",
            row[0],
            row[1],
            gflop / (row[1] * count as f64 / 1e3),
            padded[0],
            padded[1]
        );
    }
    Ok(())
}
