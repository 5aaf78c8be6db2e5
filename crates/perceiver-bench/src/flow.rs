//! `perceiver-bench flow`: the optical-flow model on one tile of its training size, ours and
//! transformers' (PyTorch) on the same weights, f32 and bf16, in one run: ours first, then
//! `scripts/bench_flow_reference.py`. Each precision of each side runs in its own process, so
//! that its peak memory is its own. Medians over rounds after one warm-up; our time split by
//! part of the pass (where the time goes) against each part's FLOPs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::image::Pixels;
use perceiver::preprocess::FramePair;
use perceiver::{Loader, Precision};
use serde_json::{json, Value};

use crate::child::{our_worker, reference_results, PythonArgs};
use crate::stats::{median, peak_rss_mib, precision_name, print_phases};

#[derive(Args)]
pub struct FlowArgs {
    /// The model to time (a directory). Make the released layout with random weights with
    /// `.venv-ref/bin/python scripts/make_flow_fixtures.py --full target/flow-random`.
    #[arg(long, default_value = "target/flow-random")]
    model: PathBuf,
    /// Precisions, each timed in its own process.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    precisions: Vec<Precision>,
    /// Timed runs per precision and side, after one warm-up.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    reference: PythonArgs,
    /// Run one precision in this process and print its result as JSON (what the bench spawns).
    #[arg(long, hide = true)]
    worker: Option<Precision>,
}

/// A synthetic frame: value at flat (channel-first) index `i` of frame `t` is
/// `((i·2654435761 + t·40503) mod 2000) / 1000 − 1`.
fn synthetic_frame(t: u64, height: usize, width: usize) -> Pixels {
    let values = (0..(3 * height * width) as u64)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(t * 40503)) % 2000) as f64 / 1000.0 - 1.0)
        .map(|v| v as f32)
        .collect();
    Pixels::new(height, width, values).expect("3 × height × width values")
}

/// Our side for one precision: load, warm up, time `rounds` passes.
fn worker(args: &FlowArgs, precision: Precision) -> Result<Value> {
    let model = Loader::new(args.model.to_string_lossy())
        .precision(precision)
        .load()
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let (height, width) = model
        .image_size()
        .context("not an optical-flow model (no frame size)")?;
    let loaded_rss = peak_rss_mib();
    let pair = FramePair::new(
        synthetic_frame(0, height, width),
        synthetic_frame(1, height, width),
    )?;
    let mut times = Vec::new();
    let mut phase_times: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut flow = Vec::new();
    for round in 0..=args.rounds {
        let start = Instant::now();
        let (out, phases) = model.optical_flow_timed(&[&pair])?;
        let elapsed = start.elapsed().as_secs_f64();
        flow = out;
        if round > 0 {
            times.push(elapsed);
            for (i, (name, seconds)) in phases.into_iter().enumerate() {
                if phase_times.len() <= i {
                    phase_times.push((name, Vec::new()));
                }
                phase_times[i].1.push(seconds);
            }
        }
    }
    let mean_abs = flow.iter().map(|v| v.abs() as f64).sum::<f64>() / flow.len().max(1) as f64;
    Ok(json!({
        "precision": precision_name(precision),
        "tile": [height, width],
        "median_s": median(&times),
        "times_s": times,
        "phases": phase_times
            .into_iter()
            .map(|(name, t)| json!({"phase": name, "median_s": median(&t)}))
            .collect::<Vec<_>>(),
        "gflop": model.optical_flow_flops().context("not an optical-flow model")? / 1e9,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_after_load_mib": loaded_rss,
        "mean_abs_logit": mean_abs,
    }))
}

pub fn run(args: FlowArgs) -> Result<()> {
    if args.rounds == 0 || args.precisions.is_empty() {
        bail!("need at least one round and one precision");
    }
    if let Some(precision) = args.worker {
        println!("{}", worker(&args, precision)?);
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    crate::machine::describe(threads);
    let exe = std::env::current_exe().context("cannot find this bench's executable")?;
    let mut ours = Vec::new();
    for &precision in &args.precisions {
        let result = our_worker(
            Command::new(&exe)
                .args(["--threads", &threads.to_string(), "flow"])
                .args(["--model", &args.model.to_string_lossy()])
                .args(["--rounds", &args.rounds.to_string()])
                .args(["--worker", precision_name(precision)]),
        )?;
        eprintln!(
            "ours {}: {:.2} s, peak {:.0} MiB",
            result["precision"].as_str().unwrap_or("?"),
            result["median_s"].as_f64().unwrap_or(f64::NAN),
            result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
        ours.push(result);
    }

    let theirs: Vec<Value> = if args.reference.no_reference {
        Vec::new()
    } else {
        let precisions: Vec<&str> = args.precisions.iter().map(|&p| precision_name(p)).collect();
        reference_results(
            Command::new(&args.reference.python)
                .arg("scripts/bench_flow_reference.py")
                .args(["--model", &args.model.to_string_lossy()])
                .args(["--runs", &args.rounds.to_string()])
                .args(["--threads", &threads.to_string()])
                .args(["--precisions", &precisions.join(",")]),
            &args.reference.python,
            None,
        )?
    };

    println!("| precision | ours s/tile | ours GFLOP/s | ours peak MiB | transformers s/tile | transformers peak MiB | transformers / ours |");
    println!("|---|---|---|---|---|---|---|");
    for result in &ours {
        let precision = result["precision"].as_str().unwrap_or("?");
        let seconds = result["median_s"].as_f64().unwrap_or(f64::NAN);
        let gflop = result["gflop"].as_f64().unwrap_or(f64::NAN);
        let reference = theirs.iter().find(|r| r["precision"] == precision);
        let (their_s, their_peak) = reference.map_or((f64::NAN, f64::NAN), |r| {
            (
                r["median_s"].as_f64().unwrap_or(f64::NAN),
                r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            )
        });
        println!(
            "| {precision} | {seconds:.2} | {:.0} | {:.0} | {their_s:.2} | {their_peak:.0} | {:.2} |",
            gflop / seconds,
            result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            their_s / seconds
        );
    }
    print_phases(&ours, "(medians)", 55, "median_s");
    Ok(())
}
