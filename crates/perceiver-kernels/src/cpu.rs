//! What the CPU has, and the one place the kernels are chosen.
//!
//! Features are detected once per process. The products' kernels ([`f32_kernel`],
//! [`bf16_kernel`]) are the best the CPU runs, unless one of these environment variables (read
//! once; any value) says otherwise:
//! - `PERCEIVER_NO_AVX512`: the f32 products skip their AVX-512 kernel, and the bf16 products
//!   the widened AVX-512 one ([`Bf16Kernel::Avx512Widened`]; `vdpbf16ps` or AVX2 instead); the
//!   row kernels run their AVX2 build;
//! - `PERCEIVER_NO_AVX2`: the f32 and bf16 products skip their AVX2+FMA kernels (to test or
//!   time the portable paths on such a CPU), and so do the row kernels where they would run
//!   it;
//! - `PERCEIVER_NO_AMX`: the bf16 products skip AMX;
//! - `PERCEIVER_VDPBF16PS`: on an Intel CPU with AVX-512 BF16 (and no AMX), the bf16 products
//!   run on `vdpbf16ps` instead of widening to f32 ([`Bf16Kernel::Avx512Widened`]);
//! - `PERCEIVER_EMULATE_AVX512` ([`emulate_avx512`]): where the CPU lacks AVX-512, the f32
//!   products run the AVX-512 layouts and microkernels on emulated registers
//!   ([`crate::emulated512`]), and the bf16 products the `vdpbf16ps` kernel (likewise where
//!   AVX-512 F is there without BF16 but its widened kernel is turned off): slow, to test those
//!   paths on any machine.
//!
//! The row kernels ([`crate::rows`], and the bf16 products' packing and rounding loops) are
//! compiled for each [`SimdLevel`] and run the one [`row_level`] gives: the CPU's, lowered as
//! the two switches above say, so that `PERCEIVER_NO_AVX512` runs a whole layer as an AVX2-only
//! CPU would.

use std::sync::OnceLock;

/// The vector instructions the row kernels are compiled for, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// What the binary targets (SSE2 on x86-64), or a CPU that is not x86-64.
    Baseline,
    /// AVX2 with fused multiply-adds (FMA).
    Avx2,
    /// AVX-512 F, BW and VL, besides AVX2 and FMA.
    Avx512,
}

/// The CPU's [`SimdLevel`]; detected once.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            if avx512 {
                return SimdLevel::Avx512;
            }
            if avx2 {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    })
}

/// The [`SimdLevel`] the row kernels run at: [`simd_level`], lowered from AVX-512 to AVX2 by
/// `PERCEIVER_NO_AVX512` and from AVX2 to the baseline by `PERCEIVER_NO_AVX2` (as the products'
/// kernels are). Read once.
pub fn row_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        lowered(
            simd_level(),
            std::env::var_os("PERCEIVER_NO_AVX512").is_some(),
            std::env::var_os("PERCEIVER_NO_AVX2").is_some(),
        )
    })
}

/// `level` without AVX-512 where `no_avx512`, then without AVX2 where `no_avx2`.
fn lowered(level: SimdLevel, no_avx512: bool, no_avx2: bool) -> SimdLevel {
    let level = if no_avx512 {
        level.min(SimdLevel::Avx2)
    } else {
        level
    };
    if no_avx2 && level == SimdLevel::Avx2 {
        SimdLevel::Baseline
    } else {
        level
    }
}

/// Whether the CPU has AVX-512 F natively (the f32 products' AVX-512 kernel; where it is
/// missing, that kernel runs emulated).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 F and AVX-512 BF16 natively (the bf16 products' `vdpbf16ps`
/// kernel; where they are missing, that kernel runs emulated).
pub fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU is Intel's (CPUID's vendor string).
pub fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID is available on every x86_64 CPU (the intrinsic is safe in newer Rust).
        #[allow(unused_unsafe)]
        let leaf0 = unsafe { std::arch::x86_64::__cpuid(0) };
        // "GenuineIntel" in EBX, EDX, ECX.
        (leaf0.ebx, leaf0.edx, leaf0.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A core's L2 cache in KiB, as CPUID reports it: on Intel's CPUs from the deterministic cache
/// parameters (leaf 4, which Linux's sysfs reads too; leaf 0x8000_0006 can disagree with it in
/// a virtual machine: 256 KiB against 1,280 on an Ice Lake guest), on others from leaf
/// 0x8000_0006; `None` off x86-64 or where the leaf is missing.
pub fn l2_kib() -> Option<usize> {
    static L2: OnceLock<Option<usize>> = OnceLock::new();
    *L2.get_or_init(|| {
        let leaf_4 = if intel() { deterministic_cache_kib(2) } else { None };
        leaf_4.or_else(|| extended_cache_kib(0x8000_0006, 16))
    })
}

/// The size in KiB of the data or unified cache of `level` that CPUID leaf 4 describes (Intel's
/// deterministic cache parameters); `None` where the leaf is missing or names no such cache.
#[cfg(target_arch = "x86_64")]
fn deterministic_cache_kib(level: u32) -> Option<usize> {
    // SAFETY: CPUID is available on every x86_64 CPU (the intrinsic is safe in newer Rust).
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { std::arch::x86_64::__cpuid(0) }.eax;
    if max_leaf < 4 {
        return None;
    }
    // Sub-leaves list the caches until one of type 0; a bound in case a hypervisor never ends it.
    for sub_leaf in 0..16 {
        // SAFETY: as above; leaf 4 exists (checked).
        #[allow(unused_unsafe)]
        let info = unsafe { std::arch::x86_64::__cpuid_count(4, sub_leaf) };
        let kind = info.eax & 0x1f;
        if kind == 0 {
            return None;
        }
        // Types 1 (data) and 3 (unified); 2 is an instruction cache.
        if (info.eax >> 5) & 0x7 == level && kind != 2 {
            let ways = (info.ebx >> 22) as usize + 1;
            let partitions = ((info.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (info.ebx & 0xfff) as usize + 1;
            let sets = info.ecx as usize + 1;
            let kib = ways * partitions * line * sets / 1024;
            return (kib > 0).then_some(kib);
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn deterministic_cache_kib(_level: u32) -> Option<usize> {
    None
}

/// A core's L1 data cache in KiB, as CPUID leaf 0x8000_0005 reports it: AMD fills it in, Intel
/// leaves it zero (`None`, as off x86-64 or where the leaf is missing).
pub fn l1d_kib() -> Option<usize> {
    static L1D: OnceLock<Option<usize>> = OnceLock::new();
    *L1D.get_or_init(|| extended_cache_kib(0x8000_0005, 24))
}

/// A cache size in KiB from ECX of an extended CPUID leaf, from bit `shift` up; `None` where
/// the leaf is missing or reports zero.
#[cfg(target_arch = "x86_64")]
fn extended_cache_kib(leaf: u32, shift: u32) -> Option<usize> {
    // SAFETY: CPUID is available on every x86_64 CPU (the intrinsic is safe in newer Rust).
    #[allow(unused_unsafe)]
    let max_extended = unsafe { std::arch::x86_64::__cpuid(0x8000_0000) }.eax;
    if max_extended < leaf {
        return None;
    }
    // SAFETY: as above; the leaf exists (checked).
    #[allow(unused_unsafe)]
    let kib = (unsafe { std::arch::x86_64::__cpuid(leaf) }.ecx >> shift) as usize;
    (kib > 0).then_some(kib)
}

#[cfg(not(target_arch = "x86_64"))]
fn extended_cache_kib(_leaf: u32, _shift: u32) -> Option<usize> {
    None
}

/// Whether this CPU has AMX-BF16, `PERCEIVER_NO_AMX` is unset, and the OS lets this process use
/// the tiles (Linux must grant the AMX register state first, through `arch_prctl`; this asks
/// once and says no when it is refused).
pub fn amx() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect_amx)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect_amx() -> bool {
    // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    // SAFETY: CPUID is available on every x86_64 CPU (the intrinsic is safe in newer Rust).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    if std::env::var_os("PERCEIVER_NO_AMX").is_some() {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call that only changes this process's permitted XSAVE features.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect_amx() -> bool {
    false
}

/// Whether `PERCEIVER_EMULATE_AVX512` asks for the emulated AVX-512 kernels where the CPU lacks
/// AVX-512 (read once). Slow: for tests only.
pub fn emulate_avx512() -> bool {
    static REQUESTED: OnceLock<bool> = OnceLock::new();
    *REQUESTED.get_or_init(|| std::env::var_os("PERCEIVER_EMULATE_AVX512").is_some())
}

/// Whether `PERCEIVER_EMULATE_AMX` asks for the AMX path with its tile instructions emulated
/// where the CPU has no AMX (read once): the bf16 products and attention heads then take
/// [`crate::amx`]'s loops, blocking, addresses and strides as on AMX. Slow: for tests only.
pub fn emulate_amx() -> bool {
    static REQUESTED: OnceLock<bool> = OnceLock::new();
    *REQUESTED.get_or_init(|| std::env::var_os("PERCEIVER_EMULATE_AMX").is_some())
}

/// Whether the AVX2+FMA product kernels may run: the CPU has AVX2 and FMA and
/// `PERCEIVER_NO_AVX2` is unset. Read once.
fn avx2_products() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED
        .get_or_init(|| simd_level() >= SimdLevel::Avx2 && std::env::var_os("PERCEIVER_NO_AVX2").is_none())
}

/// The microkernel of the packed f32 products ([`crate::sgemm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// 512-bit registers (AVX-512 F), native or emulated.
    Avx512,
    /// 256-bit registers with fused multiply-add (AVX2 + FMA).
    Avx2,
}

/// The packed f32 kernel this process runs, if any; chosen once. AVX-512 where the CPU has it
/// (unless `PERCEIVER_NO_AVX512`) or `PERCEIVER_EMULATE_AVX512` asks for it, else AVX2+FMA
/// (unless `PERCEIVER_NO_AVX2`); with neither, the products go through the `gemm` crate
/// ([`crate::matmul`]).
pub fn f32_kernel() -> Option<F32Kernel> {
    static KERNEL: OnceLock<Option<F32Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let native_avx512 = avx512() && std::env::var_os("PERCEIVER_NO_AVX512").is_none();
        if native_avx512 || emulate_avx512() {
            return Some(F32Kernel::Avx512);
        }
        if avx2_products() {
            return Some(F32Kernel::Avx2);
        }
        None
    })
}

/// The microkernel of the bf16 products ([`crate::bf16`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (`tdpbf16ps`), through [`crate::amx`] (emulated where [`emulate_amx`] asks).
    Amx,
    /// AVX-512 BF16 `vdpbf16ps`, native or emulated.
    Avx512Bf16,
    /// AVX-512 F multiply-adds on bf16 widened to f32: a task of many rows widens each panel
    /// once and runs the f32 products' AVX-512 microkernel over it; a task of few rows runs the
    /// AVX2 kernel, which widens in registers. For AVX-512 CPUs without AVX-512 BF16, and for
    /// Intel's with it but without AMX: their `vdpbf16ps` did half the multiply-adds of their
    /// two FMA units (a Xeon with AMX turned off, both measured in one process).
    Avx512Widened,
    /// AVX2 + FMA: bf16 widened to f32 (per panel, or in registers for few rows), f32
    /// multiply-adds.
    Avx2,
    /// Plain Rust on the same packed data.
    Portable,
}

/// The bf16 kernel this process runs; chosen once. AMX where [`amx`] allows it (or emulated,
/// [`emulate_amx`]), else AVX-512
/// BF16 where the CPU has it and its `vdpbf16ps` is fast (any vendor's but Intel's, unless
/// `PERCEIVER_VDPBF16PS`), else widened AVX-512 multiply-adds where the CPU has AVX-512 and
/// AVX2 (unless `PERCEIVER_NO_AVX512` or `PERCEIVER_NO_AVX2`), else AVX-512 BF16, native where
/// the CPU has it (an Intel CPU that took none of the above) or emulated where
/// `PERCEIVER_EMULATE_AVX512` asks for it, else AVX2+FMA (unless `PERCEIVER_NO_AVX2`), else the
/// portable kernel.
pub fn bf16_kernel() -> Bf16Kernel {
    static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if amx() || emulate_amx() {
            return Bf16Kernel::Amx;
        }
        let fast_dot = !intel() || std::env::var_os("PERCEIVER_VDPBF16PS").is_some();
        if avx512_bf16() && fast_dot {
            return Bf16Kernel::Avx512Bf16;
        }
        if avx512() && avx2_products() && std::env::var_os("PERCEIVER_NO_AVX512").is_none() {
            return Bf16Kernel::Avx512Widened;
        }
        if avx512_bf16() || emulate_avx512() {
            return Bf16Kernel::Avx512Bf16;
        }
        if avx2_products() {
            return Bf16Kernel::Avx2;
        }
        Bf16Kernel::Portable
    })
}

/// Compiles `$body` (a `#[inline(always)]` function) for the native baseline and with wider SIMD,
/// and dispatches on [`row_level`]: what the CPU has, lowered by the switches. A body written
/// `$body::<FMA>` takes `const FMA: bool`: true in the AVX2/AVX-512 builds, which have fused
/// multiply-adds, false in the baseline one (where `f32::mul_add` would be a call to a software
/// `fmaf`).
macro_rules! dispatch {
    (@build $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => [$($wide:tt)*] [$($plain:tt)*]) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn wide512($($arg: $ty),*) $(-> $ret)? { $($wide)*($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide256($($arg: $ty),*) $(-> $ret)? { $($wide)*($($arg),*) }
                let level = $crate::cpu::row_level();
                if level >= $crate::cpu::SimdLevel::Avx512 {
                    // SAFETY: the CPU has the features the function was compiled for
                    // (`row_level` is never above `simd_level`, what it has).
                    return unsafe { wide512($($arg),*) };
                }
                if level >= $crate::cpu::SimdLevel::Avx2 {
                    // SAFETY: as above.
                    return unsafe { wide256($($arg),*) };
                }
            }
            $($plain)*($($arg),*)
        }
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident::<FMA>) => {
        $crate::cpu::dispatch!(@build $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? => [$body::<true>] [$body::<false>]);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $crate::cpu::dispatch!(@build $(#[$meta])* $vis fn $name($($arg: $ty),*) $(-> $ret)? => [$body] [$body]);
    };
}

pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switches_lower_the_row_kernels_as_they_lower_the_products() {
        use SimdLevel::{Avx2, Avx512, Baseline};
        for (level, no_avx512, no_avx2, expected) in [
            (Avx512, false, false, Avx512),
            (Avx512, true, false, Avx2),
            // Alone, PERCEIVER_NO_AVX2 leaves an AVX-512 CPU's f32 products on AVX-512.
            (Avx512, false, true, Avx512),
            (Avx512, true, true, Baseline),
            (Avx2, true, false, Avx2),
            (Avx2, false, true, Baseline),
            (Baseline, true, true, Baseline),
        ] {
            assert_eq!(
                lowered(level, no_avx512, no_avx2),
                expected,
                "{level:?}, no AVX-512 {no_avx512}, no AVX2 {no_avx2}"
            );
        }
        assert!(row_level() <= simd_level(), "never above what the CPU has");
    }

    /// Linux's sysfs reads the cache sizes of Intel's CPUs from the same CPUID leaf: where both
    /// are there, they agree (sysfs writes "1280K").
    #[test]
    fn intel_l2_size_is_what_linux_reports() {
        let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        if !intel() {
            return;
        }
        let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        let sysfs_l2 = entries.flatten().find_map(|entry| {
            let index = entry.path();
            let level = read(index.join("level"));
            let kind = read(index.join("type"));
            (level.trim() == "2" && kind.trim() != "Instruction")
                .then(|| {
                    read(index.join("size"))
                        .trim()
                        .trim_end_matches('K')
                        .parse::<usize>()
                        .ok()
                })
                .flatten()
        });
        if let Some(kib) = sysfs_l2 {
            assert_eq!(l2_kib(), Some(kib), "CPUID against sysfs");
        }
    }
}
