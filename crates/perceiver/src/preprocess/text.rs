//! The byte preprocessor: each token id's embedding plus the trainable encoding of its position
//! (transformers' `PerceiverTextPreprocessor`; DeepMind's `TextPreprocessor`, `embed` +
//! `TrainablePositionEncoding`, added).

use super::InputArray;
use crate::checkpoint::names::TextPreprocessorNames;
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::position::TrainablePositions;
use crate::runtime::item_ranges;

/// Token ids → `embedding[id] + position[index]`.
#[derive(Debug, Clone)]
pub struct TextPreprocessor {
    /// `[vocab_size, channels]`; the masked LM's output projection shares it (tied).
    embeddings: Param,
    positions: TrainablePositions,
}

impl TextPreprocessor {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        names: &TextPreprocessorNames,
    ) -> Result<Self> {
        Ok(Self {
            embeddings: get(&names.embeddings.name)?,
            positions: TrainablePositions::load(get, &names.positions)?,
        })
    }

    /// The embedding table, `[vocab_size, channels]`.
    pub fn embeddings(&self) -> &Param {
        &self.embeddings
    }

    /// Ids the embedding table has rows for.
    pub fn vocab_size(&self) -> usize {
        self.embeddings.shape()[0]
    }

    /// The longest text, in ids, the position table covers.
    pub fn max_len(&self) -> usize {
        self.positions.num_positions()
    }

    /// Channels per id.
    pub fn channels(&self) -> usize {
        self.embeddings.shape()[1]
    }

    /// Checks that every text is non-empty, fits the position table and holds only known ids.
    pub fn check(&self, texts: &[&[u32]]) -> Result<()> {
        let vocab = self.vocab_size() as u32;
        for text in texts {
            if text.is_empty() {
                return Err(Error::InvalidInput("the input is empty".into()));
            }
            if text.len() > self.max_len() {
                return Err(Error::TooLong {
                    tokens: text.len(),
                    max: self.max_len(),
                });
            }
            if let Some(id) = text.iter().find(|&&id| id >= vocab) {
                return Err(Error::InvalidInput(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// The encoder's input for each (checked) text, at its own length.
    pub fn forward(&self, texts: &[&[u32]]) -> Result<InputArray> {
        self.check(texts)?;
        let channels = self.channels();
        let (table, positions) = (self.embeddings.data(), self.positions.table());
        let mut values = Vec::with_capacity(texts.iter().map(|t| t.len()).sum::<usize>() * channels);
        for text in texts {
            for (p, &id) in text.iter().enumerate() {
                let e = &table[id as usize * channels..][..channels];
                let pos = &positions[p * channels..][..channels];
                values.extend(e.iter().zip(pos).map(|(a, b)| a + b));
            }
        }
        Ok(InputArray {
            values,
            items: item_ranges(texts.iter().map(|t| t.len())),
        })
    }
}
