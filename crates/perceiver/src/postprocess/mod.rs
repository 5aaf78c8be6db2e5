//! Postprocessors: the decoder's rows → the task's numbers (transformers' `output_postprocessor`
//! and the task heads' final projections).
//!
//! A new task adds a postprocessor here (a file and a [`Postprocessor`] variant).

pub mod classifier;
pub mod embedding;
pub mod flow;
pub mod multimodal;

pub use classifier::ClassifierHead;
pub use embedding::EmbeddingDecoder;
pub use flow::FlowHead;
pub use multimodal::MultimodalHeads;

use crate::layers::Precision;

/// The postprocessors the models are built from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Postprocessor {
    /// The masked LM's tied projection onto the vocabulary: logits.
    Embedding(EmbeddingDecoder),
    /// A classifier's projection onto its labels: logits.
    Classifier(ClassifierHead),
    /// The optical-flow model's two channels per pixel.
    Flow(FlowHead),
    /// The multimodal autoencoder's projection per modality (its rows are split by modality in
    /// [`crate::PerceiverModel::decode_multimodal`]).
    Multimodal(Box<MultimodalHeads>),
}

impl Postprocessor {
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        match self {
            Self::Embedding(e) => e.set_precision(precision),
            Self::Classifier(c) => c.set_precision(precision),
            Self::Flow(f) => f.set_precision(precision),
            Self::Multimodal(m) => m.set_precision(precision),
        }
    }

    /// Values per decoded row (the vocabulary size for the masked LM, the labels for a
    /// classifier, 2 for flow, the labels for the multimodal autoencoder's label row).
    pub fn outputs(&self) -> usize {
        match self {
            Self::Embedding(e) => e.vocab_size(),
            Self::Classifier(c) => c.num_labels(),
            Self::Flow(f) => f.channels(),
            Self::Multimodal(m) => m.outputs(crate::checkpoint::names::Modality::Label),
        }
    }

    /// `[rows, decoder channels]` → `[rows, outputs]` (the multimodal autoencoder's rows taken
    /// as label rows).
    pub(crate) fn forward(&self, hidden: &[f32], threads: usize) -> Vec<f32> {
        match self {
            Self::Embedding(e) => e.forward(hidden, threads),
            Self::Classifier(c) => c.forward(hidden, threads),
            Self::Flow(f) => f.forward(hidden, threads),
            Self::Multimodal(m) => m.forward(crate::checkpoint::names::Modality::Label, hidden, threads),
        }
    }
}
