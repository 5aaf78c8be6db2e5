//! From a model reference (a local directory or a Hugging Face hub id) to a model whose every
//! tensor has been checked against its config.
//!
//! A model directory holds transformers' `config.json` and its weights as `model.safetensors`
//! (memory-mapped), sharded `model.safetensors.index.json` + shards, or `pytorch_model.bin`.
//! Hub ids are fetched with `hf-hub` into the standard cache (`HF_HOME` honoured); offline
//! (`LoadOptions::offline` or `HF_HUB_OFFLINE=1`) they resolve from the cache only.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::PerceiverConfig;
use crate::engine::weights::SafetensorsStore;
use crate::engine::{MaskedLmEngine, Param, Precision};
use crate::error::{Error, Result};
use crate::heads::masked_lm::PerceiverForMaskedLM;

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

/// How to find a model.
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
    pub config: PathBuf,
    pub weights: WeightFiles,
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
        Ok(Self { config, weights })
    }

    /// Resolves `model`: an existing directory, else a hub id (`owner/name`).
    pub fn resolve(model: &str, options: &LoadOptions) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if path.exists() {
            return Err(Error::InvalidInput(format!(
                "{model} is a file; --model takes a model directory or a hub id"
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
}

/// `name` or `owner/name`, made of the characters the hub allows, and not a path.
fn looks_like_hub_id(model: &str) -> bool {
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

/// Opened weights, before any tensor is materialised.
enum OpenWeights {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    PyTorch(candle_core::pickle::PthTensors),
}

impl OpenWeights {
    fn open(files: &WeightFiles) -> Result<Self> {
        let corrupt = |path: &Path, e: candle_core::Error| Error::CorruptWeights {
            path: path.to_path_buf(),
            reason: crate::error::candle_message(&e),
        };
        match files {
            WeightFiles::Safetensors(paths) => {
                for path in paths {
                    check_readable(path)?;
                    // Map and parse each file on its own first so an error names the bad shard.
                    // SAFETY: the file is mapped read-only; as with every memory-mapped model
                    // loader, it must not be modified while the model is alive.
                    unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                        .map_err(|e| corrupt(path, e))?;
                }
                // SAFETY: as above.
                let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(paths) }
                    .map_err(|e| corrupt(&paths[0], e))?;
                Ok(Self::Safetensors(st))
            }
            WeightFiles::PyTorch(path) => {
                check_readable(path)?;
                crate::pickle_check::check(path)?;
                let pth = candle_core::pickle::PthTensors::new(path, None).map_err(|e| corrupt(path, e))?;
                Ok(Self::PyTorch(pth))
            }
        }
    }

    /// Name → shape of every tensor in the files.
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        match self {
            Self::Safetensors(st) => st
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect(),
            Self::PyTorch(pth) => pth
                .tensor_infos()
                .iter()
                .map(|(name, info)| (name.clone(), info.layout.shape().dims().to_vec()))
                .collect(),
        }
    }

    fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        match self {
            Self::Safetensors(st) => VarBuilder::from_backend(Box::new(st), dtype, device.clone()),
            Self::PyTorch(pth) => VarBuilder::from_backend(Box::new(pth), dtype, device.clone()),
        }
    }
}

fn check_readable(path: &Path) -> Result<()> {
    std::fs::File::open(path).map(|_| ()).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Tensor names with their shapes, in the order a model asks for them.
pub type TensorList = Vec<(String, Vec<usize>)>;

/// A `VarBuilder` backend that hands out zero-cost placeholder tensors and records what the model
/// asks for. With the weights' index (`found`), it stops at the first tensor that is missing or
/// mis-shaped, so even an absurd config fails fast instead of listing millions of tensors.
struct TensorChecker<'a> {
    found: Option<&'a BTreeMap<String, Vec<usize>>>,
    state: Arc<Mutex<CheckState>>,
}

#[derive(Default)]
struct CheckState {
    requested: TensorList,
    problem: Option<Error>,
}

impl SimpleBackend for TensorChecker<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut state = self.state.lock().expect("checker lock");
        let expected = shape.dims().to_vec();
        let problem = match self.found.as_ref().map(|found| found.get(name)) {
            Some(None) => Some(Error::MissingTensor {
                name: name.to_string(),
            }),
            Some(Some(found)) if *found != expected => Some(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.clone(),
                found: found.clone(),
            }),
            _ => None,
        };
        if let Some(problem) = problem {
            state.problem = Some(problem);
            candle_core::bail!("weights do not match the config at {name}");
        }
        state.requested.push((name.to_string(), expected));
        // A broadcast scalar: the right shape without allocating the tensor.
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the tensor checker cannot provide {name} without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.found.as_ref().is_none_or(|found| found.contains_key(name))
    }
}

/// Builds the model on a [`TensorChecker`]; returns what it asked for, or the first mismatch.
fn run_checker(config: &PerceiverConfig, found: Option<&BTreeMap<String, Vec<usize>>>) -> Result<TensorList> {
    let state = Arc::new(Mutex::new(CheckState::default()));
    let checker = TensorChecker {
        found,
        state: state.clone(),
    };
    let built = PerceiverForMaskedLM::new(
        config,
        VarBuilder::from_backend(Box::new(checker), DType::F32, Device::Cpu),
    );
    let mut state = state.lock().expect("checker lock");
    match (built, state.problem.take()) {
        (_, Some(problem)) => Err(problem),
        (Err(e), None) => Err(e),
        (Ok(_), None) => Ok(std::mem::take(&mut state.requested)),
    }
}

/// Every tensor name and shape a masked LM with this config reads, in construction order.
pub fn expected_tensors(config: &PerceiverConfig) -> Result<TensorList> {
    run_checker(config, None)
}

/// Checks the tensors in the files against those the config implies: the first missing or
/// mis-shaped tensor (in model order) is the error, then any tensor the model has no place for.
fn check_tensors(config: &PerceiverConfig, found: BTreeMap<String, Vec<usize>>) -> Result<()> {
    let requested = run_checker(config, Some(&found))?;
    let wanted: HashSet<&str> = requested.iter().map(|(n, _)| n.as_str()).collect();
    match found.into_iter().find(|(n, _)| !wanted.contains(n.as_str())) {
        Some((name, shape)) => Err(Error::UnexpectedTensor { name, shape }),
        None => Ok(()),
    }
}

/// Loads a masked language model from its files: the config is validated and every tensor's
/// name and shape checked against it before any weight is read into memory.
pub fn load_masked_lm(files: &ModelFiles, device: &Device) -> Result<PerceiverForMaskedLM> {
    let (config, weights) = open_checked(files)?;
    PerceiverForMaskedLM::new(&config, weights.into_var_builder(DType::F32, device))
}

/// The config and the opened weights, every tensor name and shape checked against the config.
fn open_checked(files: &ModelFiles) -> Result<(PerceiverConfig, OpenWeights)> {
    let config = PerceiverConfig::from_file(&files.config)?;
    let weights = OpenWeights::open(&files.weights)?;
    check_tensors(&config, weights.shapes())?;
    Ok((config, weights))
}

/// Reads every tensor of a masked language model (checked against its config as
/// [`load_masked_lm`] does), by transformers name: the starting point for fine-tuning.
pub fn load_masked_lm_tensors(
    files: &ModelFiles,
    device: &Device,
) -> Result<(PerceiverConfig, BTreeMap<String, Tensor>)> {
    let (config, weights) = open_checked(files)?;
    let vb = weights.into_var_builder(DType::F32, device);
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected_tensors(&config)? {
        let tensor = vb.get(shape, &name)?;
        tensors.insert(name, tensor);
    }
    Ok((config, tensors))
}

/// Loads a masked language model from a config.json text and safetensors bytes in memory, with
/// the same checks as [`load_masked_lm`].
pub fn load_masked_lm_from_memory(
    config_json: &str,
    safetensors: &[u8],
    device: &Device,
) -> Result<PerceiverForMaskedLM> {
    let config = PerceiverConfig::from_json_str(config_json)?;
    let tensors =
        candle_core::safetensors::load_buffer(safetensors, device).map_err(|e| Error::CorruptWeights {
            path: PathBuf::from("<memory>"),
            reason: crate::error::candle_message(&e),
        })?;
    let shapes = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    check_tensors(&config, shapes)?;
    PerceiverForMaskedLM::new(&config, VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// [`ModelFiles::resolve`] then [`load_masked_lm`]; the name `default` is the model built into
/// this library (see [`crate::default_model`]).
pub fn load_masked_lm_from(
    model: &str,
    options: &LoadOptions,
    device: &Device,
) -> Result<PerceiverForMaskedLM> {
    #[cfg(feature = "default-model")]
    if model == crate::default_model::NAME {
        return crate::default_model::load(device);
    }
    load_masked_lm(&ModelFiles::resolve(model, options)?, device)
}

/// Loads a masked language model into the inference engine ([`MaskedLmEngine`]), with the same
/// checks as [`load_masked_lm`], its products in f32. Safetensors weights are memory-mapped and
/// read in place; PyTorch `.bin` weights are read through candle and copied.
pub fn load_engine(files: &ModelFiles) -> Result<MaskedLmEngine> {
    load_engine_as(files, Precision::F32)
}

/// [`load_engine`] with the products in `precision` from the start (in bf16, without the f32
/// copy of the weights on the way: see [`MaskedLmEngine::from_params_as`]).
pub fn load_engine_as(files: &ModelFiles, precision: Precision) -> Result<MaskedLmEngine> {
    let config = PerceiverConfig::from_file(&files.config)?;
    match &files.weights {
        WeightFiles::Safetensors(paths) => {
            for path in paths {
                check_readable(path)?;
            }
            let store = SafetensorsStore::open(paths)?;
            check_tensors(&config, store.shapes())?;
            MaskedLmEngine::from_params_as(&config, &mut |name| store.get(name), precision)
        }
        WeightFiles::PyTorch(_) => {
            let (config, tensors) = load_masked_lm_tensors(files, &Device::Cpu)?;
            engine_from_tensors_as(&config, &tensors, precision)
        }
    }
}

/// The engine from candle tensors by transformers name (a model being trained, for instance);
/// the tensors are copied.
pub fn engine_from_tensors(
    config: &PerceiverConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<MaskedLmEngine> {
    engine_from_tensors_as(config, tensors, Precision::F32)
}

fn engine_from_tensors_as(
    config: &PerceiverConfig,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> Result<MaskedLmEngine> {
    check_tensors(
        config,
        tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect(),
    )?;
    let mut get = |name: &str| {
        let tensor = tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Param::owned(values, tensor.dims().to_vec()))
    };
    MaskedLmEngine::from_params_as(config, &mut get, precision)
}

/// An engine with randomly initialised weights (candle's initialisers, as
/// [`PerceiverForMaskedLM::new`] on a fresh `VarMap` gives them): for examples and tests.
pub fn random_engine(config: &PerceiverConfig) -> Result<MaskedLmEngine> {
    config.validate()?;
    let weights = candle_nn::VarMap::new();
    PerceiverForMaskedLM::new(
        config,
        VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu),
    )?;
    let tensors: BTreeMap<String, Tensor> = weights
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    engine_from_tensors(config, &tensors)
}

/// The engine from a config.json text and safetensors bytes that live for the whole program
/// (a model compiled in), read in place, its products in `precision`.
pub fn load_engine_from_static(
    config_json: &str,
    safetensors: &'static [u8],
    precision: Precision,
) -> Result<MaskedLmEngine> {
    let config = PerceiverConfig::from_json_str(config_json)?;
    let store = SafetensorsStore::from_static(safetensors, "<built-in model>")?;
    check_tensors(&config, store.shapes())?;
    MaskedLmEngine::from_params_as(&config, &mut |name| store.get(name), precision)
}

/// [`ModelFiles::resolve`] then [`load_engine`]; the name `default` is the built-in model.
pub fn load_engine_from(model: &str, options: &LoadOptions) -> Result<MaskedLmEngine> {
    load_engine_from_as(model, options, Precision::F32)
}

/// [`load_engine_from`] with the products in `precision` from the start ([`load_engine_as`]).
pub fn load_engine_from_as(
    model: &str,
    options: &LoadOptions,
    precision: Precision,
) -> Result<MaskedLmEngine> {
    #[cfg(feature = "default-model")]
    if model == crate::default_model::NAME {
        return crate::default_model::engine(precision);
    }
    load_engine_as(&ModelFiles::resolve(model, options)?, precision)
}

mod hub {
    //! Hub downloads and cache look-ups with `hf-hub`, following huggingface_hub's environment:
    //! `HF_HOME` / `HF_HUB_CACHE` (cache location), `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`.

    use super::*;
    use hf_hub::api::sync::{ApiBuilder, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    fn env_flag(name: &str) -> bool {
        std::env::var(name)
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    }

    fn cache() -> Cache {
        match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) if !dir.is_empty() => Cache::new(dir.into()),
            _ => Cache::from_env(),
        }
    }

    fn hub_error(model_id: &str, file: &str, reason: impl ToString) -> Error {
        Error::Hub {
            model_id: model_id.to_string(),
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Where files come from: the hub (downloading into the cache) or the cache alone.
    enum Source {
        Online {
            api: ApiRepo,
            listed: Vec<String>,
        },
        Cache(hf_hub::CacheRepo),
        /// A revision given as a commit hash: its snapshot directory in the cache.
        Snapshot(PathBuf),
    }

    impl Source {
        /// The local path of a repository file, `None` if the repository (or cache) lacks it.
        fn get(&self, model_id: &str, file: &str) -> Result<Option<PathBuf>> {
            match self {
                Self::Online { api, listed } => {
                    if !listed.iter().any(|f| f == file) {
                        return Ok(None);
                    }
                    api.get(file).map(Some).map_err(|e| hub_error(model_id, file, e))
                }
                Self::Cache(cache) => Ok(cache.get(file)),
                Self::Snapshot(dir) => {
                    let path = dir.join(file);
                    Ok(path.exists().then_some(path))
                }
            }
        }

        fn missing(&self, model_id: &str, file: &str) -> Error {
            let reason = match self {
                Self::Online { .. } => "the repository has no such file",
                Self::Cache(_) | Self::Snapshot(_) => "not in the local Hugging Face cache, and offline",
            };
            hub_error(model_id, file, reason)
        }
    }

    /// Fetches (or, offline, finds in the cache) config.json and the weights of `model_id`.
    /// When the hub cannot be reached, a complete copy in the cache is used, as huggingface_hub
    /// does.
    pub(super) fn fetch(model_id: &str, options: &LoadOptions) -> Result<ModelFiles> {
        let revision = options.revision.clone().unwrap_or_else(|| "main".to_string());
        let repo = Repo::with_revision(model_id.to_string(), RepoType::Model, revision.clone());
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        let cached = || {
            if is_commit {
                // huggingface_hub's layout: a commit's files live in snapshots/<commit>/.
                Source::Snapshot(
                    cache()
                        .path()
                        .join(repo.folder_name())
                        .join("snapshots")
                        .join(&revision),
                )
            } else {
                Source::Cache(cache().repo(repo.clone()))
            }
        };
        if options.offline || env_flag("HF_HUB_OFFLINE") {
            return files_from(&cached(), model_id);
        }
        let online = || -> Result<Source> {
            let mut builder = ApiBuilder::from_cache(cache())
                .with_progress(true)
                .with_retries(2);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                builder = builder.with_token(Some(token));
            }
            let api = builder
                .build()
                .map_err(|e| hub_error(model_id, CONFIG_FILE, e))?
                .repo(repo.clone());
            let info = api.info().map_err(|e| hub_error(model_id, CONFIG_FILE, e))?;
            let listed = info.siblings.into_iter().map(|s| s.rfilename).collect();
            Ok(Source::Online { api, listed })
        };
        match online() {
            Ok(source) => files_from(&source, model_id),
            Err(online_error) => files_from(&cached(), model_id).map_err(|_| online_error),
        }
    }

    fn files_from(source: &Source, model_id: &str) -> Result<ModelFiles> {
        let get = |file: &str| source.get(model_id, file);
        let config = get(CONFIG_FILE)?.ok_or_else(|| source.missing(model_id, CONFIG_FILE))?;
        let weights = if let Some(path) = get(SAFETENSORS_FILE)? {
            WeightFiles::Safetensors(vec![path])
        } else if let Some(index) = get(SAFETENSORS_INDEX_FILE)? {
            let mut shards = Vec::new();
            for shard in shard_names(&index)? {
                shards.push(get(&shard)?.ok_or_else(|| source.missing(model_id, &shard))?);
            }
            WeightFiles::Safetensors(shards)
        } else if let Some(path) = get(PYTORCH_FILE)? {
            WeightFiles::PyTorch(path)
        } else {
            return Err(source.missing(model_id, SAFETENSORS_FILE));
        };
        Ok(ModelFiles { config, weights })
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
    fn language_perceiver_has_457_tensors_and_201m_parameters() {
        let text = r#"{"qk_channels":256,"v_channels":1280}"#;
        let config = PerceiverConfig::from_json_str(text).unwrap();
        let tensors = expected_tensors(&config).unwrap();
        assert_eq!(tensors.len(), 457);
        let params: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params, 201_108_230);
    }
}
