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
use perceiver::tasks::autoencode::Autoencoder;
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

/// `ours` equals `theirs` bit for bit on the packed AVX2/AVX-512 products (a row's values do not
/// depend on the rows computed with it); the `gemm` crate, used without them, sums differently
/// by shape, so there the two agree to rounding.
fn assert_same_rows(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    if perceiver_kernels::sgemm::available() {
        assert_eq!(ours, theirs, "{what}: bit for bit");
    } else {
        for (a, b) in ours.iter().zip(theirs) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
        }
    }
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
    assert_same_rows(&image, &full.image, "chunked pixels");
    assert_same_rows(&audio, &full.audio, "chunked audio");
    assert_same_rows(
        label.as_ref().unwrap(),
        full.label.as_ref().unwrap(),
        "chunked label",
    );
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
        let what = format!("{chunks} chunks");
        assert_same_rows(&out.image, &full.image, &what);
        assert_same_rows(&out.audio, &full.audio, &what);
        assert_same_rows(&out.label, full.label.as_ref().unwrap(), &what);
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
    assert_same_rows(&again.image, &out.image, "without the label: pixels");
    assert_same_rows(&again.audio, &out.audio, "without the label: audio");
    assert_eq!(again.label, None);
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
    expect_err(model.autoencode(&good, usize::MAX), "at most 1000000");
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

/// Writes the fixture's video as 8-bit PNG files and its audio as a WAV file at `rate`, in
/// `format`; the values the files hold, as the task reads them.
fn write_files(
    cases: &HashMap<String, Tensor>,
    dir: &Path,
    rate: u32,
    format: hound::SampleFormat,
) -> (Vec<Pixels>, Vec<f32>) {
    let input = input(cases);
    let mut frames = Vec::new();
    for (t, frame) in input.frames().iter().enumerate() {
        let (h, w) = (frame.height, frame.width);
        let mut bytes = vec![0u8; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                bytes[i * 3 + c] = (frame.values[c * h * w + i] * 255.0).round() as u8;
            }
        }
        let values = (0..3 * h * w)
            .map(|j| (bytes[(j % (h * w)) * 3 + j / (h * w)] as f64 / 255.0) as f32)
            .collect();
        frames.push(Pixels::new(h, w, values).unwrap());
        image::RgbImage::from_raw(w as u32, h as u32, bytes)
            .unwrap()
            .save(dir.join(format!("f{t:02}.png")))
            .unwrap();
    }
    let bits = if format == hound::SampleFormat::Float {
        32
    } else {
        16
    };
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: format,
    };
    let mut writer = hound::WavWriter::create(dir.join("audio.wav"), spec).unwrap();
    let mut audio = Vec::new();
    // Two more samples than the model takes; the second channel is noise the task drops.
    for (i, &s) in input.audio().iter().chain([0.25, -0.25].iter()).enumerate() {
        if format == hound::SampleFormat::Float {
            writer.write_sample(s).unwrap();
            writer
                .write_sample(if i % 2 == 0 { 0.9f32 } else { -0.9 })
                .unwrap();
            audio.push(s);
        } else {
            let q = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            writer.write_sample(q).unwrap();
            writer.write_sample(1000i16).unwrap();
            audio.push((q as f64 / 32768.0) as f32);
        }
    }
    writer.finalize().unwrap();
    audio.truncate(input.audio().len());
    (frames, audio)
}

#[test]
fn the_task_reads_frames_and_wav_and_writes_the_reconstruction() {
    let task = Autoencoder::new(load(Precision::F32))
        .unwrap()
        .with_chunks(5)
        .unwrap();
    // 48 samples a frame at 25 frames a second.
    assert_eq!(task.sample_rate(), 1200);
    let cases = cases();
    for format in [hound::SampleFormat::Int, hound::SampleFormat::Float] {
        let dir = tempfile::tempdir().unwrap();
        let (frames, audio) = write_files(&cases, dir.path(), 1200, format);
        // A file that is not a frame is skipped, as is a hidden one (macOS's `._` files).
        std::fs::write(dir.path().join("notes.txt"), "not a frame").unwrap();
        std::fs::write(dir.path().join("._frame0.png"), "\0\x05\x16\x07 AppleDouble").unwrap();
        let read_frames = task.frames_from_dir(dir.path()).unwrap();
        assert_eq!(read_frames, frames);
        let read_audio = task.audio_from_wav(&dir.path().join("audio.wav")).unwrap();
        assert_eq!(read_audio, audio);
        let out = task.autoencode(read_frames, read_audio, 3).unwrap();
        // The model's own answer on the same values.
        let expected = task
            .model()
            .autoencode(&MultimodalInput::new(frames, audio).unwrap(), 1)
            .unwrap();
        assert_same_rows(&out.reconstruction.image, &expected.image, "task pixels");
        assert_same_rows(&out.reconstruction.audio, &expected.audio, "task audio");
        assert_same_rows(&out.reconstruction.label, &expected.label, "task label");
        assert_eq!(out.labels.len(), 3);
        assert!(out.labels[0].score >= out.labels[1].score && out.labels[1].score >= out.labels[2].score);
        assert!(out.labels.iter().all(|l| l.label.starts_with("class_")));
        let written = task
            .write_frames(&out.reconstruction, &dir.path().join("out"))
            .unwrap();
        assert_eq!(written.len(), 2);
        let png = image::open(&written[1]).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (16, 16));
        let v = out.reconstruction.image[16 * 16 * 3 + 5];
        assert_eq!(png.as_raw()[5], (v.clamp(0.0, 1.0) * 255.0).round() as u8);
        task.write_wav(&out.reconstruction, &dir.path().join("out.wav"))
            .unwrap();
        let mut back = hound::WavReader::open(dir.path().join("out.wav")).unwrap();
        assert_eq!((back.spec().sample_rate, back.spec().channels), (1200, 1));
        let samples: Vec<f32> = back.samples::<f32>().map(|s| s.unwrap()).collect();
        assert_eq!(samples, out.reconstruction.audio);
    }
}

/// What a service does with uploads: the files read from memory as from disk, the clip encoded
/// once and decoded chunk by chunk, then assembled: the task's whole answer, bit for bit.
#[test]
fn the_task_in_pieces_reads_uploads_and_equals_the_whole() {
    let task = Autoencoder::new(load(Precision::F32))
        .unwrap()
        .with_chunks(5)
        .unwrap();
    let reader = task.reader();
    let dir = tempfile::tempdir().unwrap();
    let (frames, audio) = write_files(&cases(), dir.path(), 1200, hound::SampleFormat::Int);
    let uploaded: Vec<Pixels> = (0..2)
        .map(|t| {
            let bytes = std::fs::read(dir.path().join(format!("f{t:02}.png"))).unwrap();
            reader.frame_from_bytes(&bytes, &format!("frame {t}")).unwrap()
        })
        .collect();
    assert_eq!(uploaded, frames);
    let wav = std::fs::read(dir.path().join("audio.wav")).unwrap();
    assert_eq!(reader.audio_from_wav_bytes(&wav, "audio").unwrap(), audio);
    // Errors name the upload.
    let err = reader
        .audio_from_wav_bytes(&wav[..30], "audio")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("audio: ") && err.contains("ends inside its header"),
        "{err}"
    );
    let err = reader
        .frame_from_bytes(b"not an image", "frame 1")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("frame 1: "), "{err}");
    let mut small = Vec::new();
    image::RgbImage::new(8, 16)
        .write_to(&mut std::io::Cursor::new(&mut small), image::ImageFormat::Png)
        .unwrap();
    let err = reader
        .frame_from_bytes(&small, "frame 0")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("frame 0: ") && err.contains("not 16x8"), "{err}");
    let err = reader
        .check_frame_header(&small, "frame 0")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("frame 0: ") && err.contains("not 16x8"), "{err}");
    reader
        .check_frame_header(&std::fs::read(dir.path().join("f00.png")).unwrap(), "frame 0")
        .unwrap();
    // Many channels: the first is the audio, and only the model's samples of it are kept.
    let spec = hound::WavSpec {
        channels: 5,
        sample_rate: 1200,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut five = Vec::new();
    let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut five), spec).unwrap();
    for i in 0..100 {
        for c in 0..5 {
            writer.write_sample((i * 100 + c) as i16).unwrap();
        }
    }
    writer.finalize().unwrap();
    let first: Vec<f32> = (0..96).map(|i| ((i * 100) as f64 / 32768.0) as f32).collect();
    assert_eq!(reader.audio_from_wav_bytes(&five, "audio").unwrap(), first);
    // A header stating 65535 channels and 4 GiB of samples over a file of none: refused for
    // what it lacks (only the first channel is kept, so nothing is reserved for the others).
    let mut hostile = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\xff\xff".to_vec();
    hostile.extend(1200u32.to_le_bytes());
    hostile.extend((1200u32 * 65535).to_le_bytes());
    hostile.extend(65535u16.to_le_bytes());
    hostile.extend(8u16.to_le_bytes());
    hostile.extend(b"data\xff\xff\xff\xff");
    let err = reader
        .audio_from_wav_bytes(&hostile, "audio")
        .unwrap_err()
        .to_string();
    // (Memory is not measured here: the reading keeps the first channel's samples only.)
    assert!(
        err.starts_with("audio: ") && err.contains("ends after 0"),
        "{err}"
    );

    let whole = task.autoencode(frames.clone(), audio.clone(), 4).unwrap();
    let latents = task.encode(frames, audio).unwrap();
    let decoded: Vec<_> = (0..task.chunks())
        .map(|i| task.decode(&latents, &task.chunk(i)).unwrap())
        .collect();
    assert!(task.chunk(task.chunks()).is_empty());
    assert_eq!(task.assemble(decoded.clone(), 4).unwrap(), whole);
    // The label alone: the same logits, the same labels.
    let label = task.decode(&latents, &task.label_query()).unwrap();
    assert!(label.image.is_empty() && label.audio.is_empty());
    let logits = label.label.unwrap();
    assert_eq!(logits, whole.reconstruction.label);
    assert_eq!(task.top_labels(&logits, 4).unwrap(), whole.labels);
    assert!(task.top_labels(&logits[1..], 4).is_err());
    assert!(task.top_labels(&logits, 0).is_err());
    // Chunks missing, out of order or twice are refused, not assembled.
    let mut missing = decoded.clone();
    missing.pop();
    assert!(task.assemble(missing, 4).is_err());
    let mut swapped = decoded.clone();
    swapped.swap(0, 4);
    assert!(task.assemble(swapped, 4).is_err());
    let mut twice = decoded.clone();
    twice[3] = decoded[4].clone();
    assert!(task.assemble(twice, 4).is_err());
    // The reconstruction as files in memory: PNG frames and a float WAV.
    let images = task.frame_images(&whole.reconstruction).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!((images[1].width(), images[1].height()), (16, 16));
    let wav = task.wav_bytes(&whole.reconstruction).unwrap();
    let mut back = hound::WavReader::new(&wav[..]).unwrap();
    assert_eq!((back.spec().sample_rate, back.spec().channels), (1200, 1));
    let samples: Vec<f32> = back.samples::<f32>().map(|s| s.unwrap()).collect();
    assert_eq!(samples, whole.reconstruction.audio);
}

#[test]
fn the_task_names_what_a_file_lacks() {
    let task = Autoencoder::new(load(Precision::F32)).unwrap();
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    write_files(&cases, dir.path(), 44100, hound::SampleFormat::Int);
    let err = task
        .audio_from_wav(&dir.path().join("audio.wav"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1200 Hz") && err.contains("44100 Hz"), "{err}");
    // Too short.
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 1200,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let short = dir.path().join("short.wav");
    let mut writer = hound::WavWriter::create(&short, spec).unwrap();
    for _ in 0..50 {
        writer.write_sample(0i16).unwrap();
    }
    writer.finalize().unwrap();
    let err = task.audio_from_wav(&short).unwrap_err().to_string();
    assert!(err.contains("96 samples") && err.contains("has 50"), "{err}");
    // Cut short: inside the header, and inside the samples (hound's "Failed to read enough
    // bytes", an I/O error, was reported as the disk's).
    let whole = std::fs::read(dir.path().join("audio.wav")).unwrap();
    let cut = dir.path().join("cut.wav");
    std::fs::write(&cut, &whole[..30]).unwrap();
    let err = task.audio_from_wav(&cut).unwrap_err();
    assert!(matches!(err, perceiver::Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("ends inside its header"), "{err}");
    std::fs::write(&cut, b"").unwrap();
    assert!(task
        .audio_from_wav(&cut)
        .unwrap_err()
        .to_string()
        .contains("ends inside its header"));
    write_files(&cases, dir.path(), 1200, hound::SampleFormat::Int);
    let whole = std::fs::read(dir.path().join("audio.wav")).unwrap();
    std::fs::write(&cut, &whole[..whole.len() - 100]).unwrap();
    let err = task.audio_from_wav(&cut).unwrap_err().to_string();
    assert!(
        err.contains("the file ends after") && err.contains("(truncated)"),
        "{err}"
    );
    // Not a WAV file, no file.
    std::fs::write(dir.path().join("bad.wav"), b"RIFF....not a wave").unwrap();
    assert!(task.audio_from_wav(&dir.path().join("bad.wav")).is_err());
    assert!(task.audio_from_wav(&dir.path().join("missing.wav")).is_err());
    // Too few frames, frames of the wrong size.
    std::fs::remove_file(dir.path().join("f01.png")).unwrap();
    let err = task.frames_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("2 frames") && err.contains("found 1"), "{err}");
    image::RgbImage::new(20, 16)
        .save(dir.path().join("f01.png"))
        .unwrap();
    let err = task.frames_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("16x16 frames") && err.contains("not 16x20"), "{err}");
    assert!(task.frames_from_dir(&dir.path().join("nowhere")).is_err());
    // A frame whose header states far more pixels than the model's is refused from the header,
    // not decoded first; a file that is no image, however long, from its first bytes.
    image::RgbImage::new(1600, 1200)
        .save(dir.path().join("f01.png"))
        .unwrap();
    let err = task.frames_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not 1200x1600"), "{err}");
    let long = std::fs::File::create(dir.path().join("f01.png")).unwrap();
    long.set_len(1 << 34).unwrap();
    let err = task.frames_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a JPEG, PNG"), "{err}");
    // One image of a format not read as frames is still one image, not a bad .y4m.
    let webp = dir.path().join("one.webp");
    std::fs::write(&webp, b"RIFF\0\0\0\0WEBPVP8 ").unwrap();
    let err = task.frames_from(&webp).unwrap_err().to_string();
    assert!(err.contains("one image"), "{err}");
    // Zero chunks, more chunks than any run needs (each a decoder pass: 2⁶⁴ would never
    // end), top_k 0, another model.
    for chunks in [0, perceiver::model::MAX_CHUNKS + 1, usize::MAX] {
        assert!(Autoencoder::new(load(Precision::F32))
            .unwrap()
            .with_chunks(chunks)
            .is_err());
    }
    let (frames, audio) = (input(&cases).frames().to_vec(), input(&cases).audio().to_vec());
    assert!(matches!(
        task.autoencode(frames, audio, 0),
        Err(perceiver::Error::InvalidInput(_))
    ));
    let flow = Loader::new(root().join("../flow/tiny_flow").to_str().unwrap())
        .load()
        .unwrap();
    assert!(Autoencoder::new(flow).is_err());
}

/// A reconstruction whose public fields disagree (no frames, sides of zero, too few values) is
/// refused before anything is written; it panicked on a zero-sized frame.
#[test]
fn write_frames_refuses_a_reconstruction_whose_sizes_disagree() {
    let task = Autoencoder::new(load(Precision::F32)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let good = perceiver::MultimodalOutput {
        frames: 2,
        height: 2,
        width: 3,
        image: vec![0.5; 2 * 2 * 3 * 3],
        audio: vec![],
        label: vec![],
    };
    let broken = [
        perceiver::MultimodalOutput {
            height: 0,
            ..good.clone()
        },
        perceiver::MultimodalOutput {
            width: 0,
            image: vec![],
            ..good.clone()
        },
        perceiver::MultimodalOutput {
            frames: 0,
            image: vec![],
            ..good.clone()
        },
        perceiver::MultimodalOutput {
            image: vec![0.5; 35],
            ..good.clone()
        },
        perceiver::MultimodalOutput {
            height: 1 << 40,
            width: 1 << 40,
            ..good.clone()
        },
    ];
    for output in &broken {
        let result = task.write_frames(output, &out);
        assert!(
            matches!(result, Err(perceiver::Error::InvalidInput(_))),
            "{result:?}"
        );
        assert!(!out.exists());
    }
    assert_eq!(task.write_frames(&good, &out).unwrap().len(), 2);
}

/// Chunk indices and counts near `usize::MAX` give empty or bounded ranges, not an overflow,
/// and any chunk count covers every query exactly once.
#[test]
fn chunks_of_any_count_cover_the_queries_without_overflow() {
    let spec = *load(Precision::F32).multimodal_spec().unwrap();
    let last = MultimodalQueries::chunk(&spec, usize::MAX - 1, usize::MAX);
    assert!(last.label);
    assert!(last.audio.len() <= 1 && last.image.len() <= 1);
    assert!(MultimodalQueries::chunk(&spec, usize::MAX, usize::MAX).is_empty());
    assert!(MultimodalQueries::chunk(&spec, 0, usize::MAX).image.is_empty());
    for chunks in [1, 3, 7, spec.image_queries() + 5] {
        let mut image = Vec::new();
        let mut audio = Vec::new();
        for index in 0..chunks {
            let q = MultimodalQueries::chunk(&spec, index, chunks);
            image.extend(q.image);
            audio.extend(q.audio);
        }
        assert_eq!(image, (0..spec.image_queries()).collect::<Vec<_>>());
        assert_eq!(audio, (0..spec.audio_patches()).collect::<Vec<_>>());
    }
}

/// More queries than the decoder runs at once (repeated pixels and patches, in any order): the
/// blocks give each query's full-decode row.
#[test]
fn queries_beyond_one_block_decode_as_the_full_decode() {
    let model = load(Precision::F32);
    let cases = cases();
    let spec = *model.multimodal_spec().unwrap();
    let latents = model.encode_multimodal(&input(&cases)).unwrap();
    let full = model
        .decode_multimodal(&latents, &MultimodalQueries::all(&spec))
        .unwrap();
    let n = perceiver::model::QUERY_BLOCK * 2 + 37;
    let queries = MultimodalQueries {
        image: (0..n).map(|i| (i * 7919) % spec.image_queries()).collect(),
        audio: (0..n).map(|i| (i * 5) % spec.audio_patches()).collect(),
        label: false,
    };
    let out = model.decode_multimodal(&latents, &queries).unwrap();
    let spp = spec.samples_per_patch;
    let pixels: Vec<f32> = queries
        .image
        .iter()
        .flat_map(|&i| full.image[i * 3..][..3].to_vec())
        .collect();
    assert_same_rows(&out.image, &pixels, "pixels over blocks");
    let audio: Vec<f32> = queries
        .audio
        .iter()
        .flat_map(|&i| full.audio[i * spp..][..spp].to_vec())
        .collect();
    assert_same_rows(&out.audio, &audio, "audio over blocks");
}

/// `perceiver convert`'s writer gives a directory that loads as the same model.
#[test]
fn an_exported_checkpoint_loads_as_the_same_model() {
    let source = Loader::new(root().join("tiny_multimodal").to_str().unwrap());
    let checkpoint = source.checkpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy");
    perceiver::checkpoint::export::write_model_dir(&checkpoint, &out, &Default::default()).unwrap();
    let copy = Loader::new(out.to_str().unwrap()).load().unwrap();
    let cases = cases();
    let input = input(&cases);
    assert_eq!(
        copy.autoencode(&input, 2).unwrap(),
        source.load().unwrap().autoencode(&input, 2).unwrap()
    );
}

/// The same weights under sizes no tensor depends on (`variant.json`: the video positions' top
/// frequency in space unlike the frames' size, non-square frames, more frames out than in): the
/// sizes are read from the config as transformers reads them.
#[test]
fn a_variant_config_on_the_same_weights_matches_transformers() {
    let dir = root().join("tiny_multimodal");
    let checkpoint = Loader::new(dir.to_str().unwrap()).checkpoint().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let variant: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("variant.json")).unwrap()).unwrap();
    for (key, value) in variant.as_object().unwrap() {
        config[key] = value.clone();
    }
    let config = PerceiverConfig::from_json_str(&config.to_string()).unwrap();
    let model =
        PerceiverModel::from_params(&config, &mut |name| checkpoint.get(name), Precision::F32).unwrap();
    let spec = *model.multimodal_spec().unwrap();
    assert_eq!(
        (spec.image_size, spec.frame_size(), spec.output_dims),
        (8, (16, 12), [3, 16, 12])
    );
    // The frames it takes, not its positions' top frequency (image_size).
    assert_eq!(model.image_size(), Some((16, 12)));
    assert_eq!(model.max_len(), 0);
    let cases = cases();
    let image = &cases["variant.image"];
    assert_eq!(image.dims(), &[1, 2, 3, 16, 12]);
    let frames = values(image)
        .chunks_exact(3 * 16 * 12)
        .map(|f| Pixels::new(16, 12, f.to_vec()).unwrap())
        .collect();
    let input = MultimodalInput::new(frames, values(&cases["variant.audio"])).unwrap();
    let out = model.autoencode(&input, 3).unwrap();
    assert_eq!((out.frames, out.height, out.width), (3, 16, 12));
    compare(
        "variant image",
        &out.image,
        &values(&cases["variant.full.image"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "variant audio",
        &out.audio,
        &values(&cases["variant.full.audio"]),
        RELATIVE_TOLERANCE,
    );
    compare(
        "variant label",
        &out.label,
        &values(&cases["variant.full.label"]),
        RELATIVE_TOLERANCE,
    );
}

/// A `.y4m` video gives the model its first frames (BT.601 colours back to within rounding of
/// the RGB they were made from); a directory must hold exactly the model's frames.
#[test]
fn the_task_reads_y4m_video_and_wants_exactly_its_frames_in_a_directory() {
    let task = Autoencoder::new(load(Precision::F32)).unwrap();
    let (h, w) = (16usize, 16usize);
    let rgb =
        |t: usize, x: usize, y: usize| [(x * 15 + t * 30) as f64, (y * 15) as f64, ((x + y) * 7) as f64];
    let sized_video = |frames: usize, h: usize, w: usize| {
        let mut bytes = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C444 XCOLORRANGE=FULL\n").into_bytes();
        for t in 0..frames {
            bytes.extend_from_slice(b"FRAME\n");
            let mut planes = [Vec::new(), Vec::new(), Vec::new()];
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = rgb(t, x, y);
                    let luma = 0.299 * r + 0.587 * g + 0.114 * b;
                    let cb = 128.0 + (b - luma) / 1.772;
                    let cr = 128.0 + (r - luma) / 1.402;
                    for (plane, v) in planes.iter_mut().zip([luma, cb, cr]) {
                        plane.push(v.round().clamp(0.0, 255.0) as u8);
                    }
                }
            }
            bytes.extend(planes.concat());
        }
        bytes
    };
    let video = |frames: usize| sized_video(frames, h, w);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.y4m");
    std::fs::write(&path, video(3)).unwrap();
    let frames = task.frames_from(&path).unwrap();
    assert_eq!(frames.len(), 2);
    // The same video uploaded: read from memory, errors named as the caller says.
    let reader = task.reader();
    assert_eq!(reader.frames_from_y4m_bytes(&video(3), "video").unwrap(), frames);
    let err = reader
        .frames_from_y4m_bytes(&video(1), "video")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("video: ") && err.contains("the video has 1"),
        "{err}"
    );
    // From the header alone: the size and the rate, before a frame is read.
    reader.check_y4m_header(&video(0), "video").unwrap();
    let err = reader
        .check_y4m_header(&sized_video(0, 8, 16), "video")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the model takes 16x16 frames") && err.contains("not 8x16"),
        "{err}"
    );
    let fast = String::from_utf8(video(0)).unwrap().replace("F25:1", "F30:1");
    let err = reader
        .check_y4m_header(fast.as_bytes(), "video")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("video: ") && err.contains("F30:1"), "{err}");
    let mut worst = 0f64;
    for (t, frame) in frames.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                for (c, &expected) in rgb(t, x, y).iter().enumerate() {
                    let got = frame.values[c * h * w + y * w + x] as f64 * 255.0;
                    worst = worst.max((got - expected).abs());
                }
            }
        }
    }
    assert!(worst <= 2.0, "worst {worst} levels");
    // Too few frames in the video.
    std::fs::write(&path, video(1)).unwrap();
    let err = task.frames_from(&path).unwrap_err().to_string();
    assert!(err.contains("takes 2 frames") && err.contains("has 1"), "{err}");
    // Frames of another size: larger ones are refused from the header alone (the stream ends
    // before its frames would), smaller ones once read.
    for (fh, fw, frames) in [(4096, 4096, 0), (16, 15, 2)] {
        std::fs::write(&path, sized_video(frames, fh, fw)).unwrap();
        let err = task.frames_from(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("takes 16x16 frames (output_shape), not {fh}x{fw}")),
            "{err}"
        );
    }
    // Three frames in a directory for a two-frame model.
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    for t in 0..3 {
        image::RgbImage::new(16, 16)
            .save(frames_dir.join(format!("f{t}.png")))
            .unwrap();
    }
    let err = task.frames_from(&frames_dir).unwrap_err().to_string();
    assert!(err.contains("2 frames") && err.contains("found 3"), "{err}");
}
