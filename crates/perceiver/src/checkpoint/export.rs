//! Writes a checkpoint as a transformers model directory: `config.json` (with `architectures`)
//! and `model.safetensors` (f32, transformers' names), which `PerceiverForMaskedLM.from_pretrained`
//! loads as it is. `perceiver convert` uses it to turn DeepMind's checkpoints into such
//! directories.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use super::{Checkpoint, Param, CONFIG_FILE, SAFETENSORS_FILE};
use crate::config::Activation;
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

/// Writes `checkpoint` to `dir` (created if needed) as `config.json` + `model.safetensors`.
/// Returns the two files' paths. Each file is written beside its final name and renamed into
/// place, so that an interrupted run leaves no half-written model behind those names.
pub fn write_model_dir(checkpoint: &Checkpoint, dir: &Path, options: &ExportOptions) -> Result<[PathBuf; 2]> {
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
    // transformers refuses safetensors files that do not say which framework wrote them.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors
            .iter()
            .map(|(name, param)| (name.as_str(), F32View(param))),
        Some(metadata),
        &partial,
    )
    .map_err(|e| {
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
    Ok([config_path, weights])
}
