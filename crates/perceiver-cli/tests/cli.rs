//! The `perceiver` binary end to end, on the committed tiny fixture models: output shapes,
//! agreement with transformers' fill-mask pipeline, batching, and every error path ending in
//! one line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

const MODEL: &str = "tiny_qk_v_explicit";

/// The binary with a clean environment: offline, an empty Hugging Face home, and none of the
/// variables that could point it at a developer's real cache, token or endpoint.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env(
        "HF_HOME",
        std::env::temp_dir().join("perceiver-cli-tests-empty-hf-home"),
    );
    for var in ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "PERCEIVER_MODEL"] {
        cmd.env_remove(var);
    }
    cmd
}

fn perceiver(args: &[&str]) -> Output {
    command(args).output().expect("run perceiver")
}

fn model_arg(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
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

/// Fails with exactly one line on stderr, naming `needle`, and no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "stderr should be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} should mention {needle:?}"
    );
}

#[test]
fn json_output_matches_transformers_pipeline() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture(MODEL).join("fill_mask.json")).unwrap())
            .unwrap();
    let case = cases
        .iter()
        .find(|c| c["mask_positions"].as_array().unwrap().len() == 1)
        .unwrap();
    let out = perceiver(&[
        "fill-mask",
        "--model",
        &model_arg(MODEL),
        "--json",
        "--add-special-tokens",
        case["text"].as_str().unwrap(),
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let got = &lines[0];
    let masks = got["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 1);
    assert_eq!(masks[0]["position"], case["mask_positions"][0]);
    let candidates = masks[0]["candidates"].as_array().unwrap();
    let expected = case["output"].as_array().unwrap();
    assert_eq!(candidates.len(), 5, "default top-k is 5");
    let mut worst = 0f64;
    for (c, e) in candidates.iter().zip(expected) {
        assert_eq!(c["token"], e["token"]);
        assert_eq!(c["token_str"], e["token_str"]);
        let (a, b) = (c["score"].as_f64().unwrap(), e["score"].as_f64().unwrap());
        assert!((a - b).abs() < 2e-5, "score {a} vs {b}: |Δ| > 2e-5");
        worst = worst.max((a - b).abs());
    }
    println!("5 candidates as the pipeline's; max |Δ score| = {worst:.2e} (tolerance 2e-5)");
    // With one mask, transformers' `sequence` for the top candidate is ours.
    assert_eq!(got["sequence"], expected[0]["sequence"]);
    let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["masks", "sequence"]);
}

#[test]
fn mask_runs_ranges_and_top_k() {
    let model = model_arg(MODEL);
    let by_marker = json_lines(&perceiver(&[
        "fill-mask",
        "-m",
        &model,
        "--json",
        "-k",
        "3",
        "Hello w[MASK:4]!",
    ]));
    let masks = by_marker[0]["masks"].as_array().unwrap();
    let positions: Vec<u64> = masks.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [7, 8, 9, 10]);
    assert!(masks
        .iter()
        .all(|m| m["candidates"].as_array().unwrap().len() == 3));
    for m in masks {
        let scores: Vec<f64> = m["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    }
    // Masking the same bytes by range gives the same answer.
    let by_range = json_lines(&perceiver(&[
        "fill-mask",
        "-m",
        &model,
        "--json",
        "-k",
        "3",
        "--mask-range",
        "7..11",
        "Hello world!",
    ]));
    assert_eq!(by_marker, by_range);
    // The human report shows the filled text first.
    let human = perceiver(&["fill-mask", "-m", &model, "Hello w[MASK:4]!"]);
    assert!(human.status.success());
    let text = String::from_utf8(human.stdout).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        by_marker[0]["sequence"].as_str().unwrap()
    );
    assert_eq!(text.lines().count(), 5);
}

#[test]
fn input_file_is_batched_and_keeps_order() {
    let model = model_arg("tiny_narrow_latents");
    let texts = [
        "a fairly long line of text with one [MASK] in the middle of it, longer than the rest",
        "short [MASK:2]",
        "[MASK] at the start",
        "mid-length line: [MASK:3] here",
        "unicode: naïve café [MASK]",
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, texts.join("\n") + "\n").unwrap();
    let batched = json_lines(&perceiver(&[
        "fill-mask",
        "-m",
        &model,
        "--input",
        file.to_str().unwrap(),
        "--batch-size",
        "3",
    ]));
    assert_eq!(batched.len(), texts.len());
    for (text, got) in texts.iter().zip(&batched) {
        let alone = json_lines(&perceiver(&["fill-mask", "-m", &model, "--json", text]));
        let (got_masks, alone_masks) = (
            got["masks"].as_array().unwrap(),
            alone[0]["masks"].as_array().unwrap(),
        );
        assert_eq!(got["sequence"], alone[0]["sequence"], "{text}");
        for (g, a) in got_masks.iter().zip(alone_masks) {
            assert_eq!(g["position"], a["position"]);
            for (gc, ac) in g["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .zip(a["candidates"].as_array().unwrap())
            {
                assert_eq!(gc["token"], ac["token"], "{text}");
                assert!((gc["score"].as_f64().unwrap() - ac["score"].as_f64().unwrap()).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn input_dash_reads_standard_input() {
    use std::io::Write;
    let model = model_arg(MODEL);
    let mut child = command(&["fill-mask", "-m", &model, "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one [MASK]\ntwo [MASK:2]\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["masks"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_texts_fail_cleanly() {
    let model = model_arg(MODEL);
    let long = format!("{}[MASK]", "x".repeat(200));
    let hostile = "[MASK:1048576]".repeat(300);
    // (extra arguments, text, what the message must say)
    let cases: [(&[&str], &str, &str); 9] = [
        (&[], "no mask here", "no mask"),
        (&[], "bad [MASK:x] run", "malformed mask at byte 4"),
        (&[], &long, "at most 64"),
        (&[], &hostile, "more than"),
        // Beyond usize: a count that is true ("or more"), not usize::MAX.
        (
            &[],
            "[MASK:999999999999999999999]",
            "is 1048577 tokens long or more",
        ),
        (&["--mask-range", "3..99"], "short", "outside the text"),
        (&["--mask-range", "0..2"], "a [MASK]", "not both"),
        (&["--mask-range", "5..3"], "hello world", "range 5..3 is empty"),
        (&["-k", "0"], "a [MASK]", "--top-k"),
    ];
    for (extra, text, needle) in cases {
        let mut args = vec!["fill-mask", "-m", &model];
        args.extend_from_slice(extra);
        args.push(text);
        assert_clean_failure(&perceiver(&args), needle);
    }
}

#[test]
fn texts_of_exactly_the_maximum_length_are_accepted() {
    // The fixture model has 64 positions.
    let model = model_arg(MODEL);
    let fits = format!("{}[MASK]", "x".repeat(63));
    assert_eq!(
        json_lines(&perceiver(&["fill-mask", "-m", &model, "--json", &fits])).len(),
        1
    );
    let fits_with_specials = format!("{}[MASK]", "x".repeat(61));
    let out = perceiver(&[
        "fill-mask",
        "-m",
        &model,
        "--json",
        "--add-special-tokens",
        &fits_with_specials,
    ]);
    assert_eq!(json_lines(&out)[0]["masks"][0]["position"], 62);
    let too_long = format!("{}[MASK]", "x".repeat(64));
    assert_clean_failure(
        &perceiver(&["fill-mask", "-m", &model, &too_long]),
        "65 tokens long",
    );
}

#[test]
fn mask_range_counts_plain_text_bytes_even_with_special_tokens() {
    let model = model_arg(MODEL);
    let args = [
        "fill-mask",
        "-m",
        &model,
        "--json",
        "--add-special-tokens",
        "--mask-range",
        "7..11",
        "Hello world!",
    ];
    let by_range = json_lines(&perceiver(&args));
    let positions: Vec<u64> = by_range[0]["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [8, 9, 10, 11], "shifted by [CLS]");
    let by_marker = json_lines(&perceiver(&[
        "fill-mask",
        "-m",
        &model,
        "--json",
        "--add-special-tokens",
        "Hello w[MASK:4]!",
    ]));
    assert_eq!(by_range, by_marker);
}

#[test]
fn bad_input_files_fail_cleanly() {
    let model = model_arg(MODEL);
    assert_clean_failure(
        &perceiver(&["fill-mask", "-m", &model, "--input", "/nonexistent/texts.txt"]),
        "cannot read /nonexistent/texts.txt",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, "ok [MASK]\nthis line has none\n").unwrap();
    assert_clean_failure(
        &perceiver(&["fill-mask", "-m", &model, "--input", file.to_str().unwrap()]),
        "line 2",
    );
    // Checked before the model loads: a model that cannot load is not what is reported.
    assert_clean_failure(
        &perceiver(&[
            "fill-mask",
            "-m",
            "/nonexistent/model",
            "--input",
            file.to_str().unwrap(),
        ]),
        "line 2: the text has no mask",
    );
    std::fs::write(&file, b"ok [MASK]\n\xff\xfe\n").unwrap();
    assert_clean_failure(
        &perceiver(&["fill-mask", "-m", &model, "--input", file.to_str().unwrap()]),
        "not UTF-8",
    );
}

/// Copies a fixture model into a temp dir so a test can damage it.
fn model_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

#[test]
fn bad_models_fail_cleanly() {
    let run = |dir: &Path| perceiver(&["fill-mask", "-m", dir.to_str().unwrap(), "a [MASK]"]);

    assert_clean_failure(
        &perceiver(&["fill-mask", "-m", "./no/such/dir", "a [MASK]"]),
        "no such model directory",
    );

    let dir = model_copy(MODEL);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_clean_failure(&run(dir.path()), "no weights");

    let dir = model_copy(MODEL);
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&run(dir.path()), "corrupt or unreadable weights");

    std::fs::write(&weights, b"this is not a safetensors file at all").unwrap();
    assert_clean_failure(&run(dir.path()), "corrupt or unreadable weights");

    std::fs::write(&weights, b"").unwrap();
    assert_clean_failure(&run(dir.path()), "corrupt or unreadable weights");

    let dir = model_copy(MODEL);
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert_clean_failure(&run(dir.path()), "invalid config");
}

#[test]
fn config_that_does_not_match_the_weights_names_the_tensor() {
    let edit = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let dir = model_copy(MODEL);
        let path = dir.path().join("config.json");
        let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        change(config.as_object_mut().unwrap());
        std::fs::write(&path, config.to_string()).unwrap();
        dir
    };
    let run =
        |dir: &tempfile::TempDir| perceiver(&["fill-mask", "-m", dir.path().to_str().unwrap(), "a [MASK]"]);

    // Wider inputs than the weights: the first tensor read names both shapes.
    let dir = edit(&|c| {
        c.insert("d_model".into(), 40.into());
    });
    assert_clean_failure(
        &run(&dir),
        "tensor perceiver.input_preprocessor.embeddings.weight has shape [262, 32], expected [262, 40]",
    );

    // More layers than the weights hold.
    let dir = edit(&|c| {
        let n = c["num_self_attends_per_block"].as_u64().unwrap();
        c.insert("num_self_attends_per_block".into(), (n + 1).into());
    });
    assert_clean_failure(&run(&dir), "is missing");

    // The most layers a config may have fail at the first missing layer, without building all.
    let dir = edit(&|c| {
        c.insert("num_self_attends_per_block".into(), 1024.into());
    });
    assert_clean_failure(&run(&dir), "is missing");
    // An absurd layer count is refused by its range before any layer is built.
    let dir = edit(&|c| {
        c.insert("num_self_attends_per_block".into(), 26_000_000.into());
    });
    assert_clean_failure(&run(&dir), "num_self_attends_per_block is 26000000");

    // Fewer layers than the weights hold.
    let dir = edit(&|c| {
        c.insert("num_self_attends_per_block".into(), 1.into());
    });
    assert_clean_failure(&run(&dir), "unexpected tensor perceiver.encoder.self_attends.1.");
}

#[test]
fn unknown_hub_id_offline_fails_cleanly() {
    let out = perceiver(&[
        "fill-mask",
        "-m",
        "nobody/no-such-perceiver",
        "--offline",
        "a [MASK]",
    ]);
    assert_clean_failure(&out, "not in the local Hugging Face cache");
}

/// A cache laid out as huggingface_hub writes it: refs/main → snapshots/<commit>/files.
fn hub_cache_with_fixture(repo_name: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home
        .path()
        .join("hub")
        .join(format!("models--{}", repo_name.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(MODEL).join(file), snapshot.join(file)).unwrap();
    }
    home
}

#[test]
fn hub_cache_is_used_offline() {
    let home = hub_cache_with_fixture("someone/tiny-perceiver");
    let out = command(&["fill-mask", "-m", "someone/tiny-perceiver", "--json", "a [MASK]"])
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    let from_cache = json_lines(&out);
    let from_dir = json_lines(&perceiver(&[
        "fill-mask",
        "-m",
        &model_arg(MODEL),
        "--json",
        "a [MASK]",
    ]));
    assert_eq!(from_cache, from_dir);
}

#[test]
fn a_commit_revision_resolves_from_its_snapshot_offline() {
    let home = hub_cache_with_fixture("someone/tiny-perceiver");
    let run = |revision: &str| {
        command(&[
            "fill-mask",
            "-m",
            "someone/tiny-perceiver",
            "--revision",
            revision,
            "--json",
            "a [MASK]",
        ])
        .env("HF_HOME", home.path())
        .output()
        .unwrap()
    };
    assert_eq!(
        json_lines(&run("0123456789abcdef0123456789abcdef01234567")).len(),
        1
    );
    assert_clean_failure(
        &run("fedcba9876543210fedcba9876543210fedcba98"),
        "not in the local Hugging Face cache",
    );
}

/// `convert` takes the hub options every other command takes: `--revision` (and
/// PERCEIVER_REVISION) picks the snapshot, `--offline` keeps to the cache.
#[test]
fn convert_takes_the_hub_options() {
    let home = hub_cache_with_fixture("someone/tiny-perceiver");
    let out_dir = tempfile::tempdir().unwrap();
    let convert = |revision: Option<&str>, env: Option<&str>, name: &str| {
        let out = out_dir.path().join(name);
        let mut args = vec!["convert", "someone/tiny-perceiver", "--offline", "--out"];
        let out = out.to_string_lossy().into_owned();
        args.push(&out);
        if let Some(revision) = revision {
            args.extend(["--revision", revision]);
        }
        let mut cmd = command(&args);
        cmd.env_remove("HF_HUB_OFFLINE").env("HF_HOME", home.path());
        if let Some(revision) = env {
            cmd.env("PERCEIVER_REVISION", revision);
        }
        cmd.output().unwrap()
    };
    let cached = "0123456789abcdef0123456789abcdef01234567";
    let absent = "fedcba9876543210fedcba9876543210fedcba98";
    assert!(convert(Some(cached), None, "flag").status.success());
    assert!(convert(None, Some(cached), "env").status.success());
    assert!(convert(None, None, "main").status.success());
    assert_clean_failure(
        &convert(Some(absent), None, "absent-flag"),
        "not in the local Hugging Face cache",
    );
    assert_clean_failure(
        &convert(None, Some(absent), "absent-env"),
        "not in the local Hugging Face cache",
    );
}

#[test]
fn unreachable_hub_falls_back_to_the_cache() {
    // HF_ENDPOINT on a closed loopback port: the request fails at once, no network is touched.
    let home = hub_cache_with_fixture("someone/tiny-perceiver");
    let run = |model: &str| {
        command(&["fill-mask", "-m", model, "--json", "a [MASK]"])
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("HF_HOME", home.path())
            .output()
            .unwrap()
    };
    let out = run("someone/tiny-perceiver");
    assert_eq!(json_lines(&out).len(), 1);
    assert_clean_failure(
        &run("someone/not-cached"),
        "cannot get config.json of model someone/not-cached",
    );
}

/// A DeepMind file that is not there is reported as such, not looked up on the hub (whose
/// closed endpoint would answer with a connection error).
#[test]
fn a_missing_deepmind_file_is_no_such_file_not_a_hub_look_up() {
    let out = command(&["fill-mask", "-m", "nonexist.pickle", "a [MASK]"])
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_clean_failure(&out, "nonexist.pickle: no such file");
}

#[test]
fn without_model_the_built_in_default_model_fills_masks_offline() {
    let out = perceiver(&["fill-mask", "--json", "-k", "3", "The cat sat on the m[MASK]t."]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let masks = lines[0]["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 1);
    assert_eq!(masks[0]["candidates"].as_array().unwrap().len(), 3);
    // `--model default` names the same model.
    let named = perceiver(&[
        "fill-mask",
        "--json",
        "-k",
        "3",
        "--model",
        "default",
        "The cat sat on the m[MASK]t.",
    ]);
    assert_eq!(out.stdout, named.stdout);
}

/// Output into a pipe whose reader has gone (`perceiver … 2>&1 | head`): a quiet exit 0, as
/// for any reader that stops reading, not an abort (the failed write's error, printed to the
/// same closed pipe, panicked, and so did the panic hook's own message). An error is still exit
/// 1 with stderr closed.
#[test]
fn a_closed_output_pipe_ends_the_run_quietly() {
    let into_closed_pipe = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        command(args)
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .status()
            .unwrap()
    };
    let model = model_arg(MODEL);
    for args in [
        &[
            "fill-mask",
            "-m",
            &model,
            "-k",
            "3",
            "The cat sat on the m[MASK]t.",
        ][..],
        &[
            "fill-mask",
            "-m",
            &model,
            "--json",
            "The cat sat on the m[MASK]t.",
        ],
    ] {
        assert_eq!(into_closed_pipe(args).code(), Some(0), "{args:?}");
    }
    let status = into_closed_pipe(&["fill-mask", "-m", &model, "no mask here"]);
    assert_eq!(status.code(), Some(1));
}
