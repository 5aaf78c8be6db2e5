//! `perceiver-bench classify`: an image classifier, ours and transformers' (PyTorch) on the same
//! weights and the same pixels, batch sizes 1 and 8, f32 and bf16, in one run: ours first, then
//! `scripts/bench_classify_reference.py` as a child process. Medians over rounds after one
//! warm-up; the top-1 label of every image on both sides. Each (precision, batch) of ours runs
//! in its own process, so that its peak memory (against the weights' size) is its own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::{Classifier, Loader, ModelInput, Pixels, Precision};
use serde_json::Value;

use crate::child::{our_worker, reference_results, PythonArgs};
use crate::stats::{median, peak_rss_mib, precision_name};

#[derive(Args)]
pub struct ClassifyArgs {
    /// The model to time (a directory). Make the released Fourier layout with random weights with
    /// `.venv-ref/bin/python scripts/make_classification_fixtures.py --full-fourier target/fourier-random`.
    #[arg(long, default_value = "target/fourier-random")]
    model: PathBuf,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// Timed runs per (precision, batch) and side, after one warm-up.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[command(flatten)]
    reference: PythonArgs,
    /// Run one precision at one batch size (`--batches N`) in this process and print its result
    /// as JSON (what the bench spawns).
    #[arg(long, hide = true)]
    worker: Option<Precision>,
}

/// The bench's images: image `b`'s value at flat (channel-first) index `i` is
/// `((i·2654435761 + b·40503) mod 2000) / 1000 − 1`, as `scripts/bench_classify_reference.py`
/// computes it.
fn synthetic_pixels(batch: usize, side: usize) -> Vec<Pixels> {
    (0..batch as u64)
        .map(|b| {
            let values = (0..(3 * side * side) as u64)
                .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(b * 40503)) % 2000) as f64 / 1000.0 - 1.0)
                .map(|v| v as f32)
                .collect();
            Pixels::new(side, side, values).expect("3 × side² values")
        })
        .collect()
}

struct Row {
    precision: String,
    batch: usize,
    median_s: f64,
    top1: Vec<usize>,
    peak_rss_mib: f64,
}

/// Our side for one precision and batch size: load, warm up, time `rounds` passes.
fn worker(args: &ClassifyArgs, precision: Precision, batch: usize) -> Result<Value> {
    let classifier: Classifier = Loader::new(args.model.to_string_lossy())
        .precision(precision)
        .classifier()
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let loaded_rss = peak_rss_mib();
    let images = synthetic_pixels(batch, args.size);
    let refs: Vec<&Pixels> = images.iter().collect();
    let mut times = Vec::new();
    let mut logits = Vec::new();
    for round in 0..=args.rounds {
        let start = Instant::now();
        logits = classifier.logits(ModelInput::Images(&refs))?;
        if round > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let labels = classifier.labels().len();
    let top1: Vec<usize> = logits
        .chunks_exact(labels)
        .map(|row| {
            (0..labels)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0)
        })
        .collect();
    Ok(serde_json::json!({
        "precision": precision_name(precision),
        "batch": batch,
        "median_s": median(&times),
        "top1": top1,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_after_load_mib": loaded_rss,
    }))
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    if args.rounds == 0 || args.batches.is_empty() {
        bail!("need at least one round and one batch size");
    }
    if let Some(precision) = args.worker {
        let [batch] = args.batches[..] else {
            bail!("a worker runs one batch size");
        };
        println!("{}", worker(&args, precision, batch)?);
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let weights_mib = std::fs::metadata(args.model.join("model.safetensors"))
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN);
    crate::machine::describe(threads);
    let exe = std::env::current_exe().context("cannot find this bench's executable")?;
    let mut ours = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        for &batch in &args.batches {
            let result = our_worker(
                Command::new(&exe)
                    .args(["--threads", &threads.to_string(), "classify"])
                    .args(["--model", &args.model.to_string_lossy()])
                    .args(["--rounds", &args.rounds.to_string()])
                    .args(["--size", &args.size.to_string()])
                    .args(["--batches", &batch.to_string()])
                    .args(["--worker", precision_name(precision)]),
            )?;
            let row = Row {
                precision: precision_name(precision).to_string(),
                batch,
                median_s: result["median_s"].as_f64().unwrap_or(f64::NAN),
                top1: serde_json::from_value(result["top1"].clone()).unwrap_or_default(),
                peak_rss_mib: result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            };
            eprintln!(
                "ours {} batch {batch}: {:.3} s, peak {:.0} MiB ({:.0} MiB after loading)",
                row.precision,
                row.median_s,
                row.peak_rss_mib,
                result["peak_rss_after_load_mib"].as_f64().unwrap_or(f64::NAN)
            );
            ours.push(row);
        }
    }

    let theirs: Vec<Value> = if args.reference.no_reference {
        Vec::new()
    } else {
        let batches: Vec<String> = args.batches.iter().map(|b| b.to_string()).collect();
        reference_results(
            Command::new(&args.reference.python)
                .arg("scripts/bench_classify_reference.py")
                .args(["--model", &args.model.to_string_lossy()])
                .args(["--batches", &batches.join(",")])
                .args(["--rounds", &args.rounds.to_string()])
                .args(["--threads", &threads.to_string()])
                .args(["--size", &args.size.to_string()]),
            &args.reference.python,
            None,
        )?
    };

    println!(
        "| precision | batch | ours (s/image) | PyTorch (s/image) | PyTorch / ours | top-1 equal to PyTorch f32 | our peak RSS (× the {weights_mib:.0} MiB weights) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let reference_top1 = |batch: usize| {
        theirs
            .iter()
            .find(|r| r["precision"] == "f32" && r["batch"] == batch)
            .and_then(|r| serde_json::from_value::<Vec<usize>>(r["top1"].clone()).ok())
    };
    for row in &ours {
        let theirs_s = theirs
            .iter()
            .find(|r| r["precision"] == row.precision && r["batch"] == row.batch)
            .and_then(|r| r["median_s"].as_f64());
        let per = |s: f64| s / row.batch as f64;
        let same = reference_top1(row.batch).map(|t| {
            let equal = t.iter().zip(&row.top1).filter(|(a, b)| a == b).count();
            format!("{equal}/{}", row.top1.len())
        });
        println!(
            "| {} | {} | {:.3} | {} | {} | {} | {:.0} MiB ({:.2}×) |",
            row.precision,
            row.batch,
            per(row.median_s),
            theirs_s.map_or("–".into(), |s| format!("{:.3}", per(s))),
            theirs_s.map_or("–".into(), |s| format!("{:.2}", s / row.median_s)),
            same.unwrap_or_else(|| "–".into()),
            row.peak_rss_mib,
            row.peak_rss_mib / weights_mib,
        );
    }
    Ok(())
}
