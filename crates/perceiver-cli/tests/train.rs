//! `perceiver train`, `eval` and `plot` end to end on a tiny model and a generated corpus: the loss
//! falls, a run stopped and resumed equals an uninterrupted one bit for bit, Ctrl-C saves, the
//! checkpoint fills masks, and bad input fails cleanly.

mod common;

use common::{command, records, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fails(args: &[&str], needle: &str) {
    let out = command(args).output().expect("run perceiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(stderr.trim().lines().count(), 1, "one line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
}

/// A small corpus of varied sentences, generated (so nothing in the repository is trained on).
fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let subjects = [
        "The cat",
        "A dog",
        "My friend",
        "The old man",
        "Our teacher",
        "Her sister",
    ];
    let verbs = ["reads", "paints", "finds", "carries", "loves", "watches"];
    let objects = [
        "a red book",
        "the garden",
        "two apples",
        "the blue sea",
        "a quiet song",
        "the map",
    ];
    for file in 0..3 {
        let mut text = String::new();
        for i in 0..400 {
            let k = i * 7 + file * 13;
            text.push_str(&format!(
                "{} {} {} every day. ",
                subjects[k % 6],
                verbs[(k / 6) % 6],
                objects[(k / 36) % 6]
            ));
        }
        std::fs::write(corpus.join(format!("part{file}.txt")), text).unwrap();
    }
    let heldout: String = (0..40)
        .map(|i| {
            format!(
                "{} {} {} at night. ",
                subjects[i % 6],
                verbs[(i / 2) % 6],
                objects[(i / 3) % 6]
            )
        })
        .collect();
    std::fs::write(dir.join("heldout.txt"), heldout).unwrap();
    corpus
}

/// Training flags for the tiny model; the held-out text is `corpus/../heldout`.
fn train_args<'a>(corpus: &'a str, config: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        config,
        "--corpus",
        corpus,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--log-every",
        "1",
        "--eval-every",
        "10",
        "--save-every",
        "10",
        "--eval-corpus",
        heldout(corpus),
        "--eval-windows",
        "16",
        "--seed",
        "3",
    ]
}

fn heldout(corpus: &str) -> &'static str {
    let path = Path::new(corpus).parent().unwrap().join("heldout.txt");
    Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
}

/// Sets `flag` to `value` in `args`.
fn set<'a>(args: &mut Vec<&'a str>, flag: &'a str, value: &'a str) {
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
}

/// A run's train records, everything in them but the timing.
fn train_records_but_speed(run_dir: &Path) -> Vec<Value> {
    let mut rs = records(run_dir, "train");
    for r in &mut rs {
        r.as_object_mut().unwrap().remove("bytes_per_second");
        r.as_object_mut().unwrap().remove("examples_per_second");
    }
    rs
}

/// A temporary directory with a corpus and a config; their paths as strings.
fn setup() -> (tempfile::TempDir, &'static str, &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let leak = |p: PathBuf| -> &'static str { Box::leak(p.to_string_lossy().into_owned().into_boxed_str()) };
    let corpus = leak(write_corpus(dir.path()));
    let config = leak(common::write_tiny_config(dir.path()));
    (dir, corpus, config)
}

fn weights(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn loss_falls_checkpoint_fills_masks_evaluates_and_plots() {
    let (dir, c, f) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    run(&train_args(c, f, o, "60"));

    let train = records(&out, "train");
    assert_eq!(train.len(), 60);
    let mean = |rs: &[Value]| rs.iter().map(|r| r["loss"].as_f64().unwrap()).sum::<f64>() / rs.len() as f64;
    let (first, last) = (mean(&train[..5]), mean(&train[55..]));
    println!("training loss: first 5 steps {first:.3}, last 5 steps {last:.3}");
    assert!(last < 0.5 * first, "loss did not fall: {first} → {last}");
    let eval = records(&out, "eval");
    assert_eq!(eval.len(), 6, "held-out evaluation every 10 steps");
    assert!(eval[5]["loss"].as_f64().unwrap() < eval[0]["loss"].as_f64().unwrap());

    let checkpoint = out.join("step-000060");
    for file in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "training.json",
    ] {
        assert!(checkpoint.join(file).is_file(), "{file} missing");
    }
    assert!(out.join("curves.svg").is_file());
    // Only the newest checkpoints are kept (default 3).
    let kept: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert_eq!(kept.len(), 3);

    let ckpt = checkpoint.to_str().unwrap();
    let filled = run(&[
        "fill-mask",
        "--model",
        ckpt,
        "--json",
        "The cat reads a red bo[MASK:2] every day.",
    ]);
    let answer: Value = serde_json::from_slice(&filled.stdout).unwrap();
    assert_eq!(answer["masks"].as_array().unwrap().len(), 2);

    // `eval` of the held-out text with the run's seed, windows and batch size masks the same
    // bytes as the run's own last evaluation, of the same weights: the same numbers.
    let held_out = run(&[
        "eval",
        "--model",
        ckpt,
        heldout(c),
        "--json",
        "--seq-len",
        "64",
        "--seed",
        "3",
        "--max-windows",
        "16",
        "--batch-size",
        "8",
    ]);
    let result: Value = serde_json::from_slice(&held_out.stdout).unwrap();
    let recorded = &eval[5];
    assert_eq!(result["accuracy"], recorded["accuracy"], "{result} vs {recorded}");
    assert!((result["loss"].as_f64().unwrap() - recorded["loss"].as_f64().unwrap()).abs() < 1e-6);
    // And it learnt: 25 times the 1-in-256 of guessing (the unigram plateau is ~16%).
    assert!(result["accuracy"].as_f64().unwrap() > 0.1, "{result}");

    let eval_out = run(&["eval", "--model", ckpt, c, "--json", "--seq-len", "64"]);
    let result: Value = serde_json::from_slice(&eval_out.stdout).unwrap();
    let bpb = result["bits_per_byte"].as_f64().unwrap();
    assert!((bpb - result["loss"].as_f64().unwrap() / std::f64::consts::LN_2).abs() < 1e-9);
    // Same seed, same masks, same numbers.
    let again = run(&["eval", "--model", ckpt, c, "--json", "--seq-len", "64"]);
    assert_eq!(eval_out.stdout, again.stdout);

    std::fs::remove_file(out.join("curves.svg")).unwrap();
    let plotted = run(&["plot", o]);
    assert!(String::from_utf8_lossy(&plotted.stdout).contains("curves.svg"));
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}

#[test]
fn a_stopped_and_resumed_run_equals_an_uninterrupted_one() {
    let (dir, c, f) = setup();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    run(&train_args(c, f, whole.to_str().unwrap(), "30"));

    let mut first = train_args(c, f, parts.to_str().unwrap(), "30");
    set(&mut first, "--stop-at", "13"); // between two scheduled checkpoints
    run(&first);
    assert!(parts.join("step-000013").is_dir());
    run(&["train", "--resume", parts.to_str().unwrap()]);

    let (a, b) = (train_records_but_speed(&whole), train_records_but_speed(&parts));
    assert_eq!(a.len(), 30);
    assert_eq!(
        a, b,
        "per-step losses, accuracies, learning rates and gradient norms"
    );
    assert_eq!(records(&whole, "eval"), records(&parts, "eval"));
    assert_eq!(
        weights(&whole.join("step-000030")),
        weights(&parts.join("step-000030")),
        "final weights differ"
    );
}

/// `--precision bf16` (mixed precision) learns as f32 does, with numbers of its own (its products
/// round); the precision is saved with the run, and a resume keeps it and refuses to change it.
#[test]
fn a_mixed_precision_run_learns_and_resumes_in_bf16() {
    let (dir, c, f) = setup();
    let (f32_dir, bf16_dir) = (dir.path().join("f32"), dir.path().join("bf16"));
    let o = bf16_dir.to_str().unwrap();
    run(&train_args(c, f, f32_dir.to_str().unwrap(), "30"));
    let mut args = train_args(c, f, o, "30");
    set(&mut args, "--precision", "bf16");
    set(&mut args, "--stop-at", "13");
    run(&args);
    fails(
        &["train", "--resume", o, "--precision", "f32"],
        "--precision cannot change a resumed run",
    );
    run(&["train", "--resume", o]);

    let training: Value =
        serde_json::from_slice(&std::fs::read(bf16_dir.join("step-000030/training.json")).unwrap()).unwrap();
    assert_eq!(training["options"]["precision"], "bf16");
    let losses = |run_dir: &Path| -> Vec<f64> {
        records(run_dir, "train")
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (want, got) = (losses(&f32_dir), losses(&bf16_dir));
    assert_eq!(got.len(), 30);
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    println!(
        "loss, first and last 5 steps: f32 {:.3} → {:.3}, bf16 {:.3} → {:.3}",
        mean(&want[..5]),
        mean(&want[25..]),
        mean(&got[..5]),
        mean(&got[25..])
    );
    assert!(
        (got[0] - want[0]).abs() < 0.02 * want[0],
        "first step: bf16 {}, f32 {}",
        got[0],
        want[0]
    );
    assert_ne!(got, want, "the bf16 run's products rounded nothing");
    assert!(
        mean(&got[25..]) < 0.6 * mean(&got[..5]),
        "bf16 loss did not fall: {got:?}"
    );
    assert!(
        mean(&got[25..]) < 1.1 * mean(&want[25..]),
        "bf16 {got:?}, f32 {want:?}"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let (dir, c, f) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let mut args = train_args(c, f, o, "100000");
    set(&mut args, "--save-every", "0");
    set(&mut args, "--eval-every", "0");
    let child = command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few steps, then interrupt.
    let started = Instant::now();
    while records_or_empty(&out).len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let saved: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let step: u64 = saved[0].trim_start_matches("step-").parse().unwrap();
    assert!(step >= 3);
    run(&["train", "--resume", o, "--steps", &(step + 2).to_string()]);
    assert!(out.join(format!("step-{:06}", step + 2)).is_dir());
}

fn records_or_empty(run_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

#[test]
fn bad_training_input_fails_cleanly() {
    let (dir, c, f) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    fails(
        &["train", "--config", f, "--corpus", "/no/such/corpus", "--out", o],
        "no such file or directory",
    );
    fails(
        &[
            "train",
            "--config",
            f,
            "--corpus",
            c,
            "--out",
            o,
            "--seq-len",
            "65",
        ],
        "max_position_embeddings",
    );
    fails(
        &["train", "--preset", "huge", "--corpus", c, "--out", o],
        "unknown preset",
    );
    fails(
        &[
            "train",
            "--config",
            f,
            "--corpus",
            c,
            "--out",
            o,
            "--mask-rate",
            "1.5",
        ],
        "mask rate",
    );
    fails(&["train", "--resume", "/no/such/run"], "no such directory");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("tiny.txt"), "ab").unwrap();
    fails(
        &[
            "train",
            "--config",
            f,
            "--corpus",
            empty.to_str().unwrap(),
            "--out",
            o,
        ],
        "no training text",
    );
    // A model that is neither a masked LM nor a classifier is not trained on (the advice was
    // once a task that refuses it too); a classifier is trained as one.
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow/tiny_flow");
    fails(
        &[
            "train",
            "--init-from",
            flow.to_str().unwrap(),
            "--corpus",
            c,
            "--out",
            o,
        ],
        "PerceiverForOpticalFlow: this tool trains byte masked LMs and classifiers of texts and images only",
    );
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/classification/tiny_image_fourier");
    fails(
        &[
            "train",
            "--init-from",
            image.to_str().unwrap(),
            "--corpus",
            c,
            "--out",
            o,
        ],
        "PerceiverForImageClassificationFourier: train it with --task classify",
    );

    // A finished run refuses a fresh start over it, and a corrupt checkpoint is named.
    let mut args = train_args(c, f, o, "2");
    set(&mut args, "--save-every", "1");
    run(&args);
    fails(&args, "already holds checkpoints");
    let model = out.join("step-000002/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["train", "--resume", o, "--steps", "4"], "step-000002");
    fails(
        &["eval", "--model", out.join("step-000002").to_str().unwrap(), c],
        "model.safetensors",
    );
    // A model of another task is named as such (not a missing tensor).
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow/tiny_flow");
    fails(
        &["eval", "--model", flow.to_str().unwrap(), c],
        "eval needs a PerceiverForMaskedLM or a classifier, not a PerceiverForOpticalFlow",
    );
}

/// `train` with `args`, run in `cwd`.
fn run_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    let out = command(args).current_dir(cwd).output().expect("run perceiver");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

#[test]
fn resume_refuses_what_it_cannot_do_and_keeps_the_users_files() {
    let (dir, c, f) = setup();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let mut args = train_args(c, f, o, "4");
    set(&mut args, "--save-every", "2");
    set(&mut args, "--log-every", "4");
    run(&args);

    // Flags a resume would ignore are named, not ignored.
    fails(
        &[
            "train",
            "--resume",
            o,
            "--steps",
            "8",
            "--lr",
            "0.5",
            "--save-every",
            "1",
            "--batch-size",
            "7",
            "--seed",
            "9",
        ],
        "--batch-size, --lr, --seed, --save-every cannot change a resumed run",
    );
    // Fewer steps than done.
    fails(
        &["train", "--resume", o, "--steps", "3"],
        "--steps 3 is below the checkpoint's step 4",
    );
    // An older checkpoint would fork the run.
    fails(
        &[
            "train",
            "--resume",
            out.join("step-000002").to_str().unwrap(),
            "--steps",
            "6",
        ],
        "not the newest checkpoint",
    );

    // A bad line in metrics.jsonl is refused, not wiped.
    let metrics = out.join("metrics.jsonl");
    let kept = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, format!("not json\n{kept}")).unwrap();
    fails(&["train", "--resume", o, "--steps", "6"], "metrics.jsonl line 1");
    assert_eq!(
        std::fs::read_to_string(&metrics).unwrap(),
        format!("not json\n{kept}")
    );
    std::fs::write(&metrics, &kept).unwrap();

    // A fresh run never truncates another run's metrics, evaluation or curves.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("metrics.jsonl"), &kept).unwrap();
    fails(
        &train_args(c, f, other.to_str().unwrap(), "2"),
        "already holds a run's metrics.jsonl",
    );
    assert_eq!(
        std::fs::read_to_string(other.join("metrics.jsonl")).unwrap(),
        kept
    );
    // An empty one (left by a start that failed or diverged at its first step) is nobody's
    // history: a new start takes the directory.
    std::fs::write(other.join("metrics.jsonl"), "").unwrap();
    run(&train_args(c, f, other.to_str().unwrap(), "2"));
    assert!(other.join("step-000002").is_dir());
    // Bad input leaves no empty --out behind.
    let fresh = dir.path().join("fresh");
    let mut bad = train_args(c, f, fresh.to_str().unwrap(), "2");
    set(&mut bad, "--beta1", "1");
    fails(&bad, "--beta1 must be in [0, 1), got 1");
    assert!(!fresh.exists());

    // A checkpoint named relative to its run directory resumes and saves there.
    run_in(&out, &["train", "--resume", "step-000004", "--steps", "6"]);
    assert!(out.join("step-000006/training.json").is_file());
    // So does `.` inside it.
    run_in(
        &out.join("step-000006"),
        &["train", "--resume", ".", "--steps", "7"],
    );
    assert!(out.join("step-000007/training.json").is_file());

    // Values a flag could not have are refused from training.json too.
    edit_json(&out.join("step-000007/training.json"), |t| {
        t["options"]["optimizer"]["beta1"] = 1.0.into();
    });
    fails(
        &["train", "--resume", o, "--steps", "8"],
        "--beta1 must be in [0, 1)",
    );
    edit_json(&out.join("step-000007/training.json"), |t| {
        t["options"]["optimizer"]["beta1"] = 0.9.into();
        // A replay of 8 × 10⁹ windows would take days: refused at once.
        t["options"]["steps"] = 1_000_000_000u64.into();
        t["options"]["schedule"]["total_steps"] = 1_000_000_000u64.into();
        t["progress"]["step"] = 999_999_999u64.into();
        t["progress"]["windows"] = 7_999_999_992u64.into();
    });
    fails(&["train", "--resume", o], "at most 4294967296");
}

#[test]
fn a_run_stopped_mid_log_interval_writes_the_records_of_an_uninterrupted_one() {
    let (dir, c, f) = setup();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    let flags = |out: &'static str| {
        let mut args = train_args(c, f, out, "10");
        set(&mut args, "--log-every", "4");
        set(&mut args, "--save-every", "4");
        args
    };
    let leak = |p: &Path| -> &'static str { Box::leak(p.to_string_lossy().into_owned().into_boxed_str()) };
    let (w, p) = (leak(&whole), leak(&parts));
    run(&flags(w));

    // Stopped at a scheduled save: step 4 is not written twice.
    let mut first = flags(p);
    set(&mut first, "--stop-at", "4");
    run(&first);
    let model = parts.join("step-000004/model.safetensors");
    let written = std::fs::metadata(&model).unwrap().modified().unwrap();
    // A stale directory of an interrupted swap (older versions) does not stop later saves.
    let stale = parts.join(".old-step-000004");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("x"), "x").unwrap();
    run(&["train", "--resume", p, "--stop-at", "4"]);
    assert_eq!(std::fs::metadata(&model).unwrap().modified().unwrap(), written);
    assert!(!stale.exists());

    // Stopped mid-interval: steps 5..6 get a partial record, which the resume replaces with the
    // whole interval's.
    run(&["train", "--resume", p, "--stop-at", "6"]);
    let logged = records(&parts, "train");
    assert_eq!(logged.len(), 2);
    assert_eq!(
        (logged[1]["step"].as_u64(), logged[1]["partial"].as_bool()),
        (Some(6), Some(true))
    );
    run(&["train", "--resume", p]);

    let (a, b) = (train_records_but_speed(&whole), train_records_but_speed(&parts));
    assert_eq!(a.len(), 3, "steps 4, 8 and 10");
    assert_eq!(a, b);
}

#[test]
fn a_diverging_run_saves_its_last_good_step_and_says_how_to_go_on() {
    let (dir, c, f) = setup();
    let out = dir.path().join("run");
    let mut args = train_args(c, f, out.to_str().unwrap(), "50");
    set(&mut args, "--lr", "1e30");
    set(&mut args, "--weight-decay", "0");
    set(&mut args, "--clip-norm", "0");
    set(&mut args, "--warmup-steps", "0");
    set(&mut args, "--save-every", "0");
    let output = command(&args).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The banner and progress come first; the error is the last line, and one line.
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: training diverged: the gradient norm is"),
        "{stderr}"
    );
    assert!(last.contains("--init-from"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let saved: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(last.contains(&saved[0]), "{stderr}");
}
