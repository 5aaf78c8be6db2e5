//! Tasks: a user's inputs in, answers out, on a [`PerceiverModel`](crate::PerceiverModel). A task
//! validates its inputs once, batches them, runs the model's parts and ranks or formats the
//! result; front ends (the CLI, the HTTP service) only parse and print.

pub mod autoencode;
pub mod classify;
pub mod fill_mask;
pub mod flow;

/// Whether a directory entry is hidden: its name starts with a dot (macOS's `._photo.jpg` beside
/// an image among them). The listings of a directory of inputs (images, frames, a training
/// corpus) pass these over.
pub fn is_hidden(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

// Every task and its answer types, here and (the same list) at the crate root.
pub use autoencode::{AutoencodeOutput, Autoencoder};
pub use classify::{Classifier, LabelScore};
pub use fill_mask::{Candidate, FillMask, FillMaskOutput, MaskPrediction};
pub use flow::{FlowOutput, OpticalFlow, Tile};
