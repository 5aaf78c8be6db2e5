//! The service end to end on loopback, with the committed tiny fixture models: answers equal to
//! transformers' fill-mask pipeline and to the library, many concurrent clients, every kind of
//! bad request, the API key, and the side routes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use perceiver::{FillMask, Loader};
use perceiver_serve::{ServeConfig, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

/// 64 positions.
const MODEL: &str = "tiny_qk_v_explicit";

/// A server on a free loopback port; stops when dropped.
struct TestServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), perceiver_serve::ServeError>>>,
    client: reqwest::Client,
}

impl TestServer {
    async fn start(model: &str, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = fixture(model);
        let model = Loader::new(dir.to_string_lossy()).load().unwrap();
        let mut config = ServeConfig::new(dir.to_string_lossy());
        config.port = 0;
        configure(&mut config);
        let server = Server::bind(config, model).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            stopped.await.ok();
        }));
        Self {
            url,
            stop: Some(stop),
            running: Some(running),
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/fill-mask", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Stops the server and checks it ended cleanly.
    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.running.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
}

/// Equal answers up to float noise: same shape, same strings, scores within `tol`; two
/// candidates may trade places only if their scores tie within `tol`. Returns the largest
/// score difference seen.
fn assert_same_answer(a: &Value, b: &Value, tol: f64, context: &str) -> f64 {
    let mut worst = 0f64;
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{context}: lengths differ");
            if a.first().is_some_and(Value::is_object) {
                for (x, y) in a.iter().zip(b) {
                    // Scores travel as the shortest decimal of an f32: compare them as f32.
                    let score = |v: &Value| v["score"].as_f64().unwrap() as f32;
                    let (sx, sy) = (score(x), score(y));
                    worst = worst.max(f64::from((sx - sy).abs()));
                    assert!(f64::from((sx - sy).abs()) <= tol, "{context}: score {sx} vs {sy}");
                    if x["token"] != y["token"] {
                        let other = b.iter().find(|c| c["token"] == x["token"]);
                        let tie = other.is_some_and(|c| f64::from((score(c) - sx).abs()) <= tol);
                        assert!(tie, "{context}: {x} vs {y}");
                    } else {
                        assert_eq!(x["token_str"], y["token_str"], "{context}");
                        if x.get("sequence").is_some() && y.get("sequence").is_some() {
                            assert_eq!(x["sequence"], y["sequence"], "{context}");
                        }
                    }
                }
            } else {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    worst = worst.max(assert_same_answer(x, y, tol, &format!("{context}[{i}]")));
                }
            }
        }
        _ => panic!("{context}: not lists: {a} / {b}"),
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_transformers_fill_mask_pipeline() {
    for model in [MODEL, "tiny_narrow_latents"] {
        let server = TestServer::start(model, |_| {}).await;
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(fixture(model).join("fill_mask.json")).unwrap())
                .unwrap();
        let parameters = json!({"top_k": 5, "add_special_tokens": true});
        // transformers' pipeline ran in float32; its scores are within 2e-5 of ours.
        let tolerance = 2e-5;
        let mut worst = 0f64;
        for case in &cases {
            let (status, got) = server
                .post(&json!({"inputs": case["text"], "parameters": parameters}))
                .await;
            assert_eq!(status, StatusCode::OK, "{got}");
            let context = format!("{model} {}", case["text"]);
            worst = worst.max(assert_same_answer(&got, &case["output"], tolerance, &context));
        }
        // The same texts as one list: one answer per text, in order.
        let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
        let (status, got) = server
            .post(&json!({"inputs": texts, "parameters": parameters}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let expected: Vec<&Value> = cases.iter().map(|c| &c["output"]).collect();
        worst = worst.max(assert_same_answer(&got, &json!(expected), tolerance, model));
        println!(
            "{model}: worst score difference from transformers' pipeline {worst:.3e} (tolerance {tolerance:e})"
        );
        server.stop().await;
    }
}

/// The library's answer for `text`, in the pipeline's shape (one mask: flat; several: nested).
fn library_answer(fill: &FillMask, text: &str, top_k: usize) -> Value {
    let input = fill.prepare(text, false).unwrap();
    let output = &fill.predict(&[&input], top_k).unwrap()[0];
    let rows: Vec<Value> = output
        .masks
        .iter()
        .map(|m| {
            json!(m
                .candidates
                .iter()
                .map(|c| json!({"score": c.score, "token": c.token, "token_str": c.token_str}))
                .collect::<Vec<_>>())
        })
        .collect();
    if rows.len() == 1 {
        rows[0].clone()
    } else {
        json!(rows)
    }
}

const TEXTS: [&str; 8] = [
    "Hello w[MASK:4]!",
    "[MASK] at the start",
    "a longer line with one [MASK] in the middle of it, and then some more",
    "two [MASK:2] masks [MASK] here",
    "unicode: naïve café [MASK]",
    "[MASK:3]",
    "short [MASK]",
    "The quick brown fox jumps over the lazy d[MASK:2]",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_library() {
    let server = TestServer::start(MODEL, |_| {}).await;
    let fill = FillMask::new(Loader::new(fixture(MODEL).to_string_lossy()).load().unwrap()).unwrap();
    for text in TEXTS {
        let (status, got) = server
            .post(&json!({"inputs": text, "parameters": {"top_k": 3}}))
            .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let expected = library_answer(&fill, text, 3);
        // One request alone is a batch of one: the library's very numbers.
        assert_same_answer(&got, &expected, 0.0, text);
    }
    // Default top_k is 5, and the sequence of a one-mask answer is the text with it filled.
    let (_, got) = server.post(&json!({"inputs": "Hello [MASK]orld"})).await;
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 5);
    let token_str = got[0]["token_str"].as_str().unwrap();
    assert_eq!(got[0]["sequence"], format!("Hello {token_str}orld"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_the_answers_of_sequential_calls() {
    let server = Arc::new(TestServer::start(MODEL, |_| {}).await);
    let body = |text: &str| json!({"inputs": text, "parameters": {"top_k": 3}});
    let mut sequential = Vec::new();
    for text in TEXTS {
        let (status, answer) = server.post(&body(text)).await;
        assert_eq!(status, StatusCode::OK);
        sequential.push(answer);
    }
    let sequential = Arc::new(sequential);
    let clients: Vec<_> = (0..64)
        .map(|client| {
            let (server, sequential) = (server.clone(), sequential.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let t = (client + i) % TEXTS.len();
                    let (status, answer) = server.post(&body(TEXTS[t])).await;
                    assert_eq!(status, StatusCode::OK, "{answer}");
                    // Batched with other lengths, padded: float noise only.
                    assert_same_answer(&answer, &sequential[t], 1e-5, TEXTS[t]);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let requests = 64.0 * 20.0 + TEXTS.len() as f64;
    assert_eq!(
        value("perceiver_requests_total{outcome=\"success\",task=\"fill-mask\"}"),
        requests
    );
    assert_eq!(value("perceiver_batch_size_sum"), requests);
    assert!(
        value("perceiver_batch_size_count") < requests,
        "64 clients at once must share forward passes"
    );
    assert_eq!(value("perceiver_queue_depth"), 0.0);
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_json_errors() {
    let server = TestServer::start(MODEL, |c| c.payload_limit = 4096).await;
    let long = format!("{}[MASK]", "x".repeat(64));
    let hostile = "[MASK:1048576]".repeat(250);
    let many: Vec<&str> = vec!["a[MASK]"; 33];
    let costly: Vec<String> = vec!["[MASK:60]".to_string(); 20];
    let oversized = json!({"inputs": "x".repeat(5000)}).to_string();
    // (method, path, raw body, status, error_type)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/fill-mask", r#"{"inputs": "#.into(), 400, "invalid_json"),
        ("POST", "/fill-mask", String::new(), 400, "invalid_json"),
        ("POST", "/fill-mask", "hello".into(), 400, "invalid_json"),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "a[MASK]"} trailing"#.into(),
            400,
            "invalid_json",
        ),
        ("POST", "/fill-mask", "{}".into(), 422, "validation"),
        ("POST", "/fill-mask", "[]".into(), 422, "validation"),
        ("POST", "/fill-mask", r#"{"inputs": 3}"#.into(), 422, "validation"),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": [1, 2]}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "a[MASK]", "parameters": {"targets": ["b"]}}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "a[MASK]", "parameters": {"top_k": 0}}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "a[MASK]", "parameters": {"top_k": 263}}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "a[MASK]", "parameters": {"top_k": -1}}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "no mask here"}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": ["a[MASK]", "none"]}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": "bad [MASK:x] run"}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            json!({"inputs": long}).to_string(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            json!({"inputs": hostile}).to_string(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            r#"{"inputs": []}"#.into(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            json!({"inputs": many}).to_string(),
            422,
            "validation",
        ),
        (
            "POST",
            "/fill-mask",
            json!({"inputs": costly}).to_string(),
            422,
            "validation",
        ),
        ("POST", "/fill-mask", oversized, 413, "payload_too_large"),
        ("GET", "/fill-mask", String::new(), 405, "method_not_allowed"),
        ("POST", "/health", String::new(), 405, "method_not_allowed"),
        ("GET", "/no-such-route", String::new(), 404, "not_found"),
    ];
    for (method, path, body, status, error_type) in cases {
        let response = server
            .client
            .request(method.parse().unwrap(), format!("{}{path}", server.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let context = format!("{method} {path} {:.80}", body);
        assert_eq!(response.status().as_u16(), status, "{context}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{context}"
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error_type"], error_type, "{context}: {error}");
        let message = error["error"].as_str().unwrap();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{context}: {message:?}"
        );
    }
    // Messages name what is wrong and where.
    let (_, e) = server.post(&json!({"inputs": ["a[MASK]", "none"]})).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("inputs[1]: the text has no mask"),
        "{e}"
    );
    let (_, e) = server
        .post(&json!({"inputs": "a[MASK]", "parameters": {"top_k": "x"}}))
        .await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("parameters.top_k: invalid type"),
        "{e}"
    );
    let (_, e) = server.post(&json!({"inputs": long})).await;
    assert!(e["error"].as_str().unwrap().contains("at most 64"), "{e}");
    // Invalid UTF-8 in the body, and no content type: still JSON errors, and the server lives on.
    let response = server
        .client
        .post(format!("{}/fill-mask", server.url))
        .body(b"{\"inputs\": \"\xff[MASK]\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = server
        .client
        .post(format!("{}/fill-mask", server.url))
        .body(r#"{"inputs": "a[MASK]"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the content type is not required"
    );
    let health = server
        .client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_and_nothing_else() {
    let server = Arc::new(TestServer::start(MODEL, |c| c.max_concurrent_requests = 2).await);
    let body = json!({"inputs": vec!["a longer text [MASK:8] to keep the model busy a little"; 32]});
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            tokio::spawn(async move { server.post(&body).await })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(answer.as_array().unwrap().len(), 32);
                answered += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer["error_type"], "overloaded");
                refused += 1;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    // 64 clients at once for 2 slots: some must have been refused, and some served.
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_every_route_but_health() {
    let server = TestServer::start(MODEL, |c| c.api_key = Some("s3cret".into())).await;
    let get = |path: &str, key: Option<&str>| {
        let mut request = server.client.get(format!("{}{path}", server.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // Open: the health check, and the playground page (it asks the user for the key).
    for path in ["/health", "/", "/playground.css", "/playground.js"] {
        assert_eq!(get(path, None).await.unwrap().status(), StatusCode::OK, "{path}");
    }
    // Everything else needs the key, even to learn that a route or a method does not exist.
    let send = |method: reqwest::Method, path: &str, key: Option<&str>| {
        let mut request = server.client.request(method, format!("{}{path}", server.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    for (method, path, with_key) in [
        (reqwest::Method::GET, "/no-such-route", StatusCode::NOT_FOUND),
        (reqwest::Method::POST, "/health", StatusCode::METHOD_NOT_ALLOWED),
        (reqwest::Method::POST, "/", StatusCode::METHOD_NOT_ALLOWED),
        (reqwest::Method::DELETE, "/info", StatusCode::METHOD_NOT_ALLOWED),
        (reqwest::Method::GET, "/fill-mask", StatusCode::METHOD_NOT_ALLOWED),
        (reqwest::Method::POST, "/classify", StatusCode::NOT_FOUND),
    ] {
        let response = send(method.clone(), path, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error_type"], "unauthorized", "{method} {path}");
        let response = send(method.clone(), path, Some("s3cret")).await.unwrap();
        assert_eq!(response.status(), with_key, "{method} {path} with the key");
    }
    // The scheme's name is case-insensitive (RFC 7235); the key is not.
    for (header, status) in [
        ("bearer s3cret", StatusCode::OK),
        ("BEARER s3cret", StatusCode::OK),
        ("Bearer S3CRET", StatusCode::UNAUTHORIZED),
        ("Basic s3cret", StatusCode::UNAUTHORIZED),
        ("Bearers3cret", StatusCode::UNAUTHORIZED),
    ] {
        let response = server
            .client
            .get(format!("{}/info", server.url))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{header}");
    }
    for path in ["/info", "/metrics", "/docs/", "/api-doc/openapi.json"] {
        for key in [None, Some("wrong"), Some("s3cret2")] {
            let response = get(path, key).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} {key:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error_type"], "unauthorized");
        }
        assert_eq!(
            get(path, Some("s3cret")).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    let fill = |key: Option<&str>| {
        let mut request = server
            .client
            .post(format!("{}/fill-mask", server.url))
            .json(&json!({"inputs": "a[MASK]"}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(fill(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fill(Some("s3cret")).await.unwrap().status(), StatusCode::OK);
    let metrics = get("/metrics", Some("s3cret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("perceiver_requests_total{outcome=\"unauthorized\",task=\"fill-mask\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("perceiver_requests_total{outcome=\"success\",task=\"fill-mask\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_metrics_and_docs() {
    let server = TestServer::start(MODEL, |c| c.max_batch_requests = 7).await;
    let get = |path: &str| server.client.get(format!("{}{path}", server.url)).send();

    let health = get("/health").await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let info: Value = get("/info").await.unwrap().json().await.unwrap();
    assert!(info["model_id"].as_str().unwrap().ends_with(MODEL));
    assert_eq!(info["config"]["d_latents"], 48);
    assert_eq!(info["parameters"], 92470, "the count in the fixtures' README");
    assert_eq!(info["limits"]["max_input_length"], 64);
    assert_eq!(info["limits"]["max_batch_requests"], 7);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));

    let metrics = get("/metrics").await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    for name in [
        "perceiver_requests_total",
        "perceiver_request_duration_seconds",
        "perceiver_queue_duration_seconds",
        "perceiver_inference_duration_seconds",
        "perceiver_batch_size",
        "perceiver_queue_depth",
    ] {
        assert!(metrics.contains(&format!("# TYPE {name}")), "{name}");
    }
    // The health check ran a real forward pass.
    assert!(metrics.contains("perceiver_batch_size_count 1"), "{metrics}");

    let doc: Value = get("/api-doc/openapi.json").await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/fill-mask"]["post"].is_object());
    let docs = get("/docs/").await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let initializer = get("/docs/swagger-initializer.js")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/api-doc/openapi.json"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_cannot_work_are_refused_at_start() {
    let model = Loader::new(fixture(MODEL).to_string_lossy()).load().unwrap();
    let config = |change: fn(&mut ServeConfig)| {
        let mut c = ServeConfig::new("m");
        c.port = 0;
        change(&mut c);
        c
    };
    let err = Server::bind(config(|c| c.max_batch_tokens = 63), model.clone())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("below the model's 64 positions"),
        "{err}"
    );
    let err = Server::bind(config(|c| c.max_batch_requests = 0), model.clone())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("max_batch_requests must be at least 1"),
        "{err}"
    );
    // No client could send a blank key: every request but the open ones would be refused.
    for blank in ["", " \t"] {
        let mut c = config(|_| {});
        c.api_key = Some(blank.into());
        let err = Server::bind(c, model.clone()).await.err().unwrap();
        assert!(err.to_string().starts_with("the API key is empty"), "{err}");
    }
    let mut c = config(|_| {});
    c.api_key = Some(" s3cret\n".into());
    let err = Server::bind(c, model.clone()).await.err().unwrap();
    assert!(
        err.to_string().contains("starts or ends with whitespace"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Server::bind(
        ServeConfig {
            port,
            ..ServeConfig::new("m")
        },
        model,
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string().starts_with("cannot listen on 127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_their_caps_are_refused_at_start() {
    use perceiver_serve::caps;
    let model = Loader::new(fixture(MODEL).to_string_lossy()).load().unwrap();
    /// A change to a valid config, and part of the error it must cause.
    type Case = (fn(&mut ServeConfig), &'static str);
    let cases: [Case; 9] = [
        (
            |c| c.max_batch_tokens = caps::MAX_BATCH_TOKENS + 1,
            "max_batch_tokens is 1048577, at most 1048576",
        ),
        (
            |c| c.max_batch_requests = caps::MAX_BATCH_REQUESTS + 1,
            "max_batch_requests is 1025, at most 1024",
        ),
        (
            |c| c.max_concurrent_requests = usize::MAX,
            "max_concurrent_requests is 18446744073709551615, at most 65536",
        ),
        (
            |c| c.max_client_batch_size = caps::MAX_CLIENT_BATCH_SIZE + 1,
            "max_client_batch_size is 1025, at most 1024",
        ),
        (
            |c| c.max_predictions = caps::MAX_PREDICTIONS + 1,
            "max_predictions is 65537, at most 65536",
        ),
        (
            |c| c.payload_limit = caps::PAYLOAD_LIMIT + 1,
            "payload_limit is 1073741825, at most 1073741824",
        ),
        (
            |c| c.max_batch_wait = std::time::Duration::from_secs(3600),
            "max_batch_wait (microseconds) is 3600000000, at most 1000000",
        ),
        (
            |c| c.max_connections = caps::MAX_CONNECTIONS + 1,
            "max_connections is 65537, at most 65536",
        ),
        (
            |c| c.body_timeout = std::time::Duration::from_secs(3601),
            "body_timeout (seconds) is 3601, at most 3600",
        ),
    ];
    for (change, needle) in cases {
        let mut config = ServeConfig::new("m");
        config.port = 0;
        change(&mut config);
        let err = Server::bind(config, model.clone()).await.err().unwrap();
        assert!(
            matches!(err, perceiver_serve::ServeError::LimitTooLarge { .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with(needle), "{err}");
    }
    // Every cap itself is accepted.
    let config = ServeConfig {
        port: 0,
        max_batch_tokens: caps::MAX_BATCH_TOKENS,
        max_batch_requests: caps::MAX_BATCH_REQUESTS,
        max_batch_wait: caps::MAX_BATCH_WAIT,
        max_concurrent_requests: caps::MAX_CONCURRENT_REQUESTS,
        max_client_batch_size: caps::MAX_CLIENT_BATCH_SIZE,
        max_predictions: caps::MAX_PREDICTIONS,
        payload_limit: caps::PAYLOAD_LIMIT,
        max_connections: caps::MAX_CONNECTIONS,
        header_timeout: caps::MAX_TIMEOUT,
        body_timeout: caps::MAX_TIMEOUT,
        shutdown_timeout: caps::MAX_TIMEOUT,
        ..ServeConfig::new("m")
    };
    let server = Server::bind(config, model).await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_counts_in_requests_are_4xx_at_once() {
    let server = TestServer::start(MODEL, |_| {}).await;
    let started = std::time::Instant::now();
    // A body of a few kilobytes standing for 300 million ids: refused by its count, which the
    // message gives, without building them.
    let (status, e) = server
        .post(&json!({"inputs": "[MASK:1048576]".repeat(300)}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = e["error"].as_str().unwrap();
    assert!(
        message.contains("314572800 tokens long") && message.contains("at most 64"),
        "{message}"
    );
    // The same in every text of a batch (the first one refuses the request).
    let (status, e) = server.post(&json!({"inputs": vec!["[MASK:1000000]"; 32]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"].as_str().unwrap().starts_with("inputs[0]: "), "{e}");
    // Numbers beyond every integer type, and nesting beyond the JSON reader's depth.
    for (body, status) in [
        (
            r#"{"inputs": "a[MASK]", "parameters": {"top_k": 1e30}}"#.to_string(),
            422,
        ),
        (
            r#"{"inputs": "a[MASK]", "parameters": {"top_k": 99999999999999999999999}}"#.to_string(),
            422,
        ),
        (
            format!(
                r#"{{"inputs": {}"a[MASK]"{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            400,
        ),
    ] {
        let response = server
            .client
            .post(format!("{}/fill-mask", server.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().is_some(), "{error}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // And the service carries on.
    let (status, _) = server.post(&json!({"inputs": "a[MASK]c"})).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
