//! f32 matrix products on strided views, through the `gemm` crate: the portable path, where no
//! packed kernel ([`crate::sgemm`]) runs.
//!
//! The views let a caller multiply operands where they lie, with nothing copied or transposed
//! first: per-head slices of q/k/v are read in place, weights are read as stored (`[out, in]`),
//! and a bias or residual already in the output is accumulated into rather than added by a
//! separate pass. bf16 products are in [`crate::bf16`].

/// A row-major matrix inside a slice: element `(r, c)` is `data[r * stride + c]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The slice the matrix lies in.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in `data` between the starts of two consecutive rows.
    pub stride: usize,
}

impl<'a> View<'a> {
    /// A dense `[rows, cols]` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// A `[rows, cols]` matrix whose rows start `stride` values apart.
    ///
    /// # Panics
    /// If the matrix does not fit in `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        let view = Self {
            data,
            rows,
            cols,
            stride,
        };
        assert!(
            view.fits(data.len()),
            "matrix view {rows}x{cols} (stride {stride}) exceeds its slice of {}",
            data.len()
        );
        view
    }

    /// Whether the matrix lies inside the first `len` values of its slice.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.stride + self.cols <= len
    }
}

/// The rows of one or more matrices of one width, one after another, each part where it lies:
/// the weights of layers that read one input (attention's query, key and value projections),
/// packed as one matrix without being stacked in memory first.
#[derive(Debug, Clone, Copy)]
pub struct StackedRows<'a> {
    parts: &'a [View<'a>],
    rows: usize,
    cols: usize,
}

impl<'a> StackedRows<'a> {
    /// `parts`' rows in order.
    ///
    /// # Panics
    /// If there are no parts or they differ in width.
    pub fn new(parts: &'a [View<'a>]) -> Self {
        let cols = parts.first().expect("StackedRows: no parts").cols;
        assert!(
            parts.iter().all(|part| part.cols == cols),
            "StackedRows: parts of different widths"
        );
        Self {
            parts,
            rows: parts.iter().map(|part| part.rows).sum(),
            cols,
        }
    }

    /// Number of rows, all parts together.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`'s `cols` values.
    ///
    /// # Panics
    /// If `r` is not below [`rows`](Self::rows).
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        let mut rest = r;
        for part in self.parts {
            if rest < part.rows {
                return &part.data[rest * part.stride..][..self.cols];
            }
            rest -= part.rows;
        }
        panic!("StackedRows: row {r} of {}", self.rows)
    }
}

/// Where a packed weight matrix (f32 or bf16) reads W from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// W itself (`[n, k]`), row by row: weights and attention keys as stored.
    Rows(StackedRows<'a>),
    /// Wᵀ (`[k, n]`), as attention values are stored.
    Columns(View<'a>),
}

impl<'a> Source<'a> {
    /// A view of W (`transposed`) or of Wᵀ; `parts` holds the one view.
    pub(crate) fn of(parts: &'a [View<'a>; 1], transposed: bool) -> Self {
        match transposed {
            true => Source::Rows(StackedRows::new(parts)),
            false => Source::Columns(parts[0]),
        }
    }

    /// (n, k)
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            Source::Rows(w) => (w.rows(), w.cols()),
            Source::Columns(view) => (view.cols, view.rows),
        }
    }
}

/// The right operand of a product.
#[derive(Debug, Clone, Copy)]
pub enum Rhs<'a> {
    /// `B` itself, `[k, n]`.
    Plain(View<'a>),
    /// `B` stored transposed, `[n, k]`: a weight matrix as PyTorch stores it, or keys for `q·kᵀ`.
    Transposed(View<'a>),
}

impl Rhs<'_> {
    /// (k, n)
    fn dims(&self) -> (usize, usize) {
        match self {
            Rhs::Plain(v) => (v.rows, v.cols),
            Rhs::Transposed(v) => (v.cols, v.rows),
        }
    }
}

/// `dst ← scale · a · b (+ dst if accumulate)`, `dst` a `[a.rows, n]` matrix with row stride
/// `dst_stride` inside `dst`. `threads` > 1 splits the product over rayon's pool.
///
/// # Panics
/// If the inner dimensions differ, a view does not lie inside its slice, or `dst` is too small
/// for the product or has rows that overlap (`dst_stride < n`).
pub fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: View,
    b: Rhs,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let (k, n) = b.dims();
    let m = a.rows;
    assert_eq!(a.cols, k, "matmul: inner dimensions {} and {k}", a.cols);
    let out = View {
        data: dst,
        rows: m,
        cols: n,
        stride: dst_stride,
    };
    assert!(out.fits(dst.len()), "matmul: destination too small");
    assert!(m <= 1 || dst_stride >= n, "matmul: destination rows overlap");
    let b_view = match b {
        Rhs::Plain(v) | Rhs::Transposed(v) => v,
    };
    assert!(
        a.fits(a.data.len()) && b_view.fits(b_view.data.len()),
        "matmul: an operand view exceeds its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_stride..r * dst_stride + n].fill(0.0);
            }
        }
        return;
    }
    let (b_data, b_cs, b_rs) = match b {
        Rhs::Plain(v) => (v.data, 1isize, v.stride as isize),
        Rhs::Transposed(v) => (v.data, v.stride as isize, 1isize),
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads.min(crate::MAX_THREADS))
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its slice (`fits` above), the rows of `dst`
    // do not overlap, and `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.stride as isize,
            b_data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Random parts of `heights` rows of `k` values at row stride `stride`, and their rows
    /// stacked densely: what a [`StackedRows`] of the parts ([`parts_of`]) holds. The parts'
    /// heights need not be multiples of a panel, so that panels straddle them.
    pub(crate) fn stacked_parts(heights: &[usize], k: usize, stride: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
        let bases: Vec<Vec<f32>> = (0..heights.len())
            .map(|p| random(heights[p] * stride, 50 + p as u64))
            .collect();
        let dense = bases
            .iter()
            .zip(heights)
            .flat_map(|(base, &h)| (0..h).flat_map(move |r| base[r * stride..][..k].to_vec()))
            .collect();
        (bases, dense)
    }

    /// [`stacked_parts`]' parts as views.
    pub(crate) fn parts_of<'a>(
        bases: &'a [Vec<f32>],
        heights: &[usize],
        k: usize,
        stride: usize,
    ) -> Vec<View<'a>> {
        bases
            .iter()
            .zip(heights)
            .map(|(base, &h)| View::strided(base, h, k, stride))
            .collect()
    }

    /// Runs `check(parts, dense, n, k)` on each stack the packing tests take: parts whose
    /// heights straddle panels of 32 and 64 rows, empty parts, and k = 0.
    pub(crate) fn for_each_stack(check: impl Fn(&[View], &[f32], usize, usize)) {
        for (heights, k) in [([5, 70, 26], 37), ([0, 9, 0], 37), ([2, 3, 1], 0)] {
            let stride = k + 4;
            let (bases, dense) = stacked_parts(&heights, k, stride);
            let parts = parts_of(&bases, &heights, k, stride);
            check(&parts, &dense, heights.iter().sum(), k);
        }
    }

    /// A stack's rows are its parts' rows in order, and a row past them is refused.
    #[test]
    fn stacked_rows_are_the_parts_rows_in_order() {
        let (heights, k, stride) = ([3, 0, 5], 4, 6);
        let (bases, dense) = stacked_parts(&heights, k, stride);
        let parts = parts_of(&bases, &heights, k, stride);
        let stack = StackedRows::new(&parts);
        assert_eq!((stack.rows(), stack.cols()), (8, k));
        for r in 0..8 {
            assert_eq!(stack.row(r), &dense[r * k..][..k], "row {r}");
        }
        assert!(std::panic::catch_unwind(|| stack.row(8)).is_err());
    }

    /// The plain triple loop in f64.
    pub(crate) fn reference(a: &View, b: &Rhs, scale: f32) -> Vec<f64> {
        let (k, n) = b.dims();
        let mut out = vec![0f64; a.rows * n];
        for r in 0..a.rows {
            for c in 0..n {
                let mut s = 0f64;
                for i in 0..k {
                    let bv = match b {
                        Rhs::Plain(v) => v.data[i * v.stride + c],
                        Rhs::Transposed(v) => v.data[c * v.stride + i],
                    };
                    s += a.data[r * a.stride + i] as f64 * bv as f64;
                }
                out[r * n + c] = s * scale as f64;
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_triple_loop() {
        for (m, n, k, threads) in [
            (1, 1, 1, 1),
            (7, 5, 3, 1),
            (33, 17, 65, 2),
            (256, 48, 160, 2),
            (3, 262, 96, 2),
        ] {
            // Operands sit at an offset inside wider matrices, as per-head slices do.
            let a_all = random(m * (k + 3), 1);
            let a = View::strided(&a_all[2..], m, k, k + 3);
            let bt_all = random(n * (k + 5), 2);
            let bt = View::strided(&bt_all[1..], n, k, k + 5);
            let b_all = random(k * (n + 4), 3);
            let b = View::strided(&b_all, k, n, n + 4);
            for rhs in [Rhs::Transposed(bt), Rhs::Plain(b)] {
                let want = reference(&a, &rhs, 0.5);
                let stride = n + 2;
                let mut dst = vec![1f32; m * stride];
                matmul(&mut dst, stride, a, rhs, 0.5, true, threads);
                for r in 0..m {
                    for c in 0..n {
                        let got = dst[r * stride + c] as f64;
                        assert!(
                            (got - 1.0 - want[r * n + c]).abs() < 1e-4,
                            "{m}x{n}x{k} at {r},{c}"
                        );
                    }
                }
                matmul(&mut dst, stride, a, rhs, 0.5, false, threads);
                assert!((dst[0] as f64 - want[0]).abs() < 1e-4);
            }
        }
    }
}
