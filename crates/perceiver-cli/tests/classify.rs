//! `perceiver classify` end to end on the committed tiny classifiers
//! (`tests/fixtures/classification/`): `--json` lines equal to transformers' classification
//! pipelines, directories, batching, every bad input ending in one line and a non-zero exit, and
//! damaged images among good ones passed over.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification")
        .join(name)
}

fn perceiver(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env(
        "HF_HOME",
        std::env::temp_dir().join("perceiver-cli-tests-empty-hf-home"),
    );
    for var in ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "PERCEIVER_MODEL"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run perceiver")
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One line on stderr and a non-zero exit, the line containing `needle`.
fn fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

/// Our line against the pipeline's list: same labels in the same order, scores within 1e-4.
fn same_as_pipeline(ours: &Value, theirs: &Value) {
    let (ours, theirs) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(ours.len(), theirs.len());
    let mut worst = 0f64;
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["label"], b["label"]);
        let diff = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
        assert!(diff <= 1e-4, "{a} vs {b}: |Δ score| {diff:.2e} > 1e-4");
        worst = worst.max(diff);
    }
    println!(
        "{} labels as the pipeline's; max |Δ score| = {worst:.2e} (tolerance 1e-4)",
        ours.len()
    );
}

fn pipeline(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name).join("pipeline.json")).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

#[test]
fn images_as_the_pipeline_classifies_them_one_line_each_in_order() {
    for name in ["tiny_image_conv", "tiny_image_fourier", "tiny_image_learned"] {
        let dir = fixture(name);
        let cases = pipeline(name);
        let files: Vec<String> = cases
            .iter()
            .map(|c| path(&dir.join(c["input"].as_str().unwrap())))
            .collect();
        let mut args = vec!["classify", "--json", "-k", "3", "--batch-size", "1", "--model"];
        let model = path(&dir);
        args.push(&model);
        args.extend(files.iter().map(String::as_str));
        let lines = json_lines(&perceiver(&args));
        assert_eq!(lines.len(), cases.len());
        for ((line, case), file) in lines.iter().zip(&cases).zip(&files) {
            same_as_pipeline(line, &case["output"]);
            // Every entry names its input.
            for entry in line.as_array().unwrap() {
                assert_eq!(entry["input"], file.as_str());
            }
        }
    }
}

/// A file name that is not UTF-8 is read by its bytes, in a directory or as an argument, and
/// shown lossily.
#[cfg(unix)]
#[test]
fn file_names_need_not_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff.png");
    let image = dir.path().join(name);
    std::fs::copy(fixture("tiny_image_conv").join("wide.png"), &image).unwrap();
    let model = path(&fixture("tiny_image_conv"));
    for input in [dir.path().as_os_str(), image.as_os_str()] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
        cmd.args(["classify", "--json", "-k", "1", "--model", &model])
            .arg(input)
            .env("HF_HUB_OFFLINE", "1");
        let lines = json_lines(&cmd.output().unwrap());
        assert_eq!(lines.len(), 1);
        let shown = lines[0][0]["input"].as_str().unwrap();
        assert!(shown.ends_with("bad\u{fffd}.png"), "{shown}");
    }
}

#[test]
fn a_directory_means_its_images_sorted_by_name() {
    let dir = fixture("tiny_image_fourier");
    let model = path(&dir);
    let out = perceiver(&["classify", "--json", "-k", "3", "--model", &model, &model]);
    let lines = json_lines(&out);
    // tall_grey.png, then wide.png; config.json and the rest are not images.
    let cases = pipeline("tiny_image_fourier");
    let by_name = |n: &str| cases.iter().find(|c| c["input"] == n).unwrap()["output"].clone();
    assert_eq!(lines.len(), 2);
    same_as_pipeline(&lines[0], &by_name("tall_grey.png"));
    same_as_pipeline(&lines[1], &by_name("wide.png"));
    // The human-readable form names each input.
    let out = perceiver(&["classify", "--model", &model, &model]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tall_grey.png") && text.contains('%'), "{text}");

    // Hidden files are passed over, as the training corpus's are: macOS's `._wide.png` beside
    // an image is no image, and would end the run.
    let images = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("wide.png"), images.path().join("wide.png")).unwrap();
    std::fs::write(images.path().join("._wide.png"), b"\0\x05\x16\x07 AppleDouble").unwrap();
    let lines = json_lines(&perceiver(&[
        "classify",
        "--json",
        "-k",
        "3",
        "--model",
        &model,
        &path(images.path()),
    ]));
    assert_eq!(lines.len(), 1);
    same_as_pipeline(&lines[0], &by_name("wide.png"));
}

#[test]
fn texts_as_the_pipeline_classifies_them() {
    let model = path(&fixture("tiny_text_classifier"));
    let cases = pipeline("tiny_text_classifier");
    let mut args = vec!["classify", "--text", "--json", "-k", "3", "--model", &model];
    let texts: Vec<&str> = cases.iter().map(|c| c["input"].as_str().unwrap()).collect();
    args.extend(&texts);
    let lines = json_lines(&perceiver(&args));
    assert_eq!(lines.len(), cases.len());
    for (i, (line, case)) in lines.iter().zip(&cases).enumerate() {
        same_as_pipeline(line, &case["output"]);
        // A text is named by its place, not quoted.
        assert_eq!(line[0]["input"], format!("input {}", i + 1));
    }
    // --input FILE: one text a line, same answers.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), texts.join("\n")).unwrap();
    let input = path(file.path());
    let again = json_lines(&perceiver(&[
        "classify", "--text", "--json", "-k", "3", "--model", &model, "--input", &input,
    ]));
    assert_eq!(again, lines);
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let image_model = path(&fixture("tiny_image_conv"));
    let text_model = path(&fixture("tiny_text_classifier"));
    let image = path(&fixture("tiny_image_conv").join("wide.png"));
    // A missing file, a text file passed as an image, an empty file.
    fails_with(
        &perceiver(&["classify", "--model", &image_model, "/no/such/image.png"]),
        "/no/such/image.png",
    );
    let config = path(&fixture("tiny_image_conv").join("config.json"));
    fails_with(
        &perceiver(&["classify", "--model", &image_model, &config]),
        "config.json",
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    fails_with(
        &perceiver(&["classify", "--model", &image_model, &path(empty.path())]),
        "image",
    );
    // A PNG with a damaged chunk: named by the chunk whose CRC fails, not in the decoder's words.
    let damaged_dir = tempfile::tempdir().unwrap();
    let damaged = damaged_dir.path().join("photo.png");
    let mut png = std::fs::read(fixture("tiny_image_conv").join("wide.png")).unwrap();
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap() + 4;
    png[idat + 2] ^= 0xff;
    std::fs::write(&damaged, png).unwrap();
    fails_with(
        &perceiver(&["classify", "--model", &image_model, &path(&damaged)]),
        "photo.png: cannot decode the image (PNG): CRC error in chunk IDAT (the file is damaged)",
    );
    // A directory without images.
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &perceiver(&["classify", "--model", &image_model, &path(dir.path())]),
        "no image files",
    );
    // An image larger than --max-image-pixels (wide.png is 37 x 23 = 851 pixels); one within it runs.
    fails_with(
        &perceiver(&[
            "classify",
            "--model",
            &image_model,
            "--max-image-pixels",
            "800",
            &image,
        ]),
        "37 x 23 pixels (width x height: 851), more than the limit of 800 pixels (--max-image-pixels)",
    );
    let tall = path(&fixture("tiny_image_conv").join("tall_grey.png"));
    let within = perceiver(&[
        "classify",
        "--model",
        &image_model,
        "--max-image-pixels",
        "800",
        &tall,
    ]);
    assert!(
        within.status.success(),
        "{}",
        String::from_utf8_lossy(&within.stderr)
    );
    // Texts for an image model, images for a text model.
    fails_with(
        &perceiver(&["classify", "--text", "--model", &image_model, "hello"]),
        "classifies images",
    );
    fails_with(
        &perceiver(&["classify", "--model", &text_model, &image]),
        "--text",
    );
    // A text longer than the model's positions: named by its place, not quoted whole.
    let long = "x".repeat(100);
    let out = perceiver(&["classify", "--text", "--model", &text_model, "fine", &long]);
    fails_with(&out, "input 2: the text is 102 tokens long");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&long));
    // A blank line where an image's path belongs.
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), format!("{image}\n\n")).unwrap();
    fails_with(
        &perceiver(&["classify", "--model", &image_model, "--input", &path(list.path())]),
        "line 2 is empty",
    );
    // A masked LM is not a classifier, and a classifier cannot fill masks.
    fails_with(
        &perceiver(&["classify", "--text", "--model", "default", "hello"]),
        "classifier",
    );
    fails_with(
        &perceiver(&["fill-mask", "--model", &text_model, "a[MASK]c"]),
        "PerceiverForMaskedLM",
    );
    fails_with(
        &perceiver(&["fill-mask", "--model", &image_model, "a[MASK]c"]),
        "PerceiverForMaskedLM",
    );
}

/// Damaged images among good ones are named on stderr and passed over: the others are
/// classified as they are alone, at every batch size, and the exit status says that some were
/// not, in a last line.
#[test]
fn unreadable_images_are_named_and_passed_over() {
    let model = path(&fixture("tiny_image_conv"));
    let dir = tempfile::tempdir().unwrap();
    let good = [
        ("a.png", fixture("tiny_image_conv").join("wide.png")),
        ("c.png", fixture("tiny_image_conv").join("tall_grey.png")),
    ];
    for (name, from) in &good {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    let mut damaged = std::fs::read(&good[0].1).unwrap();
    let idat = damaged.windows(4).position(|w| w == b"IDAT").unwrap() + 4;
    damaged[idat + 2] ^= 0xff;
    std::fs::write(dir.path().join("b.png"), damaged).unwrap();
    std::fs::write(dir.path().join("d.png"), b"").unwrap();

    let good_paths: Vec<String> = good
        .iter()
        .map(|(name, _)| path(&dir.path().join(name)))
        .collect();
    let mut alone = vec!["classify", "--model", &model, "--json"];
    alone.extend(good_paths.iter().map(String::as_str));
    let expected = json_lines(&perceiver(&alone));
    assert_eq!(expected.len(), 2);
    for batch_size in ["1", "3", "8"] {
        let out = perceiver(&[
            "classify",
            "--model",
            &model,
            "--json",
            "--batch-size",
            batch_size,
            &path(dir.path()),
        ]);
        assert!(!out.status.success(), "batch size {batch_size}");
        let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines, expected,
            "batch size {batch_size}: the good images, in order"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().collect();
        assert_eq!(errors.len(), 3, "{stderr}");
        assert!(
            errors[0].ends_with(
                "b.png: cannot decode the image (PNG): CRC error in chunk IDAT (the file is damaged)"
            ),
            "{stderr}"
        );
        assert!(errors[1].contains("d.png"), "{stderr}");
        assert_eq!(
            errors[2],
            "error: 2 of 4 images could not be classified (named above); the others were"
        );
    }
    // Only damaged ones: each named, then a last line that says none could be.
    std::fs::remove_file(dir.path().join("a.png")).unwrap();
    std::fs::remove_file(dir.path().join("c.png")).unwrap();
    let out = perceiver(&["classify", "--model", &model, &path(dir.path())]);
    assert!(!out.status.success() && out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert!(
        stderr.ends_with("error: none of the 2 images could be classified (named above)\n"),
        "{stderr}"
    );
}
