//! Tasks: a user's inputs in, answers out, on a [`PerceiverModel`](crate::PerceiverModel). A task
//! validates its inputs once, batches them, runs the model's parts and ranks or formats the
//! result; front ends (the CLI, the HTTP service) only parse and print.

pub mod autoencode;
pub mod classify;
pub mod fill_mask;
pub mod flow;

// Every task and its answer types, here and (the same list) at the crate root.
pub use autoencode::{AutoencodeOutput, Autoencoder};
pub use classify::{Classifier, LabelScore};
pub use fill_mask::{Candidate, FillMask, FillMaskOutput, MaskPrediction};
pub use flow::{FlowOutput, OpticalFlow, Tile};
