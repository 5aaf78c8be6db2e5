//! DeepMind checkpoints wherever the `perceiver` binary takes a model, and `perceiver convert`:
//! on the tiny pickles of `tests/fixtures/deepmind/` (made by DeepMind's own code; the library's
//! tests hold their logits to DeepMind's), a pickle and the directory converted from it must
//! give the same answers.

mod common;

use common::{command, run};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/deepmind")
        .join(name)
}

/// Needs no config.json (the Colab's heads and blocks).
fn colab_pickle() -> String {
    path(fixture("mlm_colab_constants").join("params.p2.pickle"))
}

/// Needs the config.json beside it.
fn config_json_pickle() -> (String, String) {
    let dir = fixture("mlm_config_json");
    (path(dir.join("params.p3.pickle")), path(dir.join("config.json")))
}

fn path(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn fails(args: &[&str], needle: &str) {
    let out = command(args).output().expect("run perceiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
}

fn stdout_json(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const TEXTS: [&str; 3] = [
    "This is an incomplete sentence where some words are[MASK:9]",
    "Hello w[MASK:4]!",
    "[MASK:2] x [MASK]",
];

fn fill_mask(model_flags: &[&str]) -> Vec<Value> {
    TEXTS
        .iter()
        .flat_map(|text| {
            let mut args = vec!["fill-mask", "--json", "-k", "3"];
            args.extend(model_flags);
            args.push(text);
            stdout_json(&run(&args))
        })
        .collect()
}

#[test]
fn a_converted_pickle_answers_as_the_pickle_does() {
    let dir = tempfile::tempdir().unwrap();
    let (b_pickle, b_config) = config_json_pickle();
    for (pickle, config) in [(colab_pickle(), None), (b_pickle, Some(b_config.as_str()))] {
        let out = dir
            .path()
            .join(Path::new(&pickle).parent().unwrap().file_name().unwrap());
        let out = path(out);
        let mut flags = vec![pickle.as_str()];
        if let Some(config) = config {
            flags.extend(["--model-config", config]);
        }
        let mut convert = vec!["convert", "--out", out.as_str()];
        convert.extend(&flags);
        let printed = String::from_utf8(run(&convert).stdout).unwrap();
        assert!(printed.contains("hidden_act gelu_new"), "{printed}");

        let mut from_pickle = vec!["--model"];
        from_pickle.extend(&flags);
        let direct = fill_mask(&from_pickle);
        let converted = fill_mask(&["--model", out.as_str()]);
        assert_eq!(direct, converted, "{pickle}");
        assert_eq!(direct.len(), TEXTS.len());

        // eval reads the pickle through the same loader.
        let corpus = dir.path().join("text.txt");
        std::fs::write(&corpus, "The cat sat on the mat. ".repeat(40)).unwrap();
        let corpus = path(corpus);
        let eval = |model: &[&str]| {
            let mut args = vec!["eval", "--json", "--seq-len", "32", corpus.as_str()];
            args.extend(model);
            let mut result = stdout_json(&run(&args));
            // Everything but the model's name.
            result[0].as_object_mut().unwrap().remove("model");
            result
        };
        assert_eq!(eval(&from_pickle), eval(&["--model", out.as_str()]), "{pickle}");
    }
}

#[test]
fn convert_reads_the_model_config_from_the_environment_as_the_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (pickle, config) = config_json_pickle();
    let by_flag = path(dir.path().join("by_flag"));
    let by_env = path(dir.path().join("by_env"));
    run(&["convert", &pickle, "--out", &by_flag, "--model-config", &config]);
    let out = command(&["convert", &pickle, "--out", &by_env])
        .env("PERCEIVER_MODEL_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |dir: &str| std::fs::read_to_string(Path::new(dir).join("config.json")).unwrap();
    assert_eq!(read(&by_env), read(&by_flag));
}

#[test]
fn convert_refuses_a_directory_with_files_unless_forced_and_writes_the_chosen_gelu() {
    let dir = tempfile::tempdir().unwrap();
    let out = path(dir.path().join("model"));
    let pickle = colab_pickle();
    run(&["convert", &pickle, "--out", &out]);
    fails(&["convert", &pickle, "--out", &out], "not empty");
    run(&[
        "convert",
        &pickle,
        "--out",
        &out,
        "--force",
        "--activation",
        "gelu",
    ]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_act"], "gelu");
    assert_eq!(config["architectures"][0], "PerceiverForMaskedLM");
    let out = command(&["convert", &pickle, "--out", &out, "--activation", "relu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad flag value is a usage error");
}

#[test]
fn bad_deepmind_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Not a pickle at all.
    let junk = dir.path().join("junk.pickle");
    std::fs::write(&junk, b"not a pickle").unwrap();
    fails(&["fill-mask", "--model", &path(junk), "a[MASK]"], "junk.pickle");
    // A config.json whose shapes disagree with the file: the parameter is named.
    let (pickle, _) = config_json_pickle();
    let wrong = fixture("../parity/tiny_qk_v_explicit/config.json");
    fails(
        &[
            "fill-mask",
            "--model",
            &pickle,
            "--model-config",
            &path(wrong),
            "a[MASK]",
        ],
        "has shape",
    );
    // A config.json for a model that has its own.
    let (_, config) = config_json_pickle();
    fails(
        &["fill-mask", "--model-config", &config, "a[MASK]"],
        "names a config.json for a DeepMind checkpoint",
    );
}

#[test]
fn training_starts_from_a_pickle() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "Our teacher reads a red book in the garden. ".repeat(200),
    )
    .unwrap();
    let (corpus, run_dir) = (path(corpus), path(dir.path().join("run")));
    let (pickle, config) = config_json_pickle();
    run(&[
        "train",
        "--init-from",
        &pickle,
        "--model-config",
        &config,
        "--corpus",
        &corpus,
        "--eval-corpus",
        &corpus,
        "--out",
        &run_dir,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--eval-windows",
        "2",
        "--plot",
        "false",
    ]);
    let checkpoint = Path::new(&run_dir).join("step-000002");
    let training = std::fs::read_to_string(checkpoint.join("training.json")).unwrap();
    assert!(training.contains(&format!("pretrained:{pickle}")), "{training}");
    // The fine-tuned model keeps the named config (heads, blocks) and fills masks.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_self_attention_heads"], 4);
    assert_eq!(config["num_blocks"], 2);
    run(&["fill-mask", "--model", &path(checkpoint), "a red b[MASK]k"]);
}

/// An ImageNet pystate converts to a directory with preprocessor_config.json, and `convert`
/// says which GELU and which of DeepMind's settings transformers' class does not follow.
#[test]
fn an_imagenet_pystate_converts_with_its_preprocessor_config() {
    for (name, note) in [
        ("imagenet_conv", "stem_padding \"same\""),
        ("imagenet_learned", "decoder_use_query_residual false"),
        ("imagenet_fourier", "hidden_act gelu_new"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = path(dir.path().join("model"));
        let pystate = path(fixture(name).join("params.pystate"));
        let printed = String::from_utf8(run(&["convert", &pystate, "--out", &out]).stdout).unwrap();
        assert!(
            printed.contains("hidden_act gelu_new") && printed.contains(note),
            "{printed}"
        );
        assert!(Path::new(&out).join("preprocessor_config.json").is_file());
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap())
                .unwrap();
        assert!(
            config["architectures"][0]
                .as_str()
                .unwrap()
                .starts_with("PerceiverForImageClassification"),
            "{config}"
        );
    }
    // The conv model without the rest of its pystate (a learned model's config) is refused.
    let learned = path(fixture("imagenet_learned").join("params.pystate"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"architectures": ["PerceiverForImageClassificationConvProcessing"], "d_latents": 16,
            "num_latents": 8, "qk_channels": 16, "v_channels": 16}"#,
    )
    .unwrap();
    let out = path(dir.path().join("model"));
    fails(
        &[
            "convert",
            &learned,
            "--out",
            &out,
            "--model-config",
            &path(config),
        ],
        "learned positions",
    );
}

/// The video pystate converts (with its config.json: its sizes are not the Colab's) to a
/// PerceiverForMultimodalAutoencoding directory; without one its config is the Colab's.
#[test]
fn the_video_pystate_converts() {
    let dir = tempfile::tempdir().unwrap();
    let pystate = path(fixture("video").join("params.pystate"));
    let config = path(fixture("video").join("config.json"));
    for (name, flags) in [
        ("named", vec!["--model-config", config.as_str()]),
        ("colab", vec![]),
    ] {
        let out = path(dir.path().join(name));
        let mut args = vec!["convert", pystate.as_str(), "--out", out.as_str()];
        args.extend(&flags);
        let printed = String::from_utf8(run(&args).stdout).unwrap();
        assert!(printed.contains("hidden_act gelu_new"), "{printed}");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["architectures"][0], "PerceiverForMultimodalAutoencoding");
        let frames = if name == "colab" { 16 } else { 4 };
        assert_eq!(written["num_frames"], frames, "{written}");
    }
}

fn classification_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification")
        .join(name)
}

/// `classify --json` of the fixture's two images by `model`.
fn classify_images(model: &str, images: &Path) -> String {
    let (wide, tall) = (path(images.join("wide.png")), path(images.join("tall_grey.png")));
    let out = run(&["classify", "--json", "-k", "3", "--model", model, &wide, &tall]);
    String::from_utf8(out.stdout).unwrap()
}

/// A model directory converts with its own preprocessor_config.json (not ImageNet's defaults,
/// which a 12×12 learned model refuses and which change a conv model's answers): the converted
/// directory classifies as the source does.
#[test]
fn a_converted_image_model_directory_keeps_its_preprocessor_config() {
    for name in ["tiny_image_learned", "tiny_image_conv", "tiny_image_fourier"] {
        let source = classification_fixture(name);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        run(&["convert", &path(source.clone()), "--out", &path(out.clone())]);
        let read = |dir: &Path| std::fs::read(dir.join("preprocessor_config.json")).unwrap();
        assert_eq!(read(&out), read(&source), "{name}");
        assert_eq!(
            classify_images(&path(out), &source),
            classify_images(&path(source.clone()), &source),
            "{name}"
        );
    }
}

/// `convert --force` over a model replaces it whole, and a write that fails says it could not
/// write (not that a weights file is corrupt) and leaves the old model as it was.
#[test]
fn convert_force_replaces_a_model_whole_or_leaves_it() {
    let learned = classification_fixture("tiny_image_learned");
    let conv = classification_fixture("tiny_image_conv");
    let dir = tempfile::tempdir().unwrap();
    let out = path(dir.path().join("model"));
    run(&["convert", &path(learned.clone()), "--out", &out]);
    let before = classify_images(&out, &learned);

    // A new file that cannot be written (a directory holds its name, which stops root too),
    // whichever it is: the run fails before anything is replaced, saying so.
    for file in [
        "model.safetensors.partial",
        "config.json.partial",
        "preprocessor_config.json.partial",
    ] {
        let blocker = dir.path().join("model").join(file);
        std::fs::create_dir(&blocker).unwrap();
        let failed = command(&["convert", &path(conv.clone()), "--out", &out, "--force"])
            .output()
            .unwrap();
        common::fails_with(&failed, &format!("cannot write {}", path(blocker.clone())));
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!stderr.contains("corrupt"), "{stderr}");
        assert_eq!(stderr.matches("cannot write").count(), 1, "said once: {stderr}");
        assert_eq!(classify_images(&out, &learned), before, "{file}");
        std::fs::remove_dir(&blocker).unwrap();
        let left = partial_files(&dir.path().join("model"));
        assert!(left.is_empty(), "{left:?}");
    }

    run(&["convert", &path(conv.clone()), "--out", &out, "--force"]);
    assert_eq!(
        classify_images(&out, &conv),
        classify_images(&path(conv.clone()), &conv)
    );
    let left = partial_files(&dir.path().join("model"));
    assert!(left.is_empty(), "{left:?}");

    // A masked LM over the image model: the image processor's config goes with it.
    let mlm = fixture("mlm_colab_constants").join("params.p5.pickle");
    run(&["convert", &path(mlm), "--out", &out, "--force"]);
    assert!(!dir.path().join("model/preprocessor_config.json").exists());
    let filled = run(&["fill-mask", "--model", &out, "ab[MASK]"]);
    assert!(filled.status.success());
}

/// The names of the staged `.partial` files a conversion left in `dir`.
fn partial_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}
