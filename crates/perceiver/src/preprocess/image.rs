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
//! Fourier features depend only on the image size, so they are computed once per size.

use std::sync::Arc;

use super::InputArray;
use crate::checkpoint::names::ImagePreprocessorNames;
use crate::checkpoint::Param;
use crate::config::StemPadding;
use crate::config::{ImageInputSpec, IMAGE_CHANNELS};
use crate::conv::{max_pool_padded, relu, Conv2d, Padding};
use crate::error::{Error, Result};
pub use crate::image::Pixels;
use crate::layers::{Dense, Precision};
use crate::position::{FourierCache, TrainablePositions};
use crate::runtime::{item_ranges, on_pool};

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
        fourier: FourierCache,
    },
    Conv {
        conv: Conv2d,
        fourier: FourierCache,
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
            (ImageInputSpec::Pixels { fourier }, ImagePreprocessorNames::Pixels) => Kind::Pixels {
                fourier: FourierCache::new(fourier),
            },
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
                    fourier: FourierCache::new(fourier),
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

    /// Checks each image's size against what the model takes.
    pub fn check(&self, images: &[&Pixels]) -> Result<()> {
        for image in images {
            if image.values.len() != IMAGE_CHANNELS * image.height * image.width || image.height == 0 {
                return Err(Error::InvalidInput(format!(
                    "{} values are not a 3x{}x{} image",
                    image.values.len(),
                    image.height,
                    image.width
                )));
            }
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

    /// The encoder's input for each (checked) image.
    pub fn forward(&self, images: &[&Pixels], threads: usize) -> Result<InputArray> {
        self.check(images)?;
        let channels = self.channels();
        let mut values = Vec::new();
        let mut rows_per_item = Vec::with_capacity(images.len());
        for image in images {
            let (h, w) = (image.height, image.width);
            let (features, fh, fw, positions) = match &self.kind {
                Kind::Conv1x1 { conv, projected, .. } => {
                    let (features, fh, fw) = conv.forward(&image.values, h, w, threads)?;
                    (features, fh, fw, Positions::Table(projected))
                }
                Kind::Pixels { fourier } => (
                    channels_last(&image.values, h * w),
                    h,
                    w,
                    Positions::Fourier(fourier.get([h, w])),
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
                    (pooled, ph, pw, Positions::Fourier(fourier.get([ph, pw])))
                }
            };
            let rows = fh * fw;
            let feature_channels = features.len() / rows;
            let positions = positions.values();
            let position_channels = channels - feature_channels;
            values.reserve(rows * channels);
            for r in 0..rows {
                values.extend_from_slice(&features[r * feature_channels..][..feature_channels]);
                values.extend_from_slice(&positions[r * position_channels..][..position_channels]);
            }
            rows_per_item.push(rows);
        }
        Ok(InputArray {
            values,
            items: item_ranges(rows_per_item),
        })
    }
}

enum Positions<'a> {
    Table(&'a [f32]),
    Fourier(Arc<Vec<f32>>),
}

impl Positions<'_> {
    fn values(&self) -> &[f32] {
        match self {
            Self::Table(table) => table,
            Self::Fourier(features) => features,
        }
    }
}

/// `[channels, n]` → `[n, channels]`.
fn channels_last(planes: &[f32], n: usize) -> Vec<f32> {
    let channels = planes.len() / n;
    let mut out = vec![0f32; planes.len()];
    for (c, plane) in planes.chunks_exact(n).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            out[i * channels + c] = v;
        }
    }
    out
}
