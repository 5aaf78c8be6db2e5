//! `perceiver classify`.

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::image::{has_image_extension, DecodeLimits, IMAGE_EXTENSIONS};
use perceiver::{Architecture, Classifier, LabelScore, Pixels};
use rayon::prelude::*;

use crate::model::{image_error, EngineArgs, ModelArgs};
use crate::numbers::whole;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  perceiver classify --model deepmind/vision-perceiver-fourier cat.jpg photos/\n  \
perceiver classify --model ./sentiment --text \"What a lovely day\" \"Dreadful service\""
)]
pub struct ClassifyArgs {
    /// Images (files, or directories: their image files), or texts with --text.
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    inputs: Vec<OsString>,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Labels shown per input, best first (at most the model's labels).
    #[arg(short = 'k', long, default_value_t = 5, value_parser = whole::<u32>(1, u32::MAX.into()))]
    top_k: u32,

    /// The inputs are texts, for a sequence-classification model.
    #[arg(long)]
    text: bool,

    /// Read the inputs from FILE (`-` for standard input), one per line: texts with --text,
    /// else image paths.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// Print one JSON line per input classified, in input order: the list transformers' classification
    /// pipelines return, `[{"label": …, "score": …}, …]`, each entry also naming its `input`
    /// (an image's path, "input N" for the Nth text).
    #[arg(long)]
    json: bool,

    /// Inputs per forward pass (at most 256).
    #[arg(long, default_value_t = 8, value_parser = whole::<u32>(1, MAX_BATCH_SIZE))]
    batch_size: u32,

    /// Largest image, in pixels (width × height, read from the file's header before
    /// decoding); larger ones are an error. Default: Pillow's limit, as transformers.
    #[arg(long, default_value_t = DecodeLimits::PIL_MAX_PIXELS, value_parser = whole::<u64>(1, DecodeLimits::PIL_MAX_PIXELS))]
    max_image_pixels: u64,
}

/// The most inputs in one forward pass: a 224×224 image's encoder input is 50,176 rows.
const MAX_BATCH_SIZE: u64 = 256;

/// The inputs to classify, with how each is named in output and messages.
enum Inputs {
    /// Texts, each with where it came from ("input 2", "list.txt line 3").
    Texts(Vec<(String, String)>),
    /// Image files, kept as paths (a file name need not be UTF-8).
    Images(Vec<PathBuf>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Texts(texts) => texts.len(),
            Inputs::Images(paths) => paths.len(),
        }
    }

    /// How input `i` is named in output: an image by its path (lossily where it is not UTF-8),
    /// a text by itself, or in JSON by its place ("input 3"), as a text may be long.
    fn name(&self, i: usize, json: bool) -> String {
        match self {
            Inputs::Texts(_) if json => format!("input {}", i + 1),
            Inputs::Texts(texts) => texts[i].1.clone(),
            Inputs::Images(paths) => paths[i].display().to_string(),
        }
    }
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    // Each input with where it came from, for error messages (a text may be long).
    let lines: Vec<(String, OsString)> = match &args.input {
        Some(path) => crate::inputs::read_lines(path)?
            .into_iter()
            .enumerate()
            .map(|(i, line)| (format!("{} line {}", path.display(), i + 1), line.into()))
            .collect(),
        None => args
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| (format!("input {}", i + 1), input.clone()))
            .collect(),
    };
    let inputs = if args.text {
        let mut texts = Vec::with_capacity(lines.len());
        for (where_, text) in lines {
            let Ok(text) = text.into_string() else {
                bail!("{where_} is not UTF-8 text");
            };
            texts.push((where_, text));
        }
        Inputs::Texts(texts)
    } else {
        let mut paths = Vec::new();
        for (where_, line) in &lines {
            if line.is_empty() {
                bail!("{where_} is empty: give an image file or a directory of them");
            }
            paths.extend(image_paths(Path::new(line))?);
        }
        Inputs::Images(paths)
    };
    let count = inputs.len();
    if count == 0 {
        bail!("no inputs to classify");
    }
    // The model's task and input kind are checked before its weights load where its config
    // comes alone (a hub id's weights are not downloaded for nothing), else once it has loaded.
    args.model
        .check_task(|architecture| check_input_kind(args.text, architecture))?;
    let classifier = args
        .model
        .load_classifier(args.engine.precision)?
        .with_decode_limits(DecodeLimits {
            max_pixels: args.max_image_pixels,
        });
    check_input_kind(args.text, classifier.model().architecture())?;
    // Every text is checked before any runs.
    if let Inputs::Texts(texts) = &inputs {
        for (where_, text) in texts {
            classifier.tokenize(text).with_context(|| where_.clone())?;
        }
    }

    let (top_k, batch_size) = (args.top_k as usize, args.batch_size as usize);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    // Images that cannot be read or prepared are named on stderr in their place and passed
    // over, so that one damaged file does not end a run over thousands; the exit status still
    // says so.
    let mut passed_over: Vec<anyhow::Error> = Vec::new();
    for start in (0..count).step_by(batch_size) {
        let end = (start + batch_size).min(count);
        let results: Vec<Result<Vec<LabelScore>>> = match &inputs {
            Inputs::Texts(texts) => {
                let batch: Vec<&str> = texts[start..end].iter().map(|(_, text)| text.as_str()).collect();
                classifier
                    .classify_texts(&batch, top_k)?
                    .into_iter()
                    .map(Ok)
                    .collect()
            }
            Inputs::Images(paths) => classify_images(&classifier, &paths[start..end], top_k)?,
        };
        for (i, result) in (start..end).zip(results) {
            match result {
                Ok(labels) if args.json => write_json(&mut out, &inputs.name(i, true), &labels)?,
                Ok(labels) => write_human(&mut out, &inputs.name(i, false), &labels)?,
                Err(e) => {
                    if count > 1 {
                        // After the lines before it, where a terminal shows both.
                        out.flush()?;
                        note!("error: {}", crate::one_line(&e));
                    }
                    passed_over.push(e);
                }
            }
        }
        out.flush()?;
    }
    match passed_over.len() {
        0 => Ok(()),
        // Alone, its own message is the run's.
        _ if count == 1 => Err(passed_over.remove(0)),
        n if n == count => bail!("none of the {count} images could be classified (named above)"),
        n => bail!("{n} of {count} images could not be classified (named above); the others were"),
    }
}

/// A batch of image files' labels, each an error where the file cannot be read or decoded.
/// A failing forward pass is the whole batch's error.
fn classify_images(
    classifier: &Classifier,
    paths: &[PathBuf],
    top_k: usize,
) -> Result<Vec<Result<Vec<LabelScore>>>> {
    let prepared = prepare_images(classifier, paths);
    let images: Vec<&Pixels> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut labels = match images.is_empty() {
        true => Vec::new(),
        false => classifier.classify_pixels(&images, top_k)?,
    }
    .into_iter();
    Ok(prepared
        .into_iter()
        .map(|p| {
            p.and_then(|_| {
                labels
                    .next()
                    .context("the model answered fewer images than it was given")
            })
        })
        .collect())
}

/// Decodes and preprocesses a batch of image files, in parallel; each failure names its file.
fn prepare_images(classifier: &Classifier, paths: &[PathBuf]) -> Vec<Result<Pixels>> {
    paths
        .par_iter()
        .map(|path| {
            let bytes = perceiver::image::read_image_file(path, &classifier.decode_limits()).map_err(
                |e| match e {
                    // It names the file already.
                    e @ perceiver::Error::Io { .. } => anyhow::Error::from(e),
                    e => image_error(e).context(path.display().to_string()),
                },
            )?;
            classifier
                .prepare_image(&bytes)
                .map_err(image_error)
                .with_context(|| path.display().to_string())
        })
        .collect()
}

/// A file is itself; a directory is its image files (by extension), sorted by name, hidden ones
/// (named from a dot, such as macOS's `._photo.jpg`) passed over.
fn image_paths(path: &Path) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
        let file = entry?.path();
        if perceiver::tasks::is_hidden(&file) {
            continue;
        }
        if has_image_extension(&file) && file.is_file() {
            files.push(file);
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

/// One JSON line: the pipeline's list, each entry also naming the input.
fn write_json(out: &mut impl Write, input: &str, labels: &[LabelScore]) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        label: &'a str,
        score: f32,
        input: &'a str,
    }
    let entries: Vec<Entry> = labels
        .iter()
        .map(|l| Entry {
            label: &l.label,
            score: l.score,
            input,
        })
        .collect();
    serde_json::to_writer(&mut *out, &entries)?;
    writeln!(out)?;
    Ok(())
}

fn write_human(out: &mut impl Write, input: &str, labels: &[LabelScore]) -> std::io::Result<()> {
    writeln!(out, "{input}")?;
    write_label_lines(out, labels)
}

/// Labels as the tool prints them for people: one a line, its probability in percent first
/// (`classify`, and `autoencode`'s clip labels).
pub fn write_label_lines(out: &mut impl Write, labels: &[LabelScore]) -> std::io::Result<()> {
    for l in labels {
        writeln!(out, "  {:6.2}%  {}", 100.0 * l.score, l.label)?;
    }
    Ok(())
}

/// An error unless `architecture` is a classifier of the inputs given: texts (`--text`) or
/// images.
fn check_input_kind(text: bool, architecture: Architecture) -> Result<()> {
    Classifier::check_architecture(architecture)?;
    match (text, architecture.reads_images()) {
        (true, true) => bail!(
            "{} classifies images; leave out --text and give image files",
            architecture.name()
        ),
        (false, false) => bail!("{} classifies text; pass --text", architecture.name()),
        _ => Ok(()),
    }
}
