//! Hub ids against a fake hub that the test serves on loopback (`HF_ENDPOINT`): a newer
//! commit of `main` is downloaded, a hub that never answers falls back to the cache in the
//! time `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` allow, and the token is sent as
//! huggingface_hub finds it. Nothing leaves the machine.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPO: &str = "someone/tiny-perceiver";
const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

/// A model's files as the fake hub serves them.
fn files_of(name: &str) -> BTreeMap<String, Vec<u8>> {
    ["config.json", "model.safetensors"]
        .into_iter()
        .map(|f| (f.to_string(), std::fs::read(fixture(name).join(f)).unwrap()))
        .collect()
}

#[derive(Default)]
struct State {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    /// Answer downloads' headers, then send nothing.
    stall_downloads: bool,
    /// Send only this many bytes of a longer file, then close the connection.
    cut_downloads_after: Option<usize>,
    /// Answer range requests with the whole file.
    ignore_ranges: bool,
    /// Answer a plain GET with a 206 that names the whole file.
    partial_for_whole: bool,
    /// Name files by their sha256, as the hub names files stored with LFS.
    sha256_etags: bool,
    /// The Range header of each GET that had one.
    ranges: Vec<String>,
    /// "METHOD PATH", and the Authorization header as sent (`None`: no header).
    log: Vec<(String, Option<String>)>,
}

/// An HTTP/1.1 hub of one repository: `/api/models/<id>/revision/<rev>` and
/// `/<id>/resolve/<commit>/<file>` (HEAD and GET), one request per connection.
struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    fn start(commit: &str, files: BTreeMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            commit: commit.to_string(),
            files,
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { endpoint, state }
    }

    fn publish(&self, commit: &str, files: BTreeMap<String, Vec<u8>>) {
        let mut state = self.state.lock().unwrap();
        state.commit = commit.to_string();
        state.files = files;
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }

    fn ranges(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().ranges)
    }
}

/// A content hash for ETags (FNV-1a): any stable plain name will do.
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap_or(0);
    let (mut auth, mut range, mut range_header) = (None, None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                auth = Some(value.trim().to_string());
            }
            // `bytes=START-` or `bytes=START-END`, as clients ask for a file's first byte.
            if name.eq_ignore_ascii_case("range") {
                range_header = Some(value.trim().to_string());
                range = value.trim().strip_prefix("bytes=").and_then(|r| {
                    let (start, end) = r.split_once('-')?;
                    Some((start.parse::<usize>().ok()?, end.parse::<usize>().ok()))
                });
            }
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (status, headers, body, stall) = {
        let mut state = state.lock().unwrap();
        state.log.push((format!("{method} {path}"), auth));
        if method == "GET" {
            state.ranges.extend(range_header);
        }
        let range = range.filter(|_| !state.ignore_ranges);
        let api = format!("/api/models/{REPO}/revision/");
        // The files of the commit, by its hash or by the branch that names it.
        let file = [state.commit.as_str(), "main"].into_iter().find_map(|revision| {
            path.strip_prefix(&format!("/{REPO}/resolve/{revision}/"))
                .and_then(|f| state.files.get(f))
        });
        if path.starts_with(&api) {
            let siblings: Vec<_> = state
                .files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "sha": state.commit, "siblings": siblings }).to_string();
            ("200 OK", String::new(), body.into_bytes(), false)
        } else if let Some(bytes) = file {
            let tag = if state.sha256_etags {
                sha256(bytes)
            } else {
                etag(bytes)
            };
            let mut headers = format!("ETag: \"{tag}\"\r\nX-Repo-Commit: {}\r\n", state.commit);
            let stall = method == "GET" && state.stall_downloads;
            let range = range.or((method == "GET" && state.partial_for_whole).then_some((0, None)));
            match range {
                Some((start, end)) if start < bytes.len() => {
                    let end = end.unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
                    headers += &format!("Content-Range: bytes {start}-{end}/{}\r\n", bytes.len());
                    ("206 Partial Content", headers, bytes[start..=end].to_vec(), stall)
                }
                _ => ("200 OK", headers, bytes.clone(), stall),
            }
        } else {
            ("404 Not Found", String::new(), b"{}".to_vec(), false)
        }
    };
    let body_len = body.len();
    let cut = state.lock().unwrap().cut_downloads_after;
    let body = match cut {
        Some(cut) if body.len() > cut => &body[..cut],
        _ => &body[..],
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body_len
    );
    let _ = stream.write_all(head.as_bytes());
    if stall {
        std::thread::sleep(Duration::from_secs(120));
    } else if method != "HEAD" {
        let _ = stream.write_all(body);
    }
}

/// The binary against `endpoint`, with the Hugging Face home `home` and none of the
/// developer's hub variables or proxies.
fn hub_command(args: &[&str], home: &Path, endpoint: &str) -> Command {
    let mut cmd = common::command(args);
    cmd.env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", endpoint);
    for var in [
        "HF_TOKEN_PATH",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "XDG_CACHE_HOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd`, failing the test (not hanging it) if it takes longer than `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (output_within_child(child, limit), start.elapsed())
}

/// Runs `cmd` and asserts success.
fn run_command(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    let out = cmd.borrow_mut().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

const FILL: [&str; 4] = ["fill-mask", "--json", "-m", REPO];
const TEXT: &str = "The cat sat on the m[MASK]t.";

fn fill_mask_of(model: &str) -> Vec<u8> {
    common::run(&["fill-mask", "--json", "-m", model, TEXT]).stdout
}

fn repo_dir(home: &Path) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", REPO.replace('/', "--")))
}

fn refs_main(home: &Path) -> String {
    std::fs::read_to_string(repo_dir(home).join("refs/main")).unwrap()
}

/// Once a model is cached, a newer commit of `main` on the hub is still downloaded (into its
/// own snapshot, `refs/main` moved to it), and offline loads then use it.
#[test]
fn a_newer_main_on_the_hub_is_downloaded() {
    let (first, second) = ("tiny_qk_v_explicit", "tiny_shared_blocks");
    let (first_answer, second_answer) = (
        fill_mask_of(&fixture(first).to_string_lossy()),
        fill_mask_of(&fixture(second).to_string_lossy()),
    );
    assert_ne!(
        first_answer, second_answer,
        "the two fixtures must answer differently"
    );
    let hub = FakeHub::start(COMMIT_A, files_of(first));
    let home = tempfile::tempdir().unwrap();
    let run = || {
        run_command(hub_command(
            &[&FILL[..], &[TEXT]].concat(),
            home.path(),
            &hub.endpoint,
        ))
    };

    assert_eq!(run().stdout, first_answer);
    assert_eq!(refs_main(home.path()), COMMIT_A);
    let downloads = |log: &[(String, Option<String>)]| {
        log.iter()
            .filter(|(r, _)| r.starts_with("GET /someone/tiny-perceiver/resolve/"))
            .count()
    };
    assert_eq!(downloads(&hub.log()), 2);
    // Unchanged: asked, nothing downloaded.
    assert_eq!(run().stdout, first_answer);
    assert_eq!(downloads(&hub.log()), 0);

    hub.publish(COMMIT_B, files_of(second));
    assert_eq!(run().stdout, second_answer);
    assert_eq!(refs_main(home.path()), COMMIT_B);
    assert_eq!(downloads(&hub.log()), 2);
    let snapshot = repo_dir(home.path())
        .join("snapshots")
        .join(COMMIT_B)
        .join("config.json");
    assert!(
        snapshot.is_symlink(),
        "snapshots link to blobs, as huggingface_hub's"
    );

    let mut offline = hub_command(
        &[&FILL[..], &["--offline", TEXT]].concat(),
        home.path(),
        &hub.endpoint,
    );
    assert_eq!(
        run_command(offline.env("HF_ENDPOINT", "http://127.0.0.1:9")).stdout,
        second_answer
    );
}

/// A hub that accepts connections and never answers: the cached copy answers once
/// HF_HUB_ETAG_TIMEOUT has passed; a model not in the cache fails with the time-out.
#[test]
fn a_hub_that_never_answers_falls_back_to_the_cache() {
    let home = tempfile::tempdir().unwrap();
    // Cache the model from a working hub first.
    let hub = FakeHub::start(COMMIT_A, files_of("tiny_qk_v_explicit"));
    let answer = run_command(hub_command(
        &[&FILL[..], &[TEXT]].concat(),
        home.path(),
        &hub.endpoint,
    ))
    .stdout;

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        // Keep every connection open, unanswered.
        let held: Vec<TcpStream> = silent.incoming().flatten().collect();
        drop(held);
    });
    let mut cmd = hub_command(&[&FILL[..], &[TEXT]].concat(), home.path(), &endpoint);
    cmd.env("HF_HUB_ETAG_TIMEOUT", "1");
    let (out, took) = output_within(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, answer);
    assert!(took < Duration::from_secs(20), "{took:?}");

    let mut cmd = hub_command(
        &["fill-mask", "-m", "someone/not-cached", TEXT],
        home.path(),
        &endpoint,
    );
    cmd.env("HF_HUB_ETAG_TIMEOUT", "1");
    let (out, _) = output_within(&mut cmd, Duration::from_secs(60));
    common::fails_with(&out, "cannot get config.json of model someone/not-cached");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );

    // A download that stalls (HF_HUB_DOWNLOAD_TIMEOUT): the cached copy of main answers, and
    // refs/main stays where it was.
    hub.publish(COMMIT_B, files_of("tiny_shared_blocks"));
    hub.state.lock().unwrap().stall_downloads = true;
    let mut cmd = hub_command(&[&FILL[..], &[TEXT]].concat(), home.path(), &hub.endpoint);
    cmd.env("HF_HUB_DOWNLOAD_TIMEOUT", "1");
    let (out, took) = output_within(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, answer);
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(refs_main(home.path()), COMMIT_A);
    let blobs: Vec<_> = std::fs::read_dir(repo_dir(home.path()).join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");

    let mut bad = hub_command(&[&FILL[..], &[TEXT]].concat(), home.path(), &hub.endpoint);
    bad.env("HF_HUB_ETAG_TIMEOUT", "soon");
    common::fails_with(
        &bad.output().unwrap(),
        "HF_HUB_ETAG_TIMEOUT must be a number of seconds",
    );
}

/// A download cut short leaves what came in `blobs/<etag>.incomplete`; the next load asks for
/// the rest alone (a range request) and answers as a whole download does. A hub that ignores
/// the range sends the whole file, which is written from the start, and a partial file longer
/// than the file is not taken for a part of it.
#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let model = "tiny_qk_v_explicit";
    let answer = fill_mask_of(&fixture(model).to_string_lossy());
    let files = files_of(model);
    let weights = files["model.safetensors"].clone();
    let cut = weights.len() / 2;
    assert!(files["config.json"].len() < cut, "only the weights are cut");
    let hub = FakeHub::start(COMMIT_A, files);
    let fill = [&FILL[..], &[TEXT]].concat();
    let cut_short = |home: &Path| {
        hub.state.lock().unwrap().cut_downloads_after = Some(cut);
        let out = hub_command(&fill, home, &hub.endpoint).output().unwrap();
        common::fails_with(&out, "the next load resumes the download");
        hub.state.lock().unwrap().cut_downloads_after = None;
        let partial = repo_dir(home)
            .join("blobs")
            .join(format!("{}.incomplete", etag(&weights)));
        assert_eq!(std::fs::read(&partial).unwrap(), weights[..cut]);
        hub.ranges();
        partial
    };
    let blob = |home: &Path| std::fs::read(repo_dir(home).join("blobs").join(etag(&weights))).unwrap();

    let home = tempfile::tempdir().unwrap();
    let partial = cut_short(home.path());
    let out = run_command(hub_command(&fill, home.path(), &hub.endpoint));
    assert_eq!(out.stdout, answer);
    assert_eq!(hub.ranges(), [format!("bytes={cut}-")]);
    assert!(!partial.exists());
    assert_eq!(blob(home.path()), weights);

    let home = tempfile::tempdir().unwrap();
    let partial = cut_short(home.path());
    hub.state.lock().unwrap().ignore_ranges = true;
    let out = run_command(hub_command(&fill, home.path(), &hub.endpoint));
    assert_eq!(out.stdout, answer);
    assert_eq!(hub.ranges(), [format!("bytes={cut}-")]);
    assert!(!partial.exists());
    assert_eq!(blob(home.path()), weights);
    hub.state.lock().unwrap().ignore_ranges = false;

    let home = tempfile::tempdir().unwrap();
    let blobs = repo_dir(home.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let too_long = blobs.join(format!("{}.incomplete", etag(&weights)));
    std::fs::write(&too_long, vec![7u8; weights.len() + 1]).unwrap();
    let out = run_command(hub_command(&fill, home.path(), &hub.endpoint));
    assert_eq!(out.stdout, answer);
    assert!(hub.ranges().is_empty(), "no range asked past the file's end");
    assert_eq!(blob(home.path()), weights);
    assert!(!too_long.exists());
}

/// A resumed download of a file named by its sha256 (as the hub names LFS files) is checked
/// whole: a partial file that is not the file's beginning is found out, removed, and the next
/// load downloads it afresh. A load that finds another process downloading the same file waits
/// for it, and says so; a hub answering a plain download with a 206 of the whole file is
/// taken at its word.
#[test]
fn resumed_downloads_are_checked_and_shared_downloads_wait() {
    let model = "tiny_qk_v_explicit";
    let answer = fill_mask_of(&fixture(model).to_string_lossy());
    let files = files_of(model);
    let weights = files["model.safetensors"].clone();
    let hub = FakeHub::start(COMMIT_A, files);
    hub.state.lock().unwrap().sha256_etags = true;
    let fill = [&FILL[..], &[TEXT]].concat();

    let home = tempfile::tempdir().unwrap();
    let blobs = repo_dir(home.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{}.incomplete", sha256(&weights)));
    std::fs::write(&partial, vec![0u8; weights.len() / 2]).unwrap();
    let out = hub_command(&fill, home.path(), &hub.endpoint).output().unwrap();
    common::fails_with(&out, "load again to download it afresh");
    assert!(!partial.exists());
    assert_eq!(
        run_command(hub_command(&fill, home.path(), &hub.endpoint)).stdout,
        answer
    );

    // Another process holds the blob's lock: the load waits until it is released.
    let home = tempfile::tempdir().unwrap();
    let locks = home
        .path()
        .join("hub/.locks")
        .join(repo_dir(home.path()).file_name().unwrap());
    std::fs::create_dir_all(&locks).unwrap();
    let held = std::fs::File::create(locks.join(format!("{}.lock", sha256(&weights)))).unwrap();
    held.lock().unwrap();
    hub.state.lock().unwrap().partial_for_whole = true;
    let mut child = hub_command(&fill, home.path(), &hub.endpoint)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Released once the load says it waits (its first line on stderr).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.contains("waiting for another download of model.safetensors"),
        "{first}"
    );
    drop(held);
    let out = output_within_child(child, Duration::from_secs(60));
    assert!(out.status.success(), "{first}");
    assert_eq!(out.stdout, answer);
}

/// Waits for `child`, killing it (and failing the test) past `limit`.
fn output_within_child(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The token sent: HF_TOKEN unless it is blank, else the file HF_TOKEN_PATH, else
/// $HF_HOME/token, even when HF_HUB_CACHE puts the cache elsewhere.
#[test]
fn the_token_is_found_as_huggingface_hub_finds_it() {
    let hub = FakeHub::start(COMMIT_A, files_of("tiny_qk_v_explicit"));
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let sent = |set: &dyn Fn(&mut Command)| {
        let mut cmd = hub_command(&[&FILL[..], &[TEXT]].concat(), home.path(), &hub.endpoint);
        cmd.env("HF_HUB_CACHE", elsewhere.path());
        set(&mut cmd);
        run_command(cmd);
        let log = hub.log();
        let auths: Vec<Option<String>> = log.iter().map(|(_, a)| a.clone()).collect();
        assert!(!auths.is_empty());
        assert!(auths.iter().all(|a| a == &auths[0]), "{log:?}");
        auths[0].clone()
    };
    assert_eq!(
        sent(&|c| {
            c.env("HF_TOKEN", "");
        }),
        None
    );
    assert_eq!(
        sent(&|c| {
            c.env("HF_TOKEN", "  \n");
        }),
        None
    );
    assert_eq!(
        sent(&|c| {
            c.env("HF_TOKEN", " secret ");
        }),
        Some("Bearer secret".into())
    );
    std::fs::write(home.path().join("token"), "from-home\n").unwrap();
    assert_eq!(sent(&|_| {}), Some("Bearer from-home".into()));
    assert_eq!(
        sent(&|c| {
            c.env("HF_TOKEN", "");
        }),
        Some("Bearer from-home".into())
    );
    let path = elsewhere.path().join("my-token");
    std::fs::write(&path, "from-path").unwrap();
    assert_eq!(
        sent(&|c| {
            c.env("HF_TOKEN_PATH", &path);
        }),
        Some("Bearer from-path".into())
    );
    std::fs::write(home.path().join("token"), " \n").unwrap();
    assert_eq!(sent(&|_| {}), None);
}
