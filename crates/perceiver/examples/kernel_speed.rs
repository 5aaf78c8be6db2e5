//! Speed of the engine's matrix products on the 201M model's latent-layer shapes, and of its
//! elementwise kernels (softmax, GELU, LayerNorm) on one thread:
//! `cargo run --release -p perceiver --example kernel_speed`. Prints GFLOP/s and ns per element
//! (best of 20, so a busy machine disturbs it less), and the f32 products' share of the CPU's
//! f32 FMA peak, measured in the same run by a loop of independent FMAs on registers only.

use std::time::Instant;

use perceiver::engine::bf16::PackedMatrix;
use perceiver::engine::kernels;
use perceiver::engine::matmul::{matmul, Rhs, View};
use perceiver::Activation;

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// f32 GFLOP/s of `threads` threads each running independent fused multiply-adds on registers
/// (12 chains, enough to cover the FMA latency), on the widest vectors the CPU has; best of 7.
#[cfg(target_arch = "x86_64")]
fn fma_peak(threads: usize) -> Option<f64> {
    use std::arch::x86_64::*;
    const ITERS: usize = 50_000_000;
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
    let (chains, lanes): (unsafe fn() -> f32, usize) = if is_x86_feature_detected!("avx512f") {
        (chains512, 16)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        (chains256, 8)
    } else {
        return None;
    };
    let flop = (threads * ITERS * 12 * lanes * 2) as f64;
    let best = (0..7)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    // SAFETY: the CPU has the features `chains` was chosen for.
                    s.spawn(|| std::hint::black_box(unsafe { chains() }));
                }
            });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some(flop / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_: usize) -> Option<f64> {
    None
}

fn main() {
    let threads = rayon::current_num_threads();
    let peak_before = fma_peak(threads);
    // Our f32 products' GFLOP/s, to compare with the peak at the end.
    let mut ours = Vec::new();
    // One text's latent self-attention scores (8 heads of 256×256) and MLP hidden (256×1280).
    let scores: Vec<f32> = (0..8 * 256 * 256)
        .map(|i| ((i * 37) % 101) as f32 * 0.05 - 2.5)
        .collect();
    let mut work = scores.clone();
    let t = best_of(20, || {
        work.copy_from_slice(&scores);
        kernels::softmax_rows(&mut work, 256);
    });
    println!(
        "softmax rows of 256: {:.2} ns/element",
        t * 1e9 / scores.len() as f64
    );
    let t = best_of(20, || {
        work.copy_from_slice(&scores);
        kernels::activate(&mut work[..256 * 1280], Activation::GeluErf);
    });
    println!(
        "gelu (erf) 256x1280: {:.2} ns/element",
        t * 1e9 / (256.0 * 1280.0)
    );
    let (w, b) = (vec![1.1f32; 1280], vec![0.1f32; 1280]);
    let t = best_of(20, || {
        std::hint::black_box(kernels::layer_norm(&scores[..256 * 1280], &w, &b));
    });
    println!(
        "layer_norm 256x1280: {:.2} ns/element",
        t * 1e9 / (256.0 * 1280.0)
    );
    for (m, n, k) in [
        (256, 1280, 1280),
        (256, 256, 1280),
        (2048, 768, 768),
        (256, 1280, 128),
        (1200, 32, 64),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let t = best_of(20, || {
            matmul(
                &mut out,
                n,
                View::dense(&a, m, k),
                Rhs::Transposed(View::dense(&w, n, k)),
                1.0,
                true,
                threads,
            )
        });
        println!("{m}x{n}x{k} f32 (gemm crate): {:.0} GFLOP/s", flop / t / 1e9);
        if perceiver::engine::sgemm::available() {
            let packed = perceiver::engine::sgemm::PackedWeights::pack(&w, n, k);
            let t = best_of(20, || packed.matmul_accumulate(&a, m, &mut out, threads));
            println!(
                "{m}x{n}x{k} f32 (ours, {:?}): {:.0} GFLOP/s",
                perceiver::engine::sgemm::kernel(),
                flop / t / 1e9
            );
            ours.push((format!("{m}x{n}x{k}"), flop / t / 1e9));
        }
        let packed = PackedMatrix::pack_transposed(&w, n, k);
        let t = best_of(20, || packed.matmul_accumulate(&a, m, &mut out, threads));
        println!(
            "{m}x{n}x{k} bf16 ({:?}): {:.0} GFLOP/s",
            perceiver::engine::bf16::Kernel::detect(),
            flop / t / 1e9
        );
    }
    // Measured before and after the products; the shares are of the higher (a busy machine
    // lowers either).
    let (Some(before), Some(after)) = (peak_before, fma_peak(threads)) else {
        println!("f32 FMA peak: no AVX2 or AVX-512 here");
        return;
    };
    let peak = before.max(after);
    println!("f32 FMA peak on {threads} threads: {before:.0} GFLOP/s before the products, {after:.0} after");
    for (shape, gflops) in ours {
        println!(
            "{shape} f32 (ours): {:.0}% of the FMA peak",
            100.0 * gflops / peak
        );
    }
}
