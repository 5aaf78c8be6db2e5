//! DeepMind's own checkpoints: the tiny masked language models that
//! `scripts/make_deepmind_fixtures.py` built with DeepMind's Haiku code, pickled as DeepMind
//! pickles its params, with the logits of DeepMind's own `apply` (`tests/fixtures/deepmind/`,
//! see its README). Our logits on those pickles must equal DeepMind's within [`TOLERANCE`], and so
//! must the logits of the transformers directory `export` writes from them. The worst difference
//! is printed (`cargo test -- --nocapture` shows it).
//!
//! The same for the optical-flow model (`tests/fixtures/deepmind/flow/`): a tiny model built as
//! DeepMind's optical_flow Colab builds it, its bare params pickled as
//! `optical_flow_checkpoint.pystate`, and DeepMind's output for one tile, once with what no shape
//! tells taken from the Colab (a 368×496 tile) and once from a config.json (a 48×56 tile).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use perceiver::checkpoint::deepmind;
use perceiver::checkpoint::export::{write_model_dir, ExportOptions};
use perceiver::checkpoint::haiku::{read_haiku_file, NdArray};
use perceiver::decoder::MultimodalQueries;
use perceiver::image::RgbImage;
use perceiver::preprocess::multimodal::MultimodalInput;
use perceiver::preprocess::FramePair;
use perceiver::tasks::flow::FLOW_SCALE_FACTOR;
use perceiver::{Activation, Architecture, Error, Loader, ModelInput, PerceiverModel, Pixels};

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
            ..ExportOptions::default()
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

// ---------------------------------------------------------------------------------------------
// Optical flow.

const FLOW: &str = "flow";
/// Largest accepted |Δ| against DeepMind's float64 run, relative to its largest |value|, on the
/// 48×56 tile (DeepMind's own float32 code is 6e-6 off there).
const FLOW_RELATIVE_TOLERANCE: f32 = 1e-4;
/// The same on the Colab's 368×496 tile, where float32 Fourier features are coarser: their
/// phases reach ~780 rad, each off by up to ~3e-5 in float32 (we compute them as transformers
/// does, in float32), and DeepMind's own float32 code (as the Colab runs it) is 1.4e-4 off its
/// float64 run there (tests/fixtures/deepmind/README.md).
const FLOW_RELATIVE_TOLERANCE_COLAB_TILE: f32 = 3e-4;

fn flow_tolerance(run: &str) -> f32 {
    match run {
        "colab" => FLOW_RELATIVE_TOLERANCE_COLAB_TILE,
        _ => FLOW_RELATIVE_TOLERANCE,
    }
}

/// One recorded run: the tile, the pixels kept and DeepMind's numbers there.
struct FlowRun {
    tile: FramePair,
    /// Row-major `y · width + x` of each kept pixel.
    pixels: Vec<usize>,
    /// DeepMind's model output (transformers' logits), `[pixels, 2]`.
    output: Vec<f32>,
    /// The Colab's flow in pixels (the output × 20), `[pixels, 2]`.
    flow: Vec<f32>,
}

fn flow_pystate() -> PathBuf {
    fixture(FLOW).join("params.pystate")
}

/// Two uint8 frames `[2, h, w, 3]`, each pixel repeated `scale` times down and across.
fn frame_pair(frames: &Tensor, scale: usize) -> FramePair {
    let (_, h, w, _) = frames.dims4().unwrap();
    let bytes = frames.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let image = |t: usize| {
        let (height, width) = (h * scale, w * scale);
        let mut pixels = Vec::with_capacity(height * width * 3);
        for y in 0..height {
            for x in 0..width {
                let at = ((t * h + y / scale) * w + x / scale) * 3;
                pixels.extend_from_slice(&bytes[at..at + 3]);
            }
        }
        RgbImage::new(width, height, pixels).unwrap()
    };
    FramePair::from_images(&image(0), &image(1)).unwrap()
}

fn flow_run(run: &str) -> FlowRun {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(FLOW).join("cases.safetensors"), &Device::Cpu).unwrap();
    let floats = |name: &str| {
        tensors[&format!("{run}.{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (tile, pixels) = match tensors.get(&format!("{run}.frames_small")) {
        // The Colab's 368×496 tile, stored at an eighth of its size.
        Some(small) => {
            let pixels = tensors[&format!("{run}.pixels")].to_vec1::<i64>().unwrap();
            (
                frame_pair(small, 8),
                pixels.into_iter().map(|p| p as usize).collect(),
            )
        }
        None => {
            let tile = frame_pair(&tensors[&format!("{run}.frames")], 1);
            let all: Vec<usize> = (0..tile.height() * tile.width()).collect();
            (tile, all)
        }
    };
    let (output, flow) = (floats("output"), floats("flow"));
    assert_eq!(output.len(), pixels.len() * 2);
    FlowRun {
        tile,
        pixels,
        output,
        flow,
    }
}

/// Our output and flow (output × 20) at the run's pixels against DeepMind's: the worst |Δ| of
/// each relative to DeepMind's largest |value|.
fn flow_differences(model: &PerceiverModel, run: &FlowRun) -> (f32, f32) {
    let ours = model.optical_flow(&[&run.tile]).unwrap();
    assert_eq!(ours.len(), run.tile.height() * run.tile.width() * 2);
    let relative = |theirs: &[f32], scale: f32| {
        let largest = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = run
            .pixels
            .iter()
            .enumerate()
            .flat_map(|(k, &p)| (0..2).map(move |c| (k * 2 + c, p * 2 + c)))
            .map(|(k, p)| (ours[p] * scale - theirs[k]).abs())
            .fold(0f32, f32::max);
        worst / largest
    };
    (relative(&run.output, 1.0), relative(&run.flow, FLOW_SCALE_FACTOR))
}

fn flow_loader(run: &str) -> Loader {
    let loader = Loader::new(flow_pystate().to_str().unwrap());
    match run {
        "colab" => loader,
        _ => loader.model_config(fixture(FLOW).join("config.json")),
    }
}

const FLOW_RUNS: [&str; 2] = ["colab", "config_json"];

/// Our optical flow on DeepMind's pickle: `optical_flow` returns DeepMind's model output (the
/// decoder's, already divided by 100, as transformers' logits); × 20 it is the Colab's flow.
#[test]
fn the_flow_pystate_gives_deepminds_output() {
    for run in FLOW_RUNS {
        let model = flow_loader(run).load().unwrap();
        let case = flow_run(run);
        let (output, flow) = flow_differences(&model, &case);
        println!(
            "flow/{run:<12} {}x{} tile: max |Δ output| / largest = {output:.2e}, max |Δ flow| / largest = {flow:.2e}",
            case.tile.height(),
            case.tile.width()
        );
        assert!(output <= flow_tolerance(run), "{run}: {output:e}");
        assert!(flow <= flow_tolerance(run), "{run}: {flow:e}");
    }
}

/// Without a config.json the flow model is the Colab's (16 / 1 heads, one block, TRAIN_SIZE
/// 368×496); with one, that config decides.
#[test]
fn the_flow_config_is_the_colabs_where_shapes_cannot_tell() {
    let colab = flow_loader("colab").checkpoint().unwrap();
    let c = colab.config();
    assert_eq!(Architecture::of(c).unwrap(), Architecture::OpticalFlow);
    assert_eq!((c.num_latents, c.d_latents, c.d_model), (12, 16, 322));
    assert_eq!(c.num_self_attends_per_block, 2);
    assert_eq!(
        (
            c.num_self_attention_heads,
            c.num_cross_attention_heads,
            c.num_blocks,
            c.use_query_residual
        ),
        (16, 1, 1, true)
    );
    assert_eq!(
        (
            c.self_attention_widening_factor,
            c.cross_attention_widening_factor
        ),
        (2, 3)
    );
    assert_eq!(c.train_size().unwrap(), deepmind::flow_colab::TRAIN_SIZE);
    assert_eq!(c.hidden_act, Activation::GeluTanh);

    let named = flow_loader("config_json").checkpoint().unwrap();
    let n = named.config();
    assert_eq!(n.train_size().unwrap(), [48, 56]);
    assert_eq!(
        (
            n.num_self_attention_heads,
            n.num_cross_attention_heads,
            n.num_blocks,
            n.use_query_residual
        ),
        (4, 2, 2, false)
    );
    // The same parameters either way.
    let (a, b) = (colab.tensors().unwrap(), named.tensors().unwrap());
    assert_eq!(a.len(), b.len());
    for ((x, p), (y, q)) in a.iter().zip(b.iter()) {
        assert_eq!((x, p.shape()), (y, q.shape()));
        assert!(p.data() == q.data(), "{x}");
    }

    // The Colab's settings on the config_json tile's model: other numbers (its heads, blocks and
    // residual differ; the tile is run at the config's size, so only those show).
    let mut wrong = n.clone();
    wrong.num_self_attention_heads = c.num_self_attention_heads;
    wrong.num_cross_attention_heads = c.num_cross_attention_heads;
    wrong.num_blocks = c.num_blocks;
    wrong.use_query_residual = c.use_query_residual;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string(&wrong).unwrap()).unwrap();
    let model = Loader::new(flow_pystate().to_str().unwrap())
        .model_config(&path)
        .load()
        .unwrap();
    let (output, _) = flow_differences(&model, &flow_run("config_json"));
    assert!(output > 0.01, "with the Colab's heads and blocks: {output:e}");
}

/// `perceiver convert` on the flow pickle: a PerceiverForOpticalFlow directory that loads and
/// gives DeepMind's numbers, its tensors bit for bit the pickle's.
#[test]
fn the_converted_flow_directory_gives_deepminds_output() {
    for run in FLOW_RUNS {
        let checkpoint = flow_loader(run).checkpoint().unwrap();
        let out = tempfile::tempdir().unwrap();
        let written = write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
        assert_eq!(json["architectures"][0], "PerceiverForOpticalFlow");
        assert_eq!(json["hidden_act"], "gelu_new");
        let size = checkpoint.config().train_size().unwrap();
        assert_eq!(json["train_size"], serde_json::json!(size));

        let converted = Loader::new(out.path().to_str().unwrap()).load().unwrap();
        let (output, flow) = flow_differences(&converted, &flow_run(run));
        println!(
            "flow/{run:<12} converted directory: max |Δ output| / largest = {output:.2e}, max |Δ flow| / largest = {flow:.2e}"
        );
        assert!(
            output <= flow_tolerance(run) && flow <= flow_tolerance(run),
            "{run}"
        );
        let again = Loader::new(out.path().to_str().unwrap()).checkpoint().unwrap();
        assert_eq!(again.config(), converted.config());
        let (a, b) = (checkpoint.tensors().unwrap(), again.tensors().unwrap());
        assert_eq!(a.len(), b.len());
        for ((x, p), (y, q)) in a.iter().zip(b.iter()) {
            assert_eq!(x, y);
            assert_eq!(p.shape(), q.shape());
            assert!(p.data() == q.data(), "{x}");
        }
    }
}

/// A flow pickle with a parameter missing, or one the model has no place for, is refused with
/// DeepMind's name for it.
#[test]
fn flow_params_missing_or_extra_are_refused_by_name() {
    let path = flow_pystate();
    let read = read_haiku_file(&path).unwrap();
    assert!(read.state.is_none(), "bare params, as the Colab reads them");

    let mut missing = read.clone();
    missing
        .params
        .get_mut("perceiver_encoder/~/self_attention_1/attention/linear_3")
        .unwrap()
        .remove("w");
    let e = deepmind::from_haiku(missing, None, &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("perceiver_encoder/~/self_attention_1/attention/linear_3/w is missing")
            && e.contains("perceiver.encoder.self_attends.1.attention.output.dense.weight"),
        "{e}"
    );

    let mut extra = read.clone();
    extra
        .params
        .entry("flow_decoder/~/basic_decoder/~/trainable_position_encoding".into())
        .or_default()
        .insert(
            "pos_embs".into(),
            NdArray {
                shape: vec![4, 322],
                data: vec![0.0; 4 * 322],
            },
        );
    let e = deepmind::from_haiku(extra, None, &path).unwrap_err().to_string();
    assert!(
        e.contains("unexpected flow_decoder/~/basic_decoder/~/trainable_position_encoding/pos_embs"),
        "{e}"
    );

    // A `{"params", "state"}` file with state in it is refused: the flow model keeps none.
    let mut state = read;
    state.state = Some(
        [(
            "counter".to_string(),
            [(
                "count".to_string(),
                NdArray {
                    shape: vec![],
                    data: vec![0.0],
                },
            )]
            .into(),
        )]
        .into(),
    );
    let e = deepmind::from_haiku(state, None, &path).unwrap_err().to_string();
    assert!(e.contains("unexpected state counter/count"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// ImageNet classifiers.

/// Each tiny ImageNet model and its runs: `colab` takes what no shape tells from the Colab,
/// `config_json` from the config.json beside the pystate.
const IMAGENET: [(&str, &[&str]); 3] = [
    ("imagenet_learned", &["colab"]),
    ("imagenet_fourier", &["colab", "config_json"]),
    ("imagenet_conv", &["colab"]),
];

/// One batch of images (of one size) and DeepMind's logits for it, `[images × labels]`.
struct ImageCase {
    images: Vec<Pixels>,
    logits: Vec<f32>,
}

fn imagenet_cases(name: &str, run: &str) -> Vec<ImageCase> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(name).join("cases.safetensors"), &Device::Cpu).unwrap();
    let mut cases = Vec::new();
    for c in 0.. {
        let Some(pixels) = tensors.get(&format!("case{c}.pixels")) else {
            break;
        };
        // [B, H, W, 3] (DeepMind's layout) → channels first, as transformers' pixel_values.
        let (batch, h, w, _) = pixels.dims4().unwrap();
        let values = pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let images = (0..batch)
            .map(|b| {
                let mut planes = vec![0f32; 3 * h * w];
                for (i, rgb) in values[b * h * w * 3..][..h * w * 3].chunks_exact(3).enumerate() {
                    for (channel, &v) in rgb.iter().enumerate() {
                        planes[channel * h * w + i] = v;
                    }
                }
                Pixels::new(h, w, planes).unwrap()
            })
            .collect();
        let logits = tensors[&format!("{run}.case{c}.logits")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        cases.push(ImageCase { images, logits });
    }
    assert!(cases.len() >= 2, "{name}: cases");
    cases
}

fn imagenet_pystate(name: &str) -> PathBuf {
    fixture(name).join("params.pystate")
}

fn imagenet_loader(name: &str, run: &str) -> Loader {
    let loader = Loader::new(imagenet_pystate(name).to_str().unwrap());
    match run {
        "colab" => loader,
        _ => loader.model_config(fixture(name).join("config.json")),
    }
}

/// The worst |Δ logit| between `model` and DeepMind over every case of `run`.
fn imagenet_worst(model: &PerceiverModel, name: &str, run: &str) -> f32 {
    let mut worst = 0f32;
    for case in imagenet_cases(name, run) {
        let images: Vec<&Pixels> = case.images.iter().collect();
        let ours = model.classify(ModelInput::Images(&images)).unwrap();
        assert_eq!(ours.len(), case.logits.len(), "{name}/{run}");
        let diff = ours
            .iter()
            .zip(&case.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
    }
    worst
}

/// Our logits on DeepMind's three ImageNet pystates (params + the conv stem's BatchNorm state)
/// equal DeepMind's `apply` within [`TOLERANCE`] (DeepMind's own float32 code is up to 3e-5 off
/// its float64 run on the Fourier model: tests/fixtures/deepmind/README.md).
#[test]
fn every_imagenet_pystate_gives_deepminds_logits() {
    for (name, runs) in IMAGENET {
        for &run in runs {
            let model = imagenet_loader(name, run).load().unwrap();
            let worst = imagenet_worst(&model, name, run);
            println!("{name}/{run:<12} max |Δ logit| vs DeepMind = {worst:.2e}");
            assert!(worst <= TOLERANCE, "{name}/{run}: {worst:e}");
        }
    }
}

/// Without a config.json the config is the Colab's: 8 self-attention heads, 1 cross-attention
/// head, 8 blocks, DeepMind's GELU; the learned model's image size from its position table and
/// its decoder without the query residual; the conv stem padded as Haiku's `'SAME'`.
#[test]
fn the_imagenet_config_is_the_colabs_where_shapes_cannot_tell() {
    use perceiver::config::StemPadding;
    for (name, architecture) in [
        ("imagenet_learned", Architecture::ImageClassificationLearned),
        ("imagenet_fourier", Architecture::ImageClassificationFourier),
        ("imagenet_conv", Architecture::ImageClassificationConvProcessing),
    ] {
        let checkpoint = imagenet_loader(name, "colab").checkpoint().unwrap();
        let c = checkpoint.config();
        assert_eq!(Architecture::of(c).unwrap(), architecture);
        assert_eq!((c.num_latents, c.d_latents), (8, 16));
        assert_eq!((c.qk_channels, c.v_channels), (Some(16), Some(16)));
        assert_eq!(
            (
                c.num_self_attention_heads,
                c.num_cross_attention_heads,
                c.num_blocks,
                c.use_query_residual
            ),
            (8, 1, 8, true)
        );
        assert_eq!(
            (
                c.self_attention_widening_factor,
                c.cross_attention_widening_factor
            ),
            (2, 1)
        );
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.num_labels().unwrap(), Some(7));
        assert_eq!(
            c.classifier_query_residual(),
            architecture != Architecture::ImageClassificationLearned
        );
        let padding = c.stem_padding().unwrap();
        assert_eq!(
            padding == StemPadding::Same,
            architecture == Architecture::ImageClassificationConvProcessing
        );
        assert_eq!(c.input_channels(), c.d_model);
    }
    let learned = imagenet_loader("imagenet_learned", "colab").checkpoint().unwrap();
    assert_eq!(learned.config().image_size(), 12);

    // The Fourier model's config.json decides instead (its heads, blocks and residuals).
    let named = imagenet_loader("imagenet_fourier", "config_json")
        .checkpoint()
        .unwrap();
    let n = named.config();
    assert_eq!(
        (
            n.num_self_attention_heads,
            n.num_cross_attention_heads,
            n.num_blocks,
            n.use_query_residual,
            n.classifier_query_residual()
        ),
        (4, 2, 2, false, false)
    );
}

/// Where transformers' classes differ from DeepMind's code, the numbers differ too: the
/// switches the DeepMind loader sets are what make them equal.
#[test]
fn transformers_stem_padding_and_decoder_residual_give_other_numbers() {
    for (name, key, value) in [
        ("imagenet_conv", "stem_padding", serde_json::json!("transformers")),
        (
            "imagenet_learned",
            "decoder_use_query_residual",
            serde_json::json!(true),
        ),
    ] {
        let mut config = imagenet_loader(name, "colab")
            .checkpoint()
            .unwrap()
            .config()
            .clone();
        config.extra.insert(key.into(), value);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        let model = Loader::new(imagenet_pystate(name).to_str().unwrap())
            .model_config(&path)
            .load()
            .unwrap();
        let worst = imagenet_worst(&model, name, "colab");
        println!("{name:<18} with transformers' {key}: max |Δ logit| vs DeepMind = {worst:.2e}");
        assert!(worst > 1e-2, "{name}: {worst:e}");
    }
}

/// `perceiver convert`'s library half on the ImageNet pystates: the directory (config.json,
/// model.safetensors with the BatchNorm statistics and counter, preprocessor_config.json) loads
/// through the ordinary loader with DeepMind's logits and the pystate's tensors bit for bit.
#[test]
fn the_converted_imagenet_directories_give_deepminds_logits() {
    use perceiver::image::ImageProcessorConfig;
    for (name, runs) in IMAGENET {
        for &run in runs {
            let checkpoint = imagenet_loader(name, run).checkpoint().unwrap();
            let out = tempfile::tempdir().unwrap();
            let written = write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap();
            assert_eq!(written.len(), 3, "config, weights, preprocessor config");
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
            assert_eq!(json["hidden_act"], "gelu_new");
            assert_eq!(
                json["architectures"][0],
                Architecture::of(checkpoint.config()).unwrap().name()
            );
            let mut processor = ImageProcessorConfig::from_file(&written[2]).unwrap();
            processor.extra.clear();
            // The Colab's settings, sized for a model that takes one size of image only.
            let expected = match name {
                "imagenet_learned" => ImageProcessorConfig::for_size(perceiver::image::Size::square(
                    checkpoint.config().image_size(),
                )),
                _ => ImageProcessorConfig::default(),
            };
            assert_eq!(processor, expected, "{name}");
            Loader::new(out.path().to_str().unwrap()).classifier().unwrap();

            let converted = Loader::new(out.path().to_str().unwrap()).load().unwrap();
            let worst = imagenet_worst(&converted, name, run);
            println!("{name}/{run:<12} converted directory: max |Δ logit| vs DeepMind = {worst:.2e}");
            assert!(worst <= TOLERANCE, "{name}/{run}: {worst:e}");
            let again = Loader::new(out.path().to_str().unwrap()).checkpoint().unwrap();
            assert_eq!(again.config(), checkpoint.config());
            let (a, b) = (checkpoint.tensors().unwrap(), again.tensors().unwrap());
            assert_eq!(a.len(), b.len());
            for ((x, p), (y, q)) in a.iter().zip(b.iter()) {
                assert_eq!((x, p.shape()), (y, q.shape()));
                assert!(p.data() == q.data(), "{x}");
            }
        }
    }
    // The BatchNorm counter is written, as PyTorch's int64.
    let checkpoint = imagenet_loader("imagenet_conv", "colab").checkpoint().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap();
    let tensors = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let counter = &tensors["perceiver.input_preprocessor.convnet.batchnorm.num_batches_tracked"];
    assert_eq!(counter.dtype(), DType::I64);
    assert_eq!(counter.to_scalar::<i64>().unwrap(), 1234);
}

/// ImageNet pystates that match no model are refused with DeepMind's names: the conv model
/// without its BatchNorm state, a learned position table of no square image, a parameter
/// missing, and a config.json of another model.
#[test]
fn bad_imagenet_pystates_are_refused_by_name() {
    let conv = imagenet_pystate("imagenet_conv");
    let read = read_haiku_file(&conv).unwrap();
    assert!(read.state.as_ref().is_some_and(|s| !s.is_empty()));
    let mut stateless = read.clone();
    stateless.state = None;
    let e = deepmind::from_haiku(stateless, None, &conv).unwrap_err();
    assert!(matches!(e, Error::DeepMindCheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("mean_ema"), "{e}");

    let mut missing = read;
    missing
        .state
        .as_mut()
        .unwrap()
        .get_mut("image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/var_ema")
        .unwrap()
        .remove("average");
    let e = deepmind::from_haiku(missing, None, &conv)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("var_ema/average is missing") && e.contains("running_var"),
        "{e}"
    );

    let learned = imagenet_pystate("imagenet_learned");
    let mut read = read_haiku_file(&learned).unwrap();
    let table = read
        .params
        .get_mut("image_preprocessor/~_build_network_inputs/trainable_position_encoding")
        .unwrap()
        .get_mut("pos_embs")
        .unwrap();
    *table = NdArray {
        shape: vec![140, 256],
        data: vec![0.0; 140 * 256],
    };
    let e = deepmind::from_haiku(read, None, &learned)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not one per pixel of a square image"), "{e}");

    // The Fourier file with the learned model's config: refused, naming both.
    let config = imagenet_loader("imagenet_learned", "colab")
        .checkpoint()
        .unwrap()
        .config()
        .clone();
    let fourier = imagenet_pystate("imagenet_fourier");
    let e = deepmind::from_haiku(read_haiku_file(&fourier).unwrap(), Some(config), &fourier)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Fourier positions") && e.contains("PerceiverForImageClassificationLearned"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Video autoencoding.

const VIDEO: &str = "video";

/// The fixture's video (frames in [0, 1], channels first) and mono audio.
fn video_input() -> MultimodalInput {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(VIDEO).join("cases.safetensors"), &Device::Cpu).unwrap();
    let frames = &tensors["frames"];
    let (t, h, w, _) = frames.dims4().unwrap();
    let values = frames.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let frames = (0..t)
        .map(|f| {
            let mut planes = vec![0f32; 3 * h * w];
            for (i, rgb) in values[f * h * w * 3..][..h * w * 3].chunks_exact(3).enumerate() {
                for (c, &v) in rgb.iter().enumerate() {
                    planes[c * h * w + i] = v;
                }
            }
            Pixels::new(h, w, planes).unwrap()
        })
        .collect();
    let audio = tensors["audio"].to_vec1::<f32>().unwrap();
    MultimodalInput::new(frames, audio).unwrap()
}

/// DeepMind's outputs for one subsampling: the queries and the audio, image and label outputs.
fn video_case(chunk: &str) -> (MultimodalQueries, [Vec<f32>; 3]) {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture(VIDEO).join("cases.safetensors"), &Device::Cpu).unwrap();
    let indices = |name: &str| -> Vec<usize> {
        tensors[&format!("{chunk}.{name}")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as usize)
            .collect()
    };
    let floats = |name: &str| {
        tensors[&format!("{chunk}.{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let queries = MultimodalQueries {
        audio: indices("audio_points"),
        image: indices("image_points"),
        label: true,
    };
    (queries, [floats("audio"), floats("image"), floats("label")])
}

const VIDEO_CHUNKS: [&str; 2] = ["all", "chunk1of4"];

/// The worst |Δ| of the audio, image and label outputs against DeepMind's, over both
/// subsamplings.
fn video_worst(model: &PerceiverModel) -> [f32; 3] {
    let latents = model.encode_multimodal(&video_input()).unwrap();
    let mut worst = [0f32; 3];
    for chunk in VIDEO_CHUNKS {
        let (queries, theirs) = video_case(chunk);
        let ours = model.decode_multimodal(&latents, &queries).unwrap();
        let label = ours.label.unwrap();
        for (k, ours) in [&ours.audio, &ours.image, &label].into_iter().enumerate() {
            assert_eq!(ours.len(), theirs[k].len(), "{chunk} output {k}");
            let diff = ours
                .iter()
                .zip(&theirs[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst[k] = worst[k].max(diff);
        }
    }
    worst
}

fn video_loader() -> Loader {
    Loader::new(fixture(VIDEO).join("params.pystate").to_str().unwrap())
        .model_config(fixture(VIDEO).join("config.json"))
}

/// Our reconstruction on DeepMind's video pystate (bare params, as the Colab reads it) equals
/// DeepMind's `apply` for every query and for the Colab's chunk 1 of 4: audio samples, pixels
/// and label logits each within [`TOLERANCE`]; and so does the converted directory.
#[test]
fn the_video_pystate_gives_deepminds_reconstruction() {
    let model = video_loader().load().unwrap();
    let [audio, image, label] = video_worst(&model);
    println!("video max |Δ| vs DeepMind: audio {audio:.2e}, image {image:.2e}, label {label:.2e}");
    for worst in [audio, image, label] {
        assert!(worst <= TOLERANCE, "{worst:e}");
    }

    let checkpoint = video_loader().checkpoint().unwrap();
    let out = tempfile::tempdir().unwrap();
    let written = write_model_dir(&checkpoint, out.path(), &ExportOptions::default()).unwrap();
    assert_eq!(written.len(), 2);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "PerceiverForMultimodalAutoencoding");
    assert_eq!(json["hidden_act"], "gelu_new");
    let converted = Loader::new(out.path().to_str().unwrap()).load().unwrap();
    let [audio, image, label] = video_worst(&converted);
    println!("video converted directory max |Δ| vs DeepMind: audio {audio:.2e}, image {image:.2e}, label {label:.2e}");
    for worst in [audio, image, label] {
        assert!(worst <= TOLERANCE, "{worst:e}");
    }
    let again = Loader::new(out.path().to_str().unwrap()).checkpoint().unwrap();
    let (a, b) = (checkpoint.tensors().unwrap(), again.tensors().unwrap());
    assert_eq!(a.len(), b.len());
    for ((x, p), (y, q)) in a.iter().zip(b.iter()) {
        assert_eq!((x, p.shape()), (y, q.shape()));
        assert!(p.data() == q.data(), "{x}");
    }
}

/// Without a config.json the video model's sizes and settings are the Colab's (16 frames of
/// 224×224, 1920 samples a frame, Fourier features over 16×56×56, 8 / 1 heads, one block); the
/// samples per patch, labels, output channels and label query width come from the shapes.
#[test]
fn the_video_config_is_the_colabs_where_shapes_cannot_tell() {
    let checkpoint = Loader::new(fixture(VIDEO).join("params.pystate").to_str().unwrap())
        .checkpoint()
        .unwrap();
    let c = checkpoint.config();
    assert_eq!(Architecture::of(c).unwrap(), Architecture::MultimodalAutoencoding);
    let spec = c.multimodal().unwrap();
    assert_eq!(
        (
            spec.num_frames,
            spec.image_size,
            spec.audio_samples_per_frame,
            spec.output_dims
        ),
        (16, 56, 1920, [16, 224, 224])
    );
    assert_eq!(
        (
            spec.samples_per_patch,
            spec.num_labels,
            spec.output_num_channels,
            spec.label_query_channels
        ),
        (8, 5, 12, 20)
    );
    assert_eq!(
        (
            c.num_self_attention_heads,
            c.num_cross_attention_heads,
            c.num_blocks,
            c.use_query_residual
        ),
        (8, 1, 1, true)
    );
    assert_eq!((c.num_latents, c.d_latents), (8, 16));
    assert_eq!(c.cross_attention_widening_factor, 2);
    assert_eq!(c.hidden_act, Activation::GeluTanh);

    // The config.json's sizes and heads instead: the same tensors.
    let named = video_loader().checkpoint().unwrap();
    let n = named.config().multimodal().unwrap();
    assert_eq!((n.num_frames, n.image_size, n.output_dims), (4, 6, [4, 16, 16]));
    let (a, b) = (checkpoint.tensors().unwrap(), named.tensors().unwrap());
    assert_eq!(a.len(), b.len());
    for ((x, p), (y, q)) in a.iter().zip(b.iter()) {
        assert_eq!((x, p.shape()), (y, q.shape()));
        assert!(p.data() == q.data(), "{x}");
    }
}

/// A video pystate with a parameter missing or one the model has no place for is refused with
/// DeepMind's name for it; so is a config.json whose sizes disagree with the shapes.
#[test]
fn bad_video_pystates_are_refused_by_name() {
    let path = fixture(VIDEO).join("params.pystate");
    let read = read_haiku_file(&path).unwrap();
    assert!(read.state.is_none(), "bare params, as the Colab reads them");

    let mut missing = read.clone();
    missing
        .params
        .get_mut("multimodal_decoder/~decoder_query/image_padding")
        .unwrap()
        .remove("pos_embs");
    let e = deepmind::from_haiku(missing, None, &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("multimodal_decoder/~decoder_query/image_padding/pos_embs is missing")
            && e.contains("perceiver.decoder.padding.image"),
        "{e}"
    );

    let mut extra = read.clone();
    extra
        .params
        .entry("multimodal_preprocessor/video_padding".into())
        .or_default()
        .insert(
            "pos_embs".into(),
            NdArray {
                shape: vec![1, 4],
                data: vec![0.0; 4],
            },
        );
    let e = deepmind::from_haiku(extra, None, &path).unwrap_err().to_string();
    assert!(
        e.contains("unexpected multimodal_preprocessor/video_padding/pos_embs")
            && e.contains("video autoencoder"),
        "{e}"
    );

    // 7 samples per patch: the audio rows (and so every padding) would be narrower.
    let mut config = video_loader().checkpoint().unwrap().config().clone();
    config
        .extra
        .insert("samples_per_patch".into(), serde_json::json!(7));
    config
        .extra
        .insert("audio_samples_per_frame".into(), serde_json::json!(21));
    let e = deepmind::from_haiku(read, Some(config), &path).unwrap_err();
    assert!(matches!(e, Error::DeepMindCheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("has shape"), "{e}");
}

/// A named config.json that says nothing of the stem's padding or the decoder's query residual
/// (as transformers' own config.json files never do) gets DeepMind's for a DeepMind file.
#[test]
fn a_named_imagenet_config_without_the_switches_gets_deepminds() {
    for (name, key) in [
        ("imagenet_conv", "stem_padding"),
        ("imagenet_learned", "decoder_use_query_residual"),
    ] {
        let mut config = imagenet_loader(name, "colab")
            .checkpoint()
            .unwrap()
            .config()
            .clone();
        assert!(config.extra.remove(key).is_some(), "{name}: {key}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        let loader = Loader::new(imagenet_pystate(name).to_str().unwrap()).model_config(&path);
        let model = loader.load().unwrap();
        let worst = imagenet_worst(&model, name, "colab");
        assert!(worst <= TOLERANCE, "{name}: {worst:e}");
        assert!(model.config().extra.contains_key(key), "{name}: {key}");
    }
}
