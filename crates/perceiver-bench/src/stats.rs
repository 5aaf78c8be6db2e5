//! What the benches share: medians, this process's peak memory, precision names, the tables of
//! where our time goes.

use perceiver::Precision;
use serde_json::Value;

/// The median of `times` (the upper one of an even count); NaN for none.
pub(crate) fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process so far (Linux's VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// How the benches' flags and tables spell a precision.
pub(crate) fn precision_name(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    }
}

/// For each of our results, its `phases` under the heading "ours <precision>, where the time goes
/// <how>:", one line a phase: its name padded to `width`, then its `seconds_key` in seconds.
pub(crate) fn print_phases(ours: &[Value], how: &str, width: usize, seconds_key: &str) {
    for result in ours {
        println!(
            "\nours {}, where the time goes {how}:",
            result["precision"].as_str().unwrap_or("?")
        );
        for phase in result["phases"].as_array().into_iter().flatten() {
            println!(
                "  {:<width$} {:.3} s",
                phase["phase"].as_str().unwrap_or("?"),
                phase[seconds_key].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
}
