//! Writes a checkpoint as a transformers model directory: `config.json` (with `architectures`)
//! and `model.safetensors` (f32, transformers' names; BatchNorm's batch counter int64, as PyTorch
//! keeps it), which transformers' `from_pretrained` loads as it is, and a
//! `preprocessor_config.json`: the source model's own, or for an image classifier without one
//! (a DeepMind checkpoint) transformers' `PerceiverImageProcessor` with the settings of
//! DeepMind's ImageNet Colab (the centre 224/256 of the shorter side, resized to 224×224
//! bicubic, ImageNet's mean and standard deviation), sized for the model. `perceiver convert`
//! uses it to turn DeepMind's checkpoints into such directories.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use super::names::ModelNames;
use super::{Checkpoint, Param, CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, SAFETENSORS_FILE};
use crate::config::Activation;
use crate::config::{Architecture, PerceiverConfig};
use crate::error::{Error, Result};
use crate::image::{ImageProcessorConfig, Size};

/// How [`write_model_dir`] writes.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The `hidden_act` the written config carries; `None` keeps the checkpoint's own (for a
    /// DeepMind checkpoint without a config.json, DeepMind's tanh GELU, `"gelu_new"`).
    pub activation: Option<Activation>,
    /// Write into a directory that already holds files (replacing `config.json`,
    /// `model.safetensors` and `preprocessor_config.json`, leaving the others); otherwise such
    /// a directory is refused.
    pub overwrite: bool,
    /// The source's `preprocessor_config.json` (a model directory's or hub repository's),
    /// copied as it is; without one an image classifier gets [`default_preprocessor_config`].
    pub preprocessor_config: Option<PathBuf>,
}

/// One tensor as safetensors writes it: little-endian f32, converted one tensor at a time as the
/// file is written, so that no second copy of the whole model is held.
struct F32View<'a>(&'a Param);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.0.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data().iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.0.data().len() * 4
    }
}

/// A 0-d int64 (BatchNorm's `num_batches_tracked`).
struct CounterView([u8; 8]);

impl View for CounterView {
    fn dtype(&self) -> Dtype {
        Dtype::I64
    }

    fn shape(&self) -> &[usize] {
        &[]
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }

    fn data_len(&self) -> usize {
        8
    }
}

/// One tensor to write.
enum Written<'a> {
    F32(F32View<'a>),
    Counter(CounterView),
}

impl View for Written<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Self::F32(v) => v.dtype(),
            Self::Counter(v) => v.dtype(),
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Self::F32(v) => v.shape(),
            Self::Counter(v) => v.shape(),
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Self::F32(v) => v.data(),
            Self::Counter(v) => v.data(),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Self::F32(v) => v.data_len(),
            Self::Counter(v) => v.data_len(),
        }
    }
}

/// The `preprocessor_config.json` written beside an image classifier whose source has none (a
/// DeepMind checkpoint): transformers' `PerceiverImageProcessor` with its class defaults, which
/// are the settings of DeepMind's ImageNet Colab (its `resize_and_center_crop` and `normalize`:
/// the centre 224/256 of the shorter side resized to 224 × 224), sized for a model that takes
/// one size of image only ([`ImageProcessorConfig::for_size`]: the learned-position model's
/// `image_size`) as [`Classifier::new`](crate::Classifier::new) sizes them. `None` for a
/// model that reads no single images.
pub fn default_preprocessor_config(config: &PerceiverConfig) -> Result<Option<ImageProcessorConfig>> {
    let architecture = Architecture::of(config)?;
    if !architecture.reads_images() {
        return Ok(None);
    }
    let mut processor = match architecture {
        Architecture::ImageClassificationLearned => {
            ImageProcessorConfig::for_size(Size::square(config.image_size()))
        }
        _ => ImageProcessorConfig::default(),
    };
    processor
        .extra
        .insert("image_processor_type".into(), "PerceiverImageProcessor".into());
    Ok(Some(processor))
}

/// Writes `checkpoint` to `dir` (created if needed) as `config.json` + `model.safetensors`, and
/// `preprocessor_config.json`: the source's ([`ExportOptions::preprocessor_config`]) copied,
/// else for an image classifier [`default_preprocessor_config`]. Returns the files' paths in
/// that order.
///
/// A reader of `dir` sees the old model, the new one, or no `config.json` (a clear error),
/// never a config with weights it does not describe, even if the run is interrupted: every
/// new file is first written whole beside its final name (`*.partial`) and flushed to disk;
/// only then is the old `config.json` removed, the weights and preprocessor config renamed
/// into place, and the new `config.json` renamed in last. (Renaming the weights first would
/// leave new weights under the old config, which loads without complaint when the shapes
/// agree.)
pub fn write_model_dir(checkpoint: &Checkpoint, dir: &Path, options: &ExportOptions) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    if dir.exists() {
        if !dir.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() && !options.overwrite {
            return Err(Error::InvalidInput(format!(
                "{} is not empty; refusing to write a model over its files (--force writes anyway)",
                dir.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }

    let mut config = checkpoint.config().clone();
    if let Some(activation) = options.activation {
        config.hidden_act = activation;
    }
    config.validate()?;
    let processor = match &options.preprocessor_config {
        Some(source) => Some(std::fs::read(source).map_err(|e| Error::Io {
            path: source.clone(),
            source: e,
        })?),
        None => match default_preprocessor_config(&config)? {
            Some(processor) => Some(
                (serde_json::to_string_pretty(&processor).map_err(|e| Error::InvalidInput(e.to_string()))?
                    + "\n")
                    .into_bytes(),
            ),
            None => None,
        },
    };

    let config_path = dir.join(CONFIG_FILE);
    let weights = dir.join(SAFETENSORS_FILE);
    let processor_path = dir.join(PREPROCESSOR_CONFIG_FILE);
    let partial = |name: &str| dir.join(format!("{name}.partial"));
    let staged = [
        (partial(CONFIG_FILE), config_path.clone()),
        (partial(SAFETENSORS_FILE), weights.clone()),
        (partial(PREPROCESSOR_CONFIG_FILE), processor_path.clone()),
    ];
    let stage = || -> Result<()> {
        write_weights(checkpoint, &config, &staged[1].0)?;
        std::fs::write(&staged[0].0, config.to_json_string() + "\n").map_err(io(&staged[0].0))?;
        if let Some(bytes) = &processor {
            std::fs::write(&staged[2].0, bytes).map_err(io(&staged[2].0))?;
        }
        for (path, _) in &staged[..2 + usize::from(processor.is_some())] {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io(path))?;
        }
        Ok(())
    };
    if let Err(e) = stage() {
        for (path, _) in &staged {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    // The commit: from here until the last rename the directory has no config.json.
    match std::fs::remove_file(&config_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&config_path)(e)),
        _ => {}
    }
    let mut written = vec![config_path, weights];
    std::fs::rename(&staged[1].0, &staged[1].1).map_err(io(&staged[1].1))?;
    if processor.is_some() {
        std::fs::rename(&staged[2].0, &staged[2].1).map_err(io(&staged[2].1))?;
        written.push(processor_path);
    } else {
        // An image model's processor config left beside a model that has none would describe
        // another model.
        match std::fs::remove_file(&processor_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&processor_path)(e)),
            _ => {}
        }
    }
    std::fs::rename(&staged[0].0, &staged[0].1).map_err(io(&staged[0].1))?;
    Ok(written)
}

/// Writes the weights as `model.safetensors` to `path`.
fn write_weights(checkpoint: &Checkpoint, config: &PerceiverConfig, path: &Path) -> Result<()> {
    let tensors = checkpoint.tensors()?;
    // BatchNorm's counters, which no model reads but PyTorch's BatchNorm has: written when the
    // checkpoint holds them, as the int64 PyTorch keeps.
    let counters: Vec<(String, i64)> = ModelNames::new(config, 0)?
        .counters()
        .filter_map(|t| {
            let value = checkpoint.get(&t.name).ok()?;
            Some((t.name.clone(), *value.data().first()? as i64))
        })
        .collect();
    // transformers refuses safetensors files that do not say which framework wrote them.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut views: Vec<(&str, Written<'_>)> = tensors
        .iter()
        .map(|(name, param)| (name.as_str(), Written::F32(F32View(param))))
        .collect();
    views.extend(
        counters
            .iter()
            .map(|(name, value)| (name.as_str(), Written::Counter(CounterView(value.to_le_bytes())))),
    );
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        source: match e {
            safetensors::SafeTensorError::IoError(source) => source,
            other => std::io::Error::other(other),
        },
    })
}
