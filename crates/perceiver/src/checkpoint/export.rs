//! Writes a checkpoint as a transformers model directory: `config.json` (with `architectures`)
//! and `model.safetensors` (f32, transformers' names; BatchNorm's batch counter int64, as PyTorch
//! keeps it), which transformers' `from_pretrained` loads as it is, and for the image classifiers
//! a `preprocessor_config.json` (transformers' `PerceiverImageProcessor` with the settings of
//! DeepMind's ImageNet Colab: the centre 224/256 of the shorter side, resized to 224×224 bicubic,
//! ImageNet's mean and standard deviation). `perceiver convert` uses it to turn DeepMind's
//! checkpoints into such directories.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use super::names::{ModelNames, Role};
use super::{Checkpoint, Param, CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, SAFETENSORS_FILE};
use crate::config::Activation;
use crate::config::Architecture;
use crate::error::{Error, Result};

/// How [`write_model_dir`] writes.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The `hidden_act` the written config carries; `None` keeps the checkpoint's own (for a
    /// DeepMind checkpoint without a config.json, DeepMind's tanh GELU, `"gelu_new"`).
    pub activation: Option<Activation>,
    /// Write into a directory that already holds files (replacing `config.json` and
    /// `model.safetensors`, leaving the others); otherwise such a directory is refused.
    pub overwrite: bool,
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

/// The `preprocessor_config.json` written beside an image classifier: transformers'
/// `PerceiverImageProcessor` with the settings of DeepMind's ImageNet Colab (its
/// `resize_and_center_crop` and `normalize`), which are also that class's defaults.
pub fn imagenet_preprocessor_config() -> serde_json::Value {
    serde_json::json!({
        "image_processor_type": "PerceiverImageProcessor",
        "do_center_crop": true,
        "crop_size": {"height": 256, "width": 256},
        "do_resize": true,
        "size": {"height": 224, "width": 224},
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225]
    })
}

/// Writes `checkpoint` to `dir` (created if needed) as `config.json` + `model.safetensors`, and
/// for an image classifier [`imagenet_preprocessor_config`] as `preprocessor_config.json`.
/// Returns the files' paths in that order. Each file is written beside its final name and
/// renamed into place, so that an interrupted run leaves no half-written model behind those
/// names.
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

    let weights = dir.join(SAFETENSORS_FILE);
    let partial = dir.join(format!("{SAFETENSORS_FILE}.partial"));
    let tensors = checkpoint.tensors()?;
    // BatchNorm's counters, which no model reads but PyTorch's BatchNorm has: written when the
    // checkpoint holds them, as the int64 PyTorch keeps.
    let counters: Vec<(String, i64)> = ModelNames::new(&config, 0)?
        .tensors()
        .into_iter()
        .filter(|t| t.role == Role::Counter)
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
    safetensors::serialize_to_file(views, Some(metadata), &partial).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        Error::CorruptWeights {
            path: partial.clone(),
            reason: format!("cannot write: {e}"),
        }
    })?;
    std::fs::rename(&partial, &weights).map_err(io(&weights))?;

    let config_path = dir.join(CONFIG_FILE);
    let partial = dir.join(format!("{CONFIG_FILE}.partial"));
    std::fs::write(&partial, config.to_json_string() + "\n").map_err(io(&partial))?;
    std::fs::rename(&partial, &config_path).map_err(io(&config_path))?;
    let mut written = vec![config_path, weights];
    if Architecture::of(&config)?.reads_images() {
        let path = dir.join(PREPROCESSOR_CONFIG_FILE);
        let partial = dir.join(format!("{PREPROCESSOR_CONFIG_FILE}.partial"));
        let text = serde_json::to_string_pretty(&imagenet_preprocessor_config())
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        std::fs::write(&partial, text + "\n").map_err(io(&partial))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
