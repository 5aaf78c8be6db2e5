//! Optical flow out: a dense flow field ([`FlowField`]), its standard colour picture
//! ([`color`], Baker et al.'s Middlebury colour coding) and the Middlebury `.flo` file ([`flo`]).
//!
//! Perceiver IO's optical-flow model (`deepmind/optical-flow-perceiver`) predicts, for every
//! pixel of the first of two frames, where it moved to in the second: `(u, v)`, the motion to
//! the right and down, in pixels. This module is what happens to that prediction afterwards; it
//! has no model code.
//!
//! # Unknown flow
//! Middlebury ground truth marks pixels without a flow with huge values (`1e10`); a model's
//! output may hold NaN or infinities. A pixel is *unknown* when either component is not finite
//! or its magnitude exceeds [`UNKNOWN_FLOW_THRESHOLD`] (the `1e9` of Middlebury's tools); see
//! [`is_known`]. Unknown pixels are left out of [`FlowField::stats`] and of the normalisation in
//! [`color::flow_to_rgb`], and are painted black there. They are stored and written to `.flo`
//! unchanged.
//!
//! # Example
//! ```
//! use perceiver::flow::{color, FlowField};
//!
//! # fn main() -> perceiver::Result<()> {
//! // Everything moves 3 pixels to the right and 4 down.
//! let field = FlowField::from_fn(2, 3, |_y, _x| [3.0, 4.0])?;
//! assert_eq!(field.at(1, 2), [3.0, 4.0]);
//! assert_eq!(field.stats().max_magnitude, 5.0);
//!
//! let picture = color::flow_to_rgb(&field, None)?;
//! assert_eq!((picture.width(), picture.height()), (3, 2));
//!
//! let mut bytes = Vec::new();
//! perceiver::flow::flo::write_flo(&field, &mut bytes)?;
//! assert_eq!(&bytes[..4], b"PIEH");
//! assert_eq!(perceiver::flow::flo::read_flo(bytes.as_slice())?, field);
//! # Ok(())
//! # }
//! ```

pub mod color;
pub mod flo;

pub use color::{color_wheel, flow_to_rgb, write_flow_png};
pub use flo::{load_flo, read_flo, save_flo, write_flo};

use crate::error::{Error, Result};

/// Flow components larger than this in absolute value mark an unknown pixel (Middlebury's
/// `UNKNOWN_FLOW_THRESH`; its files store `1e10` there).
pub const UNKNOWN_FLOW_THRESHOLD: f32 = 1e9;

/// The most pixels along one side of a [`FlowField`]: `i32::MAX`, so that every field fits the
/// `.flo` header (signed 32-bit sizes) and an image's `u32` sizes.
pub const MAX_SIDE: usize = i32::MAX as usize;

/// The most pixels (`height * width`) of a [`FlowField`]: the `.flo` reader's bound
/// ([`flo::MAX_FLO_PIXELS`], 2^27 pixels, 1 GiB of values), so that every field can be written
/// to a `.flo` file and read back, and no size asks for an allocation beyond it.
pub const MAX_PIXELS: usize = flo::MAX_FLO_PIXELS;

/// Whether a flow vector `[u, v]` is known: both components finite and at most
/// [`UNKNOWN_FLOW_THRESHOLD`] in absolute value.
pub fn is_known(flow: [f32; 2]) -> bool {
    // NaN fails both comparisons, infinities the second.
    flow.iter().all(|c| c.abs() <= UNKNOWN_FLOW_THRESHOLD)
}

/// A dense optical flow field: `height x width` pixels, `[u, v]` each, where `u` is the motion
/// to the right and `v` the motion down, in pixels (the layout `[height, width, 2]`, row-major,
/// of the flow model's output and of a `.flo` file's payload).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowField {
    height: usize,
    width: usize,
    values: Vec<f32>,
}

/// Summary numbers of a [`FlowField`], over its known pixels (see [`is_known`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FlowStats {
    /// The mean of `sqrt(u² + v²)` over the known pixels; 0 when there are none.
    pub mean_magnitude: f32,
    /// The largest `sqrt(u² + v²)` over the known pixels; 0 when there are none.
    pub max_magnitude: f32,
    /// Pixels left out: a component not finite or beyond [`UNKNOWN_FLOW_THRESHOLD`].
    pub unknown_pixels: usize,
}

impl FlowField {
    /// A field from its values, `[u, v]` per pixel, rows top to bottom.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a size is zero or more than [`MAX_SIDE`], when there are
    /// more than [`MAX_PIXELS`] pixels, or when `values.len()` is not `height * width * 2`.
    pub fn new(height: usize, width: usize, values: Vec<f32>) -> Result<Self> {
        let expected = checked_len(height, width)?;
        if values.len() != expected {
            return Err(Error::InvalidInput(format!(
                "a {height} x {width} flow field needs {expected} values (u, v per pixel), got {}",
                values.len()
            )));
        }
        Ok(Self {
            height,
            width,
            values,
        })
    }

    /// A field whose flow at row `y`, column `x` is `flow(y, x)`.
    ///
    /// # Errors
    /// As [`new`](Self::new), for the sizes.
    pub fn from_fn(
        height: usize,
        width: usize,
        mut flow: impl FnMut(usize, usize) -> [f32; 2],
    ) -> Result<Self> {
        let len = checked_len(height, width)?;
        let mut values = Vec::with_capacity(len);
        for y in 0..height {
            for x in 0..width {
                values.extend_from_slice(&flow(y, x));
            }
        }
        Ok(Self {
            height,
            width,
            values,
        })
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values, `[u, v]` per pixel, row-major (`height * width * 2` of them).
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The values, taken out of the field.
    pub fn into_values(self) -> Vec<f32> {
        self.values
    }

    /// The flow `[u, v]` at row `y`, column `x`.
    ///
    /// # Panics
    /// When `y >= height` or `x >= width`, as slice indexing does; [`get`](Self::get) does not.
    pub fn at(&self, y: usize, x: usize) -> [f32; 2] {
        self.get(y, x).unwrap_or_else(|| {
            panic!(
                "pixel ({y}, {x}) outside a {} x {} flow field",
                self.height, self.width
            )
        })
    }

    /// The flow `[u, v]` at row `y`, column `x`, or `None` outside the field.
    pub fn get(&self, y: usize, x: usize) -> Option<[f32; 2]> {
        if y >= self.height || x >= self.width {
            return None;
        }
        let i = 2 * (y * self.width + x);
        Some([self.values[i], self.values[i + 1]])
    }

    /// The flow vectors, `[u, v]` each, row by row.
    pub fn pixels(&self) -> impl Iterator<Item = [f32; 2]> + '_ {
        self.values.chunks_exact(2).map(|p| [p[0], p[1]])
    }

    /// Mean and largest magnitude over the known pixels; unknown ones (a component NaN,
    /// infinite or beyond [`UNKNOWN_FLOW_THRESHOLD`]) are counted, not averaged.
    pub fn stats(&self) -> FlowStats {
        let (mut sum, mut max, mut known) = (0f64, 0f32, 0usize);
        for p in self.pixels().filter(|&p| is_known(p)) {
            let m = magnitude(p);
            // f64: a sum of millions of f32 magnitudes would lose digits.
            sum += f64::from(m);
            max = max.max(m);
            known += 1;
        }
        FlowStats {
            mean_magnitude: if known == 0 {
                0.0
            } else {
                (sum / known as f64) as f32
            },
            max_magnitude: max,
            unknown_pixels: self.height * self.width - known,
        }
    }
}

/// `sqrt(u² + v²)`, in f64 so that squares of values near [`UNKNOWN_FLOW_THRESHOLD`] stay exact
/// enough, rounded once to f32.
pub(crate) fn magnitude([u, v]: [f32; 2]) -> f32 {
    f64::from(u).hypot(f64::from(v)) as f32
}

/// `height * width * 2`, after checking the sizes.
fn checked_len(height: usize, width: usize) -> Result<usize> {
    if height == 0 || width == 0 {
        return Err(Error::InvalidInput(format!(
            "a flow field needs at least one pixel, got {height} x {width}"
        )));
    }
    if height > MAX_SIDE || width > MAX_SIDE {
        return Err(Error::InvalidInput(format!(
            "a flow field is at most {MAX_SIDE} pixels on a side, got {height} x {width}"
        )));
    }
    match height.checked_mul(width) {
        Some(pixels) if pixels <= MAX_PIXELS => Ok(pixels * 2),
        _ => Err(Error::InvalidInput(format!(
            "a {height} x {width} flow field has more than the {MAX_PIXELS} pixels a field may hold"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_sizes() {
        assert!(FlowField::new(2, 3, vec![0.0; 12]).is_ok());
        assert!(matches!(
            FlowField::new(2, 3, vec![0.0; 11]),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            FlowField::new(0, 3, vec![]),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            FlowField::new(3, 0, vec![]),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            FlowField::new(MAX_SIDE + 1, 1, vec![]),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            FlowField::from_fn(usize::MAX, 1, |_, _| [0.0; 2]),
            Err(Error::InvalidInput(_))
        ));
        // Sides within MAX_SIDE whose product is beyond MAX_PIXELS: an error, not a "capacity
        // overflow" panic (or an allocation of exabytes).
        for (h, w) in [(MAX_SIDE, MAX_SIDE), (MAX_PIXELS + 1, 1), (1 << 14, 1 << 14)] {
            assert!(matches!(
                FlowField::from_fn(h, w, |_, _| [0.0; 2]),
                Err(Error::InvalidInput(_))
            ));
            assert!(matches!(
                FlowField::new(h, w, vec![]),
                Err(Error::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn at_is_row_major_u_then_v() {
        let field = FlowField::from_fn(2, 3, |y, x| [x as f32, 10.0 * y as f32]).unwrap();
        assert_eq!(field.values()[2 * (3 + 2)..][..2], [2.0, 10.0]);
        assert_eq!(field.at(1, 2), [2.0, 10.0]);
        assert_eq!(field.get(2, 0), None);
        assert_eq!(field.get(0, 3), None);
    }

    #[test]
    fn stats_leave_unknown_pixels_out() {
        let values = vec![
            3.0,
            4.0,
            0.0,
            0.0,
            f32::NAN,
            1.0,
            1e10,
            0.0,
            0.0,
            f32::INFINITY,
            6.0,
            8.0,
        ];
        let stats = FlowField::new(2, 3, values).unwrap().stats();
        assert_eq!(
            stats,
            FlowStats {
                mean_magnitude: 5.0,
                max_magnitude: 10.0,
                unknown_pixels: 3
            }
        );
        let none = FlowField::new(1, 1, vec![f32::NAN, 0.0]).unwrap().stats();
        assert_eq!(
            none,
            FlowStats {
                mean_magnitude: 0.0,
                max_magnitude: 0.0,
                unknown_pixels: 1
            }
        );
    }
}
