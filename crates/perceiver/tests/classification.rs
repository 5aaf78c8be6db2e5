//! The classifiers against transformers: the four tiny models `scripts/make_classification_fixtures.py`
//! wrote to `tests/fixtures/classification/` (one per class, configs unlike the released ones),
//! their logits on the same inputs, and the released ImageNet layouts' tensor names and shapes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use perceiver::checkpoint::expected_tensors;
use perceiver::{Architecture, Classifier, Error, Loader, ModelInput, PerceiverConfig, Pixels, Precision};

/// Largest accepted |Δ logit| against transformers (run in float64 there, f32 here).
const LOGIT_TOLERANCE: f32 = 1e-4;
/// Largest accepted |Δ probability| against transformers' pipelines (float32 there).
const SCORE_TOLERANCE: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/classification")
}

fn load(name: &str, precision: Precision) -> Classifier {
    let model = Loader::new(root().join(name).to_str().unwrap())
        .precision(precision)
        .load()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Classifier::new(model).unwrap()
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join(name).join("cases.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn images(pixel_values: &Tensor) -> Vec<Pixels> {
    let (b, c, h, w) = pixel_values.dims4().unwrap();
    assert_eq!(c, 3);
    let all = pixel_values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    all.chunks_exact(3 * h * w)
        .take(b)
        .map(|v| Pixels::new(h, w, v.to_vec()).unwrap())
        .collect()
}

fn texts(ids: &Tensor, mask: &Tensor) -> Vec<Vec<u32>> {
    let ids = ids.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let mask = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    ids.into_iter()
        .zip(mask)
        .map(|(row, m)| {
            row.into_iter()
                .zip(m)
                .filter(|&(_, m)| m == 1)
                .map(|(id, _)| id)
                .collect()
        })
        .collect()
}

/// Our logits for every case of a fixture, with the reference's.
fn logits_of(name: &str, classifier: &Classifier) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let cases = cases(name);
    let mut keys: Vec<&String> = cases.keys().filter(|k| k.ends_with(".logits")).collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let case = key.trim_end_matches(".logits");
            let expected = cases[key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = if let Some(pixels) = cases.get(&format!("{case}.pixel_values")) {
                let images = images(pixels);
                let refs: Vec<&Pixels> = images.iter().collect();
                classifier.logits(ModelInput::Images(&refs)).unwrap()
            } else {
                let texts = texts(
                    &cases[&format!("{case}.input_ids")],
                    &cases[&format!("{case}.attention_mask")],
                );
                let refs: Vec<&[u32]> = texts.iter().map(|t| t.as_slice()).collect();
                classifier.logits(ModelInput::Tokens(&refs)).unwrap()
            };
            (case.to_string(), ours, expected)
        })
        .collect()
}

const MODELS: [(&str, Architecture); 4] = [
    ("tiny_image_fourier", Architecture::ImageClassificationFourier),
    ("tiny_image_conv", Architecture::ImageClassificationConvProcessing),
    ("tiny_image_learned", Architecture::ImageClassificationLearned),
    ("tiny_text_classifier", Architecture::SequenceClassification),
];

#[test]
fn logits_match_transformers() {
    for (name, architecture) in MODELS {
        let classifier = load(name, Precision::F32);
        assert_eq!(classifier.model().architecture(), architecture);
        for (case, ours, expected) in logits_of(name, &classifier) {
            let diff = max_abs_diff(&ours, &expected);
            println!(
                "{name}/{case}: max |Δ logit| = {diff:.3e} over {} logits",
                ours.len()
            );
            assert!(diff <= LOGIT_TOLERANCE, "{name}/{case}: {diff}");
        }
    }
}

/// In bf16 the weight products round their inputs to 8 bits of mantissa: the logits move, the
/// best label does not (on these fixtures).
#[test]
fn bf16_keeps_the_best_label() {
    for (name, _) in MODELS {
        let classifier = load(name, Precision::Bf16);
        for (case, ours, expected) in logits_of(name, &classifier) {
            let labels = classifier.labels().len();
            let diff = max_abs_diff(&ours, &expected);
            println!("{name}/{case} bf16: max |Δ logit| = {diff:.3e}");
            let argmax = |row: &[f32]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            for (a, b) in ours.chunks_exact(labels).zip(expected.chunks_exact(labels)) {
                assert_eq!(argmax(a), argmax(b), "{name}/{case}");
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct PipelineCase {
    input: String,
    top_k: Option<usize>,
    output: Vec<Scored>,
}

#[derive(serde::Deserialize)]
struct Scored {
    label: String,
    score: f32,
}

fn pipeline_cases(name: &str) -> Vec<PipelineCase> {
    let text = std::fs::read_to_string(root().join(name).join("pipeline.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn text_classification_matches_the_pipeline() {
    let classifier = load("tiny_text_classifier", Precision::F32);
    for case in pipeline_cases("tiny_text_classifier") {
        let top_k = case.top_k.unwrap_or(usize::MAX);
        let ours = &classifier.classify_texts(&[&case.input], top_k).unwrap()[0];
        assert_eq!(ours.len(), case.output.len());
        let mut worst = 0f32;
        for (a, b) in ours.iter().zip(&case.output) {
            assert_eq!(a.label, b.label, "{:?}", case.input);
            worst = worst.max((a.score - b.score).abs());
        }
        println!("{:?}: max |Δ score| = {worst:.3e}", case.input);
        assert!(worst <= SCORE_TOLERANCE);
    }
}

/// From the image files through the model's own `preprocessor_config.json` (loaded with the
/// model) to the pipeline's labels and scores.
#[test]
fn image_classification_matches_the_pipeline() {
    for name in ["tiny_image_fourier", "tiny_image_conv", "tiny_image_learned"] {
        let dir = root().join(name);
        let classifier = Loader::new(dir.to_str().unwrap()).classifier().unwrap();
        for case in pipeline_cases(name) {
            let bytes = std::fs::read(dir.join(&case.input)).unwrap();
            let top_k = case.top_k.unwrap_or(usize::MAX);
            let ours = &classifier.classify_images(&[&bytes], top_k).unwrap()[0];
            assert_eq!(ours.len(), case.output.len());
            let mut worst = 0f32;
            for (a, b) in ours.iter().zip(&case.output) {
                assert_eq!(a.label, b.label, "{name}/{}", case.input);
                worst = worst.max((a.score - b.score).abs());
            }
            println!("{name}/{}: max |Δ score| = {worst:.3e}", case.input);
            assert!(worst <= SCORE_TOLERANCE, "{name}/{}: {worst}", case.input);
        }
    }
}

#[derive(serde::Deserialize)]
struct Layout {
    class: String,
    config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>)>,
}

/// Every tensor name and shape of the released ImageNet layouts (transformers' `state_dict` of a
/// model built from each config), against ours.
#[test]
fn released_image_layouts_match_transformers_state_dicts() {
    let text = std::fs::read_to_string(root().join("released_layouts.json")).unwrap();
    let layouts: Vec<Layout> = serde_json::from_str(&text).unwrap();
    assert_eq!(layouts.len(), 3);
    for layout in layouts {
        let config = PerceiverConfig::from_json_str(&layout.config.to_string()).unwrap();
        assert_eq!(Architecture::of(&config).unwrap().name(), layout.class);
        let ours: BTreeMap<String, Vec<usize>> = expected_tensors(&config).unwrap().into_iter().collect();
        let theirs: BTreeMap<String, Vec<usize>> = layout.tensors.into_iter().collect();
        assert_eq!(ours, theirs, "{}", layout.class);
        let parameters: usize = theirs.values().map(|s| s.iter().product::<usize>()).sum();
        println!("{}: {} tensors, {parameters} values", layout.class, theirs.len());
        // The config's own count agrees (BatchNorm's counter is one value more in the state dict).
        let counter = theirs
            .keys()
            .filter(|k| k.ends_with("num_batches_tracked"))
            .count();
        assert_eq!(
            config.num_parameters() as usize + counter,
            parameters,
            "{}",
            layout.class
        );
    }
}

/// A config without `id2label` gets transformers' `LABEL_i` names, as many as the final
/// projection has rows.
#[test]
fn missing_labels_fall_back_to_label_i() {
    let dir = tempfile::tempdir().unwrap();
    let source = root().join("tiny_text_classifier");
    let file = "model.safetensors";
    std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    let map = config.as_object_mut().unwrap();
    map.remove("id2label");
    map.remove("label2id");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let classifier = Classifier::new(Loader::new(dir.path().to_str().unwrap()).load().unwrap()).unwrap();
    assert_eq!(classifier.labels(), ["LABEL_0", "LABEL_1", "LABEL_2"]);
}

/// `Classifier::new` alone (no `preprocessor_config.json`) prepares images of the size a
/// fixed-size model takes: the 12 × 12 learned model classifies an image file (transformers'
/// 224 × 224 defaults were refused by it), and the Fourier model keeps those defaults.
#[test]
fn a_classifier_without_its_processor_config_sizes_images_for_its_model() {
    let picture = std::fs::read(root().join("tiny_image_learned").join("wide.png")).unwrap();
    let learned = load("tiny_image_learned", Precision::F32);
    let size = learned.image_processor().unwrap().config().size;
    assert_eq!((size.height, size.width), (12, 12));
    let ranked = learned.classify_images(&[&picture], 2).unwrap();
    assert_eq!(ranked[0].len(), 2);
    let fourier = load("tiny_image_fourier", Precision::F32);
    assert_eq!(
        fourier.image_processor().unwrap().config(),
        &perceiver::image::ImageProcessorConfig::default()
    );
}

/// `top_k = 0` asks for no answer: every task refuses it, as fill-mask does.
#[test]
fn top_k_zero_is_refused() {
    let text = load("tiny_text_classifier", Precision::F32);
    assert!(text.classify_texts(&["hello"], 1).is_ok());
    assert!(matches!(
        text.classify_texts(&["hello"], 0),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(text.classify_texts(&[], 0), Err(Error::InvalidInput(_))));
    let ids = text.tokenize("hello").unwrap();
    assert!(matches!(
        text.classify(ModelInput::Tokens(&[&ids]), 0),
        Err(Error::InvalidInput(_))
    ));
    let learned = load("tiny_image_learned", Precision::F32);
    let image = Pixels::new(12, 12, vec![0.0; 3 * 12 * 12]).unwrap();
    assert!(matches!(
        learned.classify_pixels(&[&image], 0),
        Err(Error::InvalidInput(_))
    ));
    let picture = std::fs::read(root().join("tiny_image_learned").join("wide.png")).unwrap();
    assert!(matches!(
        learned.classify_images(&[&picture], 0),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn wrong_inputs_are_errors() {
    let text = load("tiny_text_classifier", Precision::F32);
    let image = Pixels::new(12, 12, vec![0.0; 3 * 12 * 12]).unwrap();
    assert!(text.classify_pixels(&[&image], 1).is_err());
    let too_long = "x".repeat(200);
    let err = text.classify_texts(&[&too_long], 1).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");

    let learned = load("tiny_image_learned", Precision::F32);
    assert!(learned.classify_texts(&["hello"], 1).is_err());
    let wrong_size = Pixels::new(13, 12, vec![0.0; 3 * 13 * 12]).unwrap();
    let err = learned.classify_pixels(&[&wrong_size], 1).unwrap_err();
    assert!(err.to_string().contains("12x12"), "{err}");
    assert!(learned.classify_pixels(&[&image], 2).is_ok());

    let conv = load("tiny_image_conv", Precision::F32);
    let tiny = Pixels::new(3, 3, vec![0.0; 27]).unwrap();
    assert!(conv.classify_pixels(&[&tiny], 1).is_err());
    assert!(Pixels::new(2, 2, vec![0.0; 5]).is_err());
    // Pixels built field by field bypass `new`: an image without columns is still refused.
    let fourier = load("tiny_image_fourier", Precision::F32);
    let empty = Pixels {
        values: Vec::new(),
        height: 5,
        width: 0,
    };
    assert!(fourier.classify_pixels(&[&empty], 1).is_err());
    // Sizes whose product overflows (it panicked, or wrapped in release) and values that are
    // not finite (NaN scores) are refused too.
    let huge = Pixels {
        values: Vec::new(),
        height: 1 << 62,
        width: 4,
    };
    assert!(matches!(
        fourier.classify_pixels(&[&huge], 1),
        Err(Error::InvalidInput(_))
    ));
    let mut nan = Pixels::new(5, 6, vec![0.5; 90]).unwrap();
    assert!(fourier.classify_pixels(&[&nan], 1).is_ok());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        nan.values[40] = bad;
        let e = fourier.classify_pixels(&[&nan], 1).unwrap_err();
        assert!(e.to_string().contains("not a finite number"), "{e}");
        assert!(Pixels::new(5, 6, nan.values.clone()).is_err());
    }

    // A classifier is not a masked LM, and the other way round.
    assert!(perceiver::FillMask::new(text.model().clone()).is_err());
    assert!(Classifier::new(Loader::new("default").load().unwrap()).is_err());
}
