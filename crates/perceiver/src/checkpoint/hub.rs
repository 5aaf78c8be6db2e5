//! Hub downloads and cache look-ups as huggingface_hub makes them: its cache layout
//! (`models--owner--name/` with `refs/<revision>` → `snapshots/<commit>/<file>` → `blobs/<etag>`)
//! and its environment: `HF_HOME` / `HF_HUB_CACHE` (cache location), `HF_HUB_OFFLINE`,
//! `HF_TOKEN` / `HF_TOKEN_PATH` (the token), `HF_ENDPOINT`, `HF_HUB_ETAG_TIMEOUT` /
//! `HF_HUB_DOWNLOAD_TIMEOUT` (seconds a hub may stay silent; 10 by default). An interrupted
//! download is resumed by the next load, as huggingface_hub resumes it: its bytes stay in
//! `blobs/<etag>.incomplete`, written under `.locks/models--owner--name/<etag>.lock`.
//!
//! The requests are ureq's, made here rather than by hf-hub, whose client has no timeouts (a hub
//! that accepts a connection and never answers would hang a load forever) and whose `get`
//! answers from `refs/main` in the cache without asking the hub whether `main` moved.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{
    shard_names, LoadOptions, ModelFiles, WeightFiles, CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, PYTORCH_FILE,
    SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE,
};
use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// huggingface_hub's default for both timeouts.
const DEFAULT_TIMEOUT_SECS: f64 = 10.0;
/// The reason given when the hub's file list lacks a file: an answer, not a failure to reach
/// the hub, so no cached copy stands in for it.
const NOT_IN_REPOSITORY: &str = "the repository has no such file";

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

/// A variable's value, trimmed; `None` when unset, empty or blank (as huggingface_hub reads
/// them: `HF_TOKEN=""` is no token).
fn env_value(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> Option<PathBuf> {
    if let Some(home) = env_value("HF_HOME") {
        return Some(home.into());
    }
    let cache = env_value("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|home| home.join(".cache")))?;
    Some(cache.join("huggingface"))
}

/// `HF_HUB_CACHE`, else `$HF_HOME/hub`.
fn cache_dir() -> Result<PathBuf> {
    env_value("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| hf_home().map(|home| home.join("hub")))
        .ok_or_else(|| {
            Error::InvalidInput(
                "no Hugging Face cache: set HF_HOME or HF_HUB_CACHE (there is no home directory)".into(),
            )
        })
}

/// The token, as huggingface_hub finds it: `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else
/// `$HF_HOME/token` (where `huggingface-cli login` writes it; not beside `HF_HUB_CACHE`).
/// Blank means none.
fn token() -> Option<String> {
    if let Some(token) = env_value("HF_TOKEN") {
        return Some(token);
    }
    let path = env_value("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| hf_home().map(|home| home.join("token")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Seconds from `name` (huggingface_hub's `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`).
fn timeout(name: &str) -> Result<Duration> {
    let Some(text) = env_value(name) else {
        return Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS));
    };
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{name} must be a number of seconds above 0, not {text:?}"
            ))
        })
}

fn hub_error(model_id: &str, file: &str, reason: impl ToString) -> Error {
    Error::Hub {
        model_id: model_id.to_string(),
        file: file.to_string(),
        reason: reason.to_string(),
    }
}

/// A git commit hash, as the hub names snapshots (and the only names used as directories).
fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The hub's client: its endpoint and token, and an agent per kind of request, each with its
/// timeouts.
struct Hub {
    endpoint: String,
    token: Option<String>,
    /// Metadata (the revision's commit and files, a file's ETag): `HF_HUB_ETAG_TIMEOUT`.
    metadata: ureq::Agent,
    /// The same without following redirects: a file's ETag is on the hub's own answer, not on
    /// the storage it redirects to.
    head: ureq::Agent,
    /// File contents: `HF_HUB_DOWNLOAD_TIMEOUT` without a byte.
    download: ureq::Agent,
}

#[derive(serde::Deserialize)]
struct RevisionInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(serde::Deserialize)]
struct Sibling {
    rfilename: String,
}

impl Hub {
    fn from_env() -> Result<Self> {
        let agent = |timeout: Duration, redirects: u32| {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .timeout_write(timeout)
                .redirects(redirects)
                // The token goes to the hub, not to the storage it redirects downloads to.
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .user_agent(concat!("perceiver/", env!("CARGO_PKG_VERSION"), "; rust"))
                .build()
        };
        let (etag, download) = (
            timeout("HF_HUB_ETAG_TIMEOUT")?,
            timeout("HF_HUB_DOWNLOAD_TIMEOUT")?,
        );
        let endpoint = env_value("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token(),
            metadata: agent(etag, 5),
            head: agent(etag, 0),
            download: agent(download, 5),
        })
    }

    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        let request = agent.request(method, url);
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// The commit `revision` names now, and its files.
    fn revision(&self, model_id: &str, revision: &str) -> std::result::Result<RevisionInfo, String> {
        let url = format!(
            "{}/api/models/{model_id}/revision/{}",
            self.endpoint,
            revision.replace('/', "%2F")
        );
        let response = self
            .request(&self.metadata, "GET", &url)
            .call()
            .map_err(|e| e.to_string())?;
        let info: RevisionInfo = serde_json::from_reader(response.into_reader())
            .map_err(|e| format!("{url}: not the hub's answer: {e}"))?;
        if !is_commit(&info.sha) {
            return Err(format!("{url}: {:?} is not a commit hash", info.sha));
        }
        Ok(info)
    }

    /// Downloads `file` of commit `sha` into the cache at `repo` (its blob, and the snapshot's
    /// link to it), returning the snapshot's path.
    fn download(
        &self,
        model_id: &str,
        sha: &str,
        file: &str,
        repo: &Path,
    ) -> std::result::Result<PathBuf, String> {
        let url = format!("{}/{model_id}/resolve/{sha}/{file}", self.endpoint);
        let mut head_url = url.clone();
        let mut redirects = 0;
        let head = loop {
            let response = match self.request(&self.head, "HEAD", &head_url).call() {
                Ok(response) => response,
                Err(ureq::Error::Status(300..=399, response)) => response,
                Err(e) => return Err(e.to_string()),
            };
            // A redirect within the hub (a renamed repository) is followed, as huggingface_hub
            // follows it; one to the file's storage carries the ETag itself.
            match response.header("Location") {
                Some(to) if response.status() >= 300 && to.starts_with('/') && redirects < 5 => {
                    head_url = format!("{}{to}", self.endpoint);
                    redirects += 1;
                }
                _ => break response,
            }
        };
        // An LFS file's ETag (its sha256) is X-Linked-Etag on the hub's redirect; a small file's
        // is its ETag.
        let etag = head
            .header("X-Linked-Etag")
            .or_else(|| head.header("ETag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .unwrap_or_default();
        // It names a file in the cache: nothing but a plain name is taken.
        if etag.is_empty()
            || etag.starts_with('.')
            || !etag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!("{url}: the hub's answer has no usable ETag ({etag:?})"));
        }
        let size = head
            .header("X-Linked-Size")
            .or_else(|| {
                (head.status() < 300)
                    .then(|| head.header("Content-Length"))
                    .flatten()
            })
            .and_then(|s| s.parse::<u64>().ok());
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |e: std::io::Error| format!("cannot write {path}: {e}")
        };
        let blobs = repo.join("blobs");
        let blob = blobs.join(&etag);
        if !blob.is_file() {
            std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
            // One download of a blob at a time, across processes, under huggingface_hub's
            // lock file, so that its partial file (huggingface_hub's name too) can be resumed by
            // whichever load comes next. Where no lock can be had, a partial file of this
            // process's own, not resumed.
            let lock = lock_blob(repo, &etag, file);
            // Another load may have finished it while this one waited.
            if !blob.is_file() {
                let partial = match &lock {
                    Some(_) => blobs.join(format!("{etag}.incomplete")),
                    None => {
                        static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);
                        let n = DOWNLOADS.fetch_add(1, Ordering::Relaxed);
                        blobs.join(format!("{etag}.{}.{n}.incomplete", std::process::id()))
                    }
                };
                let fetched = self
                    .fetch_to(&url, file, size, &partial, lock.is_some())
                    .and_then(|resumed| match resumed {
                        true => check_sha256(&partial, &etag),
                        false => Ok(()),
                    });
                if let Err(e) = fetched.and_then(|()| std::fs::rename(&partial, &blob).map_err(io(&blob))) {
                    // What came is kept for the next load to resume, unless nothing did or no
                    // later load could find it.
                    if lock.is_none() || std::fs::metadata(&partial).is_ok_and(|m| m.len() == 0) {
                        let _ = std::fs::remove_file(&partial);
                    }
                    return Err(e);
                }
            }
        }
        let pointer = repo.join("snapshots").join(sha).join(file);
        if !pointer.exists() {
            let dir = pointer.parent().unwrap_or(repo);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let _ = std::fs::remove_file(&pointer); // a link to a blob that is gone
            link(&blob, &pointer, &etag, file).map_err(io(&pointer))?;
        }
        Ok(pointer)
    }

    /// The body of `url` into `path`, with a progress bar on a terminal. A partial file already
    /// at `path` (an interrupted download) is resumed with a range request; a hub that answers
    /// with the whole body instead has it written from the start. Whether it resumed. `kept`:
    /// whether a failed download's bytes stay for the next load (its errors say so).
    fn fetch_to(
        &self,
        url: &str,
        file: &str,
        size: Option<u64>,
        path: &Path,
        kept: bool,
    ) -> std::result::Result<bool, String> {
        let cannot_write = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let kept = |why: String| match kept {
            true => format!(
                "{why} (the next load resumes the download from {}, which may be deleted)",
                path.display()
            ),
            false => why,
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(cannot_write)?;
        let mut have = out.metadata().map_err(cannot_write)?.len();
        if size.is_some_and(|size| have > size) {
            // Not a part of this file.
            out.set_len(0).map_err(cannot_write)?;
            have = 0;
        }
        if have > 0 && Some(have) == size {
            out.sync_all().map_err(cannot_write)?;
            return Ok(true);
        }
        // The bytes as stored (not gzipped in transit), so that their count can be checked
        // against the size announced, as huggingface_hub checks it.
        let get = |from: u64| {
            let request = self
                .request(&self.download, "GET", url)
                .set("Accept-Encoding", "identity");
            match from {
                0 => request,
                from => request.set("Range", &format!("bytes={from}-")),
            }
        };
        let response = match get(have).call() {
            Ok(response) => response,
            // The range is past the file's end (it changed under its ETag?): from the start.
            Err(ureq::Error::Status(416, _)) if have > 0 => {
                have = 0;
                get(0).call().map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        // A partial answer must start where the partial file ends (at 0 for a whole file); a
        // 200 is the whole file.
        let start = match response.status() {
            200 => 0,
            206 if response
                .header("Content-Range")
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split_once('-'))
                .is_some_and(|(start, _)| start.trim().parse() == Ok(have)) =>
            {
                have
            }
            status => {
                let _ = out.set_len(0); // the next load starts afresh
                return Err(format!("{url}: the hub answered {status} to a download"));
            }
        };
        out.set_len(start).map_err(cannot_write)?;
        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(start)).map_err(cannot_write)?;
        let size = size.or_else(|| {
            let rest: u64 = response.header("Content-Length")?.parse().ok()?;
            rest.checked_add(start)
        });
        let bar = indicatif::ProgressBar::new(size.unwrap_or(0)).with_message(file.to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(start);
        // At most one byte past the size announced: enough to tell that the body is too long,
        // not a disk filled by a hub that never stops.
        let limit = size.map_or(u64::MAX, |size| (size - start).saturating_add(1));
        let body = std::io::Read::take(response.into_reader(), limit);
        let copied = std::io::copy(&mut bar.wrap_read(body), &mut out);
        bar.finish_and_clear();
        let total = match copied {
            Ok(copied) => start + copied,
            Err(e) => {
                // What has come is on disk; a later load resumes from there.
                let _ = out.sync_all();
                let message = match e.kind() {
                    std::io::ErrorKind::StorageFull => cannot_write(e),
                    _ => format!("{url}: {e}"),
                };
                return Err(kept(message));
            }
        };
        match size {
            Some(size) if total > size => {
                let _ = out.set_len(0);
                Err(format!("{url}: more than the {size} bytes announced came"))
            }
            Some(size) if total < size => {
                let _ = out.sync_all();
                Err(kept(format!("{url}: {total} of {size} bytes came")))
            }
            _ => {
                out.sync_all().map_err(cannot_write)?;
                Ok(start > 0)
            }
        }
    }
}

/// Takes huggingface_hub's lock on the blob `etag` of `repo` (`.locks/models--owner--name/
/// <etag>.lock` beside it), waiting for another process's download of it to end (and saying
/// so); `None` where no lock can be had (a file system without locks, a lock file that cannot
/// be opened).
fn lock_blob(repo: &Path, etag: &str, file: &str) -> Option<std::fs::File> {
    let locks = repo
        .parent()
        .unwrap_or(repo)
        .join(".locks")
        .join(repo.file_name().unwrap_or_default());
    let _ = std::fs::create_dir_all(&locks);
    let path = locks.join(format!("{etag}.lock"));
    // A lock needs no write access: a cache shared by several users may hold another's file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path))
        .ok()?;
    match lock.try_lock() {
        Ok(()) => Some(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "waiting for another download of {file} to finish (it holds {})",
                path.display()
            );
            lock.lock().ok().map(|()| lock)
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Errors unless the file's sha256 is `etag` where the ETag is one (a file stored with LFS, as
/// the weights are): a resumed download is checked whole, since its first part came from an
/// earlier run. A file that fails is removed, so that the next load starts afresh.
fn check_sha256(path: &Path, etag: &str) -> std::result::Result<(), String> {
    use sha2::Digest as _;
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut hasher = sha2::Sha256::new();
    let hashed = std::fs::File::open(path).and_then(|mut f| {
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut f, &mut buffer)? {
                0 => return Ok(()),
                n => hasher.update(&buffer[..n]),
            }
        }
    });
    hashed.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != etag.to_ascii_lowercase() {
        let _ = std::fs::remove_file(path);
        return Err(format!(
            "the resumed download's sha256 is {digest}, not the {etag} the hub names; it was removed: \
             load again to download it afresh"
        ));
    }
    Ok(())
}

/// The snapshot's entry for a blob: a relative link, as huggingface_hub makes it (a copy
/// where links cannot be made).
fn link(blob: &Path, pointer: &Path, etag: &str, file: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        // snapshots/<commit>/<file> → ../../blobs/<etag>, one more ../ per folder in `file`.
        let up = "../".repeat(2 + file.matches('/').count());
        if std::os::unix::fs::symlink(format!("{up}blobs/{etag}"), pointer).is_ok() {
            return Ok(());
        }
    }
    let _ = (etag, file);
    std::fs::copy(blob, pointer).map(|_| ())
}

/// Where files come from: the hub (downloading into the cache) or the cache alone.
enum Source<'a> {
    Online {
        hub: &'a Hub,
        repo: PathBuf,
        sha: String,
        listed: Vec<String>,
    },
    /// A snapshot directory in the cache (`None`: the cache has no such revision).
    Cache(Option<PathBuf>),
}

impl Source<'_> {
    /// The local path of a repository file, `None` if the repository (or cache) lacks it.
    fn get(&self, model_id: &str, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Self::Online {
                hub,
                repo,
                sha,
                listed,
            } => {
                if !listed.iter().any(|f| f == file) {
                    return Ok(None);
                }
                let cached = repo.join("snapshots").join(sha).join(file);
                if cached.exists() {
                    return Ok(Some(cached));
                }
                hub.download(model_id, sha, file, repo)
                    .map(Some)
                    .map_err(|e| hub_error(model_id, file, e))
            }
            Self::Cache(snapshot) => Ok(snapshot
                .as_ref()
                .map(|dir| dir.join(file))
                .filter(|path| path.exists())),
        }
    }

    fn missing(&self, model_id: &str, file: &str) -> Error {
        let reason = match self {
            Self::Online { .. } => NOT_IN_REPOSITORY,
            Self::Cache(_) => "not in the local Hugging Face cache, and offline",
        };
        hub_error(model_id, file, reason)
    }
}

/// The snapshot of `revision` in the cache: a commit's own, else the one `refs/<revision>`
/// names.
fn cached_snapshot(repo: &Path, revision: &str) -> Option<PathBuf> {
    if is_commit(revision) {
        return Some(repo.join("snapshots").join(revision));
    }
    let commit = std::fs::read_to_string(repo.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    is_commit(commit).then(|| repo.join("snapshots").join(commit))
}

/// Records that `revision` is `commit` (`refs/<revision>`), as huggingface_hub does after a
/// download, so that offline loads find it. Written beside and renamed, so that a reader never
/// sees half a hash.
fn write_ref(repo: &Path, revision: &str, commit: &str) -> std::io::Result<()> {
    let path = repo.join("refs").join(revision);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_file_name(format!(".{}.{}.partial", commit, std::process::id()));
    std::fs::write(&partial, commit)?;
    std::fs::rename(&partial, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

/// Fetches (or, offline, finds in the cache) config.json and the weights of `model_id`: the
/// files of the commit the revision names on the hub now, downloaded if the cache lacks them.
/// When the hub cannot be reached (or a download fails), a complete copy in the cache is used,
/// as huggingface_hub does.
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
    let repo = cache_dir()?.join(format!("models--{}", model_id.replace('/', "--")));
    let cached = || Source::Cache(cached_snapshot(&repo, &revision));
    if options.offline || env_flag("HF_HUB_OFFLINE") {
        return take(&cached(), model_id);
    }
    let hub = Hub::from_env()?;
    let online = hub
        .revision(model_id, &revision)
        .map_err(|e| hub_error(model_id, CONFIG_FILE, e))
        .and_then(|info| {
            let source = Source::Online {
                hub: &hub,
                repo: repo.clone(),
                listed: info.siblings.into_iter().map(|s| s.rfilename).collect(),
                sha: info.sha.clone(),
            };
            Ok((take(&source, model_id)?, info.sha))
        });
    match online {
        Ok((taken, sha)) => {
            // A branch or tag (not a path out of refs/) now names this commit. Best effort, as
            // huggingface_hub's: the files are had either way.
            let plain = revision
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..");
            if sha != revision && plain {
                let _ = write_ref(&repo, &revision, &sha);
            }
            Ok(taken)
        }
        // The hub could not be asked, or a download failed: a complete cached copy will do.
        // (Not when the hub answered that the repository lacks a file.)
        Err(e @ Error::Hub { .. }) if !matches!(&e, Error::Hub { reason, .. } if reason == NOT_IN_REPOSITORY) => {
            take(&cached(), model_id).map_err(|_| e)
        }
        Err(e) => Err(e),
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
