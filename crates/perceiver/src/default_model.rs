//! The small byte-level masked language model built into the library, so that a fresh checkout
//! fills masks offline: `perceiver fill-mask "..."` with no `--model`, or `--model default`.
//!
//! Trained with `perceiver train` by `scripts/train_default_model.sh` on public-domain and
//! freely licensed English from package registries; its card, data sources and held-out scores
//! are in `models/default/`. The files here are those of `models/default/`, compiled in.

use candle_core::Device;

use crate::error::Result;
use crate::heads::masked_lm::PerceiverForMaskedLM;

/// The model name that selects this model wherever a model directory or hub id is accepted.
pub const NAME: &str = "default";

/// `models/default/config.json`.
pub const CONFIG_JSON: &str = include_str!("../../../models/default/config.json");

/// `models/default/model.safetensors`.
pub static WEIGHTS: &[u8] = include_bytes!("../../../models/default/model.safetensors");

/// Loads the built-in model (its tensors are checked like any other model's).
pub fn load(device: &Device) -> Result<PerceiverForMaskedLM> {
    crate::loading::load_masked_lm_from_memory(CONFIG_JSON, WEIGHTS, device)
}

/// The built-in model in the inference engine, its weights read in place from the binary, its
/// products in `precision`.
pub fn engine(precision: crate::engine::Precision) -> Result<crate::engine::MaskedLmEngine> {
    crate::loading::load_engine_from_static(CONFIG_JSON, WEIGHTS, precision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_model_loads_and_fills_a_mask() -> Result<()> {
        let fill = crate::FillMask::new(engine(crate::Precision::F32)?);
        let input = fill.prepare("Hello, w[MASK]rld!", false)?;
        let out = &fill.predict(&[input], 3)?[0];
        assert_eq!(out.masks.len(), 1);
        assert_eq!(out.masks[0].candidates.len(), 3);
        Ok(())
    }

    /// The engine (weights read in place from the binary) and the candle model give the same
    /// logits on the trained weights.
    #[test]
    fn engine_and_candle_model_agree() -> Result<()> {
        let text = "The quick brown fox jumps over the lazy dog, and then it runs back home.";
        let ids = crate::BytesTokenizer.encode(text);
        let positions: Vec<usize> = (0..ids.len()).step_by(3).collect();
        let fast = engine(crate::Precision::F32)?.logits_at(&[&ids], &[&positions])?;
        let model = load(&Device::Cpu)?;
        let ids_t = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let pos_t = candle_core::Tensor::new(pos.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let slow = model
            .decode(&model.encode(&ids_t, None)?, &pos_t)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let worst = fast
            .iter()
            .zip(&slow)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("built-in model, engine vs candle: max |Δ logit| = {worst:.2e}");
        assert_eq!(fast.len(), slow.len());
        assert!(worst < 1e-4, "max |Δ logit| {worst}");
        Ok(())
    }
}
