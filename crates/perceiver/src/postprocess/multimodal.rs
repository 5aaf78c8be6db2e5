//! The multimodal autoencoder's outputs: each modality's decoded rows through its own linear
//! layer (transformers' `PerceiverMultimodalPostprocessor` over `PerceiverAudioPostprocessor`,
//! `PerceiverProjectionPostprocessor` and `PerceiverClassificationPostprocessor`; DeepMind's
//! `AudioPostprocessor`, `ProjectionPostprocessor`, `ClassificationPostprocessor`): an audio
//! patch's samples, a pixel's RGB, the label's logits.

use crate::checkpoint::names::{LinearNames, Modality};
use crate::checkpoint::Param;
use crate::error::Result;
use crate::layers::{Dense, Precision};

/// One linear layer per modality.
#[derive(Debug, Clone)]
pub struct MultimodalHeads {
    /// Audio, image, label.
    heads: [Dense; 3],
}

impl MultimodalHeads {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, names: &[LinearNames; 3]) -> Result<Self> {
        let [audio, image, label] = names;
        Ok(Self {
            heads: [
                Dense::load(get, audio)?,
                Dense::load(get, image)?,
                Dense::load(get, label)?,
            ],
        })
    }

    /// Values per decoded row of `modality`: samples per patch, 3, labels.
    pub fn outputs(&self, modality: Modality) -> usize {
        self.heads[modality as usize].out_dim()
    }

    /// They stay f32 in bf16 mode: a few outputs per row, and their rounding would reach every
    /// value.
    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        for head in &mut self.heads {
            head.set_precision(Precision::F32);
        }
    }

    /// `[rows, output_num_channels]` of `modality` → `[rows, outputs(modality)]`.
    pub(crate) fn forward(&self, modality: Modality, hidden: &[f32], threads: usize) -> Vec<f32> {
        self.heads[modality as usize].forward(hidden, threads)
    }
}
