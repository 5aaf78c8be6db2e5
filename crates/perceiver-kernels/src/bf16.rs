//! bf16 matrix products `C += A·Wᵀ` with f32 accumulation, W a weight matrix packed once.
//!
//! W (`[n, k]`, f32 as stored) is packed once into bf16 column panels laid out for the
//! `vdpbf16ps` instruction (AVX-512 BF16): panel `p` holds output columns `32p..32p+32`, and for
//! each pair of inputs `(2i, 2i+1)` two 64-byte vectors whose 32-bit lanes are the pairs
//! `(W[c][2i], W[c][2i+1])`. A is converted to bf16 per call, row by row (a row of bf16 read as
//! 32-bit lanes is its pairs). The microkernel keeps an `MR × 32` block of C in 24 registers; each step
//! broadcasts one row's input pair and does two `vdpbf16ps`, 64 multiply-adds each.
//!
//! Where the CPU lacks AVX-512 BF16 (or has Intel's, which does half the multiply-adds of its
//! FMA units) the same packed data goes through f32 multiply-adds on bf16 widened to f32 with a
//! shift or a mask (bf16 is the top half of an f32), or else through a portable kernel. A task
//! of many rows widens each panel once into f32 and runs the f32 products' AVX-512 or AVX2
//! microkernel over it (`PackedMatrix::widened_pass`); a task of few rows widens in registers
//! per block (`avx2::kernel`). All compute the same products (a product of two bf16 values is
//! exact in f32), accumulated in the same order within each pair, so results agree with the
//! AVX-512 BF16 kernel up to f32 rounding, and the widening ways agree bit for bit.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use crate::activation::Activation;
use crate::aligned::Lines;
use crate::amx;
use crate::cpu::{self, dispatch, Bf16Kernel};
use crate::matmul::{Source, StackedRows, View};
use crate::rows;
use crate::send_ptr::SendPtr;
use crate::sgemm::{Ahead, Edges, Start};

/// Rows of C per microkernel call.
pub const MR: usize = 12;
/// Columns of C per panel (two 16-lane vectors).
pub const NR: usize = 32;
// The panels are AMX's B tiles as they are (see [`amx`]), and two of them side by side the
// f32 AVX-512 microkernel's panel (the widened pass).
const _: () = assert!(NR == amx::PANEL_COLS && 2 * NR == crate::sgemm::PANEL);
/// Rows of A per task at most when there are many (a batch, a long text's decode): their bf16
/// pairs (192 × 1280 inputs: 480 KB) stay in L2 while the task's panels pass over them.
const CHUNK_ROWS: usize = 16 * MR;

/// Rows of a task from which the widening kernels (AVX2, widened AVX-512) widen whole panels
/// ([`widens_panels`]).
const WIDENED_MIN_ROWS: usize = 18;

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN). Branch-free so packing
/// loops vectorise.
#[inline(always)]
pub fn to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7FC0
    } else {
        rounded
    }
}

/// bf16 bits → the f32 they stand for (exact).
#[inline(always)]
pub fn from_bf16_bits(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The rows of a bf16 product's input A (`[m, k]`).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// A itself, row-major f32.
    Dense(&'a [f32]),
    /// A made row by row: `make(r, row)` writes all k values of row `r` (a LayerNorm of another
    /// array's row, say). Each row goes from a scratch row in L1 straight into the product's
    /// bf16 rows, so A is never stored whole in f32 (but on the widened passes, per task).
    /// Where the panels are split over tasks (fewer rows than a block a thread), each task
    /// makes the same rows.
    Made(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

/// A weight matrix `W` (`[n, k]`) packed for `C += A·Wᵀ` in bf16.
#[derive(Clone)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    /// Input pairs, `ceil(k / 2)` rounded up to whole AMX tiles (16 pairs); the extra are zero.
    pairs: usize,
    /// `[panels][pairs][NR]` lanes of packed pairs (low half = even input, high = odd), each
    /// panel on a cache line.
    data: Lines,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix {{ n: {}, k: {} }}", self.n, self.k)
    }
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16_bits(lo) as u32 | ((to_bf16_bits(hi) as u32) << 16)
}

impl PackedMatrix {
    /// Packs `w`, `[n, k]` row-major.
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "pack_transposed: {n}x{k} matrix from {} values",
            w.len()
        );
        Self::pack_view(View::dense(w, n, k), true, true)
    }

    /// Packs W from a strided view: W itself (`[n, k]`) when `transposed`, as the weights of a
    /// linear layer and attention's keys are stored; else Wᵀ (`[k, n]`), as attention's values
    /// are (the weighted sum `P · V` is `P · Wᵀ` with `W = Vᵀ`). No transposed copy is made.
    /// `parallel` shares the panels out over the pool (a weight matrix; attention's keys over a
    /// block of a long input); a caller already running as one of the pool's tasks (a head's
    /// keys or values) packs on its own thread.
    pub fn pack_view(view: View, transposed: bool, parallel: bool) -> Self {
        assert!(
            view.rows == 0 || view.data.len() >= (view.rows - 1) * view.stride + view.cols,
            "pack_view: the view does not lie inside its slice"
        );
        let parts = [view];
        Self::pack_source(Source::of(&parts, transposed), parallel)
    }

    /// Packs W given row by row where its rows lie ([`StackedRows`]: layers that read one
    /// input, packed as one without being stacked in memory first), over rayon's pool.
    pub fn pack_stacked(w: StackedRows) -> Self {
        Self::pack_source(Source::Rows(w), true)
    }

    /// Packs W from `view` again, over the values packed before, as
    /// [`pack_view`](Self::pack_view) would pack it: `view` holds a matrix of the same shape and
    /// orientation as the first time (weights that change between products, as in training),
    /// and no new buffer is made (a fresh one of a large weight is fresh pages to fault in).
    /// The padding, never written by packing, stays zero.
    ///
    /// # Panics
    /// If the shape differs, or the view does not lie inside its slice.
    pub fn repack(&mut self, view: View, transposed: bool, parallel: bool) {
        assert!(
            view.fits(view.data.len()),
            "repack: the view does not lie inside its slice"
        );
        let parts = [view];
        let source = Source::of(&parts, transposed);
        let (n, k) = source.dims();
        assert!(
            (n, k) == (self.n, self.k),
            "repack: a {n}x{k} W over a {}x{}",
            self.n,
            self.k
        );
        let lda = self.pairs * NR;
        if lda == 0 {
            return;
        }
        let fill = |(p, panel): (usize, &mut [u32])| pack_panel(source, k, p, panel);
        if parallel {
            self.data.par_chunks_mut(lda).enumerate().for_each(fill);
        } else {
            self.data.chunks_mut(lda).enumerate().for_each(fill);
        }
    }

    fn pack_source(source: Source, parallel: bool) -> Self {
        let (n, k) = source.dims();
        let pairs = packed_pairs(k);
        let panels = n.div_ceil(NR);
        // Each panel zeroed (its padding) just before it is packed.
        let data = Lines::from_rows(panels, pairs * NR, parallel, |p, panel| {
            pack_panel(source, k, p, panel)
        });
        Self { n, k, pairs, data }
    }

    /// Rows of W: the width of the products' output.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `out[m, n] += a[m, k] · Wᵀ`, both row-major and dense.
    pub fn matmul_accumulate(&self, a: &[f32], m: usize, out: &mut [f32], threads: usize) {
        self.accumulate(a, m, None, out, threads)
    }

    /// `out[m, n] += a[m, k] · Wᵀ + bias`, both row-major and dense: a layer's output added to
    /// its residual stream, the bias added by the microkernels as they store their sums (as
    /// [`sgemm::PackedWeights::linear_into`](crate::sgemm::PackedWeights::linear_into)).
    pub fn linear_into(&self, a: &[f32], m: usize, bias: &[f32], out: &mut [f32], threads: usize) {
        self.assert_bias(bias);
        self.accumulate(a, m, Some(bias), out, threads)
    }

    /// Panics unless `bias` has a value for each of W's rows.
    fn assert_bias(&self, bias: &[f32]) {
        assert_eq!(
            bias.len(),
            self.n,
            "bf16 matmul: the bias has {} values, W {} rows",
            bias.len(),
            self.n
        );
    }

    /// `out += a · Wᵀ`, plus `bias` in every row when given.
    fn accumulate(&self, a: &[f32], m: usize, bias: Option<&[f32]>, out: &mut [f32], threads: usize) {
        assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        assert_eq!(out.len(), m * self.n, "bf16 matmul: C is not {m}x{}", self.n);
        if self.k == 0 {
            if let Some(bias) = bias {
                rows::add_to_rows(out, bias);
            }
            return;
        }
        let edges = Edges {
            bias,
            bias_onto_c: true,
            ..Edges::default()
        };
        // SAFETY: A is m×k and C m×n, dense (asserted), C borrowed mutably and initialised.
        unsafe {
            self.run(
                cpu::bf16_kernel(),
                Rows::Dense(a),
                m,
                out.as_mut_ptr(),
                self.n,
                threads,
                edges,
            )
        }
    }

    /// A linear layer, `act(a[m, k] · Wᵀ + bias)`, into a new `[m, n]` buffer: as
    /// [`sgemm::PackedWeights::linear`](crate::sgemm::PackedWeights::linear), the microkernels
    /// start C from the bias, and each task applies the activation to its block last.
    pub fn linear(
        &self,
        a: &[f32],
        m: usize,
        bias: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        self.linear_rows(Rows::Dense(a), m, bias, activation, threads)
    }

    /// [`linear`](Self::linear) of `m` rows of A given as [`Rows`].
    pub fn linear_rows(
        &self,
        a: Rows,
        m: usize,
        bias: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        if let Rows::Dense(a) = a {
            assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        }
        self.assert_bias(bias);
        if m == 0 || self.n == 0 || self.k == 0 {
            // Nothing to multiply (no rows, outputs or inputs): the bias, activated.
            let mut out = rows::repeat_rows(bias, m);
            if let Some(act) = activation {
                rows::activate(&mut out, act);
            }
            return out;
        }
        let mut out = Vec::with_capacity(m * self.n);
        let edges = Edges {
            bias: Some(bias),
            activation,
            ..Edges::default()
        };
        // SAFETY: A is m×k (asserted, or made row by row); C is `out`'s m·n allocated values.
        // From the bias, every task writes each element of its block without reading it first,
        // and the tasks' blocks cover C (m, n, k > 0), so all m·n values are initialised when
        // `run` returns.
        unsafe {
            self.run(cpu::bf16_kernel(), a, m, out.as_mut_ptr(), self.n, threads, edges);
            out.set_len(m * self.n);
        }
        out
    }

    /// `A · Wᵀ` of `m` rows of A given as [`Rows`], set into C's `m` rows of `n` values, `ldc`
    /// apart from `c`: never read, so they may be uninitialised. An attention head's weighted
    /// sum goes this way straight into its columns of the heads' rows, with no output of its
    /// own to copy there. (On AMX, whose loop writes dense rows, the product is made apart and
    /// copied.)
    ///
    /// # Safety
    /// `c` must be valid for writes of rows `0..m` × columns `0..n` at row stride `ldc`, and no
    /// one else may access them during the call.
    pub unsafe fn matmul_rows_raw(&self, a: Rows, m: usize, c: *mut f32, ldc: usize, threads: usize) {
        let n = self.n;
        assert!(
            ldc >= n,
            "bf16 matmul: C's rows ({ldc} apart) are narrower than {n}"
        );
        if let Rows::Dense(a) = a {
            assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        }
        let kernel = cpu::bf16_kernel();
        if kernel == Bf16Kernel::Amx || self.k == 0 {
            let rows = self.linear_rows(a, m, &vec![0.0; n], None, threads);
            for (r, row) in rows.chunks_exact(n).enumerate() {
                // SAFETY: row r < m of C, n values, as the caller promises.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), n) };
            }
            return;
        }
        let edges = Edges {
            overwrite: true,
            ..Edges::default()
        };
        // SAFETY: A is m×k (asserted, or made row by row); C as the caller promises, each
        // element set without being read.
        unsafe { self.run(kernel, a, m, c, ldc, threads, edges) };
    }

    /// [`linear_rows`](Self::linear_rows) with its output kept as the bf16 input of the next
    /// product on AMX tiles ([`linear_into_from_tiles`](Self::linear_into_from_tiles) of a
    /// matrix taking this one's n outputs), where the products run on AMX and n is whole panels
    /// of 32; `None` elsewhere, or with nothing to multiply. Its values are `linear_rows`'
    /// rounded to bf16 as the next product would round them, bit for bit; but each block goes
    /// from the tiles through L1 into the next product's tile order, where `linear_rows` would
    /// store the f32 rows for the next product to read back and convert.
    pub fn linear_rows_to_tiles(
        &self,
        a: Rows,
        m: usize,
        bias: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Option<TileRows> {
        let whole_panels = self.n.is_multiple_of(amx::PANEL_COLS);
        if cpu::bf16_kernel() != Bf16Kernel::Amx || !whole_panels || m == 0 || self.n == 0 || self.k == 0 {
            return None;
        }
        if let Rows::Dense(a) = a {
            assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        }
        self.assert_bias(bias);
        let pairs = self.n / 2;
        let edges = Edges {
            bias: Some(bias),
            activation,
            ..Edges::default()
        };
        let out = |lanes: &mut [MaybeUninit<u32>]| {
            let to = amx::Out::Tiles(lanes.as_mut_ptr().cast());
            // SAFETY: `lanes` are the next X's, exclusively borrowed; the kernel is AMX.
            unsafe { self.amx(a, m, to, edges, threads) }
        };
        // SAFETY: the product writes every lane: each panel of C is one step of the next X's
        // pairs, and each of its blocks writes its 32 rows there (rows past m as zeros).
        let x = unsafe { Lines::from_writes(m.div_ceil(amx::ROWS) * amx::ROWS * pairs, out) };
        Some(TileRows { x, m, pairs })
    }

    /// `out[m, n] += x · Wᵀ + bias` (a residual stream, as [`linear_into`](Self::linear_into)),
    /// X given by [`linear_rows_to_tiles`](Self::linear_rows_to_tiles) of a matrix with this
    /// one's k outputs.
    pub fn linear_into_from_tiles(&self, x: &TileRows, bias: &[f32], out: &mut [f32], threads: usize) {
        assert_eq!(
            x.pairs, self.pairs,
            "bf16 matmul: X's tiles are not {} inputs",
            self.k
        );
        assert_eq!(
            out.len(),
            x.m * self.n,
            "bf16 matmul: C is not {}x{}",
            x.m,
            self.n
        );
        self.assert_bias(bias);
        let edges = Edges {
            bias: Some(bias),
            bias_onto_c: true,
            ..Edges::default()
        };
        // SAFETY: C is `out`, m×n (asserted), borrowed mutably and initialised; X's tiles were
        // made where the products run on AMX.
        unsafe {
            amx::matmul(
                self.amx_operands(&x.x, x.m),
                amx::Out::Rows(out.as_mut_ptr()),
                edges,
                threads,
            )
        };
    }

    /// The product on AMX tiles: A converted to bf16 in tile order, C at `out` (its f32 rows,
    /// or the next product's input) with C's `edges`.
    ///
    /// # Safety
    /// As [`amx::matmul`]'s for `out`.
    unsafe fn amx(&self, a: Rows, m: usize, out: amx::Out, edges: Edges, threads: usize) {
        let x = amx_rows(a, m, self.k, self.pairs, true);
        // SAFETY: the caller's promises; the kernel is AMX only where it is available.
        unsafe { amx::matmul(self.amx_operands(&x, m), out, edges, threads) };
    }

    /// This matrix and `x` (A in tile order, [`amx_rows`]) as [`amx::matmul`]'s operands.
    fn amx_operands<'a>(&'a self, x: &'a [u32], m: usize) -> amx::Operands<'a> {
        amx::Operands {
            w: &self.data,
            n: self.n,
            pairs: self.pairs,
            x,
            m,
        }
    }

    /// The product into C (`[m, n]`, rows `ldc` apart, at `c`; dense on AMX) with C's `edges`,
    /// on `kernel`: AMX tiles run their own loop ([`amx::matmul`]); the AVX-512 BF16, AVX2 and
    /// portable microkernels the blocked one below, where the widening kernels' tasks of many
    /// rows take the widened pass instead. Work is cut into row chunks × groups of panels, as
    /// the f32 products are; each task converts its own rows of A to bf16 (in parallel, and kept
    /// in L2 while every panel of its group passes over them), and the microkernel stores its
    /// block straight into C as its `Start` says.
    ///
    /// # Safety
    /// `c` must be valid for writes of rows `0..m` × columns `0..n` at row stride `ldc`, and no
    /// one else may access them during the call; with a bias that C starts from instead of its
    /// values, or with `overwrite`, they may be uninitialised. `kernel` must run on this CPU.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        kernel: Bf16Kernel,
        a: Rows,
        m: usize,
        c: *mut f32,
        ldc: usize,
        threads: usize,
        edges: Edges,
    ) {
        let (n, k) = (self.n, self.k);
        let threads = crate::clamp_threads(threads);
        if kernel == Bf16Kernel::Amx {
            assert!(ldc == n, "bf16 matmul: AMX writes dense rows of C");
            // SAFETY: the caller's promises, which are `amx::matmul`'s.
            return unsafe { self.amx(a, m, amx::Out::Rows(c), edges, threads) };
        }
        if m == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        // Rows are split over the tasks, each converting its own rows of A and reading all of
        // W: one chunk per thread for one text, chunks of about CHUNK_ROWS for more. Fewer rows
        // than a block per thread (a short decode) split the panels instead, each task
        // converting the same few rows.
        let (chunks, groups) = if threads == 1 || m >= threads * MR {
            (m.div_ceil(CHUNK_ROWS).next_multiple_of(threads), 1)
        } else {
            (1, (2 * threads).min(panels))
        };
        // Split evenly to the row: the last block of a chunk may be narrower than MR rows, and
        // costs about its share (a microkernel per block height).
        let chunk_rows = move |chunk: usize| chunk * m / chunks..(chunk + 1) * m / chunks;
        let per_group = panels.div_ceil(groups);
        let c_ptr = SendPtr(c);
        let task = |task: usize| {
            let (chunk, group) = (task / groups, task % groups);
            let rows = chunk_rows(chunk);
            let cols = (group * per_group * NR).min(n)..((group + 1) * per_group * NR).min(n);
            if rows.is_empty() || cols.is_empty() {
                return;
            }
            let widened = widens_panels(kernel, rows.len());
            if widened {
                // SAFETY: rows `rows` < m × columns `cols` ⊂ 0..n lie in C, in this task's block
                // (C as `run` requires).
                unsafe { edges.begin(c_ptr.get(), ldc, rows.clone(), cols.clone()) };
            }
            let first = rows.start;
            let make_task_row;
            let a_rows = match a {
                Rows::Dense(a) => Rows::Dense(&a[first * k..rows.end * k]),
                Rows::Made(make) => {
                    make_task_row = move |r: usize, row: &mut [f32]| make(first + r, row);
                    Rows::Made(&make_task_row)
                }
            };
            let task_panels = group * per_group..((group + 1) * per_group).min(panels);
            // SAFETY: the task's rows start inside C; its panels' columns are its block's.
            let c_rows = unsafe { c_ptr.get().add(rows.start * ldc) };
            // SAFETY: C's rows `rows` × the panels' columns are this task's block (above).
            unsafe {
                if widened {
                    self.widened_pass(kernel, a_rows, rows.len(), task_panels, c_rows, ldc)
                } else {
                    self.blocked_pass(kernel, a_rows, rows.len(), task_panels, c_rows, ldc, edges)
                }
            }
            // SAFETY: as above; every element of the block is written by now.
            unsafe { edges.end(c_ptr.get(), ldc, rows, cols) };
        };
        if threads > 1 && chunks * groups > 1 {
            (0..chunks * groups).into_par_iter().for_each(task);
        } else {
            (0..chunks * groups).for_each(task);
        }
    }
}

impl PackedMatrix {
    /// `C[..rows] += A · Wᵀ` over `panels`, A (`[rows, k]`) converted to bf16 pairs once
    /// ([`bf16_rows`]) and `kernel` run per block of [`MR`] rows and panel; C (`[rows, n]`, rows
    /// `ldc` apart) at `c`. The kernel starts C from `edges`' bias, or sets it
    /// ([`Edges::start`]); the activation is the caller's.
    ///
    /// # Safety
    /// C's `rows` rows × the panels' columns must be readable and writable by the caller alone.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_pass(
        &self,
        kernel: Bf16Kernel,
        a: Rows,
        rows: usize,
        panels: Range<usize>,
        c: *mut f32,
        ldc: usize,
        edges: Edges,
    ) {
        let (n, pairs) = (self.n, self.pairs);
        let lda = a_stride(pairs);
        let packed_a = bf16_rows(a, rows, self.k, lda);
        let blocks = rows.div_ceil(MR);
        for p in panels {
            let panel = self.panel(p);
            let panel_cols = NR.min(n - p * NR);
            // The next panel in memory (the next this loop reads, but for the task's last),
            // which comes cold from L3 or memory: each block prefetches its share.
            let next = &self.data[((p + 1) * pairs * NR).min(self.data.len())..];
            let next = &next[..next.len().min(self.live_pairs() * NR)];
            let start = edges.start(p * NR);
            for (b, a_block) in packed_a.chunks(lda * MR).enumerate() {
                let block_rows = MR.min(rows - b * MR);
                let ahead = Ahead::share(next, blocks, b);
                // SAFETY: rows b·MR.. + block_rows < rows and columns p·NR.. + panel_cols ≤ n
                // lie in the caller's block of C.
                unsafe {
                    run_block(
                        kernel,
                        a_block,
                        lda,
                        panel,
                        self.live_pairs(),
                        c.add(b * MR * ldc + p * NR),
                        ldc,
                        block_rows,
                        panel_cols,
                        start,
                        ahead,
                    )
                };
            }
        }
    }

    /// The pass of [`Bf16Kernel::Avx2`] and [`Bf16Kernel::Avx512Widened`] for many rows (see
    /// [`widens_panels`]): A's rows are rounded to bf16 once, W is widened to f32 once per
    /// task in the layout of sgemm's microkernel (each 16-column half of a panel for AVX2's,
    /// two panels side by side for AVX-512's 64 columns), and that microkernel runs over it, six
    /// rows per call, while the next panel is prefetched. The same multiply-adds in the same
    /// order as [`avx2::kernel`] (each pair's odd input first, C added to once), so a row's
    /// result does not depend on which pass its task took.
    ///
    /// # Safety
    /// As [`blocked_pass`](Self::blocked_pass); the CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn widened_pass(
        &self,
        kernel: Bf16Kernel,
        a: Rows,
        rows: usize,
        panels: Range<usize>,
        c: *mut f32,
        ldc: usize,
    ) {
        let (n, pairs) = (self.n, self.pairs);
        let mut made = Vec::new();
        let a = match a {
            Rows::Dense(a) => a,
            Rows::Made(make) => {
                // The vector rounding below reads the task's rows whole, in f32.
                made.resize(rows * self.k, 0.0);
                for (r, row) in made.chunks_exact_mut(self.k).enumerate() {
                    make(r, row);
                }
                &made
            }
        };
        // The padding pairs (zero) are skipped.
        let used = self.k.div_ceil(2);
        let steps = 2 * used;
        let x = avx2::round_rows(a, rows, self.k);
        let (f32_kernel, width) = match kernel {
            Bf16Kernel::Avx512Widened => (cpu::F32Kernel::Avx512, 2 * NR),
            _ => (cpu::F32Kernel::Avx2, 16),
        };
        // Each slice's pass fills it before the kernel reads it (the columns that it reads).
        let mut wide = Vec::<f32>::with_capacity(steps * width);
        let wide = &mut wide.spare_capacity_mut()[..steps * width];
        // Slices of `width` columns: a half panel, or two panels.
        let panel_at = |p: usize| &self.data[p * pairs * NR..(p * pairs + used) * NR];
        let end = (panels.end * NR).min(n);
        for start in (panels.start * NR..end).step_by(width) {
            let (p, cols) = (start / NR, width.min(end - start));
            // The slice widened, and the panels after it (two lines a pair each) to prefetch,
            // by its row blocks' calls: a half panel's pass takes its share of the next panel's
            // used pairs (from line `skip`), a two-panel pass the next two panels.
            let (next_panel, lines, skip) = if width == 16 {
                // SAFETY: the CPU has AVX2 (this pass's condition); the panel holds `used`
                // pairs of NR lanes, `wide` steps·16 values.
                unsafe { avx2::widen_half(panel_at(p), start % NR / 16, wide) };
                let lines = (2 * used).div_ceil(NR.min(n - p * NR).div_ceil(16));
                (p + 1, lines, start % NR / 16 * lines)
            } else {
                for (i, panel) in (p..(start + cols).div_ceil(NR)).enumerate() {
                    widen_panel(panel_at(panel), wide, width, i * NR);
                }
                (p + 2, 4 * pairs, 0)
            };
            let next = self.data.as_ptr().wrapping_add(next_panel * pairs * NR);
            let next = next.cast::<u8>().wrapping_add(skip * 64);
            // SAFETY: `wide` holds steps·width values (the slice's columns written) and each
            // of x's `rows` rows `steps`; C's rows × columns start..start + cols are the
            // caller's; `next`'s lines are only hinted at.
            unsafe {
                crate::sgemm::panel_pass(
                    f32_kernel,
                    wide.as_ptr().cast(),
                    steps,
                    x.as_ptr(),
                    steps,
                    rows,
                    c.add(start),
                    ldc,
                    cols,
                    next,
                    lines,
                )
            };
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn widened_pass(&self, _: Bf16Kernel, _: Rows, _: usize, _: Range<usize>, _: *mut f32, _: usize) {
        unreachable!("no AVX2 off x86-64")
    }
}

/// A panel's pairs widened to f32 into columns `offset..offset + NR` of `wide` (`width`
/// columns a row): row `2i` the odd inputs of pair i, row `2i + 1` the even ones, for the
/// `wide.len() / (2 · width)` pairs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn widen_panel_body(panel: &[u32], wide: &mut [MaybeUninit<f32>], width: usize, offset: usize) {
    let pairs = wide.len() / (2 * width);
    assert!(panel.len() >= pairs * NR && offset + NR <= width);
    for (i, lanes) in panel.chunks_exact(NR).take(pairs).enumerate() {
        let (odd, even) = wide[2 * i * width..(2 * i + 2) * width].split_at_mut(width);
        for ((o, e), &lane) in odd[offset..offset + NR]
            .iter_mut()
            .zip(&mut even[offset..offset + NR])
            .zip(lanes)
        {
            o.write(f32::from_bits(lane & 0xFFFF_0000));
            e.write(f32::from_bits(lane << 16));
        }
    }
}

dispatch!(
    #[cfg(target_arch = "x86_64")]
    fn widen_panel(panel: &[u32], wide: &mut [MaybeUninit<f32>], width: usize, offset: usize) => widen_panel_body
);

/// Rows (or pairs of rows) [`pack_panel`] prefetches ahead of the one it packs.
const PREFETCH_AHEAD: usize = 4;

/// Asks for every cache line that holds part of `values` to be brought into L1, without waiting
/// (x86-64; elsewhere nothing).
#[inline(always)]
fn prefetch_lines(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = values.as_ptr_range().end.cast::<u8>();
        let first = values.as_ptr().cast::<u8>();
        let mut line = first.wrapping_sub(first as usize % 64);
        while line < end {
            // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast()) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Input pairs a packed row of `k` inputs takes: `ceil(k / 2)` rounded up to whole AMX tiles.
fn packed_pairs(k: usize) -> usize {
    k.div_ceil(2 * amx::TILE_PAIRS) * amx::TILE_PAIRS
}

/// Panel `p` of the W that `source` holds (`k` inputs a column) into `panel`.
#[inline(always)]
fn pack_panel_body(source: Source, k: usize, p: usize, panel: &mut [u32]) {
    let (n, _) = source.dims();
    let lanes = NR.min(n - p * NR);
    match source {
        Source::Rows(w) => {
            // Each output column's inputs are one row of W. Where the rows are far apart (a
            // head's keys among its layer's projections) each comes from memory, and one row
            // at a time would wait for each in turn: the rows a few lanes ahead are prefetched.
            let row_of = |lane: usize| w.row(p * NR + lane);
            for lane in 0..lanes {
                // The first lanes' rows ahead at the start, then one more each lane.
                let ahead = match lane {
                    0 => 1..(PREFETCH_AHEAD + 1).min(lanes),
                    _ => (lane + PREFETCH_AHEAD).min(lanes)..(lane + PREFETCH_AHEAD + 1).min(lanes),
                };
                ahead.for_each(|next| prefetch_lines(row_of(next)));
                let row = row_of(lane);
                for i in 0..k.div_ceil(2) {
                    let hi = if 2 * i + 1 < k { row[2 * i + 1] } else { 0.0 };
                    panel[i * NR + lane] = pair(row[2 * i], hi);
                }
            }
        }
        Source::Columns(view) => {
            let (w, stride) = (view.data, view.stride);
            // Each pair of inputs is two rows of the view, the panel's columns side by side;
            // rows far apart are prefetched a few pairs ahead, as above.
            for i in 0..k.div_ceil(2) {
                let ahead = 2 * (i + PREFETCH_AHEAD);
                for row in (ahead..ahead + 2).filter(|&row| row < k) {
                    prefetch_lines(&w[row * stride + p * NR..][..lanes]);
                }
                let lo = &w[2 * i * stride + p * NR..][..lanes];
                let out = &mut panel[i * NR..][..lanes];
                if 2 * i + 1 < k {
                    let hi = &w[(2 * i + 1) * stride + p * NR..][..lanes];
                    for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                        *o = pair(l, h);
                    }
                } else {
                    for (o, &l) in out.iter_mut().zip(lo) {
                        *o = pair(l, 0.0);
                    }
                }
            }
        }
    }
}

dispatch!(fn pack_panel(source: Source, k: usize, p: usize, panel: &mut [u32]) => pack_panel_body);

/// The row stride, in pairs, of A converted for the block kernels ([`bf16_rows`]): its `pairs`,
/// or one cache line more when that would be an even number of lines, so that the rows a
/// microkernel reads side by side fall in different L1 sets (at a stride of a power of two
/// lines, 12 rows would share one set).
fn a_stride(pairs: usize) -> usize {
    const LINE_PAIRS: usize = 16;
    match pairs.div_ceil(LINE_PAIRS) % 2 {
        0 => pairs.div_ceil(LINE_PAIRS) * LINE_PAIRS + LINE_PAIRS,
        _ => pairs.div_ceil(LINE_PAIRS) * LINE_PAIRS,
    }
}

/// A product's output kept as the next product's input on AMX tiles
/// ([`PackedMatrix::linear_rows_to_tiles`]): `m` rows of bf16 in the order the tiles read them,
/// `2 · pairs` values a row.
pub struct TileRows {
    x: Lines,
    m: usize,
    pairs: usize,
}

impl TileRows {
    /// Rows of the output.
    pub fn rows(&self) -> usize {
        self.m
    }
}

impl std::fmt::Debug for TileRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TileRows {{ m: {}, values a row: {} }}",
            self.m,
            2 * self.pairs
        )
    }
}

/// A's rows (`[rows, k]`) converted to bf16 row by row, the layout the block kernels
/// ([`run_block`]) read: `[rows][lda]` lanes of pairs from a cache line (a row of bf16
/// read as 32-bit lanes: the even input in the low half), zero past `k`. A contiguous
/// conversion per row, where a layout interleaving the rows would need scattered stores; each
/// lane written once (the zeros only where nothing else goes), on the calling thread (a
/// product's task converts its own rows).
fn bf16_rows(a: Rows, rows: usize, k: usize, lda: usize) -> Lines {
    assert!(
        2 * lda >= k,
        "bf16_rows: {lda} pairs a row cannot hold {k} inputs"
    );
    if let Rows::Dense(a) = a {
        assert!(a.len() >= rows * k, "bf16_rows: A has fewer than {rows} rows");
    }
    let convert = |scratch: &mut Vec<f32>, r: usize, lanes: &mut [MaybeUninit<u32>]| {
        // SAFETY: a u32 slice read as twice as many u16 (alignment 4 ≥ 2), exclusively
        // borrowed; little-endian, so each pair's first input is its low half.
        let halves =
            unsafe { std::slice::from_raw_parts_mut(lanes.as_mut_ptr().cast::<MaybeUninit<u16>>(), 2 * lda) };
        let (values, zeros) = halves.split_at_mut(k);
        match a {
            _ if values.is_empty() => {}
            Rows::Dense(a) => convert_row(&a[r * k..(r + 1) * k], values),
            Rows::Made(make) => {
                scratch.resize(k, 0.0);
                make(r, scratch);
                convert_row(scratch, values);
            }
        }
        zeros.iter_mut().for_each(|half| {
            half.write(0);
        });
    };
    // SAFETY: `convert` writes each of a row's 2·lda halves: its first k converted, the rest
    // zero.
    unsafe { Lines::from_uninit_rows(rows, lda, false, Vec::new, convert) }
}

/// Keys an attention head may have for [`attention_head`]: a strip of query rows holds its
/// scores (f32) and weights (bf16) over all of them, which stay in L2.
pub const ATTENTION_HEAD_MAX_KEYS: usize = 2048;

/// Query rows [`attention_head`] takes at a time at most: a caller sharing a head's rows out
/// gives each share whole strips of them.
pub const ATTENTION_HEAD_STRIP_ROWS: usize = amx::ROWS;
// (Each query row's output is computed on its own, the same whichever strip or block holds
// it, so a share of any size gives the same bits; whole tile strips keep AMX's tiles full.)

/// Whether [`attention_head`] runs on this CPU: where the bf16 products run on AMX tiles or
/// on `vdpbf16ps`.
pub fn attention_head_available() -> bool {
    matches!(cpu::bf16_kernel(), Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16)
}

/// One attention head in bf16, on the calling thread: for each query row r of `q`
/// (`[nq, d_qk]`), row r of `out` (`d_v` values, rows `ldo` apart) is
/// `softmax(scale · q_r · kᵀ) · v`, with `k` `[nk, d_qk]` and `v` `[nk, d_v]`. The scaled
/// queries, the keys, the values and the softmax's exponentials are rounded to bf16 (the
/// weighted sum is divided by the exponentials' sum after); scores, sums and the division are
/// f32. Queries are taken a strip at a time (32 rows on AMX tiles, whose loop is in [`amx`];
/// [`MR`] on the `vdpbf16ps` microkernel, `blocked_head`), and a strip's scores and weights
/// stay in cache: neither is ever stored for the whole head. The keys and values are packed
/// here; threads that share out one head's query rows pack them once instead and call
/// [`attention_head_packed`].
///
/// # Safety
/// `out` must be valid for writes of rows `0..nq` × columns `0..d_v` at row stride `ldo`, and
/// no one else may access them during the call.
///
/// # Panics
/// Unless [`attention_head_available`], the queries and keys are as wide, the keys and values
/// as many, and there are 1 to [`ATTENTION_HEAD_MAX_KEYS`] keys.
pub unsafe fn attention_head(q: View, k: View, v: View, scale: f32, out: *mut f32, ldo: usize) {
    assert_eq!(q.cols, k.cols, "attention_head: queries and keys differ in width");
    let keys = PackedMatrix::pack_view(k, true, false);
    let values = PackedMatrix::pack_view(v, false, false);
    // SAFETY: the caller's promises.
    unsafe { attention_head_packed(q, &keys, &values, scale, out, ldo) }
}

/// [`attention_head`] over keys and values already packed: `keys` `[nk, d_qk]` packed
/// transposed ([`PackedMatrix::pack_view`] with `transposed`), `values` `[nk, d_v]` packed as
/// they are.
///
/// # Safety
/// As [`attention_head`]'s.
///
/// # Panics
/// As [`attention_head`]'s.
pub unsafe fn attention_head_packed(
    q: View,
    keys: &PackedMatrix,
    values: &PackedMatrix,
    scale: f32,
    out: *mut f32,
    ldo: usize,
) {
    let kernel = cpu::bf16_kernel();
    assert!(
        attention_head_available(),
        "attention_head: the bf16 products run on neither AMX nor vdpbf16ps"
    );
    check_head(q, keys, values, ldo);
    match kernel {
        Bf16Kernel::Amx => {
            let scaled = |r: usize, row: &mut [f32]| scale_query(q, scale, r, row);
            let q_tiles = amx_rows(Rows::Made(&scaled), q.rows, q.cols, keys.pairs, false);
            // SAFETY: the caller's promises; AMX is available (the products run on it).
            unsafe { amx::attention_head(head_tiles(&q_tiles, keys, values, q.rows), out, ldo) };
        }
        Bf16Kernel::Avx512Bf16 => {
            let queries = HeadQueries::new(q, scale);
            // SAFETY: the caller's promises; the kernel is the one the products run on.
            unsafe {
                blocked_head(
                    kernel,
                    &queries.rows,
                    queries.lda,
                    keys,
                    values,
                    0..q.rows,
                    HeadRun::Whole,
                    out,
                    ldo,
                )
            };
        }
        _ => unreachable!("attention_head_available, asserted above"),
    }
}

/// [`attention_head_packed`]'s shapes checked: the queries as wide as the keys, as many values
/// as keys, 1 to [`ATTENTION_HEAD_MAX_KEYS`] of them, room for the values in each output row.
fn check_head(q: View, keys: &PackedMatrix, values: &PackedMatrix, ldo: usize) {
    assert_eq!(q.cols, keys.k, "attention_head: queries and keys differ in width");
    assert_eq!(
        keys.n, values.k,
        "attention_head: {} keys but {} values",
        keys.n, values.k
    );
    assert!(
        (1..=ATTENTION_HEAD_MAX_KEYS).contains(&keys.n),
        "attention_head: {} keys",
        keys.n
    );
    assert!(
        ldo >= values.n,
        "attention_head: output rows {ldo} apart hold no {} values",
        values.n
    );
    assert!(
        q.fits(q.data.len()),
        "attention_head: the queries do not lie inside their slice"
    );
}

impl PackedMatrix {
    /// Panel `p`'s packed pairs.
    fn panel(&self, p: usize) -> &[u32] {
        let len = self.pairs * NR;
        &self.data[p * len..(p + 1) * len]
    }

    /// The pairs that hold inputs, `ceil(k / 2)`: what the block kernels run over. The rest
    /// of a panel's pairs (up to whole AMX tiles) are zero, as are A's lanes past k, so
    /// stepping over them would add nothing.
    fn live_pairs(&self) -> usize {
        self.k.div_ceil(2)
    }
}

/// What [`blocked_head`] makes of its rows' weighted sums.
enum HeadRun<'a> {
    /// The softmax over these keys alone: each output row set to its weighted sum over the
    /// exponentials' sum.
    Whole,
    /// One block of keys of a softmax taken a block at a time: for each query row of the call
    /// (indexed from its first), the running maximum and sum of the blocks before (`-∞` and 0
    /// before the first), which the block updates; the output row (the running weighted sum,
    /// zero before the first block) rescaled to the new maximum, and the block's weighted sum
    /// added.
    Running { max: &'a mut [f32], sum: &'a mut [f32] },
}

/// [`attention_head`] on the `vdpbf16ps` microkernel ([`run_block`] on `kernel`), for the
/// query rows `rows`, [`MR`] at a time: their scores over every panel of keys into an f32
/// strip (`MR` rows of the panels' `32 · ⌈nk / 32⌉` columns, of which the first nk are read),
/// each row's exponentials rounded to bf16 straight into the strip's weights (as
/// [`bf16_rows`] lays rows out), the weighted sum's blocks from the microkernel straight into
/// `out` (row r of `rows` at `out + (r − rows.start) · ldo`), as `run` says. The strip (scores
/// and weights: 96 KB and 48 KB at 2,048 keys) stays in L2, where the unfused path writes the
/// whole head's scores (16 MB for 2,048 queries over 2,048 keys) to memory and reads them
/// back. `q` holds every scaled query as [`bf16_rows`] makes them, `lda` lanes a row.
///
/// # Safety
/// As [`attention_head`]'s for `out` (its `rows.len()` rows; also read when `run` is
/// [`HeadRun::Running`]); `kernel` must be [`Bf16Kernel::Avx512Bf16`] (native or emulated).
#[allow(clippy::too_many_arguments)]
unsafe fn blocked_head(
    kernel: Bf16Kernel,
    q: &[u32],
    lda: usize,
    keys: &PackedMatrix,
    values: &PackedMatrix,
    rows: Range<usize>,
    mut run: HeadRun,
    out: *mut f32,
    ldo: usize,
) {
    let (nk, d_v) = (keys.n, values.n);
    assert!(
        q.len() >= rows.end * lda,
        "attention_head: Q has no rows {rows:?}"
    );
    if let HeadRun::Running { max, sum } = &run {
        assert!(
            max.len() == rows.len() && sum.len() == rows.len(),
            "attention_head_block: {} maxima and {} sums for {} rows",
            max.len(),
            sum.len(),
            rows.len()
        );
    }
    // (Without values a whole head has nothing to write, but a running one still carries its
    // rows' maxima and sums.)
    if rows.is_empty() || (d_v == 0 && matches!(run, HeadRun::Whole)) {
        return;
    }
    assert!(
        2 * values.pairs >= nk,
        "attention_head: {} pairs of keys cannot hold {nk}",
        values.pairs
    );
    let (key_panels, value_panels) = (nk.div_ceil(NR), d_v.div_ceil(NR));
    let scores_stride = key_panels * NR;
    let mut scores = Lines::zeroed(MR * scores_stride);
    let weights_lda = a_stride(values.pairs);
    let mut weights = Lines::zeroed(MR * weights_lda);
    for first in (0..rows.len()).step_by(MR) {
        let strip = MR.min(rows.len() - first);
        let q_block = &q[(rows.start + first) * lda..];
        for p in 0..key_panels {
            // SAFETY: the block's rows × the panel's columns lie in the strip of scores, which
            // is this call's alone.
            unsafe {
                run_block(
                    kernel,
                    q_block,
                    lda,
                    keys.panel(p),
                    keys.live_pairs(),
                    scores.as_mut_ptr().cast::<f32>().add(p * NR),
                    scores_stride,
                    strip,
                    NR.min(nk - p * NR),
                    Start::Overwrite,
                    Ahead::NONE,
                )
            };
        }
        // Whole: each row's 1 / sum, applied after the weighted sum; Running: each row's
        // rescaling to the new maximum, applied before the block's weighted sum is added.
        let mut factors = [1f32; MR];
        for (r, factor) in factors.iter_mut().enumerate().take(strip) {
            let row = &scores[r * scores_stride..][..nk];
            // SAFETY: f32 scores stored as their bits (u32 and f32 have one size and alignment);
            // the halves written are the weights' row r (`2 · pairs` of its `2 · weights_lda`),
            // each a bf16 value or zero.
            let (row, to) = unsafe {
                (
                    std::slice::from_raw_parts(row.as_ptr().cast::<f32>(), nk),
                    weights.halves_mut()[2 * r * weights_lda..]
                        .as_mut_ptr()
                        .cast::<u16>(),
                )
            };
            match &mut run {
                HeadRun::Whole => {
                    // SAFETY: as above.
                    *factor = 1.0 / unsafe { rows::exp_to_bf16(row, to, 32, 2 * values.pairs) };
                }
                HeadRun::Running { max, sum } => {
                    let i = first + r;
                    // SAFETY: as above.
                    let (new_max, total) =
                        unsafe { rows::exp_to_bf16_above(row, max[i], to, 32, 2 * values.pairs) };
                    // Before the first block the maximum is -∞: the factor is 0, as are the
                    // sum and the output it scales.
                    *factor = (max[i] - new_max).exp();
                    sum[i] = sum[i] * *factor + total;
                    max[i] = new_max;
                }
            }
        }
        let running = matches!(run, HeadRun::Running { .. });
        if running {
            for (r, &factor) in factors.iter().enumerate().take(strip).filter(|&(_, &f)| f != 1.0) {
                // SAFETY: row first + r of the call's rows, its d_v values (the caller's promise).
                rows::scale_row(
                    unsafe { std::slice::from_raw_parts_mut(out.add((first + r) * ldo), d_v) },
                    factor,
                );
            }
        }
        for p in 0..value_panels {
            // SAFETY: the strip's rows × the panel's columns < d_v lie in `out` (the caller's
            // promise).
            unsafe {
                run_block(
                    kernel,
                    &weights,
                    weights_lda,
                    values.panel(p),
                    values.live_pairs(),
                    out.add(first * ldo + p * NR),
                    ldo,
                    strip,
                    NR.min(d_v - p * NR),
                    match running {
                        true => Start::AddToC,
                        false => Start::Overwrite,
                    },
                    Ahead::NONE,
                )
            };
        }
        if !running {
            for (r, &inverse) in factors.iter().enumerate().take(strip) {
                // SAFETY: row first + r of the call's rows, its d_v values (the caller's promise).
                rows::scale_row(
                    unsafe { std::slice::from_raw_parts_mut(out.add((first + r) * ldo), d_v) },
                    inverse,
                );
            }
        }
    }
}

/// An attention head's queries for [`attention_head_block`]: scaled, rounded to bf16 and laid
/// out for the `vdpbf16ps` microkernel once, for every block of keys they attend.
pub struct HeadQueries {
    rows: Lines,
    nq: usize,
    d_qk: usize,
    lda: usize,
}

impl std::fmt::Debug for HeadQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadQueries {{ rows: {}, width: {} }}", self.nq, self.d_qk)
    }
}

impl HeadQueries {
    /// The rows of `q` (`[nq, d_qk]`) times `scale`, as [`attention_head`] makes them.
    pub fn new(q: View, scale: f32) -> Self {
        assert!(
            q.fits(q.data.len()),
            "HeadQueries: the queries do not lie inside their slice"
        );
        let lda = a_stride(packed_pairs(q.cols));
        let scaled = |r: usize, row: &mut [f32]| scale_query(q, scale, r, row);
        Self {
            rows: bf16_rows(Rows::Made(&scaled), q.rows, q.cols, lda),
            nq: q.rows,
            d_qk: q.cols,
            lda,
        }
    }
}

/// Query `r` of `q` times `scale` into `row`: an attention head's queries as its scores take
/// them, made row by row on their way into bf16.
fn scale_query(q: View, scale: f32, r: usize, row: &mut [f32]) {
    for (o, &x) in row.iter_mut().zip(&q.data[r * q.stride..][..q.cols]) {
        *o = x * scale;
    }
}

/// Whether [`attention_head_block`] runs on this CPU: where the bf16 products run on
/// `vdpbf16ps` (AMX's tile loop has no running form).
pub fn attention_head_block_available() -> bool {
    cpu::bf16_kernel() == Bf16Kernel::Avx512Bf16
}

/// One block of keys of an attention head whose softmax is taken a block at a time (the
/// running-maximum form that [`rows::online_softmax`] computes in f32), for the query rows
/// `first..first + max.len()` of `queries`, on the calling thread: as [`attention_head`]
/// computes a head, a strip of rows at a time in cache, over `keys` (the block's keys,
/// `[nk, d_qk]` packed transposed: [`PackedMatrix::pack_view`] with `transposed`) and
/// `values` (`[nk, d_v]`, packed as they are). `max` and `sum` are each row's running
/// maximum and sum of exponentials over the blocks before (`-∞` and 0 before the first),
/// `out` (`[rows, d_v]`) its weighted sum (zero before the first); each is rescaled to the
/// block's new maximum and the block added. After the last block, `out / sum` is each row's
/// attention over all of them. Where the scores' maximum comes late, the earlier blocks'
/// weights were rounded to bf16 before their rescaling, not after: the same rounding as the
/// f32 running form followed by a bf16 weighted sum.
///
/// # Panics
/// Unless [`attention_head_block_available`], the shapes agree (the keys' width the queries',
/// as many values as keys, 1 to [`ATTENTION_HEAD_MAX_KEYS`] keys, `sum` and `out` for as many
/// rows as `max`, and those rows among the queries').
pub fn attention_head_block(
    queries: &HeadQueries,
    first: usize,
    keys: &PackedMatrix,
    values: &PackedMatrix,
    max: &mut [f32],
    sum: &mut [f32],
    out: &mut [f32],
) {
    let kernel = cpu::bf16_kernel();
    assert!(
        attention_head_block_available(),
        "attention_head_block: the bf16 products do not run on vdpbf16ps"
    );
    let (rows, nk, d_v) = (max.len(), keys.n, values.n);
    assert!(
        keys.k == queries.d_qk && values.k == nk && (1..=ATTENTION_HEAD_MAX_KEYS).contains(&nk),
        "attention_head_block: queries {} wide against {} keys of {}, {} values",
        queries.d_qk,
        nk,
        keys.k,
        values.k
    );
    let end = first.checked_add(rows).filter(|&end| end <= queries.nq);
    assert!(
        end.is_some() && out.len() == rows * d_v,
        "attention_head_block: {rows} rows from {first} of {} queries into {} outputs of {d_v}",
        queries.nq,
        out.len()
    );
    debug_assert_eq!(
        a_stride(keys.pairs),
        queries.lda,
        "keys and queries of one width are laid out alike"
    );
    // SAFETY: `out` holds the rows × d_v values, exclusively borrowed; the kernel is the one
    // the products run on (asserted).
    unsafe {
        blocked_head(
            kernel,
            &queries.rows,
            queries.lda,
            keys,
            values,
            first..first + rows,
            HeadRun::Running { max, sum },
            out.as_mut_ptr(),
            d_v,
        )
    };
}

/// The scaled queries (in tile order) and [`attention_head_packed`]'s keys and values as
/// [`amx::attention_head`] takes them.
fn head_tiles<'a>(
    q: &'a Lines,
    keys: &'a PackedMatrix,
    values: &'a PackedMatrix,
    nq: usize,
) -> amx::HeadOperands<'a> {
    amx::HeadOperands {
        q,
        q_pairs: keys.pairs,
        keys: &keys.data,
        values: &values.data,
        key_pairs: values.pairs,
        nq,
        nk: keys.n,
        d_v: values.n,
    }
}

/// A's rows (`[rows, k]`) converted to bf16 in the order AMX's tiles read them
/// ([`amx::Operands`]' `x`): each 32-row block's 16-pair slices of its rows, the slices of one
/// step of the tile loop (two 16 × 16-lane tiles) side by side, so that the loop reads each
/// block as one run of memory. `pairs` (a multiple of [`amx::TILE_PAIRS`]) lanes a row, zero
/// past `k` and in the rows after `rows` (up to a whole block). Each row is converted straight
/// into its places, a slice at a time (a made row from a scratch row in L1); the blocks on the
/// pool.
fn amx_rows(a: Rows, rows: usize, k: usize, pairs: usize, parallel: bool) -> Lines {
    assert!(
        2 * pairs >= k,
        "amx_rows: {pairs} pairs a row cannot hold {k} inputs"
    );
    assert_eq!(pairs % amx::TILE_PAIRS, 0, "amx_rows: pairs are whole tiles");
    if let Rows::Dense(a) = a {
        assert!(a.len() >= rows * k, "amx_rows: A has fewer than {rows} rows");
    }
    // A row's 16-pair slices lie one step (32 rows of 16 lanes) apart, in halves.
    let stride = 2 * amx::x_lane(0, 1);
    let fill = |scratch: &mut Vec<f32>, block: usize, lanes: &mut [MaybeUninit<u32>]| {
        // SAFETY: a u32 slice read as twice as many u16 (alignment 4 ≥ 2), exclusively
        // borrowed; little-endian, so each pair's first input is its low half.
        let halves = unsafe {
            std::slice::from_raw_parts_mut(lanes.as_mut_ptr().cast::<MaybeUninit<u16>>(), 2 * lanes.len())
        };
        for r in 0..amx::ROWS {
            let row = block * amx::ROWS + r;
            let src: &[f32] = match a {
                _ if row >= rows => &[],
                Rows::Dense(a) => &a[row * k..(row + 1) * k],
                Rows::Made(make) => {
                    scratch.resize(k, 0.0);
                    make(row, scratch);
                    scratch
                }
            };
            convert_slices(src, &mut halves[2 * amx::x_lane(r, 0)..], stride, 2 * pairs);
        }
    };
    let blocks = rows.div_ceil(amx::ROWS);
    // SAFETY: each block's 32 rows of `pairs` lanes are written whole: every 32-half slice of
    // every row (`convert_slices` writes all `2·pairs` halves of one) lands on its own place of
    // the block's lanes (`amx::x_lane`).
    unsafe { Lines::from_uninit_rows(blocks, amx::ROWS * pairs, parallel, Vec::new, fill) }
}

/// `src` converted to bf16 into `len` halves of `dst` laid out in slices of 32 (a tile row's 16
/// pairs), `stride` halves apart: the first `src.len()` values, zero after them.
#[inline(always)]
fn convert_slices_body(src: &[f32], dst: &mut [MaybeUninit<u16>], stride: usize, len: usize) {
    const SLICE: usize = 2 * amx::TILE_PAIRS;
    // Whole slices of src as fixed-size arrays: the compiler converts each in two vectors.
    let whole = (src.len() / SLICE).min(len / SLICE);
    for slice in 0..whole {
        let from: &[f32; SLICE] = src[slice * SLICE..][..SLICE].try_into().expect("a whole slice");
        let to: &mut [MaybeUninit<u16>; SLICE] = (&mut dst[slice * stride..][..SLICE])
            .try_into()
            .expect("a whole slice");
        for (d, &s) in to.iter_mut().zip(from) {
            d.write(to_bf16_bits(s));
        }
    }
    for slice in whole..len.div_ceil(SLICE) {
        let to = &mut dst[slice * stride..][..SLICE];
        let from = &src[(slice * SLICE).min(src.len())..((slice + 1) * SLICE).min(src.len())];
        for (d, &s) in to.iter_mut().zip(from) {
            d.write(to_bf16_bits(s));
        }
        to[from.len()..].iter_mut().for_each(|d| {
            d.write(0);
        });
    }
}

dispatch!(pub(crate) fn convert_slices(src: &[f32], dst: &mut [MaybeUninit<u16>], stride: usize, len: usize) => convert_slices_body);

#[inline(always)]
fn convert_row_body(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(to_bf16_bits(s));
    }
}

dispatch!(fn convert_row(src: &[f32], dst: &mut [MaybeUninit<u16>]) => convert_row_body);

/// Whether a task of `rows` rows on `kernel` takes [`PackedMatrix::widened_pass`]: on AVX2
/// and widened AVX-512, from 18 rows. On AVX2, widening a panel half costs four vector stores
/// per input pair, against 4·rows multiply-adds (2·rows cycles); with fewer rows
/// [`avx2::kernel`], which widens in registers, is faster (timed side by side on AVX2, the two
/// cross over between 12 and 18 rows a task; the widened AVX-512 pass takes the same
/// threshold, not timed apart).
fn widens_panels(kernel: Bf16Kernel, rows: usize) -> bool {
    let widens = matches!(kernel, Bf16Kernel::Avx2 | Bf16Kernel::Avx512Widened);
    cfg!(target_arch = "x86_64") && widens && rows >= WIDENED_MIN_ROWS
}

/// `C += A_block · panel` over all `pairs` (the sums meeting C as `start` says), for the
/// block's first `rows` rows (≤ [`MR`]) and the panel's first `cols` columns (≤ [`NR`]), C at
/// `c` with row stride `ldc`; A's rows ([`bf16_rows`]') `lda` pairs apart; the AVX-512 BF16
/// kernel prefetches `ahead` into L2 on the way (the others ignore it). (The AMX path has its own loop; here it falls back to the
/// AVX-512 BF16 kernel.)
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..rows` × columns `0..cols` at stride
/// `ldc`, and no one else may access them during the call; `start`'s bias, where it has one,
/// valid for reads of `cols` values.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    kernel: Bf16Kernel,
    a: &[u32],
    lda: usize,
    b: &[u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    start: Start,
    ahead: Ahead,
) {
    assert!(rows <= MR && cols <= NR && b.len() >= pairs * NR && lda >= pairs);
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(a.len() >= (rows - 1) * lda + pairs);
    match kernel {
        // SAFETY: the native kernels only where the CPU has AVX-512 F and BF16; A and the
        // panel's lengths checked above, C as the caller promises.
        Bf16Kernel::Avx512Bf16 | Bf16Kernel::Amx => unsafe {
            avx512_kernels()[rows - 1](a.as_ptr(), lda, b.as_ptr(), pairs, c, ldc, cols, start, ahead)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: selected only when the CPU has AVX2 and FMA; as above.
        Bf16Kernel::Avx2 | Bf16Kernel::Avx512Widened => unsafe {
            avx2::kernel(a.as_ptr(), lda, b.as_ptr(), pairs, c, ldc, rows, cols, start)
        },
        // SAFETY: as above.
        _ => unsafe { portable_kernel(a, lda, b, pairs, c, ldc, rows, cols, start) },
    }
}

/// [`run_block`] in plain Rust.
///
/// # Safety
/// As [`run_block`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable_kernel(
    a: &[u32],
    lda: usize,
    b: &[u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    start: Start,
) {
    let mut tile = [[0f32; NR]; MR];
    for i in 0..pairs {
        let b_row = &b[i * NR..(i + 1) * NR];
        for (r, tile_row) in tile.iter_mut().enumerate().take(rows) {
            let x = a[r * lda + i];
            let (x0, x1) = (from_bf16_bits(x as u16), from_bf16_bits((x >> 16) as u16));
            for (acc, &w) in tile_row.iter_mut().zip(b_row) {
                let (w0, w1) = (from_bf16_bits(w as u16), from_bf16_bits((w >> 16) as u16));
                *acc += x1 * w1;
                *acc += x0 * w0;
            }
        }
    }
    for (r, tile_row) in tile.iter().enumerate().take(rows) {
        for (j, &sum) in tile_row.iter().enumerate().take(cols) {
            // SAFETY: r < rows, j < cols: inside C's block, and the bias's `cols`, as the
            // caller promises.
            unsafe { start.set(c.add(r * ldc), j, sum) };
        }
    }
}

/// The AVX-512 BF16 microkernels for blocks of 1 to [`MR`] rows: native where the CPU has
/// them, else emulated.
fn avx512_kernels() -> &'static [avx512_emulated::Microkernel; MR] {
    #[cfg(target_arch = "x86_64")]
    if cpu::avx512_bf16() {
        return &avx512::KERNELS;
    }
    &avx512_emulated::KERNELS
}

/// The AVX-512 BF16 microkernels, written once over the names of `std::arch`'s intrinsics and
/// expanded twice: on the real ones (with `$feature` enabling AVX-512 BF16) and on
/// [`emulated512`](crate::emulated512)'s, which run the same source on any CPU for the tests.
macro_rules! avx512_bf16_kernels {
    ($(#[$feature:meta])*) => {
        /// A block of R rows: see [`run_block`](super::run_block).
        pub(super) type Microkernel =
            unsafe fn(*const u32, usize, *const u32, usize, *mut f32, usize, usize, Start, Ahead);

        /// The microkernels for blocks of 1 to [`MR`] rows.
        pub(super) const KERNELS: [Microkernel; MR] = [
            kernel::<1>,
            kernel::<2>,
            kernel::<3>,
            kernel::<4>,
            kernel::<5>,
            kernel::<6>,
            kernel::<7>,
            kernel::<8>,
            kernel::<9>,
            kernel::<10>,
            kernel::<11>,
            kernel::<12>,
        ];

        /// The `R × 32` microkernel (R ≤ MR; 24 accumulators at most), two weight vectors per input
        /// pair, its sums meeting C's first `cols` columns as `start` says; A's rows `lda` pairs
        /// apart. The lines of `ahead` are prefetched into L2 along the way.
        $(#[$feature])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn kernel<const R: usize>(
            a: *const u32,
            lda: usize,
            b: *const u32,
            pairs: usize,
            c: *mut f32,
            ldc: usize,
            cols: usize,
            start: Start,
            ahead: Ahead,
        ) {
            crate::sgemm::prefetch_c_block(c, ldc, R, 2);
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            let step = |i: usize, acc: &mut [[__m512; 2]; R]| {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(i * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(i * NR + 16).cast()));
                let a_pair = a.add(i);
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_pair.add(r * lda) as i32));
                    acc_row[0] = _mm512_dpbf16_ps(acc_row[0], x, b0);
                    acc_row[1] = _mm512_dpbf16_ps(acc_row[1], x, b1);
                }
            };
            ahead.spread_into_l2(pairs, |i| step(i, &mut acc));
            // Lanes past `cols` are masked off: they lie past C's row.
            let mask = |first: usize| -> __mmask16 {
                match cols.saturating_sub(first) {
                    0 => 0,
                    n if n >= 16 => 0xFFFF,
                    n => (1u16 << n) - 1,
                }
            };
            let masks = [mask(0), mask(16)];
            // Decided once, out of the loop below: with the decision inside it, the loop was
            // left rolled and the accumulators went through the stack.
            let (reads_c, bias) = match start {
                Start::AddToC => (true, None),
                Start::Overwrite => (false, None),
                Start::Bias(bias) => (false, Some(bias)),
                Start::BiasOntoC(bias) => (true, Some(bias)),
            };
            let bias = bias.map(|b| [0, 1].map(|half| _mm512_maskz_loadu_ps(masks[half], b.add(16 * half))));
            for (r, acc_row) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                for (half, (&sums, &mask)) in acc_row.iter().zip(&masks).enumerate() {
                    if mask != 0 {
                        let at = row.add(16 * half);
                        // (C + bias) + sums, each part where it takes part.
                        let sum = match (reads_c, bias) {
                            (true, Some(bias)) => {
                                let old = _mm512_maskz_loadu_ps(mask, at);
                                _mm512_add_ps(_mm512_add_ps(old, bias[half]), sums)
                            }
                            (true, None) => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sums),
                            (false, Some(bias)) => _mm512_add_ps(bias[half], sums),
                            (false, None) => sums,
                        };
                        _mm512_mask_storeu_ps(at, mask, sum);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Ahead, Start, MR, NR};
    use std::arch::x86_64::*;

    avx512_bf16_kernels!(#[target_feature(enable = "avx512f,avx512bf16")]);
}

/// The AVX-512 BF16 microkernels on emulated registers.
mod avx512_emulated {
    use super::{Ahead, Start, MR, NR};
    use crate::emulated512::*;

    avx512_bf16_kernels!();
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Start, NR};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// A's rows (`[rows, k]`) rounded to bf16 and back to f32, with each pair's odd input
    /// first: `[rows][2·ceil(k/2)]` (an odd k's last pair is `(0, a[k-1])`), as
    /// [`widened_pass`](super::PackedMatrix::widened_pass) reads them.
    pub(super) fn round_rows(a: &[f32], rows: usize, k: usize) -> Vec<f32> {
        let steps = 2 * k.div_ceil(2);
        // Not zeroed first: every value is written below.
        let mut out = Vec::with_capacity(rows * steps);
        if k == 0 {
            return out;
        }
        let rows_out = out.spare_capacity_mut().chunks_exact_mut(steps);
        for (row, dst) in a.chunks_exact(k).zip(rows_out).take(rows) {
            // SAFETY: only called on the AVX2 path; the row and `dst` as their slices.
            unsafe { round_row(row, dst) };
        }
        // SAFETY: `round_row` wrote all `steps` values of each of the `rows` rows.
        unsafe { out.set_len(rows * steps) };
        out
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn round_row(row: &[f32], dst: &mut [MaybeUninit<f32>]) {
        assert!(dst.len() == 2 * row.len().div_ceil(2));
        let k = row.len();
        let one = _mm256_set1_epi32(1);
        let half_ulp = _mm256_set1_epi32(0x7FFF);
        let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let nan = _mm256_set1_ps(f32::from_bits(0x7FC0_0000));
        let vectors = k / 8;
        for i in 0..vectors {
            // SAFETY: 8(i + 1) ≤ k ≤ dst.len() (asserted).
            unsafe {
                let v = _mm256_loadu_ps(row.as_ptr().add(8 * i));
                // to_bf16_bits on eight lanes: add half an ulp (ties to even), keep the top half.
                let bits = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), one);
                let rounded = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(bits, half_ulp), lsb), high);
                let is_nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
                let rounded = _mm256_blendv_ps(_mm256_castsi256_ps(rounded), nan, is_nan);
                // Swap each pair's lanes: odd input first.
                _mm256_storeu_ps(
                    dst.as_mut_ptr().add(8 * i).cast(),
                    _mm256_permute_ps::<0b10_11_00_01>(rounded),
                );
            }
        }
        let round = |x: f32| super::from_bf16_bits(super::to_bf16_bits(x));
        for i in (8 * vectors..k).step_by(2) {
            let odd = if i + 1 < k { round(row[i + 1]) } else { 0.0 };
            dst[i].write(odd);
            dst[i + 1].write(round(row[i]));
        }
    }

    /// Half `half` of a panel (its columns 16·half..16·half + 16) widened to f32 in sgemm's AVX2
    /// layout: `wide[2i·16 + j]` the odd input of pair i for column j, `wide[(2i+1)·16 + j]` the
    /// even one, for the panel's `wide.len() / 32` pairs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn widen_half(panel: &[u32], half: usize, wide: &mut [MaybeUninit<f32>]) {
        let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let pairs = wide.len() / 32;
        assert!(panel.len() >= pairs * NR && half < NR / 16);
        for i in 0..pairs {
            for j in 0..2 {
                // SAFETY: lane 16·half + 8j + 8 ≤ NR of pair i < pairs (asserted); the stores
                // end at (2i + 1)·16 + 8j + 8 ≤ 32·pairs = wide.len().
                unsafe {
                    let lanes = _mm256_loadu_si256(panel.as_ptr().add(i * NR + 16 * half + 8 * j).cast());
                    let odd = _mm256_castsi256_ps(_mm256_and_si256(lanes, odd_mask));
                    let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(lanes));
                    let wide = wide.as_mut_ptr().cast::<f32>();
                    _mm256_storeu_ps(wide.add(2 * i * 16 + 8 * j), odd);
                    _mm256_storeu_ps(wide.add((2 * i + 1) * 16 + 8 * j), even);
                }
            }
        }
    }

    /// Rows per pass: 8 accumulators, 4 widened weight vectors, the input pair widened (2) and a
    /// mask fill the 16 registers.
    const ROWS: usize = 4;
    const _: () = assert!(NR.is_multiple_of(16));

    /// The `rows × 32` block (rows ≤ MR) as passes of `4 × 16`, its sums meeting C's first
    /// `cols` columns as `start` says. A packed lane holds a pair of bf16 values: the even input
    /// in the low half, the odd in the high half; `lane << 16` is the even one as an f32,
    /// `lane & 0xFFFF0000` the odd one.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        a: *const u32,
        lda: usize,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        start: Start,
    ) {
        let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let even = |v: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
        let odd = |v: __m256i| _mm256_castsi256_ps(_mm256_and_si256(v, odd_mask));
        for half in 0..NR / 16 {
            if 16 * half >= cols {
                break;
            }
            let b_half = b.add(16 * half);
            for first in (0..rows).step_by(ROWS) {
                // A pass's rows past `rows` read the last row again; they are not stored.
                let offsets: [usize; ROWS] = std::array::from_fn(|r| (first + r).min(rows - 1) * lda);
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for i in 0..pairs {
                    let w0 = _mm256_loadu_si256(b_half.add(i * NR).cast());
                    let w1 = _mm256_loadu_si256(b_half.add(i * NR + 8).cast());
                    let (w0_even, w0_odd, w1_even, w1_odd) = (even(w0), odd(w0), even(w1), odd(w1));
                    let a_pair = a.add(i);
                    for (acc_row, &offset) in acc.iter_mut().zip(&offsets) {
                        let x = _mm256_set1_epi32(*a_pair.add(offset) as i32);
                        let (x_even, x_odd) = (even(x), odd(x));
                        // Odd input first, as the portable kernel and vdpbf16ps order them.
                        acc_row[0] = _mm256_fmadd_ps(x_odd, w0_odd, acc_row[0]);
                        acc_row[0] = _mm256_fmadd_ps(x_even, w0_even, acc_row[0]);
                        acc_row[1] = _mm256_fmadd_ps(x_odd, w1_odd, acc_row[1]);
                        acc_row[1] = _mm256_fmadd_ps(x_even, w1_even, acc_row[1]);
                    }
                }
                let width = (cols - 16 * half).min(16);
                for (r, acc_row) in acc.iter().enumerate().take(rows - first) {
                    let out = c.add((first + r) * ldc + 16 * half);
                    // The bias (if any) of this half's columns.
                    let start = match start {
                        Start::Bias(b) => Start::Bias(b.add(16 * half)),
                        Start::BiasOntoC(b) => Start::BiasOntoC(b.add(16 * half)),
                        other => other,
                    };
                    if width == 16 {
                        for (eighth, &sums) in acc_row.iter().enumerate() {
                            let at = out.add(8 * eighth);
                            let sum = match start {
                                Start::AddToC => _mm256_add_ps(_mm256_loadu_ps(at), sums),
                                Start::Overwrite => sums,
                                Start::Bias(b) => _mm256_add_ps(_mm256_loadu_ps(b.add(8 * eighth)), sums),
                                Start::BiasOntoC(b) => {
                                    let bias = _mm256_loadu_ps(b.add(8 * eighth));
                                    _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(at), bias), sums)
                                }
                            };
                            _mm256_storeu_ps(at, sum);
                        }
                    } else {
                        let mut sums = [0f32; 16];
                        _mm256_storeu_ps(sums.as_mut_ptr(), acc_row[0]);
                        _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc_row[1]);
                        for (j, &sum) in sums.iter().enumerate().take(width) {
                            start.set(out, j, sum);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::SimdLevel;
    use crate::matmul::tests::{for_each_stack, random};

    fn round_trip(x: f32) -> f64 {
        from_bf16_bits(to_bf16_bits(x)) as f64
    }

    /// The block kernels to test: each this CPU has, and AVX-512 BF16 natively or emulated.
    fn kernels_here() -> Vec<Bf16Kernel> {
        let mut kernels = vec![Bf16Kernel::Portable, Bf16Kernel::Avx512Bf16];
        kernels.extend(widening_kernels());
        kernels
    }

    /// The kernels that widen panels to f32 for tasks of many rows: both need AVX2 (the
    /// AVX-512 one's microkernel runs emulated where the CPU lacks AVX-512).
    fn widening_kernels() -> Vec<Bf16Kernel> {
        #[cfg(target_arch = "x86_64")]
        if cpu::simd_level() >= SimdLevel::Avx2 {
            return vec![Bf16Kernel::Avx2, Bf16Kernel::Avx512Widened];
        }
        Vec::new()
    }

    /// Whole products on the widening kernels, their tasks of many rows widening panels (for
    /// AVX-512 two panels side by side, the last one alone or partial), against the triple
    /// loop; and each row, computed alone on the in-register kernel, equal to its row of the
    /// product bit for bit.
    #[test]
    fn widened_passes_match_the_triple_loop_and_rows_alone() {
        if widening_kernels().is_empty() {
            println!("skipped: the widening kernels need AVX2, which this CPU lacks");
        }
        for kernel in widening_kernels() {
            for (m, n, k, threads) in [
                (40, 40, 77, 1),
                (64, 70, 130, 2),
                (WIDENED_MIN_ROWS, 130, 9, 1),
                (50, 64, 1, 2),
                (3 * CHUNK_ROWS + 7, 96, 33, 2),
            ] {
                let (a, w) = (random(m * k, 51), random(n * k, 52));
                let packed = PackedMatrix::pack_transposed(&w, n, k);
                let start = random(m * n, 53);
                let want = rounded_products(&a, &w, m, n, k);
                let product = |a: &[f32], m: usize, start: &[f32], threads: usize| {
                    let mut out = start.to_vec();
                    // SAFETY: `out` is C (m×n), borrowed mutably; the kernel runs here (AVX2,
                    // and AVX-512 natively or emulated).
                    unsafe {
                        packed.run(
                            kernel,
                            Rows::Dense(a),
                            m,
                            out.as_mut_ptr(),
                            n,
                            threads,
                            Edges::default(),
                        )
                    };
                    out
                };
                let all = product(&a, m, &start, threads);
                let tolerance = 1e-4 * (k as f64).sqrt();
                let mut worst = 0f64;
                for r in 0..m {
                    for c in 0..n {
                        let want = start[r * n + c] as f64 + want[r * n + c];
                        worst = worst.max((all[r * n + c] as f64 - want).abs());
                    }
                    let alone = product(&a[r * k..(r + 1) * k], 1, &start[r * n..(r + 1) * n], 1);
                    let same = all[r * n..(r + 1) * n]
                        .iter()
                        .zip(&alone)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{kernel:?}, {m}x{n}x{k}: row {r} differs from it alone");
                }
                println!("{kernel:?} {m}x{n}x{k}: worst difference {worst:e} (tolerance {tolerance:e})");
                assert!(
                    worst < tolerance,
                    "{kernel:?} {m}x{n}x{k}: {worst} from the triple loop"
                );
            }
        }
    }

    /// `A · Wᵀ` (A `[m, k]`, W `[n, k]`) on the bf16-rounded operands, in f64.
    fn rounded_products(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| round_trip(a[r * k + i]) * round_trip(w[c * k + i]))
                    .sum();
            }
        }
        out
    }

    /// Every kernel against an f64 triple loop on the bf16-rounded operands, on sizes with
    /// partial row blocks, partial panels, odd k, several chunks and several thread counts.
    #[test]
    fn products_match_the_triple_loop_on_rounded_operands() {
        let kernels = kernels_here();
        println!(
            "full products on {:?}; blocks on {kernels:?} (AVX-512 BF16 native: {})",
            cpu::bf16_kernel(),
            cpu::avx512_bf16()
        );
        for (m, n, k, threads) in [
            (1, 1, 1, 1),
            (5, 7, 3, 2),
            (13, 33, 31, 2),
            (12, 32, 64, 1),
            (200, 70, 129, 2),
            // A last panel of 20 columns: part of its second 16-lane half.
            (30, 52, 40, 2),
            (131, 40, 17, 3),
            (2 * CHUNK_ROWS + 5, 40, 17, 2),
            // Long rows: on AMX, X's rows are taken in blocks of 640 KiB (64 rows at
            // k = 4096), so these cross blocks, the last one partial.
            (100, 40, 4096, 2),
            (70, 33, 4000, 1),
            // ... and on AMX with at least an X block a thread, the threads take rows: 128 and
            // 72 rows on two, 96, 96 and 8 on three, over k slices.
            (200, 40, 4096, 2),
            (200, 33, 4096, 3),
            // On AMX (on one thread), two groups of row blocks (256 rows, then 44 in a partial
            // block) over two k slices, the second partial.
            (300, 40, 300, 1),
            // Any thread count: past MAX_THREADS it is MAX_THREADS (the splits overflowed).
            (131, 40, 17, usize::MAX),
            (200, 40, 4096, usize::MAX),
        ] {
            products_match_the_triple_loop(&kernels, m, n, k, threads);
        }
    }

    /// One attention head on AMX tiles (emulated everywhere, and natively where AMX runs)
    /// against softmax in f64 over the bf16-rounded scaled queries, keys and values: the only
    /// other rounding is the softmax weights' to bf16 (2⁻⁹ of each), so each output is within
    /// 2⁻⁸ of the largest value's size. Queries, keys and values are strided views into one
    /// array, as a self-attention's stacked projections are, and the head's block of `out`
    /// (row stride wider than the head) is the only part written. The same for the vdpbf16ps
    /// loop, whole and block of keys by block ([`attention_head_block`]).
    #[test]
    fn attention_heads_match_softmax_in_f64() {
        // (query rows, keys, d_qk, d_v): the language model's latent heads; partial strips,
        // key panels and value panels with odd widths; one key; keys over several tiles.
        for (nq, nk, d_qk, d_v) in [
            (256, 256, 32, 160),
            (33, 70, 20, 50),
            (5, 1, 3, 7),
            (40, 300, 64, 96),
            (64, 33, 40, 32),
        ] {
            let stride = 2 * d_qk + d_v + 3;
            let rows = nq.max(nk);
            let qkv: Vec<f32> = random(rows * stride, 21).iter().map(|x| 3.0 * x).collect();
            let q = View::strided(&qkv, nq, d_qk, stride);
            let k = View::strided(&qkv[d_qk..], nk, d_qk, stride);
            let v = View::strided(&qkv[2 * d_qk..], nk, d_v, stride);
            let scale = 1.0 / (d_qk as f32).sqrt();
            let at = |view: View, r: usize, c: usize| view.data[r * view.stride + c];
            let (ldo, offset) = (d_v + 11, 5);
            let mut want = vec![0f64; nq * d_v];
            let mut biggest = 0f64;
            for r in 0..nq {
                let scores: Vec<f64> = (0..nk)
                    .map(|j| {
                        (0..d_qk)
                            .map(|d| round_trip(at(q, r, d) * scale) * round_trip(at(k, j, d)))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for c in 0..d_v {
                    let value = |j: usize| round_trip(at(v, j, c));
                    want[r * d_v + c] = (0..nk).map(|j| exps[j] / sum * value(j)).sum();
                    biggest = (0..nk).map(|j| value(j).abs()).fold(biggest, f64::max);
                }
            }
            let tolerance = biggest / 256.0 + 1e-6;
            let check = |out: &[f32], path: &str| {
                let mut worst = 0f64;
                for (i, &o) in out.iter().enumerate() {
                    let (r, c) = ((i.max(offset) - offset) / ldo, (i.max(offset) - offset) % ldo);
                    if i < offset || r >= nq || c >= d_v {
                        assert_eq!(
                            o, -7.0,
                            "{path} {nq}x{nk} ({d_qk}, {d_v}): wrote outside the head at {i}"
                        );
                        continue;
                    }
                    let diff = (o as f64 - want[r * d_v + c]).abs();
                    worst = worst.max(diff);
                    assert!(
                        diff < tolerance,
                        "{path} {nq}x{nk} ({d_qk}, {d_v}) at ({r}, {c}): {o} vs {}",
                        want[r * d_v + c]
                    );
                }
                println!("{path} {nq}x{nk} ({d_qk}, {d_v}): worst difference {worst:.2e} (tolerance {tolerance:.2e})");
            };
            let len = offset + nq * ldo + 7;
            let (keys, values) = (
                PackedMatrix::pack_view(k, true, false),
                PackedMatrix::pack_view(v, false, false),
            );
            check_head(q, &keys, &values, ldo);
            let scaled: Vec<f32> = (0..nq)
                .flat_map(|r| (0..d_qk).map(move |d| at(q, r, d) * scale))
                .collect();
            let q_tiles = amx_rows(Rows::Dense(&scaled), nq, d_qk, keys.pairs, false);
            let mut out = vec![-7f32; len];
            amx::attention_head_emulated(head_tiles(&q_tiles, &keys, &values, nq), &mut out[offset..], ldo);
            check(&out, "emulated AMX");
            // The vdpbf16ps loop, native where the CPU has AVX-512 BF16, else emulated.
            let lda = a_stride(keys.pairs);
            let q_rows = bf16_rows(Rows::Dense(&scaled), nq, d_qk, lda);
            let mut out = vec![-7f32; len];
            // SAFETY: `out` holds the head's rows from `offset`, borrowed mutably.
            unsafe {
                blocked_head(
                    Bf16Kernel::Avx512Bf16,
                    &q_rows,
                    lda,
                    &keys,
                    &values,
                    0..nq,
                    HeadRun::Whole,
                    out.as_mut_ptr().add(offset),
                    ldo,
                )
            };
            check(&out, "vdpbf16ps");
            // The running form, over blocks of keys (uneven, so that a row's maximum often
            // comes in a later block), the query rows in two calls a block, each row divided by
            // its sum after the last block: on the vdpbf16ps loop (native or emulated), and
            // through `attention_head_block` where it runs, to the same bits.
            let queries = HeadQueries::new(q, scale);
            let block = nk / 3 + 1;
            let run_blocks = |public: bool| {
                let (mut max, mut sum) = (vec![f32::NEG_INFINITY; nq], vec![0f32; nq]);
                let mut acc = vec![0f32; nq * d_v];
                for start in (0..nk).step_by(block) {
                    let keys_here = block.min(nk - start);
                    let k_block = View::strided(&k.data[start * k.stride..], keys_here, d_qk, k.stride);
                    let v_block = View::strided(&v.data[start * v.stride..], keys_here, d_v, v.stride);
                    let keys = PackedMatrix::pack_view(k_block, true, false);
                    let values = PackedMatrix::pack_view(v_block, false, false);
                    for rows in [0..nq / 2, nq / 2..nq] {
                        let (max, sum) = (&mut max[rows.clone()], &mut sum[rows.clone()]);
                        let acc = &mut acc[rows.start * d_v..rows.end * d_v];
                        match public {
                            true => attention_head_block(&queries, rows.start, &keys, &values, max, sum, acc),
                            // SAFETY: `acc` holds the rows' outputs, borrowed mutably.
                            false => unsafe {
                                blocked_head(
                                    Bf16Kernel::Avx512Bf16,
                                    &queries.rows,
                                    queries.lda,
                                    &keys,
                                    &values,
                                    rows.clone(),
                                    HeadRun::Running { max, sum },
                                    acc.as_mut_ptr(),
                                    d_v,
                                )
                            },
                        }
                    }
                }
                let mut out = vec![-7f32; len];
                for r in 0..nq {
                    for c in 0..d_v {
                        out[offset + r * ldo + c] = acc[r * d_v + c] / sum[r];
                    }
                }
                out
            };
            let running = run_blocks(false);
            check(&running, "vdpbf16ps, blocks of keys");
            if attention_head_block_available() {
                assert!(same_bits(&run_blocks(true), &running), "attention_head_block");
            }
            if attention_head_available() {
                let mut out = vec![-7f32; len];
                // SAFETY: `out` holds the head's rows from `offset`, borrowed mutably.
                unsafe { attention_head(q, k, v, scale, out.as_mut_ptr().add(offset), ldo) };
                check(&out, &format!("{:?}", cpu::bf16_kernel()));
            }
        }
    }

    /// Whether two runs of values are the same bit for bit.
    fn same_bits(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// A product's output made straight into the next product's tiles is its f32 output
    /// converted as the next product converts it, bit for bit: on the emulated tiles (the
    /// blocks, panels and rows past m, threads sharing rows or panels), and through the public
    /// pair of calls where the products run on AMX (native, or emulated on request).
    #[test]
    fn outputs_to_tiles_are_the_f32_outputs_converted() {
        for (m, n, k, threads) in [
            (1, 32, 40, 1),
            (20, 96, 64, 1),
            (31, 64, 64, 2),
            (33, 96, 100, 3),
            (300, 160, 70, 2),
            (2100, 64, 48, 2),
        ] {
            let (a, w, bias) = (random(m * k, 21), random(n * k, 22), random(n, 23));
            let packed = PackedMatrix::pack_transposed(&w, n, k);
            let edges = Edges {
                bias: Some(&bias),
                activation: Some(Activation::GeluErf),
                ..Edges::default()
            };
            let x = amx_rows(Rows::Dense(&a), m, k, packed.pairs, true);
            let operands = packed.amx_operands(&x, m);
            let mut rows_out = vec![0f32; m * n];
            amx::matmul_emulated(operands, &mut rows_out, edges, threads);
            let want = amx_rows(Rows::Dense(&rows_out), m, n, n / 2, true);
            let mut tiles_out = vec![7u32; want.len()];
            amx::matmul_emulated_to_tiles(operands, &mut tiles_out, edges, threads);
            assert!(*want == *tiles_out, "{m}x{n}x{k} on {threads} threads");
            // The public pair: a next product from the tiles, as from the f32 rows.
            let next = PackedMatrix::pack_transposed(&random(24 * n, 24), 24, n);
            let (next_bias, start) = (random(24, 25), random(m * 24, 26));
            match packed.linear_rows_to_tiles(Rows::Dense(&a), m, &bias, Some(Activation::GeluErf), threads) {
                Some(tiles) => {
                    let mut from_tiles = start.clone();
                    next.linear_into_from_tiles(&tiles, &next_bias, &mut from_tiles, threads);
                    let hidden = packed.linear(&a, m, &bias, Some(Activation::GeluErf), threads);
                    let mut from_rows = start.clone();
                    next.linear_into(&hidden, m, &next_bias, &mut from_rows, threads);
                    assert!(same_bits(&from_tiles, &from_rows), "{m}x{n}x{k}: next product");
                }
                None => assert_ne!(cpu::bf16_kernel(), Bf16Kernel::Amx, "no tiles where AMX runs"),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Random shapes, odd sizes included.
        #[test]
        fn random_shapes_match_the_triple_loop_on_rounded_operands(
            m in 1usize..60,
            n in 1usize..100,
            k in 1usize..300,
            threads in 1usize..4,
        ) {
            products_match_the_triple_loop(&kernels_here(), m, n, k, threads);
        }
    }

    /// One shape: whole products (accumulated, and as a linear layer with bias and GELU) on the
    /// detected kernel, and one block of every height, for a whole panel and partial ones, on
    /// each of `kernels`.
    fn products_match_the_triple_loop(kernels: &[Bf16Kernel], m: usize, n: usize, k: usize, threads: usize) {
        let a = random(m * k, 11);
        let w = random(n * k, 12);
        let packed = PackedMatrix::pack_transposed(&w, n, k);
        let start = random(m * n, 13);
        let want = rounded_products(&a, &w, m, n, k);
        let tolerance = 1e-4 * (k as f64).sqrt();
        let mut out = start.clone();
        packed.matmul_accumulate(&a, m, &mut out, threads);
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            let expect = start[i] as f64 + w;
            assert!(
                (*g as f64 - expect).abs() < tolerance,
                "{m}x{n}x{k} at {i}: {g} vs {expect}"
            );
        }
        // A linear layer with GELU, on the CPU's kernel and on the emulated AMX path.
        let bias = random(n, 14);
        let check_layer = |layer: &[f32], path: &str| {
            for (i, (g, w)) in layer.iter().zip(&want).enumerate() {
                let pre = bias[i % n] as f64 + w;
                let gelu = 0.5 * pre * (1.0 + libm::erf(pre / std::f64::consts::SQRT_2));
                assert!(
                    (*g as f64 - gelu).abs() < tolerance,
                    "{m}x{n}x{k} linear {path} at {i}: {g} vs {gelu}"
                );
            }
        };
        check_layer(
            &packed.linear(&a, m, &bias, Some(Activation::GeluErf), threads),
            "",
        );
        // The AMX path with its tile instructions emulated: its blocks, addresses and strides
        // on any CPU.
        let mut out = start.clone();
        let x = amx_rows(Rows::Dense(&a), m, k, packed.pairs, true);
        let operands = packed.amx_operands(&x, m);
        amx::matmul_emulated(operands, &mut out, Edges::default(), threads);
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            let expect = start[i] as f64 + w;
            assert!(
                (*g as f64 - expect).abs() < tolerance,
                "{m}x{n}x{k} on emulated AMX at {i}: {g} vs {expect}"
            );
        }
        // ... and starting from the bias (what was in C is overwritten), with the activation.
        let mut out = start.clone();
        let from_bias = Edges {
            bias: Some(&bias),
            activation: Some(Activation::GeluErf),
            ..Edges::default()
        };
        amx::matmul_emulated(operands, &mut out, from_bias, threads);
        check_layer(&out, "on emulated AMX");
        // A bias onto C's values (a residual) equals the bias added first, bit for bit: on the
        // CPU's kernel and on emulated AMX.
        let mut bias_first = start.clone();
        rows::add_to_rows(&mut bias_first, &bias);
        let mut emulated_first = bias_first.clone();
        packed.matmul_accumulate(&a, m, &mut bias_first, threads);
        let mut onto = start.clone();
        packed.linear_into(&a, m, &bias, &mut onto, threads);
        assert!(same_bits(&onto, &bias_first), "{m}x{n}x{k} linear_into");
        amx::matmul_emulated(operands, &mut emulated_first, Edges::default(), threads);
        let onto_c = Edges {
            bias: Some(&bias),
            bias_onto_c: true,
            ..Edges::default()
        };
        let mut onto = start.clone();
        amx::matmul_emulated(operands, &mut onto, onto_c, threads);
        assert!(
            same_bits(&onto, &emulated_first),
            "{m}x{n}x{k} bias onto C on emulated AMX"
        );
        // ... and on each block kernel (the CPU's own may be AMX).
        let bias_only = Edges {
            bias: Some(&bias),
            ..Edges::default()
        };
        for &kernel in kernels {
            let product = |c: &mut [f32], edges: Edges| {
                // SAFETY: A is m×k and C m×n, borrowed mutably, initialised (its values are
                // read unless the bias replaces them).
                unsafe { packed.run(kernel, Rows::Dense(&a), m, c.as_mut_ptr(), n, threads, edges) }
            };
            let mut first = start.clone();
            rows::add_to_rows(&mut first, &bias);
            product(&mut first, Edges::default());
            let mut onto = start.clone();
            product(&mut onto, onto_c);
            assert!(same_bits(&onto, &first), "{kernel:?} {m}x{n}x{k} bias onto C");
            // A bias in place of C equals C set to the bias first, bit for bit.
            let mut first = rows::repeat_rows(&bias, m);
            product(&mut first, Edges::default());
            let mut from_bias = vec![f32::NAN; m * n];
            product(&mut from_bias, bias_only);
            assert!(
                same_bits(&from_bias, &first),
                "{kernel:?} {m}x{n}x{k} from the bias"
            );
        }
        // One block of each height on each kernel, for a whole panel and partial ones (in
        // its first and its second 16-lane half), into a C wider than the panel, the sums
        // meeting C in each way a block can start, over the pairs that hold inputs (as the
        // products and heads run it; for an odd k the last pair's second half is zero).
        let lda = a_stride(packed.pairs);
        let pa = bf16_rows(Rows::Dense(&a), MR.min(m), k, lda);
        let ldc = NR + 3;
        let block_bias: Vec<f32> = (0..NR).map(|j| bias[j % n]).collect();
        let starts = [
            (Start::AddToC, 1.0, 0.0),
            (Start::Overwrite, 0.0, 0.0),
            (Start::Bias(block_bias.as_ptr()), 0.0, 1.0),
            (Start::BiasOntoC(block_bias.as_ptr()), 1.0, 1.0),
        ];
        for &kernel in kernels {
            for (start, c_weight, bias_weight) in starts {
                for cols in [NR, NR / 2 + 5, 3].map(|cols| cols.min(n)) {
                    for rows in 1..=MR.min(m) {
                        let mut block = vec![1f32; MR * ldc];
                        // SAFETY: `block` holds MR rows of ldc ≥ NR ≥ cols columns, the bias NR.
                        unsafe {
                            run_block(
                                kernel,
                                &pa,
                                lda,
                                &packed.data,
                                packed.live_pairs(),
                                block.as_mut_ptr(),
                                ldc,
                                rows,
                                cols,
                                start,
                                Ahead::NONE,
                            )
                        };
                        for r in 0..MR {
                            for c in 0..ldc {
                                let got = block[r * ldc + c] as f64;
                                if r < rows && c < cols {
                                    let expect =
                                        c_weight + bias_weight * block_bias[c] as f64 + want[r * n + c];
                                    assert!(
                                        (got - expect).abs() < tolerance,
                                        "{kernel:?} {start:?} {rows}x{cols} block {m}x{n}x{k} at {r},{c}"
                                    );
                                } else {
                                    assert_eq!(
                                        got, 1.0,
                                        "{kernel:?} {rows}x{cols} block: wrote outside it at {r},{c}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A product set into a C wider than it (an attention head's columns of the heads' rows):
    /// C's old values (NaN) never read, the columns past n never written, and the values those
    /// of the same kernel's product added to zeros (kernels sum in different orders); on each
    /// kernel (its blocked and widened passes, row chunks and panel groups) and through
    /// `matmul_rows_raw` on this CPU's.
    #[test]
    fn products_set_into_a_wider_c() {
        for (m, n, k, threads) in [
            (5, 70, 33, 2),
            (40, 96, 64, 2),
            (130, 45, 17, 1),
            (256, 160, 96, 2),
        ] {
            let (a, w) = (random(m * k, 61), random(n * k, 62));
            let packed = PackedMatrix::pack_transposed(&w, n, k);
            let ldc = n + 5;
            let check = |c: &[f32], want: &[f32], path: &str| {
                for r in 0..m {
                    for j in 0..ldc {
                        let got = c[r * ldc + j];
                        if j < n {
                            assert_eq!(got, want[r * n + j], "{path} {m}x{n}x{k} at {r},{j}");
                        } else {
                            assert!(got.is_nan(), "{path} {m}x{n}x{k}: wrote past n at {r},{j}");
                        }
                    }
                }
            };
            let overwrite = Edges {
                overwrite: true,
                ..Edges::default()
            };
            for kernel in kernels_here() {
                let (mut c, mut want) = (vec![f32::NAN; m * ldc], vec![0f32; m * n]);
                // SAFETY: `c` holds m rows of ldc ≥ n values and `want` m rows of n, each
                // borrowed mutably; the kernel runs here (natively or emulated).
                unsafe {
                    packed.run(
                        kernel,
                        Rows::Dense(&a),
                        m,
                        c.as_mut_ptr(),
                        ldc,
                        threads,
                        overwrite,
                    );
                    let onto_zeros = Edges::default();
                    packed.run(
                        kernel,
                        Rows::Dense(&a),
                        m,
                        want.as_mut_ptr(),
                        n,
                        threads,
                        onto_zeros,
                    );
                };
                check(&c, &want, &format!("{kernel:?}"));
            }
            let (mut c, mut want) = (vec![f32::NAN; m * ldc], vec![0f32; m * n]);
            packed.matmul_accumulate(&a, m, &mut want, threads);
            // SAFETY: as above.
            unsafe { packed.matmul_rows_raw(Rows::Dense(&a), m, c.as_mut_ptr(), ldc, threads) };
            check(&c, &want, "matmul_rows_raw");
        }
    }

    /// A strided view packed as W or as Wᵀ gives the same product as a dense copy of W.
    #[test]
    fn views_pack_as_their_dense_copies() {
        let (n, k, stride, m) = (45, 37, 50, 9);
        let base = random(k.max(n) * stride, 31);
        let a = random(m * k, 32);
        // W itself, [n, k] at stride `stride`: rows of the view are W's rows.
        let w: Vec<f32> = (0..n).flat_map(|c| base[c * stride..][..k].to_vec()).collect();
        // Wᵀ, [k, n] at stride `stride`: W[c][i] = view[i][c].
        let wt: Vec<f32> = (0..n)
            .flat_map(|c| (0..k).map(|i| base[i * stride + c]).collect::<Vec<_>>())
            .collect();
        for (view, dense) in [
            (View::strided(&base, n, k, stride), (true, &w)),
            (View::strided(&base, k, n, stride), (false, &wt)),
        ] {
            let (transposed, dense) = dense;
            let packed = PackedMatrix::pack_view(view, transposed, true);
            let reference = PackedMatrix::pack_transposed(dense, n, k);
            assert_eq!(*packed.data, *reference.data, "transposed {transposed}");
            let mut out = vec![0f32; m * n];
            packed.matmul_accumulate(&a, m, &mut out, 2);
            let want: Vec<f32> = rounded_products(&a, dense, m, n, k)
                .into_iter()
                .map(|dot| dot as f32)
                .collect();
            let worst = out
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "transposed {transposed}: {worst}");
        }
    }

    /// A pack packed again from other values (either orientation, a shape with padded lanes
    /// and pairs) is lane for lane a fresh pack of them.
    #[test]
    fn repacked_is_packed_afresh() {
        let (n, k) = (45, 37);
        for transposed in [true, false] {
            let (rows, cols) = if transposed { (n, k) } else { (k, n) };
            let (first, second) = (random(rows * cols, 41), random(rows * cols, 42));
            let mut packed = PackedMatrix::pack_view(View::dense(&first, rows, cols), transposed, true);
            for parallel in [true, false] {
                packed.repack(View::dense(&second, rows, cols), transposed, parallel);
                let fresh = PackedMatrix::pack_view(View::dense(&second, rows, cols), transposed, false);
                assert!(
                    *packed.data == *fresh.data,
                    "transposed {transposed}, parallel {parallel}"
                );
            }
        }
    }

    /// Rows stacked from strided parts of different heights pack as a dense copy of the stack,
    /// lane for lane, panels straddling the parts included.
    #[test]
    fn stacked_rows_pack_as_their_dense_copy() {
        for_each_stack(|parts, dense, n, k| {
            let packed = PackedMatrix::pack_stacked(StackedRows::new(parts));
            let reference = PackedMatrix::pack_transposed(dense, n, k);
            assert_eq!((packed.n, packed.k), (n, k));
            assert!(*packed.data == *reference.data, "{n} × {k}: the panels differ");
        });
    }

    #[test]
    fn a_rows_result_does_not_depend_on_its_product() {
        for (m, n, k, threads) in [(40, 50, 77, 1), (64, 33, 130, 2), (WIDENED_MIN_ROWS, 20, 9, 1)] {
            let a = random(m * k, 21);
            let packed = PackedMatrix::pack_transposed(&random(n * k, 22), n, k);
            let mut all = vec![0f32; m * n];
            packed.matmul_accumulate(&a, m, &mut all, threads);
            for r in 0..m {
                let mut alone = vec![0f32; n];
                packed.matmul_accumulate(&a[r * k..(r + 1) * k], 1, &mut alone, 1);
                let same = all[r * n..(r + 1) * n]
                    .iter()
                    .zip(&alone)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{:?}, {m}x{n}x{k} on {threads} threads: row {r} differs from it alone",
                    cpu::bf16_kernel()
                );
            }
        }
    }

    /// A made row by row ([`Rows::Made`]) is the same A as given whole: the same bf16 lanes
    /// (zero past k, for an odd k; in tile order, also in the rows short of a whole block), and
    /// the same layer, bit for bit, on this CPU's kernel.
    #[test]
    fn rows_made_one_at_a_time_are_the_dense_rows() {
        for (m, n, k, threads) in [(5, 7, 37, 1), (70, 40, 130, 2), (1, 3, 1, 1)] {
            let a = random(m * k, 41);
            let make = |r: usize, row: &mut [f32]| row.copy_from_slice(&a[r * k..(r + 1) * k]);
            let pairs = k.div_ceil(2) + 3;
            let dense = bf16_rows(Rows::Dense(&a), m, k, pairs);
            let made = bf16_rows(Rows::Made(&make), m, k, pairs);
            assert_eq!(*dense, *made, "{m}x{k}");
            assert_eq!(dense.len(), m * pairs);
            let halves: Vec<u16> = dense.iter().flat_map(|&l| [l as u16, (l >> 16) as u16]).collect();
            for (i, &h) in halves.iter().enumerate() {
                let (r, c) = (i / (2 * pairs), i % (2 * pairs));
                let want = if c < k { to_bf16_bits(a[r * k + c]) } else { 0 };
                assert_eq!(h, want, "{m}x{k} at row {r}, half {c}");
            }
            // AMX's tile order: a whole slice of zeros past k, and whole 32-row blocks.
            let pairs = k.div_ceil(2).next_multiple_of(amx::TILE_PAIRS) + amx::TILE_PAIRS;
            let dense = amx_rows(Rows::Dense(&a), m, k, pairs, true);
            let made = amx_rows(Rows::Made(&make), m, k, pairs, false);
            assert_eq!(*dense, *made, "{m}x{k} in tile order");
            assert_eq!(dense.len(), m.div_ceil(amx::ROWS) * amx::ROWS * pairs);
            for r in 0..m.div_ceil(amx::ROWS) * amx::ROWS {
                for c in 0..2 * pairs {
                    let (block, row) = (r / amx::ROWS, r % amx::ROWS);
                    let (step, j) = (c / (2 * amx::TILE_PAIRS), c % (2 * amx::TILE_PAIRS));
                    let lane = dense[block * amx::ROWS * pairs + amx::x_lane(row, step) + j / 2];
                    let h = if j % 2 == 0 {
                        lane as u16
                    } else {
                        (lane >> 16) as u16
                    };
                    let want = if r < m && c < k {
                        to_bf16_bits(a[r * k + c])
                    } else {
                        0
                    };
                    assert_eq!(h, want, "{m}x{k} in tile order at row {r}, half {c}");
                }
            }
            let packed = PackedMatrix::pack_transposed(&random(n * k, 42), n, k);
            let bias = random(n, 43);
            let gelu = Some(Activation::GeluErf);
            let whole = packed.linear(&a, m, &bias, gelu, threads);
            let one_by_one = packed.linear_rows(Rows::Made(&make), m, &bias, gelu, threads);
            let same = whole
                .iter()
                .zip(&one_by_one)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{:?}, {m}x{n}x{k}: made rows differ", cpu::bf16_kernel());
            // Each block kernel's loop, whichever this CPU would pick: its row chunks, its
            // panel groups (m = 5 on 2 threads) and AVX2's widened pass (from 18 rows).
            for kernel in kernels_here() {
                let product = |a: Rows| {
                    let mut out = vec![0.5f32; m * n];
                    // SAFETY: `out` is C (m×n), borrowed mutably; the kernel runs here.
                    unsafe { packed.run(kernel, a, m, out.as_mut_ptr(), n, 2, Edges::default()) };
                    out
                };
                let (dense, made) = (product(Rows::Dense(&a)), product(Rows::Made(&make)));
                let same = dense.iter().zip(&made).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{kernel:?}, {m}x{n}x{k}: made rows differ");
            }
        }
    }

    /// The AVX2 pass's vector rounding of A equals [`to_bf16_bits`] on every lane (ties, NaN,
    /// infinities, subnormals), with each pair's odd input first, for k past and short of a
    /// vector.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn round_rows_round_as_to_bf16_bits() {
        if cpu::simd_level() < SimdLevel::Avx2 {
            return;
        }
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::from_bits(0x3F80_8000), // a tie, rounded to the even 1.0
            f32::from_bits(0x3F81_8000), // a tie, rounded up
            f32::from_bits(0x0000_0001),
            -0.0,
            1.0 / 3.0,
        ];
        for k in [1, 7, 8, 9, 16, 23] {
            let rows = 3;
            let a: Vec<f32> = (0..rows * k)
                .map(|i| {
                    if i % 3 == 0 {
                        specials[i % specials.len()]
                    } else {
                        random(1, i as u64)[0]
                    }
                })
                .collect();
            let got = avx2::round_rows(&a, rows, k);
            let steps = 2 * k.div_ceil(2);
            for r in 0..rows {
                for i in 0..steps {
                    // Position i holds input i + 1 (even i) or i - 1 (odd i); past k, zero.
                    let input = if i % 2 == 0 { i + 1 } else { i - 1 };
                    let want = if input < k {
                        to_bf16_bits(a[r * k + input])
                    } else {
                        0
                    };
                    let got = got[r * steps + i].to_bits();
                    assert_eq!(got, (want as u32) << 16, "k {k}, row {r}, position {i}");
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16_bits(1.0), 0x3F80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(to_bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(to_bf16_bits(f32::NAN) & 0x7FC0, 0x7FC0);
        assert_eq!(to_bf16_bits(f32::INFINITY), 0x7F80);
        assert_eq!(to_bf16_bits(-0.0), 0x8000);
    }
}
