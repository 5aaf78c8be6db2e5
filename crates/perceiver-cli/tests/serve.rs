//! `perceiver serve` as a process: configured by environment variables, answering what
//! `perceiver fill-mask --json` answers, and stopping on SIGTERM / SIGINT with status 0 after
//! finishing the request in flight. HTTP is spoken over a plain `TcpStream` (HTTP/1.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

const MODEL: &str = "tiny_qk_v_explicit";

/// Only a safety net against a hung test, never a measurement.
const PATIENCE: Duration = Duration::from_secs(120);

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceiver"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env(
        "HF_HOME",
        std::env::temp_dir().join("perceiver-cli-tests-empty-hf-home"),
    );
    for (var, _) in std::env::vars() {
        if var.starts_with("PERCEIVER_")
            || ["HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "RUST_LOG"].contains(&var.as_str())
        {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// A running `perceiver serve`, killed if the test fails before stopping it.
struct Served {
    child: Option<Child>,
    address: String,
    stderr: Receiver<String>,
}

impl Served {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = command(&[&["serve"], args].concat());
        cmd.envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().expect("run perceiver serve");
        let (send, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Self {
            child: Some(child),
            address: String::new(),
            stderr,
        };
        let line = served.wait_for_line("listening on http://");
        served.address = line
            .split("listening on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        served
    }

    fn wait_for_line(&self, needle: &str) -> String {
        loop {
            match self.stderr.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?} on stderr: {e}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args(["-s", name, &pid]).status().unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// One request on its own connection: (status, JSON body).
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        read_response(&mut stream)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a `Connection: close` response to its end: (status, JSON body).
fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn json_line(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_answers_what_fill_mask_json_answers() {
    let model = fixture(MODEL).to_string_lossy().into_owned();
    // Every setting through its environment variable.
    let served = Served::start(
        &[],
        &[
            ("PERCEIVER_MODEL", &model),
            ("PERCEIVER_PORT", "0"),
            ("PERCEIVER_MAX_BATCH_REQUESTS", "4"),
        ],
    );
    let (status, info) = served.request("GET", "/info", None);
    assert_eq!(status, 200);
    assert_eq!(info["limits"]["max_batch_requests"], 4);
    assert_eq!(info["model_id"], model.as_str());

    for text in [
        "Hello w[MASK:4]!",
        "one [MASK] here",
        "unicode: naïve café [MASK]",
        "[MASK:2] x [MASK]",
    ] {
        let cli = json_line(
            &command(&["fill-mask", "-m", &model, "--json", "-k", "3", text])
                .output()
                .unwrap(),
        );
        let (status, answer) = served.request(
            "POST",
            "/fill-mask",
            Some(&json!({"inputs": text, "parameters": {"top_k": 3}})),
        );
        assert_eq!(status, 200, "{answer}");
        let masks = cli["masks"].as_array().unwrap();
        let rows: Vec<&Value> = if masks.len() == 1 {
            vec![&answer]
        } else {
            answer.as_array().unwrap().iter().collect()
        };
        assert_eq!(rows.len(), masks.len(), "{text}");
        for (row, mask) in rows.iter().zip(masks) {
            for (got, want) in row
                .as_array()
                .unwrap()
                .iter()
                .zip(mask["candidates"].as_array().unwrap())
            {
                assert_eq!(got["token"], want["token"], "{text}");
                assert_eq!(got["token_str"], want["token_str"], "{text}");
                // The same forward pass (a batch of one): the same f32.
                let score = |v: &Value| v["score"].as_f64().unwrap() as f32;
                assert_eq!(score(got), score(want), "{text}");
            }
        }
        if masks.len() == 1 {
            assert_eq!(answer[0]["sequence"], cli["sequence"], "top-1 filled text");
        }
    }
    served.signal("TERM");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let model = fixture(MODEL).to_string_lossy().into_owned();
    let served = Served::start(&["-m", &model, "--port", "0"], &[]);
    // A request the server has started (it asked for the body with 100 Continue) ...
    let body = json!({"inputs": ["in flight [MASK]", "and [MASK:2] more"]}).to_string();
    let mut stream = TcpStream::connect(&served.address).unwrap();
    write!(
        stream,
        "POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    // ... is still answered after SIGTERM, and then the process ends with status 0.
    served.signal("TERM");
    served.wait_for_line("SIGTERM");
    stream.write_all(body.as_bytes()).unwrap();
    let (status, answer) = read_response(&mut stream);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.as_array().unwrap().len(), 2);
    let status = served.wait();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigint_stops_an_idle_server_with_status_0() {
    let model = fixture(MODEL).to_string_lossy().into_owned();
    let served = Served::start(&["-m", &model, "--port", "0"], &[]);
    assert_eq!(served.request("GET", "/health", None).0, 200);
    served.signal("INT");
    let status = served.wait();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_fails_cleanly_before_listening() {
    let model = fixture(MODEL).to_string_lossy().into_owned();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    // A zero limit is a malformed flag: exit status 2, one line.
    let out = command(&["serve", "-m", &model, "--port", "0", "--max-batch-requests", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-batch-requests"));
    let cases: [(&[&str], &str); 3] = [
        (
            &["-m", &model, "--port", "0", "--max-batch-tokens", "10"],
            "below the model's 64 positions",
        ),
        (&["-m", &model, "--port", &port], "cannot listen on 127.0.0.1:"),
        (&["-m", "./no/such/dir", "--port", "0"], "no such model directory"),
    ];
    for (args, needle) in cases {
        let out = command(&[&["serve"], args].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A key no client could send (blank, whitespace around it, not visible ASCII), by flag or
/// environment, is refused before the model loads (the model named here does not exist), and
/// the message does not quote the key.
#[test]
fn serve_refuses_a_key_no_client_can_send() {
    let base = ["serve", "-m", "/nonexistent/model", "--port", "0"];
    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (&["--api-key", ""], None, "the API key is empty"),
        (&["--api-key", " \t"], None, "the API key is empty"),
        (&[], Some(""), "the API key is empty"),
        (
            &["--api-key", "s3cretKEY "],
            None,
            "starts or ends with whitespace",
        ),
        (&[], Some("s3cretKEY\n"), "starts or ends with whitespace"),
        (&["--api-key", "s3cretKEYé"], None, "visible ASCII"),
    ];
    for (flags, env, needle) in cases {
        let mut cmd = command(&[&base[..], flags].concat());
        if let Some(key) = env {
            cmd.env("PERCEIVER_API_KEY", key);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--api-key") && stderr.contains(needle),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cretKEY"), "the key is quoted: {stderr}");
    }
}

/// A DeepMind checkpoint (one of the tiny pickles made by DeepMind's code, with the config.json
/// it needs) serves as `fill-mask` answers from it.
#[test]
fn serve_takes_a_deepmind_pickle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepmind/mlm_config_json");
    let pickle = dir.join("params.p3.pickle").to_string_lossy().into_owned();
    let config = dir.join("config.json").to_string_lossy().into_owned();
    let flags = ["-m", pickle.as_str(), "--model-config", config.as_str()];
    let served = Served::start(&[&flags[..], &["--port", "0"]].concat(), &[]);
    let text = "Hello w[MASK:4]!";
    let cli = json_line(
        &command(&[&["fill-mask", "--json", "-k", "3"], &flags[..], &[text]].concat())
            .output()
            .unwrap(),
    );
    let (status, answer) = served.request(
        "POST",
        "/fill-mask",
        Some(&json!({"inputs": text, "parameters": {"top_k": 3}})),
    );
    assert_eq!(status, 200, "{answer}");
    let masks = cli["masks"].as_array().unwrap();
    let rows = answer.as_array().unwrap();
    assert_eq!(rows.len(), masks.len());
    for (row, mask) in rows.iter().zip(masks) {
        for (got, want) in row
            .as_array()
            .unwrap()
            .iter()
            .zip(mask["candidates"].as_array().unwrap())
        {
            assert_eq!(got["token"], want["token"]);
            assert_eq!(got["score"].as_f64(), want["score"].as_f64());
        }
    }
    served.signal("TERM");
    assert!(served.wait().success());
}

/// Standard base64 with padding (the test's own, so the CLI needs no base64 crate).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn serve_classifies_what_classify_json_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/classification");
    for (model, inputs) in [
        ("tiny_image_conv", vec!["wide.png", "tall_grey.png"]),
        (
            "tiny_text_classifier",
            vec!["This is great!", "Terrible, awful, bad."],
        ),
    ] {
        let model = dir.join(model).to_string_lossy().into_owned();
        let images = !model.ends_with("tiny_text_classifier");
        let served = Served::start(&["-m", &model, "--port", "0"], &[]);
        let (status, info) = served.request("GET", "/info", None);
        assert_eq!(status, 200);
        let task = if images {
            "image-classification"
        } else {
            "text-classification"
        };
        assert_eq!(info["task"], task);
        for input in inputs {
            let (cli_args, body) = if images {
                let path = format!("{model}/{input}");
                let bytes = std::fs::read(&path).unwrap();
                (
                    vec![path],
                    json!({"inputs": base64(&bytes), "parameters": {"top_k": 3}}),
                )
            } else {
                (
                    vec!["--text".to_string(), input.to_string()],
                    json!({"inputs": input, "parameters": {"top_k": 3}}),
                )
            };
            let mut args = vec!["classify", "-m", &model, "--json", "-k", "3"];
            args.extend(cli_args.iter().map(String::as_str));
            let cli = json_line(&command(&args).output().unwrap());
            let (status, answer) = served.request("POST", "/classify", Some(&body));
            assert_eq!(status, 200, "{answer}");
            let (got, want) = (answer.as_array().unwrap(), cli.as_array().unwrap());
            assert_eq!(got.len(), 3);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g["label"], w["label"], "{model} {input}");
                // The same preprocessing and a batch of one: the same f32.
                let score = |v: &Value| v["score"].as_f64().unwrap() as f32;
                assert_eq!(score(g), score(w), "{model} {input}");
            }
        }
        // The other task's route names the model's task.
        let (status, answer) = served.request("POST", "/fill-mask", Some(&json!({"inputs": "[MASK]"})));
        assert_eq!(status, 404);
        assert!(answer["error"].as_str().unwrap().contains(task), "{answer}");
        served.signal("TERM");
        assert!(served.wait().success());
    }
}
