//! `perceiver`: the command line of Perceiver IO in Rust. Each subcommand parses its flags and
//! calls the library; nothing here knows about tensors.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// A line on stderr that cannot fail: progress and diagnostics must not end a run (or a
/// training's save) when stderr is a pipe its reader has closed (`2>&1 | head`).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A line on stdout, its failure returned with `?` (a closed pipe is then a quiet exit, a full
/// disk an error), where `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod autoencode;
mod classify;
mod convert;
mod fill_mask;
mod flow;
mod inputs;
mod model;
mod numbers;
mod outputs;
mod progress;
mod serve;
mod train;

// candle and the kernels allocate many short-lived buffers, which mimalloc serves faster than
// glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The most `--threads`: rayon starts them all at first use, and past the machine's cores
/// they only add memory and switching. No machine this runs on has near 1024 cores.
const MAX_THREADS: u64 = 1024;

#[derive(Parser)]
#[command(
    name = "perceiver",
    version,
    about = "Perceiver IO: fill masks with byte-level language models, classify images and texts, and more"
)]
struct Cli {
    /// Worker threads for the tensor kernels (default: all cores; at most 1024).
    #[arg(long, global = true, env = "PERCEIVER_THREADS", value_parser = numbers::whole::<u32>(1, MAX_THREADS))]
    threads: Option<u32>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict the masked bytes of texts.
    FillMask(fill_mask::FillMaskArgs),
    /// Classify images (ImageNet Perceivers) or texts (a sequence-classification model).
    Classify(classify::ClassifyArgs),
    /// Reconstruct a video's frames and audio and name its Kinetics labels
    /// (PerceiverForMultimodalAutoencoding).
    Autoencode(autoencode::AutoencodeArgs),
    /// Optical flow between two frames (PerceiverForOpticalFlow): a picture, a .flo file, a summary.
    Flow(flow::FlowArgs),
    /// Train a masked language model from scratch or fine-tune one (or a text classifier:
    /// --task classify).
    Train(Box<train::TrainArgs>),
    /// Masked-byte accuracy, loss and bits per byte of a model on text files (a classifier's
    /// accuracy and confusion table on labelled files).
    Eval(train::EvalArgs),
    /// Draw a training run's loss and accuracy curves (RUN_DIR/curves.svg).
    Plot(train::PlotArgs),
    /// Serve fill-mask, classification, optical flow or video autoencoding over HTTP, batching the
    /// requests of many clients.
    Serve(serve::ServeArgs),
    /// Write a model (above all a DeepMind .pickle / .pystate) as a transformers model directory.
    Convert(convert::ConvertArgs),
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Keep freed memory instead of returning it to the OS after 10 ms: attention scores and
    // gradients are tens of MB, allocated and freed every step, and re-faulting (and zeroing)
    // their pages would be a visible part of each step.
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
        note!(
            "error: internal error{place} (please report): {}",
            message.replace('\n', "; ")
        );
    }));
    // The matches too: `train --resume` asks which flags were typed rather than defaulted.
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
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
            note!("{} (see --help)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Some(threads) = cli.threads {
        // candle and rayon read this when their thread pools start, which is after this point.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let result = match cli.command {
        Command::FillMask(args) => fill_mask::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Flow(args) => flow::run(args),
        Command::Autoencode(args) => autoencode::run(args),
        Command::Train(args) => {
            let typed = matches
                .subcommand_matches("train")
                .map(train::typed_flags)
                .unwrap_or_default();
            train::run_train(*args, &typed)
        }
        Command::Eval(args) => train::run_eval(args),
        Command::Plot(args) => train::run_plot(args),
        Command::Serve(args) => serve::run(args),
        Command::Convert(args) => convert::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the output stopped reading (`| head`): what it wanted, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            note!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether the error is a write to standard output whose reader has gone. Only the outermost
/// error counts: stdout's writes fail with their bare I/O error, where a file's carry its path
/// (a `--flo` into a pipe whose reader died is an error, not a quiet exit).
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == BrokenPipe)
        // serde_json's error names the I/O error's kind but is not its source.
        || error
            .downcast_ref::<serde_json::Error>()
            .and_then(serde_json::Error::io_error_kind)
            == Some(BrokenPipe)
}

/// The error and its causes on one line, "outer: cause: …", whatever the layers below put in
/// their messages. A cause whose text its outer message already quotes (an error type that
/// prints its source itself) is not repeated.
pub(crate) fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', "; ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error that quotes its source in its own message, as many do.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read x.bin: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_is_written_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = anyhow::Error::new(Quoting(io())).context("loading the model");
        assert_eq!(
            one_line(&quoted),
            "loading the model: cannot read x.bin: no such file"
        );
        let plain = anyhow::Error::new(io()).context("loading the model");
        assert_eq!(one_line(&plain), "loading the model: no such file");
        let lines = anyhow::anyhow!("first\nsecond");
        assert_eq!(one_line(&lines), "first; second");
    }
}
