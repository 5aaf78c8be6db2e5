//! The byte preprocessor: each id's embedding plus a learned position (transformers'
//! `PerceiverTextPreprocessor`). The masked LM and the sequence classifier share it; the masked
//! LM also reuses its table as the tied output projection.

use candle_core::{Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::error::Result;
use crate::model::attention::variable;
use crate::model::position::TrainablePositionEncoding;
use perceiver::checkpoint::names::TextPreprocessorNames;
use perceiver::error::Error;

/// Byte embeddings `[vocab_size, d_model]` plus learned positions `[max_len, d_model]`.
#[derive(Debug, Clone)]
pub struct TextPreprocessor {
    embeddings: Embedding,
    positions: TrainablePositionEncoding,
}

impl TextPreprocessor {
    /// The preprocessor named `names`, from `vb` at the checkpoint's root.
    pub fn new(names: &TextPreprocessorNames, vb: &VarBuilder) -> Result<Self> {
        let table = variable(vb, &names.embeddings)?;
        let width = table.dims()[1];
        Ok(Self {
            embeddings: Embedding::new(table, width),
            positions: TrainablePositionEncoding::new(&names.positions, vb)?,
        })
    }

    /// The longest input (in ids) it has positions for.
    pub fn max_len(&self) -> usize {
        self.positions.num_positions()
    }

    /// The embedding table, `[vocab_size, d_model]`.
    pub fn table(&self) -> &Tensor {
        self.embeddings.embeddings()
    }

    /// The encoder's input array.
    ///
    /// # Shapes
    /// `input_ids`: `[batch, len]` u32 with `1 ≤ len ≤ max_len()`. Returns `[batch, len, d_model]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        if len == 0 {
            return Err(Error::InvalidInput("the input is empty".into()).into());
        }
        if len > self.max_len() {
            return Err(Error::InvalidInput(format!(
                "input is {len} tokens long, the model takes at most {}",
                self.max_len()
            ))
            .into());
        }
        let embedded = self.embeddings.forward(input_ids)?;
        Ok(embedded.broadcast_add(&self.positions.first(len)?)?)
    }
}
