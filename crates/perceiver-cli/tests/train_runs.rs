//! `perceiver train` as a process among others: SIGTERM and SIGHUP save like Ctrl-C, and bad
//! clipping is refused.

mod common;

use common::{command, fails_with, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A few KB of varied sentences in `dir/corpus/`, two files.
fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let words = [
        "cat",
        "dog",
        "reads",
        "paints",
        "a red book",
        "the garden",
        "every day",
    ];
    for file in 0..2 {
        let text: String = (0..200)
            .map(|i| {
                format!(
                    "{} {} {}. ",
                    words[(i + file) % 7],
                    words[(i / 7) % 7],
                    words[(i / 3) % 7]
                )
            })
            .collect();
        std::fs::write(corpus.join(format!("part{file}.txt")), text).unwrap();
    }
    corpus
}

/// A model small enough for CI: 16-wide bytes, 8 latents of 32, one latent layer.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.json");
    let config = serde_json::json!({
        "d_model": 16, "num_latents": 8, "d_latents": 32, "num_blocks": 1,
        "num_self_attends_per_block": 1, "num_self_attention_heads": 2, "num_cross_attention_heads": 1,
        "max_position_embeddings": 64, "attention_probs_dropout_prob": 0.0
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// A temporary directory with a corpus and a config.
fn setup() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path()).to_string_lossy().into_owned();
    let config = write_config(dir.path()).to_string_lossy().into_owned();
    (dir, corpus, config)
}

/// Training flags for the tiny model, no held-out text.
fn train_args(corpus: &str, config: &str, out: &str, steps: &str, save_every: &str) -> Vec<String> {
    [
        "train",
        "--config",
        config,
        "--corpus",
        corpus,
        "--out",
        out,
        "--steps",
        steps,
        "--save-every",
        save_every,
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--eval-fraction",
        "0",
        "--log-every",
        "1",
        "--seed",
        "3",
        "--plot",
        "false",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Starts a long run in the background and waits until it has logged `records` steps.
fn start_long_run(args: &[String], run_dir: &Path, records: usize) -> Child {
    let mut child = command(&strs(args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < records {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before training: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn checkpoints(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    names
}

/// SIGTERM (timeout, kill, systemd, docker stop, Slurm) and SIGHUP (a closed terminal) used to
/// kill a run with nothing saved since its last checkpoint (before the first: a directory nothing
/// could resume or start again). Now each saves like a first Ctrl-C and exits 130.
#[test]
fn sigterm_and_sighup_save_a_checkpoint_that_resumes() {
    let (dir, corpus, config) = setup();
    for name in ["TERM", "HUP"] {
        let out = dir.path().join(format!("run-{name}"));
        let o = out.to_str().unwrap();
        let child = start_long_run(&train_args(&corpus, &config, o, "100000", "100000"), &out, 3);
        signal(&child, name);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "SIG{name}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(
            stderr.contains("continue with: perceiver train --resume"),
            "{stderr}"
        );
        let saved = checkpoints(&out);
        assert_eq!(saved.len(), 1, "SIG{name}: {saved:?}");
        let step: u64 = saved[0].trim_start_matches("step-").parse().unwrap();
        assert!(step >= 3);
        run(&["train", "--resume", o, "--steps", &(step + 1).to_string()]);
        assert!(out.join(format!("step-{:06}", step + 1)).is_dir());
    }
}

/// `--clip-norm -1` and `NaN` used to turn clipping off without a word.
#[test]
fn a_negative_or_nan_clip_norm_is_refused() {
    let (dir, corpus, config) = setup();
    let out = dir.path().join("run");
    for value in ["-1", "NaN", "inf"] {
        let mut args = train_args(&corpus, &config, out.to_str().unwrap(), "2", "2");
        args.push(format!("--clip-norm={value}"));
        let output = command(&strs(&args)).output().unwrap();
        fails_with(&output, "--clip-norm must be 0 (off) or a positive finite norm");
        assert!(!out.exists());
    }
    let mut args = train_args(&corpus, &config, out.to_str().unwrap(), "2", "2");
    args.extend(["--clip-norm".into(), "0".into()]);
    run(&strs(&args));
}

