//! The machine a bench runs on, as its output states it: the CPU model line and the kernel path,
//! so that every figure can name the CPU it came from.

use perceiver_kernels::cpu;

/// `/proc/cpuinfo`'s model name with its family and model numbers, and a core's L1D (where
/// CPUID tells it) and L2 sizes.
fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let family = field("cpu family").unwrap_or_else(|| "?".into());
    let number = field("model").unwrap_or_else(|| "?".into());
    let l2 = cpu::l2_kib().map_or("unknown".into(), |kib| format!("{kib} KiB"));
    // The f32 kernel's slices of k follow both caches' sizes.
    let l1d = cpu::l1d_kib().map_or(String::new(), |kib| format!("L1D {kib} KiB, "));
    format!("{model} (family {family}, model {number}; {l1d}L2 {l2} a core)")
}

/// The lines every side-by-side bench prints first (to stderr, beside its progress): the CPU,
/// and our thread count and kernels.
pub(crate) fn describe(threads: usize) {
    eprintln!("CPU: {}", cpu_line());
    let emulated = match cpu::bf16_kernel() == cpu::Bf16Kernel::Amx && !cpu::amx() {
        true => " (tiles emulated: PERCEIVER_EMULATE_AMX)",
        false => "",
    };
    eprintln!(
        "ours: {threads} threads, f32 kernel {:?}, bf16 kernel {:?}{emulated}, row kernels {:?}",
        cpu::f32_kernel(),
        cpu::bf16_kernel(),
        cpu::row_level()
    );
}
