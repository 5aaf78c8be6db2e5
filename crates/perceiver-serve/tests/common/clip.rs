//! Clips for the autoencoder's tests: frames, audio and videos made from a seed, so that
//! different seeds make different clips; and the library's answer to compare the service's
//! with.

use serde_json::{json, Value};

/// Frame `t` of clip `seed` as a PNG file of `width` × `height`.
pub fn frame_png(seed: usize, t: usize, (width, height): (usize, usize)) -> Vec<u8> {
    let pixels = (0..width * height * 3)
        .map(|i| ((i * 7 + t * 40 + seed * 90) % 256) as u8)
        .collect();
    perceiver::image::RgbImage::new(width, height, pixels)
        .unwrap()
        .png_bytes()
        .unwrap()
}

/// Clip `seed`'s audio as a 16-bit mono WAV file of `samples` samples at `rate`.
pub fn wav(seed: usize, rate: u32, samples: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = Vec::new();
    let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).unwrap();
    for i in 0..samples {
        writer
            .write_sample(((i as f64 * 0.3 + seed as f64).sin() * 20000.0) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
    bytes
}

/// A `.y4m` video of `frames` frames of `side` × `side` (4:4:4, full range) at `rate` (its
/// header's `F` field, `F25:1` for the model's rate).
pub fn y4m(frames: usize, side: usize, rate: &str) -> Vec<u8> {
    let mut bytes = format!("YUV4MPEG2 W{side} H{side} {rate} Ip A1:1 C444 XCOLORRANGE=FULL\n").into_bytes();
    for t in 0..frames {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend((0..3 * side * side).map(|i| ((i * 5 + t * 60) % 256) as u8));
    }
    bytes
}

/// What the library answers for a clip: the labels as `POST /autoencode` writes them, the
/// frames as PNG files and the audio as a WAV file.
pub fn library_answer(
    task: &perceiver::Autoencoder,
    frames: Vec<perceiver::Pixels>,
    wav: &[u8],
    top_k: usize,
) -> (Value, Vec<Vec<u8>>, Vec<u8>) {
    let audio = task.reader().audio_from_wav_bytes(wav, "audio").unwrap();
    let output = task.autoencode(frames, audio, top_k).unwrap();
    let labels = output
        .labels
        .iter()
        .map(|l| {
            // The score as an f32 is written (its shortest digits), as the server writes it.
            let score: Value = serde_json::from_str(&serde_json::to_string(&l.score).unwrap()).unwrap();
            json!({"label": l.label, "score": score})
        })
        .collect();
    let frames = task
        .frame_images(&output.reconstruction)
        .unwrap()
        .iter()
        .map(|image| image.png_bytes().unwrap())
        .collect();
    (labels, frames, task.wav_bytes(&output.reconstruction).unwrap())
}
