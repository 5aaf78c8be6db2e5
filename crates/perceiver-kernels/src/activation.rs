//! [`Activation`]: the element-wise functions the kernels apply.

/// An element-wise activation function, as [`rows::activate`](crate::rows::activate) and the
/// products' fused epilogues ([`sgemm::PackedWeights::linear`](crate::sgemm::PackedWeights::linear),
/// [`bf16::PackedMatrix::linear`](crate::bf16::PackedMatrix::linear)) compute it.
///
/// The functions are computed in f32 with vectorisable polynomials for `exp` and `erf` (to about
/// 2 ulp and 5e-7 absolute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// The exact GELU, `x·Φ(x) = ½x(1 + erf(x/√2))`.
    GeluErf,
    /// The tanh approximation of GELU, `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    GeluTanh,
    /// `x·σ(1.702·x)`.
    QuickGelu,
    /// `max(x, 0)`.
    Relu,
    /// `max(x, 0)²`.
    ReluSquared,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` for `x ≥ 0`, else `0.01·x`.
    LeakyRelu,
    /// `x·σ(x)` (also called swish).
    Silu,
    /// `x·tanh(softplus(x))`.
    Mish,
    /// `x·min(max(x + 3, 0), 6)/6`.
    HardSwish,
    /// `σ(x) = 1/(1 + e⁻ˣ)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// The identity.
    Linear,
}

impl Activation {
    /// Every variant, for tests and documentation.
    pub const ALL: [Activation; 13] = [
        Self::GeluErf,
        Self::GeluTanh,
        Self::QuickGelu,
        Self::Relu,
        Self::ReluSquared,
        Self::Relu6,
        Self::LeakyRelu,
        Self::Silu,
        Self::Mish,
        Self::HardSwish,
        Self::Sigmoid,
        Self::Tanh,
        Self::Linear,
    ];
}
