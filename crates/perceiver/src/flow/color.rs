//! The standard colour picture of a flow field: the colour coding of Baker et al., "A Database
//! and Evaluation Methodology for Optical Flow" (IJCV 2011), as the Middlebury benchmark's
//! tools (`flowToColor` / `computeColor`) draw it, and as flow papers and the Perceiver IO paper
//! show their results.
//!
//! The direction of a flow vector picks a hue on a wheel of [`WHEEL_LEN`] colours, its length the
//! saturation:
//!
//! * The wheel ([`WHEEL`]) runs red → yellow → green → cyan → blue → magenta → red in six
//!   segments of [`SEGMENTS`] colours (15, 6, 4, 11, 13, 6; more colours where the eye tells
//!   hues apart better). Within a segment, one channel ramps linearly between 0 and 255
//!   (`floor(255 * i / n)` for the `i`-th of `n` colours) while the others stay at 0 or 255.
//! * The angle is `a = atan2(-v, -u) / π` in `[-1, 1]`, placed at `(a + 1) / 2 * (WHEEL_LEN - 1)`
//!   along the wheel and interpolated linearly between the two wheel colours around it. So flow
//!   to the left (`a = 0`) is wheel colour 27 (cyan-blue), flow to the right (`a = ±1`) wheel
//!   colour 0 (red); up (`a = 1/2`) is purple-blue, down (`a = -1/2`) orange-yellow. As in
//!   Middlebury's code the factor is `WHEEL_LEN - 1`, so the step from colour 54 back to
//!   colour 0 is never interpolated; here `v = -0.0` counts as `+0.0`, so flow straight to the
//!   right is colour 0 whichever zero it has (Middlebury's code would give colour 54 for
//!   `-0.0`).
//! * The radius is the magnitude divided by the largest magnitude of the field's known pixels,
//!   or by a given `max_flow`. Inside the unit circle the colour fades towards white,
//!   `1 - r * (1 - colour)`: no motion is white. Beyond it (only with a `max_flow` below the
//!   field's largest motion) the colour is darkened, `0.75 * colour`, to mark the saturation.
//! * Channels are `floor(255 * colour)`. Unknown pixels ([`super::is_known`]) are black.

use std::path::Path;

use super::{is_known, FlowField};
use crate::error::{Error, Result};
use crate::image::RgbImage;

/// The wheel's segments: red–yellow, yellow–green, green–cyan, cyan–blue, blue–magenta,
/// magenta–red, in colours each.
pub const SEGMENTS: [usize; 6] = [15, 6, 4, 11, 13, 6];

/// Colours on the wheel: the sum of [`SEGMENTS`].
pub const WHEEL_LEN: usize = 55;

/// The colour wheel, `[r, g, b]` each: colour 0 is red, 15 yellow, 21 green, 25 cyan, 36 blue,
/// 49 magenta, 54 nearly red again (see the [module](self) documentation).
pub const WHEEL: [[u8; 3]; WHEEL_LEN] = make_wheel();

/// The most pixels on a side of [`color_wheel`]'s picture.
pub const MAX_WHEEL_SIZE: usize = 8192;

/// Builds [`WHEEL`]: in each segment, one channel ramps up or down while the others hold.
const fn make_wheel() -> [[u8; 3]; WHEEL_LEN] {
    // (channel that ramps, rising?, the colour at the segment's start); the start colours are
    // red, yellow, green, cyan, blue, magenta.
    const RAMPS: [(usize, bool, [u8; 3]); 6] = [
        (1, true, [255, 0, 0]),
        (0, false, [255, 255, 0]),
        (2, true, [0, 255, 0]),
        (1, false, [0, 255, 255]),
        (0, true, [0, 0, 255]),
        (2, false, [255, 0, 255]),
    ];
    let mut wheel = [[0u8; 3]; WHEEL_LEN];
    let (mut s, mut k) = (0, 0);
    while s < SEGMENTS.len() {
        let (channel, rising, start) = RAMPS[s];
        let n = SEGMENTS[s];
        let mut i = 0;
        while i < n {
            let step = (255 * i / n) as u8;
            let mut colour = start;
            colour[channel] = if rising { step } else { 255 - step };
            wheel[k] = colour;
            i += 1;
            k += 1;
        }
        s += 1;
    }
    wheel
}

/// The colour of flow `[u, v]` whose magnitude, divided by the normalising radius, is `rad`.
fn wheel_color(u: f64, v: f64, rad: f64) -> [u8; 3] {
    // `+ 0.0` turns -0.0 into +0.0: flow straight to the right is colour 0 for both zeros.
    let a = (-(v + 0.0)).atan2(-u) / std::f64::consts::PI;
    let fk = (a + 1.0) / 2.0 * (WHEEL_LEN - 1) as f64;
    // fk is in [0, 54]; `min` only guards against rounding.
    let k0 = (fk.floor() as usize).min(WHEEL_LEN - 1);
    let k1 = (k0 + 1) % WHEEL_LEN;
    let f = fk - k0 as f64;
    let mut out = [0u8; 3];
    for (b, channel) in out.iter_mut().enumerate() {
        let col0 = f64::from(WHEEL[k0][b]) / 255.0;
        let col1 = f64::from(WHEEL[k1][b]) / 255.0;
        // (1 - f) col0 + f col1, written so that equal ends stay exact (a full channel is 255).
        let col = col0 + f * (col1 - col0);
        let col = if rad <= 1.0 {
            1.0 - rad * (1.0 - col)
        } else {
            col * 0.75
        };
        // `as u8` floors and saturates (NaN cannot reach here: rad and f are finite).
        *channel = (255.0 * col) as u8;
    }
    out
}

/// `sqrt(u² + v²)` in f64.
fn magnitude64([u, v]: [f32; 2]) -> f64 {
    f64::from(u).hypot(f64::from(v))
}

/// The colour picture of `field`, one pixel per flow vector (`width x height`), as the library's
/// own [`RgbImage`] (no other crate's type: [`RgbImage::save_png`] writes it, and its
/// [`pixels`](RgbImage::pixels) go into any image library).
///
/// The radius is normalised by `max_flow` when given, otherwise by the largest magnitude among
/// the known pixels; a field without motion is all white (unknown pixels black).
///
/// # Errors
/// [`Error::InvalidInput`] when `max_flow` is given and is not a positive finite number.
pub fn flow_to_rgb(field: &FlowField, max_flow: Option<f32>) -> Result<RgbImage> {
    let max_rad = match max_flow {
        Some(m) if m > 0.0 && m.is_finite() => f64::from(m),
        Some(m) => {
            return Err(Error::InvalidInput(format!(
                "max_flow must be a positive finite number of pixels, got {m}"
            )))
        }
        // In f64, as the radii below: the longest vector's radius is exactly 1.
        None => field
            .pixels()
            .filter(|&p| is_known(p))
            .map(magnitude64)
            .fold(0.0, f64::max),
    };
    let mut pixels = vec![0u8; field.values().len() / 2 * 3];
    for (pixel, flow) in pixels.chunks_exact_mut(3).zip(field.pixels()) {
        let colour = if !is_known(flow) {
            [0, 0, 0]
        } else if max_rad == 0.0 {
            // Every known vector is zero: white, without dividing by zero.
            [255, 255, 255]
        } else {
            wheel_color(
                f64::from(flow[0]),
                f64::from(flow[1]),
                magnitude64(flow) / max_rad,
            )
        };
        pixel.copy_from_slice(&colour);
    }
    // A FlowField has at least one pixel: the sizes are an image's.
    Ok(RgbImage::from_raw_unchecked(
        field.width(),
        field.height(),
        pixels,
    ))
}

/// A legend for [`flow_to_rgb`]'s pictures: a `size x size` square whose pixel `(x, y)` has the
/// colour of the flow `u = x - c`, `v = y - c` (`c = (size - 1) / 2`, the centre) with
/// `max_flow = c`: white at the centre, the pure wheel colours on the inscribed circle, darkened
/// (saturated) in the corners outside it. A 1 x 1 legend is one white pixel.
///
/// # Errors
/// [`Error::InvalidInput`] when `size` is 0 or more than [`MAX_WHEEL_SIZE`].
pub fn color_wheel(size: usize) -> Result<RgbImage> {
    if size == 0 || size > MAX_WHEEL_SIZE {
        return Err(Error::InvalidInput(format!(
            "a colour wheel legend is 1 to {MAX_WHEEL_SIZE} pixels on a side, got {size}"
        )));
    }
    let c = (size - 1) as f64 / 2.0;
    // size 1: c = 0 and the only flow is zero; any positive radius draws it white.
    let radius = if c > 0.0 { c } else { 1.0 };
    let mut pixels = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f64 - c, y as f64 - c);
            pixels.extend_from_slice(&wheel_color(u, v, u.hypot(v) / radius));
        }
    }
    Ok(RgbImage::from_raw_unchecked(size, size, pixels))
}

/// Writes [`flow_to_rgb`]'s picture of `field` as a PNG file at `path`.
///
/// # Errors
/// As [`flow_to_rgb`], and [`Error::Write`] with `path` when the file cannot be created or written.
pub fn write_flow_png(field: &FlowField, max_flow: Option<f32>, path: impl AsRef<Path>) -> Result<()> {
    flow_to_rgb(field, max_flow)?.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_segments_start_at_the_primary_and_secondary_colours() {
        let starts: Vec<usize> = SEGMENTS
            .iter()
            .scan(0, |k, n| Some(std::mem::replace(k, *k + n)))
            .collect();
        assert_eq!(starts, [0, 15, 21, 25, 36, 49]);
        let colours: Vec<[u8; 3]> = starts.iter().map(|&k| WHEEL[k]).collect();
        assert_eq!(
            colours,
            [
                [255, 0, 0],
                [255, 255, 0],
                [0, 255, 0],
                [0, 255, 255],
                [0, 0, 255],
                [255, 0, 255]
            ]
        );
        assert_eq!(SEGMENTS.iter().sum::<usize>(), WHEEL_LEN);
        // Last colour of the red-yellow ramp: floor(255 * 14 / 15) = 238.
        assert_eq!(WHEEL[14], [255, 238, 0]);
    }

    #[test]
    fn both_zeros_of_v_give_the_same_colour() {
        assert_eq!(wheel_color(1.0, 0.0, 1.0), wheel_color(1.0, -0.0, 1.0));
        assert_eq!(wheel_color(1.0, 0.0, 1.0), WHEEL[0]);
    }

    #[test]
    fn legend_sizes() {
        assert!(matches!(color_wheel(0), Err(Error::InvalidInput(_))));
        assert!(matches!(
            color_wheel(MAX_WHEEL_SIZE + 1),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(color_wheel(1).unwrap().pixels(), &[255, 255, 255]);
        let legend = color_wheel(5).unwrap();
        assert_eq!(legend.pixel(2, 2), [255, 255, 255]);
        // The right edge's middle is flow (2, 0) at radius 1: pure red.
        assert_eq!(legend.pixel(4, 2), WHEEL[0]);
    }
}
