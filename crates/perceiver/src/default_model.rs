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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_model_loads_and_fills_a_mask() -> Result<()> {
        let fill = crate::FillMask::new(load(&Device::Cpu)?);
        let input = fill.prepare("Hello, w[MASK]rld!", false)?;
        let out = &fill.predict(&[input], 3)?[0];
        assert_eq!(out.masks.len(), 1);
        assert_eq!(out.masks[0].candidates.len(), 3);
        Ok(())
    }
}
