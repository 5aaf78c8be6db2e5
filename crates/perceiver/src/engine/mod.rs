//! The kernels: vectorised row kernels ([`kernels`]), AVX-512 / AVX2 f32 products ([`sgemm`]; the
//! `gemm` crate on strided views, [`matmul`](mod@matmul), where neither is present) and the bf16
//! path ([`bf16`], [`amx`]).

pub mod amx;
pub mod bf16;
pub mod emulated512;
pub mod kernels;
pub mod matmul;
pub mod peak;
pub mod sgemm;

/// A raw pointer that parallel tasks writing disjoint parts of one buffer share (each kernel
/// states which part its tasks own).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint elements, while the
// buffer's owner waits for them (rayon scopes).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer; a method, so that closures capture the whole (Send) wrapper.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
