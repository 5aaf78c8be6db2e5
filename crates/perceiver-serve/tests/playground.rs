//! The playground page in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against the built-in model and the committed tiny classifiers and flow model.
//!
//! Fill-mask: it types a masked text, presses the button, and checks that the candidates on the
//! page are `POST /fill-mask`'s for the same text; it checks the error path, masking a selection
//! from the keyboard, the API-key field and the page at phone width. Classifiers: it chooses,
//! drops and pastes image files and types texts, and checks that the labels on the page are
//! `POST /classify`'s for the same bytes; it checks a file that is not an image, an image over
//! the server's pixel limit and the phone width. Optical flow: it chooses, drops and pastes
//! frames, and checks that the picture on the page is byte for byte `POST /flow`'s PNG and the
//! library's, its figures the answer's headers, and the downloaded `.flo` the library's flow;
//! that frames the server would refuse (of two sizes, under the tile, over its pixel or body
//! limit) are said and not sent; a file that is not an image, a late answer and the phone
//! width. Multimodal autoencoder: it chooses frames (sent in natural name order) and a WAV file,
//! drops a `.y4m` video, and checks that the labels, frames and audio on the page are the
//! library's; the labels alone; that clips the server would refuse (a file missing, another
//! number or size of frames, a short video, audio at another rate or too short, a form over the
//! body limit) are said and not sent; Cancel, new files during a request, and the phone width.
//! Screenshots are saved under `target/tmp/playground/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them), or `CHROMIUM` and `CHROMEDRIVER` naming the two programs. Without
//! them the test prints why and passes, unless `PERCEIVER_REQUIRE_BROWSER=1` (set by `.ci/run`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{post, post_json, request, TestServer};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use perceiver::flow::flow_to_rgb;
use perceiver::tasks::flow::OpticalFlow;
use serde_json::{json, Value};

/// The two programs, or why they cannot be used.
fn browser_programs() -> Result<(PathBuf, PathBuf), String> {
    let find = |env: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(env) {
            return Some(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    };
    let chromium = find("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
    let driver = find("CHROMEDRIVER", &["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => {
            let missing = match (c, d) {
                (None, None) => "chromium and chromedriver",
                (None, _) => "chromium",
                _ => "chromedriver",
            };
            Err(format!(
                "{missing} not found (apt-get install chromium chromium-driver, or set CHROMIUM \
                 and CHROMEDRIVER; .ci/run installs them)"
            ))
        }
    }
}

/// chromedriver on a port of its choosing; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(program: &Path) -> Self {
        let mut child = Command::new(program)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        // "ChromeDriver was started successfully on port 12345."
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("started successfully on port ").nth(1)?;
                rest.trim_end_matches('.').trim().parse::<u16>().ok()
            })
            .expect("chromedriver did not say its port");
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two programs, or `None` after saying why the test `name` is skipped (a failure instead
/// with `PERCEIVER_REQUIRE_BROWSER`).
fn browser_or_skip(name: &str) -> Option<(PathBuf, PathBuf)> {
    match browser_programs() {
        Ok(programs) => Some(programs),
        Err(why) => {
            assert!(
                std::env::var_os("PERCEIVER_REQUIRE_BROWSER").is_none(),
                "PERCEIVER_REQUIRE_BROWSER is set but {why}"
            );
            println!("SKIPPED {name}: {why}");
            None
        }
    }
}

/// A headless Chromium session with the flags a closed network needs, in a fresh profile;
/// downloads are saved, unasked, in its `downloads` folder.
async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1100,900",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let prefs = json!({
        "download.default_directory": downloads(profile),
        "download.prompt_for_download": false,
    });
    let capabilities = json!({
        "goog:chromeOptions": {"binary": chromium, "args": args, "prefs": prefs},
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("chromedriver could not start a Chromium session")
}

fn downloads(profile: &Path) -> PathBuf {
    profile.join("downloads")
}

/// Opens the server's playground page and waits until it has read `/info`.
async fn open_page(client: &Client, server: &TestServer) {
    client.goto(&format!("{}/", server.url())).await.unwrap();
    wait_for(client, "return document.body.dataset.info === 'loaded'", "/info").await;
}

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` returns true.
async fn wait_for(client: &Client, script: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if js(client, script).await == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn find(client: &Client, css: &str) -> Element {
    client.find(Locator::Css(css)).await.unwrap()
}

async fn text_of(client: &Client, css: &str) -> String {
    find(client, css).await.text().await.unwrap()
}

/// Replaces the text box's content by typing.
async fn type_text(client: &Client, text: &str) {
    let area = find(client, "#text").await;
    area.clear().await.unwrap();
    area.send_keys(text).await.unwrap();
}

/// Presses "Fill masks" and waits for the answer (or the error) to be shown.
async fn press_fill(client: &Client) {
    press(client, "#fill").await;
}

/// Presses the button and waits for the answer (or the error) to be shown.
async fn press(client: &Client, button: &str) {
    let before = js(client, "return Number(document.body.dataset.requests)").await;
    find(client, button).await.click().await.unwrap();
    request_ended(client, &before, "the answer").await;
}

/// Waits until the page has ended a request begun after `before` requests (`what`, for a
/// timeout's message); the page's status then (`done`, `error`, `stale`, `cancelled`).
async fn request_ended(client: &Client, before: &Value, what: &str) -> Value {
    wait_for(
        client,
        &format!("return Number(document.body.dataset.requests) > {before}"),
        what,
    )
    .await;
    js(client, "return document.body.dataset.status").await
}

/// Waits until the page has a request out.
async fn wait_busy(client: &Client) {
    wait_for(
        client,
        "return document.body.dataset.status === 'busy'",
        "the request",
    )
    .await;
}

/// The candidates shown per masked byte: (token, score, shown percentage).
async fn candidates_on_page(client: &Client) -> Vec<Vec<(u64, f64, String, String)>> {
    let rows = js(
        client,
        "return [...document.querySelectorAll('#masks .mask')].map(m =>
            [...m.querySelectorAll('.candidate')].map(c => [
                c.dataset.token, c.dataset.score,
                c.querySelector('.char').textContent, c.querySelector('.pct').textContent]))",
    )
    .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c[0].as_str().unwrap().parse().unwrap(),
                        c[1].as_str().unwrap().parse().unwrap(),
                        c[2].as_str().unwrap().to_string(),
                        c[3].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

/// `POST /fill-mask`'s answer as rows (one per masked byte).
async fn api_rows(server: &TestServer, text: &str, top_k: usize) -> Vec<Vec<Value>> {
    let answer = post_json(
        server.addr,
        "/fill-mask",
        &json!({"inputs": text, "parameters": {"top_k": top_k}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let answer = answer.json();
    let list = answer.as_array().unwrap();
    if list[0].is_array() {
        list.iter().map(|row| row.as_array().unwrap().clone()).collect()
    } else {
        vec![list.clone()]
    }
}

/// The page's candidates equal the API's: same tokens in the same order, same scores (both
/// come from the same deterministic forward pass on the same text), and what the page shows
/// agrees with them.
fn assert_same_candidates(page: &[Vec<(u64, f64, String, String)>], api: &[Vec<Value>], context: &str) {
    assert_eq!(page.len(), api.len(), "{context}: masked bytes");
    for (i, (shown, expected)) in page.iter().zip(api).enumerate() {
        assert_eq!(shown.len(), expected.len(), "{context}: byte {i}");
        for ((token, score, glyph, pct), e) in shown.iter().zip(expected) {
            assert_eq!(*token, e["token"].as_u64().unwrap(), "{context}: byte {i}");
            let expected_score = e["score"].as_f64().unwrap();
            assert_eq!(*score, expected_score, "{context}: byte {i} token {token}");
            let token_str = e["token_str"].as_str().unwrap();
            let printable = token_str.len() == 1 && token_str.as_bytes()[0].is_ascii_graphic();
            if printable {
                assert_eq!(glyph, token_str, "{context}: a printable byte reads as itself");
            } else if token_str == " " {
                assert_eq!(glyph, "␣", "{context}: a space reads as a sign");
            }
            assert_percentage(pct, expected_score, context);
        }
    }
}

/// A probability as the page shows it: one decimal from 0.1 %, one significant digit below,
/// "<0.001%" below that.
fn assert_percentage(pct: &str, score: f64, context: &str) {
    let percent = score * 100.0;
    let shown: f64 = pct.trim_start_matches('<').trim_end_matches('%').parse().unwrap();
    let close = if pct.starts_with('<') {
        percent < shown
    } else if percent >= 0.1 {
        (shown - percent).abs() <= 0.0501
    } else {
        (shown - percent).abs() <= shown / 2.0
    };
    assert!(close, "{context}: {pct} shown for {percent} %");
}

/// The labels shown: (label, score, shown name, shown percentage).
async fn labels_on_page(client: &Client) -> Vec<(String, f64, String, String)> {
    let rows = js(
        client,
        "return [...document.querySelectorAll('#labels .label')].map(l => [
            l.dataset.label, l.dataset.score,
            l.querySelector('.name').textContent, l.querySelector('.pct').textContent])",
    )
    .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let field = |i: usize| l[i].as_str().unwrap().to_string();
            (field(0), field(1).parse().unwrap(), field(2), field(3))
        })
        .collect()
}

/// The page's labels equal `POST /classify`'s answer for one input: same labels in the same
/// order, same scores (one deterministic forward pass of the same bytes each).
fn assert_same_labels(page: &[(String, f64, String, String)], api: &Value, context: &str) {
    let api = api.as_array().unwrap();
    assert_eq!(page.len(), api.len(), "{context}: labels");
    for ((label, score, name, pct), expected) in page.iter().zip(api) {
        assert_eq!(label, expected["label"].as_str().unwrap(), "{context}");
        assert_eq!(name, label, "{context}: the label reads as itself");
        assert_eq!(*score, expected["score"].as_f64().unwrap(), "{context}: {label}");
        assert_percentage(pct, *score, context);
    }
}

/// `text` with each masked byte (`[MASK]`, `[MASK:n]`) replaced by its best candidate in
/// `rows`, decoded as the server decodes.
fn filled(text: &str, rows: &[Vec<Value>]) -> String {
    let mut best = rows
        .iter()
        .map(|row| u8::try_from(row[0]["token"].as_u64().unwrap() - 6).unwrap());
    let mut bytes = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("[MASK") {
        bytes.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + "[MASK".len()..];
        let (count, consumed) = match after.strip_prefix(':') {
            Some(run) => {
                let close = run.find(']').unwrap();
                (run[..close].parse().unwrap(), close + 2)
            }
            None => (1, 1),
        };
        bytes.extend(best.by_ref().take(count));
        rest = &after[consumed..];
    }
    bytes.extend_from_slice(rest.as_bytes());
    assert!(best.next().is_none(), "as many candidates as masked bytes");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sizes the window to the whole page at `width`, then saves a screenshot.
async fn screenshot(client: &Client, width: u32, name: &str) -> PathBuf {
    client.set_window_size(width, 900).await.unwrap();
    // The window is taller than what it shows by its frame, if it has one.
    let height = js(
        client,
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight",
    )
    .await
    .as_u64()
    .unwrap();
    client.set_window_size(width, height as u32).await.unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
    path
}

/// What needs no browser: the page's files, open without the key that guards `/info`, and the
/// facts the page shows from `/info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_files_are_served_open_and_info_names_task_and_precision() {
    let model = perceiver::Loader::new(perceiver::BUILT_IN)
        .precision(perceiver::Precision::Bf16)
        .load()
        .unwrap();
    let server = TestServer::start("keyed", model, |c| c.api_key = Some("s3cret".into())).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", "<textarea id=\"text\""),
            ("/playground.css", "text/css; charset=utf-8", ".candidate"),
            ("/playground.js", "text/javascript; charset=utf-8", "/fill-mask"),
        ] {
            let answer = request(addr, "GET", path, &[], b"").unwrap();
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
            let csp = answer.header("content-security-policy").unwrap();
            assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
            assert!(String::from_utf8_lossy(&answer.body).contains(needle), "{path}");
        }
        assert_eq!(request(addr, "GET", "/info", &[], b"").unwrap().status, 401);
        let info = request(addr, "GET", "/info", &[("Authorization", "Bearer s3cret")], b"").unwrap();
        let info = info.json();
        assert_eq!(info["task"], "fill-mask");
        assert_eq!(info["precision"], "bf16");
        assert_eq!(info["model_id"], "keyed");
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_or_skip("playground_in_headless_chromium") else {
        return;
    };
    let model = perceiver::Loader::new(perceiver::BUILT_IN).load().unwrap();
    let server = TestServer::start(perceiver::BUILT_IN, model.clone(), |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;

    // The page: its own files only, open without a key.
    let page = request(server.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").is_some());

    open_page(&client, &server).await;
    assert_eq!(text_of(&client, "#model-id").await, perceiver::BUILT_IN);
    assert_eq!(text_of(&client, "#model-task").await, "fill-mask");
    assert_eq!(text_of(&client, "#model-precision").await, "f32");
    assert_eq!(
        text_of(&client, "#model-version").await,
        env!("CARGO_PKG_VERSION")
    );
    let docs = find(&client, "a[href='/docs/']").await;
    assert_eq!(docs.text().await.unwrap(), "API docs");
    assert_every_control_labelled(&client).await;

    // Several masks, one of two bytes, as typed.
    let text = "Hello, w[MASK]rld! How are y[MASK]u today?[MASK]\
                All human beings are born fr[MASK:2] and equal in dignity and ri[MASK]hts.";
    type_text(&client, text).await;
    press_fill(&client).await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    let api = api_rows(&server, text, 5).await;
    assert_eq!(api.len(), 6);
    assert_same_candidates(&candidates_on_page(&client).await, &api, text);
    assert_eq!(text_of(&client, "#filled").await, filled(text, &api));
    let desktop = screenshot(&client, 1100, "playground.png").await;

    // Masks at the end.
    let text = "This is an incomplete sentence where some words are[MASK:9]";
    type_text(&client, text).await;
    press_fill(&client).await;
    let api = api_rows(&server, text, 5).await;
    assert_eq!(api.len(), 9);
    assert_same_candidates(&candidates_on_page(&client).await, &api, text);
    assert_eq!(text_of(&client, "#filled").await, filled(text, &api));

    // One mask inside a word, more candidates: the filled text is the API's best sequence.
    type_text(&client, "The capital of France is [MASK]aris.").await;
    let top_k = find(&client, "#top-k").await;
    top_k.clear().await.unwrap();
    top_k.send_keys("8").await.unwrap();
    press_fill(&client).await;
    let api = api_rows(&server, "The capital of France is [MASK]aris.", 8).await;
    assert_eq!(api.len(), 1);
    assert_same_candidates(&candidates_on_page(&client).await, &api, "one mask");
    assert_eq!(
        text_of(&client, "#filled").await,
        api[0][0]["sequence"].as_str().unwrap()
    );

    // Masking a selection from the keyboard: select "world", Tab to the button, Enter.
    type_text(&client, "Hello world, héllo").await;
    js(
        &client,
        "const t = document.getElementById('text'); t.focus(); t.setSelectionRange(6, 11); return true",
    )
    .await;
    client
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Tab.to_string())
        .await
        .unwrap();
    let focused = js(&client, "return document.activeElement.id").await;
    assert_eq!(focused, "mask-selection", "Tab from the text reaches the button");
    client
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    let value = js(&client, "return document.getElementById('text').value").await;
    assert_eq!(value, "Hello [MASK:5], héllo");
    // A selection of non-ASCII text masks its bytes: "é" is two.
    js(
        &client,
        "const t = document.getElementById('text'); t.focus(); t.setSelectionRange(17, 18); return true",
    )
    .await;
    find(&client, "#mask-selection").await.click().await.unwrap();
    let value = js(&client, "return document.getElementById('text').value").await;
    assert_eq!(value, "Hello [MASK:5], h[MASK:2]llo");
    // Ctrl+Enter in the text box fills.
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#text")
        .await
        .send_keys(&format!("{}{}", Key::Control, Key::Enter))
        .await
        .unwrap();
    request_ended(&client, &before, "the Ctrl+Enter answer").await;
    let api = api_rows(&server, "Hello [MASK:5], h[MASK:2]llo", 8).await;
    assert_same_candidates(&candidates_on_page(&client).await, &api, "masked selection");

    // The error path: a text without a mask shows the server's words.
    type_text(&client, "no mask here").await;
    press_fill(&client).await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "error");
    let api = post_json(server.addr, "/fill-mask", &json!({"inputs": "no mask here"})).await;
    assert_eq!(api.status, 422);
    let message = api.json()["error"].as_str().unwrap().to_string();
    assert!(message.contains("no mask"), "{message}");
    assert!(find(&client, "#error").await.is_displayed().await.unwrap());
    assert_eq!(text_of(&client, "#error-message").await, message);
    assert!(text_of(&client, "#error-status").await.contains("422"));
    assert!(!find(&client, "#result").await.is_displayed().await.unwrap());
    screenshot(&client, 1100, "playground-error.png").await;

    // Phone width: nothing wider than the screen.
    type_text(&client, "Hello, w[MASK]rld! How are y[MASK]u today?").await;
    press_fill(&client).await;
    client.set_window_size(390, 844).await.unwrap();
    let overflow = js(
        &client,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
    )
    .await;
    assert_eq!(overflow, json!(0), "the page scrolls sideways at phone width");
    screenshot(&client, 390, "playground-phone.png").await;

    // A server with a key: the page asks for it, and works once given.
    let keyed = TestServer::start("keyed", model, |c| c.api_key = Some("s3cret".into())).await;
    client.set_window_size(1100, 900).await.unwrap();
    client.goto(&format!("{}/", keyed.url())).await.unwrap();
    wait_for(
        &client,
        "return document.body.dataset.info === 'needs-key'",
        "the key request",
    )
    .await;
    assert!(find(&client, "#auth").await.is_displayed().await.unwrap());
    assert!(text_of(&client, "#auth-server")
        .await
        .contains("missing or wrong API key"));
    screenshot(&client, 1100, "playground-key.png").await;
    let key_box = find(&client, "#api-key").await;
    key_box.send_keys("wrong").await.unwrap();
    find(&client, "#api-key-use").await.click().await.unwrap();
    wait_for(
        &client,
        "return document.getElementById('auth-message').textContent.includes('refused')",
        "a wrong key refused",
    )
    .await;
    key_box.clear().await.unwrap();
    key_box.send_keys("s3cret").await.unwrap();
    find(&client, "#api-key-use").await.click().await.unwrap();
    wait_for(
        &client,
        "return document.body.dataset.info === 'loaded'",
        "/info with the key",
    )
    .await;
    assert!(!find(&client, "#auth").await.is_displayed().await.unwrap());
    assert_eq!(text_of(&client, "#model-id").await, "keyed");
    type_text(&client, "Hello [MASK]orld").await;
    press_fill(&client).await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");

    client.close().await.unwrap();
    println!("screenshots in {}", desktop.parent().unwrap().display());
    keyed.stop().await;
    server.stop().await;
}

/// A file or folder of the repository's `tests/fixtures`; canonical, as chromedriver takes a
/// file's path.
fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
        .canonicalize()
        .unwrap()
}

fn classifier(name: &str) -> perceiver::Classifier {
    perceiver::Loader::new(fixture(&format!("classification/{name}")).to_string_lossy())
        .classifier()
        .unwrap()
}

/// `POST /classify` with an image file's bytes: the answer's labels.
async fn api_image_labels(server: &TestServer, bytes: &[u8], top_k: usize) -> Value {
    let answer = post(
        server.addr,
        &format!("/classify?top_k={top_k}"),
        "image/png",
        bytes.to_vec(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    answer.json()
}

/// How files reach the page other than through a file input.
#[derive(Debug, Clone, Copy)]
enum Hand<'a> {
    /// Dropped on the element of this CSS selector.
    Drop(&'a str),
    /// Pasted, into the element that has focus.
    Paste,
}

/// Gives the page PNG files (name, bytes) as a browser does, a `DataTransfer` holding `File`s
/// in a drop or a paste event; then checks that each landed in a file input, `inputs[i]` the
/// CSS selector of the one that should hold `files[i]`.
async fn hand_over_images(client: &Client, how: Hand<'_>, files: &[(&str, &[u8])], inputs: &[&str]) {
    hand_over_files(client, how, files).await;
    let landed = client
        .execute(
            "return arguments[0].map(input => document.querySelector(input).files[0]?.name ?? null)",
            vec![json!(inputs)],
        )
        .await
        .unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    assert_eq!(landed, json!(names), "the {how:?} becomes the file inputs' files");
}

/// Gives the page files (name, bytes) in a drop or a paste event, typed as a browser types
/// them by their names' extensions.
async fn hand_over_files(client: &Client, how: Hand<'_>, files: &[(&str, &[u8])]) {
    let event = match how {
        Hand::Drop(target) => format!(
            "document.querySelector({target:?}).dispatchEvent(
             new DragEvent('drop', {{dataTransfer: transfer, bubbles: true, cancelable: true}}))"
        ),
        Hand::Paste => "(document.activeElement ?? document.body).dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true}))"
            .to_string(),
    };
    let script = format!(
        "const transfer = new DataTransfer();
         const types = {{png: 'image/png', jpg: 'image/jpeg', wav: 'audio/wav', webm: 'video/webm', mp4: 'video/mp4'}};
         for (const [base64, name] of arguments[0]) {{
           const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0));
           const type = types[name.split('.').pop()] ?? '';
           transfer.items.add(new File([bytes], name, {{type}}));
         }}
         {event};
         return true"
    );
    let files: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| json!([base64::engine::general_purpose::STANDARD.encode(bytes), name]))
        .collect();
    client.execute(&script, vec![json!(files)]).await.unwrap();
}

/// Gives the page one PNG file, dropped or pasted, to land in the file input `input`.
async fn hand_over_image(client: &Client, how: Hand<'_>, name: &str, bytes: &[u8], input: &str) {
    hand_over_images(client, how, &[(name, bytes)], &[input]).await;
}

/// Waits for the preview of a newly chosen file (or for the browser to give up on it) and
/// returns what the page says of it in the element `facts` (an id).
async fn facts_once_read(client: &Client, facts: &str, name: &str) -> String {
    wait_for(
        client,
        &format!(
            "const facts = document.getElementById({facts:?}).textContent;
             return facts.startsWith({name:?}) && (facts.includes('pixels') || facts.includes('cannot show'))"
        ),
        "the file's preview",
    )
    .await;
    text_of(client, &format!("#{facts}")).await
}

async fn image_facts_once_read(client: &Client, name: &str) -> String {
    facts_once_read(client, "image-facts", name).await
}

/// From now on the page's requests leave late, so that its answers come after what the test
/// does next.
async fn send_late(client: &Client) {
    js(
        client,
        "const fetch = window.fetch;
         window.fetch = (...args) => new Promise(r => setTimeout(r, 300)).then(() => fetch(...args));
         return true",
    )
    .await;
}

/// From now on the page's requests wait before they leave, until [`release_requests`], and an
/// abort ends them as it ends a real request: what the page does while a request is out is
/// tested without racing its answer.
async fn hold_requests(client: &Client) {
    js(
        client,
        "const fetch = window.fetch;
         window.unheldFetch = fetch;
         window.releaseHeld = false;
         window.fetch = (url, init) => new Promise((resolve, reject) => {
           const wait = setInterval(() => {
             if (window.releaseHeld) { clearInterval(wait); resolve(fetch(url, init)); }
           }, 10);
           const signal = init && init.signal;
           if (signal) signal.addEventListener('abort', () => {
             clearInterval(wait);
             reject(new DOMException('The request was aborted', 'AbortError'));
           });
         });
         return true",
    )
    .await;
}

/// Lets held requests leave, and later ones at once.
async fn release_requests(client: &Client) {
    js(
        client,
        "window.releaseHeld = true; window.fetch = window.unheldFetch; return true",
    )
    .await;
}

/// Every input and text box of the page has a label.
async fn assert_every_control_labelled(client: &Client) {
    let unlabelled = js(
        client,
        "return [...document.querySelectorAll('input, textarea')]
            .filter(e => e.labels.length === 0).map(e => e.id)",
    )
    .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
}

async fn assert_skip_link_leads_somewhere(client: &Client) {
    let skip_target = js(
        client,
        "const target = document.querySelector(document.querySelector('.skip').hash);
         return target !== null && target.getClientRects().length > 0",
    )
    .await;
    assert_eq!(skip_target, json!(true), "the skip link leads to something shown");
}

/// The error shown, as the page holds it (WebDriver's element text folds runs of spaces).
async fn error_message(client: &Client) -> String {
    let message = js(
        client,
        "return document.getElementById('error-message').textContent",
    )
    .await;
    message.as_str().unwrap().to_string()
}

/// Nothing wider than a phone's screen.
async fn assert_fits_a_phone(client: &Client, context: &str) {
    client.set_window_size(390, 844).await.unwrap();
    let overflow = js(
        client,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
    )
    .await;
    assert_eq!(
        overflow,
        json!(0),
        "{context}: the page scrolls sideways at phone width"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_or_skip("classifiers_in_headless_chromium") else {
        return;
    };
    // Seven labels: more than the five an image gets by default.
    let model_dir = fixture("classification/tiny_image_fourier");
    let images = classifier("tiny_image_fourier");
    assert_eq!(images.labels().len(), 7);
    let server = TestServer::start("tiny_image_fourier", images.clone(), |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;

    // An image classifier: the image form, with the server's default of 5 labels.
    open_page(&client, &server).await;
    assert_eq!(text_of(&client, "#model-task").await, "image-classification");
    assert_eq!(text_of(&client, "#model-labels").await, "7");
    assert!(!find(&client, "#fill-form").await.is_displayed().await.unwrap());
    assert!(find(&client, "#image-file").await.is_displayed().await.unwrap());
    assert!(!find(&client, "#class-text").await.is_displayed().await.unwrap());
    assert_eq!(text_of(&client, "#classify-title").await, "Classify an image");
    let top_k = find(&client, "#label-top-k").await;
    assert_eq!(top_k.prop("value").await.unwrap().as_deref(), Some("5"));
    assert_every_control_labelled(&client).await;
    assert_skip_link_leads_somewhere(&client).await;

    // Pressing the button with no image says what to do and sends nothing.
    find(&client, "#classify").await.click().await.unwrap();
    assert!(text_of(&client, "#image-facts")
        .await
        .contains("Choose an image first"));
    let sent = js(
        &client,
        "return [document.body.dataset.requests, document.body.dataset.status ?? null]",
    )
    .await;
    assert_eq!(sent, json!(["0", null]), "no request started");

    // A file chosen in the file input: previewed, sent as it is, answered as the API answers.
    let wide_path = model_dir.join("wide.png");
    let wide = std::fs::read(&wide_path).unwrap();
    let file_input = find(&client, "#image-file").await;
    file_input.send_keys(wide_path.to_str().unwrap()).await.unwrap();
    let facts = image_facts_once_read(&client, "wide.png").await;
    assert!(facts.contains("37 × 23 pixels"), "{facts}");
    assert!(find(&client, "#image-preview")
        .await
        .is_displayed()
        .await
        .unwrap());
    press(&client, "#classify").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    let api = api_image_labels(&server, &wide, 5).await;
    assert_same_labels(&labels_on_page(&client).await, &api, "wide.png");
    // And as the library classifies the same file.
    let library = images.classify_images(&[&wide], 5).unwrap();
    let shown: Vec<String> = labels_on_page(&client).await.into_iter().map(|l| l.0).collect();
    let expected: Vec<String> = library[0].iter().map(|l| l.label.clone()).collect();
    assert_eq!(shown, expected, "the library's labels for wide.png");
    assert!(text_of(&client, "#labels-timing")
        .await
        .starts_with("5 of 7 labels"));
    screenshot(&client, 1100, "playground-image.png").await;

    // Fewer labels; a dropped file; a pasted one.
    top_k.clear().await.unwrap();
    top_k.send_keys("2").await.unwrap();
    let tall = std::fs::read(model_dir.join("tall_grey.png")).unwrap();
    hand_over_image(
        &client,
        Hand::Drop("#classify-form"),
        "dropped.png",
        &tall,
        "#image-file",
    )
    .await;
    assert!(
        !find(&client, "#labels-result")
            .await
            .is_displayed()
            .await
            .unwrap(),
        "the last image's labels are hidden when another is chosen"
    );
    let facts = image_facts_once_read(&client, "dropped.png").await;
    assert!(facts.contains("19 × 41 pixels"), "{facts}");
    press(&client, "#classify").await;
    let api = api_image_labels(&server, &tall, 2).await;
    assert_eq!(api.as_array().unwrap().len(), 2);
    assert_same_labels(&labels_on_page(&client).await, &api, "dropped tall_grey.png");
    hand_over_image(&client, Hand::Paste, "pasted.png", &wide, "#image-file").await;
    image_facts_once_read(&client, "pasted.png").await;
    press(&client, "#classify").await;
    let api = api_image_labels(&server, &wide, 2).await;
    assert_same_labels(&labels_on_page(&client).await, &api, "pasted wide.png");

    // An answer that arrives after another image was chosen is not shown under it.
    send_late(&client).await;
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#classify").await.click().await.unwrap();
    hand_over_image(
        &client,
        Hand::Drop("#classify-form"),
        "later.png",
        &tall,
        "#image-file",
    )
    .await;
    assert_eq!(request_ended(&client, &before, "the late answer").await, "stale");
    assert!(!find(&client, "#labels-result")
        .await
        .is_displayed()
        .await
        .unwrap());
    image_facts_once_read(&client, "later.png").await;
    press(&client, "#classify").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    let api = api_image_labels(&server, &tall, 2).await;
    assert_same_labels(&labels_on_page(&client).await, &api, "later.png");

    // A file that is not an image: the browser cannot show it, the server's 422 is shown.
    let config = model_dir.join("config.json");
    file_input.send_keys(config.to_str().unwrap()).await.unwrap();
    let facts = image_facts_once_read(&client, "config.json").await;
    assert!(facts.contains("cannot show"), "{facts}");
    press(&client, "#classify").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "error");
    let refused = post(
        server.addr,
        "/classify?top_k=2",
        "application/octet-stream",
        std::fs::read(&config).unwrap(),
    )
    .await;
    assert_eq!(refused.status, 422);
    let message = refused.json()["error"].as_str().unwrap().to_string();
    assert_eq!(error_message(&client).await, message);
    assert!(text_of(&client, "#error-status").await.contains("422 validation"));
    assert!(!find(&client, "#labels-result")
        .await
        .is_displayed()
        .await
        .unwrap());
    screenshot(&client, 1100, "playground-image-error.png").await;

    // A server with a smaller pixel limit: the page says so before sending, the server refuses.
    let small = TestServer::start("small", images, |c| c.max_image_pixels = 800).await;
    client.set_window_size(1100, 900).await.unwrap();
    open_page(&client, &small).await;
    let file_input = find(&client, "#image-file").await;
    file_input.send_keys(wide_path.to_str().unwrap()).await.unwrap();
    let facts = image_facts_once_read(&client, "wide.png").await;
    assert!(
        facts.contains("more pixels than the server takes (800)"),
        "{facts}"
    );
    let over = js(
        &client,
        "return document.getElementById('image-facts').classList.contains('over')",
    )
    .await;
    assert_eq!(over, json!(true));
    press(&client, "#classify").await;
    let refused = post(small.addr, "/classify", "image/png", wide.clone()).await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        error_message(&client).await,
        refused.json()["error"].as_str().unwrap()
    );
    // The answer at phone width.
    file_input
        .send_keys(model_dir.join("tall_grey.png").to_str().unwrap())
        .await
        .unwrap();
    image_facts_once_read(&client, "tall_grey.png").await;
    press(&client, "#classify").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    assert_fits_a_phone(&client, "image classifier").await;
    screenshot(&client, 390, "playground-image-phone.png").await;

    // A text classifier: the text form, every label by default.
    let texts = classifier("tiny_text_classifier");
    let label_count = texts.labels().len();
    let text_server = TestServer::start("tiny_text_classifier", texts, |_| {}).await;
    client.set_window_size(1100, 900).await.unwrap();
    open_page(&client, &text_server).await;
    assert_eq!(text_of(&client, "#model-task").await, "text-classification");
    assert_eq!(text_of(&client, "#classify-title").await, "Classify a text");
    assert!(!find(&client, "#image-file").await.is_displayed().await.unwrap());
    let top_k = find(&client, "#label-top-k").await;
    assert_eq!(top_k.prop("value").await.unwrap(), Some(label_count.to_string()));
    let text = "Perceiver IO reads raw bytes, héllo";
    let area = find(&client, "#class-text").await;
    area.clear().await.unwrap();
    area.send_keys(text).await.unwrap();
    let count = text_of(&client, "#class-text-count").await;
    assert!(
        count.starts_with(&format!("{} tokens ({} bytes", text.len() + 2, text.len())),
        "{count}"
    );
    press(&client, "#classify").await;
    let api = post_json(text_server.addr, "/classify", &json!({"inputs": text})).await;
    assert_eq!(api.status, 200);
    assert_same_labels(&labels_on_page(&client).await, &api.json(), text);
    screenshot(&client, 1100, "playground-text.png").await;
    // Ctrl+Enter classifies, with the labels asked for.
    top_k.clear().await.unwrap();
    top_k.send_keys("1").await.unwrap();
    area.send_keys(&format!("{}{}", Key::Control, Key::Enter))
        .await
        .unwrap();
    wait_for(
        &client,
        "return document.querySelectorAll('#labels .label').length === 1 && document.body.dataset.status === 'done'",
        "the Ctrl+Enter answer",
    )
    .await;
    let api = post_json(
        text_server.addr,
        "/classify",
        &json!({"inputs": text, "parameters": {"top_k": 1}}),
    )
    .await;
    assert_same_labels(&labels_on_page(&client).await, &api.json(), "top_k 1");
    assert_fits_a_phone(&client, "text classifier").await;

    client.close().await.unwrap();
    text_server.stop().await;
    small.stop().await;
    server.stop().await;
}

/// The tiny optical-flow model, and its frames.
fn flow_fixture(name: &str) -> PathBuf {
    fixture(&format!("flow/{name}"))
}

fn flow_frame(name: &str) -> (PathBuf, Vec<u8>) {
    let path = flow_fixture(&format!("frames/tiny_flow-{name}.png"));
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// From now on the page counts its requests to `route` (`window.posts`), sent or not.
async fn count_posts(client: &Client, route: &str) {
    client
        .execute(
            "window.posts = 0;
             const fetch = window.fetch;
             window.fetch = (url, ...rest) => {
               if (String(url).startsWith(arguments[0])) window.posts += 1;
               return fetch(url, ...rest);
             };
             return true",
            vec![json!(route)],
        )
        .await
        .unwrap();
}

async fn posts(client: &Client) -> u64 {
    js(client, "return window.posts").await.as_u64().unwrap()
}

/// Chooses the two frames' files in their file inputs; their facts once the page has read them.
async fn choose_frames(client: &Client, paths: [&Path; 2]) -> Vec<String> {
    let mut facts = Vec::new();
    for (n, path) in (1..).zip(paths) {
        let chooser = find(client, &format!("#frame{n}-file")).await;
        chooser.send_keys(path.to_str().unwrap()).await.unwrap();
    }
    for (n, path) in (1..).zip(paths) {
        let name = path.file_name().unwrap().to_str().unwrap();
        facts.push(facts_once_read(client, &format!("frame{n}-facts"), name).await);
    }
    facts
}

/// Drops a grey `width × height` PNG on frame `n`'s box (1 or 2), checks that its facts say
/// `facts`, and that pressing "Compute flow" sends nothing and says `refused`.
async fn refused_frame(client: &Client, n: u8, (width, height): (usize, usize), facts: &str, refused: &str) {
    let png = perceiver::image::RgbImage::new(width, height, vec![90; width * height * 3])
        .unwrap()
        .png_bytes()
        .unwrap();
    let name = format!("grey-{width}x{height}.png");
    let (dropped_on, chooser) = (format!("#frame{n}-box"), format!("#frame{n}-file"));
    hand_over_image(client, Hand::Drop(&dropped_on), &name, &png, &chooser).await;
    let shown = facts_once_read(client, &format!("frame{n}-facts"), &name).await;
    assert!(shown.contains(facts), "{facts:?} in {shown}");
    let said = press_flow_refused(client).await;
    assert!(said.contains(refused), "{refused:?} in {said}");
}

/// Presses "Compute flow" when the page should refuse to send: waits for its reason, checks
/// that nothing was sent, and returns the reason.
async fn press_flow_refused(client: &Client) -> String {
    press_refused(client, "#flow", "flow-check").await
}

/// Presses `button` when the page should refuse to send: waits for its reason in the element
/// `check` (an id), checks that nothing was sent (see count_posts), and returns the reason.
async fn press_refused(client: &Client, button: &str, check: &str) -> String {
    let sent = posts(client).await;
    js(
        client,
        &format!("document.getElementById({check:?}).textContent = ''; return true"),
    )
    .await;
    find(client, button).await.click().await.unwrap();
    wait_for(
        client,
        &format!("return document.getElementById({check:?}).textContent.startsWith('Not sent: ')"),
        "the reason for not sending",
    )
    .await;
    assert_eq!(posts(client).await, sent, "a request was sent");
    let over = js(
        client,
        &format!("return document.getElementById({check:?}).classList.contains('over')"),
    )
    .await;
    assert_eq!(over, json!(true));
    text_of(client, &format!("#{check}")).await
}

/// The bytes of a `Blob` the page holds (`expression` in its scripts' scope): the blob: URLs
/// it shows cannot be fetched under its content security policy.
async fn blob_bytes(client: &Client, expression: &str) -> Vec<u8> {
    let base64 = js(
        client,
        &format!(
            "return {expression}.arrayBuffer().then(buffer => {{
               const bytes = new Uint8Array(buffer);
               let text = '';
               for (let i = 0; i < bytes.length; i += 8192) {{
                 text += String.fromCharCode(...bytes.subarray(i, i + 8192));
               }}
               return btoa(text);
             }})"
        ),
    )
    .await;
    base64::engine::general_purpose::STANDARD
        .decode(base64.as_str().unwrap())
        .unwrap()
}

/// `POST /flow` with the two frames as a multipart form: the answer's status, flow headers
/// (mean, max, tiles) and body.
async fn api_flow(
    server: &TestServer,
    frames: (&[u8], &[u8]),
    query: &str,
    accept: &str,
) -> (u16, [String; 3], Vec<u8>) {
    use reqwest::multipart::{Form, Part};
    let form = Form::new()
        .part("frame1", Part::bytes(frames.0.to_vec()).file_name("1.png"))
        .part("frame2", Part::bytes(frames.1.to_vec()).file_name("2.png"));
    let response = reqwest::Client::new()
        .post(format!("{}/flow{query}", server.url()))
        .header("Accept", accept)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    let headers = [
        header("x-flow-mean-magnitude"),
        header("x-flow-max-magnitude"),
        header("x-flow-tiles"),
    ];
    let status = response.status().as_u16();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The library's flow of two image files, and the tiles it ran.
fn library_flow(task: &OpticalFlow, frames: (&[u8], &[u8])) -> (perceiver::FlowField, usize) {
    let decode = |bytes| perceiver::image::decode_image(bytes).unwrap();
    let output = task.flow_images(&decode(frames.0), &decode(frames.1)).unwrap();
    (output.field, output.tiles.len())
}

/// The flow the page shows is the library's for these frames, saturating at `max_flow`: its
/// picture byte for byte `POST /flow`'s PNG and `flow_to_rgb`'s, its statistics the answer's
/// headers and the library's.
async fn assert_flow_shown(
    client: &Client,
    server: &TestServer,
    task: &OpticalFlow,
    frames: (&[u8], &[u8]),
    max_flow: Option<f32>,
    context: &str,
) {
    assert_eq!(
        js(client, "return document.body.dataset.status").await,
        "done",
        "{context}: {}",
        error_message(client).await
    );
    assert!(find(client, "#flow-result").await.is_displayed().await.unwrap());
    let (field, tiles) = library_flow(task, frames);
    wait_for(
        client,
        "const picture = document.getElementById('flow-picture');
         return picture.complete && picture.naturalWidth > 0 && picture.src === state.flow.pictureUrl",
        "the flow's picture",
    )
    .await;
    let size = js(
        client,
        "const picture = document.getElementById('flow-picture');
         return [picture.naturalWidth, picture.naturalHeight]",
    )
    .await;
    assert_eq!(size, json!([field.width(), field.height()]), "{context}");
    let shown = blob_bytes(client, "state.flow.picture").await;
    let expected = flow_to_rgb(&field, max_flow).unwrap().png_bytes().unwrap();
    assert!(shown == expected, "{context}: the picture is not the library's");
    let query = max_flow.map_or(String::new(), |m| format!("?max_flow={m}"));
    let (status, headers, png) = api_flow(server, frames, &query, "image/png").await;
    assert_eq!(status, 200, "{context}");
    assert!(png == shown, "{context}: the picture is not POST /flow's");

    let stats = js(
        client,
        "return ['flow-mean', 'flow-max', 'flow-tiles'].map(id => {
           const shown = document.getElementById(id);
           return [shown.dataset.value, shown.textContent];
         })",
    )
    .await;
    let stats: Vec<(String, String)> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().into(), s[1].as_str().unwrap().into()))
        .collect();
    for ((value, _), header) in stats.iter().zip(&headers) {
        assert_eq!(value, header, "{context}: the value shown is the header's");
    }
    let library = field.stats();
    for ((value, text), expected) in stats[..2]
        .iter()
        .zip([library.mean_magnitude, library.max_magnitude])
    {
        assert_eq!(value.parse::<f32>().unwrap(), expected, "{context}");
        // Three significant digits.
        let number: f32 = text
            .trim_end_matches(" pixels")
            .trim_end_matches(" pixel")
            .parse()
            .unwrap();
        assert!(
            (number - expected).abs() <= expected.abs() * 5e-3,
            "{context}: {text} shown for {expected}"
        );
    }
    assert_eq!(
        stats[2],
        (tiles.to_string(), tiles.to_string()),
        "{context}: tiles"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_or_skip("flow_in_headless_chromium") else {
        return;
    };
    let model = perceiver::Loader::new(flow_fixture("tiny_flow").to_string_lossy())
        .load()
        .unwrap();
    let task = OpticalFlow::new(model.clone()).unwrap();
    assert_eq!(task.tile_size(), (48, 56));
    let server = TestServer::start("tiny_flow", model.clone(), |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;

    // An optical-flow model: the flow form alone.
    open_page(&client, &server).await;
    assert_eq!(text_of(&client, "#model-task").await, "optical-flow");
    assert!(find(&client, "#flow-form").await.is_displayed().await.unwrap());
    for hidden in ["#fill-form", "#classify-form", "#unsupported", "#flow-result"] {
        assert!(
            !find(&client, hidden).await.is_displayed().await.unwrap(),
            "{hidden}"
        );
    }
    assert!(text_of(&client, "#flow-help")
        .await
        .contains("at least the model's tile (56 × 48 pixels)"));
    assert_every_control_labelled(&client).await;
    assert_skip_link_leads_somewhere(&client).await;
    count_posts(&client, "/flow").await;

    // Nothing chosen: the page says what is missing and sends nothing.
    let refused = press_flow_refused(&client).await;
    assert!(
        refused.contains("choose the earlier frame and the later frame"),
        "{refused}"
    );
    let focused = js(&client, "return document.activeElement.id").await;
    assert_eq!(
        focused, "frame1-file",
        "the first missing frame's chooser has focus"
    );

    // Files chosen in the file inputs: previewed, sent as they are, the library's flow shown.
    let (grid1_path, grid1) = flow_frame("grid2x3-1");
    let (grid2_path, grid2) = flow_frame("grid2x3-2");
    for facts in choose_frames(&client, [&grid1_path, &grid2_path]).await {
        assert!(facts.contains("100 × 52 pixels"), "{facts}");
        assert!(facts.contains("KiB"), "{facts}");
    }
    for preview in ["#frame1-preview", "#frame2-preview"] {
        assert!(find(&client, preview).await.is_displayed().await.unwrap());
    }
    let check = text_of(&client, "#flow-check").await;
    assert!(check.starts_with("Both frames 100 × 52 pixels, about"), "{check}");
    press(&client, "#flow").await;
    assert_flow_shown(&client, &server, &task, (&grid1, &grid2), None, "chosen").await;
    assert_eq!(posts(&client).await, 1);
    assert_eq!(
        text_of(&client, "#flow-saturation").await,
        "the largest magnitude"
    );
    screenshot(&client, 1100, "playground-flow.png").await;

    // The .flo file: asked for again, saved as a download.
    client.set_window_size(1100, 900).await.unwrap();
    press(&client, "#flo").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    let (field, _) = library_flow(&task, (&grid1, &grid2));
    let flo = blob_bytes(&client, "state.flow.flo").await;
    assert_eq!(perceiver::flow::read_flo(flo.as_slice()).unwrap(), field);
    let saved = downloads(profile.path()).join("flow.flo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved.is_file() {
        assert!(Instant::now() < deadline, "no {} saved", saved.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved = std::fs::read(&saved).unwrap();
    assert_eq!(saved, flo, "the download is the .flo file");
    let link = text_of(&client, "#flo-link").await;
    assert!(link.starts_with("flow.flo, "), "{link}");

    // A saturation: the picture is flow_to_rgb's at that magnitude.
    let max_flow = find(&client, "#max-flow").await;
    max_flow.send_keys("0.5").await.unwrap();
    press(&client, "#flow").await;
    assert_flow_shown(&client, &server, &task, (&grid1, &grid2), Some(0.5), "max_flow").await;
    assert_eq!(text_of(&client, "#flow-saturation").await, "0.5 pixels");
    // Not a positive number as the server reads it (a 32-bit float): said, not sent.
    for value in ["-1", "1e39"] {
        max_flow.clear().await.unwrap();
        max_flow.send_keys(value).await.unwrap();
        let refused = press_flow_refused(&client).await;
        assert!(
            refused.contains("positive number of pixels"),
            "{value}: {refused}"
        );
    }
    max_flow.clear().await.unwrap();

    // Dropped frames, one on each box; the first drop hides the last flow.
    let (_, exact1) = flow_frame("exact-1");
    let (exact2_path, exact2) = flow_frame("exact-2");
    hand_over_image(
        &client,
        Hand::Drop("#frame1-box"),
        "dropped-1.png",
        &exact1,
        "#frame1-file",
    )
    .await;
    assert!(
        !find(&client, "#flow-result").await.is_displayed().await.unwrap(),
        "the last flow is hidden when a frame changes"
    );
    hand_over_image(
        &client,
        Hand::Drop("#frame2-box"),
        "dropped-2.png",
        &exact2,
        "#frame2-file",
    )
    .await;
    facts_once_read(&client, "frame1-facts", "dropped-1.png").await;
    let facts = facts_once_read(&client, "frame2-facts", "dropped-2.png").await;
    assert!(facts.contains("56 × 48 pixels"), "{facts}");
    press(&client, "#flow").await;
    assert_flow_shown(&client, &server, &task, (&exact1, &exact2), None, "dropped").await;

    // Pasted with both frames chosen and no chooser focused: the later frame is replaced. Of
    // another size here: said, not sent.
    let (_, other1) = flow_frame("grid2x2-1");
    let (_, other2) = flow_frame("grid2x2-2");
    js(&client, "document.activeElement?.blur(); return true").await;
    hand_over_image(&client, Hand::Paste, "pasted-2.png", &other2, "#frame2-file").await;
    let facts = facts_once_read(&client, "frame2-facts", "pasted-2.png").await;
    assert!(facts.contains("70 × 54 pixels"), "{facts}");
    let differ = "the frames differ in size (56 × 48 pixels and 70 × 54 pixels)";
    let check = text_of(&client, "#flow-check").await;
    assert!(check.to_lowercase().contains(differ), "{check}");
    let refused = press_flow_refused(&client).await;
    assert!(refused.contains(differ), "{refused}");
    // The earlier frame's chooser focused: a paste replaces that frame.
    js(
        &client,
        "document.getElementById('frame1-file').focus(); return true",
    )
    .await;
    hand_over_image(&client, Hand::Paste, "pasted-1.png", &other1, "#frame1-file").await;
    facts_once_read(&client, "frame1-facts", "pasted-1.png").await;
    press(&client, "#flow").await;
    assert_flow_shown(&client, &server, &task, (&other1, &other2), None, "pasted").await;

    // Two files dropped at once fill both frames, in the order of their names.
    hand_over_images(
        &client,
        Hand::Drop("#flow-form"),
        &[("frame_10.png", &exact2), ("frame_9.png", &exact1)],
        &["#frame2-file", "#frame1-file"],
    )
    .await;
    facts_once_read(&client, "frame1-facts", "frame_9.png").await;
    facts_once_read(&client, "frame2-facts", "frame_10.png").await;
    press(&client, "#flow").await;
    assert_flow_shown(&client, &server, &task, (&exact1, &exact2), None, "two dropped").await;

    // A frame smaller than the model's tile: said, not sent.
    refused_frame(
        &client,
        2,
        (60, 40),
        "60 × 40 pixels · smaller than the model's tile (56 × 48 pixels)",
        "the later frame is smaller than the model's tile (56 × 48 pixels)",
    )
    .await;

    // A file that is not an image: the browser cannot show it, the server's 422 is shown.
    let config = flow_fixture("tiny_flow/config.json");
    find(&client, "#frame2-file")
        .await
        .send_keys(config.to_str().unwrap())
        .await
        .unwrap();
    let facts = facts_once_read(&client, "frame2-facts", "config.json").await;
    assert!(facts.contains("cannot show"), "{facts}");
    press(&client, "#flow").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "error");
    let config = std::fs::read(&config).unwrap();
    let (status, _, body) = api_flow(&server, (&exact1, &config), "", "image/png").await;
    assert_eq!(status, 422);
    let message: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error_message(&client).await, message["error"].as_str().unwrap());
    assert!(text_of(&client, "#error-status").await.contains("422 validation"));
    assert!(!find(&client, "#flow-result").await.is_displayed().await.unwrap());

    // A request out when another frame is chosen is abandoned (aborted: the server drops the
    // tiles of a client that has gone), and nothing is shown for it.
    find(&client, "#frame2-file")
        .await
        .send_keys(exact2_path.to_str().unwrap())
        .await
        .unwrap();
    facts_once_read(&client, "frame2-facts", "tiny_flow-exact-2.png").await;
    send_late(&client).await;
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#flow").await.click().await.unwrap();
    wait_busy(&client).await;
    hand_over_image(
        &client,
        Hand::Drop("#frame2-box"),
        "later.png",
        &exact2,
        "#frame2-file",
    )
    .await;
    assert_eq!(
        request_ended(&client, &before, "the abandoned request's end").await,
        "cancelled"
    );
    assert!(!find(&client, "#flow-result").await.is_displayed().await.unwrap());
    facts_once_read(&client, "frame2-facts", "later.png").await;
    press(&client, "#flow").await;
    assert_flow_shown(
        &client,
        &server,
        &task,
        (&exact1, &exact2),
        None,
        "after a cancelled request",
    )
    .await;
    assert_fits_a_phone(&client, "optical flow").await;
    screenshot(&client, 390, "playground-flow-phone.png").await;

    // A server with lower limits: frames over its pixels, alone or together, and a form over
    // its body limit by a byte, are said and not sent; a form of exactly its limit is sent. The
    // body limit is the size of Chromium's own multipart body for the two files.
    let form_bytes = client
        .execute(
            "const form = new FormData();
             for (const [field, bytes, name] of arguments) {
               form.append(field, new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
             }
             return new Response(form).blob().then(body => body.size)",
            vec![
                json!(["frame1", exact1, "a.png"]),
                json!(["frame2", exact2, "b.png"]),
            ],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    // 6,000 pixels: each grid2x3 frame (100 × 52) fits, the two together do not, as a server
    // with that limit alone says; the exact pair (56 × 48) fits.
    let pixels = TestServer::start("pixels", model.clone(), |c| c.max_image_pixels = 6000).await;
    let (status, _, _) = api_flow(&pixels, (&grid1, &grid2), "", "image/png").await;
    assert_eq!(status, 422, "the server takes the two frames together");
    pixels.stop().await;
    let strict = TestServer::start("strict", model, |c| {
        c.max_image_pixels = 6000;
        c.payload_limit = form_bytes as usize;
    })
    .await;
    client.set_window_size(1100, 900).await.unwrap();
    open_page(&client, &strict).await;
    count_posts(&client, "/flow").await;
    for facts in choose_frames(&client, [&grid1_path, &grid2_path]).await {
        assert!(!facts.contains("more pixels"), "{facts}");
    }
    let refused = press_flow_refused(&client).await;
    for needle in [
        "the two frames are 10,400 pixels together, more than the server takes (6,000)",
        "the two files come to about",
    ] {
        assert!(refused.contains(needle), "{needle:?} in {refused}");
    }
    screenshot(&client, 1100, "playground-flow-refused.png").await;
    client.set_window_size(1100, 900).await.unwrap();
    // A frame over the limit alone: said of that frame.
    refused_frame(
        &client,
        1,
        (100, 70),
        "100 × 70 pixels · more pixels than the server takes (6,000)",
        "the earlier frame has more pixels than the server takes (6,000)",
    )
    .await;
    // One byte over: a longer file name.
    hand_over_images(
        &client,
        Hand::Drop("#flow-form"),
        &[("aa.png", &exact1), ("b.png", &exact2)],
        &["#frame1-file", "#frame2-file"],
    )
    .await;
    facts_once_read(&client, "frame1-facts", "aa.png").await;
    facts_once_read(&client, "frame2-facts", "b.png").await;
    let over = format!(
        "the two files come to about {} bytes as a form, more than the server takes ({} bytes)",
        thousands(form_bytes + 1),
        thousands(form_bytes)
    );
    let refused = press_flow_refused(&client).await;
    assert!(refused.contains(&over), "{over:?} in {refused}");
    // Exactly the limit.
    hand_over_image(
        &client,
        Hand::Drop("#frame1-box"),
        "a.png",
        &exact1,
        "#frame1-file",
    )
    .await;
    facts_once_read(&client, "frame1-facts", "a.png").await;
    let check = text_of(&client, "#flow-check").await;
    assert!(check.starts_with("Both frames 56 × 48 pixels"), "{check}");
    press(&client, "#flow").await;
    // (The first server's answer to compare with: reqwest's form is larger than the limit.)
    assert_flow_shown(
        &client,
        &server,
        &task,
        (&exact1, &exact2),
        None,
        "at the body limit",
    )
    .await;

    client.close().await.unwrap();
    strict.stop().await;
    server.stop().await;
}

/// A count as the page writes it (`toLocaleString('en-US')`).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The tiny multimodal autoencoder's clip: 2 frames of 16 × 16, 96 samples at 1200 Hz.
const CLIP_SIDE: usize = 16;
const CLIP_RATE: u32 = 1200;
const CLIP_SAMPLES: usize = 96;
const CLIP_FRAMES: usize = 2;

fn png_clip_frames(task: &perceiver::Autoencoder, pngs: &[&[u8]]) -> Vec<perceiver::Pixels> {
    let reader = task.reader();
    pngs.iter()
        .map(|png| reader.frame_from_bytes(png, "frame").unwrap())
        .collect()
}

/// Waits until the page has read the chosen clip files, the frames listed as `frames` (names
/// in the order sent; empty for a video); returns what it says of the frames and the audio.
async fn clip_facts_once_read(client: &Client, frames: &[&str]) -> (String, String) {
    client
        .execute(
            "const wanted = JSON.stringify(arguments[0]);
             return new Promise(resolve => {
               const done = () => document.getElementById('clip-form').dataset.files === 'read' &&
                 JSON.stringify([...document.querySelectorAll('#clip-frames-list li')]
                   .map(li => li.dataset.name)) === wanted;
               const poll = () => done() ? resolve(true) : setTimeout(poll, 20);
               poll();
             })",
            vec![json!(frames)],
        )
        .await
        .unwrap();
    (
        text_of(client, "#clip-frames-facts").await,
        text_of(client, "#clip-audio-facts").await,
    )
}

/// The reconstruction the page shows is the library's: each frame's `src` its PNG, the audio
/// player's its WAV, the download link's file its WAV; the labels are `labels`.
async fn assert_clip_shown(
    client: &Client,
    (labels, frames, wav): &(Value, Vec<Vec<u8>>, Vec<u8>),
    context: &str,
) {
    assert_eq!(
        js(client, "return document.body.dataset.status").await,
        "done",
        "{context}"
    );
    assert_same_labels(&labels_on_page(client).await, labels, context);
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let shown = js(
        client,
        "return [...document.querySelectorAll('#clip-frames img')].map(i => [i.getAttribute('src'), i.alt])",
    )
    .await;
    let expected: Vec<Value> = (1..)
        .zip(frames)
        .map(|(n, png)| {
            json!([
                format!("data:image/png;base64,{}", base64(png)),
                format!("Reconstructed frame {n} of {}", frames.len())
            ])
        })
        .collect();
    assert_eq!(shown, json!(expected), "{context}: the frames");
    // The frames drawn and the audio tried, nothing blocked by the content security policy.
    wait_for(
        client,
        "const audio = document.getElementById('clip-audio');
         const frames = [...document.querySelectorAll('#clip-frames img')];
         return frames.every(i => i.complete && i.naturalWidth === 16)
            && (audio.readyState >= 1 || audio.error !== null)",
        "the frames and the audio to load",
    )
    .await;
    assert_eq!(
        js(client, "return window.violations").await,
        json!([]),
        "{context}"
    );
    // Chromium plays no audio under 3,000 Hz, as the tiny model's: the page says so.
    let played = js(
        client,
        "return document.getElementById('clip-audio').error === null",
    )
    .await;
    assert_eq!(
        played,
        json!(false),
        "{context}: Chromium plays 1,200 Hz audio now"
    );
    let note = text_of(client, "#clip-audio-note").await;
    assert!(note.contains("cannot play 1,200 Hz audio"), "{context}: {note}");
    let audio = js(
        client,
        "return document.getElementById('clip-audio').getAttribute('src')",
    )
    .await;
    assert_eq!(
        audio,
        json!(format!("data:audio/wav;base64,{}", base64(wav))),
        "{context}: the audio"
    );
    let linked = blob_bytes(client, "state.clipWav").await;
    assert_eq!(&linked, wav, "{context}: the download link's WAV");
    assert!(
        find(client, "#clip-result").await.is_displayed().await.unwrap(),
        "{context}"
    );
}

/// From now on the page records what its content security policy blocks (`window.violations`).
async fn record_violations(client: &Client) {
    js(
        client,
        "window.violations = [];
         document.addEventListener('securitypolicyviolation',
           e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI.slice(0, 30)));
         return true",
    )
    .await;
}

/// A multimodal autoencoder: the clip's form. Frames chosen as image files (sent in natural
/// name order) or dropped as a `.y4m` video, with a WAV file: the labels, frames and audio on
/// the page are the library's; the labels alone; what the server would refuse is said and not
/// sent; Cancel and new files abort a request out; the phone width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoencoder_page_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_or_skip("autoencoder_page_in_headless_chromium") else {
        return;
    };
    let model = perceiver::Loader::new(fixture("multimodal/tiny_multimodal").to_string_lossy())
        .load()
        .unwrap();
    let task = perceiver::Autoencoder::new(model.clone()).unwrap();
    let label_count = task.labels().len();
    let server = TestServer::start("tiny_multimodal", model.clone(), |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;
    open_page(&client, &server).await;
    assert_eq!(text_of(&client, "#model-task").await, "multimodal-autoencoding");
    for hidden in ["#fill-form", "#classify-form", "#flow-form", "#unsupported"] {
        assert!(
            !find(&client, hidden).await.is_displayed().await.unwrap(),
            "{hidden}"
        );
    }
    assert!(find(&client, "#clip-form").await.is_displayed().await.unwrap());
    // The facts sit in a closed disclosure: read as the page wrote them.
    let limits = js(&client, "return document.getElementById('limits').textContent").await;
    let limits = limits.as_str().unwrap();
    let shape = "2 frames of 16 × 16 pixels, 96 audio samples at 1,200 Hz";
    assert!(limits.contains(shape), "{limits}");
    assert!(!limits.contains("Batch wait"), "{limits}");
    assert!(text_of(&client, "#clip-help")
        .await
        .contains("2 frames of 16 × 16 pixels and 96 audio samples at 1,200 Hz"));
    let top_k = find(&client, "#clip-top-k").await;
    let default_k = label_count.min(5);
    assert_eq!(top_k.prop("value").await.unwrap(), Some(default_k.to_string()));
    assert_eq!(top_k.attr("max").await.unwrap(), Some(label_count.to_string()));
    assert_every_control_labelled(&client).await;
    assert_skip_link_leads_somewhere(&client).await;
    count_posts(&client, "/autoencode").await;
    record_violations(&client).await;

    // Nothing chosen: said, not sent; the frames' chooser focused.
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    let missing = "choose the frames (a video or 2 image files) and the audio (a WAV file)";
    assert!(refused.contains(missing), "{refused}");
    assert_eq!(
        js(&client, "return document.activeElement.id").await,
        "clip-frames-file"
    );

    // Two image files chosen in the file input, named so that frame_9 comes before frame_10.
    let dir = tempfile::tempdir().unwrap();
    let size = (CLIP_SIDE, CLIP_SIDE);
    let (first, second) = (
        common::clip::frame_png(0, 0, size),
        common::clip::frame_png(0, 1, size),
    );
    let wav = common::clip::wav(0, CLIP_RATE, CLIP_SAMPLES);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let chosen = [write("frame_10.png", &second), write("frame_9.png", &first)].join("\n");
    find(&client, "#clip-frames-file")
        .await
        .send_keys(&chosen)
        .await
        .unwrap();
    let (frames_facts, _) = clip_facts_once_read(&client, &["frame_9.png", "frame_10.png"]).await;
    assert!(frames_facts.starts_with("2 files, "), "{frames_facts}");
    let listed = text_of(&client, "#clip-frames-list").await;
    assert!(listed.contains("frame_9.png · "), "{listed}");
    assert!(listed.contains("16 × 16 pixels"), "{listed}");
    // The audio missing: said, not sent; its chooser focused.
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    assert!(refused.contains("choose the audio (a WAV file)"), "{refused}");
    assert!(!refused.contains("choose the frames"), "{refused}");
    assert_eq!(
        js(&client, "return document.activeElement.id").await,
        "clip-audio-file"
    );
    let audio_path = write("clip.wav", &wav);
    find(&client, "#clip-audio-file")
        .await
        .send_keys(&audio_path)
        .await
        .unwrap();
    let (_, audio_facts) = clip_facts_once_read(&client, &["frame_9.png", "frame_10.png"]).await;
    assert_eq!(
        audio_facts,
        format!("clip.wav · {} bytes · 1,200 Hz, 96 samples, mono", wav.len())
    );
    let check = text_of(&client, "#clip-check").await;
    assert!(
        check.starts_with("A clip of 2 frames and 96 audio samples, about"),
        "{check}"
    );
    press(&client, "#autoencode").await;
    let expected =
        common::clip::library_answer(&task, png_clip_frames(&task, &[&first, &second]), &wav, default_k);
    assert_clip_shown(&client, &expected, "chosen frames").await;
    assert_eq!(posts(&client).await, 1);
    let status = text_of(&client, "#clip-status").await;
    assert!(
        status.starts_with("Done: the labels, 2 frames and the audio"),
        "{status}"
    );
    assert!(!find(&client, "#clip-cancel").await.is_displayed().await.unwrap());
    let timing = text_of(&client, "#clip-timing").await;
    let chunks = task.chunks();
    assert!(
        timing.contains(&format!("{chunks} forward passes of the decoder")),
        "{timing}"
    );
    screenshot(&client, 1100, "playground-autoencode.png").await;
    client.set_window_size(1100, 900).await.unwrap();

    // The download link saves the WAV file.
    find(&client, "#clip-wav").await.click().await.unwrap();
    let saved = downloads(profile.path()).join("reconstruction.wav");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved.is_file() {
        assert!(Instant::now() < deadline, "no {} saved", saved.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read(&saved).unwrap(), expected.2, "the saved WAV");

    // Labels only, two of them: the library's labels, no reconstruction shown.
    find(&client, "#clip-labels-only").await.click().await.unwrap();
    top_k.clear().await.unwrap();
    top_k.send_keys("2").await.unwrap();
    press(&client, "#autoencode").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "done");
    let (labels, _, _) =
        common::clip::library_answer(&task, png_clip_frames(&task, &[&first, &second]), &wav, 2);
    assert_same_labels(&labels_on_page(&client).await, &labels, "labels only");
    assert!(!find(&client, "#clip-result").await.is_displayed().await.unwrap());
    let status = text_of(&client, "#clip-status").await;
    assert!(
        status.contains("labels only, 1 forward pass of the decoder"),
        "{status}"
    );
    assert_eq!(posts(&client).await, 2);
    find(&client, "#clip-labels-only").await.click().await.unwrap();

    // A dropped .y4m video and WAV file.
    let video = common::clip::y4m(2, CLIP_SIDE, "F25:1");
    let other_wav = common::clip::wav(3, CLIP_RATE, CLIP_SAMPLES);
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("clip.y4m", &video), ("other.wav", &other_wav)],
    )
    .await;
    let (frames_facts, audio_facts) = clip_facts_once_read(&client, &[]).await;
    assert_eq!(
        frames_facts,
        format!(
            "clip.y4m · {} · 16 × 16 pixels, 2 frames",
            format_bytes(video.len())
        )
    );
    assert!(audio_facts.starts_with("other.wav · "), "{audio_facts}");
    let landed = js(
        &client,
        "return ['clip-frames-file', 'clip-audio-file'].map(id =>
            [...document.getElementById(id).files].map(f => f.name))",
    )
    .await;
    assert_eq!(
        landed,
        json!([["clip.y4m"], ["other.wav"]]),
        "the drop becomes the inputs' files"
    );
    press(&client, "#autoencode").await;
    let frames = task.reader().frames_from_y4m_bytes(&video, "video").unwrap();
    let expected = common::clip::library_answer(&task, frames, &other_wav, 2);
    assert_clip_shown(&client, &expected, "dropped video").await;

    // What the server would refuse: said, not sent (and refused by the server too).
    let wrong = common::clip::frame_png(0, 1, (20, 12));
    // Each: the files given (name, bytes), and the reason said.
    type Refusal<'a> = (Vec<(&'a str, Vec<u8>)>, &'a str);
    let refusals: Vec<Refusal> = vec![
        (
            vec![
                ("a.png", first.clone()),
                ("b.png", second.clone()),
                ("c.png", second.clone()),
            ],
            "the model takes 2 frames, 3 image files are chosen",
        ),
        (
            vec![("a.png", first.clone()), ("b.png", wrong.clone())],
            "frame 2 (b.png) is 20 × 12 pixels, the model takes 16 × 16 pixels",
        ),
        (
            vec![("a.y4m", common::clip::y4m(2, 20, "F25:1"))],
            "the video's frames are 20 × 20 pixels, the model takes 16 × 16 pixels",
        ),
        (
            vec![("a.y4m", common::clip::y4m(1, CLIP_SIDE, "F25:1"))],
            "the video has 1 frame, the model takes 2",
        ),
        (
            vec![("a.y4m", video.clone()), ("b.png", first.clone())],
            "give the frames one way: one video, or image files",
        ),
        (
            vec![("a.wav", common::clip::wav(0, 1000, CLIP_SAMPLES))],
            "the audio is at 1,000 Hz, the model takes 1,200 Hz",
        ),
        (
            vec![("a.wav", common::clip::wav(0, CLIP_RATE, 50))],
            "the audio has 50 samples, the model takes 96",
        ),
    ];
    for (files, reason) in refusals {
        // Each from a good clip, two PNG frames and a WAV file, the files given replacing its
        // frames or its audio.
        let good: [(&str, &[u8]); 3] = [("a.png", &first), ("b.png", &second), ("a.wav", &wav)];
        hand_over_files(&client, Hand::Drop("#clip-form"), &good).await;
        clip_facts_once_read(&client, &["a.png", "b.png"]).await;
        let given: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        hand_over_files(&client, Hand::Drop("#clip-form"), &given).await;
        let (audio, frames): (Vec<_>, Vec<_>) = given.iter().partition(|(n, _)| n.ends_with(".wav"));
        let frames = if frames.is_empty() {
            good[..2].to_vec()
        } else {
            frames
        };
        let audio = audio.first().copied().unwrap_or(good[2]);
        // Listed unless they are one video.
        let listed: Vec<&str> = match frames.as_slice() {
            [(name, _)] if name.ends_with(".y4m") => vec![],
            frames => frames.iter().map(|f| f.0).collect(),
        };
        clip_facts_once_read(&client, &listed).await;
        let check = text_of(&client, "#clip-check").await;
        assert!(
            check.to_lowercase().contains(&reason.to_lowercase()),
            "{reason:?} in {check}"
        );
        let refused = press_refused(&client, "#autoencode", "clip-check").await;
        assert!(refused.contains(reason), "{reason:?} in {refused}");
        // The server's word on the same files.
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in frames.into_iter().chain([audio]) {
            let field = match name.rsplit('.').next() {
                Some("y4m") => "video",
                Some("wav") => "audio",
                _ => "frame",
            };
            let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
            form = form.part(field, part);
        }
        let answer = reqwest::Client::new()
            .post(format!("{}/autoencode", server.url()))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422, "the server refuses it too: {reason}");
    }
    // Labels to show that are not a count.
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("a.png", &first), ("b.png", &second), ("a.wav", &wav)],
    )
    .await;
    clip_facts_once_read(&client, &["a.png", "b.png"]).await;
    top_k.clear().await.unwrap();
    top_k.send_keys("0").await.unwrap();
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    assert!(
        refused.contains("the labels to show must be a whole number of at least 1"),
        "{refused}"
    );
    top_k.clear().await.unwrap();
    top_k.send_keys("2").await.unwrap();

    // A file that is not an image: the browser cannot show it, the server's 422 is shown.
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("a.png", b"not a png"), ("b.png", &second)],
    )
    .await;
    clip_facts_once_read(&client, &["a.png", "b.png"]).await;
    let listed = text_of(&client, "#clip-frames-list").await;
    assert!(listed.contains("cannot show"), "{listed}");
    press(&client, "#autoencode").await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "error");
    assert!(text_of(&client, "#error-status").await.contains("422 validation"));
    assert!(
        error_message(&client).await.starts_with("frame 1: "),
        "{}",
        error_message(&client).await
    );
    assert!(!find(&client, "#clip-result").await.is_displayed().await.unwrap());

    // Cancel aborts the request out (held, so it never reaches the server: the server's side of
    // a client that leaves is the queue's and the route's tests'); nothing is shown for it.
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("a.png", &first), ("b.png", &second)],
    )
    .await;
    clip_facts_once_read(&client, &["a.png", "b.png"]).await;
    hold_requests(&client).await;
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#autoencode").await.click().await.unwrap();
    wait_busy(&client).await;
    let cancel = find(&client, "#clip-cancel").await;
    assert!(cancel.is_displayed().await.unwrap());
    assert!(text_of(&client, "#clip-status")
        .await
        .starts_with("Autoencoding: "));
    cancel.click().await.unwrap();
    assert_eq!(
        request_ended(&client, &before, "the cancelled request's end").await,
        "cancelled"
    );
    assert!(text_of(&client, "#clip-status").await.starts_with("Cancelled"));
    assert!(!cancel.is_displayed().await.unwrap());
    assert!(!find(&client, "#clip-result").await.is_displayed().await.unwrap());
    assert!(!find(&client, "#error").await.is_displayed().await.unwrap());
    assert_eq!(
        js(&client, "return document.activeElement.id").await,
        "autoencode"
    );

    // Two presses at once, the second while the first awaits the files' facts: one request,
    // whose Cancel stays (the second press took the Cancel over, then hid it, leaving the
    // first request out with no way to stop it).
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    let sent = posts(&client).await;
    js(
        &client,
        "const button = document.getElementById('autoencode'); button.click(); button.click(); return true",
    )
    .await;
    wait_busy(&client).await;
    // A round trip more: both presses are past their wait for the facts by now.
    js(&client, "return true").await;
    let cancel = find(&client, "#clip-cancel").await;
    assert!(
        cancel.is_displayed().await.unwrap(),
        "the request out has its Cancel"
    );
    cancel.click().await.unwrap();
    assert_eq!(
        request_ended(&client, &before, "the cancelled request's end").await,
        "cancelled"
    );
    assert_eq!(posts(&client).await, sent, "held requests never left");

    // New files chosen while a request is out abort it too.
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#autoencode").await.click().await.unwrap();
    wait_busy(&client).await;
    hand_over_files(&client, Hand::Drop("#clip-form"), &[("c.wav", &other_wav)]).await;
    assert_eq!(
        request_ended(&client, &before, "the abandoned request's end").await,
        "cancelled"
    );
    assert!(text_of(&client, "#clip-status")
        .await
        .contains("other files were chosen"));
    release_requests(&client).await;
    clip_facts_once_read(&client, &["a.png", "b.png"]).await;
    press(&client, "#autoencode").await;
    let expected =
        common::clip::library_answer(&task, png_clip_frames(&task, &[&first, &second]), &other_wav, 2);
    assert_clip_shown(&client, &expected, "after cancelled requests").await;
    assert_fits_a_phone(&client, "autoencoder").await;
    screenshot(&client, 390, "playground-autoencode-phone.png").await;

    // A server with a body limit of Chromium's form for a clip: a byte over (a longer name) is
    // said and not sent; exactly the limit is sent.
    let form_bytes = client
        .execute(
            "const form = new FormData();
             for (const [field, bytes, name, type] of arguments) {
               form.append(field, new File([new Uint8Array(bytes)], name, {type}));
             }
             return new Response(form).blob().then(body => body.size)",
            vec![
                json!(["frame", first, "a.png", "image/png"]),
                json!(["frame", second, "b.png", "image/png"]),
                json!(["audio", wav, "a.wav", "audio/wav"]),
            ],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    let strict = TestServer::start("strict", model, |c| c.payload_limit = form_bytes as usize).await;
    client.set_window_size(1100, 900).await.unwrap();
    open_page(&client, &strict).await;
    count_posts(&client, "/autoencode").await;
    record_violations(&client).await;
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("aa.png", &first), ("b.png", &second), ("a.wav", &wav)],
    )
    .await;
    clip_facts_once_read(&client, &["aa.png", "b.png"]).await;
    let over = format!(
        "the files come to about {} bytes as a form, more than the server takes ({} bytes)",
        thousands(form_bytes + 1),
        thousands(form_bytes)
    );
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    assert!(refused.contains(&over), "{over:?} in {refused}");
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("a.png", &first), ("b.png", &second)],
    )
    .await;
    clip_facts_once_read(&client, &["a.png", "b.png"]).await;
    press(&client, "#autoencode").await;
    let expected =
        common::clip::library_answer(&task, png_clip_frames(&task, &[&first, &second]), &wav, default_k);
    assert_clip_shown(&client, &expected, "at the body limit").await;

    client.close().await.unwrap();
    strict.stop().await;
    server.stop().await;
}

/// The video that the autoencoder's and the flow model's pages decode
/// (scripts/make_video_fixture.py): 64 × 48, 25 frames a second, frame i `VIDEO_COLOURS[i]`
/// between magenta bands 8 pixels wide at the left and the right; its sound a 300 Hz sine of
/// amplitude 0.5, Opus at 48 kHz.
const VIDEO_COLOURS: [[f32; 3]; 4] = [
    [200.0, 40.0, 40.0],
    [40.0, 200.0, 60.0],
    [50.0, 60.0, 210.0],
    [210.0, 200.0, 40.0],
];
const VIDEO_TONE_HZ: f64 = 300.0;
const VIDEO_AMPLITUDE: f64 = 0.5;

/// A multimodal autoencoder given a video the browser decodes (WebM, not `.y4m`): the page
/// makes the model's 2 frames of 16 × 16 from its first 0.08 s, cropped about the centre (no
/// band shows), and 96 samples of its sound at 1,200 Hz; the labels, frames and audio shown
/// are the library's for what the page made; a WAV file chosen is kept over the video's
/// sound; a video without sound, or one the browser cannot decode, is said and not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoencoder_page_decodes_a_video_in_headless_chromium() {
    let Some((chromium, chromedriver)) =
        browser_or_skip("autoencoder_page_decodes_a_video_in_headless_chromium")
    else {
        return;
    };
    let model = perceiver::Loader::new(fixture("multimodal/tiny_multimodal").to_string_lossy())
        .load()
        .unwrap();
    let task = perceiver::Autoencoder::new(model.clone()).unwrap();
    let default_k = task.labels().len().min(5);
    let server = TestServer::start("tiny_multimodal", model, |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;
    open_page(&client, &server).await;
    count_posts(&client, "/autoencode").await;
    record_violations(&client).await;

    // A video without sound, and no WAV file: its frames are made, the audio is asked for.
    let tail = " · 2 frames made of its first 0.08 s, cropped about the centre to 16 × 16 pixels";
    let silent_path = fixture("multimodal/silent.webm");
    let silent_len = std::fs::metadata(&silent_path).unwrap().len() as usize;
    find(&client, "#clip-frames-file")
        .await
        .send_keys(silent_path.to_str().unwrap())
        .await
        .unwrap();
    let (frames_facts, audio_facts) =
        clip_facts_once_read(&client, &["silent-frame-1.png", "silent-frame-2.png"]).await;
    let head = format!("silent.webm · {} · 64 × 48 pixels, 0.4", format_bytes(silent_len));
    assert!(frames_facts.starts_with(&head), "{head:?} in {frames_facts}");
    assert!(
        frames_facts.ends_with(&format!(" s, no sound this browser decodes{tail}")),
        "{tail:?} in {frames_facts}"
    );
    assert_eq!(audio_facts, "");
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    let reason = "choose the audio (a WAV file: the video has no sound this browser decodes)";
    assert!(refused.contains(reason), "{reason:?} in {refused}");

    // The video with sound, dropped (a file input that allows several files adds to them
    // when WebDriver chooses again).
    let video = std::fs::read(fixture("multimodal/clip.webm")).unwrap();
    hand_over_files(&client, Hand::Drop("#clip-form"), &[("clip.webm", &video)]).await;
    let made = ["clip-frame-1.png", "clip-frame-2.png"];
    let (frames_facts, audio_facts) = clip_facts_once_read(&client, &made).await;
    let head = format!("clip.webm · {} · 64 × 48 pixels, 0.4", format_bytes(video.len()));
    assert!(frames_facts.starts_with(&head), "{head:?} in {frames_facts}");
    assert!(
        frames_facts.ends_with(&format!(" s{tail}")),
        "{tail:?} in {frames_facts}"
    );
    assert!(
        audio_facts.starts_with("the video's sound · clip.wav · ")
            && audio_facts.ends_with(" · 1,200 Hz, 96 samples, mono"),
        "{audio_facts}"
    );

    let pngs = assert_video_frames(&client, &task, "clip.webm").await;

    // The sound: 96 samples at 1,200 Hz, each the mean of the 40 at 48 kHz it spans, so the
    // 300 Hz tone's amplitude times sinc(300 / 1,200) (0.90), Opus's loss aside.
    let wav = blob_bytes(&client, "state.clip.audio").await;
    let reader = hound::WavReader::new(std::io::Cursor::new(&wav)).unwrap();
    assert_eq!(
        (reader.spec().sample_rate, reader.spec().channels),
        (CLIP_RATE, 1)
    );
    let samples: Vec<f64> = reader.into_samples::<f32>().map(|s| s.unwrap() as f64).collect();
    assert_eq!(samples.len(), CLIP_SAMPLES);
    let (mut re, mut im) = (0.0, 0.0);
    for (j, x) in samples.iter().enumerate() {
        let phase = std::f64::consts::TAU * VIDEO_TONE_HZ * j as f64 / CLIP_RATE as f64;
        re += x * phase.cos();
        im += x * phase.sin();
    }
    let amplitude = 2.0 * re.hypot(im) / samples.len() as f64;
    let expected = VIDEO_AMPLITUDE * (std::f64::consts::FRAC_PI_4).sin() / std::f64::consts::FRAC_PI_4;
    println!("video sound: the tone's amplitude {amplitude:.4}, {expected:.4} expected");
    assert!(
        (amplitude - expected).abs() <= 0.02,
        "{amplitude} against {expected}"
    );

    // Sent as the PNG files and the WAV file the page made: the library's answer for them.
    press(&client, "#autoencode").await;
    let frames = png_clip_frames(&task, &[&pngs[0], &pngs[1]]);
    let answer = common::clip::library_answer(&task, frames, &wav, default_k);
    assert_clip_shown(&client, &answer, "a decoded video").await;
    assert_eq!(posts(&client).await, 1);
    screenshot(&client, 1100, "playground-autoencode-video.png").await;
    client.set_window_size(1100, 900).await.unwrap();

    // A WAV file chosen is kept when the video is chosen again; the video's sound is not.
    let dir = tempfile::tempdir().unwrap();
    let chosen_wav = common::clip::wav(4, CLIP_RATE, CLIP_SAMPLES);
    let wav_path = dir.path().join("chosen.wav");
    std::fs::write(&wav_path, &chosen_wav).unwrap();
    find(&client, "#clip-audio-file")
        .await
        .send_keys(wav_path.to_str().unwrap())
        .await
        .unwrap();
    let (_, audio_facts) = clip_facts_once_read(&client, &made).await;
    assert!(audio_facts.starts_with("chosen.wav · "), "{audio_facts}");
    hand_over_files(&client, Hand::Drop("#clip-form"), &[("clip.webm", &video)]).await;
    let (_, audio_facts) = clip_facts_once_read(&client, &made).await;
    assert!(audio_facts.starts_with("chosen.wav · "), "{audio_facts}");
    press(&client, "#autoencode").await;
    let frames = png_clip_frames(&task, &[&pngs[0], &pngs[1]]);
    let answer = common::clip::library_answer(&task, frames, &chosen_wav, default_k);
    assert_clip_shown(&client, &answer, "a decoded video with a WAV file").await;

    // A portrait video: cropped at the top and the bottom.
    let portrait = std::fs::read(fixture("multimodal/portrait.webm")).unwrap();
    hand_over_files(&client, Hand::Drop("#clip-form"), &[("portrait.webm", &portrait)]).await;
    let (frames_facts, _) =
        clip_facts_once_read(&client, &["portrait-frame-1.png", "portrait-frame-2.png"]).await;
    assert!(frames_facts.contains(" · 48 × 64 pixels, 0.4"), "{frames_facts}");
    assert_video_frames(&client, &task, "portrait.webm").await;

    // A video this browser cannot decode: said, not sent.
    hand_over_files(
        &client,
        Hand::Drop("#clip-form"),
        &[("broken.mp4", b"not a video at all")],
    )
    .await;
    clip_facts_once_read(&client, &[]).await;
    let refused = press_refused(&client, "#autoencode", "clip-check").await;
    let reason =
        "the video (broken.mp4) cannot be decoded by this browser (a .y4m video or image files will do)";
    assert!(refused.contains(reason), "{reason:?} in {refused}");
    assert_eq!(posts(&client).await, 2);
    assert_eq!(js(&client, "return window.violations").await, json!([]));
    assert_fits_a_phone(&client, "a decoded video").await;

    client.close().await.unwrap();
    server.stop().await;
}

/// An optical-flow model's two frames taken from a video the browser decodes (the
/// autoencoder's WebM fixture, 64 × 48: at least the tiny model's tile): the frame at the time
/// given and the next one, whole, as PNG files in the frame pickers; the flow shown is the
/// library's for them; another time takes other frames; a frame chosen by hand leaves the
/// video; a time past the video's end, or a file the browser cannot decode, is said and not
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_frames_from_a_video_in_headless_chromium() {
    let Some((chromium, chromedriver)) = browser_or_skip("flow_frames_from_a_video_in_headless_chromium")
    else {
        return;
    };
    let model = perceiver::Loader::new(flow_fixture("tiny_flow").to_string_lossy())
        .load()
        .unwrap();
    let task = OpticalFlow::new(model.clone()).unwrap();
    let server = TestServer::start("tiny_flow", model, |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;
    open_page(&client, &server).await;
    assert_every_control_labelled(&client).await;
    count_posts(&client, "/flow").await;
    record_violations(&client).await;

    // Waits until the video's frames, these two files, are in the pickers; returns its line.
    let video_facts = |names: [&'static str; 2]| {
        let client = client.clone();
        async move {
            client
                .execute(
                    "const wanted = JSON.stringify(arguments[0]);
                     return new Promise(resolve => {
                       const poll = () => {
                         const names = [0, 1].map(i => pickers.frames[i].file?.name ?? null);
                         const video = state.flowVideo;
                         const done = JSON.stringify(names) === wanted && !!video && !!video.frames
                           && pickers.frames.every(p => p.size);
                         done ? resolve(true) : setTimeout(poll, 20);
                       };
                       poll();
                     })",
                    vec![json!(names)],
                )
                .await
                .unwrap();
            text_of(&client, "#flow-video-facts").await
        }
    };
    // The frames in the pickers are the video's frames `shown`, whole: each its colour at its
    // centre, and the bands at the sides still there. Returns their PNG files.
    let frames_are = |shown: [usize; 2]| {
        let client = client.clone();
        async move {
            let mut frames = Vec::new();
            for (i, n) in shown.into_iter().enumerate() {
                let png = blob_bytes(&client, &format!("pickers.frames[{i}].file")).await;
                let image = perceiver::image::decode_image(&png).unwrap();
                assert_eq!((image.width(), image.height()), (64, 48));
                let (centre, edge) = ((24 * 64 + 32) * 3, (24 * 64 + 2) * 3);
                let pixels = image.pixels();
                let worst = pixels[centre..centre + 3]
                    .iter()
                    .zip(VIDEO_COLOURS[n])
                    .map(|(&a, b)| (a as f32 - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= 12.0,
                    "frame {i}: {worst} levels from video frame {n}'s colour"
                );
                let band = &pixels[edge..edge + 3];
                assert!(
                    band[0] > 200 && band[1] < 50 && band[2] > 200,
                    "frame {i}: the band {band:?}"
                );
                frames.push(png);
            }
            frames
        }
    };

    // Dropped, and Compute pressed at once: it waits for the video's frames.
    let video = std::fs::read(fixture("multimodal/clip.webm")).unwrap();
    hand_over_files(&client, Hand::Drop("#flow-form"), &[("clip.webm", &video)]).await;
    press(&client, "#flow").await;
    let facts = video_facts(["clip-at-0.000s.png", "clip-at-0.042s.png"]).await;
    let head = format!("clip.webm · {} · 64 × 48 pixels, 0.4", format_bytes(video.len()));
    assert!(facts.starts_with(&head), "{head:?} in {facts}");
    assert!(facts.ends_with(" s · its frames at 0 s and 0.042 s"), "{facts}");
    let frames = frames_are([0, 1]).await;
    assert_flow_shown(
        &client,
        &server,
        &task,
        (&frames[0], &frames[1]),
        None,
        "a video's frames",
    )
    .await;
    assert_eq!(posts(&client).await, 1);
    screenshot(&client, 1100, "playground-flow-video.png").await;
    client.set_window_size(1100, 900).await.unwrap();

    // Another time: the frame there (frame 2, 0.08–0.12 s) and the next.
    let at = find(&client, "#flow-video-at").await;
    at.clear().await.unwrap();
    at.send_keys("0.1").await.unwrap();
    // Leaving the field commits the time (a change event), before any button moves.
    let leave_at = "document.getElementById('flow-video-at').blur(); return true";
    js(&client, leave_at).await;
    let facts = video_facts(["clip-at-0.100s.png", "clip-at-0.125s.png"]).await;
    assert!(facts.ends_with(" · its frames at 0.1 s and 0.125 s"), "{facts}");
    frames_are([2, 3]).await;

    // A frame chosen by hand leaves the video, even while the video is being decoded: its
    // frames, made after, do not replace the hand's.
    let (_, png) = flow_frame("exact-1");
    let hand = base64::engine::general_purpose::STANDARD.encode(&png);
    let video_b64 = base64::engine::general_purpose::STANDARD.encode(&video);
    client
        .execute(
            "const file = (b64, name, type) =>
               new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type});
             const drop = (target, f) => {
               const transfer = new DataTransfer();
               transfer.items.add(f);
               document.querySelector(target).dispatchEvent(
                 new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
             };
             drop('#flow-form', file(arguments[0], 'again.webm', 'video/webm'));
             drop('#frame1-box', file(arguments[1], 'hand.png', 'image/png'));
             return true",
            vec![json!(video_b64), json!(hand)],
        )
        .await
        .unwrap();
    // Long enough for the video's frames (they took well under a second above).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = js(
        &client,
        "return [state.flowVideo, pickers.frames.map(p => p.file.name),
                 document.getElementById('flow-video-facts').textContent,
                 document.getElementById('flow-video-file').files.length]",
    )
    .await;
    assert_eq!(
        left,
        json!([null, ["hand.png", "clip-at-0.125s.png"], "", 0]),
        "the video left"
    );

    // A time past the end, and a file that is no video: said, not sent.
    at.clear().await.unwrap();
    at.send_keys("3").await.unwrap();
    js(&client, leave_at).await;
    hand_over_files(&client, Hand::Drop("#flow-form"), &[("clip.webm", &video)]).await;
    let refused_video = "return !!state.flowVideo && !!state.flowVideo.error";
    wait_for(&client, refused_video, "the video refused").await;
    let facts = text_of(&client, "#flow-video-facts").await;
    assert!(facts.contains(": it has no frame at 3 s"), "{facts}");
    let refused = press_flow_refused(&client).await;
    assert!(refused.contains("the video (clip.webm) lasts 0.4"), "{refused}");
    hand_over_files(&client, Hand::Drop("#flow-form"), &[("broken.mp4", b"no video")]).await;
    wait_for(&client, refused_video, "the file refused").await;
    let refused = press_flow_refused(&client).await;
    assert!(
        refused.contains("the video (broken.mp4) cannot be decoded by this browser"),
        "{refused}"
    );
    assert_eq!(posts(&client).await, 1);
    assert_eq!(js(&client, "return window.violations").await, json!([]));
    assert_fits_a_phone(&client, "a flow from a video").await;

    client.close().await.unwrap();
    server.stop().await;
}

/// The frames the page made of a video (`name`, scripts/make_video_fixture.py's) are each its
/// colour, the bands cropped off (magenta is at least 150 levels away from either colour in
/// some channel). VP8's 4:2:0 and the browser's conversion back to RGB move the colours a
/// little, and the scaling blends the edges next to where the bands were. Returns the PNGs.
async fn assert_video_frames(client: &Client, task: &perceiver::Autoencoder, name: &str) -> Vec<Vec<u8>> {
    let mut pngs = Vec::new();
    for (i, colour) in VIDEO_COLOURS[..CLIP_FRAMES].iter().enumerate() {
        let png = blob_bytes(client, &format!("state.clip.frames[{i}].file")).await;
        let frame = task.reader().frame_from_bytes(&png, "frame").unwrap();
        let (width, height) = (frame.width, frame.height);
        let plane = height * width;
        let (mut inner, mut edge) = (0f32, 0f32);
        for p in 0..plane {
            let (x, y) = (p % width, p / width);
            let at_edge = x == 0 || x == width - 1 || y == 0 || y == height - 1;
            for (c, &want) in colour.iter().enumerate() {
                let diff = (frame.values[c * plane + p] * 255.0 - want).abs();
                let worst = if at_edge { &mut edge } else { &mut inner };
                *worst = worst.max(diff);
            }
        }
        println!("{name} frame {i}: worst difference {inner} levels inside, {edge} at the edges");
        assert!(
            inner <= 12.0 && edge <= 48.0,
            "{name} frame {i}: {inner} inside, {edge} at the edges"
        );
        pngs.push(png);
    }
    pngs
}

/// A byte count as the page writes it (formatBytes).
fn format_bytes(n: usize) -> String {
    if n >= 1 << 10 {
        let k = (n as f64 / 1024.0 * 10.0).round() / 10.0;
        format!("{k} KiB")
    } else {
        format!("{n} bytes")
    }
}
