//! The playground page in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against the built-in model and the committed tiny classifiers.
//!
//! Fill-mask: it types a masked text, presses the button, and checks that the candidates on the
//! page are `POST /fill-mask`'s for the same text; it checks the error path, masking a selection
//! from the keyboard, the API-key field and the page at phone width. Classifiers: it chooses,
//! drops and pastes image files and types texts, and checks that the labels on the page are
//! `POST /classify`'s for the same bytes; it checks a file that is not an image, an image over
//! the server's pixel limit and the phone width. Screenshots are saved under
//! `target/tmp/playground/`.
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

/// A headless Chromium session with the flags a closed network needs, in a fresh profile.
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
    let capabilities = json!({
        "goog:chromeOptions": {"binary": chromium, "args": args},
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
    let before: u64 = js(client, "return Number(document.body.dataset.requests)")
        .await
        .as_u64()
        .unwrap();
    find(client, button).await.click().await.unwrap();
    wait_for(
        client,
        &format!("return Number(document.body.dataset.requests) > {before}"),
        "the answer",
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

    client.goto(&format!("{}/", server.url())).await.unwrap();
    wait_for(&client, "return document.body.dataset.info === 'loaded'", "/info").await;
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
    wait_for(
        &client,
        &format!("return Number(document.body.dataset.requests) > {before}"),
        "the Ctrl+Enter answer",
    )
    .await;
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

/// Canonical, as chromedriver takes a file's path.
fn classifier_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification")
        .join(name)
        .canonicalize()
        .unwrap()
}

fn classifier(name: &str) -> perceiver::Classifier {
    perceiver::Loader::new(classifier_fixture(name).to_string_lossy())
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

/// Gives the page a PNG file as a drop on the form's card or a paste (`how`), as a browser
/// does: a `DataTransfer` holding a `File`.
async fn hand_over_image(client: &Client, how: &str, name: &str, bytes: &[u8]) {
    let event = match how {
        "drop" => {
            "document.getElementById('classify-form').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}))"
        }
        "paste" => {
            "document.body.dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true}))"
        }
        _ => unreachable!(),
    };
    let script = format!(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
         const transfer = new DataTransfer();
         transfer.items.add(new File([bytes], arguments[1], {{type: 'image/png'}}));
         {event};
         return document.getElementById('image-file').files[0].name"
    );
    let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let chosen = client
        .execute(&script, vec![json!(base64), json!(name)])
        .await
        .unwrap();
    assert_eq!(chosen, json!(name), "the {how} becomes the file input's file");
}

/// Waits for the preview of a newly chosen image (or for the browser to give up on it) and
/// returns what the page says of the file.
async fn image_facts_once_read(client: &Client, name: &str) -> String {
    wait_for(
        client,
        &format!(
            "const facts = document.getElementById('image-facts').textContent;
             return facts.startsWith({name:?}) && (facts.includes('pixels') || facts.includes('cannot show'))"
        ),
        "the image's preview",
    )
    .await;
    text_of(client, "#image-facts").await
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
    let model_dir = classifier_fixture("tiny_image_fourier");
    let images = classifier("tiny_image_fourier");
    assert_eq!(images.labels().len(), 7);
    let server = TestServer::start("tiny_image_fourier", images.clone(), |_| {}).await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, &chromium, profile.path()).await;

    // An image classifier: the image form, with the server's default of 5 labels.
    client.goto(&format!("{}/", server.url())).await.unwrap();
    wait_for(&client, "return document.body.dataset.info === 'loaded'", "/info").await;
    assert_eq!(text_of(&client, "#model-task").await, "image-classification");
    assert_eq!(text_of(&client, "#model-labels").await, "7");
    assert!(!find(&client, "#fill-form").await.is_displayed().await.unwrap());
    assert!(find(&client, "#image-file").await.is_displayed().await.unwrap());
    assert!(!find(&client, "#class-text").await.is_displayed().await.unwrap());
    assert_eq!(text_of(&client, "#classify-title").await, "Classify an image");
    let top_k = find(&client, "#label-top-k").await;
    assert_eq!(top_k.prop("value").await.unwrap().as_deref(), Some("5"));
    assert_every_control_labelled(&client).await;
    let skip_target = js(
        &client,
        "const target = document.querySelector(document.querySelector('.skip').hash);
         return target !== null && target.getClientRects().length > 0",
    )
    .await;
    assert_eq!(skip_target, json!(true), "the skip link leads to something shown");

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
    hand_over_image(&client, "drop", "dropped.png", &tall).await;
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
    hand_over_image(&client, "paste", "pasted.png", &wide).await;
    image_facts_once_read(&client, "pasted.png").await;
    press(&client, "#classify").await;
    let api = api_image_labels(&server, &wide, 2).await;
    assert_same_labels(&labels_on_page(&client).await, &api, "pasted wide.png");

    // An answer that arrives after another image was chosen is not shown under it.
    js(
        &client,
        "const fetch = window.fetch;
         window.fetch = (...args) => new Promise(r => setTimeout(r, 300)).then(() => fetch(...args));
         return true",
    )
    .await;
    let before = js(&client, "return Number(document.body.dataset.requests)").await;
    find(&client, "#classify").await.click().await.unwrap();
    hand_over_image(&client, "drop", "later.png", &tall).await;
    wait_for(
        &client,
        &format!("return Number(document.body.dataset.requests) > {before}"),
        "the late answer",
    )
    .await;
    assert_eq!(js(&client, "return document.body.dataset.status").await, "stale");
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
    client.goto(&format!("{}/", small.url())).await.unwrap();
    wait_for(&client, "return document.body.dataset.info === 'loaded'", "/info").await;
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
    client.goto(&format!("{}/", text_server.url())).await.unwrap();
    wait_for(&client, "return document.body.dataset.info === 'loaded'", "/info").await;
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
