//! `perceiver train` as a process among others: SIGTERM and SIGHUP save like Ctrl-C, a run
//! directory is one process's at a time, a run resumes from any directory and only into a run
//! directory, a run killed before its first save is no dead end, and bad clipping is refused.

mod common;

use common::{command, fails_with, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// A temporary directory with a corpus and a config.
fn setup() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path()).to_string_lossy().into_owned();
    let config = common::write_tiny_config(dir.path())
        .to_string_lossy()
        .into_owned();
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

fn run_in(cwd: &Path, args: &[&str]) -> Output {
    let out = command(args).current_dir(cwd).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

fn weights(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
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
        // Twice at once, as `timeout` signals its child and then the process group: one stop,
        // not a second request to exit without saving.
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

/// Two processes on one run directory used to both train in it: interleaved metrics, and one's
/// partial checkpoint deleted under the other. Now the second is refused before it does anything.
#[test]
fn a_second_process_on_a_run_directory_is_refused() {
    let (dir, corpus, config) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let args = train_args(&corpus, &config, o, "100000", "100000");
    let child = start_long_run(&args, &out, 2);
    let in_use = format!("run directory {o} is in use by another training process");
    fails_with(&command(&["train", "--resume", o]).output().unwrap(), &in_use);
    fails_with(&command(&strs(&args)).output().unwrap(), &in_use);
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Each step logged once, in order.
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    run(&["train", "--resume", o, "--steps", &(steps.len() + 1).to_string()]);
}

/// A run started with relative paths used to save them as given: a resume from elsewhere failed,
/// or trained on another directory's file of that name. Now the run saves them absolute.
#[test]
fn a_run_started_with_relative_paths_resumes_from_anywhere() {
    let (dir, corpus, config) = setup();
    let rr = dir.path().join("rr");
    std::fs::create_dir(&rr).unwrap();
    std::fs::copy(Path::new(&corpus).join("part0.txt"), rr.join("c.txt")).unwrap();
    std::fs::copy(Path::new(&corpus).join("part1.txt"), rr.join("h.txt")).unwrap();
    // A file of the same name where the resume runs: not the run's.
    std::fs::write(dir.path().join("c.txt"), "something else entirely. ".repeat(100)).unwrap();
    let mut args = train_args("c.txt", &config, "run", "4", "2");
    args.extend(["--eval-corpus", "h.txt", "--eval-every", "2"].map(String::from));
    run_in(&rr, &strs(&args));
    args[6] = "straight".into(); // --out
    run_in(&rr, &strs(&args));

    let training: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rr.join("run/step-000004/training.json")).unwrap())
            .unwrap();
    let real = rr.canonicalize().unwrap();
    assert_eq!(
        training["options"]["corpus"][0],
        real.join("c.txt").to_str().unwrap()
    );
    assert_eq!(
        training["options"]["eval_corpus"][0],
        real.join("h.txt").to_str().unwrap()
    );

    // Resumed from the parent directory (after a step 6 of its own), and again from the run's
    // step 4 copy in a run directory of its own: the same weights as a run of 6 straight through.
    run_in(&rr, &["train", "--resume", "straight", "--steps", "6"]);
    run_in(dir.path(), &["train", "--resume", "rr/run", "--steps", "6"]);
    assert_eq!(
        weights(&rr.join("run/step-000006")),
        weights(&rr.join("straight/step-000006"))
    );
}

/// Resuming a checkpoint copied out of its run used to write the run (step directories,
/// metrics.jsonl, curves.svg) into whatever directory held the copy. Now it is refused with the
/// commands that give it a run directory, and those work.
#[test]
fn a_copied_checkpoint_resumes_only_in_a_run_directory_of_its_own() {
    let (dir, corpus, config) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let mut args = train_args(&corpus, &config, o, "4", "2");
    args.extend(["--keep-checkpoints", "3"].map(String::from));
    run(&strs(&args));

    let br = dir.path().join("br");
    std::fs::create_dir(&br).unwrap();
    let copied = br.join("mybranch");
    let cp = |args: &[&Path]| {
        let status = Command::new("cp").arg("-r").args(args).status().unwrap();
        assert!(status.success());
    };
    cp(&[&out.join("step-000002"), &copied]);
    let output = command(&["train", "--resume", "mybranch", "--steps", "4"])
        .current_dir(&br)
        .output()
        .unwrap();
    fails_with(&output, "not inside a run directory");
    fails_with(
        &output,
        "mkdir NEW && cp -r mybranch NEW/step-000002 && perceiver train --resume NEW",
    );
    assert_eq!(
        std::fs::read_dir(&br).unwrap().count(),
        1,
        "nothing written beside the copy"
    );

    // As the message says.
    let new = br.join("NEW");
    std::fs::create_dir(&new).unwrap();
    cp(&[&copied, &new.join("step-000002")]);
    run(&["train", "--resume", new.to_str().unwrap(), "--steps", "4"]);
    assert_eq!(
        weights(&new.join("step-000004")),
        weights(&out.join("step-000004"))
    );

    // An older checkpoint of a run: the message names the copy's layout, which resumes too.
    let older = out.join("step-000002");
    let output = command(&["train", "--resume", older.to_str().unwrap(), "--steps", "4"])
        .output()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    fails_with(
        &output,
        &format!(
            "mkdir NEW && cp -r {} {} NEW/ && perceiver train --resume NEW",
            older.display(),
            metrics.display()
        ),
    );
    let new2 = dir.path().join("NEW2");
    std::fs::create_dir(&new2).unwrap();
    cp(&[&older, &metrics, &new2]);
    run(&["train", "--resume", new2.to_str().unwrap(), "--steps", "4"]);
    assert_eq!(
        weights(&new2.join("step-000004")),
        weights(&out.join("step-000004"))
    );
}

/// A run killed before its first save (SIGKILL) leaves a metrics.jsonl and no checkpoint: a
/// resume used to call it "neither a checkpoint nor a run directory", and a new start said only
/// "choose another --out". Both now say what happened and what to remove.
#[test]
fn a_run_killed_before_its_first_save_says_how_to_start_again() {
    let (dir, corpus, config) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let args = train_args(&corpus, &config, o, "100000", "100000");
    let mut child = start_long_run(&args, &out, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let metrics = out.join("metrics.jsonl");
    fails_with(
        &command(&["train", "--resume", o]).output().unwrap(),
        "saved no checkpoint (it stopped before its first save), so there is nothing to resume",
    );
    fails_with(
        &command(&strs(&args)).output().unwrap(),
        &format!("to start again here, remove {}", metrics.display()),
    );
    std::fs::remove_file(&metrics).unwrap();
    run(&strs(&train_args(&corpus, &config, o, "2", "2")));
    assert!(out.join("step-000002/training.json").is_file());
}

/// A corpus file removed mid-run used to stop the run with every step since its last save lost.
#[test]
fn an_error_mid_run_saves_first_and_says_how_to_go_on() {
    let (dir, corpus, config) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let part1 = Path::new(&corpus).join("part1.txt");
    let kept = std::fs::read(&part1).unwrap();
    let child = start_long_run(&train_args(&corpus, &config, o, "100000", "100000"), &out, 3);
    std::fs::remove_file(&part1).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().last().unwrap();
    assert!(error.contains("part1.txt: No such file or directory"), "{stderr}");
    let saved = checkpoints(&out);
    assert_eq!(saved.len(), 1, "{saved:?}");
    let step: u64 = saved[0].trim_start_matches("step-").parse().unwrap();
    assert!(
        error.contains(&format!("the run is saved at step {step}"))
            && error.contains(&format!("continue with: perceiver train --resume {o}")),
        "{error}"
    );
    std::fs::write(&part1, kept).unwrap();
    run(&["train", "--resume", o, "--steps", &(step + 1).to_string()]);
}
