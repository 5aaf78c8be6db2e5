//! The CPU's peaks, measured: what the products' GFLOP/s are judged against (the
//! `kernel_speed` example, benchmarks). f32 products against the fused multiply-add peak, bf16
//! products on AVX-512 BF16 against the `vdpbf16ps` peak, on AMX against the `tdpbf16ps` one.

use std::time::Instant;

/// Instructions per chain and thread in one measurement (~0.1–0.3 s on a recent core).
const ITERS: usize = 50_000_000;
/// Independent accumulators per thread: enough to cover either instruction's latency at two
/// per cycle, few enough to stay in registers.
const CHAINS: usize = 12;

/// f32 GFLOP/s of `threads` threads each running 12 independent chains of fused multiply-adds on
/// registers only, on the widest vectors the CPU has (AVX-512, else AVX2); best of 7. `None` on
/// CPUs with neither (or not x86-64).
///
/// A busy machine lowers it, so callers measure it before and after what they time and use the
/// higher figure.
pub fn fma_peak_gflops(threads: usize) -> Option<f64> {
    let (chains, lanes) = fma_chains()?;
    // A multiply and an add per lane.
    Some(measure(threads, chains, (lanes * 2) as f64))
}

/// GFLOP/s of `threads` threads each running 12 independent chains of `vdpbf16ps` (AVX-512
/// BF16: per 32-bit lane two bf16 products added to an f32 sum, so 64 FLOP an instruction) on
/// registers only; best of 7. `None` where the CPU lacks AVX-512 BF16. This is the ceiling of the
/// AVX-512 BF16 products (not of AMX's, which have their own). Measure it as
/// [`fma_peak_gflops`]: before and after, the higher figure.
pub fn bf16_dot_peak_gflops(threads: usize) -> Option<f64> {
    Some(measure(threads, bf16_chains()?, 64.0))
}

/// GFLOP/s of `threads` threads each running `tdpbf16ps` on four independent AMX register tiles
/// of random bf16 values (16 × 16 × 32 products, 16,384 FLOP an instruction); best of 7. `None`
/// where AMX is not available. The ceiling of the AMX products; measure it as
/// [`fma_peak_gflops`]: before and after, the higher figure.
pub fn amx_peak_gflops(threads: usize) -> Option<f64> {
    /// Rounds of four instructions per thread (~0.05 s at 16 cycles an instruction).
    const ROUNDS: usize = 2_000_000;
    let run = || {
        // SAFETY: AMX is available (checked below, before any run).
        unsafe { crate::amx::peak_rounds(ROUNDS) };
        0.0
    };
    crate::cpu::amx().then(|| best_of_7(threads, run, (4 * ROUNDS) as f64 * 16384.0))
}

/// Best of 7 runs of `chains` on `threads` threads, in GFLOP/s.
fn measure(threads: usize, chains: unsafe fn() -> f32, flop_per_instruction: f64) -> f64 {
    // SAFETY: the `*_chains` functions only return loops whose features the CPU has.
    let run = || unsafe { chains() };
    best_of_7(threads, run, (ITERS * CHAINS) as f64 * flop_per_instruction)
}

/// Best of 7 runs of `run` on `threads` threads at once, `flop_per_run` each, in GFLOP/s.
fn best_of_7(threads: usize, run: impl Fn() -> f32 + Sync, flop_per_run: f64) -> f64 {
    let threads = threads.max(1);
    let best = (0..7)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box(run()));
                }
            });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    threads as f64 * flop_per_run / best / 1e9
}

/// The FMA loop for this CPU and its f32 lanes.
#[cfg(target_arch = "x86_64")]
fn fma_chains() -> Option<(unsafe fn() -> f32, usize)> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    unsafe fn chains512() -> f32 {
        let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999_9));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
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
        let mut acc = [_mm256_setzero_ps(); CHAINS];
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

/// The `vdpbf16ps` loop, where the CPU has it.
#[cfg(target_arch = "x86_64")]
fn bf16_chains() -> Option<unsafe fn() -> f32> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn chains() -> f32 {
        // Every lane holds the pair (1.0, 1.0) in bf16: the sums grow but stay finite.
        let ones: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, ones, ones);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
    crate::cpu::avx512_bf16().then_some(chains as unsafe fn() -> f32)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_chains() -> Option<(unsafe fn() -> f32, usize)> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn bf16_chains() -> Option<unsafe fn() -> f32> {
    None
}
