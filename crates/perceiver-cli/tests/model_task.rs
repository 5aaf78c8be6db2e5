//! A model of another task than the subcommand's is refused from its config, before its
//! weights are read (a hub id's are then never downloaded): the models here are directories
//! with a config.json and no weights at all, so a subcommand that went on to load would fail
//! on the missing weights instead.

mod common;

use common::command;
use std::path::Path;
use std::process::Output;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

/// A directory holding only the config.json of the fixture model at `fixture`.
fn config_only(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join(fixture).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    dir
}

fn perceiver(args: &[&str]) -> Output {
    command(args).output().expect("run perceiver")
}

fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_model_of_another_task_is_refused_before_its_weights_load() {
    let flow = config_only("flow/tiny_flow");
    let flow = flow.path().to_str().unwrap();
    let masked_lm = config_only("parity/tiny_qk_v_explicit");
    let masked_lm = masked_lm.path().to_str().unwrap();
    let image_classifier = config_only("classification/tiny_image_conv");
    let image_classifier = image_classifier.path().to_str().unwrap();
    let image = fixtures()
        .join("images")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let image = image.to_str().unwrap();

    assert_refused(
        &perceiver(&["fill-mask", "-m", flow, "a [MASK]"]),
        "fill-mask needs a PerceiverForMaskedLM, not a PerceiverForOpticalFlow",
    );
    assert_refused(
        &perceiver(&["classify", "-m", masked_lm, "--text", "bonjour"]),
        "classification needs a classifier",
    );
    // The input kind too: an image classifier given texts.
    assert_refused(
        &perceiver(&["classify", "-m", image_classifier, "--text", "bonjour"]),
        "classifies images; leave out --text",
    );
    assert_refused(
        &perceiver(&["classify", "-m", masked_lm, image]),
        "classification needs a classifier",
    );
    assert_refused(
        &perceiver(&[
            "autoencode",
            "-m",
            flow,
            "--frames",
            image,
            "--audio",
            image,
            "--out",
            "x",
        ]),
        "autoencoding needs a PerceiverForMultimodalAutoencoding model, not a PerceiverForOpticalFlow",
    );
}

/// `serve` serves the multimodal autoencoder: it loads as a task and its clip is checked
/// against the service's pixel limit at start.
#[test]
fn serve_takes_the_autoencoder_and_checks_its_clip_against_the_pixel_limit() {
    let multimodal = fixtures().join("multimodal/tiny_multimodal");
    assert_refused(
        &perceiver(&[
            "serve",
            "-m",
            multimodal.to_str().unwrap(),
            "--port",
            "0",
            "--max-image-pixels",
            "100",
        ]),
        "max_image_pixels (100) is below the 512 pixels of one clip",
    );
}
