//! `perceiver-bench autoencode`: DeepMind's multimodal autoencoder on one clip, ours and
//! transformers' (PyTorch) on the same weights and the same synthetic clip, f32 and bf16, in one
//! run: ours first, then `scripts/bench_autoencode_reference.py`. Each precision of each side runs
//! in its own process, so that its peak memory is its own. Every query is decoded in `--chunks`
//! chunks (the Colab's 128) on both sides; ours encodes the clip once and decodes the chunks from
//! its latents, transformers runs the whole model once per chunk, as the Colab calls it. Medians
//! over rounds after a warm-up; the reconstructions compared between the sides; our time split
//! by part of the pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::config::MultimodalSpec;
use perceiver::decoder::MultimodalQueries;
use perceiver::preprocess::MultimodalInput;
use perceiver::tasks::autoencode::DEFAULT_CHUNKS;
use perceiver::{Autoencoder, Loader, Pixels, Precision};
use serde_json::{json, Value};

use crate::child::{our_worker, reference_results, PythonArgs};
use crate::stats::{median, peak_rss_mib, precision_name, print_phases};

#[derive(Args)]
pub struct AutoencodeArgs {
    /// The model to time (a directory). Make the released layout with random weights with
    /// `.venv-ref/bin/python scripts/make_multimodal_fixtures.py --full target/multimodal-random`.
    #[arg(long, default_value = "target/multimodal-random")]
    model: PathBuf,
    /// Precisions, each timed in its own process.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    precisions: Vec<Precision>,
    /// Chunks the queries are decoded in, on both sides (DeepMind's Colab: 128).
    #[arg(long, default_value_t = DEFAULT_CHUNKS)]
    chunks: usize,
    /// Our timed clips per precision, after one warm-up clip.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// transformers' timed clips per precision, after one warm-up call (one chunk's): a clip
    /// there is `--chunks` runs of the whole model, minutes on a few cores.
    #[arg(long, default_value_t = 1)]
    reference_rounds: usize,
    #[command(flatten)]
    reference: PythonArgs,
    /// Run one precision in this process and print its result as JSON (what the bench spawns).
    #[arg(long, hide = true)]
    worker: Option<Precision>,
    /// Where a worker writes its last reconstruction (raw little-endian f32 files).
    #[arg(long, hide = true)]
    outputs: Option<PathBuf>,
}

/// The bench's clip, as `scripts/bench_autoencode_reference.py` computes it: the video's value
/// at flat index `i` of `[frames, 3, height, width]` (each frame channel-first) is
/// `((i·2654435761) mod 1001) / 1000`, in [0, 1]; audio sample `k` is `((k·40503) mod 2001) / 1000
/// − 1`, in [-1, 1]; in f64, then f32.
fn synthetic_clip(spec: &MultimodalSpec) -> (Vec<Pixels>, Vec<f32>) {
    let (height, width) = spec.frame_size();
    let plane = (3 * height * width) as u64;
    let frames = (0..spec.num_frames as u64)
        .map(|t| {
            let values = (t * plane..(t + 1) * plane)
                .map(|i| ((i.wrapping_mul(2654435761) % 1001) as f64 / 1000.0) as f32)
                .collect();
            Pixels::new(height, width, values).expect("3 × height × width values")
        })
        .collect();
    let audio = (0..spec.audio_samples() as u64)
        .map(|k| ((k.wrapping_mul(40503) % 2001) as f64 / 1000.0 - 1.0) as f32)
        .collect();
    (frames, audio)
}

/// The file one side's reconstruction part is written to.
fn output_file(dir: &Path, side: &str, precision: &str, part: &str) -> PathBuf {
    dir.join(format!("{side}-{precision}.{part}.f32"))
}

fn write_f32(path: &Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn read_f32(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Our side for one precision: load, warm up, time `rounds` clips, then one more clip split by
/// part of the pass.
fn worker(args: &AutoencodeArgs, precision: Precision) -> Result<Value> {
    let model = Loader::new(args.model.to_string_lossy())
        .precision(precision)
        .load()
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let task = Autoencoder::new(model)?.with_chunks(args.chunks)?;
    let spec = *task.spec();
    let loaded_rss = peak_rss_mib();
    let (frames, audio) = synthetic_clip(&spec);
    let mut times = Vec::new();
    let mut output = None;
    for round in 0..=args.rounds {
        let (f, a) = (frames.clone(), audio.clone());
        let start = Instant::now();
        let out = task.autoencode(f, a, 1)?;
        if round > 0 {
            times.push(seconds_since(start));
        }
        output = Some(out);
    }
    let peak_rss = peak_rss_mib();
    let reconstruction = output.context("no clip ran")?.reconstruction;
    if let Some(dir) = &args.outputs {
        let name = precision_name(precision);
        write_f32(&output_file(dir, "ours", name, "image"), &reconstruction.image)?;
        write_f32(&output_file(dir, "ours", name, "audio"), &reconstruction.audio)?;
        write_f32(&output_file(dir, "ours", name, "label"), &reconstruction.label)?;
    }

    // Where the time goes: one more clip, its parts timed apart. The latent stack is timed
    // layer by layer on a copy of the encoder's latents (every block runs the same layers).
    let model = task.model();
    let input = MultimodalInput::new(frames, audio)?;
    let start = Instant::now();
    let latents = model.encode_multimodal(&input)?;
    let encode_s = seconds_since(start);
    let config = model.config();
    let mut layers_s = 0.0;
    let mut z = latents.clone();
    for index in 0..config.num_self_attends_per_block {
        let start = Instant::now();
        z = model.latent_layer(index, z)?;
        layers_s += seconds_since(start);
    }
    let latent_stack_s = layers_s * config.num_blocks as f64;
    let start = Instant::now();
    for index in 0..args.chunks {
        model.decode_multimodal(&latents, &MultimodalQueries::chunk(&spec, index, args.chunks))?;
    }
    let decode_s = seconds_since(start);

    Ok(json!({
        "precision": precision_name(precision),
        "chunks": args.chunks,
        "median_s": median(&times),
        "times_s": times,
        "phases": [
            {"phase": "preprocess and encoder cross-attention (encode minus the latent stack)",
             "seconds": encode_s - latent_stack_s},
            {"phase": "latent self-attention stack (its layers timed one by one)",
             "seconds": latent_stack_s},
            {"phase": format!("decoder and heads, every query in {} chunks", args.chunks),
             "seconds": decode_s},
        ],
        "peak_rss_mib": peak_rss,
        "peak_rss_after_load_mib": loaded_rss,
    }))
}

/// Max |a − b| and max |b| over two equally long arrays; `None` when their lengths differ.
fn max_diff(a: &[f32], b: &[f32]) -> Option<(f64, f64)> {
    (a.len() == b.len()).then(|| {
        a.iter().zip(b).fold((0.0f64, 0.0f64), |(d, m), (&x, &y)| {
            (d.max((x as f64 - y as f64).abs()), m.max((y as f64).abs()))
        })
    })
}

fn argmax(values: &[f32]) -> Option<usize> {
    (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b]))
}

/// One row of the agreement table: side `a` against side `b` (e.g. `("ours", "f32")`), from the
/// files in `dir`; `None` when either side's files are missing.
fn agreement(dir: &Path, a: (&str, &str), b: (&str, &str)) -> Option<String> {
    let read = |(side, precision): (&str, &str), part| read_f32(&output_file(dir, side, precision, part));
    let mut cells = Vec::new();
    for part in ["image", "audio", "label"] {
        let (x, y) = (read(a, part)?, read(b, part)?);
        cells.push(match max_diff(&x, &y) {
            Some((d, m)) => format!("{d:.2e} ({:.1e})", d / m),
            None => format!("lengths differ: {} against {}", x.len(), y.len()),
        });
    }
    let (x, y) = (read(a, "label")?, read(b, "label")?);
    let (top_a, top_b) = (argmax(&x)?, argmax(&y)?);
    let same = if top_a == top_b { "equal" } else { "DIFFER" };
    Some(format!(
        "| {} {} | {} {} | {} | {top_a} / {top_b} ({same}) |",
        a.0,
        a.1,
        b.0,
        b.1,
        cells.join(" | ")
    ))
}

pub fn run(args: AutoencodeArgs) -> Result<()> {
    if args.rounds == 0 || args.reference_rounds == 0 || args.precisions.is_empty() {
        bail!("need at least one round on each side and one precision");
    }
    if let Some(precision) = args.worker {
        println!("{}", worker(&args, precision)?);
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    crate::machine::describe(threads);
    let exe = std::env::current_exe().context("cannot find this bench's executable")?;
    let outputs = tempfile::tempdir().context("cannot make a directory for the reconstructions")?;
    let dir = outputs.path();
    let mut ours = Vec::new();
    for &precision in &args.precisions {
        let start = Instant::now();
        let result = our_worker(
            Command::new(&exe)
                .args(["--threads", &threads.to_string(), "autoencode"])
                .args(["--model", &args.model.to_string_lossy()])
                .args(["--rounds", &args.rounds.to_string()])
                .args(["--chunks", &args.chunks.to_string()])
                .args(["--worker", precision_name(precision)])
                .arg("--outputs")
                .arg(dir),
        )?;
        eprintln!(
            "ours {}: {:.2} s a clip, peak {:.0} MiB ({:.0} MiB after loading); {:.0} s in all",
            result["precision"].as_str().unwrap_or("?"),
            result["median_s"].as_f64().unwrap_or(f64::NAN),
            result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            result["peak_rss_after_load_mib"].as_f64().unwrap_or(f64::NAN),
            seconds_since(start)
        );
        ours.push(result);
    }

    let theirs: Vec<Value> = if args.reference.no_reference {
        Vec::new()
    } else {
        let start = Instant::now();
        let precisions: Vec<&str> = args.precisions.iter().map(|&p| precision_name(p)).collect();
        reference_results(
            Command::new(&args.reference.python)
                .arg("scripts/bench_autoencode_reference.py")
                .args(["--model", &args.model.to_string_lossy()])
                .args(["--rounds", &args.reference_rounds.to_string()])
                .args(["--chunks", &args.chunks.to_string()])
                .args(["--threads", &threads.to_string()])
                .args(["--precisions", &precisions.join(",")])
                .arg("--outputs")
                .arg(dir),
            &args.reference.python,
            Some(start),
        )?
    };

    println!(
        "| precision | ours s/clip | ours peak RSS | transformers s/clip | transformers peak RSS | \
         transformers / ours |"
    );
    println!("|---|---|---|---|---|---|");
    for result in &ours {
        let precision = result["precision"].as_str().unwrap_or("?");
        let seconds = result["median_s"].as_f64().unwrap_or(f64::NAN);
        let ours_cells = format!(
            "| {precision} | {seconds:.2} | {:.0} MiB |",
            result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
        match theirs.iter().find(|r| r["precision"] == precision) {
            Some(r) if r["error"].is_string() => println!("{ours_cells} fails | – | – |"),
            Some(r) => {
                let their_s = r["median_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{ours_cells} {their_s:.1} | {:.0} MiB | {:.1} |",
                    r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    their_s / seconds
                );
            }
            None => println!("{ours_cells} – | – | – |"),
        }
    }
    for reference in theirs.iter().filter(|r| r["error"].is_string()) {
        println!(
            "\ntransformers {} fails: {}",
            reference["precision"].as_str().unwrap_or("?"),
            reference["error"].as_str().unwrap_or("?").replace('\n', "; ")
        );
    }
    for reference in theirs.iter().filter(|r| !r["error"].is_string()) {
        println!(
            "\ntransformers {}: {:.3} s a call (median of {} calls; each runs the preprocessing, \
             encoder and latent stack again, then decodes one chunk)",
            reference["precision"].as_str().unwrap_or("?"),
            reference["call_median_s"].as_f64().unwrap_or(f64::NAN),
            args.chunks * args.reference_rounds
        );
    }

    if !theirs.is_empty() {
        println!(
            "\nAgreement (max |Δ| of the last clips' reconstructions, and relative to the second's \
             max |v|):\n"
        );
        println!("| | against | image | audio | label logits | top-1 label |");
        println!("|---|---|---|---|---|---|");
        let pairs = [
            (("ours", "f32"), ("transformers", "f32")),
            (("ours", "bf16"), ("transformers", "bf16")),
            (("ours", "bf16"), ("transformers", "f32")),
            (("transformers", "bf16"), ("transformers", "f32")),
        ];
        for (a, b) in pairs {
            if let Some(row) = agreement(dir, a, b) {
                println!("{row}");
            }
        }
    }

    print_phases(&ours, "(one more clip, split)", 72, "seconds");
    Ok(())
}
