//! f32 products with a weight matrix, `C += X·Wᵀ`, on AVX-512 or AVX2+FMA (the `gemm` crate,
//! [`crate::matmul`], stays the portable path: on stable Rust it stops at AVX2, and on small,
//! tall shapes its products reach about half of what a packed-weight kernel does).
//!
//! Weights are packed once ([`PackedWeights`]) in panels of features. The AVX-512 microkernel
//! keeps a 6×64 block of C in 24 registers, loads four vectors of W and broadcasts six X values
//! per step; the AVX2 one has 16 registers and keeps a 6×16 block (12 accumulators, two W
//! vectors, one broadcast) on panels 16 features wide, so that a step reads one cache line of W.
//! X is read in place. (The alternatives timed slower: reading W in place, with X packed and the
//! tile added to C transposed; on AVX2, 64-wide panels walked as four 16-column slices, or X
//! packed into interleaved row blocks.) [`crate::cpu::f32_kernel`] chooses the kernel.

use std::ops::Range;

use rayon::prelude::*;

use crate::activation::Activation;
use crate::cpu::{self, F32Kernel};
use crate::matmul::{Source, StackedRows, View};
use crate::rows;
use crate::send_ptr::SendPtr;

/// Bytes per cache line.
const LINE_BYTES: usize = 64;
/// f32 values per 64-byte cache line.
const LINE_FLOATS: usize = LINE_BYTES / 4;

const NO_KERNEL: &str = "sgemm: the CPU has neither AVX-512 nor AVX2+FMA";

/// Whether this CPU runs a packed kernel ([`cpu::f32_kernel`]); otherwise callers use the
/// `gemm` crate ([`crate::matmul`]).
pub fn available() -> bool {
    cpu::f32_kernel().is_some()
}

/// Features per packed weight panel of the AVX-512 kernel: four 16-lane vectors.
pub(crate) const PANEL: usize = 64;
/// Features per packed weight panel of the AVX2 kernel: two 8-lane vectors, so that one step
/// of its 6×16 block reads one contiguous 64-byte line of W.
const PANEL_AVX2: usize = 16;
/// X rows per call of the packed-weight microkernel (6 × 4 accumulators).
const ROWS: usize = 6;
/// k per pass of the AVX-512 kernel: a panel slice (128 × 64 f32, 32 KB) stays in L1 while
/// every block of X rows streams past it (tuned on Zen 5: 48 KB L1, 1 MB L2).
const PANEL_KC: usize = 128;
/// k per pass of the AVX-512 kernel where a core has at least [`LARGE_L2_KIB`] of L2 (Intel's
/// server cores): slices of 64 KB, read from L2, and half as many passes over each block of C,
/// were faster there than slices that fit L1 (timed on a 2 MB-L2 Xeon).
const PANEL_KC_LARGE_L2: usize = 256;
/// See [`PANEL_KC_LARGE_L2`].
const LARGE_L2_KIB: usize = 2048;
/// k per pass of the AVX-512 kernel where a core's L1 data cache is smaller than
/// [`SMALL_L1_KIB`] (AMD Zen 4's 32 KB): a 128-deep slice fills all of it, so it is read from L2
/// whatever its depth, and slices as deep as the model's k (1,280: 320 KB, in the 1 MB L2 with
/// a block of X) were faster there than 128 or 256 deep ones (fewer passes over each block of
/// C, fewer microkernel calls).
const PANEL_KC_SMALL_L1: usize = 1280;
/// See [`PANEL_KC_SMALL_L1`]: [`PANEL_KC`]'s 32 KB slice stays in L1 from 48 KB up.
const SMALL_L1_KIB: usize = 48;
/// k per pass of the AVX2 kernel: in practice all of k (k = 1280 makes a panel of 80 KB, read
/// from L2 by each block of rows). Each block then reads its six rows of X as six long streams;
/// in slices of 256 (a 16 KB panel slice in L1) the 1 KB pieces of each row cost more. Capped
/// so that a panel slice stays well inside L2.
const PANEL_KC_AVX2: usize = 2048;

/// Features per panel and k per pass of `kernel`'s packed layout.
fn panel_shape(kernel: Option<F32Kernel>) -> (usize, usize) {
    match kernel {
        Some(F32Kernel::Avx2) => (PANEL_AVX2, PANEL_KC_AVX2),
        _ if cpu::l2_kib().is_some_and(|kib| kib >= LARGE_L2_KIB) => (PANEL, PANEL_KC_LARGE_L2),
        _ if cpu::l1d_kib().is_some_and(|kib| kib < SMALL_L1_KIB) => (PANEL, PANEL_KC_SMALL_L1),
        _ => (PANEL, PANEL_KC),
    }
}

/// X row blocks per chunk of the packed-weight loop (288 rows: a product of 256 rows is one
/// chunk; a C chunk of 64 columns is 72 KB).
const CHUNK_BLOCKS: usize = 48;
/// X row blocks per chunk for the AVX2 kernel (144 rows: 288 were slower when k was cut in
/// slices; with whole k, the chunk height matters little).
const CHUNK_BLOCKS_AVX2: usize = 24;

/// A weight matrix `W` (`[n, k]`) packed once for `C += X·Wᵀ`: panels of 64 features for the
/// AVX-512 kernel and 16 for the AVX2 one, `[panel][k][width]`, features past n zero, the first
/// panel on a cache line. The AVX-512 microkernel loads four vectors of W and broadcasts six X
/// values per step (10 loads for 24 FMAs), and stores its 6×64 block straight into C's rows as
/// its `Start` says (added to C, setting C, or from the bias).
/// Costs a copy of W: a caller that reads W from a memory-mapped file can release its pages once
/// W is packed, so that the process holds about one copy.
pub struct PackedWeights {
    n: usize,
    k: usize,
    data: Vec<f32>,
    /// Where the panels start in `data` (on a cache line).
    offset: usize,
    /// Features per panel ([`panel_shape`]).
    width: usize,
    /// k per pass of the kernel over a panel.
    kc: usize,
    /// [`cpu::f32_kernel`] when packed (tests pick each kernel the CPU has).
    kernel: Option<F32Kernel>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights {{ n: {}, k: {} }}", self.n, self.k)
    }
}

impl PackedWeights {
    /// Packs `w`, `[n, k]` row-major.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "sgemm: W is not {n}x{k}");
        Self::pack_view(View::dense(w, n, k), true, 1.0, true)
    }

    /// Packs `scale · W` from a strided view: `transposed` views hold W itself (`[n, k]`, as
    /// weights and attention keys are stored), others hold Wᵀ (`[k, n]`, as attention values
    /// are). `parallel` splits the packing over rayon's pool.
    pub fn pack_view(view: View, transposed: bool, scale: f32, parallel: bool) -> Self {
        Self::pack_for(cpu::f32_kernel(), view, transposed, scale, parallel)
    }

    /// Packs W given row by row where its rows lie ([`StackedRows`]: layers that read one
    /// input, packed as one without being stacked in memory first), over rayon's pool.
    pub fn pack_stacked(w: StackedRows) -> Self {
        Self::pack_source(cpu::f32_kernel(), Source::Rows(w), 1.0, true)
    }

    /// [`pack_view`](Self::pack_view) in `kernel`'s layout.
    fn pack_for(kernel: Option<F32Kernel>, view: View, transposed: bool, scale: f32, parallel: bool) -> Self {
        let parts = [view];
        Self::pack_source(kernel, Source::of(&parts, transposed), scale, parallel)
    }

    /// Packs `scale · W` from `source` in `kernel`'s layout.
    fn pack_source(kernel: Option<F32Kernel>, source: Source, scale: f32, parallel: bool) -> Self {
        let (n, k) = source.dims();
        let (width, kc) = panel_shape(kernel);
        let panels = n.div_ceil(width);
        // Over-allocated by one cache line so that the panels can start on a line boundary: a
        // step of the AVX2 kernel then reads exactly one line of W (and the AVX-512 one four).
        // Zeros: the lanes of the last panel past n stay so.
        let data = vec![0f32; panels * k * width + LINE_FLOATS];
        let offset = data.as_ptr().align_offset(LINE_FLOATS * 4).min(LINE_FLOATS);
        let mut packed = Self {
            n,
            k,
            data,
            offset,
            width,
            kc,
            kernel,
        };
        packed.fill(source, scale, parallel);
        packed
    }

    /// Packs `scale · W` from `view` again, over the values packed before: `view` holds a
    /// matrix of the same shape and orientation as the first time (weights that change between
    /// products, as in training), and no new buffer is made. Panics if the shape differs.
    pub fn repack(&mut self, view: View, transposed: bool, scale: f32, parallel: bool) {
        let parts = [view];
        let source = Source::of(&parts, transposed);
        let (n, k) = source.dims();
        assert!(
            (n, k) == (self.n, self.k),
            "sgemm: repacking a {n}x{k} W over a {}x{}",
            self.n,
            self.k
        );
        self.fill(source, scale, parallel);
    }

    /// Writes `scale · W` into the panels (their lanes past n untouched).
    fn fill(&mut self, source: Source, scale: f32, parallel: bool) {
        let (n, k, width, offset) = (self.n, self.k, self.width, self.offset);
        let panels = n.div_ceil(width);
        let data = &mut self.data;
        let fill = |(p, panel): (usize, &mut [f32])| {
            let features = width.min(n - p * width);
            let first = p * width;
            match source {
                Source::Rows(w) => {
                    // Step by step along k, writing each step's features in order: the panel's
                    // rows of W are read side by side (many misses in flight on an attention
                    // head's keys, a strip of a large matrix), and the writes are sequential.
                    let mut rows: [&[f32]; PANEL] = [&[]; PANEL];
                    for (f, row) in rows.iter_mut().enumerate().take(features) {
                        *row = w.row(first + f);
                    }
                    let rows = &rows[..features];
                    for (i, out) in panel.chunks_exact_mut(width).enumerate() {
                        for (o, row) in out.iter_mut().zip(rows) {
                            *o = row[i] * scale;
                        }
                    }
                }
                Source::Columns(view) => {
                    for (i, out) in panel.chunks_exact_mut(width).enumerate() {
                        let row = &view.data[i * view.stride + first..][..features];
                        for (o, &v) in out.iter_mut().zip(row) {
                            *o = v * scale;
                        }
                    }
                }
            }
        };
        let panels_data = &mut data[offset..offset + panels * k * width];
        if k > 0 {
            if parallel {
                panels_data.par_chunks_mut(k * width).enumerate().for_each(fill);
            } else if let Source::Columns(view) = source {
                // Wᵀ row by row (an attention head's values, read out of the value projection,
                // often from L3): each row's n values are contiguous, so the reads stream, and
                // its panels' slices are written side by side. Panel by panel, each panel read
                // a strided column of lines, one L3 latency after another (several times
                // slower). The parallel pack keeps one task per panel (training's large Wᵀ).
                for i in 0..k {
                    let row = &view.data[i * view.stride..][..n];
                    for (p, features) in row.chunks(width).enumerate() {
                        let out = &mut panels_data[(p * k + i) * width..][..features.len()];
                        for (o, &v) in out.iter_mut().zip(features) {
                            *o = v * scale;
                        }
                    }
                }
            } else {
                panels_data.chunks_mut(k * width).enumerate().for_each(fill);
            }
        }
    }

    /// A linear layer, `act(x[m, k] · Wᵀ + bias)`, into a new `[m, n]` buffer. The microkernels
    /// start C from the bias (`Start::Bias`), and each task applies the activation once its
    /// block is complete, while the block is still in cache: no separate passes over C, which
    /// would read and write all of it again. Call only when [`available`].
    pub fn linear(
        &self,
        x: &[f32],
        m: usize,
        bias: &[f32],
        activation: Option<Activation>,
        threads: usize,
    ) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert!(self.kernel.is_some(), "{NO_KERNEL}");
        assert_eq!(x.len(), m * k, "sgemm: X is not {m}x{k}");
        assert_eq!(
            bias.len(),
            n,
            "sgemm: the bias has {} values, W {n} rows",
            bias.len()
        );
        if m == 0 || n == 0 || k == 0 {
            let mut out = rows::repeat_rows(bias, m);
            if let Some(act) = activation {
                rows::activate(&mut out, act);
            }
            return out;
        }
        let mut out = Vec::with_capacity(m * n);
        let edges = Edges {
            bias: Some(bias),
            activation,
            ..Edges::default()
        };
        // SAFETY: X is m×k dense (asserted); C is `out`'s m·n allocated values at row stride n.
        // From the bias, the first k slice writes each element of its block without reading it,
        // and the tasks' blocks cover C (m, n, k > 0), so all m·n values are initialised when
        // `run` returns.
        unsafe {
            self.run(x.as_ptr(), m, k, 1, out.as_mut_ptr(), n, threads, edges);
            out.set_len(m * n);
        }
        out
    }

    /// `c[m, n] += x[m, k] · Wᵀ + bias`, dense row-major: a layer's output added to its
    /// residual stream, the bias added by the microkernels as they store their sums
    /// (`Start::BiasOntoC`; no pass of its own over C). Call only when [`available`].
    pub fn linear_into(&self, x: &[f32], m: usize, bias: &[f32], c: &mut [f32], threads: usize) {
        let (n, k) = (self.n, self.k);
        assert!(self.kernel.is_some(), "{NO_KERNEL}");
        assert_eq!(x.len(), m * k, "sgemm: X is not {m}x{k}");
        assert_eq!(c.len(), m * n, "sgemm: C is not {m}x{n}");
        assert_eq!(
            bias.len(),
            n,
            "sgemm: the bias has {} values, W {n} rows",
            bias.len()
        );
        if k == 0 {
            rows::add_to_rows(c, bias);
            return;
        }
        let edges = Edges {
            bias: Some(bias),
            bias_onto_c: true,
            ..Edges::default()
        };
        // SAFETY: X is m×k and C m×n, dense (asserted), C borrowed mutably.
        unsafe { self.run(x.as_ptr(), m, k, 1, c.as_mut_ptr(), n, threads, edges) }
    }

    /// `c[m, n] += x[m, k] · Wᵀ`, dense row-major. Call only when [`available`].
    pub fn matmul_accumulate(&self, x: &[f32], m: usize, c: &mut [f32], threads: usize) {
        assert_eq!(x.len(), m * self.k, "sgemm: X is not {m}x{}", self.k);
        self.matmul_view(View::dense(x, m, self.k), c, self.n, threads)
    }

    /// `c += x · Wᵀ`, `x` a strided `[m, k]` view and `c` `[m, n]` with row stride `ldc`.
    /// Call only when [`available`].
    pub fn matmul_view(&self, x: View, c: &mut [f32], ldc: usize, threads: usize) {
        let (n, k, m) = (self.n, self.k, x.rows);
        assert!(self.kernel.is_some(), "{NO_KERNEL}");
        assert_eq!(x.cols, k, "sgemm: X has {} columns, W {k}", x.cols);
        assert!(
            ldc >= n && (m == 0 || c.len() >= (m - 1) * ldc + n),
            "sgemm: C is not {m}x{n}"
        );
        // SAFETY: C's bounds were checked above and `c` is borrowed mutably.
        unsafe { self.matmul_view_raw(x, c.as_mut_ptr(), ldc, threads, false) }
    }

    /// [`matmul_view`](Self::matmul_view) into C at a raw pointer, for callers whose tasks each
    /// write their own block of one shared C. With `overwrite`, C's block is set to `x · Wᵀ`
    /// instead of added to: its contents are never read, so it may be uninitialised (no zeroing
    /// pass before, no loads of C in the microkernel).
    ///
    /// # Safety
    /// `c` must be valid for writes of rows `0..x.rows` × columns `0..n` at row stride `ldc`, and
    /// no one else may access that block during the call; without `overwrite` it must be
    /// initialised.
    pub unsafe fn matmul_view_raw(&self, x: View, c: *mut f32, ldc: usize, threads: usize, overwrite: bool) {
        let (k, m) = (self.k, x.rows);
        assert!(self.kernel.is_some(), "{NO_KERNEL}");
        assert_eq!(x.cols, k, "sgemm: X has {} columns, W {k}", x.cols);
        if m == 0 {
            return;
        }
        if k == 0 {
            if overwrite {
                for r in 0..m {
                    // SAFETY: row r < m of the block, n values, as the caller promises.
                    unsafe { std::ptr::write_bytes(c.add(r * ldc), 0, self.n) };
                }
            }
            return;
        }
        assert!(
            x.data.len() >= (m - 1) * x.stride + k,
            "sgemm: X view out of bounds"
        );
        let edges = Edges {
            overwrite,
            ..Edges::default()
        };
        // SAFETY: X's elements (r, i) lie at r·stride + i inside its slice (asserted); C as the
        // caller promises.
        unsafe { self.run(x.data.as_ptr(), m, x.stride, 1, c, ldc, threads, edges) }
    }

    /// `c += aᵀ · Wᵀ` where `a` holds Xᵀ (`[k, m]`, row stride `a.stride`): the product of a
    /// transposed left operand without a transposed copy (a weight's gradient `Gᵀ·X` in
    /// training). The microkernel's six broadcasts per step then read six neighbours of one row
    /// of `a`. Call only when [`available`].
    pub fn matmul_transposed_x(&self, a: View, c: &mut [f32], ldc: usize, threads: usize) {
        let (n, k, m) = (self.n, self.k, a.cols);
        assert!(self.kernel.is_some(), "{NO_KERNEL}");
        assert_eq!(a.rows, k, "sgemm: Xᵀ has {} rows, W {k} columns", a.rows);
        assert!(
            ldc >= n && (m == 0 || c.len() >= (m - 1) * ldc + n),
            "sgemm: C is not {m}x{n}"
        );
        if m == 0 || k == 0 {
            return;
        }
        assert!(a.fits(a.data.len()), "sgemm: Xᵀ view out of bounds");
        // SAFETY: X's element (r, i) is a's (i, r), at i·stride + r inside a's slice (checked
        // above); C's bounds were checked above and it is borrowed mutably.
        unsafe {
            self.run(
                a.data.as_ptr(),
                m,
                1,
                a.stride,
                c.as_mut_ptr(),
                ldc,
                threads,
                Edges::default(),
            )
        }
    }

    /// The blocked product over X's element (r, i) at `x + r·row_step + i·k_step`, with C's
    /// `edges`.
    ///
    /// # Safety
    /// Those addresses must be readable for r < m, i < k; C as in
    /// [`matmul_view_raw`](Self::matmul_view_raw) (with a bias in place of C's values, or with
    /// `overwrite`, it may be uninitialised; a bias onto C reads it).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        x: *const f32,
        m: usize,
        row_step: usize,
        k_step: usize,
        c: *mut f32,
        ldc: usize,
        threads: usize,
        edges: Edges,
    ) {
        let (n, k) = (self.n, self.k);
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let threads = crate::clamp_threads(threads);
        let kernel = self.kernel.expect(NO_KERNEL);
        let (width, kc_max) = (self.width, self.kc);
        // X is read in place, ROWS rows at a time: the microkernel broadcasts from six row
        // pointers, so no packed copy of X is made (on these shapes the copy costs more than it
        // saves).
        let blocks = m.div_ceil(ROWS);
        let x_ptr = x as usize;
        let panels = n.div_ceil(width);
        // Panels per 64 features: the splits below are reasoned in 64-feature groups.
        let per_64 = PANEL / width;
        // Work is cut into row chunks × groups of panels. Within a task, every panel of the group
        // passes over the row chunk of X (in L2 when its k slice fits: AVX-512's; AVX2's whole-k
        // rows stream from L3 as long runs), and each 6-row block of C stays in cache across the
        // k slices. Chunks are the unit of parallelism when there are enough of them (a batch of
        // texts); otherwise panels are (one text).
        let mut chunks = blocks.div_ceil(match kernel {
            F32Kernel::Avx512 => CHUNK_BLOCKS,
            F32Kernel::Avx2 => CHUNK_BLOCKS_AVX2,
        });
        let groups = if threads <= 1 {
            1
        } else if chunks >= threads || panels < 4 * threads * per_64 {
            // Equal chunks, a multiple of the threads in number, so that no thread idles. Also
            // for one text when there are few panels (N = 256: 4), where groups of one panel
            // would re-read the whole X for each.
            // Each chunk reads all of W, which in a model comes cold: on AVX2 one chunk per
            // thread, on AVX-512 two (each the faster of the two when timed on its CPUs).
            let per_thread = match kernel {
                F32Kernel::Avx512 => 2,
                F32Kernel::Avx2 => 1,
            };
            chunks = chunks
                .max(per_thread * threads)
                .next_multiple_of(threads)
                .min(blocks);
            1
        } else {
            (threads * 2).min(panels.div_ceil(per_64))
        };
        // Each block's call also prefetches its share of the next W slice, which in a model
        // comes cold from L3 or memory (its weights are larger than L2). The kernel spreads its
        // share over its k loop: issued in one burst before the call, the prefetches stalled on
        // full miss buffers.
        // Row ranges of the chunks. One chunk per thread (one text) is split evenly to the row,
        // its last block narrower than six rows: 256 rows on two threads as 21 blocks and one of
        // 2 rows each, not 22 and 21 blocks whose last computes six rows for four.
        let even = chunks <= 2 * threads;
        let chunk_blocks = blocks.div_ceil(chunks);
        let chunk_rows = move |chunk: usize| {
            if even {
                chunk * m / chunks..(chunk + 1) * m / chunks
            } else {
                (chunk * chunk_blocks * ROWS).min(m)..((chunk + 1) * chunk_blocks * ROWS).min(m)
            }
        };
        let per_group = panels.div_ceil(groups);
        let c_ptr = SendPtr(c);
        let packed = &self.data[self.offset..];
        let micros = microkernels(kernel, k_step == 1);
        // The last panel's, when n ends part-way into it.
        let narrow = microkernels_of_width(kernel, k_step == 1, (n % width).div_ceil(16).max(1));
        (0..chunks * groups).into_par_iter().for_each(|task| {
            let (chunk, group) = (task / groups, task % groups);
            // This task's block of C: its chunk's rows × its group's features.
            let block_rows = chunk_rows(chunk);
            let task_blocks = block_rows.len().div_ceil(ROWS);
            let block_cols = (group * per_group * width).min(n)..((group + 1) * per_group * width).min(n);
            for p in group * per_group..((group + 1) * per_group).min(panels) {
                let cols = width.min(n - p * width);
                for k0 in (0..k).step_by(kc_max) {
                    let kc = kc_max.min(k - k0);
                    let w = &packed[(p * k + k0) * width..(p * k + k0 + kc) * width];
                    // The slice after this one in memory is the next one this loop reads (the
                    // next k slice, or the next panel's first; past the group's last panel, a
                    // neighbour's, which costs only the hint): one share of its lines per block.
                    let next = &packed[((p * k + k0 + kc) * width).min(packed.len())..];
                    let next = &next[..next.len().min(kc * width)];
                    for (j, first_row) in block_rows.clone().step_by(ROWS).enumerate() {
                        let ahead = Ahead::share(next, task_blocks, j);
                        let rows = ROWS.min(block_rows.end - first_row);
                        let x_rows: [*const f32; ROWS] = std::array::from_fn(|r| {
                            let row = first_row + r.min(rows - 1);
                            (x_ptr as *const f32).wrapping_add(row * row_step + k0 * k_step)
                        });
                        // SAFETY: the CPU has the kernel's features ([`microkernels`]); it reads
                        // kc·width values of `w` (`ahead`'s lines are only hinted at), kc values
                        // from each of its `rows` row pointers, k_step apart (rows < m, columns
                        // k0..k0+kc < k: readable, as `run` requires), and writes (as `start`
                        // says) rows first_row..+rows, columns p·width..+cols of `c` (inside it;
                        // tasks own disjoint blocks: their row chunk × their group's panels).
                        unsafe {
                            let c = c_ptr.get().add(first_row * ldc + p * width);
                            // The first k slice starts C from the bias (or stores over it); the
                            // others add to it.
                            let start = match k0 {
                                0 => edges.start(p * width),
                                _ => Start::AddToC,
                            };
                            let micro = match cols < width {
                                true => narrow[rows - 1],
                                false => micros[rows - 1],
                            };
                            micro(w.as_ptr(), x_rows, k_step, kc, c, ldc, cols, start, ahead)
                        };
                    }
                }
            }
            // SAFETY: as above; every element of the block is written by now.
            unsafe { edges.end(c_ptr.get(), ldc, block_rows, block_cols) };
        });
    }
}

/// What a product does to C besides adding X·Wᵀ: start each element from the bias of its
/// column instead of C's contents (or add the bias onto them), and apply an activation once the
/// element is complete (for the f32 and the bf16 products alike, each task on its own block of
/// C; the AMX loop takes them too, [`crate::amx::matmul`]).
#[derive(Clone, Copy, Default)]
pub(crate) struct Edges<'a> {
    pub(crate) bias: Option<&'a [f32]>,
    /// The bias is added onto C's values (a residual stream) instead of replacing them.
    pub(crate) bias_onto_c: bool,
    pub(crate) activation: Option<Activation>,
    /// Store the product in C, ignoring its contents (set by the first k slice; not on AMX).
    pub(crate) overwrite: bool,
}

impl<'a> Edges<'a> {
    /// The bias that C starts from in place of its values (which may then be uninitialised).
    pub(crate) fn bias_instead_of_c(&self) -> Option<&'a [f32]> {
        self.bias.filter(|_| !self.bias_onto_c)
    }

    /// The bias that goes onto C's values.
    pub(crate) fn bias_added_to_c(&self) -> Option<&'a [f32]> {
        self.bias.filter(|_| self.bias_onto_c)
    }

    /// How the microkernels' first k slice over the columns from `col` meets C ([`Start`]):
    /// from the bias, the bias onto C, over C, or onto it. The bias is then never a pass of its
    /// own over C.
    pub(crate) fn start(&self, col: usize) -> Start {
        match self.bias {
            Some(bias) if self.bias_onto_c => Start::BiasOntoC(bias[col..].as_ptr()),
            Some(bias) => Start::Bias(bias[col..].as_ptr()),
            None if self.overwrite => Start::Overwrite,
            None => Start::AddToC,
        }
    }

    /// Before a task's products, for the passes whose kernels do not start from the bias
    /// ([`start`](Self::start)): writes the bias into its block of C (rows × columns, row
    /// stride `ldc`), or adds it there with [`bias_onto_c`](Self::bias_onto_c), while the block
    /// comes into cache anyway; with [`overwrite`](Self::overwrite) and no bias, zeros.
    ///
    /// # Safety
    /// The block must lie in C, be valid for writes and belong to the calling task; it may be
    /// uninitialised unless the bias goes onto its values.
    pub(crate) unsafe fn begin(&self, c: *mut f32, ldc: usize, rows: Range<usize>, cols: Range<usize>) {
        let Some(bias) = self.bias else {
            if self.overwrite {
                for r in rows {
                    // SAFETY: row r, columns `cols` of the block, as the caller promises.
                    unsafe { std::ptr::write_bytes(c.wrapping_add(r * ldc + cols.start), 0, cols.len()) };
                }
            }
            return;
        };
        let bias = &bias[cols.clone()];
        for r in rows {
            let row = c.wrapping_add(r * ldc + cols.start);
            if self.bias_onto_c {
                // SAFETY: row r, columns `cols` of the block, initialised, as the caller promises.
                rows::add_rows_chunk(unsafe { std::slice::from_raw_parts_mut(row, cols.len()) }, bias);
            } else {
                // SAFETY: row r, columns `cols` of the block, as the caller promises. A raw copy,
                // since C may be uninitialised until this write.
                unsafe { std::ptr::copy_nonoverlapping(bias.as_ptr(), row, cols.len()) };
            }
        }
    }

    /// After a task's products: applies the activation to its block, still in cache.
    ///
    /// # Safety
    /// As [`begin`](Self::begin), and every element of the block must be initialised.
    pub(crate) unsafe fn end(&self, c: *mut f32, ldc: usize, rows: Range<usize>, cols: Range<usize>) {
        if let Some(act) = self.activation {
            for r in rows {
                // SAFETY: row r, columns `cols` of the block, initialised, as the caller promises.
                let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc + cols.start), cols.len()) };
                rows::activate_chunk(row, act);
            }
        }
    }
}

/// How a microkernel's sums meet C's block: the bias of the block's columns, where there is
/// one, comes in here rather than in a pass of its own over C. The pointers are to the bias of
/// the block's first column (the bias of its `cols` columns is read).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    /// `C += sums`.
    AddToC,
    /// `C = sums`: C is not read (it may be uninitialised).
    Overwrite,
    /// `C = bias + sums`: C is not read (it may be uninitialised).
    Bias(*const f32),
    /// `C = (C + bias) + sums`: a layer's output onto its residual stream (the same sums, in
    /// the same order, as adding the bias to C first).
    BiasOntoC(*const f32),
}

impl Start {
    /// Whether C's contents are read.
    pub(crate) fn reads_c(self) -> bool {
        matches!(self, Self::AddToC | Self::BiasOntoC(_))
    }

    /// Sets the element `j` columns into a row of the block at `row` from its `sum`, as
    /// the vector epilogues do lane by lane (for the columns past a panel's last whole vector).
    ///
    /// # Safety
    /// `row + j` must be valid for writes (and reads where C is read); the bias, where there is
    /// one, valid for reads at `j`.
    #[inline(always)]
    pub(crate) unsafe fn set(self, row: *mut f32, j: usize, sum: f32) {
        // SAFETY: as the caller promises.
        unsafe {
            let c = row.add(j);
            *c = match self {
                Self::AddToC => *c + sum,
                Self::Overwrite => sum,
                Self::Bias(bias) => *bias.add(j) + sum,
                Self::BiasOntoC(bias) => (*c + *bias.add(j)) + sum,
            };
        }
    }
}

/// Asks for the `lines` cache lines from each of `rows` rows of C (`ldc` values apart, from
/// `c`) into L1: a microkernel's block of C, asked for when the kernel starts so that its
/// stores at the end do not wait on misses (C's rows lie a row stride apart, out of the hardware
/// prefetchers' sight). Without it, starting C from the bias in the bf16 kernel was slower than a
/// pass writing the bias first, likely because a block's stores to missing lines filled the store
/// buffer. Hints only: never read, may lie past any buffer.
#[inline(always)]
pub(crate) fn prefetch_c_block(c: *const f32, ldc: usize, rows: usize, lines: usize) {
    for r in 0..rows {
        for l in 0..lines {
            let line = c.wrapping_add(r * ldc + l * LINE_FLOATS);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint on any address (SSE, part of x86-64).
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast())
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = line;
        }
    }
}

/// Cache lines for a microkernel to prefetch while it runs: `lines` of 64 bytes from `start`
/// (hints only: never read, may lie past any buffer). The f32 and bf16 kernels' callers give
/// each block of rows its share of the weights they read next, which come cold from L3 or
/// memory in a model (its weight matrices are larger than L2).
#[derive(Clone, Copy)]
pub(crate) struct Ahead {
    start: *const u8,
    lines: usize,
}

impl Ahead {
    /// Nothing to prefetch.
    pub(crate) const NONE: Self = Self {
        start: std::ptr::null(),
        lines: 0,
    };

    /// Block `block`'s share of `lines` cache lines from `start`, split evenly among `blocks`.
    fn split(start: *const u8, lines: usize, blocks: usize, block: usize) -> Self {
        let share = lines.div_ceil(blocks.max(1));
        let first = (block * share).min(lines);
        Self {
            start: start.wrapping_add(first * LINE_BYTES),
            lines: (lines - first).min(share),
        }
    }

    /// Block `block`'s share of the lines of `next`, split evenly among `blocks`.
    pub(crate) fn share<T>(next: &[T], blocks: usize, block: usize) -> Self {
        let lines = std::mem::size_of_val(next).div_ceil(LINE_BYTES);
        Self::split(next.as_ptr().cast(), lines, blocks, block)
    }

    /// The address of line `l`.
    fn line(self, l: usize) -> *const i8 {
        self.start.wrapping_add(l * LINE_BYTES).cast()
    }

    /// The cache lines still to be asked for.
    pub(crate) fn lines(self) -> usize {
        self.lines
    }

    /// Asks for line `l` (into L2).
    #[inline(always)]
    fn prefetch(self, l: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint on any address (SSE, part of x86-64).
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(self.line(l))
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = l;
    }

    /// Asks for the next `n` of the lines (into L2) and leaves the rest: for loops that spread
    /// their share by hand over steps that are few and long (AMX's).
    #[inline(always)]
    pub(crate) fn prefetch_next(&mut self, n: usize) {
        let n = n.min(self.lines);
        (0..n).for_each(|l| self.prefetch(l));
        self.start = self.start.wrapping_add(n * LINE_BYTES);
        self.lines -= n;
    }

    /// `step(i)` for i < steps, asking for one of the lines (into L2) per step until all are
    /// asked for: the AVX-512 kernels' k loops. (Unrolled in groups with one prefetch each, the
    /// loop's loads were hoisted and its accumulators spilled.)
    #[inline(always)]
    pub(crate) fn spread_into_l2(self, steps: usize, mut step: impl FnMut(usize)) {
        let prefetch = |l: usize| self.prefetch(l);
        let prefetched = self.lines.min(steps);
        for i in 0..prefetched {
            prefetch(i);
            step(i);
        }
        for i in prefetched..steps {
            step(i);
        }
        for l in prefetched..self.lines {
            prefetch(l);
        }
    }
}

/// `c[r·ldc + j] += Σ_{i<kc} x[r][i·k_step] · w[i·width + j]` for r < R (the kernel's block
/// height, 1 to [`ROWS`]; row pointers past R are not read), j < cols, `width` the kernel's
/// panel width, the sums meeting C as `Start` says (the bias, when there is one, of C's `cols`
/// columns); the lines of `Ahead` are prefetched along the way.
type Microkernel =
    unsafe fn(*const f32, [*const f32; ROWS], usize, usize, *mut f32, usize, usize, Start, Ahead);

/// `kernel`'s microkernels for blocks of 1 to [`ROWS`] rows, in that order (`unit_k`: X's k
/// step is 1, the common case, addressed without a multiply). Only for a kernel that
/// [`cpu::f32_kernel`] detected.
fn microkernels(kernel: F32Kernel, unit_k: bool) -> [Microkernel; ROWS] {
    microkernels_of_width(kernel, unit_k, VECTORS)
}

/// Vectors of W in an AVX-512 panel.
const VECTORS: usize = PANEL / 16;

/// [`microkernels`] for a panel of which only `vectors` 16-lane vectors hold columns (1 to
/// [`VECTORS`]; the AVX-512 kernel's last panel when n is not a multiple of 64, such as a 160-wide
/// attention head's 32 values past its two whole panels): they load and multiply only those, not
/// four with the rest masked off at the store. The AVX2 kernel has one width.
fn microkernels_of_width(kernel: F32Kernel, unit_k: bool, vectors: usize) -> [Microkernel; ROWS] {
    macro_rules! rows {
        ($module:ident, $unit:literal $(, $v:literal)?) => {
            [
                $module::packed_kernel::<$unit, 1 $(, $v)?>,
                $module::packed_kernel::<$unit, 2 $(, $v)?>,
                $module::packed_kernel::<$unit, 3 $(, $v)?>,
                $module::packed_kernel::<$unit, 4 $(, $v)?>,
                $module::packed_kernel::<$unit, 5 $(, $v)?>,
                $module::packed_kernel::<$unit, 6 $(, $v)?>,
            ]
        };
    }
    macro_rules! widths {
        ($module:ident, $unit:literal) => {
            match vectors {
                1 => rows!($module, $unit, 1),
                2 => rows!($module, $unit, 2),
                3 => rows!($module, $unit, 3),
                _ => rows!($module, $unit, 4),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    match (kernel, unit_k) {
        (F32Kernel::Avx512, true) if cpu::avx512() => return widths!(avx512, true),
        (F32Kernel::Avx512, false) if cpu::avx512() => return widths!(avx512, false),
        (F32Kernel::Avx2, true) => return rows!(avx2, true),
        (F32Kernel::Avx2, false) => return rows!(avx2, false),
        (F32Kernel::Avx512, _) => {}
    }
    match (kernel, unit_k) {
        (F32Kernel::Avx512, true) => widths!(avx512_emulated, true),
        (F32Kernel::Avx512, false) => widths!(avx512_emulated, false),
        (F32Kernel::Avx2, _) => unreachable!("no AVX2 kernel off x86-64"),
    }
}

/// The AVX-512 microkernel, written once over the names of `std::arch`'s intrinsics and
/// expanded twice: on the real ones (with `$feature` enabling AVX-512) and on
/// [`emulated512`](crate::emulated512)'s, which run the same source on any CPU for the tests.
macro_rules! avx512_packed_kernel {
    ($(#[$feature:meta])*) => {
        /// [`Microkernel`](super::Microkernel) on 512-bit registers: a 6×64 block of C in 24
        /// (`V` = 4 vectors of W a step; a narrower last panel's block in 6·V).
        $(#[$feature])*
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn packed_kernel<const UNIT_K: bool, const R: usize, const V: usize>(
            w: *const f32,
            x: [*const f32; ROWS],
            k_step: usize,
            kc: usize,
            c: *mut f32,
            ldc: usize,
            cols: usize,
            start: super::Start,
            ahead: super::Ahead,
        ) {
            super::prefetch_c_block(c, ldc, R, V);
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let step = |i: usize, acc: &mut [[__m512; V]; R]| {
                let mut wv = [_mm512_setzero_ps(); V];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(w.add(i * PANEL + 16 * j));
                }
                for r in 0..R {
                    let xv = _mm512_set1_ps(*x[r].add(if UNIT_K { i } else { i * k_step }));
                    for j in 0..V {
                        acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
                    }
                }
            };
            // Into L2: the slice in use fills most of L1.
            ahead.spread_into_l2(kc, |i| step(i, &mut acc));
            for (r, acc_row) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                for (j, &v) in acc_row.iter().enumerate() {
                    let first = 16 * j;
                    if first >= cols {
                        break;
                    }
                    // Lanes past `cols` are masked off: they belong to the next panel or lie past C.
                    let mask: __mmask16 = if cols - first >= 16 {
                        0xFFFF
                    } else {
                        (1u16 << (cols - first)) - 1
                    };
                    let c_then = |to: __m512| _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row.add(first)), to);
                    let sum = match start {
                        super::Start::AddToC => c_then(v),
                        super::Start::Overwrite => v,
                        super::Start::Bias(bias) => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, bias.add(first)), v),
                        super::Start::BiasOntoC(bias) => {
                            _mm512_add_ps(c_then(_mm512_maskz_loadu_ps(mask, bias.add(first))), v)
                        }
                    };
                    _mm512_mask_storeu_ps(row.add(first), mask, sum);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PANEL, ROWS};
    use std::arch::x86_64::*;

    avx512_packed_kernel!(#[target_feature(enable = "avx512f")]);
}

/// The AVX-512 microkernel on emulated registers (tests, or `PERCEIVER_EMULATE_AVX512`).
mod avx512_emulated {
    use super::{PANEL, ROWS};
    use crate::emulated512::*;

    avx512_packed_kernel!();
}

/// `C[r, j] += Σ_{i<kc} X[r, i] · w[i·width + j]` for r < rows, j < cols: one panel in
/// `kernel`'s layout (`[kc][width]`, made by the caller; width 16 for AVX2, 64 for AVX-512,
/// `cols` at most that) over X's rows, `ldx` apart, six rows per microkernel call, C's rows
/// `ldc` apart. The `ahead_lines` cache lines from `ahead` (the caller's next panel) are
/// prefetched along the way, a share per call. This is the [`bf16`](crate::bf16) products'
/// widened path, on panels widened from bf16.
///
/// # Safety
/// The CPU must have what `kernel` runs on (AVX-512 runs emulated where it is missing); `w`
/// readable, and initialised, for kc rows of `width` values, of which the microkernel reads the
/// first 16·⌈cols/16⌉ (AVX-512) or all 16 (AVX2); each X row readable for kc values; and C's
/// rows × `cols` columns readable and writable by this caller alone.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn panel_pass(
    kernel: F32Kernel,
    w: *const f32,
    kc: usize,
    x: *const f32,
    ldx: usize,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    ahead: *const u8,
    ahead_lines: usize,
) {
    let micros = match kernel {
        F32Kernel::Avx512 => {
            assert!(cols <= PANEL, "sgemm: a panel pass of {cols} columns");
            microkernels_of_width(kernel, true, cols.div_ceil(16).max(1))
        }
        F32Kernel::Avx2 => {
            assert!(cols <= PANEL_AVX2, "sgemm: a panel pass of {cols} columns");
            microkernels(kernel, true)
        }
    };
    for (j, first) in (0..rows).step_by(ROWS).enumerate() {
        let block = ROWS.min(rows - first);
        let x_rows: [*const f32; ROWS] =
            std::array::from_fn(|r| x.wrapping_add((first + r.min(block - 1)) * ldx));
        let ahead = Ahead::split(ahead, ahead_lines, rows.div_ceil(ROWS), j);
        // SAFETY: the CPU runs `kernel`; the microkernel reads kc rows of `w`'s first `cols`
        // values and kc from each of its `block` rows of X, and adds to rows first..first +
        // block < rows, columns < cols of C, as the caller promises (`ahead`'s lines are only
        // hinted at).
        unsafe {
            micros[block - 1](
                w,
                x_rows,
                1,
                kc,
                c.add(first * ldc),
                ldc,
                cols,
                Start::AddToC,
                ahead,
            )
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Start, PANEL_AVX2, ROWS};
    use std::arch::x86_64::*;

    /// [`Microkernel`](super::Microkernel) on 256-bit registers: a 6×16 block of C in 12
    /// accumulators (of 16 registers: two more hold W, one the broadcast). A step reads one
    /// 64-byte line of W.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn packed_kernel<const UNIT_K: bool, const R: usize>(
        w: *const f32,
        x: [*const f32; ROWS],
        k_step: usize,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        start: super::Start,
        ahead: super::Ahead,
    ) {
        // C's rows lie a row stride apart, out of the prefetchers' sight: ask for them now, to
        // arrive while the k loop runs.
        if start.reads_c() {
            for r in 0..R {
                // Hints only: the block's last row may end before a whole panel's width.
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * ldc + PANEL_AVX2 - 1) as *const i8);
            }
        }
        // Every row sums its products in k order, whatever its block's height, so that a row's
        // result does not depend on the rows beside it (a text's on its batch, or the thread
        // count). Blocks of up to three rows then wait on the FMA latency; two sets of
        // accumulators for even and odd steps would gain little, as most blocks have six rows.
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let step = |i: usize, acc: &mut [[__m256; 2]; R]| {
            let w0 = _mm256_loadu_ps(w.add(i * PANEL_AVX2));
            let w1 = _mm256_loadu_ps(w.add(i * PANEL_AVX2 + 8));
            for r in 0..R {
                let xv = _mm256_broadcast_ss(&*x[r].add(if UNIT_K { i } else { i * k_step }));
                acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            }
        };
        // Lines of `ahead` issued inside the k loop.
        let issued = if UNIT_K {
            // One line of `ahead` per 8 steps, the 8 steps unrolled with no test between them.
            // (Tested at every step, the prefetch's bookkeeping slowed the loop: its integer work
            // competed with the loads and FMAs for dispatch.)
            let groups = kc / 8;
            for g in 0..groups {
                if g < ahead.lines {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.line(g));
                }
                for s in 0..8 {
                    step(g * 8 + s, &mut acc);
                }
            }
            for i in groups * 8..kc {
                step(i, &mut acc);
            }
            groups.min(ahead.lines)
        } else {
            // With a k step (training's transposed X), the unrolled steps spilled accumulators.
            let mut line = 0;
            for i in 0..kc {
                if i % 8 == 0 && line < ahead.lines {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.line(line));
                    line += 1;
                }
                step(i, &mut acc);
            }
            line
        };
        // A short k slice leaves lines over.
        for line in issued..ahead.lines {
            _mm_prefetch::<_MM_HINT_T0>(ahead.line(line));
        }
        for (r, acc_row) in acc.iter().enumerate() {
            let row = c.add(r * ldc);
            if cols == PANEL_AVX2 {
                for (half, &sums) in acc_row.iter().enumerate() {
                    let at = row.add(8 * half);
                    let c = || _mm256_loadu_ps(at);
                    let sum = match start {
                        Start::AddToC => _mm256_add_ps(c(), sums),
                        Start::Overwrite => sums,
                        Start::Bias(bias) => _mm256_add_ps(_mm256_loadu_ps(bias.add(8 * half)), sums),
                        Start::BiasOntoC(bias) => {
                            _mm256_add_ps(_mm256_add_ps(c(), _mm256_loadu_ps(bias.add(8 * half))), sums)
                        }
                    };
                    _mm256_storeu_ps(at, sum);
                }
            } else {
                // The last panel's columns: lanes past `cols` lie past C (or in its padding).
                let mut sums = [0f32; PANEL_AVX2];
                _mm256_storeu_ps(sums.as_mut_ptr(), acc_row[0]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc_row[1]);
                for (j, &sum) in sums.iter().enumerate().take(cols) {
                    start.set(row, j, sum);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::SimdLevel;
    use crate::matmul::tests::{for_each_stack, random};

    /// The kernels this CPU has, whatever the environment asks, and the AVX-512 one emulated
    /// where the CPU lacks it: each is tested.
    fn kernels_here() -> Vec<F32Kernel> {
        let mut kernels = vec![F32Kernel::Avx512];
        #[cfg(target_arch = "x86_64")]
        if cpu::simd_level() >= SimdLevel::Avx2 {
            kernels.push(F32Kernel::Avx2);
        }
        kernels
    }

    #[test]
    fn products_match_the_triple_loop() {
        let kernels = kernels_here();
        println!("kernels {kernels:?}; AVX-512 native: {}", cpu::avx512());
        for kernel in kernels {
            products_match_the_triple_loop_on(kernel);
        }
    }

    /// A row's sums do not depend on the block of rows it falls in, nor on the thread count:
    /// each row of a product computed alone equals the same row in a larger product, bit for bit.
    #[test]
    fn a_rows_sums_do_not_depend_on_its_block() {
        for kernel in kernels_here() {
            let (n, k) = (37, 300);
            let w = random(n * k, 31);
            let packed = PackedWeights::pack_for(Some(kernel), View::dense(&w, n, k), true, 1.0, false);
            for (m, threads) in [(256, 2), (131, 2), (131, 3), (20, 1)] {
                let x = random(m * k, 32);
                let mut all = vec![0f32; m * n];
                packed.matmul_accumulate(&x, m, &mut all, threads);
                for r in 0..m {
                    let mut alone = vec![0f32; n];
                    packed.matmul_accumulate(&x[r * k..(r + 1) * k], 1, &mut alone, 1);
                    let row = &all[r * n..(r + 1) * n];
                    assert!(
                        row.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernel:?}: row {r} of {m} on {threads} threads differs from the row alone"
                    );
                }
            }
        }
    }

    /// A repacked W gives the products of W packed afresh, bit for bit, in both orientations
    /// and on every kernel, with n not a multiple of the panel width (the last panel's lanes
    /// past n stay zero).
    #[test]
    fn repacking_equals_packing_afresh() {
        for kernel in kernels_here() {
            let (n, k, m) = (70, 45, 13);
            let (old, new) = (random(n * k, 41), random(n * k, 42));
            // Transposed, the buffers hold W ([n, k]); otherwise Wᵀ, so X has n columns and C k.
            for (transposed, x_cols, c_cols) in [(true, k, n), (false, n, k)] {
                let x = random(m * x_cols, 43);
                let mut packed =
                    PackedWeights::pack_for(Some(kernel), View::dense(&old, n, k), transposed, 1.0, true);
                packed.repack(View::dense(&new, n, k), transposed, 1.0, true);
                let fresh =
                    PackedWeights::pack_for(Some(kernel), View::dense(&new, n, k), transposed, 1.0, true);
                let (mut got, mut want) = (vec![0f32; m * c_cols], vec![0f32; m * c_cols]);
                packed.matmul_accumulate(&x, m, &mut got, 2);
                fresh.matmul_accumulate(&x, m, &mut want, 2);
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel:?}, transposed {transposed}: repacked W differs from W packed afresh"
                );
                let mut stale = vec![0f32; m * c_cols];
                PackedWeights::pack_for(Some(kernel), View::dense(&old, n, k), transposed, 1.0, true)
                    .matmul_accumulate(&x, m, &mut stale, 2);
                assert_ne!(stale, want, "the two weights give different products");
            }
        }
    }

    /// Rows stacked from strided parts of different heights pack as a dense copy of the stack,
    /// on every kernel, panels straddling the parts included.
    #[test]
    fn stacked_rows_pack_as_their_dense_copy() {
        for_each_stack(|parts, dense, n, k| {
            for kernel in kernels_here() {
                let stacked = Source::Rows(StackedRows::new(parts));
                let packed = PackedWeights::pack_source(Some(kernel), stacked, 1.0, true);
                let reference =
                    PackedWeights::pack_for(Some(kernel), View::dense(dense, n, k), true, 1.0, true);
                let panels =
                    |w: &PackedWeights| w.data[w.offset..][..n.div_ceil(w.width) * k * w.width].to_vec();
                assert_eq!((packed.n, packed.k), (n, k));
                assert!(
                    panels(&packed) == panels(&reference),
                    "{kernel:?}, {n} × {k}: the panels differ"
                );
            }
        });
    }

    #[test]
    #[should_panic(expected = "repacking")]
    fn repacking_another_shape_panics() {
        let w = random(6 * 4, 45);
        let mut packed = PackedWeights::pack(&w, 6, 4);
        packed.repack(View::dense(&w, 4, 6), true, 1.0, false);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Random shapes, odd sizes included, on every kernel (AVX-512 emulated where the CPU
        /// lacks it).
        #[test]
        fn random_shapes_match_the_triple_loop(
            m in 1usize..90,
            n in 1usize..150,
            k in 1usize..300,
            threads in 1usize..4,
            pick in 0usize..2,
        ) {
            let kernels = kernels_here();
            product_matches_the_triple_loop(kernels[pick % kernels.len()], m, n, k, threads);
        }
    }

    fn products_match_the_triple_loop_on(kernel: F32Kernel) {
        for (m, n, k, threads) in [
            (1, 1, 1, 1),
            (5, 13, 3, 2),
            (33, 12, 257, 2),
            (256, 48, 31, 1),
            // One chunk per thread, split evenly to the row: blocks of 6 and one of 5 rows.
            (70, 25, 600, 2),
            // Several row chunks, split over threads (one panel group), and over chunk × group.
            (1000, 130, 70, 2),
            (600, 200, 40, 4),
            // A panel that ends on a whole 16-column slice.
            (9, 80, 17, 2),
            // Several k slices for both kernels (AVX-512: 128, 256 or 1280; AVX2: 2048).
            (13, 20, 2100, 2),
            // Any thread count: past MAX_THREADS it is MAX_THREADS (the splits overflowed).
            (600, 200, 40, usize::MAX),
            (9, 80, 17, usize::MAX),
        ] {
            product_matches_the_triple_loop(kernel, m, n, k, threads);
        }
    }

    /// `a` (`[rows, cols]`, dense) copied with a row stride of `stride`, transposed (`[cols,
    /// rows]`) or not, the padding past each row filled with `fill`.
    fn laid_out(a: &[f32], rows: usize, cols: usize, transposed: bool, stride: usize, fill: f32) -> Vec<f32> {
        let (out_rows, width) = if transposed { (cols, rows) } else { (rows, cols) };
        (0..out_rows * stride)
            .map(|j| {
                let (row, col) = (j / stride, j % stride);
                match (col < width, transposed) {
                    (false, _) => fill,
                    (true, true) => a[col * cols + row],
                    (true, false) => a[row * cols + col],
                }
            })
            .collect()
    }

    /// `kernel`'s products of one shape against an f64 triple loop: accumulated into C, from a
    /// strided Wᵀ scaled while packed into a wider C (added, and set), with X transposed, and as
    /// a linear layer with bias and GELU (and with a bias onto C, against the bias added first).
    fn product_matches_the_triple_loop(kernel: F32Kernel, m: usize, n: usize, k: usize, threads: usize) {
        // Packed over the pool (weights at load) or on the calling thread (attention's keys and
        // values): W on the pool and on the calling thread, Wᵀ on the calling thread.
        let pack = |view: View, transposed: bool, scale: f32, parallel: bool| {
            PackedWeights::pack_for(Some(kernel), view, transposed, scale, parallel)
        };
        let x = random(m * k, 21);
        let w = random(n * k, 22);
        let start = random(m * n, 23);
        let mut c = start.clone();
        pack(View::dense(&w, n, k), true, 1.0, true).matmul_accumulate(&x, m, &mut c, threads);
        // The attention path: W given transposed (`[k, n]`, strided) and scaled while packed,
        // X strided; into a C with a wider row stride.
        let wt = laid_out(&w, n, k, true, n + 3, 9.0);
        let from_wt = pack(View::strided(&wt, k, n, n + 3), false, 0.5, false);
        let x_wide = laid_out(&x, m, k, false, k + 2, 7.0);
        let mut c_half = vec![0f32; m * (n + 1)];
        from_wt.matmul_view(View::strided(&x_wide, m, k, k + 2), &mut c_half, n + 1, threads);
        // The same product set rather than added: C's old contents (NaN) never read, the
        // column past n never written.
        let mut c_set = vec![f32::NAN; m * (n + 1)];
        // SAFETY: c_set holds m rows of n + 1 ≥ n columns.
        unsafe {
            from_wt.matmul_view_raw(
                View::strided(&x_wide, m, k, k + 2),
                c_set.as_mut_ptr(),
                n + 1,
                threads,
                true,
            )
        };
        // X given transposed (`[k, m]`, strided), as a weight's gradient Gᵀ·X reads G.
        let xt = laid_out(&x, m, k, true, m + 1, 5.0);
        // A linear layer: bias and GELU applied by the tasks on their blocks.
        let bias = random(n, 24);
        let layer = pack(View::dense(&w, n, k), true, 1.0, false).linear(
            &x,
            m,
            &bias,
            Some(Activation::GeluErf),
            threads,
        );
        // Onto a residual: the bias added by the tasks equals it added first, bit for bit.
        let packed = pack(View::dense(&w, n, k), true, 1.0, true);
        let mut onto = start.clone();
        packed.linear_into(&x, m, &bias, &mut onto, threads);
        let mut bias_first = start.clone();
        rows::add_to_rows(&mut bias_first, &bias);
        packed.matmul_accumulate(&x, m, &mut bias_first, threads);
        assert!(
            onto.iter()
                .zip(&bias_first)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{kernel:?} {m}x{n}x{k} linear_into"
        );
        // From the bias: the same bits as C set to the bias first.
        let from_bias = packed.linear(&x, m, &bias, None, threads);
        let mut bias_rows = rows::repeat_rows(&bias, m);
        packed.matmul_accumulate(&x, m, &mut bias_rows, threads);
        assert!(
            from_bias
                .iter()
                .zip(&bias_rows)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{kernel:?} {m}x{n}x{k} linear from the bias"
        );
        let mut c_xt = vec![0f32; m * n];
        pack(View::dense(&w, n, k), true, 1.0, true).matmul_transposed_x(
            View::strided(&xt, k, m, m + 1),
            &mut c_xt,
            n,
            threads,
        );
        for r in 0..m {
            for f in 0..n {
                let want = start[r * n + f] as f64
                    + (0..k)
                        .map(|i| x[r * k + i] as f64 * w[f * k + i] as f64)
                        .sum::<f64>();
                assert!(
                    (c[r * n + f] as f64 - want).abs() < 1e-4,
                    "{kernel:?} {m}x{n}x{k} at {r},{f}"
                );
                let half = 0.5 * (want - start[r * n + f] as f64);
                assert!(
                    (c_half[r * (n + 1) + f] as f64 - half).abs() < 1e-4,
                    "{kernel:?} {m}x{n}x{k} transposed view at {r},{f}"
                );
                assert_eq!(
                    c_set[r * (n + 1) + f].to_bits(),
                    c_half[r * (n + 1) + f].to_bits(),
                    "{kernel:?} {m}x{n}x{k} set at {r},{f}"
                );
                if f == 0 {
                    assert!(c_set[r * (n + 1) + n].is_nan(), "{kernel:?} wrote past n");
                }
                assert!(
                    (c_xt[r * n + f] as f64 - 2.0 * half).abs() < 1e-4,
                    "{kernel:?} {m}x{n}x{k} transposed X at {r},{f}"
                );
                let pre = bias[f] as f64 + 2.0 * half;
                let gelu = 0.5 * pre * (1.0 + libm::erf(pre / std::f64::consts::SQRT_2));
                assert!(
                    (layer[r * n + f] as f64 - gelu).abs() < 1e-4,
                    "{kernel:?} {m}x{n}x{k} linear layer at {r},{f}"
                );
            }
        }
    }
}
