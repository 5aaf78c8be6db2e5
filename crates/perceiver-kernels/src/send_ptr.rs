//! [`SendPtr`]: one output buffer shared by parallel tasks.

/// A raw pointer that parallel tasks writing disjoint parts of one buffer share (each kernel
/// states which part its tasks own).
#[derive(Debug, Clone, Copy)]
pub struct SendPtr(pub *mut f32);

// SAFETY: the pointer is only dereferenced (in unsafe code) by tasks that write disjoint
// elements, while the buffer's owner waits for them (rayon scopes).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer; a method, so that closures capture the whole (Send) wrapper.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
