//! The small byte-level masked language model built into the library, so that a fresh checkout
//! fills masks offline: `perceiver fill-mask "..."` with no `--model`, or `--model default`
//! ([`crate::loader::BUILT_IN`]); [`crate::Loader`] reads these bytes in place.
//!
//! Trained with `perceiver train` by `scripts/train_default_model.sh` on public-domain and
//! freely licensed English from package registries; its card, data sources and held-out scores
//! are in `models/default/`. The files here are those of `models/default/`, compiled in.

/// `models/default/config.json`.
pub const CONFIG_JSON: &str = include_str!("../../../models/default/config.json");

/// `models/default/model.safetensors`.
pub static WEIGHTS: &[u8] = include_bytes!("../../../models/default/model.safetensors");
