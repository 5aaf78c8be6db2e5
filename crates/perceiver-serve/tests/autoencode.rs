//! `POST /autoencode` end to end on loopback, with the committed tiny multimodal autoencoder
//! (2 frames of 16x16, 96 audio samples at 1200 Hz): the labels, frames and audio equal, bit
//! for bit, to the library's `Autoencoder` (itself checked against transformers in the
//! library's tests) from a multipart form of frames or of a `.y4m` video and from base64 JSON;
//! the labels alone; concurrent requests each answered their own clip; every kind of bad input
//! a 422 naming it, without a forward pass.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use perceiver::{Autoencoder, Loader, Pixels};
use perceiver_serve::ServeConfig;
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

mod common;
use common::{clip, TestServer};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/multimodal/tiny_multimodal")
}

fn task() -> Autoencoder {
    Autoencoder::new(Loader::new(model_dir().to_str().unwrap()).load().unwrap()).unwrap()
}

const SIDE: usize = 16;
const RATE: u32 = 1200;
const SAMPLES: usize = 96;

/// Frame `t` of clip `seed`, `side` × `side`, as a PNG file.
fn frame_png(seed: usize, t: usize, side: usize) -> Vec<u8> {
    clip::frame_png(seed, t, (side, side))
}

/// A `.y4m` video of `frames` frames of 16x16 at 25 a second.
fn y4m(frames: usize) -> Vec<u8> {
    clip::y4m(frames, SIDE, "F25:1")
}

fn fast_video() -> Vec<u8> {
    clip::y4m(2, SIDE, "F30:1")
}

fn small_video() -> Vec<u8> {
    clip::y4m(2, 8, "F25:1")
}

/// A float WAV of the model's length whose fourth sample is NaN.
fn nan_wav() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut bytes = Vec::new();
    let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).unwrap();
    for i in 0..SAMPLES {
        writer.write_sample(if i == 3 { f32::NAN } else { 0.1 }).unwrap();
    }
    writer.finalize().unwrap();
    bytes
}

/// What the library answers for these files, as `POST /autoencode` writes it.
fn library_answer(frames: Vec<Pixels>, audio: &[u8], top_k: usize) -> Value {
    let task = task();
    let (labels, frames, wav) = clip::library_answer(&task, frames, audio, top_k);
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({
        "labels": labels,
        "frames": frames.iter().map(|png| base64(png)).collect::<Vec<_>>(),
        "audio": base64(&wav),
        "sample_rate": RATE,
        "chunks": task.chunks(),
    })
}

fn png_frames(seed: usize) -> Vec<Pixels> {
    let reader = task().reader();
    (0..2)
        .map(|t| {
            reader
                .frame_from_bytes(&frame_png(seed, t, SIDE), "frame")
                .unwrap()
        })
        .collect()
}

fn form(frames: &[Vec<u8>], video: Option<Vec<u8>>, audio: Option<Vec<u8>>) -> Form {
    let mut form = Form::new();
    for (t, frame) in frames.iter().enumerate() {
        form = form.part("frame", Part::bytes(frame.clone()).file_name(format!("{t}.png")));
    }
    if let Some(video) = video {
        form = form.part("video", Part::bytes(video).file_name("clip.y4m"));
    }
    if let Some(audio) = audio {
        form = form.part("audio", Part::bytes(audio).file_name("clip.wav"));
    }
    form
}

struct Client {
    server: TestServer,
    http: reqwest::Client,
}

impl Client {
    async fn start(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let model = Loader::new(model_dir().to_str().unwrap()).load().unwrap();
        Self {
            server: TestServer::start("tiny-multimodal", model, configure).await,
            http: reqwest::Client::new(),
        }
    }

    async fn post_form(&self, query: &str, form: Form) -> Response {
        let url = format!("{}/autoencode{query}", self.server.url());
        self.http.post(url).multipart(form).send().await.unwrap()
    }

    async fn post_json(&self, query: &str, body: &Value) -> Response {
        let url = format!("{}/autoencode{query}", self.server.url());
        self.http.post(url).json(body).send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.server.url());
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.server.url());
        self.http.get(url).send().await.unwrap().text().await.unwrap()
    }
}

async fn ok_json(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_equals_the_librarys() {
    let client = Client::start(|_| {}).await;
    let info = client.get("/info").await;
    assert_eq!(info["task"], "multimodal-autoencoding");
    assert_eq!(
        info["clip"],
        json!({"frames": 2, "height": 16, "width": 16, "sample_rate": 1200, "audio_samples": 96})
    );
    assert_eq!(info["labels"].as_array().unwrap().len(), task().labels().len());

    let frames = [frame_png(0, 0, SIDE), frame_png(0, 1, SIDE)];
    let audio = clip::wav(0, RATE, SAMPLES);
    let expected = library_answer(png_frames(0), &audio, 3);
    assert!(expected["chunks"].as_u64().unwrap() > 1);
    // Frames as a form.
    let answer = ok_json(
        client
            .post_form("?top_k=3", form(&frames, None, Some(audio.clone())))
            .await,
    )
    .await;
    assert_eq!(answer, expected);
    // The same in JSON, base64 (settings in the body).
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let body = json!({
        "inputs": {"frames": [base64(&frames[0]), base64(&frames[1])], "audio": base64(&audio)},
        "parameters": {"top_k": 3}
    });
    assert_eq!(ok_json(client.post_json("", &body).await).await, expected);
    // A .y4m video: its frames as the library reads them (a third frame is not read).
    let reader = task().reader();
    let video_frames = reader.frames_from_y4m_bytes(&y4m(3), "video").unwrap();
    let expected_video = library_answer(video_frames, &audio, 5);
    let answer = ok_json(
        client
            .post_form("", form(&[], Some(y4m(3)), Some(audio.clone())))
            .await,
    )
    .await;
    assert_eq!(answer, expected_video);
    assert_ne!(expected_video["labels"], expected["labels"]);
    // The labels alone: the same labels, one chunk, no files.
    let labels_only = ok_json(
        client
            .post_form(
                "?reconstruct=false&top_k=3",
                form(&frames, None, Some(audio.clone())),
            )
            .await,
    )
    .await;
    assert_eq!(
        labels_only,
        json!({"labels": expected["labels"], "sample_rate": 1200, "chunks": 1})
    );
    let body = json!({
        "inputs": {"video": base64(&y4m(2)), "audio": base64(&audio)},
        "parameters": {"reconstruct": false}
    });
    let labels_only = ok_json(client.post_json("", &body).await).await;
    assert_eq!(labels_only["labels"], expected_video["labels"]);
    assert!(labels_only.get("frames").is_none());
    client.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_clip() {
    let client = std::sync::Arc::new(Client::start(|_| {}).await);
    let mut running = Vec::new();
    for seed in 0..4 {
        let client = client.clone();
        running.push(tokio::spawn(async move {
            let frames = [frame_png(seed, 0, SIDE), frame_png(seed, 1, SIDE)];
            let audio = clip::wav(seed, RATE, SAMPLES);
            let answer = ok_json(
                client
                    .post_form("", form(&frames, None, Some(audio.clone())))
                    .await,
            )
            .await;
            assert_eq!(answer, library_answer(png_frames(seed), &audio, 5), "clip {seed}");
        }));
    }
    for run in running {
        run.await.unwrap();
    }
    let metrics = client.metrics().await;
    assert!(
        metrics.contains(r#"perceiver_requests_total{outcome="success",task="multimodal-autoencoding"} 4"#),
        "{metrics}"
    );
    let Ok(client) = std::sync::Arc::try_unwrap(client) else {
        panic!("a request still holds the client")
    };
    client.server.stop().await;
}

/// A fresh service's health check runs its own pass: a black, silent clip's encoding and label;
/// and so does the next once the first no longer vouches (a probe's clip is used up by its pass:
/// the second probe failed when the first one's input was sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_encodes_a_clip_each_time() {
    let client = Client::start(|_| {}).await;
    for probes in 1..=2 {
        assert_eq!(client.get("/health").await["status"], "ok");
        let metrics = client.metrics().await;
        assert!(
            metrics.contains(&format!("perceiver_inference_duration_seconds_count {probes}\n")),
            "{metrics}"
        );
        if probes == 1 {
            let vouches = perceiver_serve::http::HEALTH_CACHE;
            tokio::time::sleep(vouches + std::time::Duration::from_millis(200)).await;
        }
    }
    client.server.stop().await;
}

#[tokio::test]
async fn a_pixel_limit_below_one_clip_is_refused() {
    let model = Loader::new(model_dir().to_str().unwrap()).load().unwrap();
    let mut config = ServeConfig::new("tiny-multimodal");
    config.port = 0;
    config.max_image_pixels = 2 * 16 * 16 - 1;
    match perceiver_serve::Server::bind(config, model).await {
        Err(e @ perceiver_serve::ServeError::PixelsBelowClip { .. }) => {
            let message = e.to_string();
            assert!(message.contains("below the 512 pixels of one clip"), "{message}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let client = Client::start(|_| {}).await;
    let frames = [frame_png(0, 0, SIDE), frame_png(0, 1, SIDE)];
    let audio = clip::wav(0, RATE, SAMPLES);
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let refused = |expected: &'static str| {
        move |status: StatusCode, body: Value| {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{expected}: {body}");
            let message = body["error"].as_str().unwrap().to_owned();
            assert!(message.contains(expected), "expected {expected:?} in {message:?}");
        }
    };
    let forms: Vec<(&str, Form, &str)> = vec![
        ("", form(&frames, None, None), "the clip has no audio"),
        ("", form(&[], None, Some(audio.clone())), "the clip has no frames"),
        ("", form(&frames, Some(y4m(2)), Some(audio.clone())), "not both"),
        (
            "",
            form(&frames[..1], None, Some(audio.clone())),
            "takes 2 frames (num_frames), the request has 1",
        ),
        (
            "",
            form(
                &[frames[0].clone(), frame_png(0, 1, 8)],
                None,
                Some(audio.clone()),
            ),
            "frame 2: the model takes 16x16 frames",
        ),
        (
            "",
            form(
                &[frames[0].clone(), b"not an image".to_vec()],
                None,
                Some(audio.clone()),
            ),
            "frame 2: cannot decode the image: not a JPEG, PNG",
        ),
        (
            "",
            form(&frames, None, Some(clip::wav(0, 44100, SAMPLES))),
            "audio: the model takes audio at 1200 Hz",
        ),
        (
            "",
            form(&frames, None, Some(clip::wav(0, RATE, 50))),
            "audio: the model takes 96 samples",
        ),
        (
            "",
            form(&frames, None, Some(b"RIFF....not a wave".to_vec())),
            "audio: ",
        ),
        (
            "",
            form(&frames, None, Some(audio[..30].to_vec())),
            "audio: the WAV file ends inside its header",
        ),
        (
            "",
            form(&frames, None, Some(Vec::new())),
            "audio: the file is empty",
        ),
        (
            "",
            form(&[], Some(y4m(1)), Some(audio.clone())),
            "video: the model takes 2 frames (num_frames), the video has 1",
        ),
        (
            "",
            form(&[], Some(b"not a video".to_vec()), Some(audio.clone())),
            "video: ",
        ),
        (
            "",
            form(&[], Some(fast_video()), Some(audio.clone())),
            "video: the video's frame rate is F30:1",
        ),
        (
            "",
            form(&[], Some(small_video()), Some(audio.clone())),
            "video: the model takes 16x16 frames",
        ),
        ("", form(&frames, None, Some(nan_wav())), "audio: sample 3 is NaN"),
        (
            "",
            form(
                &[frames[0].clone(), frames[1].clone(), frames[0].clone()],
                None,
                Some(audio.clone()),
            ),
            "takes 2 frames (num_frames), the request has more",
        ),
        (
            "",
            form(&frames, None, Some(audio.clone())).part("audio", Part::bytes(audio.clone())),
            "the form has audio twice",
        ),
        (
            "",
            form(&frames, None, Some(audio.clone())).part("extra", Part::bytes(vec![1])),
            "unknown form field \"extra\"",
        ),
        (
            "?top_k=0",
            form(&frames, None, Some(audio.clone())),
            "top_k=0 is not a count",
        ),
        (
            "?reconstruct=maybe",
            form(&frames, None, Some(audio.clone())),
            "reconstruct=maybe is not true or false",
        ),
        (
            "?max_flow=3",
            form(&frames, None, Some(audio.clone())),
            "unknown query parameter \"max_flow\"",
        ),
    ];
    for (query, form, expected) in forms {
        let response = client.post_form(query, form).await;
        let status = response.status();
        refused(expected)(status, response.json().await.unwrap());
    }
    let bodies = [
        (
            json!({"inputs": {"frames": [base64(&frames[0]), "%%%"], "audio": base64(&audio)}}),
            "frame 2: the image is not valid base64",
        ),
        (
            json!({"inputs": {"frames": [base64(&frames[0]), base64(&frames[1])]}}),
            "missing field `audio`",
        ),
        (
            json!({"inputs": {"audio": base64(&audio)}}),
            "the clip has no frames",
        ),
        (
            json!({"inputs": {"frames": [], "audio": base64(&audio)}}),
            "the request has 0",
        ),
        (
            json!({"inputs": {"frames": ["AA==", "AA==", "AA=="], "audio": base64(&audio)}}),
            "the request has 3",
        ),
        (
            json!({"inputs": {"video": base64(&y4m(2)), "audio": base64(&audio), "labels": 1}}),
            "unknown field `labels`",
        ),
        (
            json!({"inputs": {"video": base64(&y4m(2)), "audio": base64(&audio)}, "parameters": {"top_k": 0}}),
            "top_k=0",
        ),
    ];
    for (body, expected) in bodies {
        let response = client.post_json("", &body).await;
        let status = response.status();
        refused(expected)(status, response.json().await.unwrap());
    }
    let addr = client.server.addr;
    let answer = common::post(addr, "/autoencode", "text/plain", b"hello".to_vec()).await;
    let status = StatusCode::from_u16(answer.status).unwrap();
    refused("send the clip as a multipart form")(status, answer.json());
    // The other tasks' routes name this one.
    let answer = common::post(addr, "/flow", "application/json", b"{}".to_vec()).await;
    assert_eq!(answer.status, 404);
    let body = answer.json();
    assert!(
        body["error"].as_str().unwrap().contains("POST /autoencode"),
        "{body}"
    );
    // Not one of them cost a forward pass.
    let metrics = client.metrics().await;
    assert!(
        metrics.contains("perceiver_inference_duration_seconds_count 0\n"),
        "{metrics}"
    );
    client.server.stop().await;
}
