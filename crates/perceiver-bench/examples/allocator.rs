//! What the global allocator costs a forward pass: a batch of eight short texts and one text of
//! 2,048 tokens through the public API, in f32 and bf16, with the page faults per pass. Run it
//! once with mimalloc (as the `perceiver` tool) and once with the system allocator:
//!
//! ```text
//! cargo run --release -p perceiver-bench --example allocator
//! cargo run --release -p perceiver-bench --example allocator --features system-allocator
//! ```
//!
//! Model: `target/full-random` (`scripts/make_parity_fixtures.py --full`) or the directory given.

use std::time::Instant;

use perceiver::{Loader, Precision};

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`, set as the `perceiver` tool sets it.
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Minor page faults of this process so far (Linux; 0 elsewhere).
fn minor_faults() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command's closing parenthesis: state is the first, minflt the eighth.
    stat.rfind(')')
        .and_then(|end| stat[end + 2..].split(' ').nth(7))
        .and_then(|field| field.parse().ok())
        .unwrap_or(0)
}

fn main() -> perceiver::Result<()> {
    #[cfg(not(feature = "system-allocator"))]
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
    let allocator = if cfg!(feature = "system-allocator") {
        "system"
    } else {
        "mimalloc"
    };
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/full-random".into());
    let long: Vec<u32> = (0..2048u32).map(|i| 6 + (i * 37) % 250).collect();
    let short: Vec<Vec<u32>> = (0..8u32)
        .map(|t| (0..40 + t * 20).map(|i| 6 + (i * 31 + t) % 250).collect())
        .collect();
    let short: Vec<&[u32]> = short.iter().map(Vec::as_slice).collect();
    let positions: Vec<Vec<usize>> = short.iter().map(|t| (0..t.len()).step_by(7).collect()).collect();
    let positions: Vec<&[usize]> = positions.iter().map(Vec::as_slice).collect();
    for precision in [Precision::F32, Precision::Bf16] {
        let model = Loader::new(dir.as_str()).precision(precision).load()?;
        for workload in ["8 short texts", "one 2048-token text"] {
            let pass = || -> perceiver::Result<()> {
                if workload == "8 short texts" {
                    std::hint::black_box(model.logits_at(&short, &positions)?);
                } else {
                    std::hint::black_box(model.logits_all(&long)?);
                }
                Ok(())
            };
            pass()?;
            pass()?;
            let faults = minor_faults();
            let mut times = Vec::new();
            let start = Instant::now();
            while times.len() < 5 || start.elapsed().as_secs_f64() < 8.0 {
                let t = Instant::now();
                pass()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let per_pass = (minor_faults() - faults) as f64 / times.len() as f64;
            times.sort_by(f64::total_cmp);
            println!(
                "{allocator:8} {precision:?} {workload:20}: median {:7.1} ms of {} passes, {per_pass:.0} page faults a pass",
                times[times.len() / 2],
                times.len(),
            );
        }
    }
    Ok(())
}
