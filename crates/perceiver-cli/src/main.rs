//! `perceiver`: the command line of Perceiver IO in Rust. Each subcommand parses its flags and
//! calls the library; nothing here knows about tensors.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod bench_serve;
mod fill_mask;
mod model;
mod serve;

// candle allocates many short-lived buffers; glibc's allocator measured up to 35% slower here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "perceiver",
    version,
    about = "Perceiver IO byte-level language models: fill masks, and more"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict the masked bytes of texts.
    FillMask(fill_mask::FillMaskArgs),
    /// Serve fill-mask over HTTP, batching the requests of many clients.
    Serve(serve::ServeArgs),
    /// Measure a fill-mask service's throughput and latency on loopback.
    BenchServe(bench_serve::BenchServeArgs),
}

fn main() -> ExitCode {
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
        // Help, version, and a bare `perceiver`: clap's own output.
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
    let result = match cli.command {
        Command::FillMask(args) => fill_mask::run(args),
        Command::Serve(args) => serve::run(args),
        Command::BenchServe(args) => bench_serve::run(args),
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
