//! CPU compute kernels: the numeric routines under a transformer's forward and backward passes,
//! on plain `f32` slices. The crate knows nothing of models, checkpoints or tensor libraries.
//!
//! - [`cpu`]: what the CPU has (AVX2, AVX-512, AVX-512 BF16, AMX) and the one place the
//!   kernels are chosen, with the environment switches that override the choice;
//! - [`sgemm`]: f32 products with a weight matrix packed once ([`sgemm::PackedWeights`]), on
//!   AVX-512 or AVX2+FMA microkernels;
//! - [`bf16`]: products with bf16 operands and f32 accumulation ([`bf16::PackedMatrix`]), on
//!   AMX tiles ([`amx`]), AVX-512 BF16, AVX2 or plain Rust;
//! - [`matmul`](mod@matmul): f32 products of strided views through the `gemm` crate, the
//!   portable path where no packed kernel runs;
//! - [`rows`]: LayerNorm, softmax, element-wise [`Activation`]s and bias adds, vectorised for
//!   the CPU at hand;
//! - [`peak`]: the CPU's f32 fused multiply-add, bf16 dot-product and AMX peaks, to judge the products against;
//! - [`emulated512`]: the AVX-512 intrinsics the microkernels use, emulated, so that tests
//!   check the AVX-512 code on any CPU.
//!
//! Work is split over rayon's current pool; the products take a `threads` count that sets how
//! many tasks they cut the work into (at most [`MAX_THREADS`]).
//!
//! ```
//! use perceiver_kernels::matmul::{matmul, Rhs, View};
//! use perceiver_kernels::{rows, sgemm, Activation};
//!
//! // A dense layer relu(x·Wᵀ + b), W stored `[out, in]` = `[2, 3]`.
//! let w = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
//! let b = [0.5, -0.5];
//! let x = [1.0, 2.0, 3.0];
//! let y = if sgemm::available() {
//!     // W packed once for the CPU's kernel; bias and activation applied by the product.
//!     sgemm::PackedWeights::pack(&w, 2, 3).linear(&x, 1, &b, Some(Activation::Relu), 1)
//! } else {
//!     let mut y = rows::repeat_rows(&b, 1);
//!     let w = Rhs::Transposed(View::dense(&w, 2, 3));
//!     matmul(&mut y, 2, View::dense(&x, 1, 3), w, 1.0, true, 1);
//!     rows::activate(&mut y, Activation::Relu);
//!     y
//! };
//! assert_eq!(y, [1.5, 4.5]);
//!
//! let normed = rows::layer_norm(&y, &[1.0, 1.0], &[0.0, 0.0], 1e-5);
//! assert!((normed[0] + 1.0).abs() < 1e-4 && (normed[1] - 1.0).abs() < 1e-4);
//! let mut probs = y;
//! rows::softmax(&mut probs, 2);
//! assert!((probs[0] + probs[1] - 1.0).abs() < 1e-6 && probs[1] > probs[0]);
//! ```

#![warn(missing_docs)]

mod activation;
mod aligned;
pub mod amx;
pub mod bf16;
pub mod cpu;
pub mod emulated512;
pub mod matmul;
pub mod peak;
pub mod rows;
mod send_ptr;
pub mod sgemm;

/// The most threads a product cuts its work for: a larger `threads` count is taken as this
/// many. Past the cores more tasks only add overhead, and the splits' arithmetic (tasks ×
/// panels, rows per thread) stays far from overflow.
pub const MAX_THREADS: usize = 1024;

/// `threads` as the products use it: 1 to [`MAX_THREADS`] (0 is one thread).
pub(crate) fn clamp_threads(threads: usize) -> usize {
    threads.clamp(1, MAX_THREADS)
}

pub use activation::Activation;
pub use send_ptr::SendPtr;
