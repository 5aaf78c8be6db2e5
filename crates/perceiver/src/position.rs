//! Position encodings. The language model's are trainable tables, one row per position, added to
//! the byte embeddings (input) or used as the decoder's queries (output): transformers'
//! `PerceiverTrainablePositionEncoding`, DeepMind's `TrainablePositionEncoding`.

use crate::checkpoint::names::TensorName;
use crate::checkpoint::Param;
use crate::error::{Error, Result};

/// A learned `[num_positions, channels]` table.
#[derive(Debug, Clone)]
pub struct TrainablePositions {
    table: Param,
}

impl TrainablePositions {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, name: &TensorName) -> Result<Self> {
        Ok(Self {
            table: get(&name.name)?,
        })
    }

    /// How many positions the table has.
    pub fn num_positions(&self) -> usize {
        self.table.shape()[0]
    }

    /// Channels per position.
    pub fn channels(&self) -> usize {
        self.table.shape()[1]
    }

    /// The whole table, `[num_positions, channels]` row-major.
    pub fn table(&self) -> &[f32] {
        self.table.data()
    }

    /// The row of `position`; an error past the table.
    pub fn row(&self, position: usize) -> Result<&[f32]> {
        if position >= self.num_positions() {
            return Err(Error::InvalidInput(format!(
                "position {position} is outside the model's {}",
                self.num_positions()
            )));
        }
        let c = self.channels();
        Ok(&self.table.data()[position * c..][..c])
    }
}
