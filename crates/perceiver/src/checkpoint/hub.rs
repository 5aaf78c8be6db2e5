//! Hub downloads and cache look-ups with `hf-hub`, following huggingface_hub's environment:
//! `HF_HOME` / `HF_HUB_CACHE` (cache location), `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`.

use std::path::PathBuf;

use super::{
    shard_names, LoadOptions, ModelFiles, WeightFiles, CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, PYTORCH_FILE,
    SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE,
};
use crate::error::{Error, Result};
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
pub(crate) fn fetch(model_id: &str, options: &LoadOptions) -> Result<ModelFiles> {
    fetch_with(model_id, options, files_from)
}

/// Fetches (or finds) config.json alone: a model's sizes before its weights are downloaded.
pub(crate) fn fetch_config(model_id: &str, options: &LoadOptions) -> Result<PathBuf> {
    fetch_with(model_id, options, |source, model_id| {
        source
            .get(model_id, CONFIG_FILE)?
            .ok_or_else(|| source.missing(model_id, CONFIG_FILE))
    })
}

/// `take` from the hub, or from the cache (offline, or when the hub cannot be reached).
fn fetch_with<T>(
    model_id: &str,
    options: &LoadOptions,
    take: impl Fn(&Source, &str) -> Result<T>,
) -> Result<T> {
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
        return take(&cached(), model_id);
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
        Ok(source) => take(&source, model_id),
        Err(online_error) => take(&cached(), model_id).map_err(|_| online_error),
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
    let preprocessor_config = get(PREPROCESSOR_CONFIG_FILE)?;
    Ok(ModelFiles {
        config,
        weights,
        preprocessor_config,
    })
}
