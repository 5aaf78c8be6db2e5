//! The differentiable Perceiver IO models on candle tensors: the models training and fine-tuning
//! differentiate (the byte masked LM and the classifiers of bytes and of images).
//!
//! They live with the trainer because only training needs gradients; inference runs the
//! `perceiver` crate's parts on packed weights. Both read and write their tensors under the same
//! names ([`perceiver::checkpoint::names`]) and are held to the same transformers fixtures.
//!
//! Bottom up: [`ops`] (candle custom ops with backward passes on the kernels), [`attention`],
//! [`position`], [`text`], [`image`], [`encoder`], [`decoder`], the task models [`masked_lm`] and
//! [`classifier`], [`loading`].

pub mod attention;
pub mod classifier;
pub mod decoder;
pub mod encoder;
pub mod image;
pub mod loading;
pub mod masked_lm;
pub mod ops;
pub mod position;
pub mod text;

pub use classifier::{ClassifierInputs, PerceiverClassifier};
pub use loading::{
    checkpoint_tensors, load_classifier_from, load_masked_lm, load_masked_lm_from, load_masked_lm_tensors,
};
pub use masked_lm::PerceiverForMaskedLM;
