//! Position encodings. The language model uses trainable tables, one row per position, added to
//! the byte embeddings (inputs) or used as the decoder's queries (outputs).
//! Mirrors transformers' `PerceiverTrainablePositionEncoding` and DeepMind's
//! `TrainablePositionEncoding`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;
use perceiver::checkpoint::names::TensorName;

/// A learned `[num_positions, channels]` table.
#[derive(Debug, Clone)]
pub struct TrainablePositionEncoding {
    table: Tensor,
}

impl TrainablePositionEncoding {
    /// The table named `name`, from `vb` at the checkpoint's root.
    pub fn new(name: &TensorName, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            table: crate::model::attention::variable(vb, name)?,
        })
    }

    /// Positions in the table (its rows).
    pub fn num_positions(&self) -> usize {
        self.table.dims()[0]
    }

    /// The encodings of positions `0..len`: `[len, channels]`.
    pub fn first(&self, len: usize) -> Result<Tensor> {
        Ok(self.table.narrow(0, 0, len)?)
    }

    /// The encodings of arbitrary positions.
    ///
    /// # Shapes
    /// `positions`: `[batch, n]` u32 indices below [`Self::num_positions`]. Returns
    /// `[batch, n, channels]`.
    pub fn select(&self, positions: &Tensor) -> Result<Tensor> {
        let (batch, n) = positions.dims2()?;
        let rows = self.table.index_select(&positions.flatten_all()?, 0)?;
        Ok(rows.reshape((batch, n, self.table.dims()[1]))?)
    }
}
