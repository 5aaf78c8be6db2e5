//! `perceiver-bench serve`: load services on loopback and report throughput and latency.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver_serve::{ServeConfig, Server};

use crate::load::{synthetic_texts, BenchClient, Level, LevelReport};
use crate::model::{EngineArgs, ModelArgs};

#[derive(Args)]
#[command(
    after_help = "Without --url, the model given by --model is served in this process on a \
loopback port, once per --max-batch-requests value (1 = no batching), and each is measured.\n\
Rounds interleave the servers, so that a machine's changing load spreads over all of them; the \
summary gives the median over rounds.\n\
Example: perceiver-bench serve --model tests/fixtures/parity/tiny_narrow_latents \\\n    \
--max-batch-requests 1,32 --concurrency 1,8,16,32 --requests 2000 --duration 10 --rounds 3"
)]
pub struct ServeArgs {
    /// Running services to measure, e.g. http://127.0.0.1:8080 (comma-separated to compare
    /// several; default: start one per --max-batch-requests value).
    #[arg(long, env = "PERCEIVER_BENCH_URL", value_delimiter = ',')]
    url: Vec<String>,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Batch caps of the servers started here (without --url).
    #[arg(long, value_delimiter = ',', default_value = "1,32", value_parser = clap::value_parser!(u32).range(1..))]
    max_batch_requests: Vec<u32>,

    /// Batch waits of the servers started here, in microseconds (see `perceiver serve
    /// --max-batch-wait-us`): one server per cap above 1 and wait.
    #[arg(long, value_delimiter = ',', default_values_t = [perceiver_serve::DEFAULT_MAX_BATCH_WAIT.as_micros() as u64], value_parser = clap::value_parser!(u64).range(..=1_000_000))]
    max_batch_wait_us: Vec<u64>,

    /// Clients sending at once, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Vec<u32>,

    /// Requests per measurement, at most.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,

    /// Seconds per measurement, at most.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,

    /// Times each measurement is repeated (servers interleaved); the summary takes medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,

    /// Candidates per mask asked for.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=262))]
    top_k: u32,

    /// Texts to send, one per line with [MASK] / [MASK:n] (default: generated, 24-160 bytes,
    /// one masked word each).
    #[arg(long, value_name = "FILE")]
    input: Option<std::path::PathBuf>,

    /// Bearer key of the services at --url.
    #[arg(long, env = "PERCEIVER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// A server started here: the sender that stops it, and its task, to await once stopped.
type RunningServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), perceiver_serve::ServeError>>,
);

/// A service under test: its name in the report, a client, and, if started here, how to stop it.
struct Target {
    name: String,
    client: BenchClient,
    texts: Arc<Vec<String>>,
    stop: Option<RunningServer>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let model = if args.url.is_empty() {
        Some(args.model.load_engine(args.engine.precision)?)
    } else {
        None
    };
    runtime.block_on(async {
        let mut targets = Vec::new();
        match &model {
            None => {
                for url in &args.url {
                    let client = BenchClient::new(url, args.api_key.clone())?;
                    let texts = texts(&args, &client).await?;
                    targets.push(Target {
                        name: url.clone(),
                        client,
                        texts,
                        stop: None,
                    });
                }
            }
            Some(model) => {
                for &cap in &args.max_batch_requests {
                    // A cap of one never waits: every wait is the same server.
                    let waits = if cap == 1 {
                        &args.max_batch_wait_us[..1]
                    } else {
                        &args.max_batch_wait_us[..]
                    };
                    for &wait in waits {
                        let config = ServeConfig {
                            port: 0,
                            max_batch_requests: cap as usize,
                            max_batch_tokens: (cap as usize * model.max_len()).max(16384),
                            max_batch_wait: std::time::Duration::from_micros(wait),
                            ..ServeConfig::new(args.model.model.clone())
                        };
                        let server = Server::bind(config, model.clone()).await?;
                        let client = BenchClient::new(&format!("http://{}", server.local_addr()), None)?;
                        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                        let running = tokio::spawn(server.run(async {
                            stopped.await.ok();
                        }));
                        let texts = texts(&args, &client).await?;
                        let name = if cap == 1 || args.max_batch_wait_us.len() == 1 {
                            format!("batch ≤ {cap}")
                        } else {
                            format!("batch ≤ {cap}, wait {wait} µs")
                        };
                        targets.push(Target {
                            name,
                            client,
                            texts,
                            stop: Some((stop, running)),
                        });
                    }
                }
            }
        }
        let reports = measure(&args, &targets).await?;
        summarize(&args, &targets, &reports);
        for target in targets {
            if let Some((stop, running)) = target.stop {
                stop.send(()).ok();
                running.await??;
            }
        }
        anyhow::Ok(())
    })
}

/// Every (round, concurrency, target) measurement, in that nesting: `reports[round][c][t]`.
async fn measure(args: &ServeArgs, targets: &[Target]) -> Result<Vec<Vec<Vec<LevelReport>>>> {
    println!("| round | server | clients | requests | errors | req/s | p50 ms | p99 ms | texts per pass |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let mut by_concurrency = Vec::new();
        for &c in &args.concurrency {
            let level = Level {
                concurrency: c as usize,
                requests: args.requests as usize,
                duration: Duration::from_secs_f64(args.duration),
                top_k: args.top_k as usize,
            };
            let mut by_target = Vec::new();
            for target in targets {
                let report = target.client.run_level(target.texts.clone(), level).await?;
                let batch = report
                    .mean_batch_size
                    .map(|b| format!("{b:.1}"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "| {round} | {} | {c} | {} | {} | {} | {} | {} | {batch} |",
                    target.name,
                    report.ok,
                    report.errors,
                    rate(report.throughput()),
                    millis(report.percentile(0.5)),
                    millis(report.percentile(0.99)),
                );
                if let Some(e) = &report.first_error {
                    eprintln!("first error of {} at {c} clients: {e}", target.name);
                }
                by_target.push(report);
            }
            by_concurrency.push(by_target);
        }
        rounds.push(by_concurrency);
    }
    Ok(rounds)
}

/// Medians over rounds per (server, concurrency), and each server's throughput over the first's.
fn summarize(args: &ServeArgs, targets: &[Target], reports: &[Vec<Vec<LevelReport>>]) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    };
    let stat = |c: usize, t: usize, f: &dyn Fn(&LevelReport) -> f64| {
        median(reports.iter().map(|round| f(&round[c][t])).collect())
    };
    let seconds = |q: f64| move |r: &LevelReport| r.percentile(q).map_or(f64::NAN, |d| d.as_secs_f64());
    println!();
    println!("Median over {} round(s):", args.rounds);
    println!();
    println!(
        "| server | clients | req/s | p50 ms | p99 ms | req/s vs {} |",
        targets[0].name
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (c, &clients) in args.concurrency.iter().enumerate() {
        let base = stat(c, 0, &LevelReport::throughput);
        for (t, target) in targets.iter().enumerate() {
            let throughput = stat(c, t, &LevelReport::throughput);
            println!(
                "| {} | {clients} | {} | {:.1} | {:.1} | {:.2}x |",
                target.name,
                rate(throughput),
                stat(c, t, &seconds(0.5)) * 1e3,
                stat(c, t, &seconds(0.99)) * 1e3,
                throughput / base.max(1e-12),
            );
        }
    }
}

fn rate(per_second: f64) -> String {
    if per_second < 10.0 {
        format!("{per_second:.2}")
    } else {
        format!("{per_second:.1}")
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

async fn texts(args: &ServeArgs, client: &BenchClient) -> Result<Arc<Vec<String>>> {
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
