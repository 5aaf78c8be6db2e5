//! `POST /flow` end to end on loopback, with the committed tiny optical-flow model: the flow of
//! the fixture frames equal, bit for bit, to the library's (`OpticalFlow::flow_images`, itself
//! checked against DeepMind's Colab around transformers' model in the library's tests) as JSON,
//! as a PNG picture and as a `.flo` file, from a multipart form and from base64 JSON;
//! concurrent requests each answered their own flow; every kind of bad input a 4xx JSON error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use perceiver::flow::{flow_to_rgb, read_flo};
use perceiver::image::decode_image;
use perceiver::tasks::flow::OpticalFlow;
use perceiver::{FlowField, Loader};
use perceiver_serve::ServeConfig;
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

mod common;
use common::TestServer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flow")
}

fn frame(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("frames").join(name)).unwrap()
}

/// The fixture pairs of the tiny model: one tile, 2×2 and 2×3 tiles.
const PAIRS: [&str; 3] = ["exact", "grid2x2", "grid2x3"];

fn frames(pair: &str) -> (Vec<u8>, Vec<u8>) {
    (
        frame(&format!("tiny_flow-{pair}-1.png")),
        frame(&format!("tiny_flow-{pair}-2.png")),
    )
}

fn task() -> OpticalFlow {
    OpticalFlow::new(
        Loader::new(fixtures().join("tiny_flow").to_str().unwrap())
            .load()
            .unwrap(),
    )
    .unwrap()
}

/// The library's flow of two image files.
fn library_flow(first: &[u8], second: &[u8]) -> (FlowField, usize) {
    let output = task()
        .flow_images(&decode_image(first).unwrap(), &decode_image(second).unwrap())
        .unwrap();
    (output.field, output.tiles.len())
}

/// A client of a service on the tiny flow model.
struct Client {
    server: TestServer,
    http: reqwest::Client,
}

impl Client {
    async fn start(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let model = Loader::new(fixtures().join("tiny_flow").to_str().unwrap())
            .load()
            .unwrap();
        Self {
            server: TestServer::start("tiny-flow", model, configure).await,
            http: reqwest::Client::new(),
        }
    }

    fn form(first: Vec<u8>, second: Vec<u8>) -> Form {
        Form::new()
            .part("frame1", Part::bytes(first).file_name("1.png"))
            .part("frame2", Part::bytes(second).file_name("2.png"))
    }

    async fn post_form(&self, query: &str, accept: Option<&str>, form: Form) -> Response {
        let url = format!("{}/flow{query}", self.server.url());
        let mut request = self.http.post(url).multipart(form);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        self.http
            .post(format!("{}{path}", self.server.url()))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Response {
        let url = format!("{}{path}", self.server.url());
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// The flow of a JSON answer, checked against its stated size.
fn json_field(answer: &Value) -> FlowField {
    let (height, width) = (
        answer["height"].as_u64().unwrap(),
        answer["width"].as_u64().unwrap(),
    );
    let rows = answer["flow"].as_array().unwrap();
    assert_eq!(rows.len() as u64, height);
    let mut values = Vec::new();
    for row in rows {
        let row = row.as_array().unwrap();
        assert_eq!(row.len() as u64, width);
        for pixel in row {
            let pixel = pixel.as_array().unwrap();
            assert_eq!(pixel.len(), 2);
            values.extend(pixel.iter().map(|v| v.as_f64().unwrap() as f32));
        }
    }
    FlowField::new(height as usize, width as usize, values).unwrap()
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

async fn error(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error_type"].as_str().unwrap().to_owned(),
        body["error"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_equals_the_librarys_in_every_format() {
    let server = Client::start(|_| {}).await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["task"], "optical-flow");
    assert_eq!(info["tile_size"], json!([48, 56]));
    assert!(info.get("labels").is_none());

    for pair in PAIRS {
        let (first, second) = frames(pair);
        let (expected, tiles) = library_flow(&first, &second);
        let stats = expected.stats();

        // JSON from a multipart form: every value as the library's (f32 round-trips in JSON).
        let response = server
            .post_form("", None, Client::form(first.clone(), second.clone()))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{pair}");
        assert_eq!(header(&response, "content-type"), "application/json");
        assert_eq!(header(&response, "x-flow-tiles"), tiles.to_string());
        assert_eq!(
            header(&response, "x-flow-max-magnitude").parse::<f32>().unwrap(),
            stats.max_magnitude
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(json_field(&answer), expected, "{pair}");
        assert_eq!(answer["tiles"].as_u64().unwrap() as usize, tiles);
        assert_eq!(
            answer["mean_magnitude"].as_f64().unwrap() as f32,
            stats.mean_magnitude
        );
        assert_eq!(
            answer["max_magnitude"].as_f64().unwrap() as f32,
            stats.max_magnitude
        );

        // The same frames as base64 JSON (one as a data URL).
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let body = json!({"inputs": {
            "frame1": format!("data:image/png;base64,{}", b64(&first)),
            "frame2": b64(&second),
        }});
        let response = server
            .post("/flow", "application/json", serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{pair}");
        assert_eq!(json_field(&response.json().await.unwrap()), expected, "{pair}");

        // The picture, saturating at the largest magnitude or at max_flow.
        for (query, max_flow) in [("", None), ("?max_flow=0.5", Some(0.5))] {
            let response = server
                .post_form(
                    query,
                    Some("image/png"),
                    Client::form(first.clone(), second.clone()),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK, "{pair}{query}");
            assert_eq!(header(&response, "content-type"), "image/png");
            let png = response.bytes().await.unwrap();
            let expected_png = flow_to_rgb(&expected, max_flow).unwrap().png_bytes().unwrap();
            assert_eq!(png.as_ref(), expected_png.as_slice(), "{pair}{query}");
        }

        // The .flo file, asked for among other types by quality.
        let response = server
            .post_form(
                "",
                Some("application/json;q=0.5, application/octet-stream"),
                Client::form(first.clone(), second.clone()),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{pair}");
        assert_eq!(header(&response, "content-type"), "application/octet-stream");
        assert!(header(&response, "content-disposition").contains("flow.flo"));
        let flo = response.bytes().await.unwrap();
        assert_eq!(read_flo(flo.as_ref()).unwrap(), expected, "{pair}");
    }

    // A type refused with q=0 is not chosen, even beside a wildcard that accepts it; a type
    // none of the three falls back to JSON (the header's parsing is tested in full in http.rs).
    let (first, second) = frames("exact");
    for accept in ["image/png;q=0", "image/*;q=0.5, image/png;Q=0", "text/html"] {
        let response = server
            .post_form("", Some(accept), Client::form(first.clone(), second.clone()))
            .await;
        assert_eq!(header(&response, "content-type"), "application/json", "{accept}");
    }

    server.stop().await;
}

/// A pixel limit under which no pair of frames would fit is refused at start.
#[tokio::test]
async fn a_pixel_limit_below_two_tiles_is_refused() {
    let model = Loader::new(fixtures().join("tiny_flow").to_str().unwrap())
        .load()
        .unwrap();
    let mut config = ServeConfig::new("tiny-flow");
    config.port = 0;
    config.max_image_pixels = 2 * 48 * 56 - 1;
    match perceiver_serve::Server::bind(config, model).await {
        Err(e @ perceiver_serve::ServeError::PixelsBelowFlowTile { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("below the 5376 pixels of two frames"),
                "{message}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served"),
    }
}

/// A fresh service's health check runs its own pass: one tile of grey frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_runs_a_tile() {
    let server = Client::start(|_| {}).await;
    let health: Value = server.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("perceiver_inference_duration_seconds_count 1\n"),
        "{metrics}"
    );
    server.stop().await;
}

/// A smooth `side × side` PNG (a few KB however large).
fn gradient(side: usize, shift: usize) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            pixels.extend([((x + shift) % 256) as u8, (y % 256) as u8, 128]);
        }
    }
    perceiver::image::RgbImage::new(side, side, pixels)
        .unwrap()
        .png_bytes()
        .unwrap()
}

/// Past the shutdown's deadline the tiles not started are not run: a request of many tiles is
/// answered 503 at once and the service stops, instead of computing them all first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_every_tile() {
    let mut server = Client::start(|config| config.shutdown_timeout = Duration::ZERO).await;
    // 1000 × 1000 frames: 35 × 27 = 945 tiles of 48 × 56.
    let form = Client::form(gradient(1000, 0), gradient(1000, 3));
    let url = format!("{}/flow", server.server.url());
    let request = tokio::spawn(server.http.post(url).multipart(form).send());
    // Until some tiles have run.
    let started = std::time::Instant::now();
    loop {
        let metrics = server.get("/metrics").await.text().await.unwrap();
        let ran = metrics
            .lines()
            .find_map(|l| l.strip_prefix("perceiver_inference_duration_seconds_count "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if ran >= 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no tile ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    server.server.begin_stop();
    let (status, kind, message) = error(request.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
        "{message}"
    );
    server.server.stopped().await;
    // Well under the time the 945 tiles take (seconds on any CPU).
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
}

/// Requests sent at once share the model thread tile by tile; each gets its own frames' flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_flow() {
    let server = Client::start(|_| {}).await;
    let requests = PAIRS.iter().chain(PAIRS.iter()).map(|pair| {
        let (first, second) = frames(pair);
        let server = &server;
        async move {
            let response = server.post_form("", None, Client::form(first, second)).await;
            assert_eq!(response.status(), StatusCode::OK);
            json_field(&response.json().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (pair, answer) in PAIRS.iter().chain(PAIRS.iter()).zip(answers) {
        let (first, second) = frames(pair);
        assert_eq!(answer, library_flow(&first, &second).0, "{pair}");
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"perceiver_requests_total{outcome="success",task="optical-flow"} 6"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let server = Client::start(|config| config.max_image_pixels = 6000).await;
    let (first, second) = frames("exact");
    let (big1, _) = frames("grid2x3");
    let validation = |(status, kind, message): (StatusCode, String, String), needle: &str| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{message}");
        assert_eq!(kind, "validation");
        assert!(message.contains(needle), "expected {needle:?} in {message:?}");
    };

    let form = Form::new().part("frame1", Part::bytes(first.clone()));
    validation(
        error(server.post_form("", None, form).await).await,
        "the form has no frame2",
    );
    let form = Form::new().part("frame2", Part::bytes(second.clone()));
    validation(
        error(server.post_form("", None, form).await).await,
        "the form has no frame1",
    );
    let form = Client::form(first.clone(), second.clone()).part("frame3", Part::bytes(vec![1]));
    validation(
        error(server.post_form("", None, form).await).await,
        "unknown form field \"frame3\"",
    );
    let form = Client::form(first.clone(), second.clone()).part("frame1", Part::bytes(vec![1]));
    validation(
        error(server.post_form("", None, form).await).await,
        "the form has frame1 twice",
    );
    let form = Client::form(first.clone(), b"not an image".to_vec());
    validation(error(server.post_form("", None, form).await).await, "frame2: ");
    let form = Client::form(first.clone(), Vec::new());
    validation(
        error(server.post_form("", None, form).await).await,
        "frame2: the image is empty",
    );
    // 54x70 against 48x56.
    let form = Client::form(frames("grid2x2").0, second.clone());
    validation(
        error(server.post_form("", None, form).await).await,
        "the frames differ in size: frame1 is 54x70, frame2 is 48x56",
    );
    // 6,400 pixels, over this service's 6,000: the frame and the setting named.
    let form = Client::form(gradient(80, 0), gradient(80, 1));
    let refused = error(server.post_form("", None, form).await).await;
    assert!(refused.2.starts_with("frame1: "), "{}", refused.2);
    validation(refused, "(the service's --max-image-pixels)");
    // 5,200 pixels each: both held at once are over the 6,000.
    let form = Client::form(big1.clone(), big1.clone());
    validation(
        error(server.post_form("", None, form).await).await,
        "the two frames are 10400 pixels together, more than the service's --max-image-pixels (6000)",
    );
    // Smaller than the tile: a 40x40 pair.
    let small = perceiver::image::RgbImage::new(40, 40, vec![90; 40 * 40 * 3])
        .unwrap()
        .png_bytes()
        .unwrap();
    let form = Client::form(small.clone(), small);
    validation(
        error(server.post_form("", None, form).await).await,
        "smaller than the model's 48x56 tile",
    );
    for query in ["?max_flow=0", "?max_flow=-1", "?max_flow=inf", "?max_flow=x"] {
        let form = Client::form(first.clone(), second.clone());
        validation(
            error(server.post_form(query, Some("image/png"), form).await).await,
            "not a positive number of pixels",
        );
    }
    let form = Client::form(first.clone(), second.clone());
    validation(
        error(server.post_form("?top_k=3", None, form).await).await,
        "unknown query parameter \"top_k\"",
    );
    validation(
        error(server.post("/flow", "image/png", first.clone()).await).await,
        "send the two frames as a multipart form",
    );
    validation(
        error(server.post("/flow", "multipart/form-data", first.clone()).await).await,
        "the multipart form is malformed",
    );
    for (json, needle) in [
        (
            r#"{"inputs": {"frame1": "!!", "frame2": "AAAA"}}"#,
            "frame1: the image is not valid base64",
        ),
        (r#"{"inputs": {"frame1": "AAAA"}}"#, "frame2"),
    ] {
        let response = server.post("/flow", "application/json", json.into()).await;
        validation(error(response).await, needle);
    }
    let (status, kind, _) = error(server.post("/flow", "application/json", b"{".to_vec()).await).await;
    assert_eq!((status, kind.as_str()), (StatusCode::BAD_REQUEST, "invalid_json"));
    // Another task's route names this one.
    let (status, kind, message) = error(server.post("/classify", "image/png", first.clone()).await).await;
    assert_eq!((status, kind.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert!(message.contains("served at POST /flow"), "{message}");

    // Nothing refused cost a pass, and the service still answers.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("perceiver_inference_duration_seconds_count 0\n"),
        "{metrics}"
    );
    let response = server.post_form("", None, Client::form(first, second)).await;
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}
