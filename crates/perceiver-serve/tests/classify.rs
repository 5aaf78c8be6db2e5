//! `POST /classify` end to end on loopback, with the committed tiny classifiers: answers equal to
//! transformers' image- and text-classification pipelines (`pipeline.json`, written by the
//! fixtures' reference script) and to the library, for image bodies and base64 JSON; concurrent
//! clients batched together but each answered its own; every kind of bad input a 4xx JSON
//! error; the other task's route a 404 naming the model's task.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use perceiver::{Classifier, Loader};
use perceiver_serve::{ServeConfig, ServeModel, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classification")
        .join(name)
}

const IMAGE_MODELS: [&str; 3] = ["tiny_image_fourier", "tiny_image_conv", "tiny_image_learned"];
const TEXT_MODEL: &str = "tiny_text_classifier";

/// The scores of transformers' pipeline and of this service, as in the library's parity tests.
const TOLERANCE: f32 = 1e-4;

/// A server on a free loopback port; stops when dropped.
struct TestServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), perceiver_serve::ServeError>>>,
    client: reqwest::Client,
}

impl TestServer {
    async fn start(model: impl Into<ServeModel>, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::new("test-model");
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

    async fn classifier(name: &str, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start(classifier(name), configure).await
    }

    /// A raw body with this content type (none if `None`): (status, JSON answer).
    async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = self.client.post(format!("{}{path}", self.url)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        answer(
            self.client
                .post(format!("{}{path}", self.url))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }

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

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status}: {body}"
    );
    (status, serde_json::from_str(&body).unwrap())
}

fn classifier(name: &str) -> Classifier {
    Loader::new(fixture(name).to_string_lossy()).classifier().unwrap()
}

fn image(model: &str, file: &str) -> Vec<u8> {
    std::fs::read(fixture(model).join(file)).unwrap()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// transformers' pipeline answers: (input, top_k, labels).
fn pipeline(model: &str) -> Vec<(String, Option<usize>, Value)> {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(model).join("pipeline.json")).unwrap())
            .unwrap();
    cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["input"].as_str().unwrap().to_string(),
                c["top_k"].as_u64().map(|k| k as usize),
                c["output"].clone(),
            )
        })
        .collect()
}

/// Same labels in the same order, scores within [`TOLERANCE`]. Returns the largest score
/// difference.
fn assert_same_labels(got: &Value, want: &Value, context: &str) -> f32 {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{context}: {got:?} vs {want:?}");
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["label"], w["label"], "{context}");
        let (sg, sw) = (
            g["score"].as_f64().unwrap() as f32,
            w["score"].as_f64().unwrap() as f32,
        );
        worst = worst.max((sg - sw).abs());
        assert!((sg - sw).abs() <= TOLERANCE, "{context}: {sg} vs {sw}");
    }
    worst
}

/// States a parity comparison's outcome, as the project's parity tests do.
fn print_worst(what: &str, worst: f32) {
    println!(
        "{what}: worst score difference from transformers' pipeline {worst:.3e} (tolerance {TOLERANCE:e})"
    );
}

fn library_answer(labels: &[perceiver::LabelScore]) -> Value {
    serde_json::to_value(labels).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_answers_equal_the_pipeline_for_bodies_and_base64() {
    for model in IMAGE_MODELS {
        let server = TestServer::classifier(model, |_| {}).await;
        let info: Value = serde_json::from_str(&server.get("/info").await).unwrap();
        assert_eq!(info["task"], "image-classification", "{model}");
        assert_eq!(
            info["labels"].as_array().unwrap().len(),
            classifier(model).labels().len()
        );

        let cases = pipeline(model);
        let mut files = Vec::new();
        let mut worst = 0f32;
        for (file, top_k, want) in &cases {
            let context = format!("{model} {file}");
            let bytes = image(model, file);
            let k = top_k.unwrap();
            // The image's bytes as the body, with and without a content type.
            for content_type in [Some("image/png"), Some("application/octet-stream"), None] {
                let (status, got) = server
                    .post_raw(&format!("/classify?top_k={k}"), content_type, bytes.clone())
                    .await;
                assert_eq!(status, StatusCode::OK, "{context} {content_type:?}: {got}");
                worst = worst.max(assert_same_labels(
                    &got,
                    want,
                    &format!("{context} raw {content_type:?}"),
                ));
            }
            // JSON with base64, as the Inference API takes it, and as a data URL.
            for encoded in [
                base64(&bytes),
                format!("data:image/png;base64,{}", base64(&bytes)),
            ] {
                let body = json!({"inputs": encoded, "parameters": {"top_k": k}});
                let (status, got) = server.post_json("/classify", &body).await;
                assert_eq!(status, StatusCode::OK, "{context}: {got}");
                worst = worst.max(assert_same_labels(&got, want, &format!("{context} base64")));
            }
            files.push(bytes);
        }

        // A list of images: a list of answers, in order.
        let body = json!({
            "inputs": files.iter().map(|f| base64(f)).collect::<Vec<_>>(),
            "parameters": {"top_k": 3}
        });
        let (status, got) = server.post_json("/classify", &body).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), cases.len());
        for (answer, (file, _, want)) in got.iter().zip(&cases) {
            worst = worst.max(assert_same_labels(
                answer,
                want,
                &format!("{model} {file} in a list"),
            ));
        }
        print_worst(model, worst);

        // The default top_k is the pipeline's 5 (or every label, if fewer); a larger one gives
        // every label; both as the library (the CLI's path) ranks them.
        let library = classifier(model);
        let labels = library.labels().len();
        let files: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        for (top_k, query) in [(5, ""), (labels, "?top_k=1000")] {
            let want = library.classify_images(&files[..1], top_k).unwrap();
            let (status, got) = server
                .post_raw(&format!("/classify{query}"), Some("image/png"), files[0].to_vec())
                .await;
            assert_eq!(status, StatusCode::OK, "{got}");
            assert_eq!(
                got.as_array().unwrap().len(),
                top_k.min(labels),
                "{model} {query}"
            );
            assert_same_labels(
                &got,
                &library_answer(&want[0]),
                &format!("{model} library {query}"),
            );
        }

        let metrics = server.get("/metrics").await;
        assert!(
            metrics.contains("perceiver_requests_total{outcome=\"success\",task=\"image-classification\"}"),
            "{metrics}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_answers_equal_the_pipeline() {
    let server = TestServer::classifier(TEXT_MODEL, |_| {}).await;
    let info: Value = serde_json::from_str(&server.get("/info").await).unwrap();
    assert_eq!(info["task"], "text-classification");
    let cases = pipeline(TEXT_MODEL);
    let mut worst = 0f32;
    for (text, top_k, want) in &cases {
        // The fixture asked the pipeline for every label: the service's default for texts.
        assert_eq!(*top_k, None);
        let (status, got) = server.post_json("/classify", &json!({"inputs": text})).await;
        assert_eq!(status, StatusCode::OK, "{text}: {got}");
        worst = worst.max(assert_same_labels(&got, want, text));
        let (status, got) = server
            .post_json("/classify", &json!({"inputs": text, "parameters": {"top_k": 2}}))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}: {got}");
        let top2 = Value::Array(want.as_array().unwrap()[..2].to_vec());
        worst = worst.max(assert_same_labels(&got, &top2, &format!("{text} top 2")));
    }
    // A list of texts: a list of lists, as the text-classification API answers.
    let texts: Vec<&str> = cases.iter().map(|(t, _, _)| t.as_str()).collect();
    let (status, got) = server.post_json("/classify", &json!({"inputs": texts})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    for (answer, (text, _, want)) in got.as_array().unwrap().iter().zip(&cases) {
        worst = worst.max(assert_same_labels(answer, want, &format!("{text} in a list")));
    }
    print_worst(TEXT_MODEL, worst);
    // The library (the CLI's path) ranks them the same.
    let library = classifier(TEXT_MODEL).classify_texts(&texts, 3).unwrap();
    for (answer, want) in got.as_array().unwrap().iter().zip(&library) {
        assert_same_labels(answer, &library_answer(want), "library");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_share_batches_and_get_their_own_answers() {
    let model = "tiny_image_fourier";
    let server = TestServer::classifier(model, |c| {
        c.max_batch_requests = 8;
        // Images count no tokens: a budget below one image's 50,176 encoder rows still batches.
        c.max_batch_tokens = 1;
    })
    .await;
    let cases = pipeline(model);
    let requests = 24;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (file, _, want) = cases[i % cases.len()].clone();
        let bytes = image(model, &file);
        let client = server.client.clone();
        let url = format!("{}/classify?top_k=3", server.url);
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("Content-Type", "image/png")
                .body(bytes)
                .send()
                .await
                .unwrap();
            let (status, got) = answer(response).await;
            assert_eq!(status, StatusCode::OK, "{got}");
            assert_same_labels(&got, &want, &format!("client {i} ({file})"));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let metrics = server.get("/metrics").await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    let requests = requests as f64;
    assert_eq!(
        value("perceiver_requests_total{outcome=\"success\",task=\"image-classification\"}"),
        requests
    );
    assert_eq!(value("perceiver_batch_size_sum"), requests);
    assert!(
        value("perceiver_batch_size_count") < requests,
        "no two images shared a forward pass:\n{metrics}"
    );
    // Passes of images count no tokens.
    assert_eq!(value("perceiver_batch_tokens_count"), 0.0);
    server.stop().await;
}

/// A PNG whose header states `width` × `height` pixels, with almost no data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = 0xffff_ffffu32;
        for &b in kind.iter().chain(data) {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let idat = [
        0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01,
    ];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn assert_error(
    status: StatusCode,
    body: &Value,
    want: StatusCode,
    error_type: &str,
    needle: &str,
    context: &str,
) {
    assert_eq!(status, want, "{context}: {body}");
    assert_eq!(body["error_type"], error_type, "{context}: {body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{context}: {message:?} lacks {needle:?}"
    );
}

/// `max_image_pixels` refuses larger images from their header (422), takes those within it, shows
/// in `/info`, and cannot be zero or above Pillow's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_size_limit_refuses_larger_images() {
    let model = "tiny_image_conv";
    // wide.png is 37 x 23 = 851 pixels, tall_grey.png 19 x 41 = 779.
    let server = TestServer::classifier(model, |c| c.max_image_pixels = 800).await;
    let info: Value = serde_json::from_str(&server.get("/info").await).unwrap();
    assert_eq!(info["limits"]["max_image_pixels"], 800);
    let (status, got) = server
        .post_raw("/classify", Some("image/png"), image(model, "wide.png"))
        .await;
    assert_error(
        status,
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "37 x 23 pixels (width x height: 851), more than the limit",
        "wide.png over 800 pixels",
    );
    let (status, got) = server
        .post_json("/classify", &json!({"inputs": base64(&image(model, "wide.png"))}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
    let (status, got) = server
        .post_raw("/classify", Some("image/png"), image(model, "tall_grey.png"))
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    server.stop().await;

    for (pixels, needle) in [
        (0, "max_image_pixels"),
        (perceiver_serve::caps::MAX_IMAGE_PIXELS + 1, "Pillow"),
    ] {
        let config = ServeConfig {
            port: 0,
            max_image_pixels: pixels,
            ..ServeConfig::new("test-model")
        };
        let error = match Server::bind(config, classifier(model)).await {
            Ok(_) => panic!("max_image_pixels {pixels} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(needle), "{pixels}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_4xx_json_errors() {
    let model = "tiny_image_conv";
    let server = TestServer::classifier(model, |c| {
        c.payload_limit = 64 * 1024;
        c.max_client_batch_size = 2;
    })
    .await;
    let wide = image(model, "wide.png");
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let raw_cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        ("empty body", Some("image/png"), Vec::new(), "the body is empty"),
        (
            "text as an image",
            Some("text/plain"),
            b"a cat on a mat".to_vec(),
            "cannot decode the image",
        ),
        (
            "text declared an image",
            Some("image/jpeg"),
            b"not a jpeg".to_vec(),
            "cannot decode the image",
        ),
        (
            "truncated PNG",
            Some("image/png"),
            wide[..wide.len() / 2].to_vec(),
            "cannot decode the image",
        ),
        (
            "60000 x 60000",
            Some("image/png"),
            png_claiming(60_000, 60_000),
            "60000 x 60000",
        ),
    ];
    for (context, content_type, body, needle) in raw_cases {
        let (status, got) = server.post_raw("/classify", content_type, body).await;
        assert_error(status, &got, unprocessable, "validation", needle, context);
    }
    let (status, got) = server
        .post_raw("/classify?top_k=x", Some("image/png"), wide.clone())
        .await;
    assert_error(status, &got, unprocessable, "validation", "top_k=x", "bad query");
    let (status, got) = server
        .post_raw("/classify?top_k=0", Some("image/png"), wide.clone())
        .await;
    assert_error(status, &got, unprocessable, "validation", "top_k is 0", "top_k 0");
    let (status, got) = server
        .post_raw("/classify", Some("image/png"), vec![0; 100 * 1024])
        .await;
    assert_error(
        status,
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "payload limit",
        "too large",
    );

    let png = base64(&wide);
    let json_cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "bad base64",
            json!({"inputs": "not base64!"}),
            unprocessable,
            "validation",
            "not valid base64",
        ),
        (
            "empty base64",
            json!({"inputs": ""}),
            unprocessable,
            "validation",
            "empty",
        ),
        (
            "base64 of text",
            json!({"inputs": base64(b"hello")}),
            unprocessable,
            "validation",
            "cannot decode",
        ),
        (
            "second of a list",
            json!({"inputs": [png, "@@"]}),
            unprocessable,
            "validation",
            "inputs[1]: the image is not valid base64",
        ),
        (
            "too many",
            json!({"inputs": [png, png, png]}),
            unprocessable,
            "validation",
            "at most 2",
        ),
        (
            "empty list",
            json!({"inputs": []}),
            unprocessable,
            "validation",
            "empty list",
        ),
        (
            "not a string",
            json!({"inputs": 3}),
            unprocessable,
            "validation",
            "a string or a list of strings",
        ),
        (
            "unknown parameter",
            json!({"inputs": png, "parameters": {"top_n": 2}}),
            unprocessable,
            "validation",
            "top_n",
        ),
        (
            "60000 x 60000 in base64",
            json!({"inputs": base64(&png_claiming(60_000, 60_000))}),
            unprocessable,
            "validation",
            "60000 x 60000",
        ),
    ];
    for (context, body, want, error_type, needle) in json_cases {
        let (status, got) = server.post_json("/classify", &body).await;
        assert_error(status, &got, want, error_type, needle, context);
    }
    let (status, got) = server
        .post_raw("/classify", Some("application/json"), b"{\"inputs\": ".to_vec())
        .await;
    assert_error(
        status,
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "not valid JSON",
        "broken JSON",
    );

    // The fill-mask route of a classifier: 404 naming the model's task.
    let (status, got) = server
        .post_json("/fill-mask", &json!({"inputs": "a [MASK]"}))
        .await;
    assert_error(
        status,
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "the model is an image-classification model",
        "/fill-mask",
    );
    // The service still answers.
    let (status, _) = server.post_raw("/classify", Some("image/png"), wide).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.get("/health").await, "{\"status\":\"ok\"}");
    server.stop().await;

    // A text classifier: images and over-long texts are refused.
    let server = TestServer::classifier(TEXT_MODEL, |_| {}).await;
    let wide = image("tiny_image_conv", "wide.png");
    let (status, got) = server.post_raw("/classify", Some("image/png"), wide).await;
    assert_error(
        status,
        &got,
        unprocessable,
        "validation",
        "classifies text",
        "image to a text model",
    );
    let long = "x".repeat(10_000);
    let (status, got) = server
        .post_json("/classify", &json!({"inputs": ["fine", long]}))
        .await;
    assert_error(
        status,
        &got,
        unprocessable,
        "validation",
        "inputs[1]: ",
        "too long",
    );
    let (status, got) = server.post_json("/classify", &json!({"inputs": 3})).await;
    assert_error(
        status,
        &got,
        unprocessable,
        "validation",
        "a string",
        "not a string",
    );
    assert_eq!(server.get("/health").await, "{\"status\":\"ok\"}");
    server.stop().await;

    // A fill-mask model asked to classify: 404 naming its task.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/tiny_qk_v_explicit");
    let model = Loader::new(dir.to_string_lossy()).load().unwrap();
    let server = TestServer::start(model, |_| {}).await;
    let info: Value = serde_json::from_str(&server.get("/info").await).unwrap();
    assert_eq!(info["task"], "fill-mask");
    assert!(info.get("labels").is_none());
    let (status, got) = server
        .post_raw(
            "/classify",
            Some("image/png"),
            image("tiny_image_conv", "wide.png"),
        )
        .await;
    assert_error(
        status,
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "fill-mask model",
        "/classify on fill-mask",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_given_as_a_model_is_served_as_a_classifier() {
    // A bare model (no preprocessor_config.json applied): transformers' default image settings,
    // which the tiny fixtures do not use, so only the task and the shape are checked here.
    let model = Loader::new(fixture("tiny_image_fourier").to_string_lossy())
        .load()
        .unwrap();
    let server = TestServer::start(model, |_| {}).await;
    let info: Value = serde_json::from_str(&server.get("/info").await).unwrap();
    assert_eq!(info["task"], "image-classification");
    let (status, got) = server
        .post_raw("/classify", None, image("tiny_image_fourier", "wide.png"))
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got.as_array().unwrap().len(), 5);
    server.stop().await;
}
