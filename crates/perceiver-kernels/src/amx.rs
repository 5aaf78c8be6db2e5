//! bf16 products on Intel AMX tiles (`tdpbf16ps`), for CPUs that have them (Sapphire Rapids and
//! later): one instruction multiplies a 16×32 bf16 tile by a 32×16 one into 16×16 f32 sums.
//!
//! Rust has no stable AMX intrinsics, so the few instructions are inline assembly. The weights
//! use [`crate::bf16::PackedMatrix`]'s layout as they are: a panel's rows of 32 input pairs are
//! 128 bytes, and 16 consecutive pair rows of 16 columns form one B tile (row stride 128). X
//! comes converted to row-major bf16 by the caller ([`crate::bf16`], per call). Each microkernel
//! step keeps a 32×32 block of C in four tiles. Linux must grant the process the AMX register
//! state first (`arch_prctl`); [`available`] asks once and says no when it is refused.
//!
//! This module only runs the tiles: [`crate::bf16::PackedMatrix`]'s products choose it (see
//! [`crate::cpu::bf16_kernel`]).

use rayon::prelude::*;

use crate::send_ptr::SendPtr;

/// Rows of C per microkernel step (two 16-row A tiles); X comes padded to whole blocks of them.
pub(crate) const ROWS: usize = 32;
/// Columns of C per panel of W (two 16-column B tiles).
pub(crate) const PANEL_COLS: usize = 32;
/// Input pairs per B tile: the packed pairs come in whole multiples of it.
pub(crate) const TILE_PAIRS: usize = 16;
/// Bytes of X's bf16 rows that one pass over the task's panels works on (see `block_rows`).
const X_BLOCK_BYTES: usize = 512 * 1024;

/// Whether the bf16 products may run on AMX tiles: [`crate::cpu::amx`].
pub fn available() -> bool {
    crate::cpu::amx()
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

/// `out[m, n] += X · Wᵀ` on AMX, with
/// - `w`: W in [`PackedMatrix`](crate::bf16::PackedMatrix)'s layout, `[panels][pairs][32]`
///   lanes, each lane a pair of bf16 values (the even input in the low half), `pairs` a
///   multiple of [`TILE_PAIRS`];
/// - `x`: X as row-major bf16 bits, `[m rounded up to ROWS][2·pairs]`, zero past its m rows and
///   k columns.
///
/// Call only when [`available`].
pub(crate) fn matmul_accumulate(
    w: &[u32],
    n: usize,
    pairs: usize,
    x: &[u16],
    m: usize,
    out: &mut [f32],
    threads: usize,
) {
    assert!(available(), "AMX is not available");
    assert_eq!(pairs % TILE_PAIRS, 0, "amx: pairs are padded to whole tiles");
    let (k_pad, m_pad, panels) = (2 * pairs, m.div_ceil(ROWS) * ROWS, n.div_ceil(PANEL_COLS));
    assert_eq!(x.len(), m_pad * k_pad, "amx: X is not {m_pad}x{k_pad}");
    assert!(
        w.len() >= panels * pairs * PANEL_COLS,
        "amx: W has fewer than {n} columns"
    );
    assert_eq!(out.len(), m * n, "amx: C is not {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    // A block of X's rows (bf16, 2 bytes a value) of about half a megabyte: it stays in L2
    // (2 MB a core on Sapphire Rapids) next to the panel of W being read.
    let block_rows = ((X_BLOCK_BYTES / (2 * k_pad)) / ROWS).max(1) * ROWS;
    let tasks = if threads > 1 { (threads * 2).min(panels) } else { 1 };
    let per_task = panels.div_ceil(tasks);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| {
        let config = TileConfig::new();
        // SAFETY: AMX is available and the config is valid; every tile operation below reads
        // and writes inside `x`, the packed weights, `out` or the local scratch (their sizes
        // asserted above).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
            // Rows of X are taken a block at a time, and every panel of the task runs over the
            // block before the next: the block stays in the core's L2 across panels instead of
            // X being streamed from memory once per panel.
            for block in (0..m).step_by(block_rows) {
                for p in t * per_task..((t + 1) * per_task).min(panels) {
                    let b = w.as_ptr().add(p * pairs * PANEL_COLS).cast::<u8>();
                    let cols = PANEL_COLS.min(n - p * PANEL_COLS);
                    for r0 in (block..(block + block_rows).min(m)).step_by(ROWS) {
                        let rows = ROWS.min(m - r0);
                        let whole = rows == ROWS && cols == PANEL_COLS;
                        // C: in place when the 32×32 block is inside `out`, else through a scratch.
                        let mut scratch = [0f32; ROWS * PANEL_COLS];
                        let (c, c_stride) = if whole {
                            (out_ptr.get().add(r0 * n + p * PANEL_COLS), n * 4)
                        } else {
                            for r in 0..rows {
                                for j in 0..cols {
                                    scratch[r * PANEL_COLS + j] =
                                        *out_ptr.get().add((r0 + r) * n + p * PANEL_COLS + j);
                                }
                            }
                            (scratch.as_mut_ptr(), PANEL_COLS * 4)
                        };
                        let c = c.cast::<u8>();
                        std::arch::asm!(
                            "tileloadd tmm0, [{c} + {s}*1]",
                            "tileloadd tmm1, [{c1} + {s}*1]",
                            "tileloadd tmm2, [{c2} + {s}*1]",
                            "tileloadd tmm3, [{c3} + {s}*1]",
                            c = in(reg) c,
                            c1 = in(reg) c.add(64),
                            c2 = in(reg) c.add(16 * c_stride),
                            c3 = in(reg) c.add(16 * c_stride + 64),
                            s = in(reg) c_stride,
                            options(nostack, readonly),
                        );
                        let a0 = x.as_ptr().add(r0 * k_pad).cast::<u8>();
                        let a1 = a0.add(16 * k_pad * 2);
                        for kk in 0..pairs / TILE_PAIRS {
                            let b_tile = b.add(kk * TILE_PAIRS * PANEL_COLS * 4);
                            std::arch::asm!(
                                "tileloadd tmm4, [{a0} + {sa}*1]",
                                "tileloadd tmm5, [{a1} + {sa}*1]",
                                "tileloadd tmm6, [{b0} + {sb}*1]",
                                "tileloadd tmm7, [{b1} + {sb}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a0 = in(reg) a0.add(kk * 64),
                                a1 = in(reg) a1.add(kk * 64),
                                sa = in(reg) k_pad * 2,
                                b0 = in(reg) b_tile,
                                b1 = in(reg) b_tile.add(64),
                                sb = in(reg) PANEL_COLS * 4,
                                options(nostack, readonly),
                            );
                        }
                        std::arch::asm!(
                            "tilestored [{c} + {s}*1], tmm0",
                            "tilestored [{c1} + {s}*1], tmm1",
                            "tilestored [{c2} + {s}*1], tmm2",
                            "tilestored [{c3} + {s}*1], tmm3",
                            c = in(reg) c,
                            c1 = in(reg) c.add(64),
                            c2 = in(reg) c.add(16 * c_stride),
                            c3 = in(reg) c.add(16 * c_stride + 64),
                            s = in(reg) c_stride,
                            options(nostack),
                        );
                        if !whole {
                            for r in 0..rows {
                                for j in 0..cols {
                                    *out_ptr.get().add((r0 + r) * n + p * PANEL_COLS + j) =
                                        scratch[r * PANEL_COLS + j];
                                }
                            }
                        }
                    }
                }
            }
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    });
}
