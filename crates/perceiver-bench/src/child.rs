//! The benches' child processes: our worker (this executable again, one precision in its own
//! process) and the reference script in the pinned Python, each answering with JSON on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// The reference side's flags, shared by the benches that run it.
#[derive(Args)]
pub(crate) struct PythonArgs {
    /// Time our engine only.
    #[arg(long)]
    pub(crate) no_reference: bool,
    /// The Python with the pinned reference environment (scripts/requirements-reference.txt).
    #[arg(long, default_value = ".venv-ref/bin/python")]
    pub(crate) python: PathBuf,
}

/// Runs one of our workers and returns its JSON result; fails with its stderr.
pub(crate) fn our_worker(command: &mut Command) -> Result<Value> {
    let output = command.output().context("cannot run the bench's worker")?;
    if !output.status.success() {
        bail!("our worker failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("our worker's reply")
}

/// ", CPU capability AVX2" from a reference's reply: the vector code torch's own kernels run
/// (lowered by `ATEN_CPU_CAPABILITY`); empty if the reply does not say.
pub(crate) fn capability(reply: &Value) -> String {
    reply["cpu_capability"]
        .as_str()
        .map(|c| format!(", CPU capability {c}"))
        .unwrap_or_default()
}

/// Runs the reference script (`command`, under `python`) and returns its reply's `results`; fails
/// with its stderr. Prints the reply's torch and transformers versions on stderr, and the seconds
/// since `started` when given.
pub(crate) fn reference_results(
    command: &mut Command,
    python: &Path,
    started: Option<Instant>,
) -> Result<Vec<Value>> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "the reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let reply: Value = serde_json::from_slice(&output.stdout).context("the reference's reply")?;
    let in_all = started
        .map(|start| format!("; {:.0} s in all", start.elapsed().as_secs_f64()))
        .unwrap_or_default();
    eprintln!(
        "reference: torch {} transformers {}{}{in_all}",
        reply["torch"],
        reply["transformers"],
        capability(&reply)
    );
    Ok(reply["results"].as_array().cloned().unwrap_or_default())
}
