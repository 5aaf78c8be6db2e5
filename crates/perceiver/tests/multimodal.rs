//! Multimodal autoencoding against transformers: the tiny `PerceiverForMultimodalAutoencoding`
//! `scripts/make_multimodal_fixtures.py` wrote to `tests/fixtures/multimodal/` (a config unlike
//! the released one), transformers' outputs for every query at once, for the queries in
//! contiguous chunks (DeepMind's Colab's way) and for a scattered subset; the released layout's
//! tensor names and shapes; and bad inputs refused with errors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use perceiver::checkpoint::expected_tensors;
use perceiver::decoder::MultimodalQueries;
use perceiver::preprocess::MultimodalInput;
use perceiver::{Architecture, Loader, PerceiverConfig, PerceiverModel, Pixels, Precision};

/// Largest accepted |Δ| against the reference, relative to the largest |value| of each of the
/// reference's outputs (the model runs in float64 there, f32 here).
const RELATIVE_TOLERANCE: f32 = 1e-4;
/// The same in bf16 (the weight products in bf16; the per-modality heads stay f32).
const BF16_RELATIVE_TOLERANCE: f32 = 3e-2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/multimodal")
}

fn load(precision: Precision) -> PerceiverModel {
    Loader::new(root().join("tiny_multimodal").to_str().unwrap())
        .precision(precision)
        .load()
        .unwrap()
}

fn cases() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tiny_multimodal").join("cases.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn indices(tensor: &Tensor) -> Vec<usize> {
    let v = tensor.flatten_all().unwrap().to_vec1::<i64>().unwrap();
    v.into_iter().map(|i| i as usize).collect()
}

/// The fixture's video ([1, T, 3, S, S]) and audio ([1, n, 1]).
fn input(cases: &HashMap<String, Tensor>) -> MultimodalInput {
    let image = &cases["image"];
    let [_, t, c, h, w] = image.dims() else {
        panic!("image {:?}", image.dims())
    };
    assert_eq!(*c, 3);
    let all = values(image);
    let frames = all
        .chunks_exact(3 * h * w)
        .map(|f| Pixels::new(*h, *w, f.to_vec()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(frames.len(), *t);
    MultimodalInput::new(frames, values(&cases["audio"])).unwrap()
}

/// The worst |Δ| relative to the reference's largest |value|; fails above `tolerance`.
fn compare(what: &str, ours: &[f32], theirs: &[f32], tolerance: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let relative = worst / scale;
    println!("{what}: worst |Δ| {worst:.3e} (relative to max |value| {scale:.3}: {relative:.3e})");
    assert!(
        relative <= tolerance,
        "{what}: worst |Δ| {worst} is {relative} of the scale {scale}"
    );
    relative
}

#[test]
fn full_decode_matches_transformers() {
    let model = load(Precision::F32);
    assert_eq!(model.architecture(), Architecture::MultimodalAutoencoding);
    let cases = cases();
    let input = input(&cases);
    let spec = *model.multimodal_spec().unwrap();
    let latents = model.encode_multimodal(&input).unwrap();
    let out = model
        .decode_multimodal(&latents, &MultimodalQueries::all(&spec))
        .unwrap();
    compare(
        "full image",
        &out.image,
        &values(&cases["full.image"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "full audio",
        &out.audio,
        &values(&cases["full.audio"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "full label",
        out.label.as_ref().unwrap(),
        &values(&cases["full.label"]),
        RELATIVE_TOLERANCE,
    );
    // autoencode: the same values in the video's shape.
    let whole = model.autoencode(&input, 1).unwrap();
    assert_eq!((whole.frames, whole.height, whole.width), (2, 16, 16));
    assert_eq!(whole.image, out.image);
    assert_eq!(whole.audio, out.audio);
    assert_eq!(Some(whole.label), out.label);
}

#[test]
fn chunked_decode_equals_the_full_decode_and_transformers_chunks() {
    let model = load(Precision::F32);
    let cases = cases();
    let input = input(&cases);
    let spec = *model.multimodal_spec().unwrap();
    let latents = model.encode_multimodal(&input).unwrap();
    let full = model
        .decode_multimodal(&latents, &MultimodalQueries::all(&spec))
        .unwrap();
    // transformers' chunks, one call each, assembled.
    let (image_bounds, audio_bounds) = (
        indices(&cases["chunked.image_bounds"]),
        indices(&cases["chunked.audio_bounds"]),
    );
    let (mut image, mut audio, mut label) = (Vec::new(), Vec::new(), None);
    for i in 0..image_bounds.len() - 1 {
        let queries = MultimodalQueries {
            audio: (audio_bounds[i]..audio_bounds[i + 1]).collect(),
            image: (image_bounds[i]..image_bounds[i + 1]).collect(),
            label: true,
        };
        let part = model.decode_multimodal(&latents, &queries).unwrap();
        image.extend(part.image);
        audio.extend(part.audio);
        label = part.label;
    }
    assert_eq!(
        image, full.image,
        "chunks give the full decode's pixels bit for bit"
    );
    assert_eq!(audio, full.audio);
    assert_eq!(label, full.label);
    compare(
        "chunked image",
        &image,
        &values(&cases["chunked.image"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "chunked audio",
        &audio,
        &values(&cases["chunked.audio"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "chunked label",
        label.as_ref().unwrap(),
        &values(&cases["chunked.label"]),
        RELATIVE_TOLERANCE,
    );
    // The task's chunking, with more chunks than audio patches (some chunks have none).
    for chunks in [2, 7, 13, 600] {
        let out = model.autoencode(&input, chunks).unwrap();
        assert_eq!(out.image, full.image, "{chunks} chunks");
        assert_eq!(out.audio, full.audio, "{chunks} chunks");
        assert_eq!(Some(out.label), full.label, "{chunks} chunks");
    }
}

#[test]
fn scattered_queries_match_transformers() {
    let model = load(Precision::F32);
    let cases = cases();
    let input = input(&cases);
    let latents = model.encode_multimodal(&input).unwrap();
    let queries = MultimodalQueries {
        audio: indices(&cases["scattered.audio_points"]),
        image: indices(&cases["scattered.image_points"]),
        label: true,
    };
    let out = model.decode_multimodal(&latents, &queries).unwrap();
    compare(
        "scattered image",
        &out.image,
        &values(&cases["scattered.image"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "scattered audio",
        &out.audio,
        &values(&cases["scattered.audio"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "scattered label",
        out.label.as_ref().unwrap(),
        &values(&cases["scattered.label"]),
        RELATIVE_TOLERANCE,
    );
    // Without the label: the same rows, no logits.
    let no_label = MultimodalQueries {
        label: false,
        ..queries.clone()
    };
    let again = model.decode_multimodal(&latents, &no_label).unwrap();
    assert_eq!(
        (again.image, again.audio, again.label),
        (out.image, out.audio, None)
    );
}

#[test]
fn bf16_stays_near_transformers() {
    let model = load(Precision::Bf16);
    let cases = cases();
    let out = model.autoencode(&input(&cases), 4).unwrap();
    compare(
        "bf16 image",
        &out.image,
        &values(&cases["full.image"]),
        BF16_RELATIVE_TOLERANCE,
    );
    compare(
        "bf16 audio",
        &out.audio,
        &values(&cases["full.audio"]),
        BF16_RELATIVE_TOLERANCE,
    );
    compare(
        "bf16 label",
        &out.label,
        &values(&cases["full.label"]),
        BF16_RELATIVE_TOLERANCE,
    );
}

#[test]
fn bad_inputs_are_errors() {
    let model = load(Precision::F32);
    let cases = cases();
    let good = input(&cases);
    let spec = *model.multimodal_spec().unwrap();
    let frame = good.frames()[0].clone();
    let expect_err = |result: perceiver::Result<perceiver::MultimodalOutput>, needle: &str| {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    };
    // Frame count, frame size, audio length.
    let three = MultimodalInput::new(vec![frame.clone(); 3], good.audio().to_vec()).unwrap();
    expect_err(model.autoencode(&three, 1), "2 frames (num_frames), not 3");
    let small = Pixels::new(12, 12, vec![0.5; 3 * 144]).unwrap();
    let small = MultimodalInput::new(vec![small; 2], good.audio().to_vec()).unwrap();
    expect_err(
        model.autoencode(&small, 1),
        "16x16 frames (output_shape), not 12x12",
    );
    let short = MultimodalInput::new(good.frames().to_vec(), vec![0.0; 95]).unwrap();
    expect_err(model.autoencode(&short, 1), "96 audio samples");
    expect_err(model.autoencode(&good, 0), "at least one chunk");
    // Frames of different sizes, none, or with the wrong number of values.
    assert!(MultimodalInput::new(
        vec![frame.clone(), Pixels::new(8, 8, vec![0.0; 192]).unwrap()],
        vec![]
    )
    .is_err());
    assert!(MultimodalInput::new(vec![], vec![0.0; 96]).is_err());
    let broken = Pixels {
        height: 16,
        width: 16,
        values: vec![0.0; 10],
    };
    assert!(MultimodalInput::new(vec![broken], vec![]).is_err());
    // Queries out of range, latents of the wrong size.
    let latents = model.encode_multimodal(&good).unwrap();
    let past_image = MultimodalQueries {
        image: vec![0, spec.image_queries()],
        ..Default::default()
    };
    let err = model
        .decode_multimodal(&latents, &past_image)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image query 512 is outside the model's 512"),
        "{err}"
    );
    let past_audio = MultimodalQueries {
        audio: vec![spec.audio_patches()],
        ..Default::default()
    };
    let err = model
        .decode_multimodal(&latents, &past_audio)
        .unwrap_err()
        .to_string();
    assert!(err.contains("audio query 12"), "{err}");
    assert!(model
        .decode_multimodal(&latents[1..], &MultimodalQueries::all(&spec))
        .is_err());
    // No queries: nothing decoded, no error.
    let none = model
        .decode_multimodal(&latents, &MultimodalQueries::default())
        .unwrap();
    assert!(none.image.is_empty() && none.audio.is_empty() && none.label.is_none());
    // Another model's input, and this model's methods on another model.
    assert!(model.decode(&latents, &[&[0]]).is_err());
    let flow = Loader::new(root().join("../flow/tiny_flow").to_str().unwrap())
        .load()
        .unwrap();
    let err = flow.autoencode(&good, 1).unwrap_err().to_string();
    assert!(err.contains("not a multimodal autoencoder"), "{err}");
    assert!(flow.encode_multimodal(&good).is_err());
}

#[test]
fn bad_configs_are_refused_by_name() {
    let text = std::fs::read_to_string(root().join("tiny_multimodal/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    PerceiverConfig::from_json_str(&text).unwrap();
    for (field, value, needle) in [
        ("num_frames", serde_json::json!(1), "num_frames"),
        (
            "output_shape",
            serde_json::json!([1, 2, 16, 18]),
            "multiples of 4",
        ),
        ("image_size", serde_json::json!(0), "image_size"),
        ("samples_per_patch", serde_json::json!(7), "must divide"),
        ("output_shape", serde_json::json!([1, 2, 16]), "output_shape"),
        (
            "output_shape",
            serde_json::json!([1, 2, 16, 100000]),
            "output_shape[3]",
        ),
        (
            "audio_samples_per_frame",
            serde_json::json!(-5),
            "audio_samples_per_frame",
        ),
        (
            "_label_trainable_num_channels",
            serde_json::json!(0),
            "_label_trainable_num_channels",
        ),
    ] {
        let mut config = base.clone();
        config[field] = value.clone();
        let err = PerceiverConfig::from_json_str(&config.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{field} = {value}: {err:?} lacks {needle:?}"
        );
    }
}

#[derive(serde::Deserialize)]
struct Layout {
    class: String,
    config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>)>,
    parameters: usize,
}

#[test]
fn released_layout_matches_transformers_state_dict() {
    let text = std::fs::read_to_string(root().join("released_layout.json")).unwrap();
    let layout: Layout = serde_json::from_str(&text).unwrap();
    let config = PerceiverConfig::from_json_str(&layout.config.to_string()).unwrap();
    assert_eq!(Architecture::of(&config).unwrap().name(), layout.class);
    let ours: BTreeMap<String, Vec<usize>> = expected_tensors(&config).unwrap().into_iter().collect();
    let theirs: BTreeMap<String, Vec<usize>> = layout.tensors.into_iter().collect();
    assert_eq!(ours, theirs);
    let parameters: usize = theirs.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(parameters, layout.parameters);
    assert_eq!(config.num_parameters() as usize, parameters);
    let spec = config.multimodal().unwrap();
    assert_eq!(
        (spec.input_channels(), spec.query_channels(), spec.input_rows()),
        (704, 1026, 1920 + 16 * 56 * 56 + 1)
    );
    println!(
        "{}: {} tensors, {parameters} parameters",
        layout.class,
        theirs.len()
    );
}

#[test]
fn the_tiny_models_tensors_and_parameter_count_match_its_file() {
    let dir = root().join("tiny_multimodal");
    let config = PerceiverConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors = expected_tensors(&config).unwrap();
    let sum: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(config.num_parameters() as usize, sum);
    let model = load(Precision::F32);
    assert_eq!(model.config().num_parameters() as usize, sum);
}
