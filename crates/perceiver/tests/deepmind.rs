//! DeepMind's own checkpoints: the tiny masked language models that
//! `scripts/make_deepmind_fixtures.py` built with DeepMind's Haiku code, pickled as DeepMind
//! pickles its params, with the logits of DeepMind's own `apply` (`tests/fixtures/deepmind/`,
//! see its README). Our logits on those pickles must equal DeepMind's within [`TOLERANCE`], and so
//! must the logits of the transformers directory `export` writes from them. The worst difference
//! is printed (`cargo test -- --nocapture` shows it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use perceiver::checkpoint::deepmind;
use perceiver::checkpoint::export::{write_model_dir, ExportOptions};
use perceiver::{Activation, Error, Loader, PerceiverModel};

/// Largest accepted |Δ logit| against DeepMind (its float64 run; we compute in float32).
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/deepmind")
        .join(name)
}

/// The first model needs no config.json: what shapes cannot tell is the Colab's.
const COLAB: &str = "mlm_colab_constants";
/// The second needs the config.json beside it.
const CONFIG_JSON: &str = "mlm_config_json";

struct Case {
    /// Each row's ids, unpadded.
    texts: Vec<Vec<u32>>,
    /// DeepMind's logits, `[rows][positions × vocab]` over the padded length.
    logits: Vec<Vec<f32>>,
    vocab: usize,
}

fn cases(dir: &Path) -> Vec<Case> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".logits").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 2, "cases in {}", dir.display());
    names
        .into_iter()
        .map(|name| {
            let rows = |suffix: &str| -> Vec<Vec<i64>> {
                tensors[&format!("{name}.{suffix}")].to_vec2::<i64>().unwrap()
            };
            let (ids, mask) = (rows("input_ids"), rows("input_mask"));
            let texts = ids
                .iter()
                .zip(&mask)
                .map(|(ids, mask)| {
                    let len = mask.iter().filter(|&&m| m == 1).count();
                    assert!(mask[..len].iter().all(|&m| m == 1), "right padding");
                    ids[..len].iter().map(|&id| id as u32).collect()
                })
                .collect();
            let logits = &tensors[&format!("{name}.logits")];
            let (_, _, vocab) = logits.dims3().unwrap();
            let logits = logits
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_from(1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            Case { texts, logits, vocab }
        })
        .collect()
}

/// The worst |Δ| between our logits and DeepMind's at every real (unpadded) position of every
/// case. DeepMind's decoder masks padded queries, which transformers and this library do not;
/// those positions are left out, real ones are unaffected by the query mask.
fn worst_difference(model: &PerceiverModel, dir: &Path) -> f32 {
    let mut worst = 0f32;
    for case in cases(dir) {
        let texts: Vec<&[u32]> = case.texts.iter().map(Vec::as_slice).collect();
        let positions: Vec<Vec<usize>> = case.texts.iter().map(|t| (0..t.len()).collect()).collect();
        let positions: Vec<&[usize]> = positions.iter().map(Vec::as_slice).collect();
        let ours = model.logits_at(&texts, &positions).unwrap();
        let mut offset = 0;
        for (row, text) in case.texts.iter().enumerate() {
            let n = text.len() * case.vocab;
            let got = &ours[offset..offset + n];
            let want = &case.logits[row][..n];
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            offset += n;
        }
    }
    worst
}

fn pickles(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pickle"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_pickle_gives_deepminds_logits() {
    let mut worst_all = 0f32;
    for (name, config) in [(COLAB, None), (CONFIG_JSON, Some("config.json"))] {
        let dir = fixture(name);
        let files = pickles(&dir);
        assert!(!files.is_empty(), "pickles in {}", dir.display());
        for file in files {
            let mut loader = Loader::new(file.to_str().unwrap());
            if let Some(config) = config {
                loader = loader.model_config(dir.join(config));
            }
            let model = loader.load().unwrap();
            let worst = worst_difference(&model, &dir);
            println!(
                "{name:<22} {:<26} max |Δ logit| vs DeepMind = {worst:.2e}",
                file.file_name().unwrap().to_string_lossy()
            );
            assert!(worst <= TOLERANCE, "{}: {worst:e}", file.display());
            worst_all = worst_all.max(worst);
        }
    }
    println!("every DeepMind pickle: max |Δ logit| = {worst_all:.2e}");
}

/// Protocols 2 and 5 and 2021's FlatMapping layout hold the same params.
#[test]
fn every_pickling_reads_to_the_same_tensors() {
    let files = pickles(&fixture(COLAB));
    assert_eq!(files.len(), 3);
    let tensors: Vec<Vec<(String, Vec<f32>)>> = files
        .iter()
        .map(|f| {
            let checkpoint = Loader::new(f.to_str().unwrap()).checkpoint().unwrap();
            checkpoint
                .tensors()
                .unwrap()
                .into_iter()
                .map(|(n, p)| (n, p.data().to_vec()))
                .collect()
        })
        .collect();
    assert!(tensors.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn the_config_is_the_colabs_where_shapes_cannot_tell() {
    let colab = Loader::new(fixture(COLAB).join("params.p2.pickle").to_str().unwrap())
        .checkpoint()
        .unwrap();
    let c = colab.config();
    assert_eq!((c.d_model, c.d_latents, c.num_latents), (48, 32, 24));
    assert_eq!((c.qk_channels, c.v_channels), (Some(16), Some(32)));
    assert_eq!(c.num_self_attends_per_block, 3);
    assert_eq!(c.max_position_embeddings, 80);
    assert_eq!(
        (
            c.num_self_attention_heads,
            c.num_cross_attention_heads,
            c.num_blocks
        ),
        (8, 8, 1)
    );
    assert_eq!(c.hidden_act, Activation::GeluTanh);

    // Without its config.json the second model's widths are still found (unset qk/v, widening
    // 2 and 3), but heads, blocks and the query residual are the Colab's: other numbers.
    let path = fixture(CONFIG_JSON).join("params.p3.pickle");
    let guessed = Loader::new(path.to_str().unwrap()).checkpoint().unwrap();
    let g = guessed.config();
    assert_eq!((g.qk_channels, g.v_channels), (None, None));
    assert_eq!(
        (
            g.self_attention_widening_factor,
            g.cross_attention_widening_factor
        ),
        (2, 3)
    );
    assert_eq!(g.num_self_attention_heads, 8);
    let model = Loader::new(path.to_str().unwrap()).load().unwrap();
    let worst = worst_difference(&model, &fixture(CONFIG_JSON));
    assert!(worst > 0.1, "without its config.json: {worst:e}");
}

#[test]
fn a_config_json_is_refused_for_a_model_directory() {
    let e = Loader::new("default")
        .model_config(fixture(CONFIG_JSON).join("config.json"))
        .checkpoint()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}

/// `perceiver convert`'s library half: the directory written from a DeepMind pickle loads
/// through the ordinary loader and gives the same logits, and its config says which GELU.
#[test]
fn the_converted_directory_gives_deepminds_logits() {
    for (name, file, config) in [
        (COLAB, "params.p5.pickle", None),
        (CONFIG_JSON, "params.p3.pickle", Some("config.json")),
    ] {
        let dir = fixture(name);
        let mut loader = Loader::new(dir.join(file).to_str().unwrap());
        if let Some(config) = config {
            loader = loader.model_config(dir.join(config));
        }
        let checkpoint = loader.checkpoint().unwrap();
        let out = tempfile::tempdir().unwrap();
        let written = write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
        assert_eq!(json["hidden_act"], "gelu_new");
        assert_eq!(json["architectures"][0], "PerceiverForMaskedLM");

        let converted = Loader::new(out.path().to_str().unwrap()).load().unwrap();
        let worst = worst_difference(&converted, &dir);
        println!("{name:<22} converted directory: max |Δ logit| vs DeepMind = {worst:.2e}");
        assert!(worst <= TOLERANCE, "{name}: {worst:e}");
        // The same tensors, bit for bit.
        let again = Loader::new(out.path().to_str().unwrap()).checkpoint().unwrap();
        for ((a, p), (b, q)) in checkpoint
            .tensors()
            .unwrap()
            .iter()
            .zip(again.tensors().unwrap().iter())
        {
            assert_eq!(a, b);
            assert_eq!(p.shape(), q.shape());
            assert!(p.data() == q.data(), "{a}");
        }

        // The hub's choice, exact GELU: DeepMind's numbers no longer (by ~1e-3 at most here).
        let exact = tempfile::tempdir().unwrap();
        let options = ExportOptions {
            activation: Some(Activation::GeluErf),
            overwrite: false,
        };
        write_model_dir(&checkpoint, exact.path(), &options).unwrap();
        let model = Loader::new(exact.path().to_str().unwrap()).load().unwrap();
        assert_eq!(model.config().hidden_act, Activation::GeluErf);
        let worst = worst_difference(&model, &dir);
        println!("{name:<22} converted with \"gelu\": max |Δ logit| vs DeepMind = {worst:.2e}");
        assert!(worst > TOLERANCE && worst < 0.1, "{name}: {worst:e}");

        // A directory with files in it is refused unless overwriting is asked for.
        let e = write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        let overwrite = ExportOptions {
            overwrite: true,
            ..ExportOptions::default()
        };
        write_model_dir(&checkpoint, out.path(), &overwrite).unwrap();
    }
}

/// A pickle that is not DeepMind's masked LM is refused with the modules it has.
#[test]
fn a_pickle_of_something_else_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.pickle");
    // pickle.dumps({"linear": {"w": numpy.zeros((1,), "<f4")}}, protocol=2), written by hand:
    // a dict of a dict is all the reader needs; no array is needed to reach the layout check.
    let mut bytes = vec![0x80, 2, b'}', b'(', b'X'];
    bytes.extend(6u32.to_le_bytes());
    bytes.extend(b"linear");
    bytes.extend([b'}', b'u', b'.']);
    std::fs::write(&path, &bytes).unwrap();
    let e = deepmind::open(&path, None).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("linear") && message.contains("masked language model"),
        "{message}"
    );
}
