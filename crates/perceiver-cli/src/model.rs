//! The `--model` flags every subcommand that runs a model shares, and loading from them.

use anyhow::{Context, Result};
use clap::Args;
use perceiver::{LoadOptions, PerceiverForMaskedLM};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A model directory (config.json + weights), a Hugging Face hub id (e.g.
    /// deepmind/language-perceiver), or `default`: the small model built into this binary.
    #[arg(short, long, env = "PERCEIVER_MODEL", default_value = "default")]
    pub model: String,

    /// Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Hub revision (branch, tag or commit).
    #[arg(long, env = "PERCEIVER_REVISION")]
    pub revision: Option<String>,
}

impl ModelArgs {
    /// Loads the masked language model these flags name, on the CPU.
    pub fn load_masked_lm(&self) -> Result<PerceiverForMaskedLM> {
        let options = LoadOptions {
            offline: self.offline,
            revision: self.revision.clone(),
        };
        perceiver::load_masked_lm_from(&self.model, &options, &perceiver::Device::Cpu)
            .with_context(|| format!("cannot load model {}", self.model))
    }
}
