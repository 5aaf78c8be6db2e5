//! The files `perceiver flow` and `perceiver autoencode` write: an output that is an input by
//! another name (a hard link), a symbolic link to nowhere, a directory, or a place that cannot be
//! written is refused before the model loads (here, mostly, a model directory holding only its
//! config, so that getting as far as the weights is a failure of the check), and a write that
//! fails after the run leaves no partial set of outputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn flow_model() -> PathBuf {
    repo().join("tests/fixtures/flow/tiny_flow")
}

fn multimodal_model() -> PathBuf {
    repo().join("tests/fixtures/multimodal/tiny_multimodal")
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn perceiver(args: &[&str]) -> Output {
    common::command(args).output().expect("run perceiver")
}

/// A copy of `model`'s config.json alone in `dir/name`: a run that gets as far as loading the
/// weights fails with "cannot load model".
fn config_only(model: &Path, dir: &Path, name: &str) -> PathBuf {
    let only = dir.join(name);
    std::fs::create_dir(&only).unwrap();
    std::fs::copy(model.join("config.json"), only.join("config.json")).unwrap();
    only
}

/// Two 48x56 frames (the tiny flow model's tile) copied into `dir`.
fn flow_frames(dir: &Path) -> (PathBuf, PathBuf) {
    let frames = repo().join("tests/fixtures/flow/frames");
    let (a, b) = (dir.join("f1.png"), dir.join("f2.png"));
    std::fs::copy(frames.join("tiny_flow-exact-1.png"), &a).unwrap();
    std::fs::copy(frames.join("tiny_flow-exact-2.png"), &b).unwrap();
    (a, b)
}

/// The tiny multimodal model's inputs in `dir`: `clip/` (2 frames of 16x16) and `clip.wav`
/// (96 samples at 1,200 Hz).
fn autoencode_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let clip = dir.join("clip");
    std::fs::create_dir(&clip).unwrap();
    for t in 0..2u32 {
        image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 13 + t * 40) as u8, (y * 11) as u8, 7])
        })
        .save(clip.join(format!("{t}.png")))
        .unwrap();
    }
    let wav = dir.join("clip.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 1200,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..96 {
        writer
            .write_sample(((i as f32 * 0.3).sin() * 12000.0) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
    (clip, wav)
}

/// `perceiver flow` on the frames `a`, `b` with `outputs` (its output flags).
fn flow(model: &Path, a: &Path, b: &Path, outputs: &[&str]) -> Output {
    let (model, a, b) = (path(model), path(a), path(b));
    perceiver(&[&["flow", "--model", &model, &a, &b], outputs].concat())
}

fn autoencode(model: &Path, clip: &Path, wav: &Path, out: &Path) -> Output {
    perceiver(&[
        "autoencode",
        "--model",
        &path(model),
        "--frames",
        &path(clip),
        "--audio",
        &path(wav),
        "--out",
        &path(out),
    ])
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(unix)]
/// Whether this process ignores permission bits (root does): a file can be made in a
/// read-only directory. The tests of permissions are skipped there.
fn ignores_permissions(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.join("ro-probe");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let ignores = std::fs::write(ro.join("x"), b"x").is_ok();
    let _ = std::fs::remove_file(ro.join("x"));
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    ignores
}

#[test]
fn a_hard_link_to_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = flow_frames(dir.path());
    let link = dir.path().join("link.png");
    std::fs::hard_link(&a, &link).unwrap();
    let before = std::fs::read(&a).unwrap();
    let out = flow(&flow_model(), &a, &b, &["--out", &path(&link)]);
    common::fails_with(
        &out,
        &format!(
            "--out {} is a hard link to the input {}",
            link.display(),
            a.display()
        ),
    );
    assert_eq!(std::fs::read(&a).unwrap(), before, "the input frame is as it was");

    // autoencode: an earlier run's audio.wav that is the input audio under another name.
    let (clip, wav) = autoencode_inputs(dir.path());
    let out_dir = dir.path().join("o8");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::hard_link(&wav, out_dir.join("audio.wav")).unwrap();
    let before = std::fs::read(&wav).unwrap();
    common::fails_with(
        &autoencode(&multimodal_model(), &clip, &wav, &out_dir),
        "audio.wav is a hard link to the input",
    );
    assert_eq!(
        std::fs::read(&wav).unwrap(),
        before,
        "the input audio is as it was"
    );
}

#[cfg(unix)]
#[test]
fn a_symbolic_link_to_nowhere_is_refused_before_the_model_loads() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = flow_frames(dir.path());
    let flow_config = config_only(&flow_model(), dir.path(), "flow_config");
    let dangling = dir.path().join("fdl.png");
    symlink("/nonexistent/x.png", &dangling).unwrap();
    common::fails_with(
        &flow(&flow_config, &a, &b, &["--out", &path(&dangling)]),
        "(--out): it is a symbolic link to /nonexistent/x.png, and /nonexistent is not a directory",
    );

    let (clip, wav) = autoencode_inputs(dir.path());
    let multimodal_config = config_only(&multimodal_model(), dir.path(), "multimodal_config");
    let odl = dir.path().join("odl");
    symlink("/nonexistent/dir", &odl).unwrap();
    common::fails_with(
        &autoencode(&multimodal_config, &clip, &wav, &odl),
        "(--out): it is a symbolic link to /nonexistent/dir, and /nonexistent is not a directory",
    );

    // A link to a file or directory yet to be made, in one that exists, is written through.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let to_new = dir.path().join("new.png");
    symlink("sub/flow.png", &to_new).unwrap();
    common::run(&[
        "flow",
        "--model",
        &path(&flow_model()),
        &path(&a),
        &path(&b),
        "--out",
        &path(&to_new),
    ]);
    assert!(to_new.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(dir.path().join("sub/flow.png").is_file());
    let to_new_dir = dir.path().join("onew");
    symlink("sub/reconstruction", &to_new_dir).unwrap();
    let out = autoencode(&multimodal_model(), &clip, &wav, &to_new_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        names(&dir.path().join("sub/reconstruction")),
        ["audio.wav", "frames", "labels.json"]
    );
}

#[test]
fn an_output_that_is_a_directory_is_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, wav) = autoencode_inputs(dir.path());
    let config = config_only(&multimodal_model(), dir.path(), "config_only");
    let out_dir = dir.path().join("o5");
    std::fs::create_dir_all(out_dir.join("frames/frame_001.png")).unwrap();
    common::fails_with(
        &autoencode(&config, &clip, &wav, &out_dir),
        "frame_001.png (--out): it is a directory",
    );
    assert_eq!(names(&out_dir), ["frames"]);
    assert_eq!(names(&out_dir.join("frames")), ["frame_001.png"]);

    let (a, b) = flow_frames(dir.path());
    let flow_config = config_only(&flow_model(), dir.path(), "flow_config");
    let flo_dir = dir.path().join("x.flo");
    std::fs::create_dir(&flo_dir).unwrap();
    common::fails_with(
        &flow(&flow_config, &a, &b, &["--flo", &path(&flo_dir)]),
        "x.flo (--flo): it is a directory",
    );
}

#[test]
fn an_output_directory_that_cannot_be_made_is_refused_and_a_refused_run_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, wav) = autoencode_inputs(dir.path());
    let config = config_only(&multimodal_model(), dir.path(), "config_only");
    // /proc takes no new directory, even from root.
    if Path::new("/proc/self").exists() {
        common::fails_with(
            &autoencode(&config, &clip, &wav, Path::new("/proc/rec")),
            "cannot create /proc/rec (--out)",
        );
    }
    // --out is made before the model loads (to be sure it can be), and removed again when the
    // run fails, here at the missing weights.
    let out_dir = dir.path().join("new/out");
    common::fails_with(&autoencode(&config, &clip, &wav, &out_dir), "cannot load model");
    assert!(!dir.path().join("new").exists());
}

#[cfg(target_os = "linux")]
#[test]
fn a_write_that_fails_after_the_run_leaves_no_partial_set() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = flow_frames(dir.path());
    let png = dir.path().join("p.png");
    std::fs::write(&png, b"an earlier picture").unwrap();
    // /dev/full takes the .flo as a device is written (in place) and fails it: the picture,
    // written first, is not put in place.
    common::fails_with(
        &flow(
            &flow_model(),
            &a,
            &b,
            &["--out", &path(&png), "--flo", "/dev/full"],
        ),
        "cannot write /dev/full",
    );
    assert_eq!(std::fs::read(&png).unwrap(), b"an earlier picture");
    assert_eq!(names(dir.path()), ["f1.png", "f2.png", "p.png"]);
}

#[cfg(unix)]
#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_model_runs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    if ignores_permissions(dir.path()) {
        eprintln!("skipped: this process writes into read-only directories (root), so none can be refused");
        return;
    }
    let (a, b) = flow_frames(dir.path());
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let png = dir.path().join("p.png");
    let out = flow(
        &flow_model(),
        &a,
        &b,
        &["--out", &path(&png), "--flo", &path(&ro.join("x.flo")), "--json"],
    );
    common::fails_with(&out, "x.flo (--flo): Permission denied");
    assert!(out.stdout.is_empty(), "no summary");
    assert!(!png.exists(), "no picture");

    // A read-only file is refused rather than replaced.
    let read_only = dir.path().join("ro.png");
    std::fs::write(&read_only, b"kept").unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = flow(&flow_model(), &a, &b, &["--out", &path(&read_only)]);
    common::fails_with(&out, "ro.png (--out): Permission denied");
    assert_eq!(std::fs::read(&read_only).unwrap(), b"kept");

    let (clip, wav) = autoencode_inputs(dir.path());
    let config = config_only(&multimodal_model(), dir.path(), "config_only");
    common::fails_with(
        &autoencode(&config, &clip, &wav, &ro.join("rec")),
        "rec (--out): Permission denied",
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}
