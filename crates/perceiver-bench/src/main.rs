//! `perceiver-bench`: the developer's benchmarks of this repository, kept out of the `perceiver`
//! command. Most run our side and the pinned PyTorch reference (`scripts/bench_reference.py`)
//! side by side in one session; see README.md for setting up the reference and the bench model.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod autoencode;
mod batch_cost;
mod child;
mod classify;
mod flow;
mod inference;
mod latent;
mod load;
mod machine;
mod model;
mod serve;
mod stats;
mod train_step;

// The same allocator set-up as the `perceiver` binary, so that the timings are the product's:
// candle and the kernels allocate many short-lived buffers, which mimalloc serves faster than
// glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "perceiver-bench",
    version,
    about = "Benchmarks of Perceiver IO in Rust, side by side with the PyTorch reference (a developer tool)"
)]
struct Cli {
    /// Worker threads for the tensor kernels (default: all cores).
    #[arg(long, global = true, env = "PERCEIVER_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An image classifier, ours and transformers' side by side on the same weights and pixels.
    Classify(classify::ClassifyArgs),
    /// The optical-flow model on one tile, ours and transformers' side by side on the same weights.
    Flow(flow::FlowArgs),
    /// The multimodal autoencoder on one clip, ours and transformers' side by side on the same
    /// weights and clip, every query decoded in the Colab's 128 chunks.
    Autoencode(autoencode::AutoencodeArgs),
    /// Inference, ours and transformers' side by side on the same weights (workloads W1–W4).
    Inference(inference::InferenceArgs),
    /// One latent self-attention layer and its six weight products, ours and PyTorch's side by
    /// side, against the CPU's f32 FMA and `vdpbf16ps` peaks measured in the same run.
    Latent(latent::LatentArgs),
    /// One training step (the trainer's own: forward, backward over masked positions, clipping,
    /// AdamW).
    TrainStep(train_step::TrainStepArgs),
    /// Measure a fill-mask service's throughput and latency on loopback.
    Serve(serve::ServeArgs),
    /// The forward pass alone, no HTTP: milliseconds per text by batch size, batches in arrival
    /// order and grouped by length.
    BatchCost(batch_cost::BatchCostArgs),
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // As in `perceiver`: keep freed memory instead of returning it to the OS after 10 ms, since
    // re-faulting (and zeroing) the pages of big per-pass buffers is a visible share of a pass.
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // A bug must still end in one line on stderr and a non-zero exit, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error{place} (please report): {}",
            message.replace('\n', "; ")
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help, version, and a bare `perceiver-bench`: clap's own output.
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        // A usage error: its message on one line (clap spreads it over several), exit status 2.
        Err(e) => {
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see --help)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Some(threads) = cli.threads {
        // candle and rayon read this when their thread pools start, which is after this point.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let result = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Flow(args) => flow::run(args),
        Command::Autoencode(args) => autoencode::run(args),
        Command::Inference(args) => inference::run(args),
        Command::Latent(args) => latent::run(args),
        Command::TrainStep(args) => train_step::run(args),
        Command::Serve(args) => serve::run(args),
        Command::BatchCost(args) => batch_cost::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the layers below put in their messages.
            eprintln!("error: {}", format!("{e:#}").replace('\n', "; "));
            ExitCode::FAILURE
        }
    }
}
