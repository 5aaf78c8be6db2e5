//! bf16 matrix products `C += A·Wᵀ` with f32 accumulation, for the engine's weight matrices.
//!
//! W (`[n, k]`, f32 as stored) is packed once into bf16 column panels laid out for the
//! `vdpbf16ps` instruction (AVX-512 BF16): panel `p` holds output columns `32p..32p+32`, and for
//! each pair of inputs `(2i, 2i+1)` two 64-byte vectors whose 32-bit lanes are the pairs
//! `(W[c][2i], W[c][2i+1])`. A is converted to bf16 pairs while it is packed per call, in blocks
//! of [`MR`] rows. The microkernel keeps an `MR × 32` block of C in 24 registers; each step
//! broadcasts one row's input pair and does two `vdpbf16ps`, 64 multiply-adds each.
//!
//! Where the CPU lacks AVX-512 BF16 the same packed data goes through an AVX2+FMA kernel, which
//! widens each bf16 to f32 with a shift or a mask (bf16 is the top half of an f32) and does the
//! multiply-adds in f32, or else through a portable kernel. Both compute the same products (a
//! product of two bf16 values is exact in f32), accumulated in the same order within each pair,
//! so results agree with the AVX-512 kernel up to f32 rounding.

use rayon::prelude::*;

use super::sgemm::Edges;
use super::SendPtr;
use crate::config::Activation;

/// Rows of C per microkernel call.
pub const MR: usize = 12;
/// Columns of C per panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of A per task at most when there are many (a batch, a long text's decode): their bf16
/// pairs (192 × 1280 inputs: 480 KB) stay in L2 while the task's panels pass over them.
const CHUNK_ROWS: usize = 16 * MR;

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

#[inline(always)]
fn from_bf16_bits(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A weight matrix `W` (`[n, k]`) packed for `C += A·Wᵀ` in bf16.
#[derive(Clone)]
pub struct PackedMatrix {
    pub(super) n: usize,
    pub(super) k: usize,
    /// Input pairs, `ceil(k / 2)` rounded up to whole AMX tiles (16 pairs); the extra are zero.
    pub(super) pairs: usize,
    /// `[panels][pairs][NR]` lanes of packed pairs (low half = even input, high = odd).
    pub(super) data: Vec<u32>,
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
        let pairs = k.div_ceil(32) * 16;
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        data.par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for lane in 0..NR {
                    let c = p * NR + lane;
                    if c >= n {
                        continue;
                    }
                    let row = &w[c * k..(c + 1) * k];
                    for i in 0..k.div_ceil(2) {
                        let hi = if 2 * i + 1 < k { row[2 * i + 1] } else { 0.0 };
                        panel[i * NR + lane] = pair(row[2 * i], hi);
                    }
                }
            });
        Self { n, k, pairs, data }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// `out[m, n] += a[m, k] · Wᵀ`, both row-major and dense.
    pub fn matmul_accumulate(&self, a: &[f32], m: usize, out: &mut [f32], threads: usize) {
        assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        assert_eq!(out.len(), m * self.n, "bf16 matmul: C is not {m}x{}", self.n);
        if Kernel::detect() == Kernel::Amx {
            return super::amx::matmul_accumulate(self, a, m, out, threads);
        }
        // SAFETY: A is m×k and C m×n, dense (asserted), C borrowed mutably.
        unsafe { self.run(a, m, out.as_mut_ptr(), threads, Edges::default()) }
    }

    /// A linear layer, `act(a[m, k] · Wᵀ + bias)`, into a new `[m, n]` buffer: as
    /// [`sgemm::PackedWeights::linear`](super::sgemm::PackedWeights::linear), each task writes
    /// the bias into its block of C first and applies the activation to it last.
    pub fn linear(
        &self,
        a: &[f32],
        m: usize,
        bias: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        assert_eq!(a.len(), m * self.k, "bf16 matmul: A is not {m}x{}", self.k);
        assert_eq!(
            bias.len(),
            self.n,
            "bf16 matmul: the bias has {} values, W {} rows",
            bias.len(),
            self.n
        );
        if Kernel::detect() == Kernel::Amx || m == 0 || self.n == 0 || self.k == 0 {
            let mut out = super::kernels::repeat_rows(bias, m);
            self.matmul_accumulate(a, m, &mut out, threads);
            if let Some(act) = activation {
                super::kernels::activate(&mut out, act);
            }
            return out;
        }
        let mut out = Vec::with_capacity(m * self.n);
        let edges = Edges {
            bias: Some(bias),
            activation,
            overwrite: false,
        };
        // SAFETY: A is m×k (asserted); C is `out`'s m·n allocated values. With a bias, every
        // task writes each element of its block before adding to it, and the tasks' blocks
        // cover C (m, n, k > 0), so all m·n values are initialised when `run` returns.
        unsafe {
            self.run(a, m, out.as_mut_ptr(), threads, edges);
            out.set_len(m * self.n);
        }
        out
    }

    /// The blocked product into C (`[m, n]`, dense, at `c`) with C's `edges`, on the AVX-512
    /// BF16, AVX2 or portable microkernel. Work is cut into row chunks × groups of panels, as
    /// the f32 products are; each task converts its own rows of A to bf16 pairs (in parallel,
    /// and kept in L2 while every panel of its group passes over them), and the microkernel
    /// adds its block straight into C.
    ///
    /// # Safety
    /// `c` must be valid for writes of m·n values, and no one else may access them during the
    /// call; with a bias they may be uninitialised.
    unsafe fn run(&self, a: &[f32], m: usize, c: *mut f32, threads: usize, edges: Edges) {
        let (n, k, pairs) = (self.n, self.k, self.pairs);
        assert!(!edges.overwrite, "bf16 products add to C");
        if m == 0 || n == 0 {
            return;
        }
        let kernel = Kernel::detect();
        let panels = n.div_ceil(NR);
        let threads = threads.max(1);
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
            // SAFETY: rows `rows` < m × columns `cols` ⊂ 0..n lie in C, in this task's block
            // (C as `run` requires).
            unsafe { edges.begin(c_ptr.get(), n, rows.clone(), cols.clone()) };
            let packed_a = pack_a(&a[rows.start * k..rows.end * k], rows.len(), k, pairs);
            for p in group * per_group..((group + 1) * per_group).min(panels) {
                let panel = &self.data[p * pairs * NR..(p + 1) * pairs * NR];
                let panel_cols = NR.min(n - p * NR);
                for (b, a_block) in packed_a.chunks_exact(pairs * MR).enumerate() {
                    let block_rows = MR.min(rows.len() - b * MR);
                    // SAFETY: rows rows.start + b·MR.. + block_rows < m and columns
                    // p·NR.. + panel_cols ≤ n lie in C, in this task's block.
                    unsafe {
                        let c = c_ptr.get().add((rows.start + b * MR) * n + p * NR);
                        kernel.run(a_block, panel, pairs, c, n, block_rows, panel_cols);
                    }
                }
            }
            // SAFETY: as above; every element of the block is written by now.
            unsafe { edges.end(c_ptr.get(), n, rows, cols) };
        };
        if threads > 1 && chunks * groups > 1 {
            (0..chunks * groups).into_par_iter().for_each(task);
        } else {
            (0..chunks * groups).for_each(task);
        }
    }
}

/// `a` (`[rows, k]`) as bf16 pairs in blocks of [`MR`] rows: `[blocks][pairs][MR]`, zero-padded.
fn pack_a(a: &[f32], rows: usize, k: usize, pairs: usize) -> Vec<u32> {
    let blocks = rows.div_ceil(MR);
    let mut packed = vec![0u32; blocks * pairs * MR];
    for (b, block) in packed.chunks_mut(pairs * MR).enumerate() {
        for r in 0..MR.min(rows - b * MR) {
            let row = &a[(b * MR + r) * k..(b * MR + r + 1) * k];
            pack_row(row, block, r);
        }
    }
    packed
}

#[inline(always)]
fn pack_row_body(row: &[f32], block: &mut [u32], r: usize) {
    let k = row.len();
    for i in 0..k / 2 {
        block[i * MR + r] = pair(row[2 * i], row[2 * i + 1]);
    }
    if k % 2 == 1 {
        block[(k / 2) * MR + r] = pair(row[k - 1], 0.0);
    }
}

super::kernels::dispatch!(fn pack_row(row: &[f32], block: &mut [u32], r: usize) => pack_row_body);

/// Which microkernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`), through [`super::amx`].
    Amx,
    /// AVX-512 BF16 `vdpbf16ps`.
    Avx512Bf16,
    /// AVX2 + FMA: bf16 widened to f32 in registers, f32 multiply-adds.
    Avx2,
    /// Plain Rust on the same packed data.
    Portable,
}

impl Kernel {
    /// The best kernel this CPU runs; detected once.
    pub fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(Self::probe)
    }

    fn probe() -> Self {
        if super::amx::available() {
            return Self::Amx;
        }
        if avx512_bf16_here() || super::emulated512::requested() {
            return Self::Avx512Bf16;
        }
        #[cfg(target_arch = "x86_64")]
        if super::kernels::avx2_products() {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// `C += A_block · panel` over all `pairs`, for the block's first `rows` rows (≤ [`MR`]) and
    /// the panel's first `cols` columns (≤ [`NR`]), C at `c` with row stride `ldc`. (The AMX path
    /// has its own loop; here it falls back to the AVX-512 BF16 kernel.)
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of rows `0..rows` × columns `0..cols` at stride
    /// `ldc`, and no one else may access them during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        a: &[u32],
        b: &[u32],
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        assert!(a.len() >= pairs * MR && b.len() >= pairs * NR && rows <= MR && cols <= NR);
        if rows == 0 || cols == 0 {
            return;
        }
        match self {
            // SAFETY: the native kernels only where the CPU has AVX-512 F and BF16; A and the
            // panel's lengths checked above, C as the caller promises.
            Self::Avx512Bf16 | Self::Amx => unsafe {
                avx512_kernels()[rows - 1](a.as_ptr(), b.as_ptr(), pairs, c, ldc, cols)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; as above.
            Self::Avx2 => unsafe { avx2::kernel(a.as_ptr(), b.as_ptr(), pairs, c, ldc, rows, cols) },
            // SAFETY: as above.
            _ => unsafe { portable_kernel(a, b, pairs, c, ldc, rows, cols) },
        }
    }
}

/// [`Kernel::run`] in plain Rust.
///
/// # Safety
/// As [`Kernel::run`].
unsafe fn portable_kernel(
    a: &[u32],
    b: &[u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut tile = [[0f32; NR]; MR];
    for i in 0..pairs {
        let b_row = &b[i * NR..(i + 1) * NR];
        for (r, tile_row) in tile.iter_mut().enumerate().take(rows) {
            let x = a[i * MR + r];
            let (x0, x1) = (from_bf16_bits(x as u16), from_bf16_bits((x >> 16) as u16));
            for (acc, &w) in tile_row.iter_mut().zip(b_row) {
                let (w0, w1) = (from_bf16_bits(w as u16), from_bf16_bits((w >> 16) as u16));
                *acc += x1 * w1;
                *acc += x0 * w0;
            }
        }
    }
    for (r, tile_row) in tile.iter().enumerate().take(rows) {
        for (j, sum) in tile_row.iter().enumerate().take(cols) {
            // SAFETY: r < rows, j < cols: inside C's block, as the caller promises.
            unsafe { *c.add(r * ldc + j) += sum };
        }
    }
}

/// Whether the CPU has AVX-512 F and BF16; where it does not, [`Kernel::Avx512Bf16`] runs
/// emulated (tests, or `PERCEIVER_EMULATE_AVX512`: see [`super::emulated512`]).
fn avx512_bf16_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX-512 BF16 microkernels for blocks of 1 to [`MR`] rows: native where the CPU has
/// them, else emulated.
fn avx512_kernels() -> &'static [avx512_emulated::Microkernel; MR] {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_here() {
        return &avx512::KERNELS;
    }
    &avx512_emulated::KERNELS
}

/// The AVX-512 BF16 microkernels, written once over the names of `std::arch`'s intrinsics and
/// expanded twice: on the real ones (with `$feature` enabling AVX-512 BF16) and on
/// [`emulated512`](super::emulated512)'s, which run the same source on any CPU for the tests.
macro_rules! avx512_bf16_kernels {
    ($(#[$feature:meta])*) => {
        /// A block of R rows: see [`Kernel::run`](super::Kernel::run).
        pub(super) type Microkernel = unsafe fn(*const u32, *const u32, usize, *mut f32, usize, usize);

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
        /// pair, its sums added into C's first `cols` columns.
        $(#[$feature])*
        unsafe fn kernel<const R: usize>(
            a: *const u32,
            b: *const u32,
            pairs: usize,
            c: *mut f32,
            ldc: usize,
            cols: usize,
        ) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for i in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(i * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(i * NR + 16).cast()));
                let a_row = a.add(i * MR);
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_row.add(r) as i32));
                    acc_row[0] = _mm512_dpbf16_ps(acc_row[0], x, b0);
                    acc_row[1] = _mm512_dpbf16_ps(acc_row[1], x, b1);
                }
            }
            // Lanes past `cols` are masked off: they lie past C's row.
            let mask = |first: usize| -> __mmask16 {
                match cols.saturating_sub(first) {
                    0 => 0,
                    n if n >= 16 => 0xFFFF,
                    n => (1u16 << n) - 1,
                }
            };
            let masks = [mask(0), mask(16)];
            for (r, acc_row) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                for (half, (&sums, &mask)) in acc_row.iter().zip(&masks).enumerate() {
                    if mask != 0 {
                        let old = _mm512_maskz_loadu_ps(mask, row.add(16 * half));
                        _mm512_mask_storeu_ps(row.add(16 * half), mask, _mm512_add_ps(old, sums));
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    avx512_bf16_kernels!(#[target_feature(enable = "avx512f,avx512bf16")]);
}

/// The AVX-512 BF16 microkernels on emulated registers.
mod avx512_emulated {
    use super::super::emulated512::*;
    use super::{MR, NR};

    avx512_bf16_kernels!();
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Rows per pass: 8 accumulators, 4 widened weight vectors, the input pair widened (2) and a
    /// mask fill the 16 registers.
    const ROWS: usize = 4;
    const _: () = assert!(MR % ROWS == 0 && NR % 16 == 0);

    /// The `rows × 32` block (rows ≤ MR) as passes of `4 × 16`, its sums added into C's first
    /// `cols` columns. A packed lane holds a pair of bf16 values: the even input in the low
    /// half, the odd in the high half; `lane << 16` is the even one as an f32,
    /// `lane & 0xFFFF0000` the odd one.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel(
        a: *const u32,
        b: *const u32,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let even = |v: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
        let odd = |v: __m256i| _mm256_castsi256_ps(_mm256_and_si256(v, odd_mask));
        for half in 0..NR / 16 {
            if 16 * half >= cols {
                break;
            }
            let b_half = b.add(16 * half);
            // A pass past `rows` (but inside the block's MR packed rows) is not stored.
            for first in (0..rows).step_by(ROWS) {
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for i in 0..pairs {
                    let w0 = _mm256_loadu_si256(b_half.add(i * NR).cast());
                    let w1 = _mm256_loadu_si256(b_half.add(i * NR + 8).cast());
                    let (w0_even, w0_odd, w1_even, w1_odd) = (even(w0), odd(w0), even(w1), odd(w1));
                    let a_row = a.add(i * MR + first);
                    for (r, acc_row) in acc.iter_mut().enumerate() {
                        let x = _mm256_set1_epi32(*a_row.add(r) as i32);
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
                    if width == 16 {
                        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc_row[0]));
                        let high = out.add(8);
                        _mm256_storeu_ps(high, _mm256_add_ps(_mm256_loadu_ps(high), acc_row[1]));
                    } else {
                        let mut sums = [0f32; 16];
                        _mm256_storeu_ps(sums.as_mut_ptr(), acc_row[0]);
                        _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc_row[1]);
                        for (j, sum) in sums.iter().enumerate().take(width) {
                            *out.add(j) += sum;
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
    use crate::engine::matmul::tests::random;
    use crate::engine::sgemm::tests::libm_erf;

    fn round_trip(x: f32) -> f64 {
        from_bf16_bits(to_bf16_bits(x)) as f64
    }

    /// The block kernels to test: each this CPU has, and AVX-512 BF16 natively or emulated.
    fn kernels_here() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable, Kernel::Avx512Bf16];
        #[cfg(target_arch = "x86_64")]
        if crate::engine::kernels::simd_level() >= 1 {
            kernels.push(Kernel::Avx2);
        }
        kernels
    }

    /// Every kernel against an f64 triple loop on the bf16-rounded operands, on sizes with
    /// partial row blocks, partial panels, odd k, several chunks and several thread counts.
    #[test]
    fn products_match_the_triple_loop_on_rounded_operands() {
        let kernels = kernels_here();
        println!(
            "full products on {:?}; blocks on {kernels:?} (AVX-512 BF16 native: {})",
            Kernel::detect(),
            avx512_bf16_here()
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
        ] {
            products_match_the_triple_loop(&kernels, m, n, k, threads);
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
    fn products_match_the_triple_loop(kernels: &[Kernel], m: usize, n: usize, k: usize, threads: usize) {
        let a = random(m * k, 11);
        let w = random(n * k, 12);
        let packed = PackedMatrix::pack_transposed(&w, n, k);
        let start = random(m * n, 13);
        let mut want = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                want[r * n + c] = (0..k)
                    .map(|i| round_trip(a[r * k + i]) * round_trip(w[c * k + i]))
                    .sum::<f64>();
            }
        }
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
        let bias = random(n, 14);
        let layer = packed.linear(&a, m, &bias, Some(Activation::GeluErf), threads);
        for (i, (g, w)) in layer.iter().zip(&want).enumerate() {
            let pre = bias[i % n] as f64 + w;
            let gelu = 0.5 * pre * (1.0 + libm_erf(pre / std::f64::consts::SQRT_2));
            assert!(
                (*g as f64 - gelu).abs() < tolerance,
                "{m}x{n}x{k} linear at {i}: {g} vs {gelu}"
            );
        }
        // One block of each height on each kernel, for a whole panel and partial ones (in
        // its first and its second 16-lane half), into a C wider than the panel.
        let pa = pack_a(&a[..MR.min(m) * k], MR.min(m), k, packed.pairs);
        let ldc = NR + 3;
        for &kernel in kernels {
            for cols in [NR, NR / 2 + 5, 3].map(|cols| cols.min(n)) {
                for rows in 1..=MR.min(m) {
                    let mut block = vec![1f32; MR * ldc];
                    // SAFETY: `block` holds MR rows of ldc ≥ NR ≥ cols columns.
                    unsafe {
                        kernel.run(
                            &pa,
                            &packed.data,
                            packed.pairs,
                            block.as_mut_ptr(),
                            ldc,
                            rows,
                            cols,
                        )
                    };
                    for r in 0..MR {
                        for c in 0..ldc {
                            let got = block[r * ldc + c] as f64;
                            if r < rows && c < cols {
                                let expect = 1.0 + want[r * n + c];
                                assert!(
                                    (got - expect).abs() < tolerance,
                                    "{kernel:?} {rows}x{cols} block {m}x{n}x{k} at {r},{c}"
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
