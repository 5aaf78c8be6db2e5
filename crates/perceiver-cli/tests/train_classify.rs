//! `perceiver train --task classify` and `perceiver eval` of a classifier end to end, on a tiny
//! layout from scratch (the fine-tuning of the built-in model is `perceiver-train`'s
//! `tests/classify.rs`): the accuracy and confusion table at the end, `eval.json`, a checkpoint
//! that `eval` reads back to the same numbers, resuming, and bad labelled files refused in one
//! line with a non-zero exit; and classifiers given new labels (`--new-labels`), of images and of
//! texts.

mod common;

use common::{command, records, run};
use std::path::Path;

use serde_json::Value;

/// Fails with exit status 1 and one line on stderr that contains every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let out = command(args).output().expect("run perceiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
    }
}

/// Short texts about two topics, as JSON lines (training) and CSV (held out).
fn write_data(dir: &Path) -> (String, String) {
    let weather = ["rain", "snow", "wind", "sun", "fog", "storm"];
    let food = ["bread", "cheese", "soup", "apples", "rice", "cake"];
    let mut train = String::new();
    let mut held_out = String::from("text,label\n");
    for i in 0..24 {
        let (w, f) = (weather[i % 6], food[(i * 5) % 6]);
        let rows = [
            (format!("Today there is {w} again"), "weather"),
            (format!("We ate {f} for dinner"), "food"),
        ];
        for (text, label) in rows {
            if i < 18 {
                train.push_str(&serde_json::json!({"text": text, "label": label}).to_string());
                train.push('\n');
            } else {
                held_out.push_str(&format!("{text},{label}\n"));
            }
        }
    }
    let (t, e) = (dir.join("train.jsonl"), dir.join("heldout.csv"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&e, held_out).unwrap();
    (t.to_string_lossy().into_owned(), e.to_string_lossy().into_owned())
}

fn train_args<'a>(train: &'a str, held_out: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--task",
        "classify",
        "--preset",
        "tiny",
        "--train",
        train,
        "--eval",
        held_out,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--seed",
        "2",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--plot",
        "false",
    ]
}

#[test]
fn a_classifier_trains_reports_its_confusion_table_and_evaluates_again() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held_out) = write_data(dir.path());
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let done = run(&train_args(&train, &held_out, o, "4"));
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    println!("{stderr}{stdout}");
    assert!(
        stderr.contains("labels food, weather; 36 training texts, 12 held out"),
        "{stderr}"
    );
    assert!(stdout.contains("held-out accuracy"), "{stdout}");
    assert!(stdout.contains("true \\ predicted"), "{stdout}");
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("true")).collect();
    assert!(
        table[1].starts_with("food ") && table[2].starts_with("weather "),
        "{stdout}"
    );

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(saved["step"], 4);
    assert_eq!(saved["labels"], serde_json::json!(["food", "weather"]));
    let confusion: Vec<Vec<u64>> = serde_json::from_value(saved["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 12);
    let evals = records(&out, "eval");
    assert_eq!(evals.len(), 2);
    assert!(evals[1].get("bits_per_byte").is_none(), "{:?}", evals[1]);

    // The checkpoint: a transformers classifier that `eval` reads back to the same numbers.
    let checkpoint = out.join("step-000004");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "PerceiverForSequenceClassification");
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "food", "1": "weather"})
    );
    let again = run(&[
        "eval",
        "--model",
        checkpoint.to_str().unwrap(),
        &held_out,
        "--json",
    ]);
    let result: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(result["texts"], 12);
    assert_eq!(result["confusion"], saved["confusion"]);
    assert!((result["accuracy"].as_f64().unwrap() - saved["accuracy"].as_f64().unwrap()).abs() < 1e-12);
    let text = run(&["eval", "--model", checkpoint.to_str().unwrap(), &held_out]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("recall"));

    // Resumed for two more steps, with the run's own data and labels.
    run(&["train", "--resume", o, "--steps", "6", "--plot", "false"]);
    assert!(out.join("step-000006").is_dir());
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(saved["step"], 6);
    let plotted = run(&["plot", o]);
    assert!(String::from_utf8_lossy(&plotted.stdout).contains("curves.svg"));
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.contains("accuracy (texts)"));
}

#[test]
fn bad_labelled_files_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held_out) = write_data(dir.path());
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let write = |name: &str, content: &str| -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    };
    let cases = [
        (
            write("no_label.csv", "text,category\nhello,a\n"),
            vec!["no_label.csv line 1", "no column `label`"],
        ),
        (
            write("no_text.csv", "label,content\na,hello\n"),
            vec!["no_text.csv line 1", "no column `text`"],
        ),
        (
            write("empty_label.csv", "text,label\nhello,a\nbye,\n"),
            vec!["empty_label.csv line 3", "the label is empty"],
        ),
        (
            write("empty_text.csv", "text,label\nhello,a\n\"\",b\n"),
            vec!["empty_text.csv line 3", "the text is empty"],
        ),
        (
            write("ragged.csv", "text,label\nhello,a,extra\n"),
            vec!["ragged.csv line 2", "3 fields"],
        ),
        (
            write(
                "broken.jsonl",
                "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \n",
            ),
            vec!["broken.jsonl line 2", "not JSON"],
        ),
        (
            write("one.csv", "text,label\nhello,a\nbye,a\n"),
            vec!["one label (a)", "at least two"],
        ),
        (write("notes.txt", "hello\n"), vec!["notes.txt", ".csv"]),
    ];
    for (file, needles) in &cases {
        let mut args = train_args(file, &held_out, o, "2");
        args.retain(|a| *a != "--eval" && *a != held_out.as_str());
        fails(&args, needles);
    }
    assert!(!out.join("step-000002").exists(), "nothing trained");
    // A held-out label the training texts lack.
    let other = write("other.csv", "text,label\nhi,greeting\n");
    fails(
        &train_args(&train, &other, o, "2"),
        &[
            "other.csv line 2",
            "`greeting` is not one of the training examples' labels (food, weather)",
        ],
    );
    // The same reader for the built-in model's fine-tuning and for `eval` of a classifier.
    fails(
        &[
            "train",
            "--task",
            "classify",
            "--init-from",
            "default",
            "--train",
            &cases[2].0,
            "--out",
            o,
        ],
        &["empty_label.csv line 3"],
    );
    run(&train_args(&train, &held_out, o, "2"));
    let checkpoint = out.join("step-000002");
    fails(
        &["eval", "--model", checkpoint.to_str().unwrap(), &cases[0].0],
        &["no_label.csv line 1"],
    );
    // --init local shapes a masked LM's attention only.
    fails(
        &[
            "train",
            "--task",
            "classify",
            "--preset",
            "tiny",
            "--init",
            "local",
            "--train",
            &train,
            "--out",
            &format!("{o}2"),
        ],
        &["--init local"],
    );
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// [`fails`] after the start's notes (the fixtures' configs ask for attention dropout, which the
/// trainer notes before it reads the data): the error is the last line.
fn fails_after_notes(args: &[&str], needles: &[&str]) {
    let out = command(args).output().expect("run perceiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(last.contains(needle), "{stderr:?} should end with {needle:?}");
    }
}

/// Image folders: `per_label` PNGs for "dark" and "light" under `dir/<label>/`.
fn write_images(dir: &Path, per_label: u32) {
    for (label, base) in [("dark", 30u8), ("light", 220u8)] {
        let folder = dir.join(label);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_label {
            let image = image::RgbImage::from_fn(30, 26, |x, y| {
                let wave = ((x * (i + 1) + y * 3) % 17) as u8;
                image::Rgb([base.saturating_add(wave), base, base.saturating_sub(wave)])
            });
            image.save(folder.join(format!("{i}.png"))).unwrap();
        }
    }
}

#[test]
fn an_image_classifier_fine_tunes_on_image_folders_with_new_labels() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    write_images(&images, 4);
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/classification/tiny_image_fourier");
    let (images, fixture) = (images.to_str().unwrap(), fixture.to_str().unwrap());
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            "classify",
            "--init-from",
            fixture,
            "--train",
            images,
            "--out",
            o,
            "--steps",
            "2",
            "--batch-size",
            "3",
            "--eval-fraction",
            "0.25",
        ];
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };

    // The fixture's labels are not the folders'.
    fails_after_notes(
        &refs(&train(&[])),
        &[
            "the label `dark` is not one of the classifier's labels",
            "--new-labels",
        ],
    );
    let output = run(&refs(&train(&["--new-labels"])));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("held-out accuracy") && stdout.contains("(2 images)"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("images a batch") && stderr.contains("labels dark, light"),
        "{stderr}"
    );

    let trained = records(&out, "train");
    let last = trained.last().expect("a train record");
    assert_eq!(last["step"], 2);
    assert!(last["examples_per_second"].as_f64().unwrap() > 0.0, "{last}");
    assert_eq!(last["bytes_per_second"], 0.0, "images have no bytes: {last}");

    let checkpoint = out.join("step-000002");
    assert!(checkpoint.join("preprocessor_config.json").is_file());
    let c = checkpoint.to_str().unwrap();
    let eval = run(&["eval", "--model", c, images, "--json"]);
    let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["images"], 8);
    assert_eq!(eval["labels"], serde_json::json!(["dark", "light"]));
    let one = Path::new(images).join("light/0.png");
    let answer = run(&["classify", "--model", c, one.to_str().unwrap()]);
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert!(answer.contains("dark") || answer.contains("light"), "{answer}");

    // A file that is not an image, in a label folder, stops the run before it starts.
    std::fs::write(Path::new(images).join("dark/broken.png"), b"not a png").unwrap();
    let again = dir.path().join("again");
    let mut broken = train(&["--new-labels"]);
    let at = broken.iter().position(|a| a == o).unwrap();
    broken[at] = again.to_string_lossy().into_owned();
    fails_after_notes(&refs(&broken), &["broken.png"]);
    assert!(!again.exists(), "a failed start leaves no run directory");
}

/// A text classifier fine-tuned with `--new-labels` takes the data's labels with a fresh final
/// layer and keeps every other weight it was given (a learning rate of 1e-12 moves none of them
/// measurably); without the flag, the labels it does not know are refused.
#[test]
fn a_text_classifier_takes_new_labels_with_a_fresh_final_layer_only() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held_out) = write_data(dir.path());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification/tiny_text_classifier");
    let out = dir.path().join("run");
    let (f, o) = (fixture.to_str().unwrap(), out.to_str().unwrap());
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "train",
            "--task",
            "classify",
            "--init-from",
            f,
            "--train",
            &train,
            "--eval",
            &held_out,
            "--out",
            o,
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-12",
            "--plot",
            "false",
        ];
        args.extend(extra);
        args
    };
    fails_after_notes(
        &args(&[]),
        &["is not one of the classifier's labels", "--new-labels"],
    );
    run(&args(&["--new-labels"]));

    let checkpoint = out.join("step-000002");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "food", "1": "weather"})
    );
    let (given, trained) = (
        std::fs::read(fixture.join("model.safetensors")).unwrap(),
        std::fs::read(checkpoint.join("model.safetensors")).unwrap(),
    );
    let given = safetensors::SafeTensors::deserialize(&given).unwrap();
    let trained = safetensors::SafeTensors::deserialize(&trained).unwrap();
    let values = |view: safetensors::tensor::TensorView| -> Vec<f32> {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let mut kept = 0;
    for (name, view) in given.tensors() {
        let after = trained.tensor(&name).unwrap();
        if name.contains("final_layer") {
            assert_eq!(after.shape()[0], 2, "{name}: one row or value per new label");
            continue;
        }
        assert_eq!(after.shape(), view.shape(), "{name}");
        let worst = values(view)
            .iter()
            .zip(values(after))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-9, "{name} moved by {worst}");
        kept += 1;
    }
    assert_eq!(
        kept,
        given.len() - 2,
        "every weight but the final layer's two kept"
    );
}
