//! Perceiver IO (Jaegle et al., DeepMind, 2021) on [candle](https://github.com/huggingface/candle).
//!
//! A cross-attention maps an input of any size onto a small array of latents, a stack of
//! self-attention layers works on the latents only, and a decoder cross-attention maps the
//! latents to any set of outputs by querying them. The flagship model is DeepMind's byte-level
//! masked language model (`deepmind/language-perceiver`), numerically equal to transformers'
//! `PerceiverForMaskedLM`.
//!
//! Layout, bottom up: [`config`] (transformers' `config.json`), [`tokenizer`] (bytes),
//! [`attention`] (`attend`, cross- and self-attention layers), [`position`], [`encoder`],
//! [`decoder`], [`heads`] (task models), [`loading`] (directories, hub ids, weight checks),
//! [`engine`] (the fast inference path: the same model on plain buffers and hand-written kernels)
//! and [`fill_mask`] (the API front ends call, on the engine).
//!
//! # Example
//! ```
//! use perceiver::{FillMask, PerceiverConfig};
//!
//! # fn main() -> perceiver::Result<()> {
//! // A tiny randomly initialised model; `perceiver::load_engine_from` loads real ones.
//! let config = PerceiverConfig {
//!     num_latents: 8, d_latents: 32, d_model: 16, num_self_attends_per_block: 2,
//!     max_position_embeddings: 64, ..Default::default()
//! };
//! let fill = FillMask::new(perceiver::loading::random_engine(&config)?);
//! let input = fill.prepare("Hello [MASK:5]!", false)?;
//! let out = &fill.predict(&[input], 3)?[0];
//! assert_eq!(out.masks.len(), 5);
//! assert_eq!(out.masks[0].candidates.len(), 3);
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod config;
pub mod decoder;
#[cfg(feature = "default-model")]
pub mod default_model;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod fill_mask;
pub mod heads;
pub mod loading;
pub mod ops;
pub mod pickle_check;
pub mod position;
pub mod tokenizer;

pub use candle_core::Device;
pub use config::{Activation, PerceiverConfig};
pub use engine::{MaskedLmEngine, Precision};
pub use error::{Error, Result};
pub use fill_mask::{Candidate, FillMask, FillMaskOutput, MaskPrediction};
pub use heads::masked_lm::PerceiverForMaskedLM;
pub use loading::{
    load_engine, load_engine_as, load_engine_from, load_engine_from_as, load_masked_lm, load_masked_lm_from,
    LoadOptions, ModelFiles,
};
pub use tokenizer::{BytesTokenizer, MaskedText};
