//! `perceiver flow` end to end on the committed tiny optical-flow model
//! (`tests/fixtures/flow/`): the `.flo` it writes is the library's flow bit for bit and close
//! to the Colab's tiling around transformers, the picture and the JSON summary, and every bad
//! input ending in one line and a non-zero exit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use perceiver::flow::load_flo;
use perceiver::image::decode_image;
use perceiver::tasks::flow::OpticalFlow;
use perceiver::Loader;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow")
}

fn model() -> String {
    path(&fixtures().join("tiny_flow"))
}

fn frame(name: &str) -> String {
    path(&fixtures().join("frames").join(name))
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn perceiver(args: &[&str]) -> Output {
    common::command(args).output().expect("run perceiver")
}

#[test]
fn writes_the_flow_the_picture_the_key_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (png, flo, key) = (
        dir.path().join("flow.png"),
        dir.path().join("flow.flo"),
        dir.path().join("key.png"),
    );
    let (first, second) = (frame("tiny_flow-grid2x3-1.png"), frame("tiny_flow-grid2x3-2.png"));
    let model = model();
    let out = common::run(&[
        "flow",
        "--model",
        &model,
        &first,
        &second,
        "--out",
        &path(&png),
        "--flo",
        &path(&flo),
        "--legend",
        &path(&key),
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["height"].as_u64(), summary["width"].as_u64()),
        (Some(52), Some(100))
    );
    assert_eq!(summary["tile"], serde_json::json!({"height": 48, "width": 56}));
    let tiles: Vec<(u64, u64)> = summary["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["top"].as_u64().unwrap(), t["left"].as_u64().unwrap()))
        .collect();
    assert_eq!(tiles, vec![(0, 0), (0, 36), (0, 44), (4, 0), (4, 36), (4, 44)]);

    // The .flo holds the library's flow, bit for bit.
    let written = load_flo(&flo).unwrap();
    let task = OpticalFlow::new(Loader::new(model.as_str()).load().unwrap()).unwrap();
    let decode = |p: &str| decode_image(&std::fs::read(p).unwrap()).unwrap();
    let ours = task.flow_images(&decode(&first), &decode(&second)).unwrap();
    assert_eq!(written, ours.field);
    let stats = ours.field.stats();
    assert_eq!(
        summary["max_magnitude"].as_f64().unwrap() as f32,
        stats.max_magnitude
    );
    assert!(stats.max_magnitude > 0.5, "an informative flow: {stats:?}");

    // The picture has the frames' size, the key is square.
    let picture = decode_image(&std::fs::read(&png).unwrap()).unwrap();
    assert_eq!((picture.height(), picture.width()), (52, 100));
    let key = decode_image(&std::fs::read(&key).unwrap()).unwrap();
    assert_eq!(key.height(), key.width());
}

#[test]
fn prints_a_summary_line_without_json() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("flow.png");
    let out = common::run(&[
        "flow",
        "--model",
        &model(),
        &frame("tiny_flow-exact-1.png"),
        &frame("tiny_flow-exact-2.png"),
        "--out",
        &path(&png),
        "--max-flow",
        "3",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("flow 48x56: mean "), "{stdout}");
    // The grid is the one tile 4 times over (the Colab's); it runs once.
    assert!(stdout.contains("1 tile(s) of 48x56"), "{stdout}");
    assert!(
        stdout.contains(&format!("wrote picture {}", png.display())),
        "{stdout}"
    );
    assert!(png.exists());
}

#[cfg(unix)]
#[test]
fn a_flo_written_to_standard_output_is_all_it_holds() {
    let (first, second) = (frame("tiny_flow-exact-1.png"), frame("tiny_flow-exact-2.png"));
    let model = model();
    let args = ["flow", "--model", &model, &first, &second, "--flo"];
    // Through a pipe, by the name /dev/stdout: the .flo alone, the summary on standard error.
    let out = common::run(&[&args[..], &["/dev/stdout"]].concat());
    assert_eq!(&out.stdout[..4], b"PIEH", "a .flo header first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("piped.flo"), &out.stdout).unwrap();
    let field = load_flo(dir.path().join("piped.flo")).unwrap();
    assert_eq!((field.height(), field.width()), (48, 56));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("flow 48x56: mean "), "{stderr}");

    // Standard output redirected to a file, written in place through /dev/stdout: the same
    // bytes (the summary once overwrote the header there).
    let named = dir.path().join("named.flo");
    let file = std::fs::File::create(&named).unwrap();
    let redirected = common::command(&[&args[..], &["/dev/stdout"]].concat())
        .stdout(file)
        .output()
        .unwrap();
    assert!(redirected.status.success());
    assert_eq!(std::fs::read(&named).unwrap(), out.stdout);
    let stderr = String::from_utf8(redirected.stderr).unwrap();
    assert!(stderr.contains("wrote flow /dev/stdout"), "{stderr}");

    // A JSON summary there too would corrupt the .flo: refused before the model loads.
    let refused = perceiver(&[&args[..], &["/dev/stdout", "--json"]].concat());
    assert!(!refused.status.success());
    let message = String::from_utf8(refused.stderr).unwrap();
    assert!(message.contains("writes to standard output"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn bad_inputs_end_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = path(&dir.path().join("f.png"));
    let model = model();
    let (a, b) = (frame("tiny_flow-grid2x2-1.png"), frame("tiny_flow-grid2x2-2.png"));
    let other_size = frame("tiny_flow-exact-1.png");
    // Frames of different sizes.
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &a, &other_size, "--out", &out_png]),
        "differ in size",
    );
    // A frame smaller than the tile.
    let small = dir.path().join("small.png");
    image::RgbImage::new(30, 20).save(&small).unwrap();
    common::fails_with(
        &perceiver(&[
            "flow",
            "--model",
            &model,
            &path(&small),
            &path(&small),
            "--out",
            &out_png,
        ]),
        "smaller than the model's 48x56 tile",
    );
    // A frame over --max-image-pixels (these are 48x56 and more).
    common::fails_with(
        &perceiver(&[
            "flow",
            "--model",
            &model,
            &a,
            &b,
            "--json",
            "--max-image-pixels",
            "1000",
        ]),
        "more than the limit of 1000 pixels (--max-image-pixels)",
    );
    // Not an image.
    let text = dir.path().join("frame.png");
    std::fs::write(&text, "not a picture").unwrap();
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &path(&text), &b, "--out", &out_png]),
        "frame.png",
    );
    // A missing file.
    common::fails_with(
        &perceiver(&[
            "flow",
            "--model",
            &model,
            "/nonexistent/a.png",
            &b,
            "--out",
            &out_png,
        ]),
        "/nonexistent/a.png",
    );
    // Nothing to write, a bad --max-flow, a picture not named .png.
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &a, &b]),
        "nothing to write",
    );
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &a, &b, "--legend", "key.png"]),
        "(--legend writes the colour key beside one of them)",
    );
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &a, &b, "--json", "--max-flow", "0"]),
        "--max-flow",
    );
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &a, &b, "--out", "flow.jpg"]),
        "PNG",
    );
    // Not a flow model.
    common::fails_with(
        &perceiver(&["flow", "--model", "default", &a, &b, "--json"]),
        "PerceiverForOpticalFlow",
    );
    // Outputs over an input frame, over each other, or in no directory: refused before the
    // model loads (here a model that is not a flow model), and the frame left as it was.
    let copy = dir.path().join("a.png");
    std::fs::copy(&a, &copy).unwrap();
    let copy = path(&copy);
    for (outputs, needle) in [(vec!["--out", &copy], "--out"), (vec!["--flo", &copy], "--flo")] {
        let mut args = vec!["flow", "--model", "default", &copy, &b];
        args.extend(outputs);
        common::fails_with(&perceiver(&args), &format!("{needle} {copy} is the input"));
    }
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&a).unwrap());
    common::fails_with(
        &perceiver(&[
            "flow", "--model", "default", &a, &b, "--out", &out_png, "--legend", &out_png,
        ]),
        "--out and --legend name the same file",
    );
    common::fails_with(
        &perceiver(&[
            "flow",
            "--model",
            "default",
            &a,
            &b,
            "--flo",
            "/nonexistent/dir/f.flo",
        ]),
        "cannot write /nonexistent/dir/f.flo (--flo): /nonexistent/dir is not a directory",
    );
    // An output that cannot be written.
    common::fails_with(
        &perceiver(&[
            "flow",
            "--model",
            &model,
            &a,
            &b,
            "--flo",
            "/nonexistent/dir/f.flo",
        ]),
        "cannot write /nonexistent/dir/f.flo",
    );
}

/// A PNG file of a `width` x `height` RGB image that stops after its header and a few bytes of
/// pixel data: enough for its size to be read, never enough to decode.
fn header_only_png(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &[0x78, 0x9c, 0, 0]),
        (b"IEND", &[]),
    ] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    png
}

#[test]
fn frames_larger_than_a_flow_field_are_refused_from_their_header() {
    let model = model();
    let (a, b) = (frame("tiny_flow-exact-1.png"), frame("tiny_flow-exact-2.png"));
    // --max-image-pixels stops at the 2^27 pixels a flow field holds, below Pillow's limit.
    let out = perceiver(&[
        "flow",
        "--model",
        &model,
        &a,
        &b,
        "--json",
        "--max-image-pixels",
        "134217729",
    ]);
    assert_eq!(out.status.code(), Some(2));
    common::fails_with(
        &out,
        "'134217729' for '--max-image-pixels <MAX_IMAGE_PIXELS>': must be at most 134217728",
    );
    // 12,000 x 12,000 is 144 million pixels, between the two: refused by default before
    // anything is decoded (it could not be: the file holds no pixels), not after the model
    // loaded.
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large.png");
    std::fs::write(&large, header_only_png(12_000, 12_000)).unwrap();
    let large = path(&large);
    common::fails_with(
        &perceiver(&["flow", "--model", &model, &large, &large, "--json"]),
        "more than the limit of 134217728 pixels (--max-image-pixels)",
    );
}
