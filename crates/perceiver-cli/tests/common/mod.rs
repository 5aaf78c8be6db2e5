//! How the CLI tests run the `perceiver` binary: offline, with an empty Hugging Face home and
//! none of the variables that could point it at a developer's cache, token, endpoint or model.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary with a clean environment and two kernel threads.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("perceiver-cli-tests-empty-hf-home"),
        )
        .env("RAYON_NUM_THREADS", "2");
    for var in ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "PERCEIVER_MODEL"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs it and asserts success.
pub fn run(args: &[&str]) -> Output {
    let out = command(args).output().expect("run perceiver");
    assert!(
        out.status.success(),
        "perceiver {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts that a run failed with one line on stderr containing `needle` (and a non-zero exit).
pub fn fails_with(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

/// A config.json for a model small enough for CI: 16-wide bytes, 8 latents of 32, one latent layer.
pub fn write_tiny_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.json");
    let config = serde_json::json!({
        "d_model": 16, "num_latents": 8, "d_latents": 32, "num_blocks": 1,
        "num_self_attends_per_block": 1, "num_self_attention_heads": 2, "num_cross_attention_heads": 1,
        "max_position_embeddings": 64, "attention_probs_dropout_prob": 0.0
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The `kind` records (`"train"` or `"eval"`) of a run's `metrics.jsonl`.
pub fn records(run_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == kind)
        .collect()
}
