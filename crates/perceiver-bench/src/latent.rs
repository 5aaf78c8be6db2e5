//! `perceiver-bench latent`: one latent self-attention layer of a model, and its six weight
//! products on their own, ours and PyTorch's side by side in one session, alternating, with the
//! CPU's f32 FMA and bf16 dot-product peaks measured in the same run.
//!
//! The layer is where the language model spends its time (the 201M model runs 26 of them per
//! text), and its products are most of the layer's work; so this says how close to the
//! hardware each side gets, and what the rest of the layer (norms, attention, GELU, residuals)
//! costs. Ours: [`PerceiverModel::latent_layer`] and the engine's [`Linear`] on random weights of
//! the same shapes (speed does not depend on the values). PyTorch: the model's
//! `perceiver.encoder.self_attends[0]` and `torch.nn.functional.linear`, through
//! `scripts/bench_reference.py --serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::{Linear, PerceiverModel, Precision};
use perceiver_kernels::cpu::Bf16Kernel;
use perceiver_kernels::peak::{amx_peak_gflops, bf16_dot_peak_gflops, fma_peak_gflops};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::inference::{load_bench_model, time_round, torch_dtype, ReferenceArgs};
use crate::stats::median;

#[derive(Args)]
pub struct LatentArgs {
    /// The model whose latent layer is timed (a directory). Make the 201M random one with
    /// `.venv-ref/bin/python scripts/make_parity_fixtures.py --full target/full-random`.
    #[arg(long, default_value = "target/full-random")]
    model: PathBuf,
    /// Texts per pass, comma-separated (each text is num_latents rows of every product).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch_sizes: Vec<usize>,
    /// Precisions of the weight products, comma-separated (f32, bf16).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    precisions: Vec<Precision>,
    /// Timed runs per item and side (after one warm-up run).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// How long one timed run of an item lasts on our side, in milliseconds: it repeats the
    /// item as often as that takes, and PyTorch's run repeats it as often.
    #[arg(long, default_value_t = 200)]
    run_ms: u64,
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one row times.
enum Work {
    /// The model's latent layer 0 over this many texts.
    Layer { batch: usize },
    /// One product `[m, k] · [n, k]ᵀ + bias`.
    Product { m: usize, n: usize, k: usize },
}

struct Item {
    name: String,
    precision: Precision,
    batch: usize,
    work: Work,
    flops: f64,
    /// Calls per timed run, the same on both sides.
    reps: usize,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

impl Item {
    /// Median seconds per call.
    fn per_call(times: &[f64], reps: usize) -> Option<f64> {
        (!times.is_empty()).then(|| median(times) / reps as f64)
    }
}

/// What our side runs for an item: a closure timing `reps` calls.
type OurRun = Box<dyn FnMut(usize) -> Result<f64>>;

fn random(len: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `engine` is shared with the closure, not cloned: a clone would copy its bf16 weights.
fn our_run(item: &Item, engine: &Arc<PerceiverModel>, rng: &mut ChaCha8Rng) -> Result<OurRun> {
    let config = engine.config();
    Ok(match item.work {
        Work::Layer { batch } => {
            // Each call's output is the next call's input, as in the stack: the layer adds its
            // residuals onto the latents it is given, so a copy of fixed input latents per
            // call would be timed with it.
            let mut latents = random(batch * config.num_latents * config.d_latents, 1.0, rng);
            let engine = Arc::clone(engine);
            Box::new(move |reps| {
                let started = Instant::now();
                for _ in 0..reps {
                    latents = engine.latent_layer(0, std::mem::take(&mut latents))?;
                }
                Ok(started.elapsed().as_secs_f64())
            })
        }
        Work::Product { m, n, k } => {
            let scale = 1.0 / (k as f32).sqrt();
            let linear = Linear::new(random(n * k, scale, rng), random(n, 1.0, rng), k, item.precision)?;
            let x = random(m * k, 1.0, rng);
            Box::new(move |reps| {
                let started = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(linear.forward(&x, 0)?);
                }
                Ok(started.elapsed().as_secs_f64())
            })
        }
    })
}

/// The layer and its six products, for each precision and batch size.
fn items(engine: &PerceiverModel, args: &LatentArgs) -> Result<Vec<Item>> {
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive numbers");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let config = engine.config();
    let spec = config.self_attention_spec();
    let (d, qk, v) = (spec.q_dim, spec.qk_channels, spec.v_channels);
    let hidden = d * spec.widening_factor;
    // (name, n, k) of the layer's products, in the order the layer runs them.
    let products = [
        ("query", qk, d),
        ("key", qk, d),
        ("value", v, d),
        ("output", d, v),
        ("mlp dense1", hidden, d),
        ("mlp dense2", d, hidden),
    ];
    let mut items = Vec::new();
    for &precision in &args.precisions {
        for &batch in &args.batch_sizes {
            items.push(Item {
                name: "latent layer".into(),
                precision,
                batch,
                work: Work::Layer { batch },
                flops: engine.latent_layer_flops(batch),
                reps: 1,
                ours: Vec::new(),
                theirs: Vec::new(),
            });
            let m = batch * config.num_latents;
            for (name, n, k) in products {
                items.push(Item {
                    name: format!("  {name} {m}x{n}x{k}"),
                    precision,
                    batch,
                    work: Work::Product { m, n, k },
                    flops: 2.0 * (m * n * k) as f64,
                    reps: 1,
                    ours: Vec::new(),
                    theirs: Vec::new(),
                });
            }
        }
    }
    Ok(items)
}

pub fn run(args: LatentArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let f32_engine = load_bench_model(&args.model)?;
    let mut items = items(&f32_engine, &args)?;
    let mut reference = args.reference.start(&args.model, threads)?;
    crate::machine::describe(threads);
    let bf16_rows = items.iter().any(|item| item.precision == Precision::Bf16);
    let peaks_before = Peaks::measure(threads, bf16_rows);

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut runs = Vec::with_capacity(items.len());
    for precision in [Precision::F32, Precision::Bf16] {
        if !items.iter().any(|item| item.precision == precision) {
            continue;
        }
        let mut engine = f32_engine.clone();
        engine.set_precision(precision);
        let engine = Arc::new(engine);
        for item in items.iter_mut().filter(|item| item.precision == precision) {
            let mut run = our_run(item, &engine, &mut rng)?;
            // Warm-up, then as many calls per run as fill --run-ms, sized from a second call:
            // the first one also faults in its buffers (a bf16 product's first call took ten
            // times its later ones), which made runs of a few calls, at the mercy of the host.
            run(1)?;
            let once = run(1)?;
            let run_seconds = args.run_ms as f64 / 1e3;
            item.reps = ((run_seconds / once.max(1e-6)).ceil() as usize).clamp(1, 10_000);
            if let Some(r) = reference.as_mut() {
                let name = format!("{} {} {}", item.name.trim(), torch_dtype(precision), item.batch);
                let message = match item.work {
                    Work::Layer { batch } => json!({
                        "cmd": "prepare_layer", "name": name, "batch": batch, "reps": item.reps,
                        "dtype": torch_dtype(precision),
                    }),
                    Work::Product { m, n, k } => json!({
                        "cmd": "prepare_linear", "name": name, "m": m, "n": n, "k": k,
                        "reps": item.reps, "dtype": torch_dtype(precision),
                    }),
                };
                r.call(message)?;
            }
            runs.push(run);
        }
    }
    for round in 0..args.rounds {
        for (item, run) in items.iter_mut().zip(&mut runs) {
            let name = format!(
                "{} {} {}",
                item.name.trim(),
                torch_dtype(item.precision),
                item.batch
            );
            let (ours, theirs) = time_round(round, reference.as_mut(), &name, || run(item.reps))?;
            item.ours.push(ours);
            item.theirs.extend(theirs);
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    drop(reference);
    // A busy machine lowers either measurement: the higher one is the peak.
    let peaks = peaks_before.max(Peaks::measure(threads, bf16_rows));
    report(&items, peaks, threads, &args)
}

/// The peaks the products are judged against, in GFLOP/s: f32 rows against the FMA peak, bf16
/// rows against the `vdpbf16ps` peak where the bf16 products run on AVX-512 BF16, against the
/// `tdpbf16ps` one on AMX, and against the FMA peak where they widen to f32 on AVX-512 (the
/// widened AVX2 path has no peak of its own, so its rows show no share).
#[derive(Clone, Copy)]
struct Peaks {
    f32: Option<f64>,
    bf16: Option<f64>,
}

impl Peaks {
    /// The f32 peak, and the bf16 one when there are `bf16_rows` to judge.
    fn measure(threads: usize, bf16_rows: bool) -> Self {
        let bf16 = match perceiver_kernels::cpu::bf16_kernel() {
            _ if !bf16_rows => None,
            Bf16Kernel::Avx512Bf16 => bf16_dot_peak_gflops(threads),
            Bf16Kernel::Amx => amx_peak_gflops(threads),
            Bf16Kernel::Avx512Widened => fma_peak_gflops(threads),
            _ => None,
        };
        Peaks {
            f32: fma_peak_gflops(threads),
            bf16,
        }
    }

    fn max(self, other: Self) -> Self {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Peaks {
            f32: max(self.f32, other.f32),
            bf16: max(self.bf16, other.bf16),
        }
    }

    fn of(self, precision: Precision) -> Option<f64> {
        match precision {
            Precision::F32 => self.f32,
            Precision::Bf16 => self.bf16,
        }
    }
}

fn report(items: &[Item], peaks: Peaks, threads: usize, args: &LatentArgs) -> Result<()> {
    println!(
        "{:<30} {:<5} {:>10} {:>13} {:>6} {:>13} {:>16} {:>11} {:>15}",
        "",
        "",
        "ours (ms)",
        "pytorch (ms)",
        "ratio",
        "ours GFLOP/s",
        "pytorch GFLOP/s",
        "ours % peak",
        "pytorch % peak"
    );
    let mut rows = Vec::new();
    let mut print_row =
        |name: &str, precision: Precision, flops: f64, ours: Option<f64>, theirs: Option<f64>| {
            let gflops = |t: Option<f64>| t.map(|t| flops / t / 1e9);
            // Each precision's share of its own peak (see `Peaks`).
            let share = |t: Option<f64>| gflops(t).zip(peaks.of(precision)).map(|(g, p)| 100.0 * g / p);
            let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
            println!(
                "{:<30} {:<5} {:>10} {:>13} {:>6} {:>13} {:>16} {:>11} {:>15}",
                name,
                match precision {
                    Precision::F32 => "f32",
                    Precision::Bf16 => "bf16",
                },
                cell(ours.map(|t| t * 1e3), 2),
                cell(theirs.map(|t| t * 1e3), 2),
                cell(ours.zip(theirs).map(|(o, t)| t / o), 2),
                cell(gflops(ours), 0),
                cell(gflops(theirs), 0),
                cell(share(ours), 0),
                cell(share(theirs), 0),
            );
            rows.push(json!({
                "item": name.trim(), "precision": torch_dtype(precision), "gflop": flops / 1e9,
                "ours_seconds": ours, "pytorch_seconds": theirs,
                "ours_gflops_per_s": gflops(ours), "pytorch_gflops_per_s": gflops(theirs),
                "ours_percent_of_peak": share(ours), "pytorch_percent_of_peak": share(theirs),
            }));
        };
    for group in items.chunk_by(|a, b| a.precision == b.precision && a.batch == b.batch) {
        let (layer, products) = group.split_first().expect("chunks are not empty");
        println!("batch of {} text(s)", layer.batch);
        let per_call = |item: &Item| {
            (
                Item::per_call(&item.ours, item.reps),
                Item::per_call(&item.theirs, item.reps),
            )
        };
        let (ours, theirs) = per_call(layer);
        print_row(&layer.name, layer.precision, layer.flops, ours, theirs);
        let mut sums = (Some(0.0), Some(0.0));
        for item in products {
            let (ours, theirs) = per_call(item);
            print_row(&item.name, item.precision, item.flops, ours, theirs);
            sums.0 = sums.0.zip(ours).map(|(s, t)| s + t);
            sums.1 = sums.1.zip(theirs).map(|(s, t)| s + t);
        }
        let flops = products.iter().map(|item| item.flops).sum();
        print_row("  the six products", layer.precision, flops, sums.0, sums.1);
    }
    match peaks.f32 {
        Some(p) => println!(
            "f32 FMA peak on {threads} threads, measured before and after: {p:.0} GFLOP/s \
             (the f32 rows' shares are of it)"
        ),
        None => println!("f32 FMA peak: no AVX2 or AVX-512 on this CPU"),
    }
    let bf16_instruction = match perceiver_kernels::cpu::bf16_kernel() {
        Bf16Kernel::Amx => "AMX tdpbf16ps (random tiles)",
        Bf16Kernel::Avx512Widened => "f32 FMA (bf16 widened to f32)",
        _ => "vdpbf16ps",
    };
    match peaks.bf16 {
        Some(p) => println!(
            "{bf16_instruction} peak on {threads} threads, measured before and after: {p:.0} \
             GFLOP/s (the bf16 rows' shares are of it)"
        ),
        None => println!("bf16 rows: no share (their products run on neither AVX-512 BF16 nor AMX here)"),
    }
    println!(
        "medians of {} rounds; ms per call; ratio = pytorch / ours (above 1: ours faster); \
         products on random weights of the layer's shapes",
        args.rounds
    );
    if let Some(path) = &args.json {
        let report = json!({"threads": threads, "rounds": args.rounds, "f32_fma_peak_gflops": peaks.f32,
                "bf16_peak_gflops": peaks.bf16, "bf16_kernel": format!("{:?}", perceiver_kernels::cpu::bf16_kernel()),
                "results": rows});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
