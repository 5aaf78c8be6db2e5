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

/// The name that selects the model built into the library wherever a model is accepted. It is
/// that model even where a directory of that name exists (as the `perceiver` tool's
/// `--model default` promises): load such a directory as `./default`. Without the
/// `default-model` feature the name is refused, not looked up on the hub.
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
    /// `.pystate`: see [`deepmind`]), or `"default"` ([`BUILT_IN`]) for the built-in model,
    /// which a directory named `default` does not shadow (give that as `./default`).
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

    /// Threads for one forward pass (0, the default: rayon's pool size; at most
    /// [`MAX_THREADS`](crate::model::MAX_THREADS), as [`PerceiverModel::set_threads`] takes them).
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

    /// The checkpoint and the source's own `preprocessor_config.json`, if it has one (a model
    /// directory or hub repository may; a DeepMind checkpoint and the built-in model have
    /// none): what [`export::write_model_dir`](crate::checkpoint::export::write_model_dir)
    /// copies.
    pub fn checkpoint_with_preprocessor_config(&self) -> Result<(Checkpoint, Option<PathBuf>)> {
        self.resolve()
    }

    /// The model's config alone, so that inputs can be checked against its sizes before its
    /// weights load: a hub id's `config.json` is fetched without its weights, a directory's is
    /// read; a DeepMind checkpoint's comes from reading the file.
    pub fn config(&self) -> Result<PerceiverConfig> {
        match self.config_before_weights()? {
            Some(config) => Ok(config),
            None => Ok(self.checkpoint()?.config().clone()),
        }
    }

    /// The model's config where it can be had without reading its weights (a directory's
    /// `config.json`, or a hub id's, fetched alone); `None` where it comes only with them (a
    /// DeepMind checkpoint, whose shapes make its config, and the built-in model). What a front
    /// end checks a model's task against before it loads, or downloads, weights it cannot use.
    pub fn config_before_weights(&self) -> Result<Option<PerceiverConfig>> {
        let path = Path::new(&self.source);
        // A DeepMind file's name, found or not: a missing one is "no such file" from the load,
        // not a hub look-up of its name.
        let whole = deepmind::has_deepmind_extension(path) || self.model_config.is_some();
        #[cfg(feature = "default-model")]
        let whole = whole || self.source == BUILT_IN;
        if whole {
            return Ok(None);
        }
        PerceiverConfig::from_file(&ModelFiles::resolve_config(&self.source, &self.options)?).map(Some)
    }

    /// The checkpoint and the model's `preprocessor_config.json`, if it has one.
    fn resolve(&self) -> Result<(Checkpoint, Option<PathBuf>)> {
        let path = Path::new(&self.source);
        if deepmind::is_deepmind_file(path) {
            return Ok((deepmind::open(path, self.model_config.as_deref())?, None));
        }
        if deepmind::has_deepmind_extension(path) && !path.exists() && !may_be_hub_id(&self.source) {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (a DeepMind checkpoint: .pickle, .pystate, .pkl)",
                ),
            });
        }
        if let Some(config) = &self.model_config {
            return Err(Error::InvalidInput(format!(
                "{} names a config.json for a DeepMind checkpoint (.pickle, .pystate), but {} is \
                 not one: a model directory, hub id or the built-in model has its own config",
                config.display(),
                self.source
            )));
        }
        if self.source == BUILT_IN {
            #[cfg(feature = "default-model")]
            return Ok((
                Checkpoint::from_static(
                    crate::default_model::CONFIG_JSON,
                    crate::default_model::WEIGHTS,
                    "<built-in model>",
                )?,
                None,
            ));
            // Not a hub id to look up: the name means the built-in model, which is not here.
            #[cfg(not(feature = "default-model"))]
            return Err(Error::InvalidInput(format!(
                "\"{BUILT_IN}\" names the model built into the library, and this build has none \
                 (the default-model feature is off): give a model directory (a directory named \
                 {BUILT_IN}: ./{BUILT_IN}) or a hub id"
            )));
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

/// Whether a name that ends like a DeepMind file but is none may still be a hub id. Hub ids
/// may hold dots, so `owner/name.pkl` can be a repository; but not a name without an owner
/// (the hub's only such ids are its old canonical models, none named so), nor one whose
/// "owner" is a local directory: that is a path to a file that is not there.
fn may_be_hub_id(source: &str) -> bool {
    crate::checkpoint::looks_like_hub_id(source)
        && source
            .split_once('/')
            .is_some_and(|(owner, _)| !Path::new(owner).is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the built-in model "default" is a clear error, not a hub look-up of a repository
    /// named "default" (run with `--no-default-features`).
    #[cfg(not(feature = "default-model"))]
    #[test]
    fn default_without_the_built_in_model_is_refused_by_name() {
        let e = Loader::new(BUILT_IN).offline(true).load().unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains("default-model feature is off")),
            "{e}"
        );
    }

    /// A DeepMind file that is not there is "no such file", not a hub look-up; a name that may
    /// be a hub repository (with an owner that is not a local directory) is still looked up.
    #[test]
    fn a_missing_deepmind_file_is_no_such_file() {
        for missing in ["nonexist.pickle", "x.PYSTATE", "src/x.pkl", "./x.pickle"] {
            let e = Loader::new(missing).offline(true).load().unwrap_err();
            assert!(
                matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
                "{missing}: {e}"
            );
            assert!(e.to_string().contains("no such file"), "{e}");
        }
        let e = Loader::new("someone/model.pkl").offline(true).load().unwrap_err();
        assert!(matches!(&e, Error::Hub { .. }), "{e}");
    }

    #[cfg(feature = "default-model")]
    #[test]
    fn default_is_the_built_in_model() {
        let model = Loader::new(BUILT_IN).load().unwrap();
        assert_eq!(model.max_len(), 256);
    }
}
