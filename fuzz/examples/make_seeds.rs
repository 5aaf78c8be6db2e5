//! Writes the committed seed inputs of the fuzz targets (fuzz/seeds/<target>/): a valid tiny
//! model for `config_safetensors` (its tensors listed by the library's own name tree, so the
//! seed follows the code), a few texts for `fill_mask_text`, and `media`'s clip inputs (WAV files
//! and frames for the autoencoder's reader, behind their selector bytes). `haiku_pickle`'s seeds
//! are the test fixtures, copied by scripts/fuzz.sh; `media`'s other seeds were written by hand.
//! Run from fuzz/: `cargo run --example make_seeds`.

use std::path::Path;

use perceiver::checkpoint::{expected_tensors, ModelFiles};
use perceiver::{Checkpoint, PerceiverConfig};

/// The smallest model the config bounds allow, nearly: every count 1 or 2 where it can be.
const TINY_CONFIG: &str = r#"{
  "architectures": ["PerceiverForMaskedLM"],
  "model_type": "perceiver",
  "d_latents": 8,
  "d_model": 8,
  "num_latents": 2,
  "num_blocks": 1,
  "num_self_attends_per_block": 1,
  "num_self_attention_heads": 1,
  "num_cross_attention_heads": 1,
  "qk_channels": 8,
  "v_channels": 8,
  "cross_attention_widening_factor": 1,
  "self_attention_widening_factor": 1,
  "max_position_embeddings": 4,
  "vocab_size": 262,
  "hidden_act": "gelu",
  "layer_norm_eps": 1e-12,
  "use_query_residual": true,
  "cross_attention_shape_for_attention": "kv"
}"#;

/// A safetensors file holding `tensors` as `dtype` (`F32` or `F16`), each filled with a ramp.
fn safetensors(tensors: &[(String, Vec<usize>)], dtype: &str) -> Vec<u8> {
    let width = if dtype == "F16" { 2 } else { 4 };
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let count: usize = shape.iter().product();
        let start = data.len();
        for k in 0..count {
            let x = (k % 7) as f32 * 0.25 - 0.5;
            if width == 2 {
                data.extend(half::f16::from_f32(x).to_le_bytes());
            } else {
                data.extend(x.to_le_bytes());
            }
        }
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    header.push('}');
    // The header is padded to 8 bytes, as the safetensors writer does.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let config = PerceiverConfig::from_json_str(TINY_CONFIG).expect("the tiny config parses");
    let tensors = expected_tensors(&config).expect("the tiny config is valid");
    let dir = root.join("config_safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    for dtype in ["F32", "F16"] {
        let weights = safetensors(&tensors, dtype);
        let mut input = (TINY_CONFIG.len() as u16).to_le_bytes().to_vec();
        input.extend(TINY_CONFIG.as_bytes());
        input.extend(weights);
        let path = dir.join(format!("tiny_{}.bin", dtype.to_lowercase()));
        std::fs::write(&path, &input).unwrap();
        // The seed must open, or the fuzzer starts from nothing past the config check.
        let model = std::env::temp_dir().join(format!("perceiver-seed-{}", std::process::id()));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), TINY_CONFIG).unwrap();
        std::fs::write(model.join("model.safetensors"), safetensors(&tensors, dtype)).unwrap();
        let checkpoint =
            Checkpoint::open(&ModelFiles::from_dir(&model).unwrap()).expect("the seed model opens");
        assert_eq!(checkpoint.tensors().unwrap().len(), tensors.len());
        std::fs::remove_dir_all(&model).unwrap();
        println!(
            "{}: {} bytes, {} tensors",
            path.display(),
            input.len(),
            tensors.len()
        );
    }

    let dir = root.join("fill_mask_text");
    std::fs::create_dir_all(&dir).unwrap();
    let texts: [(u8, [u16; 2], &str); 6] = [
        (1, [0, 0], "The cat sat on the m[MASK]t."),
        (0, [0, 0], "[MASK:3] and [MASK:12] [CLS][SEP][PAD]"),
        (3, [4, 9], "plain text masked by range"),
        (1, [0, 0], "[MASK:0] [MASK:] [MASK:x] [MASK"),
        (1, [0, 0], "[MASK:99999999999999999999]"),
        (2, [1, 3], "héllo wörld [MASK]"),
    ];
    for (i, (flags, range, text)) in texts.iter().enumerate() {
        let mut input = vec![*flags];
        input.extend(range[0].to_le_bytes());
        input.extend(range[1].to_le_bytes());
        input.extend(text.as_bytes());
        std::fs::write(dir.join(format!("text_{i}.bin")), input).unwrap();
    }
    println!("{}: {} texts", dir.display(), texts.len());

    media_clip_seeds(&root.join("media"));
}

/// A WAV file: `format` 1 (integer) or 3 (float) samples of `bits`, or WAVE_FORMAT_EXTENSIBLE
/// (0xFFFE) carrying `format` as its subformat; `data` the interleaved samples' bytes.
fn wav(format: u16, extensible: bool, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut fmt = Vec::new();
    fmt.extend(if extensible { 0xFFFEu16 } else { format }.to_le_bytes());
    fmt.extend(channels.to_le_bytes());
    fmt.extend(rate.to_le_bytes());
    fmt.extend((rate * block as u32).to_le_bytes());
    fmt.extend(block.to_le_bytes());
    fmt.extend(bits.to_le_bytes());
    if extensible {
        fmt.extend(22u16.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        fmt.extend(0u32.to_le_bytes());
        // The subformat GUID: the format tag, then KSDATAFORMAT_SUBTYPE's fixed tail.
        fmt.extend((format as u32).to_le_bytes());
        fmt.extend([
            0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
        ]);
    }
    let mut out = b"RIFF".to_vec();
    out.extend((4 + 8 + fmt.len() as u32 + 8 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend((fmt.len() as u32).to_le_bytes());
    out.extend(fmt);
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

/// `media`'s inputs for the autoencoder's reader (the target's 2 frames of 16 × 16 and 96
/// samples at 1,200 Hz): WAV files behind selector 3, frames behind selector 4.
fn media_clip_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let rate = 1200;
    let wave = |i: usize| (i as f64 * 0.3).sin();
    let int16: Vec<u8> = (0..96)
        .flat_map(|i| ((wave(i) * 20000.0) as i16).to_le_bytes())
        .collect();
    let float_stereo: Vec<u8> = (0..2 * 96)
        .flat_map(|i| (wave(i / 2) as f32).to_le_bytes())
        .collect();
    let int24: Vec<u8> = (0..96)
        .flat_map(|i| ((wave(i) * 8e6) as i32).to_le_bytes()[..3].to_vec())
        .collect();
    let uint8: Vec<u8> = (0..100).map(|i| (128.0 + wave(i) * 100.0) as u8).collect();
    let seeds: [(&str, Vec<u8>); 9] = [
        ("wav_int16_mono.bin", wav(1, false, 1, rate, 16, &int16)),
        ("wav_float_stereo.bin", wav(3, false, 2, rate, 32, &float_stereo)),
        ("wav_int24_extensible.bin", wav(1, true, 1, rate, 24, &int24)),
        ("wav_uint8_mono.bin", wav(1, false, 1, rate, 8, &uint8)),
        ("wav_short.bin", wav(1, false, 1, rate, 16, &int16[..40])),
        ("wav_other_rate.bin", wav(1, false, 1, 48000, 16, &int16)),
        ("frame_png.bin", {
            let pixels = (0..16 * 16 * 3).map(|i| (i * 7 % 256) as u8).collect();
            let frame = perceiver::image::RgbImage::new(16, 16, pixels).unwrap();
            frame.png_bytes().unwrap()
        }),
        ("clip_y4m_444.bin", {
            let mut video = b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C444 XCOLORRANGE=FULL\n".to_vec();
            for t in 0..2 {
                video.extend(b"FRAME\n");
                video.extend((0..3 * 16 * 16).map(|i| ((i * 5 + t * 60) % 256) as u8));
            }
            video
        }),
        ("clip_y4m_420_30fps.bin", {
            let mut video = b"YUV4MPEG2 W16 H16 F30:1 C420jpeg\n".to_vec();
            video.extend(b"FRAME\n");
            video.extend((0..16 * 16 + 2 * 8 * 8).map(|i| (i % 251) as u8));
            video
        }),
    ];
    for (name, bytes) in seeds {
        let selector = if name.starts_with("wav") { 3u8 } else { 4 };
        let mut input = vec![selector];
        input.extend(bytes);
        std::fs::write(dir.join(name), input).unwrap();
    }
    println!("{}: 9 clip inputs (WAV files, frames)", dir.display());
}
