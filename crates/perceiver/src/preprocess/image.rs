//! The image preprocessors of DeepMind's three ImageNet classifiers (transformers'
//! `PerceiverImagePreprocessor` as each `PerceiverForImageClassification*` class builds it;
//! DeepMind's `ImagePreprocessor`): pixels → one row per position, features then position
//! encoding, concatenated.
//!
//! - learned: a 1×1 convolution to 256 channels, and a trainable position per pixel projected
//!   by a linear layer (constant, so projected once when the weights are packed);
//! - Fourier: the pixels themselves, with Fourier features of their coordinates;
//! - conv: a 7×7 stride-2 convolution with BatchNorm (folded into it) and ReLU, a 3×3 stride-2
//!   max-pool, then Fourier features. Padded as transformers pads (224 → 55) or, when the config
//!   says so ([`StemPadding::Same`]), as DeepMind's Haiku stem does (224 → 56).
//!
//! The rows are made on demand, a block at a time: an image's 50,176 rows of 261 or 512
//! channels are never held whole while the encoder cross-attends them. Fourier features come
//! from per-axis tables.

use std::ops::Range;

use super::{fill_rows, whole_array, InputArray, RowSource};
use crate::checkpoint::names::ImagePreprocessorNames;
use crate::checkpoint::Param;
use crate::config::{FourierSpec, ImageInputSpec, StemPadding};
use crate::conv::{max_pool_padded, relu, Conv2d, Padding};
use crate::error::{Error, Result};
pub use crate::image::Pixels;
use crate::layers::{Dense, Precision};
use crate::position::{FourierGrid, TrainablePositions};
use crate::runtime::on_pool;

// One per model, built once at load: boxing the large variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Kind {
    Conv1x1 {
        conv: Conv2d,
        positions: TrainablePositions,
        projection: Dense,
        /// `[image_size², channels]`: the positions after their projection.
        projected: Vec<f32>,
        image_size: usize,
    },
    Pixels {
        fourier: FourierSpec,
    },
    Conv {
        conv: Conv2d,
        fourier: FourierSpec,
        /// The max-pool's padding (the convolution holds its own).
        pool_padding: Padding,
    },
}

/// Pixels → the encoder's input rows.
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    kind: Kind,
    spec: ImageInputSpec,
}

/// The conv stem's max-pool: 3×3 windows every 2 pixels.
const POOL_WINDOW: usize = 3;
const POOL_STRIDE: usize = 2;
/// The conv stem's convolution stride.
const STEM_STRIDE: usize = 2;

impl ImagePreprocessor {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        spec: ImageInputSpec,
        names: &ImagePreprocessorNames,
        image_size: usize,
    ) -> Result<Self> {
        let kind = match (spec, names) {
            (
                ImageInputSpec::Conv1x1 { .. },
                ImagePreprocessorNames::Conv1x1 {
                    conv,
                    positions,
                    projection,
                },
            ) => Kind::Conv1x1 {
                conv: Conv2d::load(get, conv, 1, Padding::Fixed { before: 0, after: 0 })?,
                positions: TrainablePositions::load(get, positions)?,
                projection: Dense::load(get, projection)?,
                projected: Vec::new(),
                image_size,
            },
            (ImageInputSpec::Pixels { fourier }, ImagePreprocessorNames::Pixels) => Kind::Pixels { fourier },
            (
                ImageInputSpec::Conv { fourier, padding, .. },
                ImagePreprocessorNames::Conv { conv, batchnorm },
            ) => {
                // transformers pads the convolution by a fixed k − 1 and the pool not at all;
                // DeepMind's stem (Haiku, `'SAME'`) pads both by the input's size.
                let (conv_padding, pool_padding) = match padding {
                    StemPadding::Transformers => (
                        Conv2d::same_padding(conv.weight.shape[2]),
                        Padding::Fixed { before: 0, after: 0 },
                    ),
                    StemPadding::Same => (Padding::Same, Padding::Same),
                };
                let mut stem = Conv2d::load(get, conv, STEM_STRIDE, conv_padding)?;
                stem.fold_batch_norm(get, batchnorm)?;
                Kind::Conv {
                    conv: stem,
                    fourier,
                    pool_padding,
                }
            }
            _ => {
                return Err(Error::InvalidConfig(
                    "the image preprocessor's tensor names do not match its kind".into(),
                ))
            }
        };
        Ok(Self { kind, spec })
    }

    /// Channels of each row it makes.
    pub fn channels(&self) -> usize {
        self.spec.channels()
    }

    /// The one image size the model takes, if it has one (the learned positions cover
    /// `image_size × image_size` pixels); the Fourier models take any size.
    pub fn required_size(&self) -> Option<(usize, usize)> {
        match &self.kind {
            Kind::Conv1x1 { image_size, .. } => Some((*image_size, *image_size)),
            _ => None,
        }
    }

    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        // The convolutions stay f32: they are a small part of the work and come first.
        match &mut self.kind {
            Kind::Conv1x1 {
                conv,
                positions,
                projection,
                projected,
                ..
            } => {
                conv.set_precision(Precision::F32);
                projection.set_precision(Precision::F32);
                let threads = rayon::current_num_threads();
                *projected = on_pool(|| projection.forward(positions.table(), threads));
            }
            Kind::Pixels { .. } => {}
            Kind::Conv { conv, .. } => conv.set_precision(Precision::F32),
        }
    }

    /// Checks each image ([`Pixels::check`]: its values fill its size and are finite) and its
    /// size against what the model takes.
    pub fn check(&self, images: &[&Pixels]) -> Result<()> {
        for image in images {
            image.check()?;
            if let Some((h, w)) = self.required_size() {
                if (image.height, image.width) != (h, w) {
                    return Err(Error::InvalidInput(format!(
                        "the model takes {h}x{w} images (its position table has a row per pixel), not {}x{}",
                        image.height, image.width
                    )));
                }
            }
        }
        Ok(())
    }

    /// One checked image's rows of the encoder's input, made on demand (the convolutions run
    /// here; the Fourier variant keeps the pixels as they are).
    pub(crate) fn rows<'a>(&'a self, image: &'a Pixels, threads: usize) -> Result<ImageRows<'a>> {
        self.check(&[image])?;
        let (h, w) = (image.height, image.width);
        let (features, rows, positions) = match &self.kind {
            Kind::Conv1x1 { conv, projected, .. } => {
                let (features, fh, fw) = conv.forward(&image.values, h, w, threads)?;
                (Features::Rows(features), fh * fw, Positions::Table(projected))
            }
            Kind::Pixels { fourier } => (
                Features::Planes(&image.values),
                h * w,
                Positions::Fourier(FourierGrid::new(fourier, [h, w])),
            ),
            Kind::Conv {
                conv,
                fourier,
                pool_padding,
            } => {
                let (mut features, ch, cw) = conv.forward(&image.values, h, w, threads)?;
                relu(&mut features);
                let (pooled, ph, pw) = max_pool_padded(
                    &features,
                    ch,
                    cw,
                    conv.out_channels(),
                    POOL_WINDOW,
                    POOL_STRIDE,
                    *pool_padding,
                )?;
                (
                    Features::Rows(pooled),
                    ph * pw,
                    Positions::Fourier(FourierGrid::new(fourier, [ph, pw])),
                )
            }
        };
        let channels = self.channels();
        let feature_channels = match &features {
            Features::Planes(planes) => planes.len() / rows.max(1),
            Features::Rows(values) => values.len() / rows.max(1),
        };
        let position_channels = match &positions {
            Positions::Table(table) => table.len() / rows.max(1),
            Positions::Fourier(grid) => grid.channels(),
        };
        if feature_channels + position_channels != channels {
            return Err(Error::InvalidConfig(format!(
                "the image preprocessor makes {feature_channels} + {position_channels} channels per \
                 position, the encoder takes {channels}"
            )));
        }
        Ok(ImageRows {
            features,
            feature_channels,
            positions,
            rows,
            channels,
        })
    }

    /// The encoder's input for each (checked) image, whole.
    pub fn forward(&self, images: &[&Pixels], threads: usize) -> Result<InputArray> {
        self.check(images)?;
        whole_array(images.iter().map(|image| self.rows(image, threads)))
    }
}

/// What an image's features are before the positions are appended.
enum Features<'a> {
    /// The pixels themselves, `[channels, rows]` (channels first, as given).
    Planes(&'a [f32]),
    /// A convolution's output, `[rows, channels]`.
    Rows(Vec<f32>),
}

/// The positions appended to each row's features.
enum Positions<'a> {
    /// The learned positions after their projection, `[rows, channels]`.
    Table(&'a [f32]),
    Fourier(FourierGrid<2>),
}

/// One image's rows of the encoder's input, made a block at a time.
pub(crate) struct ImageRows<'a> {
    features: Features<'a>,
    feature_channels: usize,
    positions: Positions<'a>,
    rows: usize,
    channels: usize,
}

impl RowSource for ImageRows<'_> {
    fn len(&self) -> usize {
        self.rows
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn fill(&self, rows: Range<usize>, out: &mut [f32]) {
        let (channels, fc) = (self.channels, self.feature_channels);
        assert!(rows.end <= self.rows);
        fill_rows(rows, channels, out, |r, row| {
            let (features, positions) = row.split_at_mut(fc);
            match &self.features {
                Features::Planes(planes) => {
                    for (c, v) in features.iter_mut().enumerate() {
                        *v = planes[c * self.rows + r];
                    }
                }
                Features::Rows(values) => features.copy_from_slice(&values[r * fc..][..fc]),
            }
            match &self.positions {
                Positions::Table(table) => {
                    let pc = channels - fc;
                    positions.copy_from_slice(&table[r * pc..][..pc]);
                }
                Positions::Fourier(grid) => grid.row_into(r, positions),
            }
        });
    }
}
