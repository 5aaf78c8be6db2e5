//! The `--model` flags every subcommand that runs a model shares, and loading from them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use perceiver::{
    Architecture, Checkpoint, Classifier, LoadOptions, Loader, PerceiverConfig, PerceiverModel, Precision,
};

/// An image's error, naming the flag that sets the limit when the image is over
/// `--max-image-pixels` (the library names no flag).
pub fn image_error(e: perceiver::Error) -> anyhow::Error {
    match e {
        perceiver::Error::ImageTooLarge { limit: "image", .. } => anyhow::anyhow!("{e} (--max-image-pixels)"),
        e => e.into(),
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A model directory (config.json + weights), a Hugging Face hub id (e.g.
    /// deepmind/language-perceiver), a DeepMind checkpoint (.pickle, .pystate), or `default`:
    /// the small model built into this binary.
    #[arg(short, long, env = "PERCEIVER_MODEL", default_value = "default")]
    pub model: String,

    /// With a DeepMind checkpoint: a transformers config.json for what its shapes cannot tell
    /// (heads, blocks, query residual, activation). Default: DeepMind's Colab values, with
    /// DeepMind's tanh GELU.
    #[arg(long, value_name = "FILE", env = "PERCEIVER_MODEL_CONFIG")]
    pub model_config: Option<PathBuf>,

    #[command(flatten)]
    pub hub: HubArgs,
}

/// How a hub id is resolved (every subcommand that loads a model, `convert` too).
#[derive(Args, Debug, Clone)]
pub struct HubArgs {
    /// Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Hub revision (branch, tag or commit).
    #[arg(long, env = "PERCEIVER_REVISION")]
    pub revision: Option<String>,
}

impl HubArgs {
    /// The library's hub options for these flags.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            offline: self.offline,
            revision: self.revision.clone(),
        }
    }
}

/// How the inference engine runs the model (fill-mask, serve).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Number type of the weight matrix products: f32 (transformers' numbers) or bf16 (half the
    /// weights' memory; faster on CPUs with AVX-512 BF16, about as fast as f32 on AVX2; top-1
    /// answers nearly always the same as f32).
    #[arg(long, env = "PERCEIVER_PRECISION", default_value = "f32")]
    pub precision: Precision,
}

impl ModelArgs {
    /// The library's loader for these flags (every subcommand loads through it).
    pub fn loader(&self) -> Loader {
        let loader = Loader::new(self.model.as_str()).options(self.hub.options());
        match &self.model_config {
            Some(config) => loader.model_config(config),
            None => loader,
        }
    }

    /// The config of the model these flags name where it comes without the weights (a
    /// directory's, a hub id's): what a subcommand checks the model's task against before
    /// weights it cannot use are read or downloaded. `None` for a DeepMind checkpoint and the
    /// built-in model, whose task is checked once they load.
    pub fn config_before_weights(&self) -> Result<Option<PerceiverConfig>> {
        self.loader()
            .config_before_weights()
            .with_context(|| format!("cannot load model {}", self.model))
    }

    /// Runs `check` (a task's `check_architecture`, or a front end's own) on the model's
    /// architecture where its config comes without the weights
    /// ([`config_before_weights`](Self::config_before_weights)).
    pub fn check_task<E: Into<anyhow::Error>>(
        &self,
        check: impl FnOnce(Architecture) -> std::result::Result<(), E>,
    ) -> Result<()> {
        if let Some(config) = self.config_before_weights()? {
            check(Architecture::of(&config)?).map_err(Into::into)?;
        }
        Ok(())
    }

    /// The config and checked weights these flags name, unpacked, with the model's own
    /// `preprocessor_config.json` where it has one.
    pub fn checkpoint(&self) -> Result<(Checkpoint, Option<std::path::PathBuf>)> {
        self.loader()
            .checkpoint_with_preprocessor_config()
            .with_context(|| format!("cannot load model {}", self.model))
    }

    /// Loads the model these flags name into the inference engine (weights memory-mapped,
    /// packed once for `precision`).
    pub fn load_engine(&self, precision: Precision) -> Result<PerceiverModel> {
        self.loader()
            .precision(precision)
            .load()
            .with_context(|| format!("cannot load model {}", self.model))
    }

    /// Loads the classifier these flags name, with its image processor for an image model.
    pub fn load_classifier(&self, precision: Precision) -> Result<Classifier> {
        self.loader()
            .precision(precision)
            .classifier()
            .with_context(|| format!("cannot load model {}", self.model))
    }
}
