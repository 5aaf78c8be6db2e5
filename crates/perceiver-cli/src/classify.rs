//! `perceiver classify`.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::image::DecodeLimits;
use perceiver::{Classifier, LabelScore, Pixels};
use rayon::prelude::*;

use crate::model::{EngineArgs, ModelArgs};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  perceiver classify --model deepmind/vision-perceiver-fourier cat.jpg photos/\n  \
perceiver classify --model ./sentiment --text \"What a lovely day\" \"Dreadful service\""
)]
pub struct ClassifyArgs {
    /// Images (files, or directories: their image files), or texts with --text.
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    inputs: Vec<String>,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Labels shown per input, best first (at most the model's labels).
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,

    /// The inputs are texts, for a sequence-classification model.
    #[arg(long)]
    text: bool,

    /// Read the inputs from FILE (`-` for standard input), one per line: texts with --text,
    /// else image paths.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// Print one JSON line per input, in input order: the list transformers' classification
    /// pipelines return, `[{"label": …, "score": …}, …]`.
    #[arg(long)]
    json: bool,

    /// Inputs per forward pass (at most 256).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_SIZE))]
    batch_size: u32,

    /// Largest image, in pixels (width × height, read from the file's header before
    /// decoding); larger ones are an error. Default: Pillow's limit, as transformers.
    #[arg(long, default_value_t = DecodeLimits::PIL_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..=DecodeLimits::PIL_MAX_PIXELS))]
    max_image_pixels: u64,
}

/// The most inputs in one forward pass: a 224×224 image's encoder input is 50,176 rows.
const MAX_BATCH_SIZE: i64 = 256;

/// File extensions a directory argument's images are found by.
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

pub fn run(args: ClassifyArgs) -> Result<()> {
    // Each input with where it came from, for error messages (a text may be long).
    let lines: Vec<(String, String)> = match &args.input {
        Some(path) => read_lines(path)?
            .into_iter()
            .enumerate()
            .map(|(i, line)| (format!("{} line {}", path.display(), i + 1), line))
            .collect(),
        None => args
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| (format!("input {}", i + 1), input.clone()))
            .collect(),
    };
    let inputs: Vec<String> = if args.text {
        lines.iter().map(|(_, text)| text.clone()).collect()
    } else {
        let mut paths = Vec::new();
        for (where_, line) in &lines {
            if line.is_empty() {
                bail!("{where_} is empty: give an image file or a directory of them");
            }
            paths.extend(image_paths(Path::new(line))?);
        }
        paths
    };
    if inputs.is_empty() {
        bail!("no inputs to classify");
    }
    let classifier = args
        .model
        .load_classifier(args.engine.precision)?
        .with_decode_limits(DecodeLimits {
            max_pixels: args.max_image_pixels,
        });
    match (args.text, classifier.reads_images()) {
        (true, true) => bail!(
            "{} classifies images; leave out --text and give image files",
            classifier.model().architecture().name()
        ),
        (false, false) => bail!(
            "{} classifies text; pass --text",
            classifier.model().architecture().name()
        ),
        _ => {}
    }
    // Every text is checked before any runs.
    if args.text {
        for (where_, text) in &lines {
            classifier.tokenize(text).with_context(|| where_.clone())?;
        }
    }

    let (top_k, batch_size) = (args.top_k as usize, args.batch_size as usize);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for batch in inputs.chunks(batch_size) {
        let results = if args.text {
            let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
            classifier.classify_texts(&texts, top_k)?
        } else {
            let images = prepare_images(&classifier, batch)?;
            let refs: Vec<&Pixels> = images.iter().collect();
            classifier.classify_pixels(&refs, top_k)?
        };
        for (input, labels) in batch.iter().zip(&results) {
            if args.json {
                serde_json::to_writer(&mut out, labels)?;
                writeln!(out)?;
            } else {
                write_human(&mut out, input, labels)?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// Decodes and preprocesses a batch of image files, in parallel; the first failure names its
/// file.
fn prepare_images(classifier: &Classifier, paths: &[String]) -> Result<Vec<Pixels>> {
    paths
        .par_iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
            classifier.prepare_image(&bytes).with_context(|| path.clone())
        })
        .collect()
}

/// A file is itself; a directory is its image files (by extension), sorted by name.
fn image_paths(path: &Path) -> Result<Vec<String>> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.display().to_string()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
        let file = entry?.path();
        let is_image = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image && file.is_file() {
            files.push(file.display().to_string());
        }
    }
    if files.is_empty() {
        bail!(
            "{} holds no image files ({})",
            path.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    files.sort();
    Ok(files)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let content = if path.as_os_str() == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .context("cannot read standard input")?;
        buffer
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let content = String::from_utf8(content).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(content.lines().map(str::to_string).collect())
}

fn write_human(out: &mut impl Write, input: &str, labels: &[LabelScore]) -> std::io::Result<()> {
    writeln!(out, "{input}")?;
    for l in labels {
        writeln!(out, "  {:6.2}%  {}", 100.0 * l.score, l.label)?;
    }
    Ok(())
}
