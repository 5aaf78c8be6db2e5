//! Checkpoint directories: transformers-compatible model files plus what resuming needs.
//!
//! `RUN_DIR/step-000100/` holds `config.json` and `model.safetensors` (so `perceiver fill-mask
//! --model` and transformers' `PerceiverForMaskedLM.from_pretrained` load it), `training.json`
//! (the training options and progress) and `optimizer.safetensors` (AdamW's moments). A checkpoint
//! is written under a temporary name, synced, then renamed: a kill during a save leaves the
//! previous checkpoints intact and no half-written one under a `step-` name. A complete checkpoint
//! is never rewritten: saving a step that is already saved replaces only its `training.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use perceiver::checkpoint::names::ModelNames;
use perceiver::image::{ImageProcessor, ImageProcessorConfig};
use perceiver::PerceiverConfig;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{io_at, Error, Result};
use crate::metrics::Window;

/// A checkpoint's [`TrainingFile`] (JSON); a `step-` directory without it is not a checkpoint.
pub const TRAINING_FILE: &str = "training.json";
/// A checkpoint's AdamW moments (safetensors, named `m.<tensor>` and `v.<tensor>`).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STEP_PREFIX: &str = "step-";

/// Where a run stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer updates done.
    pub step: u64,
    /// Training windows drawn from the stream.
    pub windows: u64,
    /// Real bytes trained on.
    pub bytes: u64,
    /// Training time so far, in seconds (excluding evaluation and saving).
    pub train_seconds: f64,
}

/// `training.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingFile {
    /// The run's options when the checkpoint was written (a resume with new `steps` changes them).
    pub options: TrainConfig,
    /// How far the run had got.
    pub progress: Progress,
    /// The updates since the last train record in `metrics.jsonl` (older files: none).
    #[serde(default)]
    pub pending: Window,
    /// `perceiver` version that wrote it.
    pub version: String,
}

/// A checkpoint read back.
pub struct Checkpoint {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// The model's architecture (`config.json`).
    pub config: PerceiverConfig,
    /// The options and progress to resume with (`training.json`).
    pub training: TrainingFile,
    /// The model's tensors by transformers name (`model.safetensors`).
    pub weights: HashMap<String, Tensor>,
    /// AdamW's moments (`optimizer.safetensors`), as [`crate::optim::AdamW::load_state`] takes them.
    pub optimizer: HashMap<String, Tensor>,
    /// An image classifier's image processor (`preprocessor_config.json`), when saved.
    pub image_processor: Option<ImageProcessor>,
}

/// The name of the checkpoint of `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:06}")
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_at(path))
}

/// Writes a checkpoint of `step` into `run_dir`, atomically; returns its directory. An image
/// classifier's checkpoint holds its image processor (`preprocessor_config.json`), so that
/// inference prepares images as training did.
pub fn save(
    run_dir: &Path,
    config: &PerceiverConfig,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    training: &TrainingFile,
    image_processor: Option<&ImageProcessorConfig>,
) -> Result<PathBuf> {
    let name = step_dir_name(training.progress.step);
    let partial = run_dir.join(format!(".partial-{name}"));
    let target = run_dir.join(&name);
    let json = serde_json::to_string_pretty(training).expect("training file serialises");
    tidy(run_dir)?;
    if target.join(TRAINING_FILE).is_file() {
        // This step is saved already (Ctrl-C or --stop-at right after a scheduled save): its
        // weights and moments are this state's, since a run dir only ever holds one history.
        // Only training.json can differ (a resume's new --steps); it alone is replaced, whole.
        crate::atomic::write(&target.join(TRAINING_FILE), json.as_bytes())?;
        return Ok(target);
    }
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_at(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_at(&partial))?;

    let config_path = partial.join(perceiver::checkpoint::CONFIG_FILE);
    std::fs::write(&config_path, config.to_json_string()).map_err(io_at(&config_path))?;
    let model_path = partial.join(perceiver::checkpoint::SAFETENSORS_FILE);
    // BatchNorm's batch counts are PyTorch's int64, whatever the trainer held them as.
    let mut weights = weights.clone();
    for counter in ModelNames::new(config, 0)?.counters() {
        if let Some(count) = weights.get_mut(&counter.name) {
            *count = count.round()?.to_dtype(DType::I64)?;
        }
    }
    candle_core::safetensors::save(&weights, &model_path)?;
    let optimizer_path = partial.join(OPTIMIZER_FILE);
    candle_core::safetensors::save(optimizer, &optimizer_path)?;
    let training_path = partial.join(TRAINING_FILE);
    std::fs::write(&training_path, json).map_err(io_at(&training_path))?;
    let mut written = vec![config_path, model_path, optimizer_path, training_path];
    if let Some(processor) = image_processor {
        let path = partial.join(perceiver::checkpoint::PREPROCESSOR_CONFIG_FILE);
        let json = serde_json::to_string_pretty(processor).expect("image processor config serialises");
        std::fs::write(&path, json).map_err(io_at(&path))?;
        written.push(path);
    }
    for path in &written {
        sync_file(path)?;
    }
    if target.exists() {
        // A `step-` directory without training.json is no checkpoint (list skips it): a
        // leftover, replaced.
        std::fs::remove_dir_all(&target).map_err(io_at(&target))?;
    }
    std::fs::rename(&partial, &target).map_err(io_at(&target))?;
    // Make the rename itself durable.
    if let Ok(dir) = std::fs::File::open(run_dir) {
        let _ = dir.sync_all();
    }
    Ok(target)
}

/// Clears what an interrupted save leaves: `.partial-step-N` (incomplete) is deleted; an
/// `.old-step-N` (the moved-away checkpoint of an earlier version's swap) is deleted when
/// `step-N` is complete, else put back, since it is then the only copy.
fn tidy(run_dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(run_dir).map_err(io_at(run_dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if name.starts_with(".partial-step-") {
            std::fs::remove_dir_all(&path).map_err(io_at(&path))?;
        } else if let Some(step_name) = name.strip_prefix(".old-") {
            let target = run_dir.join(step_name);
            if target.join(TRAINING_FILE).is_file() {
                std::fs::remove_dir_all(&path).map_err(io_at(&path))?;
            } else if path.join(TRAINING_FILE).is_file() {
                if target.exists() {
                    std::fs::remove_dir_all(&target).map_err(io_at(&target))?;
                }
                std::fs::rename(&path, &target).map_err(io_at(&target))?;
            }
        }
    }
    Ok(())
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(run_dir).map_err(io_at(run_dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix(STEP_PREFIX).and_then(|s| s.parse::<u64>().ok()) {
            if entry.path().join(TRAINING_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(dir).map_err(io_at(dir))?;
    }
    Ok(())
}

/// A checkpoint directory, or a run directory (its newest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(TRAINING_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(checkpoint_error(path, "no such directory"));
    }
    list(path)?.pop().map(|(_, dir)| dir).ok_or_else(|| {
        let metrics = path.join(crate::metrics::METRICS_FILE);
        if metrics.is_file() && !crate::metrics::is_empty_file(&metrics) {
            // A run killed before its first save (SIGKILL, a crash, a power cut).
            return checkpoint_error(
                path,
                format!(
                    "the run in it saved no checkpoint (it stopped before its first save), so there \
                     is nothing to resume: start it again (remove {} first, or choose another --out)",
                    metrics.display()
                ),
            );
        }
        checkpoint_error(
            path,
            "neither a checkpoint (no training.json) nor a run directory with one",
        )
    })
}

/// Reads a checkpoint's `training.json`.
pub fn read_training(dir: &Path) -> Result<TrainingFile> {
    let training_path = dir.join(TRAINING_FILE);
    let text = std::fs::read_to_string(&training_path).map_err(io_at(&training_path))?;
    serde_json::from_str(&text).map_err(|e| checkpoint_error(&training_path, format!("unreadable: {e}")))
}

/// Reads a checkpoint (weights and optimizer state onto `device`).
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let training = read_training(dir)?;
    let config = PerceiverConfig::from_file(&dir.join(perceiver::checkpoint::CONFIG_FILE))?;
    let read = |file: &str| -> Result<HashMap<String, Tensor>> {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(checkpoint_error(dir, format!("{file} is missing")));
        }
        candle_core::safetensors::load(&path, device)
            .map_err(|e| checkpoint_error(&path, format!("corrupt: {e}")))
    };
    let processor_path = dir.join(perceiver::checkpoint::PREPROCESSOR_CONFIG_FILE);
    let image_processor = processor_path
        .is_file()
        .then(|| ImageProcessor::from_file(&processor_path))
        .transpose()
        .map_err(|e| checkpoint_error(&processor_path, e.to_string()))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        config,
        training,
        weights: read(perceiver::checkpoint::SAFETENSORS_FILE)?,
        optimizer: read(OPTIMIZER_FILE)?,
        image_processor,
    })
}
