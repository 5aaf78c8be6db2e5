//! `perceiver-bench inference`: our engine and transformers (PyTorch) side by side on the same
//! weights, in one session, alternating, on the workloads of issue 5:
//!
//! - W1, the notebook's way: one text of 2048 tokens, every output position decoded (the
//!   notebook pads its sentence to 2048; here both sides get 2048 real tokens, the same 121 GFLOP
//!   of work for transformers and the most work for us);
//! - W2, a user's fill-mask: the notebook's 60-byte sentence with " missing." (9 bytes) masked;
//!   ours unpadded with the masked positions decoded, transformers on the unpadded input;
//! - W3, throughput: 64 texts of 40–200 bytes with 15% of the bytes masked; each side in the batch
//!   size it does best (tried at warm-up; transformers pads each batch to its longest text);
//! - W4: W1 in bf16 on both sides (ours: bf16 weight products; transformers:
//!   `model.to(torch.bfloat16)`), and W4s: W2 in bf16.
//!
//! The PyTorch side is `scripts/bench_reference.py --serve`, a worker this command drives over
//! stdin/stdout. Each round runs every workload on both sides, the order alternating per round;
//! medians are over the rounds after one warm-up run each.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use perceiver::tokenizer::MASK_ID;
use perceiver::{BytesTokenizer, FillMask, MaskedText, PerceiverModel, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::child::PythonArgs;
use crate::stats::median;

#[derive(Args)]
pub struct InferenceArgs {
    /// The model to time (a directory). Make the 201M random one with
    /// `.venv-ref/bin/python scripts/make_parity_fixtures.py --full target/full-random`.
    #[arg(long, default_value = "target/full-random")]
    model: PathBuf,
    /// Workloads to run, comma-separated (W1, W2, W3, W4, W4s).
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4,W4s")]
    workloads: Vec<String>,
    /// Timed runs per workload and side (after one warm-up run).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Batch sizes each side tries for W3 at warm-up (the fastest is timed).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    batch_sizes: Vec<usize>,
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the PyTorch side comes from (shared by the benches that run it).
#[derive(Args)]
pub(crate) struct ReferenceArgs {
    #[command(flatten)]
    side: PythonArgs,
    #[arg(long, default_value = "scripts/bench_reference.py")]
    reference_script: PathBuf,
}

impl ReferenceArgs {
    /// The PyTorch worker on `model`, or `None` with `--no-reference`.
    pub(crate) fn start(&self, model: &Path, threads: usize) -> Result<Option<Reference>> {
        if self.side.no_reference {
            return Ok(None);
        }
        Reference::start(&self.side.python, &self.reference_script, model, threads).map(Some)
    }
}

/// The notebook's sentence and the bytes it masks.
const SENTENCE: &str = "This is an incomplete sentence where some words are missing.";
const MASKED_WORD: &str = " missing.";

struct Workload {
    name: &'static str,
    what: &'static str,
    precision: Precision,
    /// Token ids (special tokens included, masked bytes already [MASK]) and positions we decode.
    texts: Vec<MaskedText>,
    /// Batch sizes each side tries at warm-up.
    batch_sizes: Vec<usize>,
    /// The batch sizes each side chose at warm-up.
    our_batch_size: usize,
    reference_batch_size: Option<usize>,
}

fn sentence_text() -> MaskedText {
    let tokenizer = BytesTokenizer;
    let start = SENTENCE
        .find(MASKED_WORD)
        .expect("the masked word is in the sentence");
    let mut ids = tokenizer.with_special_tokens(&tokenizer.encode(SENTENCE));
    // +1: the [CLS] id before the text.
    let positions: Vec<usize> = (start + 1..start + 1 + MASKED_WORD.len()).collect();
    for &p in &positions {
        ids[p] = MASK_ID;
    }
    MaskedText {
        ids,
        mask_positions: positions,
    }
}

fn long_text(len: usize) -> MaskedText {
    let tokenizer = BytesTokenizer;
    let body: String = SENTENCE.repeat(len / SENTENCE.len() + 1);
    let mut ids = tokenizer.with_special_tokens(&tokenizer.encode(&body[..len - 2]));
    ids.truncate(len);
    MaskedText {
        mask_positions: (0..len).collect(),
        ids,
    }
}

/// 64 texts of 40–200 bytes of English-looking words, 15% of the bytes masked.
fn throughput_texts() -> Vec<MaskedText> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "that",
        "for",
        "on",
        "with",
        "as",
        "by",
        "at",
        "from",
        "his",
        "her",
        "they",
        "which",
        "were",
        "been",
        "have",
        "their",
        "there",
        "would",
        "about",
        "into",
        "river",
        "morning",
        "language",
        "perceiver",
        "attention",
        "between",
        "through",
        "mountain",
        "letter",
    ];
    let tokenizer = BytesTokenizer;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..64)
        .map(|_| {
            let target = rng.random_range(40..=200);
            let mut text = String::new();
            while text.len() < target {
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                text.push(' ');
            }
            text.truncate(target);
            let mut ids = tokenizer.with_special_tokens(&tokenizer.encode(&text));
            let count = ((target as f64) * 0.15).round() as usize;
            let mut positions: Vec<usize> = Vec::new();
            while positions.len() < count {
                let p = rng.random_range(1..=target);
                if !positions.contains(&p) {
                    positions.push(p);
                }
            }
            positions.sort_unstable();
            for &p in &positions {
                ids[p] = MASK_ID;
            }
            MaskedText {
                ids,
                mask_positions: positions,
            }
        })
        .collect()
}

fn workloads(names: &[String], max_len: usize, throughput_batch_sizes: &[usize]) -> Result<Vec<Workload>> {
    if throughput_batch_sizes.is_empty() || throughput_batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive numbers");
    }
    names
        .iter()
        .map(|name| {
            let (name, what, precision, texts, batch_sizes) = match name.to_ascii_uppercase().as_str() {
                "W1" => (
                    "W1",
                    "1 x 2048 tokens, all 2048 decoded",
                    Precision::F32,
                    vec![long_text(max_len)],
                    vec![1],
                ),
                "W2" => (
                    "W2",
                    "60-byte fill-mask, 9 masked",
                    Precision::F32,
                    vec![sentence_text()],
                    vec![1],
                ),
                "W3" => (
                    "W3",
                    "64 texts of 40-200 bytes, 15% masked",
                    Precision::F32,
                    throughput_texts(),
                    throughput_batch_sizes.to_vec(),
                ),
                "W4" => (
                    "W4",
                    "W1 in bf16",
                    Precision::Bf16,
                    vec![long_text(max_len)],
                    vec![1],
                ),
                "W4S" => (
                    "W4s",
                    "W2 in bf16",
                    Precision::Bf16,
                    vec![sentence_text()],
                    vec![1],
                ),
                other => bail!("unknown workload {other}: use W1, W2, W3, W4, W4s"),
            };
            Ok(Workload {
                name,
                what,
                precision,
                texts,
                batch_sizes,
                our_batch_size: 1,
                reference_batch_size: None,
            })
        })
        .collect()
}

/// The PyTorch worker (`scripts/bench_reference.py --serve`), also driven by `perceiver-bench latent`.
pub(crate) struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    /// Starts `python script --serve model --threads threads` and waits until it is ready.
    pub(crate) fn start(python: &Path, script: &Path, model: &Path, threads: usize) -> Result<Self> {
        let mut child = Command::new(python)
            .arg(script)
            .arg("--serve")
            .arg(model)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the reference {} {} (make the environment with \
                     `python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/requirements-reference.txt`, \
                     or pass --no-reference)",
                    python.display(),
                    script.display()
                )
            })?;
        let stdin = child.stdin.take().context("reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("reference stdout")?);
        let mut reference = Self { child, stdin, stdout };
        let ready = reference.read()?;
        eprintln!(
            "reference: torch {} on {} threads{}",
            ready["torch"],
            ready["threads"],
            crate::child::capability(&ready)
        );
        Ok(reference)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the reference worker exited (see its messages above)");
        }
        let value: Value = serde_json::from_str(&line).with_context(|| format!("reference said {line:?}"))?;
        if let Some(error) = value.get("error") {
            bail!("reference: {error}");
        }
        Ok(value)
    }

    pub(crate) fn call(&mut self, message: Value) -> Result<Value> {
        writeln!(self.stdin, "{message}")?;
        self.stdin.flush()?;
        self.read()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.child.wait();
    }
}

fn run_ours(fill: &FillMask, texts: &[MaskedText], batch_size: usize) -> Result<f64> {
    let started = Instant::now();
    for batch in texts.chunks(batch_size) {
        fill.predict(batch, 5)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits before a timed run, so that the other side's threads have gone to sleep: PyTorch's
/// OpenMP workers spin for a while after each parallel region (GNU libgomp's default), and
/// sampling the worker's CPU time showed ~10 ms of it inside each of our runs started right
/// after its reply. Both sides wait alike.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// One round's timed runs of a workload the reference has prepared as `name`: ours, and
/// PyTorch's when there is a reference, in an order that alternates by round (so that neither
/// side always runs on a cache the other warmed), each after the other side has settled.
/// Returns (ours, PyTorch's) seconds.
pub(crate) fn time_round(
    round: usize,
    reference: Option<&mut Reference>,
    name: &str,
    ours: impl FnOnce() -> Result<f64>,
) -> Result<(f64, Option<f64>)> {
    let Some(reference) = reference else {
        return Ok((ours()?, None));
    };
    let mut theirs = || -> Result<f64> {
        settle();
        reference.call(json!({"cmd": "run", "name": name}))?["seconds"]
            .as_f64()
            .context("reference time")
    };
    if round.is_multiple_of(2) {
        settle();
        let ours = ours()?;
        Ok((ours, Some(theirs()?)))
    } else {
        let theirs = theirs()?;
        settle();
        Ok((ours()?, Some(theirs)))
    }
}

/// The name of `precision` in torch (`torch.float32`, `torch.bfloat16`).
pub(crate) fn torch_dtype(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => "float32",
        Precision::Bf16 => "bfloat16",
    }
}

/// Peak resident memory of this process so far (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The benchmarks' model, in f32: a directory with config.json and weights.
pub(crate) fn load_bench_model(model: &Path) -> Result<PerceiverModel> {
    if !model.join("config.json").is_file() {
        bail!(
            "no model at {}: make the 201M random one with \
             `.venv-ref/bin/python scripts/make_parity_fixtures.py --full {}`",
            model.display(),
            model.display()
        );
    }
    perceiver::Loader::new(model.to_string_lossy())
        .load()
        .with_context(|| format!("cannot load {}", model.display()))
}

pub fn run(args: InferenceArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let engine = load_bench_model(&args.model)?;
    let mut workloads = workloads(&args.workloads, engine.max_len(), &args.batch_sizes)?;
    let mut reference = args.reference.start(&args.model, threads)?;
    crate::machine::describe(threads);

    // f32 workloads first, so that the peak memory they report excludes the bf16 weight copy.
    let mut rows = Vec::new();
    let mut f32_peak = None;
    for precision in [Precision::F32, Precision::Bf16] {
        let group: Vec<&mut Workload> = workloads
            .iter_mut()
            .filter(|w| w.precision == precision)
            .collect();
        if group.is_empty() {
            continue;
        }
        let mut model: PerceiverModel = engine.clone();
        model.set_precision(precision);
        let fill = FillMask::new(model)?;
        let dtype = torch_dtype(precision);
        let mut times: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
        let mut group = group;
        for w in group.iter_mut() {
            // Our batch size: the fastest of the candidates, after a warm-up run.
            run_ours(&fill, &w.texts, w.batch_sizes[0])?;
            let mut best = (f64::INFINITY, 1);
            for &b in &w.batch_sizes {
                let t = run_ours(&fill, &w.texts, b)?;
                eprintln!("  ours {}: batch size {b}: {t:.3} s", w.name);
                if t < best.0 {
                    best = (t, b);
                }
            }
            w.our_batch_size = best.1;
            if let Some(r) = reference.as_mut() {
                let texts: Vec<&Vec<u32>> = w.texts.iter().map(|t| &t.ids).collect();
                let answer = r.call(json!({
                    "cmd": "prepare", "name": w.name, "texts": texts, "dtype": dtype, "batch_sizes": w.batch_sizes,
                }))?;
                w.reference_batch_size = answer["batch_size"].as_u64().map(|b| b as usize);
            }
            eprintln!(
                "{}: ours batch {}, pytorch batch {:?}",
                w.name, w.our_batch_size, w.reference_batch_size
            );
            times.push((Vec::new(), Vec::new()));
        }
        for round in 0..args.rounds {
            for (w, (ours, theirs)) in group.iter().zip(times.iter_mut()) {
                let (mine, pytorch) = time_round(round, reference.as_mut(), w.name, || {
                    run_ours(&fill, &w.texts, w.our_batch_size)
                })?;
                ours.push(mine);
                theirs.extend(pytorch);
            }
            eprintln!("round {} of {} done", round + 1, args.rounds);
        }
        if precision == Precision::F32 {
            f32_peak = peak_rss();
        }
        for (w, (ours, theirs)) in group.iter().zip(&times) {
            let max_len = engine.max_len();
            let lens: Vec<usize> = w.texts.iter().map(|t| t.ids.len()).collect();
            let counts: Vec<usize> = w.texts.iter().map(|t| t.mask_positions.len()).collect();
            // A FillMask's model is a masked LM: both counts are there.
            let our_flops = engine.forward_flops(&lens, &counts).unwrap_or(f64::NAN);
            // transformers: each batch padded to its longest text, all positions decoded.
            let their_flops: f64 = w
                .texts
                .chunks(w.reference_batch_size.unwrap_or(1).max(1))
                .map(|batch| {
                    let padded = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0);
                    engine
                        .reference_flops(&vec![padded; batch.len()], &vec![max_len; batch.len()])
                        .unwrap_or(f64::NAN)
                })
                .sum();
            let (m_ours, m_theirs) = (median(ours), median(theirs));
            rows.push(json!({
                "workload": w.name, "what": w.what, "precision": dtype,
                "ours_seconds": ours, "pytorch_seconds": theirs,
                "ours_median": m_ours, "pytorch_median": if theirs.is_empty() { Value::Null } else { json!(m_theirs) },
                "ratio_pytorch_over_ours": if theirs.is_empty() { Value::Null } else { json!(m_theirs / m_ours) },
                "ours_gflop": our_flops / 1e9, "ours_gflops_per_s": our_flops / 1e9 / m_ours,
                "pytorch_gflop": their_flops / 1e9,
                "pytorch_gflops_per_s": if theirs.is_empty() { Value::Null } else { json!(their_flops / 1e9 / m_theirs) },
                "ours_batch_size": w.our_batch_size, "pytorch_batch_size": w.reference_batch_size,
            }));
        }
    }
    drop(reference);

    println!(
        "{:<4} {:<38} {:>9} {:>11} {:>6} {:>10} {:>12} {:>13} {:>15}",
        "",
        "workload",
        "ours (s)",
        "pytorch (s)",
        "ratio",
        "ours GFLOP",
        "ours GFLOP/s",
        "pytorch GFLOP",
        "pytorch GFLOP/s"
    );
    for row in &rows {
        println!(
            "{:<4} {:<38} {:>9.3} {:>11} {:>6} {:>10.1} {:>12.0} {:>13.1} {:>15}",
            row["workload"].as_str().unwrap_or(""),
            row["what"].as_str().unwrap_or(""),
            row["ours_median"].as_f64().unwrap_or(f64::NAN),
            row["pytorch_median"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.3}")),
            row["ratio_pytorch_over_ours"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2}")),
            row["ours_gflop"].as_f64().unwrap_or(f64::NAN),
            row["ours_gflops_per_s"].as_f64().unwrap_or(f64::NAN),
            row["pytorch_gflop"].as_f64().unwrap_or(f64::NAN),
            row["pytorch_gflops_per_s"]
                .as_f64()
                .map_or("-".into(), |g| format!("{g:.0}")),
        );
    }
    println!(
        "medians of {} rounds; ratio = pytorch / ours (above 1: ours faster)",
        args.rounds
    );
    if let Some(peak) = f32_peak {
        println!(
            "peak resident memory of this process after the f32 workloads: {:.0} MB",
            peak as f64 / 1e6
        );
    }
    if let Some(path) = &args.json {
        let report = json!({"threads": threads, "rounds": args.rounds, "results": rows, "f32_peak_rss_bytes": f32_peak});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
