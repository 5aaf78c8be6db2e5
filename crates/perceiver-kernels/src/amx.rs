//! bf16 products on Intel AMX tiles (`tdpbf16ps`), for CPUs that have them (Sapphire Rapids and
//! later): one instruction multiplies a 16×32 bf16 tile by a 32×16 one into 16×16 f32 sums.
//!
//! Rust has no stable AMX intrinsics, so the few instructions are inline assembly. The weights
//! use [`crate::bf16::PackedMatrix`]'s layout as they are: a panel's rows of 32 input pairs are
//! 128 bytes, and 16 consecutive pair rows of 16 columns form one B tile (row stride 128). X
//! comes in bf16 from the caller ([`crate::bf16`]: converted per call, or left in tiles by the
//! product before), in the order the tiles read it (a 32-row block at a time, one step's two A
//! tiles side by side). Each microkernel step keeps a 32×32 block of C in four tiles; a panel's
//! k slices are taken in turn by a group
//! of row blocks, so that the slice of W is read from L1 (see `run`). Linux must grant the
//! process the AMX register state first (`arch_prctl`); [`crate::cpu::amx`] asks once and says
//! no when it is refused.
//!
//! The loops are written once over a small set of tile operations (`Tiles`): the instructions
//! themselves, and their emulation in plain Rust (in the tests, and wherever
//! [`crate::cpu::emulate_amx`] asks for it on a CPU without AMX), so that the blocking,
//! addresses and strides are checked on every CPU, not only where there is AMX.
//!
//! This module only runs the tiles: [`crate::bf16::PackedMatrix`]'s products choose it (see
//! [`crate::cpu::bf16_kernel`]), as does [`crate::bf16::attention_head`] for one attention head
//! whose scores, softmax and weighted sum run as one loop here.

use std::ops::Range;

use rayon::prelude::*;

use crate::aligned::Lines;
use crate::rows;
use crate::send_ptr::SendPtr;
use crate::sgemm::{Ahead, Edges};

/// Rows of C per microkernel step (two 16-row A tiles); X comes padded to whole blocks of them.
pub(crate) const ROWS: usize = 32;
/// Columns of C per panel of W (two 16-column B tiles).
pub(crate) const PANEL_COLS: usize = 32;
/// Input pairs per B tile: the packed pairs come in whole multiples of it.
pub(crate) const TILE_PAIRS: usize = 16;
/// Bytes of X's bf16 rows that one pass over the task's panels works on (see `block_rows`):
/// 256 rows of the language model's 1280-wide latents, one text's whole X in one block.
const X_BLOCK_BYTES: usize = 640 * 1024;
/// Steps (of [`TILE_PAIRS`] input pairs) in a k slice of a product on one thread: a panel's
/// slice of W is 16 KB, which stays in L1 while the row blocks of a group pass over it.
const SLICE_STEPS: usize = 8;
/// Row blocks that pass over a k slice of W in turn. Between slices their C (4 KB a block)
/// waits in a scratch that stays in L1 next to the slice.
const GROUP_BLOCKS: usize = 8;

/// Where lane `step · TILE_PAIRS + j` of row `r` of a block of [`ROWS`] rows lies in [`Operands`]'
/// X, from the block's start: the 16-pair slices of the block's 32 rows for one step side by
/// side (its two A tiles, 1 KB each), one step after another.
pub(crate) fn x_lane(r: usize, step: usize) -> usize {
    (step * ROWS + r) * TILE_PAIRS
}

/// Whether the bf16 products may run on AMX tiles: [`crate::cpu::amx`], or with the tile
/// instructions emulated where [`crate::cpu::emulate_amx`] asks for it.
pub fn available() -> bool {
    crate::cpu::amx() || crate::cpu::emulate_amx()
}

/// The tile configuration: tmm0–3 C (16 rows × 64 bytes), tmm4–5 A, tmm6–7 B.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1; // palette 1
        for tile in 0..8 {
            bytes[16 + 2 * tile] = 64; // bytes per row (u16, little-endian)
            bytes[48 + tile] = 16; // rows
        }
        Self(bytes)
    }
}

/// A product's operands for [`matmul`]: C is `[m, n]`.
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    /// W in [`PackedMatrix`](crate::bf16::PackedMatrix)'s layout, `[panels][pairs][32]` lanes,
    /// each lane a pair of bf16 values (the even input in the low half), from a cache line.
    pub(crate) w: &'a [u32],
    /// Columns of C (rows of W).
    pub(crate) n: usize,
    /// Input pairs of a row, a multiple of [`TILE_PAIRS`].
    pub(crate) pairs: usize,
    /// X as bf16 read as pairs, from a cache line, in tile order: `[m / ROWS rounded up]`
    /// blocks of `ROWS · pairs` lanes, each laid out by [`x_lane`]; zero past its m rows and k
    /// columns.
    pub(crate) x: &'a [u32],
    /// Rows of X and C.
    pub(crate) m: usize,
}

/// Where [`matmul`] puts C.
#[derive(Clone, Copy)]
pub(crate) enum Out {
    /// f32 rows, `[m, n]`.
    Rows(*mut f32),
    /// bf16 in tile order, as the X of a product with C's `n / 2` input pairs ([`Operands`]'
    /// `x`): `[m / ROWS rounded up]` blocks of `ROWS · n / 2` lanes, rows past m zero. C's
    /// columns are whole panels, its tiles start from the bias, and each block is rounded
    /// once finished and activated: the next product's input without its f32 rows ever being
    /// stored, read back and converted.
    Tiles(*mut u32),
}

// SAFETY: the tasks of `run` write disjoint blocks of C through it, while its owner waits.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `C += X · Wᵀ` on AMX tiles, C at `out`, with C's `edges` as the f32 and bf16 block kernels
/// take them: C's tiles start from its values, from them plus the bias, or from the bias alone
/// (`out` is then only written), and the activation is applied to each block of C once it is
/// finished.
///
/// # Safety
/// `out` must be valid for writes of m·n values ([`Out::Rows`]) or of the next product's X
/// ([`Out::Tiles`]: `ROWS · n / 2` lanes a started block of ROWS rows), initialised unless C
/// starts from the bias alone ([`Edges::bias_instead_of_c`]), and no one else may access them
/// during the call. Call only when [`available`].
pub(crate) unsafe fn matmul(operands: Operands, out: Out, edges: Edges, threads: usize) {
    assert!(available(), "AMX is not available");
    // SAFETY: the caller's promises; the native tiles only where the CPU has them.
    unsafe {
        match crate::cpu::amx() {
            true => run::<Native>(operands, out, edges, threads),
            false => run::<Emulated>(operands, out, edges, threads),
        }
    }
}

/// `rounds` rounds of four independent `tdpbf16ps` on register tiles (C in tmm0–3 from A in
/// tmm4–5 and B in tmm6–7, loaded once from random bf16 values: the unit is slower on such data
/// than on zeros, which would flatter it). The loop of [`crate::peak::amx_peak_gflops`].
///
/// # Safety
/// The CPU must have AMX, granted to the process ([`crate::cpu::amx`]; not its emulation).
pub(crate) unsafe fn peak_rounds(rounds: usize) {
    let mut state = 0x2545_f491_u32;
    let values: Vec<u16> = (0..4 * 512)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // A sign, an exponent near 1.0 and a random mantissa.
            (0x3f00 | (state & 0x807f)) as u16
        })
        .collect();
    let tiles = values.as_ptr().cast::<u8>();
    // SAFETY: AMX is available (the caller's promise); the four tiles lie in `values`.
    unsafe {
        let native = Native::begin();
        std::arch::asm!(
            "tileloadd tmm4, [{t} + {s}*1]",
            "tileloadd tmm5, [{t1} + {s}*1]",
            "tileloadd tmm6, [{t2} + {s}*1]",
            "tileloadd tmm7, [{t3} + {s}*1]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            t = in(reg) tiles, t1 = in(reg) tiles.add(1024), t2 = in(reg) tiles.add(2048),
            t3 = in(reg) tiles.add(3072), s = in(reg) 64usize,
            options(nostack, readonly),
        );
        for _ in 0..rounds {
            std::arch::asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
        }
        native.end();
    }
}

/// [`matmul`] with the tile instructions emulated in plain Rust ([`Emulated`]):
/// the same blocking, addresses and strides on any CPU, so that the tests check the AMX path
/// where there is no AMX.
#[cfg(test)]
pub(crate) fn matmul_emulated(operands: Operands, out: &mut [f32], edges: Edges, threads: usize) {
    let (m, n) = (operands.m, operands.n);
    assert_eq!(out.len(), m * n, "amx: C is not {m}x{n}");
    // SAFETY: `out` is C, borrowed mutably.
    unsafe { run::<Emulated>(operands, Out::Rows(out.as_mut_ptr()), edges, threads) };
}

/// [`matmul`] into the next product's X ([`Out::Tiles`]) with the tile instructions emulated.
#[cfg(test)]
pub(crate) fn matmul_emulated_to_tiles(operands: Operands, out: &mut [u32], edges: Edges, threads: usize) {
    let lanes = operands.m.div_ceil(ROWS) * ROWS * operands.n / 2;
    assert_eq!(out.len(), lanes, "amx: the next X is not {lanes} lanes");
    // SAFETY: `out` is the next X, borrowed mutably.
    unsafe { run::<Emulated>(operands, Out::Tiles(out.as_mut_ptr()), edges, threads) };
}

/// The loop of [`matmul`] over the tile operations `T`.
///
/// # Safety
/// As [`matmul`]'s, and `T` must run on this CPU.
unsafe fn run<T: Tiles>(operands: Operands, out: Out, edges: Edges, threads: usize) {
    let threads = crate::clamp_threads(threads);
    let Operands { w, n, pairs, x, m } = operands;
    assert_eq!(pairs % TILE_PAIRS, 0, "amx: pairs are padded to whole tiles");
    let (k_pad, m_pad, panels) = (2 * pairs, m.div_ceil(ROWS) * ROWS, n.div_ceil(PANEL_COLS));
    assert_eq!(x.len(), m_pad * pairs, "amx: X is not {m_pad}x{k_pad}");
    assert!(
        w.len() >= panels * pairs * PANEL_COLS,
        "amx: W has fewer than {n} columns"
    );
    assert!(!edges.overwrite, "amx: the tiles start from C or the bias");
    if let Some(bias) = edges.bias {
        assert_eq!(bias.len(), n, "amx: the bias is not {n} values");
    }
    let (activation, bias_instead_of_c) = (edges.activation, edges.bias_instead_of_c());
    let (c_rows, to_tiles) = match out {
        Out::Rows(c) => (c, false),
        Out::Tiles(_) => {
            assert_eq!(n % PANEL_COLS, 0, "amx: C to tiles is whole panels");
            assert!(
                bias_instead_of_c.is_some(),
                "amx: C to tiles starts from the bias"
            );
            (std::ptr::null_mut(), true)
        }
    };
    if m == 0 || n == 0 {
        return;
    }
    // A block of X's rows (bf16, 2 bytes a value) of 640 KiB: it stays in L2 (2 MB a core on
    // Sapphire Rapids) next to the panel of W being read.
    let block_rows = ((X_BLOCK_BYTES / (2 * k_pad)) / ROWS).max(1) * ROWS;
    let steps = pairs / TILE_PAIRS;
    let share = Share::choose(m, panels, block_rows, threads);
    // k slices pay when a task runs all the panels over its rows; a product whose panels are
    // shared out ran faster with all of k at once (timed both ways on a Xeon, cbea03f).
    let slice_steps = if share.panel_tasks == 1 {
        SLICE_STEPS
    } else {
        steps.max(1)
    };
    let out_ptr = SendPtr(c_rows);
    // Where row `r` (of a block starting at row `r0`) of panel `p` of C goes in the next X, in
    // halves: the panel's 32 columns are one step of that X's 16 pairs.
    let tiles_at = move |r0: usize, r: usize, p: usize| match out {
        Out::Tiles(x) => x.cast::<u16>().wrapping_add(2 * (r0 * n / 2 + x_lane(r, p))),
        Out::Rows(_) => unreachable!("C goes to rows"),
    };
    (0..share.tasks()).into_par_iter().for_each(|t| {
        // SAFETY: `T` runs on this CPU (the caller's promise).
        let mut tiles = unsafe { T::begin() };
        // C's blocks of a group wait between k slices in `kept`, as does a block that reaches
        // past `out` (its last rows or columns): the thread's own, made once (zeroing 32 KB for
        // every task cost as much as a few tile steps). What lies outside a block's rows and
        // columns is computed on and never copied out.
        // SAFETY: every tile operation below reads and writes inside `x`, the packed weights,
        // the bias or the thread's scratch (their sizes asserted above) or C's m·n values (the
        // caller's promise), each task its own panels' columns; C is read only when it
        // accumulates.
        KEPT.with_borrow_mut(|kept| unsafe {
            // The finished blocks of C that still need their activation (or, to tiles, their
            // rounding into the next X): their rows (where they start, their width, and where
            // their bf16 goes) are finished a few per step of the next blocks, so that the
            // vector units work while the tiles multiply.
            let mut unactivated: Vec<(*mut f32, usize, Option<*mut u16>)> = Vec::with_capacity(ROWS);
            // On this thread: the task holds its thread's `kept` blocks, and a row is short.
            let activate = |(row, cols, to): (*mut f32, usize, Option<*mut u16>)| {
                let row = std::slice::from_raw_parts_mut(row, cols);
                if let Some(act) = activation {
                    rows::activate_chunk(row, act);
                }
                if let Some(to) = to {
                    let halves = std::slice::from_raw_parts_mut(to.cast(), PANEL_COLS);
                    crate::bf16::convert_slices(row, halves, PANEL_COLS, PANEL_COLS);
                }
            };
            // Rows of X are taken a block at a time, and every panel of the task runs over the
            // block before the next: the block stays in the core's L2 across panels instead of
            // X being streamed from memory once per panel. Within a panel, when the task runs
            // all the panels over its rows, its k slices are taken in turn by a group of row
            // blocks: the slice of W is read from L1 by all but the first (reading both A and B
            // tiles from L2 leaves the tiles waiting).
            let (task_rows, task_panels) = share.task(t, m, panels);
            for block in task_rows.clone().step_by(block_rows) {
                let block_end = (block + block_rows).min(task_rows.end);
                // A bias that goes onto C's values is added to the block's rows in the task's
                // columns before any tile loads them, all of a row's columns per call (added
                // per 32×32 block, it took a call per 32 values, each waiting on C's lines).
                if edges.bias_added_to_c().is_some() && !task_panels.is_empty() {
                    let cols = task_panels.start * PANEL_COLS..(task_panels.end * PANEL_COLS).min(n);
                    edges.begin(out_ptr.get(), n, block..block_end, cols);
                }
                for p in task_panels.clone() {
                    let b = w.as_ptr().add(p * pairs * PANEL_COLS).cast::<u8>();
                    let cols = PANEL_COLS.min(n - p * PANEL_COLS);
                    // The task's next panel of W, brought into L2 a few lines per step while
                    // the tiles work on this one: in a model the weights come from memory
                    // (they are far larger than the caches), and the panel's first row block
                    // (each k slice's, on one thread) would otherwise wait on them.
                    let panel_lanes = pairs * PANEL_COLS;
                    let next = match task_panels.contains(&(p + 1)) {
                        true => &w[(p + 1) * panel_lanes..(p + 2) * panel_lanes],
                        false => &[],
                    };
                    let mut ahead = Ahead::share(next, 1, 0);
                    let block_steps = (block_end - block).div_ceil(ROWS) * steps.max(1);
                    let lines_per_step = ahead.lines().div_ceil(block_steps);
                    for group in (block..block_end).step_by(ROWS * GROUP_BLOCKS) {
                        let group_end = (group + ROWS * GROUP_BLOCKS).min(block_end);
                        for s0 in (0..steps.max(1)).step_by(slice_steps) {
                            let s1 = (s0 + slice_steps).min(steps);
                            let (first, last) = (s0 == 0, s1 == steps);
                            // Pending rows activated per step: a block's 32 over the slice.
                            let rows_per_step = ROWS.div_ceil((s1 - s0).max(1));
                            for (slot, r0) in (group..group_end).step_by(ROWS).enumerate() {
                                let rows = ROWS.min(m - r0);
                                let whole = rows == ROWS && cols == PANEL_COLS;
                                let c_at = |r: usize| out_ptr.get().add((r0 + r) * n + p * PANEL_COLS);
                                let kept = kept[slot].0.as_mut_ptr();
                                let kept_bytes = kept.cast::<u8>();
                                const KEPT_STRIDE: usize = PANEL_COLS * 4;
                                // C's tiles start from the bias (its 16 columns read 16 times,
                                // row stride 0) or from `out`, in place when the 32×32 block is
                                // inside it, else through the scratch; after the first slice,
                                // from the scratch.
                                if !first {
                                    tiles.load_c(kept_bytes, KEPT_STRIDE);
                                } else if whole {
                                    match bias_instead_of_c {
                                        Some(bias) => {
                                            tiles.load_c(bias.as_ptr().add(p * PANEL_COLS).cast(), 0)
                                        }
                                        None => tiles.load_c(c_at(0).cast(), n * 4),
                                    }
                                } else {
                                    // A block to tiles waiting for its rounding may be in
                                    // this scratch.
                                    if to_tiles {
                                        unactivated.drain(..).for_each(activate);
                                    }
                                    for r in 0..rows {
                                        let to = kept.add(r * PANEL_COLS);
                                        let from = match bias_instead_of_c {
                                            None => c_at(r).cast_const(),
                                            Some(bias) => bias.as_ptr().add(p * PANEL_COLS),
                                        };
                                        std::ptr::copy_nonoverlapping(from, to, cols);
                                    }
                                    tiles.load_c(kept_bytes, KEPT_STRIDE);
                                }
                                let a = x.as_ptr().add(r0 * pairs).cast::<u8>();
                                for step in s0..s1 {
                                    let a0 = a.add(x_lane(0, step) * 4);
                                    let b_tile = b.add(step * TILE_PAIRS * PANEL_COLS * 4);
                                    tiles.step(
                                        [a0, a0.add(16 * TILE_PAIRS * 4)],
                                        TILE_PAIRS * 4,
                                        [b_tile, b_tile.add(64)],
                                        PANEL_COLS * 4,
                                    );
                                    ahead.prefetch_next(lines_per_step);
                                    for _ in 0..rows_per_step {
                                        if let Some(row) = unactivated.pop() {
                                            activate(row);
                                        }
                                    }
                                }
                                unactivated.drain(..).for_each(activate);
                                if last && whole && !to_tiles {
                                    tiles.store_c(c_at(0).cast(), n * 4);
                                } else if last && to_tiles {
                                    // Finished in the scratch, rounded from there into the
                                    // next X while the next block multiplies; rows past C's
                                    // are zero there.
                                    tiles.store_c(kept_bytes, KEPT_STRIDE);
                                    let row_at = |r: usize| kept.add(r * PANEL_COLS);
                                    let to = |r: usize| tiles_at(r0, r, p);
                                    unactivated.extend((0..rows).map(|r| (row_at(r), cols, Some(to(r)))));
                                    for r in rows..ROWS {
                                        std::ptr::write_bytes(to(r), 0, PANEL_COLS);
                                    }
                                } else {
                                    tiles.store_c(kept_bytes, KEPT_STRIDE);
                                    if last {
                                        for r in 0..rows {
                                            std::ptr::copy_nonoverlapping(
                                                kept.add(r * PANEL_COLS),
                                                c_at(r),
                                                cols,
                                            );
                                        }
                                    }
                                }
                                if last && activation.is_some() && !to_tiles {
                                    unactivated.extend((0..rows).map(|r| (c_at(r), cols, None)));
                                }
                            }
                        }
                    }
                }
            }
            unactivated.drain(..).for_each(activate);
        });
        tiles.end();
    });
}

/// One attention head's operands for [`attention_head`]: `out = softmax(Q · Kᵀ) · V`, Q's
/// `nq` rows over `nk` keys, `d_v` values a key.
#[derive(Clone, Copy)]
pub(crate) struct HeadOperands<'a> {
    /// The queries, scaled, in tile order as [`Operands::x`] (`q_pairs` input pairs a row).
    pub(crate) q: &'a [u32],
    /// Input pairs of a query or key row, a multiple of [`TILE_PAIRS`].
    pub(crate) q_pairs: usize,
    /// The keys as [`Operands::w`] (`nk` columns of `q_pairs` pairs).
    pub(crate) keys: &'a [u32],
    /// The values as [`Operands::w`] (`d_v` columns of `key_pairs` pairs: the pairs of keys).
    pub(crate) values: &'a [u32],
    /// Pairs of keys, a multiple of [`TILE_PAIRS`].
    pub(crate) key_pairs: usize,
    /// Query rows.
    pub(crate) nq: usize,
    /// Keys.
    pub(crate) nk: usize,
    /// Values a key: the output's width.
    pub(crate) d_v: usize,
}

/// One attention head on AMX tiles, on the calling thread: for each query row r, row r of
/// `out` (`d_v` values, rows `ldo` values apart) is `softmax(q_r · Kᵀ) · V`. The queries are
/// taken a [`ROWS`]-row strip at a time, and all of a strip's work stays in L1 and L2: its
/// scores (`ROWS × nk` f32, from the tiles), their softmax's exponentials, rounded into the
/// strip's bf16 weights in tile order, and the weighted sum, whose blocks go from the tiles
/// straight into `out`, each row then divided by its sum. Neither the scores nor the weights of
/// the whole head are ever stored, and the query tiles of a strip serve all its panels of keys.
///
/// # Safety
/// `out` must be valid for writes of rows `0..nq` × columns `0..d_v` at row stride `ldo`, and
/// no one else may access them during the call. Call only when [`available`].
pub(crate) unsafe fn attention_head(operands: HeadOperands, out: *mut f32, ldo: usize) {
    assert!(available(), "AMX is not available");
    // SAFETY: the caller's promises; the native tiles only where the CPU has them.
    unsafe {
        match crate::cpu::amx() {
            true => head::<Native>(operands, out, ldo),
            false => head::<Emulated>(operands, out, ldo),
        }
    }
}

/// [`attention_head`] with the tile instructions emulated ([`Emulated`]).
#[cfg(test)]
pub(crate) fn attention_head_emulated(operands: HeadOperands, out: &mut [f32], ldo: usize) {
    let HeadOperands { nq, d_v, .. } = operands;
    assert!(
        nq == 0 || out.len() >= (nq - 1) * ldo + d_v,
        "amx: out is too short"
    );
    // SAFETY: `out` holds the rows × columns written, borrowed mutably.
    unsafe { head::<Emulated>(operands, out.as_mut_ptr(), ldo) };
}

/// The loop of [`attention_head`] over the tile operations `T`.
///
/// # Safety
/// As [`attention_head`]'s, and `T` must run on this CPU.
unsafe fn head<T: Tiles>(operands: HeadOperands, out: *mut f32, ldo: usize) {
    let HeadOperands {
        q,
        q_pairs,
        keys,
        values,
        key_pairs,
        nq,
        nk,
        d_v,
    } = operands;
    assert!(
        q_pairs % TILE_PAIRS == 0 && key_pairs % TILE_PAIRS == 0,
        "amx: pairs are whole tiles"
    );
    assert!(
        2 * key_pairs >= nk,
        "amx: {key_pairs} pairs of keys cannot hold {nk}"
    );
    let (key_panels, value_panels) = (nk.div_ceil(PANEL_COLS), d_v.div_ceil(PANEL_COLS));
    assert_eq!(
        q.len(),
        nq.div_ceil(ROWS) * ROWS * q_pairs,
        "amx: Q is not {nq} rows in tile order"
    );
    assert!(
        keys.len() >= key_panels * q_pairs * PANEL_COLS,
        "amx: fewer than {nk} keys"
    );
    assert!(
        values.len() >= value_panels * key_pairs * PANEL_COLS,
        "amx: V is not {d_v} wide"
    );
    if nq == 0 || d_v == 0 {
        return;
    }
    // The strip's scores, a row of whole panels of keys (f32), and its weights in tile order.
    let scores_stride = key_panels * PANEL_COLS;
    let mut scores = Lines::zeroed(ROWS * scores_stride);
    let mut weights = Lines::zeroed(ROWS * key_pairs);
    let mut edge = Block([0.0; ROWS * PANEL_COLS]);
    let step_tiles = |a: *const u8, b: *const u8, step: usize| {
        let (a0, b0) = (
            a.wrapping_add(x_lane(0, step) * 4),
            b.wrapping_add(step * TILE_PAIRS * PANEL_COLS * 4),
        );
        (
            [a0, a0.wrapping_add(16 * TILE_PAIRS * 4)],
            [b0, b0.wrapping_add(64)],
        )
    };
    // SAFETY: AMX (or its emulation) runs here (the caller's promise).
    let mut tiles = unsafe { T::begin() };
    for strip in (0..nq).step_by(ROWS) {
        let rows = ROWS.min(nq - strip);
        // SAFETY: every tile below reads inside Q's strip, the keys' and values' panels (their
        // sizes asserted above) or the scratch, and writes the scratch or `out`'s rows of the
        // strip × a panel's columns inside 0..d_v (the caller's promise).
        unsafe {
            let a = q.as_ptr().add(strip * q_pairs).cast::<u8>();
            let scores_at = scores.as_mut_ptr().cast::<f32>();
            for panel in 0..key_panels {
                let b = keys.as_ptr().add(panel * q_pairs * PANEL_COLS).cast::<u8>();
                tiles.zero_c();
                for step in 0..q_pairs / TILE_PAIRS {
                    let (a_tiles, b_tiles) = step_tiles(a, b, step);
                    tiles.step(a_tiles, TILE_PAIRS * 4, b_tiles, PANEL_COLS * 4);
                }
                tiles.store_c(scores_at.add(panel * PANEL_COLS).cast(), scores_stride * 4);
            }
        }
        // Each row's exponentials over its nk scores, converted into the weights' tile order
        // (zero past nk, and in the rows past the strip's); each row of the weighted sum is
        // divided by its row's sum once stored.
        // SAFETY: the halves below are written only with values (bf16 bits or zeros).
        let halves = unsafe { weights.halves_mut() };
        let mut inverse_sums = [0f32; ROWS];
        for (r, inverse) in inverse_sums.iter_mut().enumerate() {
            let (to, stride) = (&mut halves[2 * x_lane(r, 0)..], 2 * x_lane(0, 1));
            match r < rows {
                true => {
                    let row = u32_as_f32(&mut scores[r * scores_stride..][..nk]);
                    // SAFETY: `to` holds the row's `2·key_pairs / 32` slices, `stride` apart.
                    *inverse =
                        1.0 / unsafe { T::exp_to_bf16(row, to.as_mut_ptr().cast(), stride, 2 * key_pairs) };
                }
                false => crate::bf16::convert_slices(&[], to, stride, 2 * key_pairs),
            }
        }
        // SAFETY: as above.
        unsafe {
            let a = weights.as_ptr().cast::<u8>();
            for panel in 0..value_panels {
                let b = values.as_ptr().add(panel * key_pairs * PANEL_COLS).cast::<u8>();
                let cols = PANEL_COLS.min(d_v - panel * PANEL_COLS);
                tiles.zero_c();
                for step in 0..key_pairs / TILE_PAIRS {
                    let (a_tiles, b_tiles) = step_tiles(a, b, step);
                    tiles.step(a_tiles, TILE_PAIRS * 4, b_tiles, PANEL_COLS * 4);
                }
                let c = out.add(strip * ldo + panel * PANEL_COLS);
                if rows == ROWS && cols == PANEL_COLS {
                    tiles.store_c(c.cast(), ldo * 4);
                } else {
                    tiles.store_c(edge.0.as_mut_ptr().cast(), PANEL_COLS * 4);
                    for r in 0..rows {
                        std::ptr::copy_nonoverlapping(
                            edge.0.as_ptr().add(r * PANEL_COLS),
                            c.add(r * ldo),
                            cols,
                        );
                    }
                }
            }
            for (r, &inverse) in inverse_sums.iter().enumerate().take(rows) {
                rows::scale_row(
                    std::slice::from_raw_parts_mut(out.add((strip + r) * ldo), d_v),
                    inverse,
                );
            }
        }
    }
    tiles.end();
}

/// f32 values stored as their bits in 32-bit lanes, read as f32.
fn u32_as_f32(lanes: &mut [u32]) -> &mut [f32] {
    // SAFETY: u32 and f32 have one size and alignment, and every bit pattern is an f32.
    unsafe { std::slice::from_raw_parts_mut(lanes.as_mut_ptr().cast(), lanes.len()) }
}

/// How [`run`] shares a product out: a task for each of `row_tasks` runs of `rows` rows
/// (whole [`ROWS`] blocks) by each of `panel_tasks` runs of `panels` panels of W.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share {
    row_tasks: usize,
    rows: usize,
    panel_tasks: usize,
    panels: usize,
}

impl Share {
    /// One thread takes all of C. Threads take rows when each gets at least a whole X block
    /// (`block_rows`): each runs the one-thread loop over its own rows, W streamed past its X
    /// block in its own L2. (Sharing panels instead, every task read all of X, each X block
    /// brought into a core's L2 once per task: slower on a Xeon than rows shared, and slower
    /// still than rows shared with k slices, which pay only then; docs/BENCHMARKS.md, 37358ff.)
    /// With fewer rows (a text's pass) they take panels, two tasks a thread so that a thread
    /// held up by the host does not hold up the whole product.
    fn choose(m: usize, panels: usize, block_rows: usize, threads: usize) -> Self {
        let (blocks, panels) = (m.div_ceil(ROWS).max(1), panels.max(1));
        if threads <= 1 || m >= threads * block_rows {
            let rows = blocks.div_ceil(threads.max(1)) * ROWS;
            Self {
                row_tasks: m.div_ceil(rows).max(1),
                rows,
                panel_tasks: 1,
                panels,
            }
        } else {
            let per_task = panels.div_ceil(threads * 2);
            Self {
                row_tasks: 1,
                rows: blocks * ROWS,
                panel_tasks: panels.div_ceil(per_task),
                panels: per_task,
            }
        }
    }

    fn tasks(self) -> usize {
        self.row_tasks * self.panel_tasks
    }

    /// Task `t`'s rows and panels, of a product of m rows and `panels` panels.
    fn task(self, t: usize, m: usize, panels: usize) -> (Range<usize>, Range<usize>) {
        let (row_task, panel_task) = (t / self.panel_tasks, t % self.panel_tasks);
        let rows = (row_task * self.rows).min(m)..((row_task + 1) * self.rows).min(m);
        let first = (panel_task * self.panels).min(panels);
        (rows, first..(first + self.panels).min(panels))
    }
}

thread_local! {
    /// Each thread's blocks of C kept between k slices ([`run`]): a task borrows them for its
    /// whole run, and a thread runs one task at a time.
    static KEPT: std::cell::RefCell<[Block; GROUP_BLOCKS]> =
        const { std::cell::RefCell::new([Block([0.0; ROWS * PANEL_COLS]); GROUP_BLOCKS]) };
}

/// A 32×32 block of C kept between k slices, on a cache line (its tile rows are whole lines).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([f32; ROWS * PANEL_COLS]);

/// The tile operations [`run`]'s loop is made of. C's 32×32 block is four 16×16 f32 tiles:
/// at `c`, `c + 64` bytes, 16 rows down, and 16 rows down `+ 64`.
trait Tiles {
    /// A thread's tiles, configured.
    ///
    /// # Safety
    /// The CPU must have what the implementation runs on.
    unsafe fn begin() -> Self;
    /// Loads C's four tiles from `c` (row stride `stride` bytes; 0 repeats the first row).
    ///
    /// # Safety
    /// The 32 rows of 128 bytes at `c` must be readable.
    unsafe fn load_c(&mut self, c: *const u8, stride: usize);
    /// Sets C's four tiles to zero.
    fn zero_c(&mut self);
    /// One step over 16 input pairs: C's tile (i, j) += A tile i · B tile j, the A tiles 16
    /// rows of 64 bytes (16 pairs of bf16) at `a` (row stride `sa`), the B tiles 16 pair rows of
    /// 16 lanes at `b` (row stride `sb`).
    ///
    /// # Safety
    /// The tiles' 16 rows of 64 bytes must be readable.
    unsafe fn step(&mut self, a: [*const u8; 2], sa: usize, b: [*const u8; 2], sb: usize);
    /// Stores C's four tiles to `c`.
    ///
    /// # Safety
    /// As [`load_c`](Self::load_c), writable by this thread alone.
    unsafe fn store_c(&mut self, c: *mut u8, stride: usize);
    /// Releases the tiles.
    fn end(self);
    /// `exp(x − max)` of `row`'s values x, rounded to bf16 into `len` halves at `dst` in slices
    /// of 32, `stride` halves apart, zero past the row; returns their sum
    /// ([`rows::exp_to_bf16_slices`]). Not a tile operation, but what runs next to them: the
    /// CPUs with AMX have AVX-512 BF16, which rounds 32 values in one instruction.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the `len / 32` slices.
    unsafe fn exp_to_bf16(row: &[f32], dst: *mut u16, stride: usize, len: usize) -> f32;
}

/// Where C's four tiles start, from its 32×32 block at `c` (row stride `stride` bytes), in
/// [`Tiles`]' order.
fn c_tiles(c: *const u8, stride: usize) -> [*const u8; 4] {
    [0, 64, 16 * stride, 16 * stride + 64].map(|offset| c.wrapping_add(offset))
}

/// The AMX instructions: C in tmm0–3, A in tmm4–5, B in tmm6–7.
struct Native;

impl Tiles for Native {
    unsafe fn begin() -> Self {
        let config = TileConfig::new();
        // SAFETY: AMX is available (the caller's promise) and the config is valid.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Native
    }

    unsafe fn load_c(&mut self, c: *const u8, stride: usize) {
        let [c0, c1, c2, c3] = c_tiles(c, stride);
        // SAFETY: the tiles' rows are readable (the caller's promise).
        unsafe {
            std::arch::asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) stride,
                options(nostack, readonly),
            )
        };
    }

    fn zero_c(&mut self) {
        // SAFETY: the tiles are configured (`begin`); no memory is touched.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem),
            )
        };
    }

    unsafe fn step(&mut self, a: [*const u8; 2], sa: usize, b: [*const u8; 2], sb: usize) {
        // SAFETY: as `load_c`.
        unsafe {
            std::arch::asm!(
                // Each product as soon as its tiles are loaded: the tile registers are not
                // renamed, so a load waits for the products still reading the old tile.
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a[0],
                a1 = in(reg) a[1],
                sa = in(reg) sa,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                sb = in(reg) sb,
                options(nostack, readonly),
            )
        };
    }

    unsafe fn store_c(&mut self, c: *mut u8, stride: usize) {
        let [c0, c1, c2, c3] = c_tiles(c, stride);
        // SAFETY: the tiles' rows are writable by this thread alone (the caller's promise).
        unsafe {
            std::arch::asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) stride,
                options(nostack),
            )
        };
    }

    fn end(self) {
        // SAFETY: releases this thread's tiles, configured in `begin`.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }

    unsafe fn exp_to_bf16(row: &[f32], dst: *mut u16, stride: usize, len: usize) -> f32 {
        // Every CPU with AMX has AVX-512 BF16, but a virtual machine might pass on one and not
        // the other: `rows::exp_to_bf16` checks.
        // SAFETY: as the caller promises.
        unsafe { rows::exp_to_bf16(row, dst, stride, len) }
    }
}

/// The tile instructions in plain Rust, as Intel's pseudocode for `tdpbf16ps` has them: for
/// each pair, the even product then the odd one added to the f32 sum (products of two bf16
/// values are exact in f32). The tests' way to run the AMX loops anywhere, and
/// [`crate::cpu::emulate_amx`]'s.
struct Emulated {
    /// C's tiles, in `Tiles`' order: `c[tile][row][column]`.
    c: [[[f32; 16]; 16]; 4],
}

impl Tiles for Emulated {
    unsafe fn begin() -> Self {
        Emulated {
            c: [[[0.0; 16]; 16]; 4],
        }
    }

    unsafe fn load_c(&mut self, c: *const u8, stride: usize) {
        for (rows, start) in self.c.iter_mut().zip(c_tiles(c, stride)) {
            for (r, row) in rows.iter_mut().enumerate() {
                // SAFETY: inside C's block (the caller's promise).
                let src = unsafe { start.add(r * stride) };
                for (j, v) in row.iter_mut().enumerate() {
                    // SAFETY: as above.
                    *v = unsafe { src.cast::<f32>().add(j).read_unaligned() };
                }
            }
        }
    }

    fn zero_c(&mut self) {
        self.c = [[[0.0; 16]; 16]; 4];
    }

    unsafe fn step(&mut self, a: [*const u8; 2], sa: usize, b: [*const u8; 2], sb: usize) {
        let bf16 = |p: *const u8, i: usize| {
            // SAFETY: inside a tile's rows (the caller's promise).
            crate::bf16::from_bf16_bits(unsafe { p.cast::<u16>().add(i).read_unaligned() })
        };
        for (tile, rows) in self.c.iter_mut().enumerate() {
            let (a_tile, b_tile) = (a[tile / 2], b[tile % 2]);
            for (r, row) in rows.iter_mut().enumerate() {
                // SAFETY: row r < 16 of the A tile.
                let a_row = unsafe { a_tile.add(r * sa) };
                for pair in 0..16 {
                    // SAFETY: pair row < 16 of the B tile.
                    let b_row = unsafe { b_tile.add(pair * sb) };
                    for (j, sum) in row.iter_mut().enumerate() {
                        *sum += bf16(a_row, 2 * pair) * bf16(b_row, 2 * j);
                        *sum += bf16(a_row, 2 * pair + 1) * bf16(b_row, 2 * j + 1);
                    }
                }
            }
        }
    }

    unsafe fn store_c(&mut self, c: *mut u8, stride: usize) {
        for (rows, start) in self.c.iter().zip(c_tiles(c, stride)) {
            for (r, row) in rows.iter().enumerate() {
                // SAFETY: inside C's block (the caller's promise).
                let dst = unsafe { start.cast_mut().add(r * stride) };
                for (j, &v) in row.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { dst.cast::<f32>().add(j).write_unaligned(v) };
                }
            }
        }
    }

    fn end(self) {}

    unsafe fn exp_to_bf16(row: &[f32], dst: *mut u16, stride: usize, len: usize) -> f32 {
        // SAFETY: as the caller promises.
        unsafe { rows::exp_to_bf16_portable(row, dst, stride, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However a product is shared out, its tasks take each row of each panel exactly once,
    /// and threads take rows only when each gets a whole X block.
    #[test]
    fn shares_cover_each_row_of_each_panel_once() {
        for m in [1, 31, 32, 33, 255, 256, 257, 511, 512, 700, 2048] {
            for panels in [1, 2, 3, 7, 8, 40] {
                for threads in [1, 2, 3, 4] {
                    for block_rows in [32, 64, 256] {
                        let share = Share::choose(m, panels, block_rows, threads);
                        let mut taken = vec![0u8; m * panels];
                        for t in 0..share.tasks() {
                            let (rows, task_panels) = share.task(t, m, panels);
                            for r in rows {
                                for p in task_panels.clone() {
                                    taken[r * panels + p] += 1;
                                }
                            }
                        }
                        assert!(
                            taken.iter().all(|&n| n == 1),
                            "m {m}, {panels} panels, {threads} threads, blocks of {block_rows}: {share:?}"
                        );
                        assert!(share.rows.is_multiple_of(ROWS), "{share:?}");
                        if share.row_tasks > 1 {
                            assert!(share.rows >= block_rows, "{share:?} for blocks of {block_rows}");
                        }
                        assert!(share.tasks() <= 2 * threads, "{share:?} on {threads} threads");
                    }
                }
            }
        }
    }
}
