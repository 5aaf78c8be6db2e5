//! One loader for every model source: a directory, a Hugging Face hub id, a DeepMind checkpoint
//! file, or the model built into the library, with the precision and threads it runs with.

use std::path::{Path, PathBuf};

use crate::checkpoint::{deepmind, Checkpoint, LoadOptions, ModelFiles};
use crate::config::PerceiverConfig;
use crate::error::{Error, Result};
use crate::image::ImageProcessor;
use crate::layers::Precision;
use crate::model::PerceiverModel;
use crate::tasks::classify::Classifier;

/// The name that selects the model built into the library wherever a model is accepted.
pub const BUILT_IN: &str = "default";

/// Loads a model: a directory, a hub id, a DeepMind checkpoint, or [`BUILT_IN`], with its
/// precision and threads.
///
/// ```
/// use perceiver::{Loader, Precision};
/// # fn main() -> perceiver::Result<()> {
/// let model = Loader::new("default").precision(Precision::F32).threads(1).load()?;
/// assert_eq!(model.max_len(), 256);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Loader {
    source: String,
    options: LoadOptions,
    precision: Precision,
    threads: usize,
    model_config: Option<PathBuf>,
}

impl Loader {
    /// A model directory (`config.json` + `model.safetensors`, sharded safetensors or
    /// `pytorch_model.bin`), a hub id (`owner/name`), a DeepMind checkpoint file (`.pickle`,
    /// `.pystate`: see [`deepmind`]), or `"default"` for the built-in model.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            options: LoadOptions::default(),
            precision: Precision::F32,
            threads: 0,
            model_config: None,
        }
    }

    /// For a DeepMind checkpoint: a transformers `config.json` that describes it, for what its
    /// shapes cannot tell (heads, blocks, the query residual, the activation, and for the
    /// optical-flow model `train_size`). Without one, those are the values of DeepMind's Colab
    /// for the file ([`deepmind::language_colab`], [`deepmind::flow_colab`]), with DeepMind's
    /// tanh GELU. Refused with any other source, whose config is its own.
    pub fn model_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.model_config = Some(path.into());
        self
    }

    /// Number type of the weight products (f32 by default: transformers' numbers).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Threads for one forward pass (0, the default: rayon's pool size).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Resolve hub ids from the local cache only (also `HF_HUB_OFFLINE=1`).
    pub fn offline(mut self, offline: bool) -> Self {
        self.options.offline = offline;
        self
    }

    /// Hub revision: branch, tag or commit (`main` when unset).
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.options.revision = Some(revision.into());
        self
    }

    /// The hub options in one value.
    pub fn options(mut self, options: LoadOptions) -> Self {
        self.options = options;
        self
    }

    /// The source as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The config and its checked weights, unpacked (what training starts from).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.resolve()?.0)
    }

    /// The model's config alone, so that inputs can be checked against its sizes before its
    /// weights load: a hub id's `config.json` is fetched without its weights, a directory's is
    /// read; a DeepMind checkpoint's comes from reading the file.
    pub fn config(&self) -> Result<PerceiverConfig> {
        let path = Path::new(&self.source);
        let whole = deepmind::is_deepmind_file(path) || self.model_config.is_some();
        #[cfg(feature = "default-model")]
        let whole = whole || self.source == BUILT_IN;
        if whole {
            return Ok(self.checkpoint()?.config().clone());
        }
        PerceiverConfig::from_file(&ModelFiles::resolve_config(&self.source, &self.options)?)
    }

    /// The checkpoint and the model's `preprocessor_config.json`, if it has one.
    fn resolve(&self) -> Result<(Checkpoint, Option<PathBuf>)> {
        let path = Path::new(&self.source);
        if deepmind::is_deepmind_file(path) {
            return Ok((deepmind::open(path, self.model_config.as_deref())?, None));
        }
        if let Some(config) = &self.model_config {
            return Err(Error::InvalidInput(format!(
                "{} names a config.json for a DeepMind checkpoint (.pickle, .pystate), but {} is \
                 not one: a model directory, hub id or the built-in model has its own config",
                config.display(),
                self.source
            )));
        }
        #[cfg(feature = "default-model")]
        if self.source == BUILT_IN {
            let checkpoint = Checkpoint::from_static(
                crate::default_model::CONFIG_JSON,
                crate::default_model::WEIGHTS,
                "<built-in model>",
            )?;
            return Ok((checkpoint, None));
        }
        let files = ModelFiles::resolve(&self.source, &self.options)?;
        Ok((Checkpoint::open(&files)?, files.preprocessor_config))
    }

    fn model_of(&self, checkpoint: &Checkpoint) -> Result<PerceiverModel> {
        let mut model = PerceiverModel::from_checkpoint(checkpoint, self.precision)?;
        model.set_threads(self.threads);
        Ok(model)
    }

    /// The model, packed for its precision.
    pub fn load(&self) -> Result<PerceiverModel> {
        self.model_of(&self.checkpoint()?)
    }

    /// A classifier ready to classify: the model, and for an image model its image processor
    /// (the model's `preprocessor_config.json`, else transformers' default settings, sized to
    /// the model as [`Classifier::new`] sizes them).
    pub fn classifier(&self) -> Result<Classifier> {
        let (checkpoint, processor_config) = self.resolve()?;
        let classifier = Classifier::new(self.model_of(&checkpoint)?)?;
        match processor_config {
            Some(path) if classifier.reads_images() => {
                classifier.with_image_processor(ImageProcessor::from_file(&path)?)
            }
            _ => Ok(classifier),
        }
    }
}
