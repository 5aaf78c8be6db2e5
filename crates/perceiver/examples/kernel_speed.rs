//! Speed of the engine's matrix products on the 201M model's latent-layer shapes:
//! `cargo run --release -p perceiver --example kernel_speed`. Prints GFLOP/s (best of 20).

use std::time::Instant;

use perceiver::engine::bf16::PackedMatrix;
use perceiver::engine::matmul::{matmul, Rhs, View};

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
            println!("{m}x{n}x{k} f32 (ours, AVX-512): {:.0} GFLOP/s", flop / t / 1e9);
        }
        let packed = PackedMatrix::pack_transposed(&w, n, k);
        let t = best_of(20, || packed.matmul_accumulate(&a, m, &mut out, threads));
        println!(
            "{m}x{n}x{k} bf16 ({:?}): {:.0} GFLOP/s",
            perceiver::engine::bf16::Kernel::detect(),
            flop / t / 1e9
        );
    }
}
