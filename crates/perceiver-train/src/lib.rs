//! Training byte-level Perceiver IO masked language models, fine-tuning them into text
//! classifiers, and fine-tuning the ImageNet classifiers on image folders.
//!
//! Bottom up: [`corpus`] (files → shuffled windows, held-out split), [`masking`] (which bytes,
//! what replaces them), [`init`] (DeepMind's initialisation), [`optim`] (AdamW, schedule,
//! clipping; [`gradients`] collects what it updates with), [`objective`] (batches, the masked-LM
//! loss, evaluation), [`labelled`] and [`classification`] (labelled texts and image folders, the
//! classifier's start, loss and confusion table), [`checkpoint`] (atomic, transformers-compatible directories),
//! [`metrics`] and [`plot`] (progress on disk), and [`trainer`] (the one loop for both). [`model`]
//! is the differentiable model (candle); it reads and writes the same tensor names as the inference
//! library, so a run's checkpoints load anywhere a model does.

#![warn(missing_docs)]

mod atomic;
pub mod checkpoint;
pub mod classification;
pub mod config;
pub mod corpus;
pub mod error;
pub mod gradients;
pub mod init;
pub mod labelled;
pub mod masking;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod presets;
pub mod trainer;

/// The device tensors live on (the CPU here), re-exported so callers need not name candle.
pub use candle_core::Device;
pub use config::{Task, TrainConfig};
pub use error::{Error, Result};
pub use masking::{Masking, MaskingStrategy};
pub use metrics::StepMetrics;
pub use model::{ClassifierInputs, PerceiverClassifier, PerceiverForMaskedLM};
pub use objective::{evaluate, EvalResult};
pub use trainer::{Evaluation, Event, ModelInit, Outcome, Trainer};
