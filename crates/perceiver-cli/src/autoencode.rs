//! `perceiver autoencode`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::tasks::autoencode::{Autoencoder, InputReader, DEFAULT_CHUNKS, MAX_CHUNKS};
use perceiver::{Architecture, LabelScore};

use crate::classify::write_label_lines;
use crate::model::{EngineArgs, ModelArgs};
use crate::numbers::whole;
use crate::outputs::{self, resolved, MadeDirs};
use crate::progress;

#[derive(Args)]
#[command(
    after_help = "Example:\n  perceiver autoencode --model deepmind/multimodal-perceiver --frames clip/ --audio clip.wav --out reconstruction/"
)]
pub struct AutoencodeArgs {
    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// The video: a directory of exactly the model's number of frames (PNG or JPEG, in name
    /// order, numbers by value: 2.png before 10.png), or a .y4m file (its first frames, 25 a
    /// second); each of the model's frame size (16 of 224x224 for the released model).
    #[arg(long, value_name = "DIR|Y4M")]
    frames: PathBuf,

    /// The frames' audio: a WAV file at the model's rate (48 kHz for the released model), at
    /// least the frames' length; its first channel is used.
    #[arg(long, value_name = "WAV")]
    audio: PathBuf,

    /// Where to write the reconstruction: frames/frame_000.png…, audio.wav, labels.json.
    #[arg(long, value_name = "DIR", required_unless_present = "labels_only")]
    out: Option<PathBuf>,

    /// Only name the clip's labels: decode the label's query alone, not every pixel and audio
    /// sample (a small part of a reconstruction's time), and write no files.
    #[arg(long, conflicts_with_all = ["out", "chunks"])]
    labels_only: bool,

    /// Decode the output queries in this many chunks (DeepMind's Colab uses 128; more than the
    /// queries of the model's most numerous modality count as that many); memory beyond the
    /// reconstruction does not grow with the queries a chunk decodes.
    #[arg(long, default_value_t = DEFAULT_CHUNKS as u32, value_parser = whole::<u32>(1, MAX_CHUNKS as u64))]
    chunks: u32,

    /// Labels reported, best first.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = whole::<u32>(1, u32::MAX.into()))]
    top_k: u32,

    /// Print one JSON line: the files written and the labels (with --labels-only, the labels).
    #[arg(long)]
    json: bool,
}

pub fn run(args: AutoencodeArgs) -> Result<()> {
    let made = match &args.out {
        Some(out) => Some(check_out(&args, out)?),
        None => None,
    };
    // Every input is read and checked against the model's config before its weights load
    // where the config comes alone (the released model's weights are some 800 MB to download);
    // a DeepMind checkpoint's config is read with its weights, so the model loads first.
    let (config, loaded) = match args.model.config_before_weights()? {
        Some(config) => (config, None),
        None => {
            let model = args.model.load_engine(args.engine.precision)?;
            (model.config().clone(), Some(model))
        }
    };
    Autoencoder::check_architecture(Architecture::of(&config)?)?;
    let reader = InputReader::new(config.multimodal()?);
    let frames = reader.frames_from(&args.frames)?;
    let audio = reader.audio_from_wav(&args.audio)?;
    let (Some(out_dir), Some(made)) = (&args.out, made) else {
        let model = match loaded {
            Some(model) => model,
            None => args.model.load_engine(args.engine.precision)?,
        };
        return print_labels(&Autoencoder::new(model)?, frames, audio, &args);
    };
    let frames_dir = out_dir.join("frames");
    // Their number known (the model's), the frame files are checked as the other outputs were.
    let frame_files: Vec<PathBuf> = (0..frames.len())
        .map(|t| frames_dir.join(format!("frame_{t:03}.png")))
        .collect();
    let frame_outputs: Vec<(&str, &Path)> = frame_files.iter().map(|p| ("--out", p.as_path())).collect();
    outputs::check_files(&[&args.frames, &args.audio], &frame_outputs)?;
    let model = match loaded {
        Some(model) => model,
        None => args.model.load_engine(args.engine.precision)?,
    };
    let task = Autoencoder::new(model)?.with_chunks(args.chunks as usize)?;
    // The clip encoded once and decoded a chunk at a time (the same numbers as
    // `Autoencoder::autoencode`), so that a terminal can show the chunks go by.
    let bar = progress::bar(task.chunks(), "chunks");
    let clip = task.encode(frames, audio)?;
    let decoded = (0..task.chunks())
        .map(|index| {
            let chunk = task.decode(&clip, &task.chunk(index));
            bar.inc(1);
            chunk
        })
        .collect::<perceiver::Result<Vec<_>>>()?;
    bar.finish_and_clear();
    drop(clip);
    let output = task.assemble(decoded, args.top_k as usize)?;

    let mut staged = outputs::Staged::default();
    // The library writes the frames into a directory: a new one beside them, whose files are
    // then staged as the other outputs are, and which goes when it is dropped.
    let written = tempfile::Builder::new()
        .prefix(".frames.")
        .tempdir_in(&frames_dir)
        .with_context(|| format!("cannot write into {}", frames_dir.display()))?;
    let mut frame_paths = Vec::new();
    let files = task
        .write_frames(&output.reconstruction, written.path())
        .map_err(|e| match e {
            // Named by its place, not by the directory it is first written in.
            perceiver::Error::Write { path, source } => perceiver::Error::Write {
                path: frames_dir.join(path.file_name().unwrap_or_default()),
                source,
            },
            other => other,
        })?;
    for file in files {
        let path = frames_dir.join(file.file_name().unwrap_or_default());
        staged.write(&path, |to| {
            // Copied where a link takes the frame's place to another file system.
            std::fs::rename(&file, to)
                .or_else(|_| std::fs::copy(&file, to).map(drop))
                .with_context(|| format!("cannot write {}", path.display()))
        })?;
        frame_paths.push(path);
    }
    let wav = out_dir.join("audio.wav");
    staged.write(&wav, |to| Ok(task.write_wav(&output.reconstruction, to)?))?;
    let labels_path = out_dir.join("labels.json");
    let labels = serde_json::to_string(&output.labels)?;
    staged.write(&labels_path, |to| {
        std::fs::write(to, format!("{labels}\n"))
            .with_context(|| format!("cannot write {}", labels_path.display()))
    })?;
    staged.finish()?;
    made.keep();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        // A struct, not a `json!` value: the scores keep their f32 spelling, as in labels.json.
        #[derive(serde::Serialize)]
        struct Summary<'a> {
            frames: &'a [PathBuf],
            audio: &'a Path,
            labels_file: &'a Path,
            labels: &'a [LabelScore],
        }
        let summary = Summary {
            frames: &frame_paths,
            audio: &wav,
            labels_file: &labels_path,
            labels: &output.labels,
        };
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        let r = &output.reconstruction;
        writeln!(
            out,
            "reconstructed {} frames of {}x{} and {} audio samples in {} chunk(s) into {}",
            r.frames,
            r.height,
            r.width,
            r.audio.len(),
            task.chunks(),
            out_dir.display()
        )?;
        write_label_lines(&mut out, &output.labels)?;
    }
    Ok(())
}

/// `--labels-only`: the clip encoded and only its label's query decoded; the labels printed as
/// a full run prints them (`--json`: `{"labels": [...]}`).
fn print_labels(
    task: &Autoencoder,
    frames: Vec<perceiver::Pixels>,
    audio: Vec<f32>,
    args: &AutoencodeArgs,
) -> Result<()> {
    let clip = task.encode(frames, audio)?;
    let decoded = task.decode(&clip, &task.label_query())?;
    let logits = decoded
        .label
        .context("the label's query was not decoded (please report)")?;
    let labels = task.top_labels(&logits, args.top_k as usize)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        #[derive(serde::Serialize)]
        struct Summary<'a> {
            labels: &'a [LabelScore],
        }
        serde_json::to_writer(&mut out, &Summary { labels: &labels })?;
        writeln!(out)?;
    } else {
        writeln!(out, "labels of the clip (its label's query alone decoded):")?;
        write_label_lines(&mut out, &labels)?;
    }
    Ok(())
}

/// Refuses, before anything is read or loaded, an `--out` that could not be written or would
/// write over the inputs: the reconstruction's frames written into the input frames directory
/// would be read as frames by the next run. `--out` and its `frames/` are made (and removed
/// again if the run fails) and a file is created in each, so that one that cannot be written
/// is found now.
fn check_out(args: &AutoencodeArgs, out: &Path) -> Result<MadeDirs> {
    let frames_dir = out.join("frames");
    let inputs = resolved(&args.frames);
    if inputs == resolved(out) || inputs == resolved(&frames_dir) {
        bail!(
            "--out {} would write the reconstruction into the input frames directory {}: give another directory",
            out.display(),
            args.frames.display()
        );
    }
    let mut made = MadeDirs::default();
    outputs::make_dir("--out", out, &mut made)?;
    outputs::make_dir("--out", &frames_dir, &mut made)?;
    // An existing --out may hold an input (a run on an earlier run's audio.wav).
    outputs::check_files(
        &[&args.frames, &args.audio],
        &[
            ("--out", &out.join("audio.wav")),
            ("--out", &out.join("labels.json")),
        ],
    )?;
    Ok(made)
}
