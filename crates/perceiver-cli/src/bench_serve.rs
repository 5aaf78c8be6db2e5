//! `perceiver bench-serve`: load a service on loopback and report throughput and latency.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver_serve::bench::{synthetic_texts, BenchClient, Level, LevelReport};
use perceiver_serve::{ServeConfig, Server};

use crate::model::ModelArgs;

#[derive(Args)]
#[command(
    after_help = "Without --url, the model given by --model is served in this process on a \
loopback port, once per --max-batch-requests value (1 = no batching), and each is measured.\n\
Example: perceiver bench-serve --model tests/fixtures/parity/tiny_narrow_latents \\\n    \
--max-batch-requests 1,32 --concurrency 1,8,16,32 --requests 2000 --duration 20"
)]
pub struct BenchServeArgs {
    /// A running service to measure, e.g. http://127.0.0.1:8080 (default: start one per
    /// --max-batch-requests value).
    #[arg(long, env = "PERCEIVER_BENCH_URL")]
    url: Option<String>,

    #[command(flatten)]
    model: ModelArgs,

    /// Batch caps of the servers started here (without --url).
    #[arg(long, value_delimiter = ',', default_value = "1,32", value_parser = clap::value_parser!(u32).range(1..))]
    max_batch_requests: Vec<u32>,

    /// Clients sending at once, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Vec<u32>,

    /// Requests per measurement, at most.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,

    /// Seconds per measurement, at most.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,

    /// Candidates per mask asked for.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=262))]
    top_k: u32,

    /// Texts to send, one per line with [MASK] / [MASK:n] (default: generated, 24-160 bytes,
    /// one masked word each).
    #[arg(long, value_name = "FILE")]
    input: Option<std::path::PathBuf>,

    /// Bearer key of the service at --url.
    #[arg(long, env = "PERCEIVER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub fn run(args: BenchServeArgs) -> Result<()> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    let level = |concurrency: u32| Level {
        concurrency: concurrency as usize,
        requests: args.requests as usize,
        duration: Duration::from_secs_f64(args.duration),
        top_k: args.top_k as usize,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    println!("| server | clients | requests | errors | req/s | p50 ms | p99 ms | texts per pass |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, LevelReport)> = Vec::new();
    match &args.url {
        Some(url) => runtime.block_on(async {
            let client = BenchClient::new(url, args.api_key.clone())?;
            let texts = texts(&args, &client).await?;
            for &c in &args.concurrency {
                let report = client.run_level(texts.clone(), level(c)).await?;
                print_row(url, &report);
                rows.push((url.clone(), report));
            }
            anyhow::Ok(())
        })?,
        None => {
            let model = args.model.load_masked_lm()?;
            runtime.block_on(async {
                for &cap in &args.max_batch_requests {
                    let config = ServeConfig {
                        port: 0,
                        max_batch_requests: cap as usize,
                        max_batch_tokens: (cap as usize * model.max_len()).max(16384),
                        ..ServeConfig::new(args.model.model.clone())
                    };
                    let server = Server::bind(config, model.clone()).await?;
                    let url = format!("http://{}", server.local_addr());
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let running = tokio::spawn(server.run(async {
                        stopped.await.ok();
                    }));
                    let client = BenchClient::new(&url, None)?;
                    let texts = texts(&args, &client).await?;
                    let name = format!("batch ≤ {cap}");
                    for &c in &args.concurrency {
                        let report = client.run_level(texts.clone(), level(c)).await?;
                        print_row(&name, &report);
                        rows.push((name.clone(), report));
                    }
                    stop.send(()).ok();
                    running.await??;
                }
                anyhow::Ok(())
            })?;
        }
    }
    // Batching's gain: each server's throughput over the first one's, per concurrency.
    if let Some((base_name, _)) = rows.first() {
        let base_name = base_name.clone();
        for (name, report) in rows.iter().filter(|(n, _)| *n != base_name) {
            if let Some((_, base)) = rows
                .iter()
                .find(|(n, r)| *n == base_name && r.concurrency == report.concurrency)
            {
                println!(
                    "{name} vs {base_name} at {} clients: {:.2}x the throughput",
                    report.concurrency,
                    report.throughput() / base.throughput().max(1e-9)
                );
            }
        }
    }
    Ok(())
}

async fn texts(args: &BenchServeArgs, client: &BenchClient) -> Result<Arc<Vec<String>>> {
    let texts = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => {
            let info = client.info().await?;
            synthetic_texts(1000, info.limits.max_input_length, 1)
        }
    };
    if texts.is_empty() {
        bail!("no texts to send");
    }
    Ok(Arc::new(texts))
}

fn print_row(server: &str, r: &LevelReport) {
    let ms = |q: f64| {
        r.percentile(q)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let batch = r
        .mean_batch_size
        .map(|b| format!("{b:.1}"))
        .unwrap_or_else(|| "-".into());
    let throughput = r.throughput();
    let throughput = if throughput < 10.0 {
        format!("{throughput:.2}")
    } else {
        format!("{throughput:.1}")
    };
    println!(
        "| {server} | {} | {} | {} | {throughput} | {} | {} | {batch} |",
        r.concurrency,
        r.ok,
        r.errors,
        ms(0.5),
        ms(0.99),
    );
    if let Some(e) = &r.first_error {
        eprintln!("first error at {} clients: {e}", r.concurrency);
    }
}
