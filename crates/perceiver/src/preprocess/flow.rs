//! The optical-flow model's input part (transformers' `PerceiverImagePreprocessor` with
//! `prep_type="patches"` as `PerceiverForOpticalFlow` builds it; DeepMind's `patches_for_flow`
//! then `ImagePreprocessor(prep_type='patches')`): two frames → one row per pixel.
//!
//! Each pixel gets its 3×3 neighbourhood in both frames (zero outside the frame): 54 values in
//! DeepMind's `extract_patches` order — frame, then patch row, patch column, colour — which is
//! the order transformers' `space_to_depth` gives its `[batch, 2, 27, H, W]` input. A linear
//! layer (`conv_after_patches`) maps them to 64 channels, and Fourier features of the pixel's
//! position (top frequencies set by `train_size`) follow.

use std::ops::Range;

use super::{fill_rows, whole_array, InputArray, RowSource};
use crate::checkpoint::names::LinearNames;
use crate::checkpoint::Param;
use crate::config::{FlowInputSpec, FLOW_FEATURES, FLOW_PATCH, FLOW_PATCH_CHANNELS, IMAGE_CHANNELS};
use crate::error::{Error, Result};
use crate::image::{Pixels, RgbImage};
use crate::layers::{Dense, Precision};
use crate::position::FourierGrid;

/// Two frames of one size, each channels first (`[3, height, width]`), scaled to [-1, 1] as
/// DeepMind's optical-flow Colab scales them (`im / 255 · 2 − 1`). Made by [`new`](Self::new)
/// or [`from_images`](Self::from_images), which check the frames, so a pair always holds two
/// whole frames of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePair {
    first: Pixels,
    second: Pixels,
}

impl FramePair {
    /// A pair of prepared frames.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a frame's values do not fill its size or are not finite
    /// ([`Pixels::check`]), or when the frames differ in size.
    pub fn new(first: Pixels, second: Pixels) -> Result<Self> {
        for (name, frame) in [("first", &first), ("second", &second)] {
            frame
                .check()
                .map_err(|e| Error::InvalidInput(format!("the {name} frame: {e}")))?;
        }
        if (first.height, first.width) != (second.height, second.width) {
            return Err(Error::InvalidInput(format!(
                "the frames differ in size: {}x{} and {}x{} (height x width)",
                first.height, first.width, second.height, second.width
            )));
        }
        Ok(Self { first, second })
    }

    /// The earlier frame: flow is the motion from it to [`second`](Self::second).
    pub fn first(&self) -> &Pixels {
        &self.first
    }

    /// The later frame.
    pub fn second(&self) -> &Pixels {
        &self.second
    }

    /// The two frames, taken out of the pair.
    pub fn into_frames(self) -> (Pixels, Pixels) {
        (self.first, self.second)
    }

    /// Two decoded frames scaled to [-1, 1]: each value `v / 255 · 2 − 1`, computed in f64 and
    /// rounded once to f32 (as the Colab's NumPy arithmetic before the model's f32).
    pub fn from_images(first: &RgbImage, second: &RgbImage) -> Result<Self> {
        Self::new(scaled(first)?, scaled(second)?)
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.first.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.first.width
    }

    /// The `height × width` window whose top-left pixel is `(top, left)`, of both frames.
    pub fn crop(&self, top: usize, left: usize, height: usize, width: usize) -> Result<Self> {
        let fits =
            |start: usize, len: usize, side: usize| start.checked_add(len).is_some_and(|end| end <= side);
        if !fits(top, height, self.height()) || !fits(left, width, self.width()) || height == 0 || width == 0
        {
            return Err(Error::InvalidInput(format!(
                "a {height}x{width} window at ({top}, {left}) does not fit {}x{} frames",
                self.height(),
                self.width()
            )));
        }
        let crop = |frame: &Pixels| {
            let mut values = Vec::with_capacity(IMAGE_CHANNELS * height * width);
            for plane in frame.values.chunks_exact(frame.height * frame.width) {
                for row in plane.chunks_exact(frame.width).skip(top).take(height) {
                    values.extend_from_slice(&row[left..left + width]);
                }
            }
            Pixels {
                height,
                width,
                values,
            }
        };
        Ok(Self {
            first: crop(&self.first),
            second: crop(&self.second),
        })
    }

    /// Each pixel's 3×3 neighbourhood in both frames, zero outside them: `[height · width, 54]`
    /// row-major, channel `frame·27 + (row·3 + column)·3 + colour` (transformers' `inputs`
    /// `[1, 2, 27, H, W]` with its channels moved last).
    pub fn patches(&self) -> Vec<f32> {
        let (h, w) = (self.height(), self.width());
        let plane = h * w;
        let mut out = vec![0f32; plane * FLOW_PATCH_CHANNELS];
        let half = FLOW_PATCH / 2;
        for (t, frame) in [&self.first, &self.second].into_iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let row = &mut out[(y * w + x) * FLOW_PATCH_CHANNELS..][..FLOW_PATCH_CHANNELS];
                    for i in 0..FLOW_PATCH {
                        let Some(py) = (y + i).checked_sub(half).filter(|&py| py < h) else {
                            continue;
                        };
                        for j in 0..FLOW_PATCH {
                            let Some(px) = (x + j).checked_sub(half).filter(|&px| px < w) else {
                                continue;
                            };
                            let channel = t * FLOW_PATCH * FLOW_PATCH * IMAGE_CHANNELS
                                + (i * FLOW_PATCH + j) * IMAGE_CHANNELS;
                            for c in 0..IMAGE_CHANNELS {
                                row[channel + c] = frame.values[c * plane + py * w + px];
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

fn scaled(image: &RgbImage) -> Result<Pixels> {
    let (h, w) = (image.height(), image.width());
    let mut values = vec![0f32; IMAGE_CHANNELS * h * w];
    for (i, rgb) in image.pixels().chunks_exact(IMAGE_CHANNELS).enumerate() {
        for (c, &v) in rgb.iter().enumerate() {
            values[c * h * w + i] = (v as f64 / 255.0 * 2.0 - 1.0) as f32;
        }
    }
    Pixels::new(h, w, values)
}

/// Frame pairs → the encoder's input: projected patches, then Fourier features.
#[derive(Debug, Clone)]
pub struct FlowPreprocessor {
    spec: FlowInputSpec,
    patch_projection: Dense,
}

impl FlowPreprocessor {
    pub(crate) fn load(
        get: &mut dyn FnMut(&str) -> Result<Param>,
        spec: FlowInputSpec,
        patch_projection: &LinearNames,
    ) -> Result<Self> {
        Ok(Self {
            spec,
            patch_projection: Dense::load(get, patch_projection)?,
        })
    }

    /// Channels of each row it makes.
    pub fn channels(&self) -> usize {
        self.spec.channels()
    }

    /// The frame size the model runs on (`train_size`: its Fourier features' resolution, and
    /// the decoder's output shape in both reference implementations).
    pub fn frame_size(&self) -> (usize, usize) {
        let [h, w] = self.spec.fourier.max_resolution;
        (h, w)
    }

    pub(crate) fn set_precision(&mut self, _precision: Precision) {
        // 54 → 64 channels: a small product next to the attention; kept exact.
        self.patch_projection.set_precision(Precision::F32);
    }

    /// The encoder's input for each pair (each of the model's frame size), whole: each pair's
    /// rows one after another, as the model's own pass makes them a block at a time.
    pub fn forward(&self, pairs: &[&FramePair], threads: usize) -> Result<InputArray> {
        pairs.iter().try_for_each(|pair| self.check(pair))?;
        // One pair's projected patches at a time.
        whole_array(pairs.iter().map(|pair| self.rows(pair, threads)))
    }

    /// Checks one pair against the model's frame size.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the pair is not of the model's frame size.
    pub fn check(&self, pair: &FramePair) -> Result<()> {
        let (h, w) = self.frame_size();
        if (pair.height(), pair.width()) != (h, w) {
            return Err(Error::InvalidInput(format!(
                "the flow model runs on {h}x{w} frames (its train_size), not {}x{}: tile larger frames",
                pair.height(),
                pair.width()
            )));
        }
        Ok(())
    }

    /// One pair's rows of the encoder's input, made on demand: its patches are projected here
    /// (64 channels a pixel), and each row's Fourier features are added as the row is made, so
    /// that the whole array (322 channels a pixel, 235 MB for the released model's tile) is
    /// never held: the encoder cross-attends it a block at a time and the decoder queries it a
    /// chunk at a time.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the pair is not of the model's frame size.
    pub(crate) fn rows(&self, pair: &FramePair, threads: usize) -> Result<FlowRows> {
        self.check(pair)?;
        let (h, w) = self.frame_size();
        Ok(FlowRows {
            features: self.patch_projection.forward(&pair.patches(), threads),
            // Each row's Fourier features from per-axis tables: a table of every pixel's would
            // be most of the array's size again.
            grid: FourierGrid::new(&self.spec.fourier, [h, w]),
            rows: h * w,
            channels: self.channels(),
        })
    }
}

/// One pair's rows of the optical-flow model's input ([`FlowPreprocessor::rows`]): its pixels'
/// projected patches, and their Fourier features made as each row is filled.
pub(crate) struct FlowRows {
    features: Vec<f32>,
    grid: FourierGrid<2>,
    rows: usize,
    channels: usize,
}

impl RowSource for FlowRows {
    fn len(&self) -> usize {
        self.rows
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn fill(&self, rows: Range<usize>, out: &mut [f32]) {
        assert!(rows.end <= self.rows);
        fill_rows(rows, self.channels, out, |pixel, row| {
            let (features, positions) = row.split_at_mut(FLOW_FEATURES);
            features.copy_from_slice(&self.features[pixel * FLOW_FEATURES..][..FLOW_FEATURES]);
            self.grid.row_into(pixel, positions);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(h: usize, w: usize) -> FramePair {
        let frame = |offset: f32| Pixels {
            height: h,
            width: w,
            values: (0..3 * h * w).map(|i| i as f32 + offset).collect(),
        };
        FramePair::new(frame(1.0), frame(1000.0)).unwrap()
    }

    #[test]
    fn patches_follow_extract_patches_order_with_zero_padding() {
        let (h, w) = (3, 4);
        let p = pair(h, w);
        let patches = p.patches();
        let at = |y: usize, x: usize| &patches[(y * w + x) * 54..][..54];
        let value = |t: usize, c: usize, y: usize, x: usize| {
            let frame = if t == 0 { &p.first } else { &p.second };
            frame.values[c * h * w + y * w + x]
        };
        // Centre pixel (1, 1): every neighbour inside.
        for t in 0..2 {
            for i in 0..3 {
                for j in 0..3 {
                    for c in 0..3 {
                        assert_eq!(at(1, 1)[t * 27 + (i * 3 + j) * 3 + c], value(t, c, i, j));
                    }
                }
            }
        }
        // Corner pixel (0, 3): the row above and the column to the right are zero.
        let corner = at(0, 3);
        for t in 0..2 {
            for c in 0..3 {
                assert_eq!(corner[t * 27 + c], 0.0, "above-left");
                assert_eq!(
                    corner[t * 27 + (2 * 3 + 2) * 3 + c],
                    0.0,
                    "below-right is off the frame"
                );
                assert_eq!(corner[t * 27 + (2 * 3) * 3 + c], value(t, c, 1, 2), "below-left");
                assert_eq!(corner[t * 27 + (3 + 1) * 3 + c], value(t, c, 0, 3), "centre");
            }
        }
    }

    #[test]
    fn crop_takes_the_window_of_both_frames() {
        let p = pair(5, 6);
        let c = p.crop(1, 2, 3, 4).unwrap();
        assert_eq!((c.height(), c.width()), (3, 4));
        assert_eq!(c.first().values[0], p.first().values[6 + 2]);
        assert_eq!(c.second().values[3 * 4 + 1], p.second().values[5 * 6 + 6 + 3]);
        assert!(p.crop(3, 0, 3, 6).is_err());
        assert!(p.crop(0, 0, 0, 6).is_err());
    }

    #[test]
    fn frames_of_different_sizes_are_refused() {
        let a = Pixels::new(2, 2, vec![0.0; 12]).unwrap();
        let b = Pixels::new(2, 3, vec![0.0; 18]).unwrap();
        assert!(FramePair::new(a, b).is_err());
    }

    /// Pixels are public literals: a frame whose values do not fill its size, or hold NaN, is
    /// refused when the pair is made, so no pair reaches the patches or a crop with too few
    /// values (it panicked there).
    #[test]
    fn frames_that_are_not_whole_or_finite_are_refused() {
        let good = Pixels::new(48, 56, vec![0.0; 3 * 48 * 56]).unwrap();
        let short = Pixels {
            height: 48,
            width: 56,
            values: vec![0.0; 10],
        };
        let e = FramePair::new(good.clone(), short.clone()).unwrap_err();
        assert!(e.to_string().contains("second frame"), "{e}");
        assert!(FramePair::new(short, good.clone()).is_err());
        let mut nan = good.clone();
        nan.values[7] = f32::NAN;
        let e = FramePair::new(good.clone(), nan).unwrap_err();
        assert!(
            e.to_string().contains("not") && e.to_string().contains("NaN"),
            "{e}"
        );
        let huge = Pixels {
            height: 1 << 62,
            width: 4,
            values: vec![],
        };
        assert!(FramePair::new(huge.clone(), huge).is_err());
        let pair = FramePair::new(good.clone(), good).unwrap();
        assert!(pair.crop(usize::MAX, 0, 2, 2).is_err());
    }

    #[test]
    fn images_scale_to_minus_one_one() {
        let img = RgbImage::new(2, 1, vec![0, 255, 128, 1, 2, 3]).unwrap();
        let p = FramePair::from_images(&img, &img).unwrap();
        assert_eq!(p.first.values[0], -1.0);
        assert_eq!(p.first.values[2], 1.0);
        assert_eq!(p.first.values[4], (128.0f64 / 255.0 * 2.0 - 1.0) as f32);
    }
}
