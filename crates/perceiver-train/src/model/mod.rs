//! The differentiable Perceiver IO masked language model on candle tensors: the model training
//! and fine-tuning differentiate.
//!
//! It lives with the trainer because only training needs gradients; inference runs the
//! `perceiver` crate's parts on packed weights. Both read and write their tensors under the same
//! names ([`perceiver::checkpoint::names`]) and are held to the same transformers fixtures.
//!
//! Bottom up: [`ops`] (candle custom ops with backward passes on the kernels), [`attention`],
//! [`position`], [`encoder`], [`decoder`], [`masked_lm`] (the task model), [`loading`].

pub mod attention;
pub mod decoder;
pub mod encoder;
pub mod loading;
pub mod masked_lm;
pub mod ops;
pub mod position;

pub use loading::{load_masked_lm, load_masked_lm_from, load_masked_lm_tensors};
pub use masked_lm::PerceiverForMaskedLM;
