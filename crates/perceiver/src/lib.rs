//! Perceiver IO (Jaegle et al., DeepMind, 2021): inference on hand-written CPU kernels.
//!
//! A Perceiver IO model is five parts in a row, the same for every task: a preprocessor turns the
//! input into an array ([`preprocess`]), the encoder cross-attends it onto a small array of
//! learned latents ([`encoder`]), a stack of self-attention layers works on the latents only
//! ([`process`]), a decoder builds output queries and cross-attends the latents ([`decoder`]),
//! and a postprocessor turns its rows into the answer ([`postprocess`]). [`attention`] is the
//! block they share, on [`layers`]; [`model`] composes the parts from a transformers
//! `config.json` ([`config`]); [`checkpoint`] reads weights under one tree of tensor names and
//! [`loader`] loads a model from any source ([`Loader`]); [`tasks`] turn inputs into answers
//! ([`FillMask`], [`Classifier`], [`OpticalFlow`], [`Autoencoder`]; each with its answer types,
//! re-exported here and in [`tasks`]).
//! [`image`] decodes image files and prepares them as transformers' Perceiver image processor does;
//! [`flow`] holds optical flow fields, draws them in the standard colours (as the library's own
//! [`image::RgbImage`], so no other crate's version is part of the API) and reads and writes
//! `.flo` files.
//!
//! The flagship model is DeepMind's byte-level masked language model
//! (`deepmind/language-perceiver`), numerically equal to transformers' `PerceiverForMaskedLM`.
//! The differentiable model (for training) is in the `perceiver-train` crate.
//!
//! # Example
//! ```
//! use perceiver::{FillMask, Loader, Precision};
//!
//! # fn main() -> perceiver::Result<()> {
//! // "default" is the small model built into the library; a directory or hub id loads others.
//! let model = Loader::new("default").precision(Precision::F32).load()?;
//! let fill = FillMask::new(model)?;
//! let input = fill.prepare("The cat sat on the m[MASK]t.", false)?;
//! let out = &fill.predict(&[input], 3)?[0];
//! assert_eq!(out.masks.len(), 1);
//! assert_eq!(out.masks[0].candidates.len(), 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Speed
//! A pass allocates large buffers that live for one layer. glibc's allocator hands many of them
//! back to the kernel when they are freed, so that the next pass faults and zeroes their pages
//! again: with it, a batch of texts runs markedly slower than with
//! [mimalloc](https://crates.io/crates/mimalloc), which keeps them (figures in the repository's
//! `docs/BENCHMARKS.md`; a pass over one text is hardly affected). A program that calls this library gets the `perceiver` tool's speed by
//! making mimalloc its global allocator:
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
//! ```
//! Passes run on rayon's global pool (one thread per core unless the program builds it
//! otherwise); [`PerceiverModel::set_threads`] splits a model's work over fewer.

#![warn(missing_docs)]

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod conv;
pub mod decoder;
#[cfg(feature = "default-model")]
pub mod default_model;
pub mod encoder;
pub mod error;
pub mod flow;
pub mod image;
pub mod layers;
pub mod loader;
pub mod model;
pub mod position;
pub mod postprocess;
pub mod preprocess;
pub mod process;
mod runtime;
pub mod tasks;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, LoadOptions, ModelFiles, Param};
pub use config::{Activation, Architecture, PerceiverConfig};
pub use error::{Error, Result};
pub use flow::{FlowField, FlowStats};
pub use layers::{Linear, Precision};
pub use loader::{Loader, BUILT_IN};
pub use model::{DecodedQueries, EncodedClip, ModelInput, MultimodalOutput, PerceiverModel, PhaseTimes};
pub use preprocess::Pixels;
pub use tasks::{
    AutoencodeOutput, Autoencoder, Candidate, Classifier, FillMask, FillMaskOutput, FlowOutput, LabelScore,
    MaskPrediction, OpticalFlow, Tile,
};
pub use tokenizer::{BytesTokenizer, MaskedText};
