//! `perceiver autoencode` end to end on the committed tiny multimodal autoencoder
//! (`tests/fixtures/multimodal/tiny_multimodal`: 2 frames of 16x16, 96 audio samples at
//! 48 × 25 = 1,200 Hz, 5 labels): the files it writes hold the library's reconstruction, the
//! chunk count does not change it, and every bad input ends in one line and a non-zero exit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use perceiver::tasks::autoencode::Autoencoder;
use perceiver::Loader;
use serde_json::Value;

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/multimodal/tiny_multimodal")
        .to_string_lossy()
        .into_owned()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `count` frames of `size`² pixels (smooth colours) as PNG files in `dir`.
fn write_frames(dir: &Path, count: usize, size: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for t in 0..count {
        let frame = image::RgbImage::from_fn(size, size, |x, y| {
            image::Rgb([
                (x * 13 + t as u32 * 40) as u8,
                (y * 11) as u8,
                ((x + y) * 7) as u8,
            ])
        });
        frame.save(dir.join(format!("f{t}.png"))).unwrap();
    }
}

/// A mono 16-bit WAV of `samples` samples at `rate` Hz.
fn write_wav(path: &Path, rate: u32, samples: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..samples {
        writer
            .write_sample(((i as f32 * 0.3).sin() * 12000.0) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
}

struct Inputs {
    _dir: tempfile::TempDir,
    frames: PathBuf,
    wav: PathBuf,
    root: PathBuf,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let frames = root.join("frames");
    write_frames(&frames, 2, 16);
    let wav = root.join("clip.wav");
    write_wav(&wav, 1200, 96);
    Inputs {
        _dir: dir,
        frames,
        wav,
        root,
    }
}

fn perceiver(args: &[&str]) -> Output {
    common::command(args).output().expect("run perceiver")
}

#[test]
fn writes_the_librarys_reconstruction_whatever_the_chunks() {
    let inputs = inputs();
    let model = model();
    let (frames, wav) = (path(&inputs.frames), path(&inputs.wav));
    // The model's run into `out_dir` with `more` flags.
    let autoencode = |out_dir: &Path, more: &[&str]| {
        let out_dir = path(out_dir);
        let args = autoencode_args(&model, &frames, &wav);
        common::run(&[&args[..], &["--out", &out_dir], more].concat())
    };
    let mut written = Vec::new();
    for chunks in ["1", "7"] {
        let out_dir = inputs.root.join(format!("out{chunks}"));
        let out = autoencode(&out_dir, &["--chunks", chunks, "-k", "3", "--json"]);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["frames"].as_array().unwrap().len(), 2);
        assert_eq!(summary["labels"].as_array().unwrap().len(), 3);
        let labels: Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("labels.json")).unwrap()).unwrap();
        assert_eq!(labels, summary["labels"]);
        let audio: Vec<f32> = hound::WavReader::open(out_dir.join("audio.wav"))
            .unwrap()
            .samples::<f32>()
            .map(|s| s.unwrap())
            .collect();
        let frame0 = std::fs::read(out_dir.join("frames/frame_000.png")).unwrap();
        written.push((audio, frame0, labels));
    }
    assert_eq!(
        written[0], written[1],
        "1 chunk and 7 chunks write the same files"
    );

    // The WAV holds the library's reconstruction.
    let task = Autoencoder::new(Loader::new(model.as_str()).load().unwrap()).unwrap();
    let frames = task.frames_from_dir(&inputs.frames).unwrap();
    let audio = task.audio_from_wav(&inputs.wav).unwrap();
    let ours = task.autoencode(frames, audio, 3).unwrap();
    assert_eq!(written[0].0, ours.reconstruction.audio);
    assert_eq!(written[0].0.len(), 96);

    // Without --json: a line for the files, then the labels in percent, as classify shows them.
    // More chunks than queries: as many as the most numerous modality has (no empty chunk),
    // the same reconstruction.
    let out_dir = inputs.root.join("text");
    let out = autoencode(&out_dir, &["-k", "2", "--chunks", "1000000"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("reconstructed 2 frames of "), "{text}");
    let most = task.spec().most_chunks();
    assert!(most < 1000, "{most}");
    assert!(lines[0].contains(&format!(" in {most} chunk(s) into ")), "{text}");
    let audio: Vec<f32> = hound::WavReader::open(out_dir.join("audio.wav"))
        .unwrap()
        .samples::<f32>()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(audio, ours.reconstruction.audio);
    let best = &ours.labels[0];
    assert_eq!(lines[1], format!("  {:6.2}%  {}", 100.0 * best.score, best.label));
    assert_eq!(lines.len(), 3, "{text}");
}

/// `--labels-only` prints the labels a whole run writes, from the label's query alone, and
/// writes nothing; with `--out` or `--chunks` it is refused as a usage error.
#[test]
fn labels_only_names_the_labels_a_whole_run_writes() {
    let inputs = inputs();
    let model = model();
    let (frames, wav) = (path(&inputs.frames), path(&inputs.wav));
    let args = [&autoencode_args(&model, &frames, &wav)[..], &["-k", "3"]].concat();
    let out_dir = path(&inputs.root.join("out"));
    let whole = common::run(&[&args[..], &["--out", &out_dir, "--json"]].concat());
    let whole: Value = serde_json::from_slice(&whole.stdout).unwrap();
    let before: Vec<_> = std::fs::read_dir(&inputs.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let only = common::run(&[&args[..], &["--labels-only", "--json"]].concat());
    let only: Value = serde_json::from_slice(&only.stdout).unwrap();
    assert_eq!(only["labels"].as_array().unwrap().len(), 3);
    assert_eq!(only["labels"], whole["labels"]);
    let after: Vec<_> = std::fs::read_dir(&inputs.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "--labels-only writes nothing");
    // Without --json: the labels in percent, as a whole run prints them.
    let text = common::run(&[&args[..], &["--labels-only"]].concat());
    let text = String::from_utf8(text.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let best = &whole["labels"][0];
    let score = best["score"].as_f64().unwrap();
    assert_eq!(
        lines[1],
        format!("  {:6.2}%  {}", 100.0 * score, best["label"].as_str().unwrap())
    );
    for more in [
        &["--labels-only", "--out", &out_dir][..],
        &["--labels-only", "--chunks", "4"],
    ] {
        let refused = perceiver(&[&args[..], more].concat());
        assert_eq!(refused.status.code(), Some(2), "{more:?}");
        let err = String::from_utf8(refused.stderr).unwrap();
        assert!(err.contains("cannot be used with"), "{err}");
    }
    // Neither --out nor --labels-only: a usage error naming --out.
    let refused = perceiver(&args);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8(refused.stderr).unwrap().contains("--out"));
}

#[test]
fn frames_come_in_natural_order() {
    let inputs = inputs();
    let model = model();
    // The same two frames as 1.png, 2.png and as 9.png, 10.png (byte order: 10 before 9).
    let nine_ten = inputs.root.join("nine_ten");
    std::fs::create_dir(&nine_ten).unwrap();
    std::fs::copy(inputs.frames.join("f0.png"), nine_ten.join("9.png")).unwrap();
    std::fs::copy(inputs.frames.join("f1.png"), nine_ten.join("10.png")).unwrap();
    let mut audio = Vec::new();
    for (name, frames) in [("a", &inputs.frames), ("b", &nine_ten)] {
        let out_dir = inputs.root.join(name);
        common::run(&[
            "autoencode",
            "--model",
            &model,
            "--frames",
            &path(frames),
            "--audio",
            &path(&inputs.wav),
            "--out",
            &path(&out_dir),
        ]);
        audio.push(std::fs::read(out_dir.join("audio.wav")).unwrap());
    }
    assert_eq!(audio[0], audio[1], "9.png is the first frame, 10.png the second");
}

#[test]
fn outputs_that_would_overwrite_inputs_are_refused_before_the_model_loads() {
    let inputs = inputs();
    let model = model();
    let (frames, wav) = (path(&inputs.frames), path(&inputs.wav));
    let run = |frames: &str, audio: &str, out: &Path| {
        perceiver(&[
            "autoencode",
            "--model",
            &model,
            "--frames",
            frames,
            "--audio",
            audio,
            "--out",
            &path(out),
        ])
    };
    // --out whose frames/ is the input frames directory (root/frames), or that is it.
    for out in [&inputs.root, &inputs.frames] {
        common::fails_with(&run(&frames, &wav, out), "into the input frames directory");
    }
    assert_eq!(std::fs::read_dir(&inputs.frames).unwrap().count(), 2);
    // The audio of an earlier run given back as input.
    let out = inputs.root.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(&inputs.wav, out.join("audio.wav")).unwrap();
    common::fails_with(
        &run(&frames, &path(&out.join("audio.wav")), &out),
        "audio.wav is the input",
    );
    // --out under a file.
    common::fails_with(&run(&frames, &wav, &inputs.wav.join("out")), "is not a directory");
}

#[test]
fn inputs_are_checked_before_the_weights_load() {
    let inputs = inputs();
    // The model's config without its weights: an input error is found without them.
    let config_only = inputs.root.join("config_only");
    std::fs::create_dir(&config_only).unwrap();
    std::fs::copy(
        Path::new(&model()).join("config.json"),
        config_only.join("config.json"),
    )
    .unwrap();
    let short = inputs.root.join("short.wav");
    write_wav(&short, 1200, 50);
    let run = |audio: &Path| {
        perceiver(&[
            "autoencode",
            "--model",
            &path(&config_only),
            "--frames",
            &path(&inputs.frames),
            "--audio",
            &path(audio),
            "--out",
            &path(&inputs.root.join("out")),
        ])
    };
    common::fails_with(&run(&short), "96 samples");
    // Good inputs then meet the missing weights.
    common::fails_with(&run(&inputs.wav), "cannot load model");
}

/// A 16x16 4:2:0 `.y4m` video of `frames` grey frames, with `rate` (e.g. `F25:1`) in its header.
fn y4m(rate: &str, frames: usize) -> Vec<u8> {
    let mut bytes = format!("YUV4MPEG2 W16 H16 {rate} Ip C420jpeg\n").into_bytes();
    for _ in 0..frames {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend_from_slice(&[128; 16 * 16 + 2 * 8 * 8]);
    }
    bytes
}

#[test]
fn a_video_at_25_frames_a_second_or_of_no_stated_rate_is_read() {
    let inputs = inputs();
    let model = model();
    // 50:2 is 25:1; a header without F is 25 a second, as ffmpeg reads it.
    for rate in ["F25:1", "F50:2", ""] {
        let video = inputs.root.join("clip.y4m");
        std::fs::write(&video, y4m(rate, 3)).unwrap();
        common::run(&[
            "autoencode",
            "--model",
            &model,
            "--frames",
            &path(&video),
            "--audio",
            &path(&inputs.wav),
            "--out",
            &path(&inputs.root.join("out")),
        ]);
    }
}

#[test]
fn bad_inputs_end_in_one_line() {
    let inputs = inputs();
    let model = model();
    let (frames, wav) = (path(&inputs.frames), path(&inputs.wav));
    let out = path(&inputs.root.join("out"));
    let run = |model: &str, frames: &str, audio: &str, extra: &[&str]| {
        let mut args = vec![
            "autoencode",
            "--model",
            model,
            "--frames",
            frames,
            "--audio",
            audio,
        ];
        args.extend(["--out", &out]);
        args.extend(extra);
        perceiver(&args)
    };
    // Too few frames; frames of the wrong size.
    let one = inputs.root.join("one");
    write_frames(&one, 1, 16);
    common::fails_with(&run(&model, &path(&one), &wav, &[]), "takes 2 frames");
    common::fails_with(
        &run(&model, &path(&one.join("f0.png")), &wav, &[]),
        "one image; the model takes 2 frames",
    );
    let big = inputs.root.join("big");
    write_frames(&big, 2, 20);
    common::fails_with(&run(&model, &path(&big), &wav, &[]), "16x16 frames");
    // Audio at the wrong rate, too short, not a WAV.
    let fast = inputs.root.join("fast.wav");
    write_wav(&fast, 44100, 96);
    common::fails_with(&run(&model, &frames, &path(&fast), &[]), "1200 Hz");
    let short = inputs.root.join("short.wav");
    write_wav(&short, 1200, 50);
    common::fails_with(&run(&model, &frames, &path(&short), &[]), "96 samples");
    let text = inputs.root.join("text.wav");
    std::fs::write(&text, "not audio").unwrap();
    common::fails_with(&run(&model, &frames, &path(&text), &[]), "not a WAV file");
    // A float WAV holding NaN: named, not turned into NaN outputs.
    let nan = inputs.root.join("nan.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 1200,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(&nan, spec).unwrap();
    for i in 0..96 {
        writer.write_sample(if i == 5 { f32::NAN } else { 0.1 }).unwrap();
    }
    writer.finalize().unwrap();
    common::fails_with(
        &run(&model, &frames, &path(&nan), &[]),
        "nan.wav: sample 5 is NaN, not a finite number",
    );
    // A video at another frame rate than the model's 25 a second.
    let slow = inputs.root.join("slow.y4m");
    std::fs::write(&slow, y4m("F30000:1001", 2)).unwrap();
    common::fails_with(
        &run(&model, &path(&slow), &wav, &[]),
        "frame rate is F30000:1001, the model takes 25 frames a second: convert it with ffmpeg -r 25",
    );
    // A video in a colour space that is not read, a directory of three frames.
    let y4m = inputs.root.join("clip.y4m");
    std::fs::write(&y4m, "YUV4MPEG2 W16 H16 F25:1 C420p10\n").unwrap();
    common::fails_with(&run(&model, &path(&y4m), &wav, &[]), "C420p10 is not read");
    let three = inputs.root.join("three");
    write_frames(&three, 3, 16);
    common::fails_with(&run(&model, &path(&three), &wav, &[]), "found 3");
    // --chunks 0, a missing frames directory, another kind of model.
    common::fails_with(&run(&model, &frames, &wav, &["--chunks", "0"]), "--chunks");
    common::fails_with(
        &run(&model, "/nonexistent/frames", &wav, &[]),
        "/nonexistent/frames",
    );
    common::fails_with(
        &run("default", &frames, &wav, &[]),
        "PerceiverForMultimodalAutoencoding",
    );
}

/// `perceiver autoencode` of `model` on the clip's `frames` and `wav`: the arguments every run
/// here starts with.
fn autoencode_args<'a>(model: &'a str, frames: &'a str, wav: &'a str) -> [&'a str; 7] {
    ["autoencode", "--model", model, "--frames", frames, "--audio", wav]
}
