//! Speed of the matrix products on the shapes of a transformer layer (256 rows of width 1280,
//! attention over 256 positions, a 2048-row product of width 768, …), and of the row kernels
//! (softmax, GELU, LayerNorm) on one thread:
//! `cargo run --release -p perceiver-kernels --example kernel_speed`. Prints GFLOP/s and ns per
//! element (best of 20, so a busy machine disturbs it less), and the f32 products' share of the
//! CPU's f32 FMA peak, measured in the same run ([`fma_peak_gflops`]).

use std::time::Instant;

use perceiver_kernels::bf16::PackedMatrix;
use perceiver_kernels::matmul::{matmul, Rhs, View};
use perceiver_kernels::peak::fma_peak_gflops;
use perceiver_kernels::{cpu, rows, sgemm, Activation};

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

fn main() {
    let threads = rayon::current_num_threads();
    let peak_before = fma_peak_gflops(threads);
    // Our f32 products' GFLOP/s, to compare with the peak at the end.
    let mut ours = Vec::new();
    // Attention scores of 8 heads over 256 positions (256×256 each), and an MLP's hidden
    // layer (256×1280).
    let scores: Vec<f32> = (0..8 * 256 * 256)
        .map(|i| ((i * 37) % 101) as f32 * 0.05 - 2.5)
        .collect();
    let mut work = scores.clone();
    let t = best_of(20, || {
        work.copy_from_slice(&scores);
        rows::softmax_rows(&mut work, 256);
    });
    println!(
        "softmax rows of 256: {:.2} ns/element",
        t * 1e9 / scores.len() as f64
    );
    let t = best_of(20, || {
        work.copy_from_slice(&scores);
        rows::activate(&mut work[..256 * 1280], Activation::GeluErf);
    });
    println!(
        "gelu (erf) 256x1280: {:.2} ns/element",
        t * 1e9 / (256.0 * 1280.0)
    );
    let (w, b) = (vec![1.1f32; 1280], vec![0.1f32; 1280]);
    let t = best_of(20, || {
        std::hint::black_box(rows::layer_norm(&scores[..256 * 1280], &w, &b, 1e-5));
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
        if sgemm::available() {
            let packed = sgemm::PackedWeights::pack(&w, n, k);
            let t = best_of(20, || packed.matmul_accumulate(&a, m, &mut out, threads));
            println!(
                "{m}x{n}x{k} f32 (ours, {:?}): {:.0} GFLOP/s",
                cpu::f32_kernel(),
                flop / t / 1e9
            );
            ours.push((format!("{m}x{n}x{k}"), flop / t / 1e9));
        }
        let packed = PackedMatrix::pack_transposed(&w, n, k);
        let t = best_of(20, || packed.matmul_accumulate(&a, m, &mut out, threads));
        println!(
            "{m}x{n}x{k} bf16 ({:?}): {:.0} GFLOP/s",
            cpu::bf16_kernel(),
            flop / t / 1e9
        );
    }
    // Measured before and after the products; the shares are of the higher (a busy machine
    // lowers either).
    let (Some(before), Some(after)) = (peak_before, fma_peak_gflops(threads)) else {
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
