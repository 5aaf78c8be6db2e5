//! Position encodings: trainable tables, one row per position, added to the byte embeddings
//! (input), concatenated to image features, or used as the decoder's queries (output)
//! (transformers' `PerceiverTrainablePositionEncoding`, DeepMind's `TrainablePositionEncoding`);
//! and Fourier features of a grid's coordinates ([`fourier_features`]).

use crate::checkpoint::names::TensorName;
use crate::checkpoint::Param;
use crate::config::FourierSpec;
use crate::error::{Error, Result};

/// A learned `[num_positions, channels]` table.
#[derive(Debug, Clone)]
pub struct TrainablePositions {
    table: Param,
}

impl TrainablePositions {
    pub(crate) fn load(get: &mut dyn FnMut(&str) -> Result<Param>, name: &TensorName) -> Result<Self> {
        Ok(Self {
            table: get(&name.name)?,
        })
    }

    /// How many positions the table has.
    pub fn num_positions(&self) -> usize {
        self.table.shape()[0]
    }

    /// Channels per position.
    pub fn channels(&self) -> usize {
        self.table.shape()[1]
    }

    /// The whole table, `[num_positions, channels]` row-major.
    pub fn table(&self) -> &[f32] {
        self.table.data()
    }

    /// The row of `position`; an error past the table.
    pub fn row(&self, position: usize) -> Result<&[f32]> {
        if position >= self.num_positions() {
            return Err(Error::InvalidInput(format!(
                "position {position} is outside the model's {}",
                self.num_positions()
            )));
        }
        let c = self.channels();
        Ok(&self.table.data()[position * c..][..c])
    }
}

/// Fourier position features of every position of a `dims[0] × … × dims[N-1]` grid, row-major
/// (the last dimension fastest): `[Π dims, spec.channels()]` (transformers'
/// `generate_fourier_features` on `build_linear_positions`; DeepMind's
/// `generate_fourier_features`). Each dimension's positions are `linspace(-1, 1, dims[i])`.
///
/// Each position `(p₀, …)` on `[-1, 1]ᴺ` gives the `pᵢ` themselves (with `concat_pos`), then
/// `sin(π·f·p₀)` for every band `f` of dimension 0, the same for dimension 1, …, then the cosines
/// in the same order. The arithmetic is transformers' in f32 — the same linspaces, products and
/// rounding — so that the features agree to the last bits of the sine.
pub fn fourier_features<const N: usize>(spec: &FourierSpec<N>, dims: [usize; N]) -> Vec<f32> {
    let axes: Vec<Vec<f32>> = dims.iter().map(|&n| linspace(-1.0, 1.0, n)).collect();
    let count: usize = dims.iter().product();
    let encoder = FourierEncoder::new(spec);
    let mut out = Vec::with_capacity(count * spec.channels());
    let mut pos = [0f32; N];
    let mut phases = Vec::with_capacity(N * spec.num_bands);
    for flat in 0..count {
        // Unravel row-major: the last dimension varies fastest (meshgrid "ij").
        let mut rest = flat;
        for d in (0..N).rev() {
            pos[d] = axes[d][rest % dims[d]];
            rest /= dims[d];
        }
        encoder.push(&pos, &mut phases, &mut out);
    }
    out
}

/// Fourier position features at the given positions (each on `[-1, 1]ᴺ`), in their order:
/// `[positions, spec.channels()]`, each row as [`fourier_features`] computes it.
pub fn fourier_features_at<const N: usize>(spec: &FourierSpec<N>, positions: &[[f32; N]]) -> Vec<f32> {
    let encoder = FourierEncoder::new(spec);
    let mut out = Vec::with_capacity(positions.len() * spec.channels());
    let mut phases = Vec::with_capacity(N * spec.num_bands);
    for pos in positions {
        encoder.push(pos, &mut phases, &mut out);
    }
    out
}

/// The position of output query `index` of a `dims` grid (row-major) as transformers'
/// `PerceiverBasicDecoder.decoder_query` and DeepMind's `BasicDecoder` compute it for
/// `subsampled_output_points`: `-1 + 2·i/dims[d]` per dimension, in f32 (`2·i` an integer, then
/// one f32 division and one f32 addition). Note the step `2/n`, not the input grid's
/// `2/(n − 1)`: the last query lies at `1 − 2/n`, not at 1.
///
/// # Errors
/// [`Error::InvalidInput`] when a dimension is 0 or `index` is not inside the grid.
pub fn subsampled_position<const N: usize>(index: usize, dims: [usize; N]) -> Result<[f32; N]> {
    let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if dims.contains(&0) || count.is_some_and(|count| index >= count) {
        return Err(Error::InvalidInput(format!(
            "query {index} is outside a grid of {dims:?}"
        )));
    }
    let mut pos = [0f32; N];
    let mut rest = index;
    for d in (0..N).rev() {
        pos[d] = subsampled_coordinate(rest % dims[d], dims[d]);
        rest /= dims[d];
    }
    Ok(pos)
}

/// Coordinate `i` of `n` of [`subsampled_position`]: `-1 + 2·i/n` in f32.
fn subsampled_coordinate(i: usize, n: usize) -> f32 {
    // 2·i in u128: i may be above usize::MAX / 2 (rounding to f32 is the same).
    -1.0 + (2 * i as u128) as f32 / n as f32
}

/// One spec's frequency bands, for computing many positions' features.
struct FourierEncoder<'a, const N: usize> {
    spec: &'a FourierSpec<N>,
    /// `num_bands` frequencies per dimension: `linspace(1, resolution / 2, num_bands)` in f32.
    bands: Vec<Vec<f32>>,
}

impl<'a, const N: usize> FourierEncoder<'a, N> {
    fn new(spec: &'a FourierSpec<N>) -> Self {
        let bands = spec
            .max_resolution
            .iter()
            .map(|&resolution| linspace(1.0, resolution as f32 / 2.0, spec.num_bands))
            .collect();
        Self { spec, bands }
    }

    /// Appends the features of `pos` to `out`; `phases` is scratch space.
    fn push(&self, pos: &[f32; N], phases: &mut Vec<f32>, out: &mut Vec<f32>) {
        let pi = std::f32::consts::PI;
        if self.spec.concat_pos {
            out.extend_from_slice(pos);
        }
        phases.clear();
        for (&p, freqs) in pos.iter().zip(&self.bands) {
            phases.extend(freqs.iter().map(|&f| pi * (p * f)));
        }
        out.extend(phases.iter().map(|&a| (a as f64).sin() as f32));
        if !self.spec.sine_only {
            out.extend(phases.iter().map(|&a| (a as f64).cos() as f32));
        }
    }
}

/// The Fourier features of one grid a row at a time, without the `[Π dims, channels]` array:
/// each feature depends on one coordinate only, so a table per dimension (its positions, and
/// their sines and cosines per band) gives every row. Rows equal [`fourier_features`]' bit for
/// bit ([`new`](Self::new)), or [`fourier_features_at`]'s at the output queries' positions
/// ([`subsampled`](Self::subsampled)); the tables hold `Σ dims × bands` values where the array
/// holds `Π dims × channels`.
#[derive(Debug, Clone)]
pub(crate) struct FourierGrid<const N: usize> {
    dims: [usize; N],
    spec: FourierSpec<N>,
    /// Per dimension, its positions: `linspace(-1, 1, dims[d])` ([`new`](Self::new)), or
    /// [`subsampled_position`]'s coordinates ([`subsampled`](Self::subsampled)).
    axes: Vec<Vec<f32>>,
    /// Per dimension, `[dims[d], num_bands]`: the sines of each position's phases.
    sines: Vec<Vec<f32>>,
    /// The same for the cosines (empty for sine-only specs).
    cosines: Vec<Vec<f32>>,
}

impl<const N: usize> FourierGrid<N> {
    pub(crate) fn new(spec: &FourierSpec<N>, dims: [usize; N]) -> Self {
        Self::on_axes(spec, dims.map(|n| linspace(-1.0, 1.0, n)))
    }

    /// The features of a grid's output queries, at [`subsampled_position`]'s positions: rows
    /// equal [`fourier_features_at`]'s of those positions bit for bit.
    pub(crate) fn subsampled(spec: &FourierSpec<N>, dims: [usize; N]) -> Self {
        Self::on_axes(
            spec,
            dims.map(|n| (0..n).map(|i| subsampled_coordinate(i, n)).collect()),
        )
    }

    /// The grid whose positions along dimension d are `axes[d]`.
    fn on_axes(spec: &FourierSpec<N>, axes: [Vec<f32>; N]) -> Self {
        let encoder = FourierEncoder::new(spec);
        let pi = std::f32::consts::PI;
        let dims = axes.each_ref().map(Vec::len);
        let axes = Vec::from(axes);
        let phases = |d: usize| -> Vec<f32> {
            axes[d]
                .iter()
                .flat_map(|&p| encoder.bands[d].iter().map(move |&f| pi * (p * f)))
                .collect()
        };
        let sines = (0..N)
            .map(|d| phases(d).iter().map(|&a| (a as f64).sin() as f32).collect())
            .collect();
        let cosines = (0..N)
            .map(|d| match spec.sine_only {
                true => Vec::new(),
                false => phases(d).iter().map(|&a| (a as f64).cos() as f32).collect(),
            })
            .collect();
        Self {
            dims,
            spec: *spec,
            axes,
            sines,
            cosines,
        }
    }

    /// Positions in the grid.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Channels per position.
    pub(crate) fn channels(&self) -> usize {
        self.spec.channels()
    }

    /// Writes the features of position `flat` (row-major) into `out`, [`channels`](Self::channels)
    /// values.
    pub(crate) fn row_into(&self, flat: usize, out: &mut [f32]) {
        let bands = self.spec.num_bands;
        let mut index = [0usize; N];
        let mut rest = flat;
        for d in (0..N).rev() {
            index[d] = rest % self.dims[d];
            rest /= self.dims[d];
        }
        let mut at = 0;
        if self.spec.concat_pos {
            for (axis, &i) in self.axes.iter().zip(&index) {
                out[at] = axis[i];
                at += 1;
            }
        }
        let tables = match self.spec.sine_only {
            true => &[&self.sines][..],
            false => &[&self.sines, &self.cosines][..],
        };
        for table in tables {
            for d in 0..N {
                out[at..at + bands].copy_from_slice(&table[d][index[d] * bands..][..bands]);
                at += bands;
            }
        }
        debug_assert_eq!(at, out.len());
    }
}

/// `torch.linspace` in f32: from both ends towards the middle, as PyTorch computes it, so the
/// values match bit for bit.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends_and_the_steps() {
        assert_eq!(linspace(-1.0, 1.0, 1), vec![-1.0]);
        assert_eq!(linspace(-1.0, 1.0, 2), vec![-1.0, 1.0]);
        assert_eq!(linspace(-1.0, 1.0, 5), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        let bands = linspace(1.0, 112.0, 64);
        assert_eq!((bands[0], bands[63]), (1.0, 112.0));
    }

    #[test]
    fn fourier_features_lay_out_positions_sines_then_cosines() {
        let spec = FourierSpec {
            num_bands: 3,
            max_resolution: [8, 6],
            concat_pos: true,
            sine_only: false,
        };
        assert_eq!(spec.channels(), 2 + 2 * 2 * 3);
        let f = fourier_features(&spec, [2, 3]);
        assert_eq!(f.len(), 6 * spec.channels());
        // Position (row 1, column 0) = (y, x) = (1, -1): bands 1, 2.5, 4 for y and 1, 2, 3 for x.
        let row = &f[3 * spec.channels()..][..spec.channels()];
        assert_eq!(&row[..2], &[1.0, -1.0]);
        let expect = |a: f64| a as f32;
        let pi = std::f64::consts::PI;
        assert!((row[2] - expect(pi.sin())).abs() < 1e-6);
        assert!((row[4] - expect((pi * 4.0).sin())).abs() < 1e-5);
        assert!((row[5] - expect((-pi * 1.0).sin())).abs() < 1e-6);
        assert!((row[8] - expect((pi * 1.0).cos())).abs() < 1e-6);
        assert!((row[13] - expect((-pi * 3.0).cos())).abs() < 1e-5);
    }

    #[test]
    fn a_grid_of_any_dimension_is_its_positions_features() {
        let spec = FourierSpec {
            num_bands: 4,
            max_resolution: [3, 16, 12],
            concat_pos: true,
            sine_only: false,
        };
        assert_eq!(spec.channels(), 3 + 2 * 3 * 4);
        let dims = [2, 3, 5];
        let grid = fourier_features(&spec, dims);
        let axes = dims.map(|n| linspace(-1.0, 1.0, n));
        let mut positions = Vec::new();
        for &t in &axes[0] {
            for &y in &axes[1] {
                for &x in &axes[2] {
                    positions.push([t, y, x]);
                }
            }
        }
        assert_eq!(grid, fourier_features_at(&spec, &positions));
        // Row (1, 2, 4) = the last: (1, 1, 1); its first sine is of band 1 of the frames.
        let last = &grid[29 * spec.channels()..];
        assert_eq!(&last[..3], &[1.0, 1.0, 1.0]);
        assert!((last[3] - std::f32::consts::PI.sin()).abs() < 1e-6);
        // One dimension, and the 2-D layout unchanged.
        let audio = FourierSpec {
            num_bands: 3,
            max_resolution: [96],
            concat_pos: false,
            sine_only: true,
        };
        assert_eq!(fourier_features(&audio, [7]).len(), 7 * 3);
        let flat = FourierSpec {
            num_bands: 3,
            max_resolution: [8, 6],
            concat_pos: true,
            sine_only: false,
        };
        let at: Vec<[f32; 2]> = [-1.0f32, 1.0]
            .iter()
            .flat_map(|&y| [-1.0f32, 0.0, 1.0].map(|x| [y, x]))
            .collect();
        assert_eq!(fourier_features(&flat, [2, 3]), fourier_features_at(&flat, &at));
    }

    #[test]
    fn a_grid_row_by_row_is_the_whole_array() {
        let check = |spec: FourierSpec<2>, dims: [usize; 2]| {
            let whole = fourier_features(&spec, dims);
            let grid = FourierGrid::new(&spec, dims);
            assert_eq!(grid.len(), dims[0] * dims[1]);
            let mut rows = vec![0f32; grid.len() * grid.channels()];
            for (flat, row) in rows.chunks_exact_mut(grid.channels()).enumerate() {
                grid.row_into(flat, row);
            }
            assert_eq!(rows, whole, "{spec:?} {dims:?}");
        };
        let spec = FourierSpec {
            num_bands: 5,
            max_resolution: [7, 9],
            concat_pos: true,
            sine_only: false,
        };
        check(spec, [3, 4]);
        check(spec, [1, 6]);
        check(
            FourierSpec {
                concat_pos: false,
                sine_only: true,
                ..spec
            },
            [4, 3],
        );
        let video = FourierSpec {
            num_bands: 2,
            max_resolution: [3, 5, 4],
            concat_pos: true,
            sine_only: false,
        };
        let grid = FourierGrid::new(&video, [2, 3, 2]);
        let mut rows = vec![0f32; 12 * video.channels()];
        for (flat, row) in rows.chunks_exact_mut(video.channels()).enumerate() {
            grid.row_into(flat, row);
        }
        assert_eq!(rows, fourier_features(&video, [2, 3, 2]));
    }

    #[test]
    fn a_subsampled_grid_row_by_row_is_the_features_at_its_query_positions() {
        let check = |spec: FourierSpec<3>, dims: [usize; 3]| {
            let grid = FourierGrid::subsampled(&spec, dims);
            let count = dims.iter().product::<usize>();
            let positions: Vec<[f32; 3]> = (0..count)
                .map(|i| subsampled_position(i, dims).unwrap())
                .collect();
            let mut rows = vec![f32::NAN; count * grid.channels()];
            for (flat, row) in rows.chunks_exact_mut(grid.channels()).enumerate() {
                grid.row_into(flat, row);
            }
            let expected = fourier_features_at(&spec, &positions);
            assert!(
                rows.iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{spec:?} {dims:?}"
            );
            assert_eq!(rows.len(), expected.len());
        };
        let video = FourierSpec {
            num_bands: 4,
            max_resolution: [3, 224, 224],
            concat_pos: true,
            sine_only: false,
        };
        check(video, [2, 7, 5]);
        check(video, [1, 3, 11]);
        check(
            FourierSpec {
                concat_pos: false,
                sine_only: true,
                ..video
            },
            [3, 2, 4],
        );
    }

    #[test]
    fn subsampled_positions_step_two_over_the_size() {
        // Index 5 of a 2 x 3 grid is (1, 2): -1 + 2/2 and -1 + 4/3, in f32.
        assert_eq!(
            subsampled_position(5, [2, 3]).unwrap(),
            [0.0, -1.0 + 4.0f32 / 3.0]
        );
        assert_eq!(subsampled_position(0, [4]).unwrap(), [-1.0]);
        // The last query stops short of 1, unlike the input grid's linspace.
        assert_eq!(subsampled_position(3, [4]).unwrap(), [0.5]);
        assert_eq!(subsampled_position(7, [2, 2, 2]).unwrap(), [0.0, 0.0, 0.0]);
        // A side past usize::MAX / 2: 2·i does not overflow.
        let big = usize::MAX - 1;
        assert_eq!(subsampled_position(big - 1, [big]).unwrap(), [1.0]);
    }

    /// A dimension of 0 divided by zero; an index past the grid wrapped around to another query.
    #[test]
    fn subsampled_positions_outside_the_grid_are_errors() {
        assert!(matches!(subsampled_position(3, [0]), Err(Error::InvalidInput(_))));
        assert!(subsampled_position(0, [3, 0]).is_err());
        assert!(subsampled_position(4, [4]).is_err());
        assert!(subsampled_position(6, [2, 3]).is_err());
        // A grid larger than usize: every index is inside it.
        assert!(subsampled_position(usize::MAX, [usize::MAX, 2]).is_ok());
    }
}
