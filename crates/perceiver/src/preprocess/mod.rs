//! Preprocessors: a task's input → the array the encoder cross-attends, `[Σ rows, channels]`
//! with each batch item's rows consecutive (no padding).
//!
//! A new modality adds a preprocessor here (a file and a [`Preprocessor`] variant); the encoder,
//! the latent stack and the kernels do not change.

pub mod flow;
pub mod image;
pub mod multimodal;
pub mod text;

pub use flow::{FlowPreprocessor, FramePair};
pub use image::{ImagePreprocessor, Pixels};
pub use multimodal::{MultimodalInput, MultimodalPreprocessor};
pub use text::TextPreprocessor;

use std::ops::Range;

use rayon::prelude::*;

use crate::error::Result;
use crate::layers::Precision;
use crate::runtime::item_ranges;

/// The preprocessors the models are built from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Preprocessor {
    /// UTF-8 bytes (token ids) + trainable positions.
    Text(TextPreprocessor),
    /// Pixels through a convolution or as they are, with trainable or Fourier positions.
    Image(ImagePreprocessor),
    /// Two frames' 3×3 patches, projected, with Fourier positions.
    Flow(FlowPreprocessor),
    /// Audio patches and video patches with Fourier positions, and a masked label row.
    Multimodal(MultimodalPreprocessor),
}

/// A preprocessor's output: the encoder's input array.
#[derive(Debug, Clone, PartialEq)]
pub struct InputArray {
    /// `[Σ rows, channels]` row-major.
    pub values: Vec<f32>,
    /// Each item's rows.
    pub items: Vec<Range<usize>>,
}

/// One item's rows of the encoder's input made on demand, a block at a time: an input too long
/// to hold whole with its keys and values (an image's 50,176 pixels) is cross-attended block by
/// block ([`crate::encoder::Encoder::forward_streamed`]), and the flow decoder's queries (the
/// same rows as its encoder's input) are made a chunk at a time.
pub(crate) trait RowSource: Sync {
    /// Rows of the item.
    fn len(&self) -> usize;

    /// Channels per row.
    fn channels(&self) -> usize;

    /// Writes rows `rows` into `out`, `rows.len() × channels()` values.
    fn fill(&self, rows: Range<usize>, out: &mut [f32]);
}

/// Rows a rayon task fills: enough to pay for the task.
const FILL_ROWS_PER_TASK: usize = 256;

/// A [`RowSource::fill`] over the pool: `out` holds `rows.len()` rows of `channels`, and each is
/// written by `row(r, out_row)`, r its index in the source.
pub(crate) fn fill_rows(
    rows: Range<usize>,
    channels: usize,
    out: &mut [f32],
    row: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert_eq!(out.len(), rows.len() * channels, "rows of {channels} channels");
    out.par_chunks_mut(FILL_ROWS_PER_TASK * channels)
        .enumerate()
        .for_each(|(task, block)| {
            let first = rows.start + task * FILL_ROWS_PER_TASK;
            for (r, values) in (first..).zip(block.chunks_exact_mut(channels)) {
                row(r, values);
            }
        });
}

/// Each source's rows one after another, whole (the preprocessors' `forward`, for callers that
/// want the array a model's pass makes a block at a time): each source is taken from `sources`,
/// filled in and dropped before the next is made.
pub(crate) fn whole_array<S: RowSource>(sources: impl IntoIterator<Item = Result<S>>) -> Result<InputArray> {
    let mut values = Vec::new();
    let mut rows_per_item = Vec::new();
    for source in sources {
        let source = source?;
        let start = values.len();
        values.resize(start + source.len() * source.channels(), 0.0);
        source.fill(0..source.len(), &mut values[start..]);
        rows_per_item.push(source.len());
    }
    Ok(InputArray {
        values,
        items: item_ranges(rows_per_item),
    })
}

/// A borrowed source, for a caller that keeps its sources (the flow model's rows serve the
/// encoder, then the decoder).
impl<S: RowSource + ?Sized> RowSource for &S {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn channels(&self) -> usize {
        (**self).channels()
    }

    fn fill(&self, rows: Range<usize>, out: &mut [f32]) {
        (**self).fill(rows, out)
    }
}

#[cfg(test)]
impl InputArray {
    /// Item `item`'s rows as a [`RowSource`]: an array already made, given to the streamed
    /// paths in tests, which compare them with the paths that take the whole array.
    pub(crate) fn item_rows(&self, item: usize) -> ArrayRows<'_> {
        let total = self.items.last().map_or(0, |r| r.end);
        ArrayRows {
            values: &self.values,
            channels: self.values.len().checked_div(total).unwrap_or(0),
            rows: self.items[item].clone(),
        }
    }
}

/// One item's rows of an [`InputArray`] ([`InputArray::item_rows`]).
#[cfg(test)]
pub(crate) struct ArrayRows<'a> {
    values: &'a [f32],
    channels: usize,
    rows: Range<usize>,
}

#[cfg(test)]
impl RowSource for ArrayRows<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn fill(&self, rows: Range<usize>, out: &mut [f32]) {
        let c = self.channels;
        let first = self.rows.start + rows.start;
        out.copy_from_slice(&self.values[first * c..(first + rows.len()) * c]);
    }
}

impl Preprocessor {
    /// Channels of the array it makes.
    pub fn channels(&self) -> usize {
        match self {
            Self::Text(text) => text.channels(),
            Self::Image(image) => image.channels(),
            Self::Flow(flow) => flow.channels(),
            Self::Multimodal(m) => m.channels(),
        }
    }

    pub(crate) fn set_precision(&mut self, precision: Precision) {
        match self {
            // Table look-ups: no products to pack.
            Self::Text(_) | Self::Multimodal(_) => {}
            Self::Image(image) => image.set_precision(precision),
            Self::Flow(flow) => flow.set_precision(precision),
        }
    }
}
