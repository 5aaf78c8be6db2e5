//! The `perceiver-bench` binary end to end on the committed tiny fixture models, without the
//! PyTorch reference (`--no-reference`): each bench runs, its table and JSON have the rows and
//! fields the side-by-side scripts read, and bad arguments end in one line on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

const MODEL: &str = "tiny_qk_v_explicit";

/// The binary with a clean environment: offline, an empty Hugging Face home, and none of the
/// variables that could point it at a developer's real cache, model or settings.
fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver-bench"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env(
        "HF_HOME",
        std::env::temp_dir().join("perceiver-bench-tests-empty-hf-home"),
    );
    for (var, _) in std::env::vars() {
        if var.starts_with("PERCEIVER_")
            || ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT"].contains(&var.as_str())
        {
            cmd.env_remove(var);
        }
    }
    cmd.output().expect("run perceiver-bench")
}

fn model_arg(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A temporary file name for a bench's `--json` report.
fn json_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("perceiver-bench-{what}-{}.json", std::process::id()))
}

fn read_json(path: &Path) -> Value {
    let report = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    std::fs::remove_file(path).unwrap();
    report
}

/// Fails with exactly one line on stderr, naming `needle`, and no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "stderr should be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} should mention {needle:?}"
    );
}

/// `latent` without the reference: a row per product, the layer and the six products' sum, for
/// each precision and batch size, in the table and the JSON.
#[test]
fn latent_times_the_layer_and_its_products() {
    let json = json_path("latent");
    let out = bench(&[
        "latent",
        "--model",
        &model_arg(MODEL),
        "--no-reference",
        "--rounds",
        "2",
        "--run-ms",
        "2",
        "--batch-sizes",
        "1,3",
        "--precisions",
        "f32,bf16",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = stdout(&out);
    assert_eq!(table.matches("latent layer").count(), 4, "{table}");
    assert_eq!(table.matches("the six products").count(), 4, "{table}");
    let report = read_json(&json);
    let rows = report["results"].as_array().unwrap();
    // 2 precisions × 2 batch sizes × (layer + 6 products + their sum).
    assert_eq!(rows.len(), 32);
    for group in rows.chunks(8) {
        assert_eq!(group[0]["item"], "latent layer");
        assert_eq!(group[7]["item"], "the six products");
        let gflop = |row: &Value| row["gflop"].as_f64().unwrap();
        let seconds = |row: &Value| row["ours_seconds"].as_f64().unwrap();
        let products = &group[1..7];
        assert!((products.iter().map(gflop).sum::<f64>() - gflop(&group[7])).abs() < 1e-12);
        assert!((products.iter().map(seconds).sum::<f64>() - seconds(&group[7])).abs() < 1e-12);
        // The layer does the products' work and its attention's.
        assert!(gflop(&group[0]) > gflop(&group[7]));
        assert!(group
            .iter()
            .all(|row| seconds(row) > 0.0 && row["pytorch_seconds"].is_null()));
    }
}

#[test]
fn latent_rejects_bad_arguments() {
    assert_clean_failure(
        &bench(&["latent", "--model", "/nonexistent/model", "--no-reference"]),
        "no model at /nonexistent/model",
    );
    assert_clean_failure(
        &bench(&[
            "latent",
            "--model",
            &model_arg(MODEL),
            "--no-reference",
            "--batch-sizes",
            "0",
        ]),
        "--batch-sizes must be positive",
    );
}

/// `inference` without the reference: one row per workload asked for, f32 ones first, with our
/// timings and no PyTorch ones. On the built-in model: W3's texts are up to 202 tokens long.
#[test]
fn inference_reports_each_workload() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let model = model.to_str().unwrap();
    let json = json_path("inference");
    let out = bench(&[
        "inference",
        "--model",
        model,
        "--no-reference",
        "--workloads",
        "W4s,W2,W3,W1",
        "--rounds",
        "3",
        "--batch-sizes",
        "1,8",
        "--json",
        json.to_str().unwrap(),
    ]);
    let table = stdout(&out);
    assert!(table.contains("medians of 3 rounds"), "{table}");
    let report = read_json(&json);
    assert_eq!(report["rounds"], 3);
    let rows = report["results"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    assert_eq!(names, ["W2", "W3", "W1", "W4s"]);
    for row in rows {
        assert_eq!(row["ours_seconds"].as_array().unwrap().len(), 3, "{row}");
        assert!(row["ours_median"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ours_gflop"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["pytorch_median"].is_null(), "{row}");
        assert_eq!(row["pytorch_seconds"].as_array().unwrap().len(), 0, "{row}");
    }
    let gflop = |i: usize| rows[i]["ours_gflop"].as_f64().unwrap();
    // W1 decodes all of its 256 positions, W2 only its 9 masked ones; W4s is W2's work.
    assert!(gflop(2) > gflop(0));
    assert_eq!(gflop(3), gflop(0));
    assert_eq!(rows[0]["precision"], "float32");
    assert_eq!(rows[3]["precision"], "bfloat16");
    assert!([1, 8].contains(&rows[1]["ours_batch_size"].as_u64().unwrap()));
    assert_clean_failure(
        &bench(&[
            "inference",
            "--model",
            model,
            "--no-reference",
            "--workloads",
            "W9",
        ]),
        "unknown workload W9",
    );
}

/// `train-step --json`: the line `scripts/bench_train.py` reads, one time per timed step.
#[test]
fn train_step_prints_one_time_per_step() {
    let out = bench(&[
        "train-step",
        "--model",
        &model_arg(MODEL),
        "--batch-size",
        "2",
        "--seq-len",
        "40",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--json",
    ]);
    let text = stdout(&out);
    let line: Value = serde_json::from_str(text.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(line["impl"], "perceiver");
    let times: Vec<f64> = line["step_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    assert!(times.iter().all(|&t| t > 0.0));
    assert!(times.contains(&line["median"].as_f64().unwrap()));
    // The model takes 64 bytes: a longer window is the trainer's own error.
    assert_clean_failure(
        &bench(&["train-step", "--model", &model_arg(MODEL), "--seq-len", "65"]),
        "--seq-len 65",
    );
}

/// `serve` starts one server per batch cap on loopback and measures each at every concurrency:
/// a row per (round, concurrency, server), then the medians.
#[test]
fn serve_measures_each_server_at_each_concurrency() {
    let out = bench(&[
        "serve",
        "--model",
        &model_arg(MODEL),
        "--max-batch-requests",
        "1,4",
        "--concurrency",
        "1,3",
        "--requests",
        "12",
        "--duration",
        "30",
    ]);
    let table = stdout(&out);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| 1 |"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    for row in &rows {
        // | round | server | clients | requests | errors | ...
        assert_eq!(row[4], "12", "{table}");
        assert_eq!(row[5], "0", "{table}");
    }
    assert!(table.contains("Median over 1 round(s)"), "{table}");
    assert!(table.contains("| batch ≤ 4 | 3 |"), "{table}");
}

/// `batch-cost`: a row per batch size.
#[test]
fn batch_cost_reports_each_batch_size() {
    let out = bench(&["batch-cost", &model_arg(MODEL), "10", "1,4"]);
    let table = stdout(&out);
    assert!(table.starts_with("10 texts"), "{table}");
    assert!(table.contains("\n| 1 | "), "{table}");
    assert!(table.contains("\n| 4 | "), "{table}");
    assert_clean_failure(
        &bench(&["batch-cost", &model_arg(MODEL), "10", "0"]),
        "must be positive",
    );
}
