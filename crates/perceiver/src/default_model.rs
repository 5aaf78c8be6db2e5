//! The small byte-level masked language model built into the library, so that a fresh checkout
//! fills masks offline: `perceiver fill-mask "..."` with no `--model`, or `--model default`
//! ([`crate::checkpoint::BUILT_IN`]).
//!
//! Trained with `perceiver train` by `scripts/train_default_model.sh` on public-domain and
//! freely licensed English from package registries; its card, data sources and held-out scores
//! are in `models/default/`. The files here are those of `models/default/`, compiled in.

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// `models/default/config.json`.
pub const CONFIG_JSON: &str = include_str!("../../../models/default/config.json");

/// `models/default/model.safetensors`.
pub static WEIGHTS: &[u8] = include_bytes!("../../../models/default/model.safetensors");

/// The built-in model's checkpoint, its weights read in place from the binary (checked like any
/// other model's).
pub fn checkpoint() -> Result<Checkpoint> {
    Checkpoint::from_static(CONFIG_JSON, WEIGHTS, "<built-in model>")
}

#[cfg(test)]
mod tests {
    use crate::{FillMask, Loader, Result};

    #[test]
    fn the_built_in_model_loads_and_fills_a_mask() -> Result<()> {
        let fill = FillMask::new(Loader::new("default").load()?)?;
        let input = fill.prepare("Hello, w[MASK]rld!", false)?;
        let out = &fill.predict(&[input], 3)?[0];
        assert_eq!(out.masks.len(), 1);
        assert_eq!(out.masks[0].candidates.len(), 3);
        Ok(())
    }
}
