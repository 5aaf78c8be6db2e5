//! The CPU's f32 fused multiply-add peak, measured: what the products' GFLOP/s are judged
//! against (the `kernel_speed` example, benchmarks).

use std::time::Instant;

/// Multiply-adds per chain and thread in one measurement (~0.1–0.3 s on a recent core).
const ITERS: usize = 50_000_000;

/// f32 GFLOP/s of `threads` threads each running 12 independent chains of fused multiply-adds on
/// registers only (enough to cover the FMA latency), on the widest vectors the CPU has (AVX-512,
/// else AVX2); best of 7. `None` on CPUs with neither (or not x86-64).
///
/// A busy machine lowers it, so callers measure it before and after what they time and use the
/// higher figure.
pub fn fma_peak_gflops(threads: usize) -> Option<f64> {
    let threads = threads.max(1);
    let (chains, lanes) = chains()?;
    let flop = (threads * ITERS * 12 * lanes * 2) as f64;
    let best = (0..7)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    // SAFETY: `chains` only returns a loop whose features the CPU has.
                    s.spawn(|| std::hint::black_box(unsafe { chains() }));
                }
            });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some(flop / best / 1e9)
}

/// The FMA loop for this CPU and its f32 lanes.
#[cfg(target_arch = "x86_64")]
fn chains() -> Option<(unsafe fn() -> f32, usize)> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    unsafe fn chains512() -> f32 {
        let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999_9));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(a, b, *v);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains256() -> f32 {
        let (a, b) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(0.999_999_9));
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(a, b, *v);
            }
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            acc.iter().fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v)),
        );
        lanes.iter().sum()
    }
    if crate::cpu::avx512() {
        Some((chains512, 16))
    } else if crate::cpu::simd_level() >= crate::cpu::SimdLevel::Avx2 {
        Some((chains256, 8))
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn chains() -> Option<(unsafe fn() -> f32, usize)> {
    None
}
