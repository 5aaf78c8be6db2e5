//! Writes the committed seed inputs of the fuzz targets (fuzz/seeds/<target>/): a valid tiny
//! model for `config_safetensors` (its tensors listed by the library's own name tree, so the
//! seed follows the code), and a few texts for `fill_mask_text`. `haiku_pickle`'s seeds are the
//! test fixtures, copied by scripts/fuzz.sh. Run from fuzz/: `cargo run --example make_seeds`.

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
}
