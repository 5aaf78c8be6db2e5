//! `POST /autoencode`: a clip's frames and audio in, its labels and its reconstruction out.
//!
//! A request is queued as its clip's parts ([`ClipPart`]): the encoding, with the first chunk of
//! queries, then the other chunks of the decoder (the Colab's 128), one forward pass each, so
//! that requests take turns and a client that leaves has its remaining chunks dropped. A
//! request for the labels alone is one part: the encoding and the label's one query.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::Response;
use base64::Engine as _;
use perceiver::{Autoencoder, DecodedQueries, Pixels};

use super::{
    answers_of, counted, decode_base64, holding, infer_error, label_prediction, looks_like_json, malformed,
    media_type, multipart_form, parse_json, query_parameters, read_body, stopping, unexpected_output,
    wrong_task, AppState, Failure, DEFAULT_TOP_K,
};
use crate::error::{ErrorResponse, ErrorType};
use crate::queue::{Clip, ClipPart, ClipQueries, Input, Output, Task};
use crate::types::{AutoencodeRequest, AutoencodeResponse};

/// Autoencode a video clip with its audio: the clip's labels, and the frames and audio the
/// model reconstructs from its latents.
///
/// The clip comes as a multipart form with the files `video` (a `.y4m` video, its first frames
/// at 25 a second) or `frame` (PNG or JPEG files, one field each, in order), and `audio` (a
/// WAV file at the model's rate, its first channel used), or as JSON with the same files in
/// base64; `/info`'s `clip` gives the frames, their size and the audio's rate and length. The
/// clip is encoded once and every pixel and audio sample decoded in chunks (DeepMind's Colab's
/// 128; `perceiver autoencode` computes the same); `reconstruct=false` decodes the label's
/// query alone, a small part of the work.
#[utoipa::path(
    post,
    path = "/autoencode",
    request_body(
        description = "The clip: a multipart form (files video or frame…, and audio) or JSON with them in base64",
        content(
            (AutoencodeRequest = "application/json"),
            (AutoencodeForm = "multipart/form-data"),
        )
    ),
    params(
        ("top_k" = Option<usize>, Query, description = "Labels reported, best first (default 5)"),
        ("reconstruct" = Option<bool>, Query, description = "false: the labels only, without the frames and audio (default true)"),
    ),
    responses(
        (status = 200, description = "The labels, and the reconstructed frames (PNG) and audio (WAV) in base64", body = AutoencodeResponse),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "The model is not a multimodal autoencoder (see /info's task)", body = ErrorResponse),
        (status = 408, description = "The body went silent for the body timeout, or arrived too slowly on average", body = ErrorResponse),
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Not a valid request (a file missing or twice, frames of another number or size, audio at another rate or too short, bad base64, ...)", body = ErrorResponse),
        (status = 429, description = "Too many requests queued or running", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
        (status = 503, description = "The service is stopping: the chunks not started are not run", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub(super) async fn autoencode(State(state): State<Arc<AppState>>, request: Request) -> Response {
    counted(&state, state.autoencode(request)).await
}

/// `POST /autoencode` as a multipart form (for the OpenAPI document; the handler reads the form).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct AutoencodeForm {
    /// The frames as one `.y4m` video (or give `frame` files instead).
    #[schema(value_type = Option<String>, format = Binary)]
    video: Option<Vec<u8>>,
    /// The frames as PNG or JPEG files, one `frame` field each, in order (or give `video`).
    #[schema(value_type = Option<Vec<String>>, format = Binary)]
    frame: Option<Vec<Vec<u8>>>,
    /// The audio: a WAV file.
    #[schema(value_type = String, format = Binary)]
    audio: Vec<u8>,
}

/// A clip's files as they came.
struct ClipFiles {
    frames: FrameFiles,
    audio: Vec<u8>,
}

enum FrameFiles {
    Video(Vec<u8>),
    Images(Vec<Vec<u8>>),
}

/// What a request asks besides its clip.
#[derive(Clone, Copy)]
struct Settings {
    top_k: usize,
    reconstruct: bool,
}

impl AppState {
    async fn autoencode(&self, request: Request) -> Result<Response, Failure> {
        let Task::Autoencoder(task) = &*self.task else {
            return Err(wrong_task(&self.task, "/autoencode").into());
        };
        let [top_k, reconstruct] = query_parameters(request.uri().query(), &["top_k", "reconstruct"])?;
        let mut settings = Settings {
            top_k: match top_k {
                Some(value) => parse_top_k(&value)?,
                None => DEFAULT_TOP_K,
            },
            reconstruct: match reconstruct {
                Some(value) => parse_reconstruct(&value)?,
                None => true,
            },
        };
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let media_type = media_type(&request);
        // Admitted before the body is read, so that bodies in memory are bounded by the slots;
        // held until the answer is sent, and by the work off this future, which may outlive it.
        let permit = Arc::new(self.permit()?);
        let body = read_body(request, self).await?;
        let _computing = self.computing.start().ok_or_else(stopping)?;
        let frames = task.spec().num_frames;
        let files = match media_type.as_deref() {
            Some("multipart/form-data") => {
                multipart_clip(content_type.as_deref().unwrap_or_default(), body, frames).await?
            }
            Some("application/json") => json_clip(body, frames, &mut settings)?,
            None if looks_like_json(&body) => json_clip(body, frames, &mut settings)?,
            _ => {
                return Err(ErrorResponse::validation(format!(
                    "send the clip as a multipart form with the files video (or frame, one field a \
                     frame) and audio, or as JSON {{\"inputs\": {{\"video\": \"<base64>\", \"audio\": \
                     \"<base64>\"}}}} (Content-Type {})",
                    media_type.as_deref().unwrap_or("not given")
                ))
                .into())
            }
        };
        let clip = self.prepare_clip(files, permit.clone()).await?;
        let budget = clip.budget.clone();
        let parts = if settings.reconstruct {
            (0..task.chunks())
                .map(|i| match i {
                    0 => ClipPart::Encode(ClipQueries::Chunk(0)),
                    i => ClipPart::Decode(ClipQueries::Chunk(i)),
                })
                .collect()
        } else {
            vec![ClipPart::Encode(ClipQueries::Label)]
        };
        // The parts alone hold the clip from here: its frames go once it is encoded, its
        // latents and keys and values once the last part has run (or been dropped, if the
        // client leaves).
        let inputs = parts
            .into_iter()
            .map(|part| Input::ClipPart {
                clip: clip.clone(),
                part,
            })
            .collect();
        drop(clip);
        let receivers = self.infer.submit(inputs, 1).map_err(infer_error)?;
        let mut decoded = Vec::with_capacity(receivers.len());
        for output in answers_of(receivers).await? {
            match output {
                Output::Decoded(d) => decoded.push(d),
                _ => return Err(unexpected_output().into()),
            }
        }
        // Assembling and encoding the files take a while: off the async threads, holding the
        // request's slot and share of the pixel budget though its client leaves meanwhile;
        // then the answer holds them until it is sent.
        let task = self.task.clone();
        let held = (budget, permit);
        let working = held.clone();
        let body = tokio::task::spawn_blocking(move || {
            let _working = working;
            match &*task {
                Task::Autoencoder(autoencoder) => answer(autoencoder, decoded, settings),
                _ => Err(unexpected_output()),
            }
        })
        .await
        .map_err(|_| ErrorResponse::new(ErrorType::Backend, "assembling the reconstruction failed"))??;
        let mut response = axum::http::Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(holding(response, held))
    }

    /// Reads the clip's frames and audio as the model takes them, within the pixel budget (a
    /// clip's pixels, held until the answer is sent). The audio (no more than the model's
    /// samples are kept) is read first, and the frames' size (and a video's rate) checked from
    /// their headers, before the clip waits for the budget; all of it off the async threads,
    /// as the work grows with the body.
    async fn prepare_clip(
        &self,
        files: ClipFiles,
        slot: impl Send + 'static,
    ) -> Result<Arc<Clip>, ErrorResponse> {
        let Task::Autoencoder(task) = &*self.task else {
            return Err(unexpected_output());
        };
        let pixels = task.spec().clip_pixels();
        let failed = |_| ErrorResponse::new(ErrorType::Backend, "preparing the clip failed");
        // The task, not a copy of its model, goes to the blocking threads.
        let shared = self.task.clone();
        // The request's slot goes with the work, which a client that leaves does not stop.
        let (files, audio, slot) = tokio::task::spawn_blocking(move || {
            let Task::Autoencoder(task) = &*shared else {
                return Err(unexpected_output());
            };
            let reader = task.reader();
            let audio = reader
                .audio_from_wav_bytes(&files.audio, "audio")
                .map_err(invalid)?;
            match &files.frames {
                FrameFiles::Video(video) => reader.check_y4m_header(video, "video").map_err(invalid)?,
                FrameFiles::Images(images) => {
                    for (i, image) in images.iter().enumerate() {
                        reader
                            .check_frame_header(image, &frame_name(i))
                            .map_err(invalid)?;
                    }
                }
            }
            Ok((files, audio, slot))
        })
        .await
        .map_err(failed)??;
        let budget = Arc::new(self.decode_budget.take(pixels).await);
        let shared = self.task.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let Task::Autoencoder(task) = &*shared else {
                return Err(unexpected_output());
            };
            let reader = task.reader();
            let frames: Vec<Pixels> = match &files.frames {
                FrameFiles::Video(video) => reader.frames_from_y4m_bytes(video, "video").map_err(invalid)?,
                FrameFiles::Images(images) => images
                    .iter()
                    .enumerate()
                    .map(|(i, image)| reader.frame_from_bytes(image, &frame_name(i)))
                    .collect::<perceiver::Result<_>>()
                    .map_err(invalid)?,
            };
            Ok(Arc::new(Clip::new(frames, audio, Some(budget))))
        })
        .await
        .map_err(failed)?
    }
}

fn invalid(e: perceiver::Error) -> ErrorResponse {
    ErrorResponse::validation(e.to_string())
}

/// The `i`th frame file (from 0) as errors name it.
fn frame_name(i: usize) -> String {
    format!("frame {}", i + 1)
}

fn parse_top_k(value: &str) -> Result<usize, ErrorResponse> {
    match value.parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(ErrorResponse::validation(format!(
            "top_k={value} is not a count of at least 1"
        ))),
    }
}

fn parse_reconstruct(value: &str) -> Result<bool, ErrorResponse> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ErrorResponse::validation(format!(
            "reconstruct={value} is not true or false"
        ))),
    }
}

/// The answer's JSON: the labels from the label's logits and, when asked, the frames as PNG
/// files and the audio as a WAV file, in base64.
fn answer(
    task: &Autoencoder,
    decoded: Vec<DecodedQueries>,
    settings: Settings,
) -> Result<Vec<u8>, ErrorResponse> {
    let backend = |e: perceiver::Error| ErrorResponse::new(ErrorType::Backend, e.to_string());
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let chunks = decoded.len();
    let (labels, frames, audio) = if settings.reconstruct {
        let output = task.assemble(decoded, settings.top_k).map_err(backend)?;
        let frames = task
            .frame_images(&output.reconstruction)
            .and_then(|images| {
                images
                    .iter()
                    .map(|image| image.png_bytes())
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        let audio = task.wav_bytes(&output.reconstruction).map_err(backend)?;
        (
            output.labels,
            Some(frames.iter().map(|png| base64(png)).collect()),
            Some(base64(&audio)),
        )
    } else {
        let logits = decoded
            .into_iter()
            .next()
            .and_then(|d| d.label)
            .ok_or_else(unexpected_output)?;
        (
            task.top_labels(&logits, settings.top_k).map_err(backend)?,
            None,
            None,
        )
    };
    let response = AutoencodeResponse {
        labels: labels.into_iter().map(label_prediction).collect(),
        frames,
        audio,
        sample_rate: task.sample_rate(),
        chunks,
    };
    serde_json::to_vec(&response).map_err(|e| ErrorResponse::new(ErrorType::Backend, e.to_string()))
}

/// The clip of a multipart form: the file `video` or the model's `frames` files `frame` (in
/// order), and `audio`; nothing else.
async fn multipart_clip(content_type: &str, body: Bytes, frames: usize) -> Result<ClipFiles, ErrorResponse> {
    let mut form = multipart_form(content_type, body)?;
    let (mut video, mut images, mut audio) = (None, Vec::new(), None);
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        if !["video", "frame", "audio"].contains(&name.as_str()) {
            return Err(ErrorResponse::validation(format!(
                "unknown form field {name:?}: the form takes the files video (or frame, one field a \
                 frame) and audio"
            )));
        }
        // Refused before it is read: a form of many tiny frames costs nothing past the model's.
        if name == "frame" && images.len() == frames {
            return Err(too_many_frames(frames));
        }
        let bytes = field.bytes().await.map_err(malformed)?.to_vec();
        let what = if name == "frame" {
            frame_name(images.len())
        } else {
            name.clone()
        };
        if bytes.is_empty() {
            return Err(ErrorResponse::validation(format!("{what}: the file is empty")));
        }
        match name.as_str() {
            "frame" => images.push(bytes),
            _ => {
                let slot = if name == "video" { &mut video } else { &mut audio };
                if slot.replace(bytes).is_some() {
                    return Err(ErrorResponse::validation(format!("the form has {name} twice")));
                }
            }
        }
    }
    let images = (!images.is_empty()).then_some(images);
    clip_files(video, images, audio, frames, "the file")
}

fn too_many_frames(frames: usize) -> ErrorResponse {
    ErrorResponse::validation(format!(
        "the model takes {frames} frames (num_frames), the request has more"
    ))
}

/// The clip of a JSON request, and its parameters over the query's (the body is dropped once
/// they are read).
fn json_clip(body: Bytes, frames: usize, settings: &mut Settings) -> Result<ClipFiles, ErrorResponse> {
    let request: AutoencodeRequest = parse_json(&body)?;
    drop(body);
    if let Some(top_k) = request.parameters.top_k {
        settings.top_k = parse_top_k(&top_k.to_string())?;
    }
    if let Some(reconstruct) = request.parameters.reconstruct {
        settings.reconstruct = reconstruct;
    }
    let inputs = request.inputs;
    // Counted before any is decoded.
    if let Some(images) = &inputs.frames {
        if images.len() != frames {
            return Err(frame_count(frames, images.len()));
        }
    }
    let decode = |name: &str, text: &str| {
        decode_base64(text).map_err(|e| ErrorResponse::validation(format!("{name}: {e}")))
    };
    let video = inputs.video.as_deref().map(|v| decode("video", v)).transpose()?;
    let images = inputs
        .frames
        .map(|frames| {
            frames
                .iter()
                .enumerate()
                .map(|(i, f)| decode(&frame_name(i), f))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let audio = decode("audio", &inputs.audio)?;
    clip_files(video, images, Some(audio), frames, "the base64 string")
}

fn frame_count(frames: usize, given: usize) -> ErrorResponse {
    ErrorResponse::validation(format!(
        "the model takes {frames} frames (num_frames), the request has {given}"
    ))
}

/// The clip's files: frames one way (a video, or `frames` images), and the audio.
fn clip_files(
    video: Option<Vec<u8>>,
    images: Option<Vec<Vec<u8>>>,
    audio: Option<Vec<u8>>,
    frames: usize,
    what: &str,
) -> Result<ClipFiles, ErrorResponse> {
    let frames = match (video, images) {
        (Some(_), Some(_)) => {
            return Err(ErrorResponse::validation(
                "give the frames one way: a video or frame files, not both",
            ))
        }
        (Some(video), None) => FrameFiles::Video(video),
        (None, Some(images)) if images.len() != frames => return Err(frame_count(frames, images.len())),
        (None, Some(images)) => FrameFiles::Images(images),
        (None, None) => {
            return Err(ErrorResponse::validation(format!(
                "the clip has no frames: send {what} video (a .y4m video) or the frames as image files"
            )))
        }
    };
    let audio = audio.ok_or_else(|| {
        ErrorResponse::validation(format!("the clip has no audio: send {what} audio (a WAV file)"))
    })?;
    Ok(ClipFiles { frames, audio })
}
