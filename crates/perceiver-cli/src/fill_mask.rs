//! `perceiver fill-mask`.

use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::{FillMask, FillMaskOutput, MaskedText};

use crate::model::{EngineArgs, ModelArgs};
use crate::numbers::whole;

#[derive(Args)]
#[command(
    after_help = "In TEXT, [MASK] is one masked byte and [MASK:n] is n masked bytes.\n\
Example: perceiver fill-mask --model deepmind/language-perceiver \\\n    \"This is an incomplete sentence where some words are[MASK:9]\""
)]
pub struct FillMaskArgs {
    /// The text, with [MASK] / [MASK:n] where bytes are masked (or plain, with --mask-range).
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    text: Option<String>,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Mask the bytes START..END of the plain text (byte offsets, end exclusive).
    #[arg(long, value_name = "START..END", value_parser = parse_range)]
    mask_range: Option<Range<usize>>,

    /// Number of candidates shown per masked byte (at most the vocabulary's 262).
    #[arg(short = 'k', long, default_value_t = 5, value_parser = whole::<u32>(1, perceiver::tokenizer::VOCAB_SIZE as u64))]
    top_k: u32,

    /// Wrap the input in [CLS] … [SEP] as transformers' tokenizer does (DeepMind's does not).
    #[arg(long)]
    add_special_tokens: bool,

    /// Print one JSON object per text instead of the human-readable report.
    #[arg(long)]
    json: bool,

    /// Read texts from FILE (`-` for standard input), one per line; prints one JSON object per line.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// Texts per forward pass with --input (at most 1024).
    #[arg(long, default_value_t = 8, value_parser = whole::<u32>(1, MAX_BATCH_SIZE))]
    batch_size: u32,
}

/// The most texts in one forward pass, whose memory grows with the texts it holds: 128 times
/// the default.
const MAX_BATCH_SIZE: u64 = 1024;

fn parse_range(s: &str) -> Result<Range<usize>, String> {
    let (start, end) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range START..END"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{v:?} in {s:?} is not a byte offset"))
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if start >= end {
        return Err(format!("range {s} is empty"));
    }
    Ok(start..end)
}

pub fn run(args: FillMaskArgs) -> Result<()> {
    let texts: Vec<(String, String)> = match (&args.text, &args.input) {
        (Some(text), _) => vec![(String::new(), text.clone())],
        (None, Some(path)) => crate::inputs::read_lines(path)?
            .into_iter()
            .enumerate()
            .map(|(i, line)| (format!("{} line {}", path.display(), i + 1), line))
            .collect(),
        (None, None) => bail!("give a text or --input FILE"),
    };
    if texts.is_empty() {
        bail!("the input file has no lines");
    }
    // Every text is checked before the model loads (a typo costs no load or download time),
    // without building its ids (a short line can stand for a million); each is then built
    // against the model's positions a window at a time, so memory holds one window of texts.
    for (where_, text) in &texts {
        let checked = FillMask::precheck(text, args.mask_range.clone(), args.add_special_tokens);
        in_context(checked.map_err(anyhow::Error::from), where_)?;
    }
    args.model.check_task(FillMask::check_architecture)?;
    let fill = FillMask::new(args.model.load_engine(args.engine.precision)?)?;
    for (where_, text) in &texts {
        let checked = fill.check_text(text, args.mask_range.clone(), args.add_special_tokens);
        in_context(checked.map_err(anyhow::Error::from), where_)?;
    }
    let tokenize = |text: &str| -> Result<MaskedText> {
        Ok(fill.prepare_with(text, args.mask_range.clone(), args.add_special_tokens)?)
    };

    // Answers stream out a window at a time; within a window, texts of similar length share
    // batches. A window of 16 batches keeps that grouping useful and the wait for output short.
    let (top_k, batch_size) = (args.top_k as usize, args.batch_size as usize);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for window in texts.chunks(batch_size * 16) {
        let inputs: Vec<MaskedText> = window
            .iter()
            .map(|(_, text)| tokenize(text))
            .collect::<Result<_>>()?;
        for output in fill.predict_many(&inputs, top_k, batch_size)? {
            if args.json || args.input.is_some() {
                serde_json::to_writer(&mut out, &output)?;
                writeln!(out)?;
            } else {
                write_human(&mut out, &output)?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// Prefixes errors about one line of an input file with where it is.
fn in_context<T>(result: Result<T>, where_: &str) -> Result<T> {
    if where_.is_empty() {
        result
    } else {
        result.with_context(|| where_.to_string())
    }
}

fn write_human(out: &mut impl Write, output: &FillMaskOutput) -> std::io::Result<()> {
    writeln!(out, "{}", output.sequence)?;
    for mask in &output.masks {
        write!(out, "  [{}]", mask.position)?;
        for c in &mask.candidates {
            write!(out, "  {:?} {:.2}%", c.token_str, 100.0 * c.score)?;
        }
        writeln!(out)?;
    }
    Ok(())
}
