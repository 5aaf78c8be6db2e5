//! `perceiver autoencode`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::tasks::autoencode::{Autoencoder, InputReader, DEFAULT_CHUNKS, MAX_CHUNKS};
use perceiver::{Architecture, LabelScore};

use crate::model::{EngineArgs, ModelArgs};
use crate::outputs::{self, resolved};

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
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Decode the output queries in this many chunks (DeepMind's Colab uses 128); memory beyond
    /// the reconstruction does not grow with the queries a chunk decodes.
    #[arg(long, default_value_t = DEFAULT_CHUNKS as u32, value_parser = clap::value_parser!(u32).range(1..=MAX_CHUNKS as i64))]
    chunks: u32,

    /// Labels reported, best first.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,

    /// Print one JSON line: the files written and the labels.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AutoencodeArgs) -> Result<()> {
    check_out(&args)?;
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
    let model = match loaded {
        Some(model) => model,
        None => args.model.load_engine(args.engine.precision)?,
    };
    let task = Autoencoder::new(model)?.with_chunks(args.chunks as usize)?;
    let output = task.autoencode(frames, audio, args.top_k as usize)?;

    let frame_paths = task.write_frames(&output.reconstruction, &args.out.join("frames"))?;
    let wav = args.out.join("audio.wav");
    task.write_wav(&output.reconstruction, &wav)?;
    let labels_path = args.out.join("labels.json");
    let labels = serde_json::to_string(&output.labels)?;
    std::fs::write(&labels_path, format!("{labels}\n"))
        .with_context(|| format!("cannot write {}", labels_path.display()))?;

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
            args.chunks,
            args.out.display()
        )?;
        for label in &output.labels {
            writeln!(out, "{:>7.4}  {}", label.score, label.label)?;
        }
    }
    Ok(())
}

/// Refuses, before anything is read or loaded, an `--out` that could not be written or would
/// write over the inputs: the reconstruction's frames written into the input frames directory
/// would be read as frames by the next run.
fn check_out(args: &AutoencodeArgs) -> Result<()> {
    let out = &args.out;
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file; give a directory", out.display());
    }
    // It is created if missing: the nearest part of it that exists must be a directory.
    if let Some(existing) = out.ancestors().skip(1).find(|a| a.exists()) {
        if !existing.is_dir() {
            bail!(
                "cannot create --out {}: {} is not a directory",
                out.display(),
                existing.display()
            );
        }
    }
    let frames_dir = out.join("frames");
    let inputs = resolved(&args.frames);
    if inputs == resolved(out) || inputs == resolved(&frames_dir) {
        bail!(
            "--out {} would write the reconstruction into the input frames directory {}: give another directory",
            out.display(),
            args.frames.display()
        );
    }
    if frames_dir.exists() && !frames_dir.is_dir() {
        bail!(
            "cannot write the frames into {}: it is not a directory",
            frames_dir.display()
        );
    }
    // An existing --out may hold an input (a run on an earlier run's audio.wav).
    if out.is_dir() {
        outputs::check_files(
            &[&args.frames, &args.audio],
            &[
                ("--out", &out.join("audio.wav")),
                ("--out", &out.join("labels.json")),
            ],
        )?;
    }
    Ok(())
}
