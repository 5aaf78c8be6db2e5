//! The image preprocessors of DeepMind's three ImageNet classifiers (transformers'
//! `PerceiverImagePreprocessor` as each `PerceiverForImageClassification*` class builds it),
//! differentiable: pixels `[batch, 3, height, width]` → the encoder's input `[batch, rows,
//! channels]`, features first, then positions.
//!
//! - learned: a 1×1 convolution to `C` channels, and a trainable position per pixel projected
//!   by a linear layer;
//! - Fourier: the pixels themselves with Fourier features of their coordinates (nothing trains);
//! - conv: a 7×7 stride-2 convolution, BatchNorm, ReLU, a 3×3 stride-2 max-pool, then Fourier
//!   features.
//!
//! **BatchNorm is frozen**: it normalises with the running statistics it was loaded with, as in
//! inference, and only its scale and shift train. Batches of a few images would give noisy
//! batch statistics, and fine-tuning a pretrained stem usually freezes them; the statistics stay
//! in the checkpoint unchanged (the optimizer skips them, [`crate::optim::is_trained`]).
//!
//! The inference crate's preprocessor ([`perceiver::preprocess`]) computes the same rows; the
//! tests hold both to transformers.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::model::attention::{variable, Linear};
use crate::model::ops;
use perceiver::checkpoint::names::{BatchNormNames, ImagePreprocessorNames};
use perceiver::config::{FourierSpec, ImageInputSpec, StemPadding, IMAGE_CHANNELS};
use perceiver::conv::{Conv2d, Padding, BATCH_NORM_EPS};
use perceiver::error::Error;
use perceiver::position::fourier_features;

/// The conv stem's convolution stride, max-pool window and stride.
const STEM_STRIDE: usize = 2;
const POOL_WINDOW: usize = 3;
const POOL_STRIDE: usize = 2;

// One per model: boxing the large variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Kind {
    Conv1x1 {
        /// `[C, 3]` (the `[C, 3, 1, 1]` kernel) and `[C]`.
        weight: Tensor,
        bias: Tensor,
        /// `[image_size², C]`.
        positions: Tensor,
        projection: Linear,
        image_size: usize,
    },
    Pixels {
        fourier: FourierSpec,
    },
    Conv {
        /// `[C, 3, 7, 7]`, no bias.
        weight: Tensor,
        batch_norm: FrozenBatchNorm,
        conv_padding: Padding,
        pool_padding: Padding,
        fourier: FourierSpec,
    },
}

/// Pixels → the encoder's input rows, with gradients for its trainable tensors.
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    kind: Kind,
}

impl ImagePreprocessor {
    /// The preprocessor `spec` describes for images of `image_size` (config.json's: the learned
    /// positions' side), its tensors named `names` in `vb` (at the checkpoint's root).
    pub fn new(
        spec: ImageInputSpec,
        names: &ImagePreprocessorNames,
        image_size: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let kind = match (spec, names) {
            (
                ImageInputSpec::Conv1x1 { channels },
                ImagePreprocessorNames::Conv1x1 {
                    conv,
                    positions,
                    projection,
                },
            ) => {
                let bias = match &conv.bias {
                    Some(bias) => variable(vb, bias)?,
                    None => Tensor::zeros(channels, DType::F32, vb.device())?,
                };
                Kind::Conv1x1 {
                    weight: variable(vb, &conv.weight)?.reshape((channels, IMAGE_CHANNELS))?,
                    bias,
                    positions: variable(vb, positions)?,
                    projection: Linear::new(projection, vb)?,
                    image_size,
                }
            }
            (ImageInputSpec::Pixels { fourier }, ImagePreprocessorNames::Pixels) => Kind::Pixels { fourier },
            (
                ImageInputSpec::Conv { fourier, padding, .. },
                ImagePreprocessorNames::Conv { conv, batchnorm },
            ) => {
                // The stem's convolution has no bias (the names say so).
                let weight = variable(vb, &conv.weight)?;
                let kernel = weight.dims()[2];
                // As the inference crate pads: transformers by a fixed k − 1 and the pool not at
                // all; DeepMind's Haiku stem 'SAME' for both.
                let (conv_padding, pool_padding) = match padding {
                    StemPadding::Transformers => (
                        Conv2d::same_padding(kernel),
                        Padding::Fixed { before: 0, after: 0 },
                    ),
                    StemPadding::Same => (Padding::Same, Padding::Same),
                };
                Kind::Conv {
                    weight,
                    batch_norm: FrozenBatchNorm::new(batchnorm, vb)?,
                    conv_padding,
                    pool_padding,
                    fourier,
                }
            }
            _ => {
                return Err(Error::InvalidConfig(
                    "the image preprocessor's tensor names do not match its kind".into(),
                )
                .into())
            }
        };
        Ok(Self { kind })
    }

    /// The one image size the model takes, if it has one (the learned positions cover
    /// `image_size × image_size` pixels); the Fourier models take any size.
    pub fn required_size(&self) -> Option<(usize, usize)> {
        match &self.kind {
            Kind::Conv1x1 { image_size, .. } => Some((*image_size, *image_size)),
            _ => None,
        }
    }

    /// The encoder's input array.
    ///
    /// # Shapes
    /// `pixels`: `[batch, 3, height, width]` f32 (as transformers' `pixel_values`). Returns
    /// `[batch, rows, channels]`: a row per pixel (per pooled position for the conv stem).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = pixels.dims4()?;
        if channels != IMAGE_CHANNELS || height == 0 || width == 0 {
            return Err(Error::InvalidInput(format!(
                "images are [3, height, width] pixels, not [{channels}, {height}, {width}]"
            ))
            .into());
        }
        if let Some((h, w)) = self.required_size().filter(|&size| size != (height, width)) {
            return Err(Error::InvalidInput(format!(
                "the model takes {h}x{w} images (its position table has a row per pixel), not \
                 {height}x{width}"
            ))
            .into());
        }
        match &self.kind {
            Kind::Conv1x1 {
                weight,
                bias,
                positions,
                projection,
                ..
            } => {
                let rows = height * width;
                let pixels = channels_last(pixels)?.reshape((batch * rows, IMAGE_CHANNELS))?;
                let features = ops::linear(&pixels, weight, bias)?.reshape((batch, rows, ()))?;
                let positions = projection.forward(positions)?.unsqueeze(0)?;
                let positions = positions.broadcast_as((batch, rows, positions.dim(2)?))?;
                Ok(Tensor::cat(&[&features, &positions], 2)?)
            }
            Kind::Pixels { fourier } => with_fourier(&channels_last(pixels)?, fourier, height, width),
            Kind::Conv {
                weight,
                batch_norm,
                conv_padding,
                pool_padding,
                fourier,
            } => {
                let kernel = weight.dim(2)?;
                let padded = pad(pixels, *conv_padding, kernel, STEM_STRIDE, 0.0)?;
                let features = padded.conv2d(weight, 0, STEM_STRIDE, 1, 1)?;
                let features = batch_norm.forward(&features)?.relu()?;
                let padded = pad(
                    &features,
                    *pool_padding,
                    POOL_WINDOW,
                    POOL_STRIDE,
                    f32::NEG_INFINITY,
                )?;
                let pooled = max_pool_3x3_stride_2(&padded)?;
                let (_, _, ph, pw) = pooled.dims4()?;
                with_fourier(&channels_last(&pooled)?, fourier, ph, pw)
            }
        }
    }
}

/// BatchNorm with its running statistics as constants: `(x − mean) / √(var + ε) · γ + β` per
/// channel of `[batch, channels, height, width]`.
#[derive(Debug, Clone)]
struct FrozenBatchNorm {
    weight: Tensor,
    bias: Tensor,
    /// In the model's variables (saved with it), detached here: no gradient reaches them.
    running_mean: Tensor,
    running_var: Tensor,
}

impl FrozenBatchNorm {
    fn new(names: &BatchNormNames, vb: &VarBuilder) -> Result<Self> {
        // Listed so that the checkpoint stays complete; never read.
        variable(vb, &names.num_batches_tracked)?;
        Ok(Self {
            weight: variable(vb, &names.weight)?,
            bias: variable(vb, &names.bias)?,
            running_mean: variable(vb, &names.running_mean)?,
            running_var: variable(vb, &names.running_var)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let per_channel = |t: &Tensor| t.reshape((1, (), 1, 1));
        let inv_std = (self.running_var.detach() + BATCH_NORM_EPS as f64)?
            .sqrt()?
            .recip()?;
        let centred = x.broadcast_sub(&per_channel(&self.running_mean.detach())?)?;
        let scale = per_channel(&(inv_std * &self.weight)?)?;
        Ok(centred
            .broadcast_mul(&scale)?
            .broadcast_add(&per_channel(&self.bias)?)?)
    }
}

/// `[batch, channels, height, width]` → `[batch, height·width, channels]`.
fn channels_last(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    Ok(x.reshape((batch, channels, height * width))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[batch, rows, features]` with the Fourier features of a `height × width` grid appended to
/// each row.
fn with_fourier(rows: &Tensor, fourier: &FourierSpec, height: usize, width: usize) -> Result<Tensor> {
    let batch = rows.dim(0)?;
    let table = fourier_features(fourier, [height, width]);
    let table = Tensor::from_vec(table, (1, height * width, fourier.channels()), rows.device())?;
    let table = table.broadcast_as((batch, height * width, fourier.channels()))?;
    Ok(Tensor::cat(&[rows, &table], D::Minus1)?)
}

/// `x` (`[batch, channels, height, width]`) padded with `value` on both spatial sides as
/// `padding` pads a `window` moved by `stride`.
fn pad(x: &Tensor, padding: Padding, window: usize, stride: usize, value: f32) -> Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    let too_small = || {
        Error::InvalidInput(format!(
            "a {height}x{width} map is smaller than the {window}x{window} window of the conv stem"
        ))
    };
    let (top, bottom, _) = padding.along(height, window, stride).ok_or_else(too_small)?;
    let (left, right, _) = padding.along(width, window, stride).ok_or_else(too_small)?;
    let x = pad_dim(x, 2, top, bottom, value)?;
    pad_dim(&x, 3, left, right, value)
}

fn pad_dim(x: &Tensor, dim: usize, before: usize, after: usize, value: f32) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Ok(Tensor::full(value, dims, x.device())?)
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

/// PyTorch's `MaxPool2d(3, stride=2)` (no padding, the last partial window dropped), built from
/// element-wise maxima so that it differentiates: candle's pooling has no backward pass for a
/// window wider than its stride. Output `o` along a side covers inputs `2o, 2o + 1, 2o + 2`: the
/// even inputs `2o` and `2(o + 1)` and the odd one between. The values are PyTorch's; where a
/// window holds its maximum twice, the gradient is shared between them (PyTorch gives it all to
/// the first), an equally valid gradient that only exact ties tell apart.
fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    let rows = max_pool_along(x, 2)?;
    max_pool_along(&rows, 3)
}

fn max_pool_along(x: &Tensor, dim: usize) -> Result<Tensor> {
    debug_assert_eq!((POOL_WINDOW, POOL_STRIDE), (3, 2));
    // At least a window's worth: `pad` has checked.
    let n = x.dim(dim)?;
    let out = (n - POOL_WINDOW) / POOL_STRIDE + 1;
    // Inputs 0..2·out + 1 are read; one more (never read) makes pairs.
    let used = x.narrow(dim, 0, 2 * out + 1)?;
    let paired = pad_dim(&used, dim, 0, 1, f32::NEG_INFINITY)?;
    let mut dims = paired.dims().to_vec();
    dims[dim] = out + 1;
    dims.insert(dim + 1, 2);
    let paired = paired.reshape(dims)?;
    let even = paired.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
    let odd = paired
        .narrow(dim + 1, 1, 1)?
        .squeeze(dim + 1)?
        .narrow(dim, 0, out)?;
    let first = even.narrow(dim, 0, out)?;
    let last = even.narrow(dim, 1, out)?;
    Ok(first.maximum(&odd)?.maximum(&last)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The pool against a direct loop over its windows, on sizes odd and even.
    #[test]
    fn the_pool_takes_the_maximum_of_each_window() {
        for (h, w) in [(3, 3), (7, 8), (8, 7), (10, 5)] {
            let values: Vec<f32> = (0..2 * h * w).map(|i| ((i * 37 % 101) as f32).sin()).collect();
            let x = Tensor::from_vec(values.clone(), (1, 2, h, w), &Device::Cpu).unwrap();
            let pooled = max_pool_3x3_stride_2(&x).unwrap();
            let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
            assert_eq!(pooled.dims(), [1, 2, oh, ow]);
            let got = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for c in 0..2 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = f32::NEG_INFINITY;
                        for y in 2 * oy..2 * oy + 3 {
                            for x in 2 * ox..2 * ox + 3 {
                                best = best.max(values[(c * h + y) * w + x]);
                            }
                        }
                        assert_eq!(got[(c * oh + oy) * ow + ox], best, "{h}x{w} ({c}, {oy}, {ox})");
                    }
                }
            }
        }
    }
}
