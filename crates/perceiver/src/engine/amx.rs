//! bf16 products on Intel AMX tiles (`tdpbf16ps`), for CPUs that have them (Sapphire Rapids and
//! later): one instruction multiplies a 16×32 bf16 tile by a 32×16 one into 16×16 f32 sums.
//!
//! Rust has no stable AMX intrinsics, so the few instructions are inline assembly. The weights
//! use [`super::bf16::PackedMatrix`]'s layout as they are: a panel's rows of 32 input pairs are
//! 128 bytes, and 16 consecutive pair rows of 16 columns form one B tile (row stride 128). X is
//! converted to row-major bf16 per call. Each microkernel step keeps a 32×32 block of C in four
//! tiles. Linux must grant the process the AMX register state first (`arch_prctl`); [`available`]
//! asks once and says no when it is refused.

use rayon::prelude::*;

use super::SendPtr;

use super::bf16::{to_bf16_bits, PackedMatrix, NR};

/// Rows of C per microkernel (two 16-row A tiles).
const ROWS: usize = 32;

/// Whether this CPU has AMX-BF16 and the OS lets this process use it.
pub fn available() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    // SAFETY: CPUID is available on every x86_64 CPU (the intrinsic is safe in newer Rust).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    if std::env::var_os("PERCEIVER_NO_AMX").is_some() {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call that only changes this process's permitted XSAVE features.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
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

/// `out[m, n] += a[m, k] · Wᵀ` on AMX. Call only when [`available`].
pub(super) fn matmul_accumulate(w: &PackedMatrix, a: &[f32], m: usize, out: &mut [f32], threads: usize) {
    assert!(available(), "AMX is not available");
    let (n, k, pairs) = (w.n, w.k, w.pairs);
    debug_assert_eq!(pairs % 16, 0, "pairs are padded to whole tiles");
    // X as row-major bf16, rows padded to whole 32-row blocks, k to the packed pairs.
    let k_pad = 2 * pairs;
    let m_pad = m.div_ceil(ROWS) * ROWS;
    let mut x = vec![0u16; m_pad * k_pad];
    x.par_chunks_mut(k_pad)
        .zip(a.par_chunks(k))
        .for_each(|(dst, src)| convert_row(src, dst));
    let panels = n.div_ceil(NR);
    let tasks = if threads > 1 { (threads * 2).min(panels) } else { 1 };
    let per_task = panels.div_ceil(tasks);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| {
        let config = TileConfig::new();
        // SAFETY: AMX is available and the config is valid; every tile operation below reads
        // and writes inside `x`, the packed weights, `out` or the local scratch (bounds noted).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
            for p in t * per_task..((t + 1) * per_task).min(panels) {
                let b = w.data.as_ptr().add(p * pairs * NR).cast::<u8>();
                let cols = NR.min(n - p * NR);
                for r0 in (0..m).step_by(ROWS) {
                    let rows = ROWS.min(m - r0);
                    let whole = rows == ROWS && cols == NR;
                    // C: in place when the 32×32 block is inside `out`, else through a scratch.
                    let mut scratch = [0f32; ROWS * NR];
                    let (c, c_stride) = if whole {
                        (out_ptr.get().add(r0 * n + p * NR), n * 4)
                    } else {
                        for r in 0..rows {
                            for j in 0..cols {
                                scratch[r * NR + j] = *out_ptr.get().add((r0 + r) * n + p * NR + j);
                            }
                        }
                        (scratch.as_mut_ptr(), NR * 4)
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
                    for kk in 0..pairs / 16 {
                        let b_tile = b.add(kk * 16 * NR * 4);
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
                            sb = in(reg) NR * 4,
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
                                *out_ptr.get().add((r0 + r) * n + p * NR + j) = scratch[r * NR + j];
                            }
                        }
                    }
                }
            }
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    });
}

#[inline(always)]
fn convert_row_body(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16_bits(s);
    }
}

super::kernels::dispatch!(fn convert_row(src: &[f32], dst: &mut [u16]) => convert_row_body);
