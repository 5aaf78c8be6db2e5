//! Every count a user can give the binary is bounded before it becomes work (docs/DESIGN.md,
//! "Bounds on every count"): hostile configs, flags, texts and training checkpoints end within
//! seconds, with exit status 2 for a malformed flag and 1 for anything else, one line on stderr
//! that names the number and its bound, and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

const MODEL: &str = "tiny_qk_v_explicit";

/// Far more than any of these runs needs (each takes well under a second on an idle machine),
/// far less than the hours an unbounded count costs.
const QUICK: Duration = Duration::from_secs(30);

/// The binary with a clean environment: offline, no Hugging Face cache, no PERCEIVER_ settings.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("perceiver-cli-tests-empty-hf-home"),
        )
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null());
    for (var, _) in std::env::vars() {
        if var.starts_with("PERCEIVER_")
            || ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "RUST_LOG"].contains(&var.as_str())
        {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Runs to its end, which must come within [`QUICK`].
fn timed(mut cmd: Command) -> Output {
    let start = Instant::now();
    let out = cmd.output().expect("run perceiver");
    assert!(
        start.elapsed() < QUICK,
        "took {:?}: {}",
        start.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Ends with exit status `code`, one line on stderr naming every needle, and no panic. For
/// `perceiver serve`, whose log lines come first, the last line.
fn assert_refused(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    for needle in needles {
        assert!(last.contains(needle), "{last:?} should mention {needle:?}");
    }
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A copy of the fixture model with `field` of its config.json set to `value`.
fn model_with(field: &str, value: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(MODEL).join(file), dir.path().join(file)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

fn fill_mask(model: &Path, extra: &[&str]) -> Command {
    let model = model.to_str().unwrap();
    command(&[&["fill-mask", "-m", model, "a[MASK]c"], extra].concat())
}

#[test]
fn num_blocks_no_tensor_pins_is_refused_at_load() {
    // The fixture's blocks share weights: any num_blocks matches them.
    for (value, bound) in [(1_000_000_000_000u64, "32"), (33, "32"), (0, "1")] {
        let dir = model_with("num_blocks", value.into());
        let out = timed(fill_mask(dir.path(), &[]));
        let value = value.to_string();
        assert_refused(&out, 1, &["invalid config: num_blocks", &value, bound, "1 and 8"]);
    }
    // At the bound, a forward pass is still quick on this model.
    let dir = model_with("num_blocks", 32.into());
    let out = timed(fill_mask(dir.path(), &["--json"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_config_count_out_of_range_is_refused_at_load() {
    let huge = 1_000_000_000_000u64;
    let cases: [(&str, u64, &str); 12] = [
        ("num_self_attends_per_block", huge, "1024"),
        ("num_latents", huge, "4096"),
        ("d_latents", huge, "16384"),
        ("d_model", huge, "16384"),
        ("qk_channels", huge, "16384"),
        ("v_channels", 0, "1"),
        ("num_self_attention_heads", huge, "16384"),
        ("num_cross_attention_heads", 0, "1"),
        ("self_attention_widening_factor", huge, "64"),
        ("cross_attention_widening_factor", 0, "1"),
        ("vocab_size", huge, "4096"),
        ("max_position_embeddings", huge, "65536"),
    ];
    for (field, value, bound) in cases {
        let dir = model_with(field, value.into());
        let out = timed(fill_mask(dir.path(), &[]));
        assert_refused(&out, 1, &[field, &value.to_string(), bound]);
    }
    // Negative, fractional, textual and beyond-64-bit counts: the JSON reader refuses them.
    for value in [json!(-1), json!(2.5), json!("8"), json!(1e30), json!(null)] {
        let dir = model_with("num_blocks", value.clone());
        let out = timed(fill_mask(dir.path(), &[]));
        assert_refused(&out, 1, &["invalid config"]);
    }
}

#[test]
fn flags_out_of_range_are_usage_errors() {
    let model = fixture(MODEL).to_string_lossy().into_owned();
    let m = model.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--threads", "0", "fill-mask", "-m", m, "a[MASK]"],
            "--threads",
        ),
        (
            vec!["--threads", "1025", "fill-mask", "-m", m, "a[MASK]"],
            "must be at most 1024",
        ),
        (vec!["--threads", "-3", "fill-mask", "-m", m, "a[MASK]"], "'-3'"),
        (
            vec!["fill-mask", "-m", m, "-k", "263", "a[MASK]"],
            "must be at most 262",
        ),
        (
            vec!["fill-mask", "-m", m, "-k", "99999999999999999999", "a[MASK]"],
            "--top-k",
        ),
        (
            vec!["fill-mask", "-m", m, "--batch-size", "1025", "--input", "-"],
            "must be at most 1024",
        ),
        (
            vec!["fill-mask", "-m", m, "--mask-range", "5..3", "abcdef"],
            "is empty",
        ),
        (
            vec!["train", "--corpus", "c", "--out", "o", "--batch-size", "4097"],
            "must be at most 4096",
        ),
        (
            vec!["train", "--corpus", "c", "--out", "o", "--grad-accum", "4097"],
            "must be at most 4096",
        ),
        (
            vec!["train", "--corpus", "c", "--out", "o", "--steps", "1000000001"],
            "must be at most 1000000000",
        ),
        (
            vec!["train", "--corpus", "c", "--out", "o", "--seq-len", "65537"],
            "must be at most 65536",
        ),
        (
            vec!["train", "--corpus", "c", "--out", "o", "--seq-len", "0"],
            "--seq-len",
        ),
        (
            vec!["train", "--resume", "o", "--steps", "18446744073709551615"],
            "--steps",
        ),
        (
            vec!["eval", "-m", m, "f.txt", "--batch-size", "4097"],
            "must be at most 4096",
        ),
        (
            vec!["eval", "-m", m, "f.txt", "--seq-len", "65537"],
            "must be at most 65536",
        ),
        (
            vec!["serve", "-m", m, "--max-batch-tokens", "1048577"],
            "must be at most 1048576",
        ),
        (
            vec!["serve", "-m", m, "--max-batch-requests", "1025"],
            "must be at most 1024",
        ),
        (
            vec!["serve", "-m", m, "--max-batch-wait-us", "1000001"],
            "must be at most 1000000",
        ),
        (
            vec!["serve", "-m", m, "--max-concurrent-requests", "65537"],
            "must be at most 65536",
        ),
        (
            vec!["serve", "-m", m, "--max-client-batch-size", "1025"],
            "must be at most 1024",
        ),
        (
            vec!["serve", "-m", m, "--max-predictions", "65537"],
            "must be at most 65536",
        ),
        (
            vec!["serve", "-m", m, "--payload-limit", "1073741825"],
            "must be at most 1073741824",
        ),
    ];
    for (args, needle) in cases {
        let out = timed(command(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} should mention {needle:?}"
        );
    }
    // The environment goes through the same parsers.
    let mut cmd = command(&["fill-mask", "-m", m, "a[MASK]"]);
    cmd.env("PERCEIVER_THREADS", "100000");
    let out = timed(cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At the bounds, accepted.
    let out = timed(command(&[
        "--threads",
        "1",
        "fill-mask",
        "-m",
        m,
        "--json",
        "-k",
        "262",
        "a[MASK]",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["masks"][0]["candidates"].as_array().unwrap().len(), 262);
}

#[test]
fn a_count_below_its_least_says_so() {
    // `perceiver classify -k 0`: clap's own ranged parser said "0 is not in 1..=4294967295".
    let out = timed(command(&["classify", "-k", "0", "x.png"]));
    assert_refused(
        &out,
        2,
        &["error: invalid value '0' for '--top-k <TOP_K>': must be at least 1 (see --help)"],
    );
    // Every whole-number flag whose least value is 1, at 0 and at -1 (not a count), with the
    // subcommand and the flag.
    let flags: &[(&str, &str)] = &[
        ("fill-mask", "--threads"),
        ("fill-mask", "--top-k"),
        ("fill-mask", "--batch-size"),
        ("classify", "--top-k"),
        ("classify", "--batch-size"),
        ("classify", "--max-image-pixels"),
        ("autoencode", "--top-k"),
        ("autoencode", "--chunks"),
        ("flow", "--max-image-pixels"),
        ("train", "--steps"),
        ("train", "--seq-len"),
        ("train", "--batch-size"),
        ("train", "--grad-accum"),
        ("train", "--keep-checkpoints"),
        ("eval", "--seq-len"),
        ("eval", "--max-windows"),
        ("eval", "--batch-size"),
        ("serve", "--max-batch-tokens"),
        ("serve", "--max-batch-requests"),
        ("serve", "--max-concurrent-requests"),
        ("serve", "--max-connections"),
        ("serve", "--header-timeout-s"),
        ("serve", "--body-timeout-s"),
        ("serve", "--max-client-batch-size"),
        ("serve", "--max-predictions"),
        ("serve", "--payload-limit"),
        ("serve", "--max-image-pixels"),
    ];
    for (subcommand, flag) in flags {
        let value_name = flag[2..].to_uppercase().replace('-', "_");
        let out = timed(command(&[subcommand, &format!("{flag}=0")]));
        let expected = format!("'0' for '{flag} <{value_name}>': must be at least 1 (see --help)");
        assert_refused(&out, 2, &[&expected]);
        let out = timed(command(&[subcommand, &format!("{flag}=-1")]));
        assert_refused(&out, 2, &[&format!("'-1' for '{flag} "), "not a whole number"]);
    }
    // Where 0 is allowed, only the largest value is named.
    for flag in ["--max-batch-wait-us", "--shutdown-timeout-s"] {
        assert!(timed(command(&["serve", &format!("{flag}=0"), "--help"]))
            .status
            .success());
        let out = timed(command(&["serve", flag, "99999999999999999999"]));
        assert_refused(&out, 2, &[flag, "must be at most"]);
    }
}

#[test]
fn texts_are_measured_before_their_masks_are_expanded() {
    let model = fixture(MODEL);
    // 14 bytes a run, a million ids each: refused before the model loads, by its count.
    let hostile = "[MASK:1048576]".repeat(300);
    let out = timed(command(&["fill-mask", "-m", model.to_str().unwrap(), &hostile]));
    assert_refused(
        &out,
        1,
        &[
            "314572800 tokens long",
            "more than any model takes",
            "at most 65536",
        ],
    );
    // Within what some model takes but not this one (64 positions): refused after loading,
    // naming the line, with the same count.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    let lines = vec!["a[MASK]"; 10]
        .into_iter()
        .chain(std::iter::repeat_n("[MASK:60000]", 100_000))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&input, lines).unwrap();
    let out = timed(command(&[
        "fill-mask",
        "-m",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]));
    assert_refused(&out, 1, &["line 11", "60000 tokens long", "at most 64"]);
}

/// A corpus of a few kilobytes of generated sentences.
fn write_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let text: String = (0..400)
        .map(|i| {
            format!(
                "Sentence number {i} says the {} cat sat.\n",
                ["red", "old", "small"][i % 3]
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn write_config(dir: &Path, change: impl FnOnce(&mut Value)) -> PathBuf {
    let path = dir.join("config.json");
    let mut config = json!({
        "d_model": 16, "num_latents": 8, "d_latents": 32, "num_blocks": 1,
        "num_self_attends_per_block": 1, "num_self_attention_heads": 2, "num_cross_attention_heads": 1,
        "max_position_embeddings": 64, "attention_probs_dropout_prob": 0.0
    });
    change(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn training_from_a_hostile_config_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let train = |config: &Path| {
        let out_dir = dir.path().join("run");
        timed(command(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--steps",
            "1",
        ]))
    };
    let config = write_config(dir.path(), |c| c["num_blocks"] = json!(1_000_000_000_000u64));
    assert_refused(&train(&config), 1, &["num_blocks", "1000000000000", "32"]);
    // Every count in range, but a model of over 40G parameters: no weights pin a model from
    // scratch, so its size is bounded as a whole.
    let config = write_config(dir.path(), |c| {
        c["d_latents"] = json!(16384);
        c["num_latents"] = json!(4096);
        c["num_self_attends_per_block"] = json!(26);
        c["num_self_attention_heads"] = json!(8);
    });
    assert_refused(&train(&config), 1, &["parameters", "2147483648"]);
}

#[test]
fn a_checkpoint_that_claims_more_windows_than_it_drew_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let config = write_config(dir.path(), |_| {});
    let run = dir.path().join("run");
    let out = command(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--eval-fraction",
        "0",
        "--plot",
        "false",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let training = run.join("step-000002").join("training.json");
    let honest = std::fs::read_to_string(&training).unwrap();
    let mut file: Value = serde_json::from_str(&honest).unwrap();
    assert_eq!(file["progress"]["windows"], 4, "2 steps of 2 windows");
    // A replay of 10¹⁵ windows would run for days.
    file["progress"]["windows"] = json!(1_000_000_000_000_000u64);
    std::fs::write(&training, file.to_string()).unwrap();
    let resume = || {
        timed(command(&[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--steps",
            "3",
        ]))
    };
    assert_refused(&resume(), 1, &["progress.windows is 1000000000000000"]);
    // So would a consistent but absurd step count, and options beyond the flags' bounds.
    file["progress"]["step"] = json!(1_000_000_000_000_000u64 / 2);
    std::fs::write(&training, file.to_string()).unwrap();
    assert_refused(&resume(), 1, &["at most 1000000000 steps"]);
    let mut file: Value = serde_json::from_str(&honest).unwrap();
    file["options"]["batch_size"] = json!(1_000_000_000_000u64);
    file["progress"]["windows"] = json!(2_000_000_000_000u64);
    std::fs::write(&training, file.to_string()).unwrap();
    assert_refused(&resume(), 1, &["--batch-size is 1000000000000, at most 4096"]);
    // The honest file still resumes.
    std::fs::write(&training, honest).unwrap();
    let out = resume();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn serve_refuses_to_start_with_a_hostile_config() {
    let dir = model_with("num_blocks", 1_000_000_000_000u64.into());
    let out = timed(command(&[
        "serve",
        "-m",
        dir.path().to_str().unwrap(),
        "--port",
        "0",
    ]));
    assert_refused(&out, 1, &["num_blocks", "1000000000000", "32"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("listening on"));
}

#[test]
fn a_pickle_that_multiplies_itself_is_refused() {
    // 663 bytes asking a copying pickle reader for 2⁶⁴ copies (tests/fixtures/hostile/README.md).
    let bomb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile/pickle_bomb");
    let out = timed(command(&["fill-mask", "-m", bomb.to_str().unwrap(), "a[MASK]"]));
    assert_refused(
        &out,
        1,
        &[
            "cannot read the pickle",
            "pytorch_model/data.pkl",
            "more than 67108864 objects",
        ],
    );
}

#[test]
fn an_index_naming_a_shard_per_tensor_is_read_in_one_pass() {
    // 300,000 distinct shard names: deduplicating them by searching the list took minutes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(MODEL).join("config.json"), dir.path().join("config.json")).unwrap();
    let map: serde_json::Map<String, Value> = (0..300_000)
        .map(|i| (format!("tensor.{i}"), json!(format!("shard-{i}.safetensors"))))
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    let out = timed(fill_mask(dir.path(), &[]));
    assert_refused(&out, 1, &["shard-", "No such file"]);
}
