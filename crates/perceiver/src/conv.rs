//! Convolutions on images, for the preprocessors that read pixels: a 2-D convolution as one
//! matrix product over unfolded patches, BatchNorm in its inference form (folded into the
//! convolution), ReLU and max-pooling. Images are channels-first `[channels, height, width]`
//! (as transformers' `pixel_values`); outputs are row-major `[height · width, channels]`, the
//! layout the encoder reads.

use crate::checkpoint::names::{BatchNormNames, ConvNames};
use crate::checkpoint::Param;
use crate::error::{Error, Result};
use crate::layers::Dense;

/// PyTorch's BatchNorm epsilon (transformers' `nn.BatchNorm2d` default; DeepMind's stem uses
/// Haiku's `BatchNorm` with the same 1e-5).
pub const BATCH_NORM_EPS: f32 = 1e-5;

/// A 2-D convolution with zero padding, as `[out, in·k·k]` weights applied to unfolded patches.
#[derive(Debug, Clone)]
pub struct Conv2d {
    product: Dense,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

/// How a convolution or pooling pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Zero rows/columns added before the first and after the last pixel (top = left, bottom =
    /// right), whatever the size.
    Fixed {
        /// Before the first row / column.
        before: usize,
        /// After the last.
        after: usize,
    },
    /// TensorFlow's and Haiku's `'SAME'`: `ceil(n / stride)` outputs, the padding that needs
    /// (`max(0, (out − 1)·stride + window − n)`) split with the extra one after. It depends on
    /// the size: a 7×7 stride-2 convolution pads 224 pixels with 2 before and 3 after.
    Same,
}

impl Padding {
    /// `(before, after, outputs)` along a side of `n` for a `window` moved by `stride`; `None`
    /// when the window does not fit.
    pub fn along(self, n: usize, window: usize, stride: usize) -> Option<(usize, usize, usize)> {
        match self {
            Self::Fixed { before, after } => {
                let padded = n + before + after;
                (padded >= window).then(|| (before, after, (padded - window) / stride + 1))
            }
            Self::Same => {
                if n == 0 {
                    return None;
                }
                let out = n.div_ceil(stride);
                let total = ((out - 1) * stride + window).saturating_sub(n);
                Some((total / 2, total - total / 2, out))
            }
        }
    }
}

impl Conv2d {
    /// Reads `names` (a `[out, in, k, k]` kernel and optional bias); `stride` and the padding are
    /// the module's, not the checkpoint's.
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        names: &ConvNames,
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let weight = get(&names.weight.name)?;
        let bias = match &names.bias {
            Some(bias) => get(&bias.name)?,
            None => Param::owned(vec![0.0; weight.shape()[0]], vec![weight.shape()[0]])?,
        };
        Self::new(weight, bias, stride, padding)
    }

    fn new(weight: Param, bias: Param, stride: usize, padding: Padding) -> Result<Self> {
        let &[out, in_channels, kh, kw] = weight.shape() else {
            return Err(Error::InvalidInput(format!(
                "a convolution kernel has 4 dimensions, found {:?}",
                weight.shape()
            )));
        };
        if kh != kw || stride == 0 {
            return Err(Error::InvalidInput(format!(
                "unsupported convolution: {kh}x{kw} kernel, stride {stride}"
            )));
        }
        let matrix = Param::owned(weight.data().to_vec(), vec![out, in_channels * kh * kw])?;
        Ok(Self {
            product: Dense::new(matrix, bias),
            in_channels,
            kernel: kh,
            stride,
            padding,
        })
    }

    /// PyTorch's "same" padding for a stride-`stride` convolution as transformers'
    /// `Conv2dSamePadding` computes it: `k − 1` zeros split with the extra one after.
    pub fn same_padding(kernel: usize) -> Padding {
        Padding::Fixed {
            before: (kernel - 1) / 2,
            after: kernel / 2,
        }
    }

    pub(crate) fn set_precision(&mut self, precision: crate::layers::Precision) {
        self.product.set_precision(precision);
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.product.out_dim()
    }

    /// The output size for an input of `height × width`; an error when the kernel does not fit.
    pub fn output_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let (h, w) = self.sides(height, width)?;
        Ok((h.2, w.2))
    }

    /// Each side's `(before, after, outputs)`.
    #[allow(clippy::type_complexity)]
    fn sides(&self, height: usize, width: usize) -> Result<((usize, usize, usize), (usize, usize, usize))> {
        let side = |n: usize| self.padding.along(n, self.kernel, self.stride);
        match (side(height), side(width)) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(Error::InvalidInput(format!(
                "a {height}x{width} image is smaller than the {k}x{k} convolution",
                k = self.kernel
            ))),
        }
    }

    /// Folds an inference-form BatchNorm that follows the convolution into its weights:
    /// `(conv(x) − mean) / √(var + eps) · γ + β`.
    pub(crate) fn fold_batch_norm(
        &mut self,
        get: &mut dyn FnMut(&str) -> Result<Param>,
        names: &BatchNormNames,
    ) -> Result<()> {
        let (gamma, beta) = (get(&names.weight.name)?, get(&names.bias.name)?);
        let (mean, var) = (get(&names.running_mean.name)?, get(&names.running_var.name)?);
        let (weight, bias) = self
            .product
            .parts()
            .expect("a convolution's product is never stacked");
        let cols = weight.shape()[1];
        let mut w = weight.data().to_vec();
        let mut b = bias.data().to_vec();
        for o in 0..self.out_channels() {
            let scale = gamma.data()[o] / (var.data()[o] + BATCH_NORM_EPS).sqrt();
            for v in &mut w[o * cols..][..cols] {
                *v *= scale;
            }
            b[o] = (b[o] - mean.data()[o]) * scale + beta.data()[o];
        }
        let out = self.out_channels();
        self.product = Dense::new(Param::owned(w, vec![out, cols])?, Param::owned(b, vec![out])?);
        Ok(())
    }

    /// Convolves one channels-first image: `[out_h · out_w, out_channels]` and the output size.
    pub fn forward(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        threads: usize,
    ) -> Result<(Vec<f32>, usize, usize)> {
        if image.len() != self.in_channels * height * width {
            return Err(Error::InvalidInput(format!(
                "{} values are not a {}x{height}x{width} image",
                image.len(),
                self.in_channels
            )));
        }
        let ((pad_y, _, out_h), (pad_x, _, out_w)) = self.sides(height, width)?;
        let (k, s) = (self.kernel, self.stride);
        let (pad_y, pad_x) = (pad_y as isize, pad_x as isize);
        let cols = self.in_channels * k * k;
        // Unfold every output position's patch, in the kernel's (channel, row, column) order.
        let mut patches = vec![0f32; out_h * out_w * cols];
        for (position, patch) in patches.chunks_exact_mut(cols).enumerate() {
            let (oy, ox) = (position / out_w, position % out_w);
            for c in 0..self.in_channels {
                let plane = &image[c * height * width..][..height * width];
                for ky in 0..k {
                    let y = (oy * s + ky) as isize - pad_y;
                    if y < 0 || y >= height as isize {
                        continue;
                    }
                    let row = &plane[y as usize * width..][..width];
                    for kx in 0..k {
                        let x = (ox * s + kx) as isize - pad_x;
                        if x >= 0 && x < width as isize {
                            patch[(c * k + ky) * k + kx] = row[x as usize];
                        }
                    }
                }
            }
        }
        Ok((self.product.forward(&patches, threads), out_h, out_w))
    }
}

/// `max(x, 0)` in place.
pub fn relu(values: &mut [f32]) {
    for v in values {
        *v = v.max(0.0);
    }
}

/// Max-pooling of `[height · width, channels]` rows over `window × window` blocks every
/// `stride` (no padding, the last partial block dropped, as PyTorch's `MaxPool2d`): the pooled
/// rows and their size.
pub fn max_pool(
    rows: &[f32],
    height: usize,
    width: usize,
    channels: usize,
    window: usize,
    stride: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    max_pool_padded(
        rows,
        height,
        width,
        channels,
        window,
        stride,
        Padding::Fixed { before: 0, after: 0 },
    )
}

/// [`max_pool`] with `padding`: padded positions never win (Haiku's `max_pool` pads with −∞).
pub fn max_pool_padded(
    rows: &[f32],
    height: usize,
    width: usize,
    channels: usize,
    window: usize,
    stride: usize,
    padding: Padding,
) -> Result<(Vec<f32>, usize, usize)> {
    let too_small = || {
        Error::InvalidInput(format!(
            "a {height}x{width} feature map is smaller than the {window}x{window} pooling window"
        ))
    };
    if stride == 0 || rows.len() != height * width * channels {
        return Err(Error::InvalidInput(format!(
            "{} values are not a {height}x{width} map of {channels} channels",
            rows.len()
        )));
    }
    let (top, _, out_h) = padding.along(height, window, stride).ok_or_else(too_small)?;
    let (left, _, out_w) = padding.along(width, window, stride).ok_or_else(too_small)?;
    let mut out = vec![f32::NEG_INFINITY; out_h * out_w * channels];
    for oy in 0..out_h {
        for ox in 0..out_w {
            let dst = &mut out[(oy * out_w + ox) * channels..][..channels];
            // The window's pixels inside the map.
            let ys =
                (oy * stride).saturating_sub(top)..(oy * stride + window).saturating_sub(top).min(height);
            let xs =
                (ox * stride).saturating_sub(left)..(ox * stride + window).saturating_sub(left).min(width);
            for y in ys {
                for x in xs.clone() {
                    let src = &rows[(y * width + x) * channels..][..channels];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        // NaN wins, as in PyTorch.
                        if v > *d || v.is_nan() {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
    Ok((out, out_h, out_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(out: usize, input: usize, k: usize, stride: usize, pad: Padding, seed: u32) -> Conv2d {
        let n = out * input * k * k;
        let weight: Vec<f32> = (0..n)
            .map(|i| ((i as u32 * 7 + seed) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let bias: Vec<f32> = (0..out).map(|i| i as f32 * 0.1).collect();
        Conv2d::new(
            Param::owned(weight, vec![out, input, k, k]).unwrap(),
            Param::owned(bias, vec![out]).unwrap(),
            stride,
            pad,
        )
        .unwrap()
    }

    /// The unfolded product equals the convolution's definition, computed directly.
    #[test]
    fn convolution_matches_the_definition() {
        let (cin, cout, k, s, h, w) = (3, 4, 5, 2, 9, 8);
        let layer = conv(cout, cin, k, s, Conv2d::same_padding(k), 3);
        let image: Vec<f32> = (0..cin * h * w).map(|i| ((i * 31) % 17) as f32 / 17.0).collect();
        let (out, oh, ow) = layer.forward(&image, h, w, 1).unwrap();
        assert_eq!((oh, ow), ((h + 4 - k) / s + 1, (w + 4 - k) / s + 1));
        let n = cout * cin * k * k;
        let weight: Vec<f32> = (0..n)
            .map(|i| ((i as u32 * 7 + 3) % 13) as f32 / 13.0 - 0.5)
            .collect();
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..cout {
                    let mut sum = o as f32 * 0.1;
                    for c in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, x) = ((oy * s + ky) as isize - 2, (ox * s + kx) as isize - 2);
                                if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                    sum += weight[((o * cin + c) * k + ky) * k + kx]
                                        * image[(c * h + y as usize) * w + x as usize];
                                }
                            }
                        }
                    }
                    let got = out[(oy * ow + ox) * cout + o];
                    assert!((got - sum).abs() < 1e-4, "{got} vs {sum}");
                }
            }
        }
    }

    #[test]
    fn pooling_takes_the_largest_of_each_window() {
        // 5x5 single-channel map: 2x2 output windows of 3x3 every 2.
        let rows: Vec<f32> = (0..25).map(|i| ((i * 7) % 11) as f32).collect();
        let (out, h, w) = max_pool(&rows, 5, 5, 1, 3, 2).unwrap();
        assert_eq!((h, w), (2, 2));
        for (i, &v) in out.iter().enumerate() {
            let (oy, ox) = (i / 2, i % 2);
            let mut best = f32::MIN;
            for y in oy * 2..oy * 2 + 3 {
                for x in ox * 2..ox * 2 + 3 {
                    best = best.max(rows[y * 5 + x]);
                }
            }
            assert_eq!(v, best);
        }
        assert!(max_pool(&rows, 2, 5, 1, 3, 2).is_err());
    }

    /// `'SAME'` padding: the output is `ceil(n / stride)` long and the padding is split with
    /// the extra one after (Haiku / TensorFlow), both in the convolution and in the max-pool.
    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(Padding::Same.along(224, 7, 2), Some((2, 3, 112)));
        assert_eq!(Padding::Same.along(225, 7, 2), Some((3, 3, 113)));
        assert_eq!(Padding::Same.along(112, 3, 2), Some((0, 1, 56)));
        assert_eq!(Padding::Same.along(113, 3, 2), Some((1, 1, 57)));
        // Against the definition: pool a 4x5 map, SAME, window 3, stride 2.
        let rows: Vec<f32> = (0..20).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (out, h, w) = max_pool_padded(&rows, 4, 5, 1, 3, 2, Padding::Same).unwrap();
        assert_eq!((h, w), (2, 3));
        // Height 4: total padding 1 (0 before); width 5: total 2 (1 before).
        for oy in 0..h {
            for ox in 0..w {
                let mut best = f32::NEG_INFINITY;
                for y in (oy * 2) as isize..(oy * 2 + 3) as isize {
                    for x in (ox * 2) as isize - 1..(ox * 2 + 3) as isize - 1 {
                        if (0..4).contains(&y) && (0..5).contains(&x) {
                            best = best.max(rows[(y * 5 + x) as usize]);
                        }
                    }
                }
                assert_eq!(out[oy * w + ox], best, "({oy}, {ox})");
            }
        }
        // A SAME convolution on an even side starts 2 rows up (not transformers' 3).
        let layer = conv(1, 1, 7, 2, Padding::Same, 5);
        let image: Vec<f32> = (0..8 * 8).map(|i| (i % 9) as f32).collect();
        let (out, oh, ow) = layer.forward(&image, 8, 8, 1).unwrap();
        assert_eq!((oh, ow), (4, 4));
        let shifted = conv(1, 1, 7, 2, Padding::Fixed { before: 2, after: 3 }, 5);
        assert_eq!(shifted.forward(&image, 8, 8, 1).unwrap().0, out);
    }

    #[test]
    fn too_small_images_are_errors() {
        let layer = conv(2, 3, 7, 2, Padding::Fixed { before: 0, after: 0 }, 1);
        assert!(layer.forward(&[0.0; 3 * 4 * 4], 4, 4, 1).is_err());
        assert!(layer.forward(&[0.0; 5], 4, 4, 1).is_err());
    }
}
