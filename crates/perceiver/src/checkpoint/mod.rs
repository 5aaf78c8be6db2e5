//! Checkpoints: from a model reference (a local directory, a Hugging Face hub id, or the built-in
//! model) to a model whose every tensor has been checked against its config, through one
//! [`crate::Loader`].
//!
//! [`names`] is the one tree of tensor names; [`Checkpoint`] is a config with its opened,
//! checked weights (what training reads to start from); [`crate::Loader`] finds them and packs
//! them into a [`crate::PerceiverModel`].
//!
//! A model directory holds transformers' `config.json` and its weights as `model.safetensors`
//! (memory-mapped), sharded `model.safetensors.index.json` + shards, or `pytorch_model.bin`.
//! Hub ids are fetched into huggingface_hub's cache, following its environment (`hub.rs`);
//! offline (`LoadOptions::offline` or `HF_HUB_OFFLINE=1`) they resolve from the cache only.
//!
//! DeepMind's own checkpoints (`.pickle` / `.pystate`: pickled Haiku params) are read without
//! running their code ([`haiku`]) and renamed onto the same tree ([`deepmind`]); [`export`] writes
//! any checkpoint as a transformers model directory.

pub mod deepmind;
pub mod export;
pub mod haiku;
mod hub;
pub mod names;
mod pytorch;
mod weights;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub use weights::Param;
use weights::SafetensorsStore;

use crate::config::Architecture;
use crate::config::PerceiverConfig;
use crate::error::{Error, Result};
use names::{ModelNames, Role};

/// A model directory's config, as transformers names it.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file safetensors weights.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of sharded safetensors weights (`weight_map`: tensor name → shard file).
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// PyTorch `torch.save` weights.
pub const PYTORCH_FILE: &str = "pytorch_model.bin";
/// An image model's image processor settings (transformers' `PerceiverImageProcessor`).
pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";

/// How to find a model on the hub.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Resolve hub ids from the local cache only (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Hub revision (branch, tag or commit); `main` when unset.
    pub revision: Option<String>,
}

/// The weights of a model, in one of the layouts transformers writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    /// One or more safetensors files (several = shards listed by an index).
    Safetensors(Vec<PathBuf>),
    /// A PyTorch pickle (`torch.save` zip format).
    PyTorch(PathBuf),
}

/// The files that make a model, wherever they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The weights it describes.
    pub weights: WeightFiles,
    /// `preprocessor_config.json`, when the model has one (image models).
    pub preprocessor_config: Option<PathBuf>,
}

impl ModelFiles {
    /// Finds the config and weights in a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = dir.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(Error::Io {
                path: config,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no config.json in the model directory",
                ),
            });
        }
        let weights = if dir.join(SAFETENSORS_FILE).is_file() {
            WeightFiles::Safetensors(vec![dir.join(SAFETENSORS_FILE)])
        } else if dir.join(SAFETENSORS_INDEX_FILE).is_file() {
            let shards = shard_names(&dir.join(SAFETENSORS_INDEX_FILE))?;
            WeightFiles::Safetensors(shards.into_iter().map(|s| dir.join(s)).collect())
        } else if dir.join(PYTORCH_FILE).is_file() {
            WeightFiles::PyTorch(dir.join(PYTORCH_FILE))
        } else {
            return Err(Error::NoWeights {
                dir: dir.to_path_buf(),
            });
        };
        let preprocessor_config = Some(dir.join(PREPROCESSOR_CONFIG_FILE)).filter(|p| p.is_file());
        Ok(Self {
            config,
            weights,
            preprocessor_config,
        })
    }

    /// Resolves `model`: an existing directory, else a hub id (`owner/name`).
    pub fn resolve(model: &str, options: &LoadOptions) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if path.exists() {
            return Err(Error::InvalidInput(format!(
                "{model} is a file; a model is a directory, a hub id, or a DeepMind checkpoint \
                 (.pickle, .pystate)"
            )));
        }
        if !looks_like_hub_id(model) {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
            });
        }
        hub::fetch(model, options)
    }

    /// `model`'s `config.json` as [`resolve`](Self::resolve) finds it, without fetching a hub
    /// id's weights.
    pub fn resolve_config(model: &str, options: &LoadOptions) -> Result<PathBuf> {
        let path = Path::new(model);
        let config = path.join(CONFIG_FILE);
        if path.is_dir() && config.is_file() {
            return Ok(config);
        }
        // Anything else is an error or a hub id: resolve's errors, or the hub's config alone.
        if path.exists() || !looks_like_hub_id(model) {
            return Ok(Self::resolve(model, options)?.config);
        }
        hub::fetch_config(model, options)
    }
}

/// A config and its weights, every tensor name and shape checked against the config before any
/// weight is read.
pub struct Checkpoint {
    config: PerceiverConfig,
    weights: Weights,
}

enum Weights {
    /// Read in place from memory-mapped (or compiled-in) safetensors.
    Safetensors(SafetensorsStore),
    /// Already in memory (a `pytorch_model.bin` read, or tensors handed over).
    Params(BTreeMap<String, Param>),
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens a model's files: safetensors are memory-mapped, a PyTorch `.bin` is read by a
    /// pickle reader that builds tensors only and runs no code from the file ([`haiku::pickle`]).
    pub fn open(files: &ModelFiles) -> Result<Self> {
        let config = PerceiverConfig::from_file(&files.config)?;
        match &files.weights {
            WeightFiles::Safetensors(paths) => {
                for path in paths {
                    check_readable(path)?;
                }
                Self::checked(config, Weights::Safetensors(SafetensorsStore::open(paths)?))
            }
            WeightFiles::PyTorch(path) => {
                check_readable(path)?;
                Self::checked(config, Weights::Params(pytorch::read_pytorch(path)?))
            }
        }
    }

    /// A config.json text and safetensors bytes that live for the whole program (a model compiled
    /// in), read in place.
    pub fn from_static(config_json: &str, safetensors: &'static [u8], name: &str) -> Result<Self> {
        let config = PerceiverConfig::from_json_str(config_json)?;
        Self::checked(
            config,
            Weights::Safetensors(SafetensorsStore::from_static(safetensors, name)?),
        )
    }

    /// A config.json text and safetensors bytes already in memory (a file fetched or unpacked
    /// by the caller), read in place: the bytes live as long as the checkpoint or any tensor
    /// read from it. `name` stands for the file in errors.
    pub fn from_bytes(config_json: &str, safetensors: Vec<u8>, name: &str) -> Result<Self> {
        let config = PerceiverConfig::from_json_str(config_json)?;
        Self::checked(
            config,
            Weights::Safetensors(SafetensorsStore::from_bytes(safetensors, name)?),
        )
    }

    /// Tensors already in memory, by transformers name (a model being trained, for instance).
    pub fn from_params(config: PerceiverConfig, params: BTreeMap<String, Param>) -> Result<Self> {
        Self::checked(config, Weights::Params(params))
    }

    fn checked(mut config: PerceiverConfig, weights: Weights) -> Result<Self> {
        config.validate()?;
        let found: BTreeMap<String, Vec<usize>> = match &weights {
            Weights::Safetensors(store) => store.shapes(),
            Weights::Params(params) => params
                .iter()
                .map(|(n, p)| (n.clone(), p.shape().to_vec()))
                .collect(),
        };
        if Architecture::of(&config)?.is_classifier() && config.num_labels()?.is_none() {
            // transformers names unnamed labels LABEL_0, LABEL_1, …; their count is the final
            // projection's rows.
            let count = match found.get(names::CLASSIFIER_FINAL_WEIGHT).map(|s| s.as_slice()) {
                Some(&[rows, _]) => rows,
                _ => {
                    return Err(Error::MissingTensor {
                        name: names::CLASSIFIER_FINAL_WEIGHT.into(),
                    })
                }
            };
            crate::config::bounds::NUM_LABELS
                .check("num_labels (rows of the final projection)", count as u64)?;
            let labels = config.labels(count)?;
            let id2label = labels
                .into_iter()
                .enumerate()
                .map(|(i, label)| (i.to_string(), serde_json::Value::String(label)))
                .collect();
            config
                .extra
                .insert("id2label".into(), serde_json::Value::Object(id2label));
        }
        check_tensors(&config, found)?;
        if let Weights::Safetensors(store) = &weights {
            // The names were checked above, so the config's layers are no more than the file's.
            let counters: HashSet<String> = ModelNames::new(&config, 0)?
                .counters()
                .map(|t| t.name.clone())
                .collect();
            store.check_dtypes(|name| counters.contains(name))?;
        }
        Ok(Self { config, weights })
    }

    /// The (validated) config.
    pub fn config(&self) -> &PerceiverConfig {
        &self.config
    }

    /// The tensor `name` as f32 (in place when the file stores aligned f32).
    pub fn get(&self, name: &str) -> Result<Param> {
        match &self.weights {
            Weights::Safetensors(store) => store.get(name),
            Weights::Params(params) => params
                .get(name)
                .cloned()
                .ok_or_else(|| Error::MissingTensor { name: name.into() }),
        }
    }

    /// Every tensor of the model, by name, in the order the model reads them.
    /// (BatchNorm's batch counters, which no model reads, are left out.)
    pub fn tensors(&self) -> Result<Vec<(String, Param)>> {
        ModelNames::new(&self.config, 0)?
            .tensors()
            .into_iter()
            .filter(|t| t.role != Role::Counter)
            .map(|t| {
                let param = self.get(&t.name)?;
                Ok((t.name.clone(), param))
            })
            .collect()
    }
}

/// `name` or `owner/name`, made of the characters the hub allows, and not a path.
pub(crate) fn looks_like_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(part_ok)
}

/// The distinct shard file names of a `model.safetensors.index.json` (in tensor-name order).
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| Error::CorruptWeights {
        path: index.to_path_buf(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| corrupt("no \"weight_map\" object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    // A set, not a search of `shards`: an index may list a distinct file for every tensor.
    let mut seen = HashSet::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| corrupt("a weight_map value is not a file name".into()))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(corrupt(format!("shard name {file:?} is not a plain file name")));
        }
        if seen.insert(file) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(corrupt("empty weight_map".into()));
    }
    Ok(shards)
}

fn check_readable(path: &Path) -> Result<()> {
    std::fs::File::open(path).map(|_| ()).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Tensor names with their shapes, in the order a model reads them.
pub type TensorList = Vec<(String, Vec<usize>)>;

/// Every tensor name and shape a model with this config reads, in the order it reads them.
/// (A classifier whose config names no labels is listed with one.)
pub fn expected_tensors(config: &PerceiverConfig) -> Result<TensorList> {
    config.validate()?;
    tensor_list(config)
}

/// [`expected_tensors`] of a config already validated.
pub(crate) fn tensor_list(config: &PerceiverConfig) -> Result<TensorList> {
    Ok(ModelNames::new(config, 1)?
        .tensors()
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect())
}

/// Checks the tensors in the files against those the (validated) config implies: the first
/// missing or mis-shaped tensor (in model order) is the error, then any tensor the model has no
/// place for.
fn check_tensors(config: &PerceiverConfig, found: BTreeMap<String, Vec<usize>>) -> Result<()> {
    // Layers share no tensor, so a checkpoint of `found.len()` tensors holds at most that many
    // layers: the names of one more layer are enough to find the first missing tensor, however
    // many layers an absurd config asks for.
    let mut bounded = config.clone();
    bounded.num_self_attends_per_block = config.num_self_attends_per_block.min(found.len() + 1);
    let config = &bounded;
    let requested = tensor_list(config)?;
    for (name, expected) in &requested {
        match found.get(name) {
            None => return Err(Error::MissingTensor { name: name.clone() }),
            Some(shape) if shape != expected => {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: expected.clone(),
                    found: shape.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let wanted: HashSet<&str> = requested.iter().map(|(n, _)| n.as_str()).collect();
    match found.into_iter().find(|(n, _)| !wanted.contains(n.as_str())) {
        Some((name, shape)) => Err(Error::UnexpectedTensor { name, shape }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        assert!(looks_like_hub_id("deepmind/language-perceiver"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn expected_tensors_follow_the_name_tree() {
        let config = PerceiverConfig::from_json_str(r#"{"qk_channels":256,"v_channels":1280}"#).unwrap();
        let tensors = expected_tensors(&config).unwrap();
        assert_eq!(tensors.len(), 457);
        let params: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params, 201_108_230);
    }

    /// Safetensors bytes handed over in a Vec give the model the files give, tensors read in
    /// place; bytes that are not safetensors are an error naming `name`.
    #[test]
    fn a_checkpoint_from_owned_bytes_is_the_files_model() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/tiny_shared_blocks");
        let config = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        let bytes = std::fs::read(dir.join(SAFETENSORS_FILE)).unwrap();
        let from_bytes = Checkpoint::from_bytes(&config, bytes, "<fetched>").unwrap();
        let from_files = Checkpoint::open(&ModelFiles::from_dir(&dir).unwrap()).unwrap();
        let precision = crate::Precision::F32;
        let text: [&[u32]; 1] = [&[1, 70, 80, 90, 2]];
        let logits = |c: &Checkpoint| {
            crate::PerceiverModel::from_checkpoint(c, precision)
                .unwrap()
                .logits_at(&text, &[&[1, 3]])
                .unwrap()
        };
        assert_eq!(logits(&from_bytes), logits(&from_files));
        let e = Checkpoint::from_bytes(&config, b"not safetensors".to_vec(), "<fetched>").unwrap_err();
        assert!(e.to_string().contains("<fetched>"), "{e}");
    }

    /// The tiny fixture's safetensors bytes with `edit` applied to each tensor's dtype and
    /// little-endian bytes.
    fn edited_fixture(
        edit: impl Fn(&str, safetensors::Dtype, Vec<u8>) -> (safetensors::Dtype, Vec<u8>),
    ) -> (std::path::PathBuf, Vec<u8>) {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/tiny_shared_blocks");
        let bytes = std::fs::read(dir.join(SAFETENSORS_FILE)).unwrap();
        let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = parsed
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let (dtype, data) = edit(&name, view.dtype(), view.data().to_vec());
                (name, dtype, view.shape().to_vec(), data)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
                (name.clone(), view)
            })
            .collect();
        (dir, safetensors::serialize(views, None).unwrap())
    }

    const EDITED: &str = "perceiver.decoder.decoding_cross_attention.attention.output.dense.weight";

    /// An integer tensor other than BatchNorm's counter is refused by name, in int64 (which
    /// counters may be) as in int32, instead of being read as floats.
    #[test]
    fn integer_weights_are_refused_by_name() {
        for dtype in [safetensors::Dtype::I64, safetensors::Dtype::I32] {
            let (dir, bytes) = edited_fixture(|name, old, data| {
                if name != EDITED {
                    return (old, data);
                }
                let width = if dtype == safetensors::Dtype::I64 { 8 } else { 4 };
                (dtype, vec![0; data.len() / 4 * width])
            });
            let config = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
            let e = Checkpoint::from_bytes(&config, bytes, "<edited>").unwrap_err();
            assert!(
                matches!(&e, Error::CorruptWeights { reason, .. } if reason.contains(EDITED) && reason.contains("floating-point")),
                "{e}"
            );
        }
    }

    /// A NaN or an infinity in a weight is refused by the tensor's name, whether the tensor is
    /// read in place (bytes in memory) or copied out of a mapped file (a small tensor).
    #[test]
    fn weights_that_are_not_finite_are_refused_by_name() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (dir, bytes) = edited_fixture(|name, dtype, mut data| {
                if name == EDITED {
                    data[20..24].copy_from_slice(&bad.to_le_bytes());
                }
                (dtype, data)
            });
            let config = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
            let check = |e: Error| {
                assert!(
                    matches!(&e, Error::CorruptWeights { reason, .. } if reason.contains(EDITED) && reason.contains("index 5")),
                    "{e}"
                )
            };
            let in_place = Checkpoint::from_bytes(&config, bytes.clone(), "<edited>").unwrap();
            check(in_place.get(EDITED).unwrap_err());
            let out = tempfile::tempdir().unwrap();
            std::fs::write(out.path().join(CONFIG_FILE), &config).unwrap();
            std::fs::write(out.path().join(SAFETENSORS_FILE), &bytes).unwrap();
            let files = ModelFiles::from_dir(out.path()).unwrap();
            check(
                crate::Loader::new(out.path().to_str().unwrap())
                    .load()
                    .unwrap_err(),
            );
            check(Checkpoint::open(&files).unwrap().get(EDITED).unwrap_err());
        }
    }
}
