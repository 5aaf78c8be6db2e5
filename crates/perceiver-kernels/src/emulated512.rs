//! The few AVX-512 intrinsics the packed microkernels use, emulated lane by lane in plain Rust
//! under the same names and types, so that the very source of those kernels also compiles and
//! runs on a CPU without AVX-512 (the AVX-512 kernels of [`crate::sgemm`] and [`crate::bf16`]
//! are written once, in macros expanded twice: over `std::arch` and over this module).
//!
//! It is a test device, not a fallback: a CPU without AVX-512 runs the AVX2 kernels. The
//! emulated kernels are picked for the AVX-512 layouts when the CPU lacks AVX-512: in this
//! crate's unit tests always, and everywhere when `PERCEIVER_EMULATE_AVX512` is set (see
//! [`crate::cpu::emulate_avx512`]), so that a whole test suite can check the AVX-512 paths
//! (packing, splitting, block edges, masks) on any machine. Semantics follow Intel's definitions
//! where results are checked: `fmadd` rounds once, `dpbf16` adds the odd pair's product and then
//! the even one's (each product of two bf16 values is exact in f32), masked loads and stores
//! touch only the lanes of their mask. (`dpbf16`'s flushing of denormals is not emulated.)

#![allow(non_camel_case_types)]

/// Sixteen f32 lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct __m512([f32; 16]);

/// Sixteen 32-bit integer lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct __m512i([i32; 16]);

/// Thirty-two bf16 lanes (their bits): lane `2j` is the low half of 32-bit lane `j`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct __m512bh([u16; 32]);

/// One bit per f32 lane, lane 0 in bit 0.
pub type __mmask16 = u16;

/// Sixteen zeros.
pub fn _mm512_setzero_ps() -> __m512 {
    __m512([0.0; 16])
}

/// `x` in every lane.
pub fn _mm512_set1_ps(x: f32) -> __m512 {
    __m512([x; 16])
}

/// `x` in every lane.
pub fn _mm512_set1_epi32(x: i32) -> __m512i {
    __m512i([x; 16])
}

/// Sixteen f32 from `p`.
///
/// # Safety
/// `p` must be valid for reads of 16 f32 (no alignment needed).
pub unsafe fn _mm512_loadu_ps(p: *const f32) -> __m512 {
    // SAFETY: as the caller promises.
    __m512(unsafe { p.cast::<[f32; 16]>().read_unaligned() })
}

/// Sixteen 32-bit integers from `p`.
///
/// # Safety
/// `p` must be valid for reads of 64 bytes (no alignment needed).
pub unsafe fn _mm512_loadu_si512(p: *const __m512i) -> __m512i {
    // SAFETY: as the caller promises.
    __m512i(unsafe { p.cast::<[i32; 16]>().read_unaligned() })
}

/// Lanes in `mask` read from `p + lane`, the others zero and not read.
///
/// # Safety
/// `p + lane` must be valid for reads for each lane in `mask`.
pub unsafe fn _mm512_maskz_loadu_ps(mask: __mmask16, p: *const f32) -> __m512 {
    let mut v = [0.0; 16];
    for (lane, x) in v.iter_mut().enumerate() {
        if mask >> lane & 1 == 1 {
            // SAFETY: a lane of the mask, as the caller promises.
            *x = unsafe { p.add(lane).read() };
        }
    }
    __m512(v)
}

/// Lanes in `mask` written to `p + lane`; nothing else is written.
///
/// # Safety
/// `p + lane` must be valid for writes for each lane in `mask`.
pub unsafe fn _mm512_mask_storeu_ps(p: *mut f32, mask: __mmask16, v: __m512) {
    for (lane, &x) in v.0.iter().enumerate() {
        if mask >> lane & 1 == 1 {
            // SAFETY: a lane of the mask, as the caller promises.
            unsafe { p.add(lane).write(x) };
        }
    }
}

/// `a + b` in each lane.
pub fn _mm512_add_ps(a: __m512, b: __m512) -> __m512 {
    __m512(std::array::from_fn(|lane| a.0[lane] + b.0[lane]))
}

/// `a·b + c` in each lane, rounded once.
pub fn _mm512_fmadd_ps(a: __m512, b: __m512, c: __m512) -> __m512 {
    __m512(std::array::from_fn(|lane| {
        a.0[lane].mul_add(b.0[lane], c.0[lane])
    }))
}

/// `src + a_odd·b_odd + a_even·b_even` in each f32 lane, over the lane's pair of bf16 values,
/// added in that order.
pub fn _mm512_dpbf16_ps(src: __m512, a: __m512bh, b: __m512bh) -> __m512 {
    let wide = |bits: u16| f32::from_bits(u32::from(bits) << 16);
    __m512(std::array::from_fn(|lane| {
        let odd = wide(a.0[2 * lane + 1]) * wide(b.0[2 * lane + 1]);
        let even = wide(a.0[2 * lane]) * wide(b.0[2 * lane]);
        src.0[lane] + odd + even
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpbf16_adds_each_product_in_turn() {
        // Each product 2⁻²⁴·1 is half an ulp of 1 and rounds away when added to src = 1 on its
        // own; the two summed first (2⁻²³) would not.
        let tiny = 0x3380u16; // 2⁻²⁴ in bf16
        let one = 0x3F80u16;
        let a = __m512bh([tiny; 32]);
        let b = __m512bh([one; 32]);
        let sum = _mm512_dpbf16_ps(_mm512_set1_ps(1.0), a, b);
        assert!(sum.0.iter().all(|&x| x == 1.0));
        let pairs = __m512bh(std::array::from_fn(|i| if i % 2 == 1 { 0x4000 } else { one }));
        let sum = _mm512_dpbf16_ps(_mm512_setzero_ps(), pairs, b);
        assert!(sum.0.iter().all(|&x| x == 3.0), "2·1 + 1·1");
    }

    #[test]
    fn masked_lanes_are_neither_read_nor_written() {
        let mut row = [5.0f32; 16];
        // SAFETY: the mask's lanes 0..3 lie in `row`.
        let v = unsafe { _mm512_maskz_loadu_ps(0b111, row.as_ptr()) };
        assert_eq!(&v.0[..4], &[5.0, 5.0, 5.0, 0.0]);
        // SAFETY: as above.
        unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr(), 0b101, _mm512_set1_ps(1.0)) };
        assert_eq!(&row[..4], &[1.0, 5.0, 1.0, 5.0]);
    }
}
