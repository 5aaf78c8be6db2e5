//! Resampling equal to Pillow's `Image.resize` on an RGB image, to the last bit.
//!
//! transformers' PIL backend resizes with `PIL.Image.resize`, so the model sees Pillow's
//! numbers: this file computes the same ones (checked against Pillow 12.0 by the image fixtures).
//! Pillow (`src/libImaging/Resample.c`) resamples in two separable passes, horizontal first,
//! each output sample a convolution of the input with a filter stretched over the scale
//! factor. The weights are computed in `f64`, normalised to sum to 1, then rounded to
//! fixed point with 22 fractional bits; the sums are integers, rounded and clipped to 0..=255
//! after each pass (so the horizontal pass's 8-bit result is what the vertical pass reads).
//! Nearest neighbour is a different path in Pillow (an affine transform,
//! `src/libImaging/Geometry.c`) and is done the same way here.
//!
//! Every floating-point operation below is in Pillow's order, with its `float`/`double` types:
//! integer sums are exact whatever the order, but the weights are not.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RgbImage;
use crate::error::{Error, Result};

/// A resampling filter, numbered as PIL's `Image.Resampling` (the `resample` field of a
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Resample {
    /// 0: nearest neighbour.
    Nearest,
    /// 1: Lanczos (windowed sinc, 3 lobes).
    Lanczos,
    /// 2: bilinear (triangle).
    Bilinear,
    /// 3: bicubic (Keys, a = -0.5): transformers' default for the Perceiver.
    Bicubic,
    /// 4: box (area average).
    Box,
    /// 5: Hamming-windowed sinc, 1 lobe.
    Hamming,
}

impl Resample {
    /// All filters, in PIL's numbering.
    pub const ALL: [Resample; 6] = [
        Resample::Nearest,
        Resample::Lanczos,
        Resample::Bilinear,
        Resample::Bicubic,
        Resample::Box,
        Resample::Hamming,
    ];

    /// PIL's number for the filter.
    pub fn pil_value(self) -> u8 {
        match self {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }

    /// The filter PIL numbers `value`.
    pub fn from_pil(value: u64) -> Result<Self> {
        Resample::ALL
            .into_iter()
            .find(|r| u64::from(r.pil_value()) == value)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "resample is {value}: PIL's filters are 0 (nearest), 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box) and 5 (hamming)"
                ))
            })
    }

    /// Half the filter's width at scale 1, in input pixels (Pillow's `support`).
    fn support(self) -> f64 {
        match self {
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
            // Nearest does not convolve.
            Resample::Nearest => 0.0,
        }
    }

    /// The filter's kernel, as Pillow writes each one.
    fn weight(self, x: f64) -> f64 {
        match self {
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the window's constants as C `float` literals: 0.54f, 0.46f.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Resample::Bicubic => {
                // Keys' cubic convolution with a = -0.5; the constants are Pillow's `a + 2`, `a + 3`.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Resample::Nearest => 0.0,
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

impl TryFrom<u8> for Resample {
    type Error = Error;
    fn try_from(value: u8) -> Result<Self> {
        Resample::from_pil(u64::from(value))
    }
}

impl From<Resample> for u8 {
    fn from(r: Resample) -> u8 {
        r.pil_value()
    }
}

impl fmt::Display for Resample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Resample::Nearest => "nearest",
            Resample::Lanczos => "lanczos",
            Resample::Bilinear => "bilinear",
            Resample::Bicubic => "bicubic",
            Resample::Box => "box",
            Resample::Hamming => "hamming",
        };
        write!(f, "{name} ({})", self.pil_value())
    }
}

/// Fractional bits of the fixed-point weights: 32 bits less 8 for the sample and 2 for the
/// overshoot of filters with negative lobes (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass's filter over its input, as Pillow's `precompute_coeffs` lays it out: output sample
/// `i` reads `len[i]` input samples from `start[i]`, whose weights sum to `norm[i]` before
/// normalising. The fixed-point weights are made from these on demand ([`Windows::weight`]), or
/// stored by [`Taps`] where a pass reads each many times. Either way the same bits as
/// `normalize_coeffs_8bpc`: each weight is computed by the same operations in the same order.
struct Windows {
    filter: Resample,
    scale: f64,
    /// 1 / (the filter's stretch): input positions to filter positions.
    ss: f64,
    start: Vec<usize>,
    len: Vec<usize>,
    norm: Vec<f64>,
}

impl Windows {
    /// For the whole input (Pillow's `box` = 0..in_size).
    fn new(in_size: usize, out_size: usize, filter: Resample) -> Windows {
        // Pillow's box is `float`: the input extent goes through f32 before the division.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let mut windows = Windows {
            filter,
            scale,
            ss: 1.0 / filterscale,
            start: Vec::with_capacity(out_size),
            len: Vec::with_capacity(out_size),
            norm: Vec::with_capacity(out_size),
        };
        for xx in 0..out_size {
            let center = windows.center(xx);
            // C's (int) truncates toward zero, as `as` does; the clamps follow.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin as i64).max(0) as usize;
            let mut ww = 0.0;
            for x in xmin..xmin + n {
                ww += windows.raw_weight(center, x);
            }
            windows.start.push(xmin);
            windows.len.push(n);
            windows.norm.push(ww);
        }
        windows
    }

    fn center(&self, i: usize) -> f64 {
        (i as f64 + 0.5) * self.scale
    }

    fn raw_weight(&self, center: f64, x: usize) -> f64 {
        self.filter.weight((x as f64 - center + 0.5) * self.ss)
    }

    /// The fixed-point weight of input sample `x` (in `start[i]..start[i] + len[i]`) in output
    /// sample `i`.
    fn weight(&self, i: usize, x: usize) -> i32 {
        let w = self.raw_weight(self.center(i), x);
        let ww = self.norm[i];
        let w = if ww != 0.0 { w / ww } else { w };
        let fixed = w * f64::from(1u32 << PRECISION_BITS);
        if w < 0.0 {
            (-0.5 + fixed) as i32
        } else {
            (0.5 + fixed) as i32
        }
    }

    /// How many weights the pass has in all: 4 bytes each when stored.
    fn count(&self) -> usize {
        self.len.iter().sum()
    }
}

/// A pass's fixed-point weights, stored: output sample `i`'s are `weights[offset[i]..][..len[i]]`.
/// Only the used ones are stored, so a reduction costs memory in proportion to the input
/// (about `2 × support` weights an input sample), not to output × (filter width).
struct Taps {
    windows: Windows,
    offset: Vec<usize>,
    weights: Vec<i32>,
}

impl Taps {
    fn of(&self, i: usize) -> (usize, &[i32]) {
        let start = self.windows.start[i];
        (
            start,
            &self.weights[self.offset[i]..self.offset[i] + self.windows.len[i]],
        )
    }
}

impl From<Windows> for Taps {
    fn from(windows: Windows) -> Taps {
        let mut offset = Vec::with_capacity(windows.len.len());
        let mut weights = Vec::with_capacity(windows.count());
        for (i, (&start, &n)) in windows.start.iter().zip(&windows.len).enumerate() {
            offset.push(weights.len());
            weights.extend((start..start + n).map(|x| windows.weight(i, x)));
        }
        Taps {
            windows,
            offset,
            weights,
        }
    }
}

/// A fixed-point sum back to a sample: drop the fraction (the sum started at one half, so this
/// rounds) and clip to 0..=255, as Pillow's `clip8`.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `image` resized to `width` × `height` with `filter`, as Pillow's `Image.resize((width,
/// height), resample=filter)` computes it on an RGB image.
///
/// The memory used is the output (as 32-bit sums), one row, and the horizontal pass's weights
/// where they take no more than the input rows they are used on: the vertical pass gathers each
/// horizontally resampled row into the output rows that use it.
///
/// # Errors
/// [`Error::InvalidInput`] for a zero target size; [`Error::ImageTooLarge`] for a target of more
/// than [`DecodeLimits::PIL_MAX_PIXELS`](super::DecodeLimits::PIL_MAX_PIXELS) pixels.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Resample) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize an image to {width} x {height} pixels"
        )));
    }
    let max = super::DecodeLimits::PIL_MAX_PIXELS;
    if (width as u64).saturating_mul(height as u64) > max {
        return Err(Error::ImageTooLarge {
            width: width as u64,
            height: height as u64,
            max_pixels: max,
            limit: "resize target",
        });
    }
    if (width, height) == (image.width(), image.height()) {
        // Pillow copies: every filter is the identity at scale 1.
        return Ok(image.clone());
    }
    if filter == Resample::Nearest {
        return Ok(nearest(image, width, height));
    }
    Ok(convolve(image, width, height, filter))
}

/// Pillow's `ImagingScaleAffine`: the source of output column `x` is `floor(x0 + x · a)` with
/// `x0 = a / 2` and the position accumulated by repeated addition, as Pillow does it.
fn nearest(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    fn sources(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
        let a = f64::from(in_size as f32) / out_size as f64;
        let mut pos = a * 0.5;
        (0..out_size)
            .map(|_| {
                let at = if pos < 0.0 { -1 } else { pos as i64 };
                pos += a;
                (0..in_size as i64).contains(&at).then_some(at as usize)
            })
            .collect()
    }
    let xs = sources(image.width(), width);
    let ys = sources(image.height(), height);
    let src = image.pixels();
    let in_row = image.width() * 3;
    // Pillow fills with zeros first; positions outside the input (none, for a whole-image
    // resize) stay black.
    let mut out = vec![0u8; width * height * 3];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = *sy else { continue };
        let row = &src[sy * in_row..(sy + 1) * in_row];
        for (x, sx) in xs.iter().enumerate() {
            if let Some(sx) = *sx {
                out[(y * width + x) * 3..][..3].copy_from_slice(&row[sx * 3..sx * 3 + 3]);
            }
        }
    }
    RgbImage::from_raw_unchecked(width, height, out)
}

/// How the horizontal pass gets its weights.
enum Horizontal {
    Stored(Taps),
    OnDemand(Windows),
}

/// The two convolution passes (Pillow's `ImagingResampleInner` with the 8-bit passes).
fn convolve(image: &RgbImage, width: usize, height: usize, filter: Resample) -> RgbImage {
    let (in_w, in_h) = (image.width(), image.height());
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    // The vertical pass uses each weight once (on a whole row), so it makes them as it goes.
    let vert = Windows::new(in_h, height, filter);
    // The rows the vertical pass reads; Pillow runs the horizontal pass on those only.
    let (first_row, last_row) = if need_vertical {
        (vert.start[0], vert.start[height - 1] + vert.len[height - 1])
    } else {
        (0, in_h)
    };
    let src = image.pixels();
    let in_row = in_w * 3;
    let out_row = width * 3;
    // The horizontal pass uses each weight once a row: stored, unless they would take more
    // memory than the rows they are used on (a picture a few rows high and very wide), where
    // making them again for each row costs less than holding them.
    let horiz = need_horizontal.then(|| {
        let windows = Windows::new(in_w, width, filter);
        let stored_bytes = windows.count().saturating_mul(std::mem::size_of::<i32>());
        if stored_bytes <= (last_row - first_row).saturating_mul(in_row) {
            Horizontal::Stored(Taps::from(windows))
        } else {
            Horizontal::OnDemand(windows)
        }
    });

    let mut row_buf = vec![0u8; out_row];
    // One input row through the horizontal pass (or as is, when the width does not change).
    let horizontal = |y: usize, buf: &mut [u8]| {
        let row = &src[y * in_row..(y + 1) * in_row];
        // Products and sums stay below 2^31: |Σ w| ≈ 2^22, and Σ |w| ≤ 2^23 for every filter,
        // times 255.
        let tap = |s: &mut [i32; 3], x: usize, w: i32| {
            let p = &row[x * 3..x * 3 + 3];
            s[0] = s[0].wrapping_add(i32::from(p[0]).wrapping_mul(w));
            s[1] = s[1].wrapping_add(i32::from(p[1]).wrapping_mul(w));
            s[2] = s[2].wrapping_add(i32::from(p[2]).wrapping_mul(w));
        };
        let Some(horiz) = &horiz else {
            buf.copy_from_slice(row);
            return;
        };
        for xx in 0..width {
            let mut s = [HALF; 3];
            match horiz {
                Horizontal::Stored(taps) => {
                    let (start, k) = taps.of(xx);
                    for (i, &w) in k.iter().enumerate() {
                        tap(&mut s, start + i, w);
                    }
                }
                Horizontal::OnDemand(windows) => {
                    let start = windows.start[xx];
                    for x in start..start + windows.len[xx] {
                        tap(&mut s, x, windows.weight(xx, x));
                    }
                }
            }
            buf[xx * 3] = clip8(s[0]);
            buf[xx * 3 + 1] = clip8(s[1]);
            buf[xx * 3 + 2] = clip8(s[2]);
        }
    };

    if !need_vertical {
        let mut out = Vec::with_capacity(out_row * height);
        for y in 0..in_h {
            horizontal(y, &mut row_buf);
            out.extend_from_slice(&row_buf);
        }
        return RgbImage::from_raw_unchecked(width, height, out);
    }

    // Each output row yy sums rows start[yy]..start[yy] + len[yy]; both ends grow with yy, so
    // the output rows that read input row y form a window [lo, hi) that slides down.
    let mut sums = vec![HALF; out_row * height];
    let (mut lo, mut hi) = (0usize, 0usize);
    for y in first_row..last_row {
        while lo < height && vert.start[lo] + vert.len[lo] <= y {
            lo += 1;
        }
        while hi < height && vert.start[hi] <= y {
            hi += 1;
        }
        if lo >= hi {
            continue;
        }
        horizontal(y, &mut row_buf);
        for yy in lo..hi {
            let w = vert.weight(yy, y);
            let acc = &mut sums[yy * out_row..(yy + 1) * out_row];
            for (a, &p) in acc.iter_mut().zip(&row_buf) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
    }
    let out = sums.into_iter().map(clip8).collect();
    RgbImage::from_raw_unchecked(width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> RgbImage {
        let px = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        RgbImage::new(w, h, px).unwrap()
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in Resample::ALL.into_iter().filter(|f| *f != Resample::Nearest) {
            for (i, o) in [(1, 1), (1, 7), (7, 1), (17, 5), (5, 17), (224, 224), (1000, 3)] {
                let taps = Taps::from(Windows::new(i, o, filter));
                for xx in 0..o {
                    let (_, k) = taps.of(xx);
                    let sum: i64 = k.iter().map(|&w| i64::from(w)).sum();
                    // Each weight is rounded on its own: the sum is off by at most half a unit each.
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                        "{filter} {i}->{o} [{xx}]: {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant() {
        let img = RgbImage::new(9, 4, [10u8, 128, 250].repeat(36)).unwrap();
        for filter in Resample::ALL {
            for (w, h) in [(1, 1), (3, 2), (20, 11), (9, 1), (1, 4)] {
                let out = resize(&img, w, h, filter).unwrap();
                assert_eq!((out.width(), out.height()), (w, h));
                assert!(
                    out.pixels().chunks(3).all(|p| p == [10, 128, 250]),
                    "{filter} -> {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_the_identity() {
        let img = ramp(7, 5);
        for filter in Resample::ALL {
            assert_eq!(resize(&img, 7, 5, filter).unwrap(), img);
        }
    }

    #[test]
    fn zero_target_is_an_error() {
        let img = ramp(3, 3);
        assert!(matches!(
            resize(&img, 0, 3, Resample::Bicubic),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            resize(&img, 3, 0, Resample::Nearest),
            Err(Error::InvalidInput(_))
        ));
    }
}
