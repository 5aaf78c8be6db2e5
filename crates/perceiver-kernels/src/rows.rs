//! Row kernels: LayerNorm, softmax, activations, bias adds.
//!
//! Each kernel is written once as plain, branch-free Rust over slices and compiled for each
//! [`SimdLevel`](crate::cpu::SimdLevel) (the CPU the binary targets, AVX2+FMA, AVX-512), the one
//! the CPU has picked at run time. LLVM vectorises the loops; `exp` and `erf` are polynomial
//! versions it can vectorise (libm's are scalar calls, which would make GELU the slowest op of a
//! transformer layer), their multiply-adds fused in the AVX2/AVX-512 builds. Work is split over
//! rows with rayon. One kernel is written by hand in AVX-512 BF16 intrinsics instead: the
//! attention heads' exponentials rounded to bf16 (`exp_to_bf16`), where a rounding instruction
//! and `vscalefps` halve the work LLVM's version does.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::activation::Activation;
use crate::cpu::dispatch;

/// Elements per rayon task: enough work to pay for the task, few enough to balance two cores.
const MIN_ELEMENTS_PER_TASK: usize = 16 * 1024;

/// `a·b + c`, fused (one rounding) when `FMA`: only where the CPU has FMA instructions.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `eˣ` to about 2 ulp for x in [-87, 88] (Cephes' expf polynomial); inputs are clamped to that
/// range, so it never returns 0 or ∞.
/// Rounding by adding 1.5·2²³ keeps it branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    let x = x.clamp(-87.3, 88.3);
    let shifted = madd::<FMA>(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let e = madd::<FMA>(p * r, r, r) + 1.0;
    // 2ⁿ from the exponent bits; n ∈ [-126, 127] after the clamp. `shifted` lies in [2²³, 2²⁴),
    // where one ulp is 1, so its bits are ROUND's plus n: integer arithmetic only, because an
    // `as i32` (a saturating conversion) would keep the whole loop from vectorising.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e * scale
}

/// The error function to about 5e-7 absolute (Abramowitz & Stegun 7.1.26, 1.5e-7, plus f32
/// rounding).
#[inline(always)]
pub(crate) fn erf<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / madd::<FMA>(0.327_591_1, a, 1.0);
    let mut poly = madd::<FMA>(t, 1.061_405_4, -1.453_152);
    poly = madd::<FMA>(poly, t, 1.421_413_8);
    poly = madd::<FMA>(poly, t, -0.284_496_72);
    poly = madd::<FMA>(poly, t, 0.254_829_6);
    let y = madd::<FMA>(-(poly * t), exp::<FMA>(-a * a), 1.0);
    y.copysign(x)
}

#[inline(always)]
fn tanh<const FMA: bool>(x: f32) -> f32 {
    // tanh(x) = 1 - 2/(e^{2x}+1), exact enough in f32 and saturating without branches.
    1.0 - 2.0 / (exp::<FMA>(2.0 * x) + 1.0)
}

#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// One activation on one value, as [`Activation`] defines it.
#[inline(always)]
fn activation<const FMA: bool>(x: f32, act: Activation) -> f32 {
    match act {
        Activation::GeluErf => 0.5 * x * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // √(2/π)
            0.5 * x * (1.0 + tanh::<FMA>(C * (x + 0.044_715 * x * x * x)))
        }
        Activation::QuickGelu => x * sigmoid::<FMA>(1.702 * x),
        Activation::Relu => x.max(0.0),
        Activation::ReluSquared => x.max(0.0) * x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::LeakyRelu => {
            if x >= 0.0 {
                x
            } else {
                0.01 * x
            }
        }
        Activation::Silu => x * sigmoid::<FMA>(x),
        Activation::Mish => {
            let softplus = x.max(0.0) + (1.0 + exp::<FMA>(-x.abs())).ln();
            x * tanh::<FMA>(softplus)
        }
        Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Sigmoid => sigmoid::<FMA>(x),
        Activation::Tanh => tanh::<FMA>(x),
        Activation::Linear => x,
    }
}

#[inline(always)]
fn activate_body<const FMA: bool>(x: &mut [f32], act: Activation) {
    // One loop per activation so each is a straight vectorisable loop.
    macro_rules! each {
        ($($variant:ident),*) => {
            match act {
                $(Activation::$variant => x.iter_mut().for_each(|v| *v = activation::<FMA>(*v, Activation::$variant)),)*
            }
        };
    }
    each!(
        GeluErf,
        GeluTanh,
        QuickGelu,
        Relu,
        ReluSquared,
        Relu6,
        LeakyRelu,
        Silu,
        Mish,
        HardSwish,
        Sigmoid,
        Tanh,
        Linear
    );
}

dispatch!(
    /// [`activate`] on the calling thread.
    pub(crate) fn activate_chunk(x: &mut [f32], act: Activation) => activate_body::<FMA>
);

/// Applies `act` to every element, in place.
pub fn activate(x: &mut [f32], act: Activation) {
    if act == Activation::Linear {
        return;
    }
    x.par_chunks_mut(MIN_ELEMENTS_PER_TASK)
        .for_each(|chunk| activate_chunk(chunk, act));
}

/// Whether [`activation_gradient`] covers `act` (the GELUs, whose gradient composed of
/// elementwise tensor operations takes a dozen passes).
pub fn has_fused_gradient(act: Activation) -> bool {
    matches!(act, Activation::GeluErf | Activation::GeluTanh)
}

/// d act / dx at x, for the activations of [`has_fused_gradient`] (1 for the others: unused).
#[inline(always)]
fn activation_derivative<const FMA: bool>(x: f32, act: Activation) -> f32 {
    match act {
        // Φ(x) + x·φ(x)
        Activation::GeluErf => {
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            0.5 * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2))
                + x * INV_SQRT_2PI * exp::<FMA>(-0.5 * x * x)
        }
        // With u = C(x + 0.044715x³) and t = tanh(u): ½(1 + t) + ½x(1 − t²)·C(1 + 3·0.044715x²).
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6;
            let t = tanh::<FMA>(C * (x + 0.044_715 * x * x * x));
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x)
        }
        _ => 1.0,
    }
}

#[inline(always)]
fn activation_gradient_body<const FMA: bool>(x: &[f32], grad: &mut [f32], act: Activation) {
    // Indexed loops, not a zip's fold: the fold is a generic function of its own that LLVM may
    // leave out of line, compiled without the caller's FMA (each multiply-add a libm call).
    let n = grad.len().min(x.len());
    let (x, grad) = (&x[..n], &mut grad[..n]);
    match act {
        Activation::GeluErf => {
            for i in 0..n {
                grad[i] *= activation_derivative::<FMA>(x[i], Activation::GeluErf);
            }
        }
        Activation::GeluTanh => {
            for i in 0..n {
                grad[i] *= activation_derivative::<FMA>(x[i], Activation::GeluTanh);
            }
        }
        _ => {}
    }
}

dispatch!(fn activation_gradient_chunk(x: &[f32], grad: &mut [f32], act: Activation) => activation_gradient_body::<FMA>);

/// `grad ⊙ act'(x)` in place: the gradient through an activation of [`has_fused_gradient`].
///
/// # Panics
/// If `x` and `grad` differ in length or `act` has no fused gradient.
pub fn activation_gradient(x: &[f32], grad: &mut [f32], act: Activation) {
    assert_eq!(x.len(), grad.len(), "activation gradient: lengths differ");
    assert!(
        has_fused_gradient(act),
        "activation gradient: none fused for {act:?}"
    );
    grad.par_chunks_mut(MIN_ELEMENTS_PER_TASK)
        .zip(x.par_chunks(MIN_ELEMENTS_PER_TASK))
        .for_each(|(g, x)| activation_gradient_chunk(x, g, act));
}

#[inline(always)]
fn layer_norm_body(input: &[f32], out: &mut [MaybeUninit<f32>], weight: &[f32], bias: &[f32], eps: f32) {
    let n = weight.len();
    for (x, y) in input.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        // Two passes (mean, then the centred variance), each over independent partial sums
        // (see `PARTIALS`), added up in a fixed order.
        let mean = sum_by(x, |v| v) / n as f32;
        let var = sum_by(x, |v| (v - mean) * (v - mean));
        let inv = 1.0 / (var / n as f32 + eps).sqrt();
        for i in 0..n {
            y[i] = MaybeUninit::new((x[i] - mean) * inv * weight[i] + bias[i]);
        }
    }
}

/// Running sums or maxima kept side by side in the row reductions: four 16-lane vectors (eight
/// of 8 lanes on AVX2), so that each add or max waits on the one four (AVX2: eight) vectors
/// back, not on the one before it (with a single vector of partials, a 1,280-wide row's sum is
/// 80 adds in a chain of their latency).
const PARTIALS: usize = 64;

/// `x` folded into [`PARTIALS`] lanes by `op` (lane `i` takes the values at `i` mod 64, then
/// the values past the last whole 64 go 16 at a time into the first 16 lanes), and the last
/// `x.len() % 16` values, left to the caller.
#[inline(always)]
fn fold_partials(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> ([f32; PARTIALS], &[f32]) {
    let mut acc = [init; PARTIALS];
    let mut wide = x.chunks_exact(PARTIALS);
    for c in &mut wide {
        for i in 0..PARTIALS {
            acc[i] = op(acc[i], c[i]);
        }
    }
    let mut narrow = wide.remainder().chunks_exact(16);
    for c in &mut narrow {
        for i in 0..16 {
            acc[i] = op(acc[i], c[i]);
        }
    }
    (acc, narrow.remainder())
}

/// The partials folded pairwise by `op` (a tree of six levels, not a chain of 64).
#[inline(always)]
fn fold_tree(mut acc: [f32; PARTIALS], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = PARTIALS / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] = op(acc[i], acc[i + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// `Σ f(v)` over `x`: over [`PARTIALS`] running sums, added up as a tree, then the tail.
#[inline(always)]
fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (partials, tail) = fold_partials(x, 0.0, |acc, v| acc + f(v));
    fold_tree(partials, |a, b| a + b) + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// Sets each value v of `row` to `exp(v − max)` and returns their sum: one pass where an exp
/// pass and [`sum_by`] would read the row twice, the sum's partials and order those of
/// `sum_by` over the exponentials (the same bits). Each step takes [`PARTIALS`] values, so that
/// the exponentials of four vectors are in flight at once.
#[inline(always)]
fn exp_in_place_summed<const FMA: bool>(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; PARTIALS];
    let mut wide = row.chunks_exact_mut(PARTIALS);
    for c in &mut wide {
        for i in 0..PARTIALS {
            c[i] = exp::<FMA>(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut narrow = wide.into_remainder().chunks_exact_mut(16);
    for c in &mut narrow {
        for i in 0..16 {
            c[i] = exp::<FMA>(c[i] - max);
            acc[i] += c[i];
        }
    }
    let tail = narrow.into_remainder();
    tail.iter_mut().for_each(|v| *v = exp::<FMA>(*v - max));
    fold_tree(acc, |a, b| a + b) + tail.iter().sum::<f32>()
}

/// The largest value of `x` (not NaN-aware), over [`PARTIALS`] running maxima: a plain `fold`
/// with `f32::max` does not vectorise (LLVM keeps `maxnum` reductions in order).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let (partials, tail) = fold_partials(x, f32::NEG_INFINITY, larger);
    let head = fold_tree(partials, larger);
    tail.iter().copied().fold(head, larger)
}

dispatch!(
    /// LayerNorm of each row of `input` into the same rows of `out`, every element written.
    fn layer_norm_rows(input: &[f32], out: &mut [MaybeUninit<f32>], weight: &[f32], bias: &[f32], eps: f32) => layer_norm_body
);

/// LayerNorm of each row of `input` (`[rows, weight.len()]`) into a new buffer:
/// `(x − mean) / √(var + eps) · weight + bias`, with the mean and the (biased) variance of the
/// row computed in two passes. The buffer is not zeroed first: the rows write every element.
///
/// # Panics
/// If `input` is not whole rows of `weight.len()` values.
pub fn layer_norm(input: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    assert_eq!(input.len() % width, 0, "layer_norm: input is not whole rows");
    let mut out = Vec::with_capacity(input.len());
    let rows_per_task = (MIN_ELEMENTS_PER_TASK / width).max(1);
    input
        .par_chunks(rows_per_task * width)
        .zip(out.spare_capacity_mut()[..input.len()].par_chunks_mut(rows_per_task * width))
        .for_each(|(x, y)| layer_norm_rows(x, y, weight, bias, eps));
    // SAFETY: the chunks of whole rows cover all input.len() elements (a multiple of the
    // width, asserted), and each row writes all of its elements.
    unsafe { out.set_len(input.len()) };
    out
}

/// LayerNorm of whole rows of `input` into `out` (the same length) on the calling thread, as
/// [`layer_norm`] computes each row: for a caller that makes rows one at a time (a bf16
/// product's input, [`crate::bf16::Rows::Made`]).
///
/// # Panics
/// If `input` is not whole rows of `weight.len()` values or `out` differs in length.
pub fn layer_norm_into(input: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    assert!(
        !weight.is_empty() && input.len().is_multiple_of(weight.len()),
        "layer_norm: input is not whole rows"
    );
    assert_eq!(input.len(), out.len(), "layer_norm: output length differs");
    // SAFETY: f32s viewed as possibly uninitialised f32s (same layout); only values are
    // written through the view.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    layer_norm_rows(input, out, weight, bias, eps);
}

#[inline(always)]
fn softmax_body<const FMA: bool>(rows: &mut [f32], width: usize) {
    for row in rows.chunks_exact_mut(width) {
        let max = max_of(row);
        let inv = 1.0 / exp_in_place_summed::<FMA>(row, max);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

dispatch!(
    /// Softmax over each row of `rows` (`[n, width]`), in place, on the calling thread.
    pub fn softmax_rows(rows: &mut [f32], width: usize) => softmax_body::<FMA>
);

#[inline(always)]
fn softmax_into_body<const FMA: bool>(row: &[f32], out: &mut [f32]) {
    assert_eq!(row.len(), out.len(), "softmax: the output row's length differs");
    let max = max_of(row);
    out.copy_from_slice(row);
    let inv = 1.0 / exp_in_place_summed::<FMA>(out, max);
    out.iter_mut().for_each(|v| *v *= inv);
}

dispatch!(
    /// The softmax of one row into `out` (the same length), as [`softmax_rows`] computes it
    /// in place (the same bits), on the calling thread: for a caller that makes a product's rows
    /// one at a time from scores it keeps ([`crate::bf16::Rows::Made`]), with no copy first.
    pub fn softmax_row_into(row: &[f32], out: &mut [f32]) => softmax_into_body::<FMA>
);

#[inline(always)]
fn exp_to_bf16_body<const FMA: bool>(
    row: &[f32],
    floor: f32,
    dst: &mut [MaybeUninit<u16>],
    stride: usize,
    len: usize,
) -> (f32, f32) {
    // A NaN floor stays NaN, as in the AVX-512 build (whose maximum starts from it).
    let max = match max_of(row) {
        largest if floor.is_nan() || largest < floor => floor,
        largest => largest,
    };
    let mut exps = row.to_vec();
    let sum = exp_in_place_summed::<FMA>(&mut exps, max);
    crate::bf16::convert_slices(&exps, dst, stride, len);
    (max, sum)
}

dispatch!(
    /// `exp(x − max)` of each value x of `row` (max: the row's largest, or `floor` where that
    /// is larger), rounded to bf16, into `len` halves of `dst` laid out in slices of 32 (an
    /// AMX tile row's 16 pairs) `stride` halves apart, zero past the row; returns the max and
    /// the exponentials' sum in f32 (of the values before rounding). With a floor of `-∞` the
    /// softmax of the row is these over the sum: attention's weights as [`crate::amx`]'s tiles
    /// read them, the division left to the weighted sum's rows; with the running maximum of
    /// earlier blocks of keys, one block of a softmax taken a block at a time. The portable
    /// form ([`exp_to_bf16`] runs an AVX-512 BF16 one where it can).
    pub(crate) fn exp_to_bf16_slices(row: &[f32], floor: f32, dst: &mut [MaybeUninit<u16>], stride: usize, len: usize) -> (f32, f32) => exp_to_bf16_body::<FMA>
);

/// [`exp_to_bf16_slices`] into `len` halves (whole slices of 32, at least the row) at `dst`: on
/// AVX-512 BF16 where the CPU has it and the row kernels run AVX-512 (a polynomial of its own
/// and one rounding instruction per 32 values), else portable. The weights of the fused
/// attention heads ([`crate::bf16::attention_head`]).
///
/// # Safety
/// `dst` must be valid for writes of the `len / 32` slices, `stride` halves apart.
///
/// # Panics
/// Unless `len` is a multiple of 32 and at least the row's length.
pub(crate) unsafe fn exp_to_bf16(row: &[f32], dst: *mut u16, stride: usize, len: usize) -> f32 {
    // SAFETY: as the caller promises.
    unsafe { exp_to_bf16_above(row, f32::NEG_INFINITY, dst, stride, len).1 }
}

/// [`exp_to_bf16`] with the maximum taken no lower than `floor` (the running maximum of a
/// softmax taken a block of keys at a time): returns that maximum and the sum.
///
/// # Safety
/// As [`exp_to_bf16`].
///
/// # Panics
/// As [`exp_to_bf16`].
pub(crate) unsafe fn exp_to_bf16_above(
    row: &[f32],
    floor: f32,
    dst: *mut u16,
    stride: usize,
    len: usize,
) -> (f32, f32) {
    check_exp_len(row, len);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::row_level() == crate::cpu::SimdLevel::Avx512 && crate::cpu::avx512_bf16() {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked); `dst` as the caller promises.
        return unsafe { exp_to_bf16_avx512(row, floor, dst, stride, len) };
    }
    // SAFETY: as the caller promises; the length checked above.
    unsafe { portable_exp_to_bf16(row, floor, dst, stride, len) }
}

/// Panics unless `len` halves are whole slices of 32 and hold `row`: [`exp_to_bf16`]'s bound.
fn check_exp_len(row: &[f32], len: usize) {
    assert!(
        len.is_multiple_of(32) && row.len() <= len,
        "exp_to_bf16: {len} halves for a row of {}",
        row.len()
    );
}

/// [`exp_to_bf16`] in its portable form ([`exp_to_bf16_slices`]), from a raw `dst`: what the
/// emulated AMX tiles run.
///
/// # Safety
/// As [`exp_to_bf16`].
pub(crate) unsafe fn exp_to_bf16_portable(row: &[f32], dst: *mut u16, stride: usize, len: usize) -> f32 {
    check_exp_len(row, len);
    // SAFETY: as the caller promises; the length checked above.
    unsafe { portable_exp_to_bf16(row, f32::NEG_INFINITY, dst, stride, len).1 }
}

/// [`exp_to_bf16_portable`] once its length is checked.
///
/// # Safety
/// As [`exp_to_bf16`]; `len` as [`check_exp_len`] requires.
unsafe fn portable_exp_to_bf16(
    row: &[f32],
    floor: f32,
    dst: *mut u16,
    stride: usize,
    len: usize,
) -> (f32, f32) {
    let slices = len / 32;
    // SAFETY: the `len / 32` slices at `dst` are writable (the caller's promise).
    let dst = unsafe {
        std::slice::from_raw_parts_mut(
            dst.cast::<MaybeUninit<u16>>(),
            slices.saturating_sub(1) * stride + 32.min(len),
        )
    };
    exp_to_bf16_slices(row, floor, dst, stride, len)
}

/// [`exp_to_bf16`] on AVX-512 BF16: `exp(d)` as `2ⁿ · p(f)` (d · log₂e = n + f, |f| ≤ ½,
/// p the degree-5 Taylor polynomial of `2^f`, within 3e-6 of it: far inside the bf16 rounding that
/// follows, 2⁻⁹), scaled by `vscalefps`, rounded by `vcvtne2ps2bf16` (nearest even, as
/// [`crate::bf16::to_bf16_bits`], denormals to zero). About 14 instructions per 16 values where
/// the portable form takes about 30.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16; `dst` valid for writes of the `len / 32` slices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn exp_to_bf16_avx512(
    row: &[f32],
    floor: f32,
    dst: *mut u16,
    stride: usize,
    len: usize,
) -> (f32, f32) {
    use std::arch::x86_64::*;
    const SLICE: usize = 32;
    let (n, x) = (row.len(), row.as_ptr());
    let lanes = |from: usize| -> __mmask16 {
        match n.saturating_sub(from) {
            left if left >= 16 => 0xffff,
            left => (1u16 << left) - 1,
        }
    };
    // SAFETY: every load is masked to the row's lanes; every store is one slice of `dst`.
    unsafe {
        let mut largest = _mm512_set1_ps(floor);
        for at in (0..n).step_by(16) {
            let m = lanes(at);
            largest = _mm512_mask_max_ps(largest, m, _mm512_maskz_loadu_ps(m, x.add(at)), largest);
        }
        let max_value = _mm512_reduce_max_ps(largest);
        let max = _mm512_set1_ps(max_value);
        // Below 2⁻¹⁴⁴ a weight is 0 in bf16; the clamp at `lowest` keeps n finite (a NaN stays
        // NaN: `max` returns its second operand when either is NaN).
        let (lowest, log2e) = (_mm512_set1_ps(-100.0), _mm512_set1_ps(std::f32::consts::LOG2_E));
        let c = [
            1.0,
            std::f32::consts::LN_2,
            0.240_226_5,
            0.055_504_11,
            0.009_618_129,
            0.001_333_355_8,
        ]
        .map(|v: f32| _mm512_set1_ps(v));
        let exp = |v: __m512| {
            let t = _mm512_mul_ps(_mm512_max_ps(lowest, _mm512_sub_ps(v, max)), log2e);
            let whole = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, whole);
            let mut p = _mm512_fmadd_ps(c[5], f, c[4]);
            p = _mm512_fmadd_ps(p, f, c[3]);
            p = _mm512_fmadd_ps(p, f, c[2]);
            p = _mm512_fmadd_ps(p, f, c[1]);
            p = _mm512_fmadd_ps(p, f, c[0]);
            _mm512_scalef_ps(p, whole)
        };
        let (mut sum_lo, mut sum_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for slice in 0..len / SLICE {
            let at = slice * SLICE;
            let to = dst.add(slice * stride).cast::<__m512i>();
            if at >= n {
                _mm512_storeu_si512(to, _mm512_setzero_si512());
                continue;
            }
            let (m_lo, m_hi) = (lanes(at), lanes(at + 16));
            let lo = _mm512_maskz_mov_ps(m_lo, exp(_mm512_maskz_loadu_ps(m_lo, x.add(at))));
            let hi = _mm512_maskz_mov_ps(m_hi, exp(_mm512_maskz_loadu_ps(m_hi, x.add(at + 16))));
            sum_lo = _mm512_add_ps(sum_lo, lo);
            sum_hi = _mm512_add_ps(sum_hi, hi);
            _mm512_storeu_si512(
                to,
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)),
            );
        }
        (max_value, _mm512_reduce_add_ps(_mm512_add_ps(sum_lo, sum_hi)))
    }
}

#[inline(always)]
fn scale_row_body(row: &mut [f32], factor: f32) {
    row.iter_mut().for_each(|v| *v *= factor);
}

dispatch!(
    /// Every value of `row` times `factor`, on the calling thread.
    pub(crate) fn scale_row(row: &mut [f32], factor: f32) => scale_row_body
);

/// [`softmax_rows`] split over rayon's pool in chunks of whole rows.
pub fn softmax(rows: &mut [f32], width: usize) {
    let rows_per_task = (MIN_ELEMENTS_PER_TASK / width.max(1)).max(1);
    rows.par_chunks_mut(rows_per_task * width.max(1))
        .for_each(|chunk| softmax_rows(chunk, width));
}

#[inline(always)]
fn online_softmax_body<const FMA: bool>(
    scores: &mut [f32],
    width: usize,
    max: &mut [f32],
    sum: &mut [f32],
    acc: &mut [f32],
    acc_width: usize,
) {
    let rows = scores
        .chunks_exact_mut(width)
        .zip(max.iter_mut().zip(sum.iter_mut()))
        .zip(acc.chunks_exact_mut(acc_width));
    for ((row, (max, sum)), acc) in rows {
        let new_max = max_of(row).max(*max);
        // The first block's running max is -∞: exp clamps its argument, so the factor is a
        // tiny number times a zero sum and a zero accumulator, never a NaN.
        let factor = exp::<FMA>(*max - new_max);
        *sum = *sum * factor + exp_in_place_summed::<FMA>(row, new_max);
        acc.iter_mut().for_each(|v| *v *= factor);
        *max = new_max;
    }
}

dispatch!(
    /// One block of keys of a softmax computed a block at a time (the running-maximum form of
    /// attention): for each row of `scores` (`[n, width]`, that block's scores), with `max` and
    /// `sum` the row's running maximum and sum of exponentials over the blocks before (`-∞` and
    /// 0 before the first), sets the scores to `exp(score − new max)`, rescales the running sum
    /// and the row of `acc` (`[n, acc_width]`, the weighted sum of the blocks before) to the new
    /// maximum, and adds the block's exponentials to the sum. After the last block,
    /// `acc / sum` is the softmax-weighted sum over all of them. On the calling thread.
    pub fn online_softmax_rows(
        scores: &mut [f32],
        width: usize,
        max: &mut [f32],
        sum: &mut [f32],
        acc: &mut [f32],
        acc_width: usize
    ) => online_softmax_body::<FMA>
);

/// [`online_softmax_rows`] split over rayon's pool in chunks of whole rows.
///
/// # Panics
/// If the slices do not hold the same number of rows.
pub fn online_softmax(
    scores: &mut [f32],
    width: usize,
    max: &mut [f32],
    sum: &mut [f32],
    acc: &mut [f32],
    acc_width: usize,
) {
    let n = max.len();
    assert!(
        width > 0
            && acc_width > 0
            && scores.len() == n * width
            && sum.len() == n
            && acc.len() == n * acc_width,
        "online_softmax: {} scores, {} sums and {} accumulated values are not {n} rows",
        scores.len(),
        sum.len(),
        acc.len()
    );
    let rows_per_task = (MIN_ELEMENTS_PER_TASK / width).max(1);
    scores
        .par_chunks_mut(rows_per_task * width)
        .zip(max.par_chunks_mut(rows_per_task))
        .zip(sum.par_chunks_mut(rows_per_task))
        .zip(acc.par_chunks_mut(rows_per_task * acc_width))
        .for_each(|(((s, m), l), a)| online_softmax_rows(s, width, m, l, a, acc_width));
}

#[inline(always)]
fn add_rows_body(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

dispatch!(
    /// Adds `bias` to every row of `rows` (`[n, bias.len()]`) on the calling thread: a block of
    /// C as a product's task takes it.
    pub(crate) fn add_rows_chunk(rows: &mut [f32], bias: &[f32]) => add_rows_body
);

/// Adds `bias` to every row of `rows` (`[n, bias.len()]`), in place.
pub fn add_to_rows(rows: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    let rows_per_task = (MIN_ELEMENTS_PER_TASK / width).max(1);
    rows.par_chunks_mut(rows_per_task * width)
        .for_each(|chunk| add_rows_chunk(chunk, bias));
}

/// `rows` (`[n, bias.len()]`) filled with copies of `bias`.
pub fn repeat_rows(bias: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * bias.len());
    for _ in 0..n {
        out.extend_from_slice(bias);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// The AVX-512 BF16 exponentials against the portable ones (where the CPU has AVX-512 BF16),
    /// with no floor under the maximum, one among the scores and one above them all (a running
    /// maximum): the same maximum, and each weight within one bf16 step of the portable one
    /// (both round `exp(x − max)` to nearest, from polynomials up to about 3e-6 apart); the
    /// halves past the row zero, and those between one slice and the next (`stride` > 32) left
    /// as they were; the sums within 1e-5 relative. Rows shorter than a slice, ending in either
    /// half of one, whole slices, scores spread up to ±200 (differences far beyond the
    /// exponentials' range) and one row of equal scores.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_exponentials_match_the_portable_ones() {
        if !crate::cpu::avx512_bf16() {
            println!("skipped: the CPU has no AVX-512 BF16");
            return;
        }
        let stride = 48;
        for (n, spread, seed) in [
            (5, 3.0, 1),
            (27, 10.0, 6),
            (32, 200.0, 2),
            (50, 30.0, 7),
            (70, 30.0, 3),
            (81, 200.0, 8),
            (300, 200.0, 4),
            (64, 0.0, 5),
        ] {
            let row = match spread {
                0.0 => vec![1.5; n],
                _ => random(n, spread, seed),
            };
            let len = n.div_ceil(32) * 32 + 32;
            let slices = len / 32;
            // No floor, one among the scores, one above them all (a running maximum).
            let largest = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for floor in [f32::NEG_INFINITY, spread / 2.0, largest + 2.0] {
                let run = |avx512: bool| {
                    let mut dst = vec![0xBEEFu16; slices * stride];
                    // SAFETY: `dst` holds `slices` slices `stride` halves apart; the CPU has AVX-512
                    // F and BF16 (checked above); `len` is whole slices holding the row.
                    let (max, sum) = unsafe {
                        match avx512 {
                            true => exp_to_bf16_avx512(&row, floor, dst.as_mut_ptr(), stride, len),
                            false => portable_exp_to_bf16(&row, floor, dst.as_mut_ptr(), stride, len),
                        }
                    };
                    (dst, max, sum)
                };
                let ((fast, fast_max, fast_sum), (portable, portable_max, portable_sum)) =
                    (run(true), run(false));
                let want_max = row.iter().copied().fold(floor, f32::max);
                assert_eq!(
                    (fast_max, portable_max),
                    (want_max, want_max),
                    "n {n}, floor {floor}: maxima"
                );
                for (i, (&a, &b)) in fast.iter().zip(&portable).enumerate() {
                    let (slice, lane) = (i / stride, i % stride);
                    let at = slice * 32 + lane;
                    match (lane < 32, at < n) {
                        (false, _) => assert_eq!((a, b), (0xBEEF, 0xBEEF), "n {n}: the gap at {i} written"),
                        (true, false) => assert_eq!((a, b), (0, 0), "n {n}: past the row at {at}"),
                        (true, true) => {
                            let (x, y) = (crate::bf16::from_bf16_bits(a), crate::bf16::from_bf16_bits(b));
                            // The smallest weights may differ outright: the portable exponential
                            // clamps at e^-87.3 (about 1.2e-38), the AVX-512 one flushes what falls
                            // below 2^-126 (about 1.18e-38) to zero.
                            let step = (y.abs() / 128.0).max(2.0 * f32::MIN_POSITIVE);
                            assert!((x - y).abs() <= step, "n {n}, value {at}: {x} against {y}");
                        }
                    }
                }
                let relative = ((fast_sum - portable_sum) / portable_sum).abs();
                println!(
                    "n {n}, spread {spread}, floor {floor}: sums {fast_sum} / {portable_sum}, {relative:.1e}"
                );
                assert!(
                    relative < 1e-5,
                    "n {n}, floor {floor}: sums {fast_sum} against {portable_sum}"
                );
            }
        }
    }

    /// Both builds of the polynomials: with separate multiplies and adds (the baseline), and
    /// fused (the AVX2/AVX-512 builds; here `mul_add` may run in software, same results).
    #[test]
    fn exp_and_erf_match_libm() {
        fn check<const FMA: bool>() {
            let mut worst_exp = 0f64;
            let mut worst_erf = 0f64;
            for i in -90_000..=90_000 {
                let x = i as f32 * 1e-3;
                let want = (x as f64).exp();
                if want > 1e-37 && want < 1e38 {
                    worst_exp = worst_exp.max(((exp::<FMA>(x) as f64 - want) / want).abs());
                }
                if x.abs() < 10.0 {
                    worst_erf = worst_erf.max((erf::<FMA>(x) as f64 - libm::erf(x as f64)).abs());
                }
            }
            println!("FMA {FMA}: exp worst relative error {worst_exp:.2e}, erf worst absolute error {worst_erf:.2e}");
            assert!(worst_exp < 5e-7, "exp (FMA {FMA}): {worst_exp}");
            assert!(worst_erf < 1e-6, "erf (FMA {FMA}): {worst_erf}");
            assert!(exp::<FMA>(-200.0) < 2e-38);
            assert!(exp::<FMA>(200.0).is_finite());
        }
        check::<false>();
        check::<true>();
    }

    /// A row's softmax into another buffer has the bits of the same softmax in place (the bf16
    /// attention's rows are made with the one, the f32 attention's with the other).
    #[test]
    fn a_softmax_into_a_row_equals_the_one_in_place() {
        for (width, seed) in [(1, 1), (15, 2), (16, 3), (17, 4), (256, 5), (2048, 6)] {
            let row = random(width, 12.0, seed);
            let mut in_place = row.clone();
            softmax_rows(&mut in_place, width);
            let mut into = vec![f32::NAN; width];
            softmax_row_into(&row, &mut into);
            assert!(
                in_place
                    .iter()
                    .zip(&into)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "width {width}: the softmax into a row differs from the one in place"
            );
        }
    }

    /// Blocks of keys one after another give the softmax-weighted sum of them all at once.
    #[test]
    fn a_softmax_in_blocks_equals_the_whole_one() {
        let (n, keys, d) = (5, 70, 3);
        let scores = random(n * keys, 12.0, 7);
        let values = random(keys * d, 1.0, 8);
        let mut whole = scores.clone();
        softmax_rows(&mut whole, keys);
        let (mut max, mut sum, mut acc) = (vec![f32::NEG_INFINITY; n], vec![0f32; n], vec![0f32; n * d]);
        for block in [0..16, 16..17, 17..50, 50..70] {
            let w = block.len();
            let mut s: Vec<f32> = (0..n)
                .flat_map(|r| scores[r * keys + block.start..r * keys + block.end].to_vec())
                .collect();
            online_softmax(&mut s, w, &mut max, &mut sum, &mut acc, d);
            for r in 0..n {
                for c in 0..d {
                    acc[r * d + c] += (0..w)
                        .map(|j| s[r * w + j] * values[(block.start + j) * d + c])
                        .sum::<f32>();
                }
            }
        }
        let mut worst = 0f32;
        for r in 0..n {
            for c in 0..d {
                let want: f32 = (0..keys).map(|j| whole[r * keys + j] * values[j * d + c]).sum();
                worst = worst.max((acc[r * d + c] / sum[r] - want).abs());
            }
        }
        println!("blockwise softmax: worst difference {worst:.2e}");
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs = random(1000, 8.0, 1);
        for act in Activation::ALL {
            let mut got = xs.clone();
            activate(&mut got, act);
            for (&x, &g) in xs.iter().zip(&got) {
                let x64 = x as f64;
                let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
                let want = match act {
                    Activation::GeluErf => 0.5 * x64 * (1.0 + libm::erf(x64 / 2f64.sqrt())),
                    Activation::GeluTanh => {
                        0.5 * x64
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3)))
                                    .tanh())
                    }
                    Activation::QuickGelu => x64 * sig(1.702 * x64),
                    Activation::Relu => x64.max(0.0),
                    Activation::ReluSquared => x64.max(0.0).powi(2),
                    Activation::Relu6 => x64.clamp(0.0, 6.0),
                    Activation::LeakyRelu => {
                        if x64 >= 0.0 {
                            x64
                        } else {
                            0.01 * x64
                        }
                    }
                    Activation::Silu => x64 * sig(x64),
                    Activation::Mish => x64 * (x64.exp().ln_1p()).tanh(),
                    Activation::HardSwish => x64 * (x64 + 3.0).clamp(0.0, 6.0) / 6.0,
                    Activation::Sigmoid => sig(x64),
                    Activation::Tanh => x64.tanh(),
                    Activation::Linear => x64,
                };
                let err = (g as f64 - want).abs() / want.abs().max(1.0);
                assert!(err < 2e-6, "{act:?}({x}) = {g}, expected {want}");
            }
        }
    }

    /// LayerNorm (with a small and a large epsilon) and softmax against f64 loops, on widths that
    /// are and are not multiples of the vector width, over enough rows to be split between
    /// threads.
    #[test]
    fn row_kernels_match_plain_loops() {
        for (i, (rows, width)) in [(1, 1), (3, 7), (5, 16), (300, 33), (64, 1280), (2, 4099)]
            .into_iter()
            .enumerate()
        {
            let eps = if i % 2 == 0 { 1e-5f32 } else { 0.5 };
            let x = random(rows * width, 3.0, width as u64);
            let w = random(width, 1.0, 7);
            let b = random(width, 1.0, 8);
            let got = layer_norm(&x, &w, &b, eps);
            let mut by_rows = vec![f32::NAN; x.len()];
            for (x, out) in x.chunks(width).zip(by_rows.chunks_mut(width)) {
                layer_norm_into(x, out, &w, &b, eps);
            }
            assert!(got.iter().zip(&by_rows).all(|(a, b)| a.to_bits() == b.to_bits()));
            let mut soft = x.clone();
            softmax_rows(&mut soft, width);
            let mut shifted = x.clone();
            add_to_rows(&mut shifted, &b);
            for r in 0..rows {
                let row: Vec<f64> = x[r * width..(r + 1) * width].iter().map(|&v| v as f64).collect();
                let mean = row.iter().sum::<f64>() / width as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let total: f64 = row.iter().map(|v| (v - max).exp()).sum();
                for c in 0..width {
                    let i = r * width + c;
                    let ln = (row[c] - mean) / (var + eps as f64).sqrt() * w[c] as f64 + b[c] as f64;
                    assert!(
                        (got[i] as f64 - ln).abs() < 1e-4,
                        "layer_norm {rows}x{width} [{r},{c}]"
                    );
                    let sm = (row[c] - max).exp() / total;
                    assert!(
                        (soft[i] as f64 - sm).abs() < 1e-6,
                        "softmax {rows}x{width} [{r},{c}]"
                    );
                    assert_eq!(shifted[i], x[i] + b[c]);
                }
            }
        }
    }
}
