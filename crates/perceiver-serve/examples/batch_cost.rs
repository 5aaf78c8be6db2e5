//! Where could batching's throughput come from? The library's forward pass alone, no HTTP:
//! milliseconds per text at several batch sizes, with batches taken in arrival order (mixed
//! lengths, padded to the longest) and grouped by length (little padding).
//!
//! ```sh
//! cargo run --release -p perceiver-serve --example batch_cost -- MODEL_DIR [TEXTS] [BATCH,SIZES]
//! ```
//!
//! A benchmark, not a test: the figures depend on the machine and its load.

use std::time::Instant;

use perceiver::{FillMask, Loader, MaskedText};
use perceiver_serve::bench::synthetic_texts;

// As in the `perceiver` binary: mimalloc, keeping freed pages (re-faulting the batch's buffers
// costs several percent of a pass).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
/// mimalloc's `mi_option_purge_delay` (mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: batch_cost MODEL_DIR [TEXTS] [BATCH,SIZES]")?;
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,4,16,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let fill = FillMask::new(Loader::new(dir.as_str()).load()?)?;
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
    let gflop = fill.model().forward_flops(&lens, &counts) / 1e9;
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
