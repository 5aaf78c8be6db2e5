//! Routes: validate, enqueue, format. Nothing here runs the model.
//!
//! Every error a client can cause is a 4xx [`ErrorResponse`] with a JSON body, including the
//! ones axum would answer in plain text (malformed JSON, oversized bodies, unknown routes, wrong
//! methods); a handler that panics answers a JSON 500 and the service carries on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use http_body::Body as _;
use perceiver::flow::{flow_to_rgb, write_flo};
use perceiver::image::DecodeLimits;
use perceiver::preprocess::FramePair;
use perceiver::tasks::flow::{OpticalFlow, Tile};
use perceiver::tokenizer::VOCAB_SIZE;
use perceiver::{Classifier, LabelScore, Pixels};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ErrorResponse, ErrorType};
use crate::metrics::Metrics;
use crate::queue::{Clip, ClipPart, ClipQueries, Frames, Infer, InferError, Input, Output, Pending, Task};
use crate::types::{
    AutoencodeParameters, AutoencodeRequest, AutoencodeResponse, ClassifyParameters, ClassifyRequest,
    ClassifyResponse, ClipInfo, ClipInputs, FillMaskRequest, FillMaskResponse, FlowFrames, FlowRequest,
    FlowResponse, FlowRows, Health, Info, Inputs, LabelPrediction, Limits, Parameters, Prediction,
    TextAnswer,
};

mod autoencode;

/// Candidates per mask when the request does not say (transformers' pipeline default); also
/// the labels per image and per clip.
pub const DEFAULT_TOP_K: usize = 5;
/// How long a successful forward pass vouches for `/health`, at least.
pub const HEALTH_CACHE: Duration = Duration::from_secs(5);
/// A flow model's pass (a tile, seconds long), or an autoencoder's (a clip's encoding), vouches
/// for this many times its own time if that is longer than [`HEALTH_CACHE`]: an idle service probed every few seconds then spends at most
/// about a tenth of its time on the probes' own passes. Other tasks' passes vouch for
/// [`HEALTH_CACHE`] alone, so a model that hangs is reported within seconds.
pub const HEALTH_CACHE_PASSES: u32 = 10;
/// The least rate, in bytes a second, a request's body must arrive at on average once its body
/// timeout has passed: a body of n bytes has the timeout plus n / this to arrive (a 1 MiB body,
/// 64 s more), so a large body sent steadily is not cut off, while a trickle holds its request
/// slot for a bounded time.
pub const MIN_BODY_RATE: u64 = 16 << 10;
/// How long `/health` waits for its own forward pass.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler shares.
pub(crate) struct AppState {
    pub infer: Infer,
    /// Used here only to prepare and check inputs; the model thread has its own handle.
    pub task: Arc<Task>,
    pub info: Info,
    pub metrics: Metrics,
    /// Requests admitted (taken before the body is read, so bodies in memory are bounded).
    pub permits: Arc<Semaphore>,
    /// Pixels of the images being decoded, over all requests.
    pub decode_budget: PixelBudget,
    /// One health probe at a time; the others wait for its verdict.
    pub health_probe: tokio::sync::Mutex<()>,
    pub api_key: Option<String>,
    pub body_timeout: Duration,
    pub computing: Arc<Computing>,
}

/// Requests whose body has been read and that are not answered yet: what a shutdown waits for
/// past its deadline, so that work the model has taken on is not thrown away.
#[derive(Default)]
pub(crate) struct Computing {
    count: AtomicUsize,
    idle: Notify,
    /// Set at the shutdown's deadline: no request starts computing after it.
    closed: AtomicBool,
    /// Set with `closed`: the model thread then answers the flow tiles and clip parts it has not
    /// started rather than run them ([`Infer::piece_stop`]).
    piece_stop: Option<Arc<AtomicBool>>,
}

impl Computing {
    /// Counts a request as computing until the guard is dropped; `None` once [`Self::close`]d,
    /// and the request is to be answered 503: past the shutdown's deadline a request that
    /// starts is not waited for, so its answer would be lost.
    pub(crate) fn start(self: &Arc<Self>) -> Option<ComputingGuard> {
        // Counted before `closed` is read (and `close` sets it before it reads the count), so
        // a request either is refused or is waited for.
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = ComputingGuard(self.clone());
        (!self.closed.load(Ordering::SeqCst)).then_some(guard)
    }

    /// Counts the requests computing on `infer`'s model thread.
    pub(crate) fn new(infer: &Infer) -> Self {
        Self {
            piece_stop: Some(infer.piece_stop()),
            ..Self::default()
        }
    }

    /// Refuses the requests that would start computing from now on, and the flow tiles and
    /// clip parts not started (their requests are answered 503).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(piece_stop) = &self.piece_stop {
            piece_stop.store(true, Ordering::SeqCst);
        }
    }

    /// Completes once no request is computing.
    pub(crate) async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            // Registered before the count is read, so a guard dropped in between is not missed.
            idle.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

pub(crate) struct ComputingGuard(Arc<Computing>);

impl Drop for ComputingGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A budget of pixels for the images decoded at once: decoding needs several bytes a pixel, so
/// without it memory grows with the requests admitted times the largest image allowed.
/// Waiters are served in order, so a large image is not starved by small ones.
pub(crate) struct PixelBudget {
    pixels: Arc<Semaphore>,
    total: u32,
}

impl PixelBudget {
    pub(crate) fn new(total: u32) -> Self {
        Self {
            pixels: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `pixels` (at most the whole budget) are free, and holds them until the
    /// permit is dropped.
    async fn take(&self, pixels: u64) -> OwnedSemaphorePermit {
        let pixels = u32::try_from(pixels).unwrap_or(u32::MAX).min(self.total);
        self.pixels
            .clone()
            .acquire_many_owned(pixels)
            .await
            .expect("the semaphore is never closed")
    }

    /// Runs `work` on the blocking threads once `pixels` are free. The pixels, and `held` (the
    /// request's slot), are given back when `work` returns, not when the caller stops waiting:
    /// a client that leaves does not stop a decode under way, nor the memory it takes.
    async fn run<T: Send + 'static>(
        &self,
        pixels: u64,
        held: impl Send + 'static,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let permit = self.take(pixels).await;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, held);
            work()
        })
        .await
    }
}

/// What decoding `bytes` is charged: the pixels it decodes to, read from its headers by the
/// decoder's own code (a GIF's canvas, grown to hold its first frame, not its stated screen). An
/// image whose headers cannot be read or state more than `limits` allow is an error here, to be
/// refused before it waits for the budget (the decoder would refuse it at once).
fn decode_cost(bytes: &[u8], limits: &DecodeLimits) -> Result<u64, perceiver::Error> {
    let (width, height) = perceiver::image::decoded_size(bytes, limits)?;
    Ok(width.saturating_mul(height))
}

/// The 422 for an image the library refused, beginning with `place` (the input at fault) and
/// naming the service's setting where the library names none.
fn image_refused(place: String) -> impl Fn(perceiver::Error) -> ErrorResponse + Clone + Send + 'static {
    move |e| {
        let setting = match e {
            perceiver::Error::ImageTooLarge { limit: "image", .. } => " (the service's --max-image-pixels)",
            _ => "",
        };
        ErrorResponse::validation(format!("{place}{e}{setting}"))
    }
}

/// Decodes and preprocesses an image file as `task`'s processor does, within `budget`, holding
/// `slot` until the decode ends; an error begins with `place`, the input at fault.
async fn prepare_image(
    task: &Arc<Task>,
    budget: &PixelBudget,
    file: Vec<u8>,
    place: String,
    slot: impl Send + 'static,
) -> Result<Input, ErrorResponse> {
    let Task::Classifier(classifier) = &**task else {
        return Err(wrong_task(task, "/classify"));
    };
    let invalid = image_refused(place);
    let pixels = decode_cost(&file, &classifier.decode_limits()).map_err(invalid.clone())?;
    // Decoding and resizing take a while: off the async threads.
    let task = task.clone();
    budget
        .run(pixels, slot, move || match &*task {
            Task::Classifier(classifier) => classifier
                .prepare_image(&file)
                .map(Input::Pixels)
                .map_err(invalid),
            _ => Err(wrong_task(&task, "/classify")),
        })
        .await
        .map_err(|_| ErrorResponse::new(ErrorType::Backend, "preparing the images failed"))?
}

/// A request to the task's route that got no answer of its own: an error to answer, or a
/// client that left before its body was in.
pub(crate) enum Failure {
    Answer(ErrorResponse),
    ClientLeft,
}

impl From<ErrorResponse> for Failure {
    fn from(e: ErrorResponse) -> Self {
        Failure::Answer(e)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "perceiver serve",
        description = "Fill-mask with Perceiver IO byte-level language models, text and image classification with Perceiver IO classifiers (Hugging Face Inference API shapes), optical flow with the Perceiver IO flow model, video autoencoding with the multimodal autoencoder. A service runs its model's one task (GET /info names it): POST /fill-mask, POST /classify, POST /flow or POST /autoencode.",
        license(name = "Apache-2.0")
    ),
    paths(fill_mask, classify, flow, autoencode::autoencode, health, info, metrics),
    components(schemas(
        FillMaskRequest,
        ClassifyRequest,
        ClassifyParameters,
        ClassifyResponse,
        LabelPrediction,
        FlowRequest,
        FlowFrames,
        FlowForm,
        FlowResponse,
        AutoencodeRequest,
        ClipInputs,
        AutoencodeParameters,
        autoencode::AutoencodeForm,
        AutoencodeResponse,
        ClipInfo,
        Inputs,
        Parameters,
        FillMaskResponse,
        TextAnswer,
        Prediction,
        Info,
        Limits,
        Health,
        ErrorResponse,
        ErrorType
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Documents the optional bearer key.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The OpenAPI document served at `/api-doc/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(crate) fn router(state: Arc<AppState>, payload_limit: usize) -> Router {
    // Only the model's task has a route; the other's falls to `not_found`, which names it.
    let task_route = match *state.task {
        Task::FillMask(_) => post(fill_mask),
        Task::Classifier(_) => post(classify),
        Task::Flow(_) => post(flow),
        Task::Autoencoder(_) => post(autoencode::autoencode),
    };
    let mut router = Router::new()
        .route(state.task.route(), task_route)
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/api-doc/openapi.json", openapi()))
        .route("/health", get(health))
        .merge(crate::playground::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(payload_limit));
    if state.api_key.is_some() {
        // Around the fallbacks too: without the key, no answer tells which routes exist.
        router = router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    }
    router
        .layer(CatchPanicLayer::custom(panic_response))
        // Outside every route, so that each early refusal (401, 404, 405, 413) drains the body.
        .layer(axum::middleware::from_fn(crate::linger::lingering_close))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Fill masks in one text or a list of texts.
#[utoipa::path(
    post,
    path = "/fill-mask",
    request_body = FillMaskRequest,
    responses(
        (status = 200, description = "Candidates per mask, as transformers' fill-mask pipeline gives them", body = FillMaskResponse),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 408, description = "The body went silent for the body timeout, or arrived too slowly on average", body = ErrorResponse),
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Not a valid request (no mask, too long, too many inputs, ...)", body = ErrorResponse),
        (status = 429, description = "Too many requests queued or running", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
async fn fill_mask(State(state): State<Arc<AppState>>, request: Request) -> Response {
    counted(&state, async {
        // Admitted before the body is read, so that bodies in memory are bounded by the slots.
        let _permit = state.permit()?;
        let body = read_body(request, &state).await?;
        let _computing = state.computing.start().ok_or_else(stopping)?;
        let request: FillMaskRequest = parse_json(&body)?;
        Ok(Json(state.fill_mask(request).await?))
    })
    .await
}

/// Classify images or texts: the model's labels, best first.
///
/// An image classifier takes one image file's bytes as the body (`Content-Type: image/…` or
/// `application/octet-stream`; `?top_k=` in the query), or JSON with a base64 image or a list
/// of them; a text classifier takes JSON with a text or a list of texts. Only a service whose
/// model is a classifier has this route (see `/info`'s `task`).
#[utoipa::path(
    post,
    path = "/classify",
    request_body(
        description = "JSON (texts, or base64 images), or an image file's bytes (JPEG, PNG, WebP, BMP, GIF, TIFF)",
        content(
            (ClassifyRequest = "application/json"),
            (Vec<u8> = "image/*"),
            (Vec<u8> = "application/octet-stream"),
        )
    ),
    params(("top_k" = Option<usize>, Query, description = "Labels per input for an image body (JSON bodies use parameters.top_k)")),
    responses(
        (status = 200, description = "The labels of each input, best first, as transformers' classification pipelines give them", body = ClassifyResponse),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "The model is not a classifier (see /info's task)", body = ErrorResponse),
        (status = 408, description = "The body went silent for the body timeout, or arrived too slowly on average", body = ErrorResponse),
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Not a valid request (not an image, image too large, bad base64, text too long, too many inputs, ...)", body = ErrorResponse),
        (status = 429, description = "Too many requests queued or running", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
async fn classify(State(state): State<Arc<AppState>>, request: Request) -> Response {
    counted(&state, async { Ok(Json(state.classify(request).await?)) }).await
}

/// Optical flow from one frame to the next: the motion of every pixel.
///
/// The two frames (JPEG, PNG, WebP, BMP, GIF or TIFF, of one size, at least the model's tile:
/// `/info`'s `tile_size`) come as a multipart form with the files `frame1` and `frame2`, or as
/// JSON with both in base64. The frames are cut into overlapping tiles, one forward pass each,
/// and their flows blended as DeepMind's Colab does (`perceiver flow` computes the same). The
/// answer is JSON by default; `Accept: image/png` gives the colour-wheel picture of the flow
/// (hue the direction, saturation the magnitude, saturating at `?max_flow=` pixels, or at the
/// largest magnitude), `Accept: application/octet-stream` a Middlebury `.flo` file. Every
/// answer states the flow's mean and largest magnitude and the tiles run in the headers
/// `X-Flow-Mean-Magnitude`, `X-Flow-Max-Magnitude` and `X-Flow-Tiles`.
#[utoipa::path(
    post,
    path = "/flow",
    request_body(
        description = "The two frames: a multipart form (files frame1, frame2) or JSON with both in base64",
        content(
            (FlowRequest = "application/json"),
            (FlowForm = "multipart/form-data"),
        )
    ),
    params(("max_flow" = Option<f32>, Query, description = "For a PNG answer: the magnitude, in pixels, at which the colours saturate (default: the largest in the flow)")),
    responses(
        (status = 200, description = "The flow: JSON, a PNG picture or a .flo file, as the Accept header asks",
            headers(
                ("X-Flow-Mean-Magnitude" = f32, description = "The mean flow magnitude, in pixels"),
                ("X-Flow-Max-Magnitude" = f32, description = "The largest flow magnitude, in pixels"),
                ("X-Flow-Tiles" = usize, description = "Tiles run, one forward pass each"),
            ),
            content(
                (FlowResponse = "application/json"),
                (Vec<u8> = "image/png"),
                (Vec<u8> = "application/octet-stream"),
            )
        ),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "The model is not an optical-flow model (see /info's task)", body = ErrorResponse),
        (status = 408, description = "The body went silent for the body timeout, or arrived too slowly on average", body = ErrorResponse),
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Not a valid request (a frame missing, not an image or too large, frames of different sizes or smaller than the tile, bad base64, ...)", body = ErrorResponse),
        (status = 429, description = "Too many requests queued or running", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
        (status = 503, description = "The service is stopping: the tiles not started are not run", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
async fn flow(State(state): State<Arc<AppState>>, request: Request) -> Response {
    counted(&state, state.flow(request)).await
}

/// `POST /flow` as a multipart form (for the OpenAPI document; the handler reads the form).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct FlowForm {
    /// The earlier frame's image file.
    #[schema(value_type = String, format = Binary)]
    frame1: Vec<u8>,
    /// The later frame's image file, of the same size.
    #[schema(value_type = String, format = Binary)]
    frame2: Vec<u8>,
}

/// Runs a request to the task's route: counts its outcome (`cancelled` if the client leaves
/// first: hyper then drops this future, or the body ends early) and times a success.
async fn counted<T: IntoResponse>(
    state: &AppState,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Response {
    let start = Instant::now();
    let mut cancelled = CountOnDrop(Some(&state.metrics));
    let result = work.await;
    cancelled.0 = None;
    let result = match result {
        Ok(answer) => Ok(answer),
        Err(Failure::Answer(e)) => Err(e),
        Err(Failure::ClientLeft) => {
            state.metrics.count("cancelled");
            // Nobody reads it: the connection is gone.
            return ErrorResponse::new(ErrorType::InvalidJson, "the body ended before its length")
                .into_response();
        }
    };
    state.metrics.count_result(&result);
    match result {
        Ok(answer) => {
            let response = answer.into_response();
            state
                .metrics
                .request_duration
                .observe(start.elapsed().as_secs_f64());
            response
        }
        Err(e) => e.into_response(),
    }
}

/// The answer for a route of a task this service's model does not have.
fn wrong_task(task: &Task, path: &str) -> ErrorResponse {
    ErrorResponse::new(
        ErrorType::NotFound,
        format!(
            "{path} is not served: the model is {} {} model, served at POST {} (see /info)",
            if task.name().starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            },
            task.name(),
            task.route()
        ),
    )
}

/// A request's inputs, checked against the per-request limits: the list, and whether it was a
/// single input (answered without the outer list).
fn checked_inputs(inputs: Inputs, limits: &Limits) -> Result<(Vec<String>, bool), ErrorResponse> {
    let (inputs, single) = match inputs {
        Inputs::Single(input) => (vec![input], true),
        Inputs::Batch(inputs) => (inputs, false),
    };
    if inputs.is_empty() {
        return Err(ErrorResponse::validation("inputs is an empty list"));
    }
    check_count(inputs.len(), limits)?;
    Ok((inputs, single))
}

fn check_count(count: usize, limits: &Limits) -> Result<(), ErrorResponse> {
    if count > limits.max_client_batch_size {
        return Err(ErrorResponse::validation(format!(
            "{count} inputs in one request, at most {}",
            limits.max_client_batch_size
        )));
    }
    Ok(())
}

/// `inputs[i]: ` for an input of a list, nothing for a single input.
fn place(single: bool, i: usize) -> String {
    if single {
        String::new()
    } else {
        format!("inputs[{i}]: ")
    }
}

impl AppState {
    async fn fill_mask(&self, request: FillMaskRequest) -> Result<FillMaskResponse, ErrorResponse> {
        let Task::FillMask(fill) = &*self.task else {
            return Err(wrong_task(&self.task, "/fill-mask"));
        };
        let limits = &self.info.limits;
        let (texts, single) = checked_inputs(request.inputs, limits)?;
        let parameters = request.parameters.unwrap_or_default();
        let top_k = parameters.top_k.unwrap_or(DEFAULT_TOP_K);
        if top_k == 0 || top_k > VOCAB_SIZE {
            return Err(ErrorResponse::validation(format!(
                "parameters.top_k is {top_k}, it must be between 1 and {VOCAB_SIZE}"
            )));
        }
        let add_special_tokens = parameters.add_special_tokens.unwrap_or(false);
        let inputs: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                fill.prepare(text, add_special_tokens)
                    .map_err(|e| ErrorResponse::validation(format!("{}{e}", place(single, i))))
            })
            .collect::<Result<_, _>>()?;
        let predictions: usize = inputs.iter().map(|i| i.mask_positions.len() * top_k).sum();
        if predictions > limits.max_predictions {
            return Err(ErrorResponse::validation(format!(
                "the request asks for {predictions} candidates (masks × top_k), at most {}",
                limits.max_predictions
            )));
        }

        let inputs = inputs.into_iter().map(Input::Masked).collect();
        let receivers = self.infer.submit(inputs, top_k).map_err(infer_error)?;
        let mut answers = Vec::with_capacity(receivers.len());
        for output in answers_of(receivers).await? {
            match output {
                Output::Filled(answer) => answers.push(TextAnswer::from_answer(&answer)),
                _ => return Err(unexpected_output()),
            }
        }
        Ok(if single {
            FillMaskResponse::Single(answers.pop().expect("one input, one answer"))
        } else {
            FillMaskResponse::Batch(answers)
        })
    }

    async fn classify(&self, request: Request) -> Result<ClassifyResponse, Failure> {
        let Task::Classifier(classifier) = &*self.task else {
            return Err(wrong_task(&self.task, "/classify").into());
        };
        let images = classifier.reads_images();
        let query_top_k = query_top_k(request.uri().query())?;
        let media_type = media_type(&request);
        let raw_declared = media_type
            .as_deref()
            .is_some_and(|t| t.starts_with("image/") || t == "application/octet-stream");
        if raw_declared && !images {
            return Err(ErrorResponse::validation(format!(
                "the model classifies text, not images: send JSON {{\"inputs\": \"a text\"}} \
                 (Content-Type {})",
                media_type.as_deref().unwrap_or_default()
            ))
            .into());
        }
        // Admitted before the body is read, so that bodies in memory are bounded by the slots;
        // shared with the image decodes, which may outlive this future (see PixelBudget::run).
        let permit = Arc::new(self.permit()?);
        let body = read_body(request, self).await?;
        let _computing = self.computing.start().ok_or_else(stopping)?;
        // An image model takes a raw image unless the body is declared or looks like JSON
        // (Inference API clients do not always set the content type).
        let raw = images
            && (raw_declared
                || (media_type.as_deref() != Some("application/json") && !looks_like_json(&body)));
        let limits = &self.info.limits;
        let (inputs, single, top_k) = if raw {
            if body.is_empty() {
                return Err(ErrorResponse::validation(
                    "the body is empty: send an image file's bytes, or JSON {\"inputs\": \"<base64>\"}",
                )
                .into());
            }
            (RawInputs::Files(vec![body.to_vec()]), true, query_top_k)
        } else {
            let request: ClassifyRequest = parse_json(&body)?;
            drop(body);
            let (inputs, single) = checked_inputs(request.inputs, limits)?;
            let top_k = request.parameters.and_then(|p| p.top_k).or(query_top_k);
            let inputs = if images {
                RawInputs::Files(
                    inputs
                        .iter()
                        .enumerate()
                        .map(|(i, text)| {
                            decode_base64(text)
                                .map_err(|e| ErrorResponse::validation(format!("{}{e}", place(single, i))))
                        })
                        .collect::<Result<_, _>>()?,
                )
            } else {
                RawInputs::Texts(inputs)
            };
            (inputs, single, top_k)
        };

        let labels = classifier.labels().len();
        let default_top_k = if images { DEFAULT_TOP_K } else { labels };
        let top_k = top_k.unwrap_or(default_top_k);
        if top_k == 0 {
            return Err(ErrorResponse::validation("top_k is 0, it must be at least 1").into());
        }
        // More than the labels gives them all, as the pipelines do.
        let top_k = top_k.min(labels);
        let predictions = inputs.len().saturating_mul(top_k);
        if predictions > limits.max_predictions {
            return Err(ErrorResponse::validation(format!(
                "the request asks for {predictions} labels (inputs × top_k), at most {}",
                limits.max_predictions
            ))
            .into());
        }

        let inputs = match inputs {
            RawInputs::Texts(texts) => texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    classifier
                        .tokenize(text)
                        .map(Input::Tokens)
                        .map_err(|e| ErrorResponse::validation(format!("{}{e}", place(single, i))))
                })
                .collect::<Result<Vec<_>, _>>()?,
            RawInputs::Files(files) => {
                let mut prepared = Vec::with_capacity(files.len());
                for (i, file) in files.into_iter().enumerate() {
                    let place = place(single, i);
                    prepared.push(
                        prepare_image(&self.task, &self.decode_budget, file, place, permit.clone()).await?,
                    );
                }
                prepared
            }
        };
        let receivers = self.infer.submit(inputs, top_k).map_err(infer_error)?;
        let mut answers = Vec::with_capacity(receivers.len());
        for output in answers_of(receivers).await? {
            match output {
                Output::Labels(labels) => answers.push(labels.into_iter().map(label_prediction).collect()),
                _ => return Err(unexpected_output().into()),
            }
        }
        Ok(if single {
            ClassifyResponse::Single(answers.pop().expect("one input, one answer"))
        } else {
            ClassifyResponse::Batch(answers)
        })
    }

    async fn flow(&self, request: Request) -> Result<Response, Failure> {
        let Task::Flow(task) = &*self.task else {
            return Err(wrong_task(&self.task, "/flow").into());
        };
        let format = FlowFormat::accepted(request.headers());
        let max_flow = query_max_flow(request.uri().query())?;
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
        let (first, second) = match media_type.as_deref() {
            Some("multipart/form-data") => {
                multipart_frames(content_type.as_deref().unwrap_or_default(), body).await?
            }
            Some("application/json") => json_frames(body)?,
            None if looks_like_json(&body) => json_frames(body)?,
            _ => {
                return Err(ErrorResponse::validation(format!(
                    "send the two frames as a multipart form with the files frame1 and frame2, or as JSON \
                     {{\"inputs\": {{\"frame1\": \"<base64>\", \"frame2\": \"<base64>\"}}}} (Content-Type {})",
                    media_type.as_deref().unwrap_or("not given")
                ))
                .into())
            }
        };
        let frames = self.prepare_frames(task, first, second, permit.clone()).await?;
        let (height, width) = (frames.pair.height(), frames.pair.width());
        let budget = frames.budget.clone();
        let tiles = task
            .distinct_tiles(height, width)
            .map_err(|e| ErrorResponse::validation(e.to_string()))?;
        // The tiles alone hold the frames from here: their memory goes once the last tile has
        // run (or been dropped, if the client leaves).
        let inputs = tiles
            .iter()
            .map(|&tile| Input::FlowTile {
                frames: frames.clone(),
                tile,
            })
            .collect();
        drop(frames);
        let receivers = self.infer.submit(inputs, 1).map_err(infer_error)?;
        let mut flows = Vec::with_capacity(tiles.len());
        for (tile, output) in tiles.into_iter().zip(answers_of(receivers).await?) {
            match output {
                Output::Flow(flow) => flows.push((tile, flow)),
                _ => return Err(unexpected_output().into()),
            }
        }
        // Blending and encoding take a while for large frames: off the async threads, holding
        // the request's slot and share of the pixel budget though its client leaves meanwhile;
        // then the answer holds them until it is sent.
        let task = self.task.clone();
        let held = (budget, permit);
        let working = held.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let _working = working;
            match &*task {
                Task::Flow(flow) => flow_answer(flow, height, width, flows, format, max_flow),
                _ => Err(unexpected_output()),
            }
        })
        .await
        .map_err(|_| ErrorResponse::new(ErrorType::Backend, "assembling the flow failed"))??;
        Ok(holding(answer, held))
    }

    /// Decodes both frames within the pixel budget and scales them as the model takes them.
    /// The frames' sizes are checked from their headers first: against each other, the
    /// budget, the model's tile and the largest flow field.
    async fn prepare_frames(
        &self,
        task: &OpticalFlow,
        first: Vec<u8>,
        second: Vec<u8>,
        slot: impl Send + 'static,
    ) -> Result<Arc<Frames>, ErrorResponse> {
        let limits = DecodeLimits {
            max_pixels: self.info.limits.max_image_pixels,
        };
        let invalid = |name: &str| image_refused(format!("{name}: "));
        let (w1, h1) = perceiver::image::decoded_size(&first, &limits).map_err(invalid("frame1"))?;
        let (w2, h2) = perceiver::image::decoded_size(&second, &limits).map_err(invalid("frame2"))?;
        if !perceiver::image::may_match((w1, h1), (w2, h2)) {
            return Err(differ_in_size((h1, w1), (h2, w2)));
        }
        // Both frames' pixels are held until the answer is sent: together within the budget.
        let pixels = w1.saturating_mul(h1).saturating_mul(2);
        if pixels > limits.max_pixels {
            return Err(ErrorResponse::validation(format!(
                "the two frames are {pixels} pixels together, more than the service's \
                 --max-image-pixels ({})",
                limits.max_pixels
            )));
        }
        let (h, w) = (h1 as usize, w1 as usize);
        task.grid(h, w)
            .or_else(|first_error| task.grid(w, h).map_err(|_| first_error))
            .map_err(|e| ErrorResponse::validation(e.to_string()))?;
        let budget = Arc::new(self.decode_budget.take(pixels).await);
        // The task, not a copy of its model, goes to the blocking thread.
        let shared = self.task.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let Task::Flow(task) = &*shared else {
                return Err(unexpected_output());
            };
            let first =
                perceiver::image::decode_image_with_limits(&first, &limits).map_err(invalid("frame1"))?;
            let second =
                perceiver::image::decode_image_with_limits(&second, &limits).map_err(invalid("frame2"))?;
            let size = |image: &perceiver::image::RgbImage| (image.height() as u64, image.width() as u64);
            if size(&first) != size(&second) {
                return Err(differ_in_size(size(&first), size(&second)));
            }
            task.grid(first.height(), first.width())
                .map_err(|e| ErrorResponse::validation(e.to_string()))?;
            let pair = FramePair::from_images(&first, &second)
                .map_err(|e| ErrorResponse::validation(e.to_string()))?;
            Ok(Arc::new(Frames {
                pair,
                budget: Some(budget),
            }))
        })
        .await
        .map_err(|_| ErrorResponse::new(ErrorType::Backend, "preparing the frames failed"))?
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, ErrorResponse> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ErrorResponse::new(
                ErrorType::Overloaded,
                format!(
                    "the service is overloaded: {} requests are queued or running; retry later",
                    self.info.limits.max_concurrent_requests
                ),
            )
        })
    }
}

/// What a flow answer is: JSON, a PNG picture or a `.flo` file, by the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowFormat {
    Json,
    Png,
    Flo,
}

impl FlowFormat {
    /// The format of highest quality, each format taking the quality of the most specific
    /// range that matches it (RFC 9110: `image/png;q=0` refuses PNG even beside `image/*`);
    /// between equals, the one named exactly rather than by a wildcard, then the first named.
    /// JSON when the header is absent or accepts none of the three.
    fn accepted(headers: &axum::http::HeaderMap) -> Self {
        const FORMATS: [(FlowFormat, &str); 3] = [
            (FlowFormat::Json, "application/json"),
            (FlowFormat::Png, "image/png"),
            (FlowFormat::Flo, "application/octet-stream"),
        ];
        // Per format: (specificity, quality, position) of its most specific matching range.
        let mut matched: [Option<(u8, f32, usize)>; 3] = [None; 3];
        let ranges = headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for (position, range) in ranges.enumerate() {
            let mut parts = range.split(';');
            let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let mut quality = Some(1.0);
            for parameter in parts {
                if let Some((name, value)) = parameter.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        quality = value
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q));
                    }
                }
            }
            // A malformed quality makes the range unusable, not a preference.
            let Some(quality) = quality else { continue };
            let Some((kind, subtype)) = essence.split_once('/') else {
                continue;
            };
            for (i, (_, media)) in FORMATS.iter().enumerate() {
                let specificity = if essence == *media {
                    2
                } else if subtype == "*" && media.split('/').next() == Some(kind) {
                    1
                } else if essence == "*/*" {
                    0
                } else {
                    continue;
                };
                if matched[i].is_none_or(|(s, _, _)| specificity > s) {
                    matched[i] = Some((specificity, quality, position));
                }
            }
        }
        // Ranked by quality, then named exactly, then named first; JSON first among equals.
        let rank = |(specificity, quality, position): (u8, f32, usize)| {
            (quality, specificity == 2, std::cmp::Reverse(position))
        };
        let mut best: Option<(FlowFormat, (u8, f32, usize))> = None;
        for ((format, _), m) in FORMATS.iter().zip(matched) {
            let Some(m) = m.filter(|(_, quality, _)| *quality > 0.0) else {
                continue;
            };
            if best.is_none_or(|(_, b)| rank(m).partial_cmp(&rank(b)) == Some(std::cmp::Ordering::Greater)) {
                best = Some((*format, m));
            }
        }
        best.map_or(FlowFormat::Json, |(format, _)| format)
    }
}

/// The answer to a flow request: its tiles' flows blended, in the format asked for (the body
/// still to be wrapped).
fn flow_answer(
    task: &OpticalFlow,
    height: usize,
    width: usize,
    flows: Vec<(Tile, Vec<f32>)>,
    format: FlowFormat,
    max_flow: Option<f32>,
) -> Result<axum::http::Response<Vec<u8>>, ErrorResponse> {
    let backend = |e: perceiver::Error| ErrorResponse::new(ErrorType::Backend, e.to_string());
    let output = task.assemble(height, width, flows).map_err(backend)?;
    let stats = output.field.stats();
    let tiles = output.tiles.len();
    let (content_type, body) = match format {
        FlowFormat::Json => {
            let answer = FlowResponse {
                height,
                width,
                mean_magnitude: stats.mean_magnitude,
                max_magnitude: stats.max_magnitude,
                tiles,
                flow: FlowRows(output.field),
            };
            let body = serde_json::to_vec(&answer)
                .map_err(|e| ErrorResponse::new(ErrorType::Backend, e.to_string()))?;
            ("application/json", body)
        }
        FlowFormat::Png => (
            "image/png",
            flow_to_rgb(&output.field, max_flow)
                .and_then(|picture| picture.png_bytes())
                .map_err(backend)?,
        ),
        FlowFormat::Flo => {
            let mut body = Vec::with_capacity(12 + output.field.values().len() * 4);
            write_flo(&output.field, &mut body).map_err(backend)?;
            ("application/octet-stream", body)
        }
    };
    let mut response = axum::http::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if format == FlowFormat::Flo {
        headers.insert(
            axum::http::header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"flow.flo\""),
        );
    }
    for (name, value) in [
        ("x-flow-mean-magnitude", stats.mean_magnitude.to_string()),
        ("x-flow-max-magnitude", stats.max_magnitude.to_string()),
        ("x-flow-tiles", tiles.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// `response` with a body that holds `held` until it is sent ([`Holding`]).
fn holding<H: Unpin + Send + 'static>(response: axum::http::Response<Vec<u8>>, held: H) -> Response {
    response.map(|body| {
        axum::body::Body::new(Holding {
            body: Bytes::from(body),
            _held: held,
        })
    })
}

/// An answer's body that holds `_held` (its request's slot and share of the pixel budget) until
/// it is sent: it is handed to hyper in pieces, which hyper takes as its connection drains, and
/// `_held` goes with the body once the last piece is taken (or the connection is gone).
struct Holding<H> {
    body: Bytes,
    _held: H,
}

/// The most of a [`Holding`] body hyper is given at once.
const ANSWER_PIECE: usize = 64 << 10;

impl<H: Unpin> http_body::Body for Holding<H> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.body.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let piece = self.body.len().min(ANSWER_PIECE);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.body.split_to(piece)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.body.len() as u64)
    }
}

fn malformed(e: multer::Error) -> ErrorResponse {
    ErrorResponse::validation(format!("the multipart form is malformed: {e}"))
}

/// A multipart form's reader over a body already in memory.
fn multipart_form(content_type: &str, body: Bytes) -> Result<multer::Multipart<'static>, ErrorResponse> {
    let boundary = multer::parse_boundary(content_type).map_err(malformed)?;
    let body = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    Ok(multer::Multipart::new(body, boundary))
}

/// The frames of a multipart form: the files (or fields) `frame1` and `frame2`, nothing else.
async fn multipart_frames(content_type: &str, body: Bytes) -> Result<(Vec<u8>, Vec<u8>), ErrorResponse> {
    let mut form = multipart_form(content_type, body)?;
    let (mut frame1, mut frame2) = (None, None);
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "frame1" => &mut frame1,
            "frame2" => &mut frame2,
            _ => {
                return Err(ErrorResponse::validation(format!(
                    "unknown form field {name:?}: the form takes the files frame1 and frame2"
                )))
            }
        };
        if slot.is_some() {
            return Err(ErrorResponse::validation(format!("the form has {name} twice")));
        }
        let bytes = field.bytes().await.map_err(malformed)?;
        if bytes.is_empty() {
            return Err(ErrorResponse::validation(format!("{name}: the image is empty")));
        }
        *slot = Some(bytes.to_vec());
    }
    match (frame1, frame2) {
        (Some(first), Some(second)) => Ok((first, second)),
        (first, _) => {
            let missing = if first.is_none() { "frame1" } else { "frame2" };
            Err(ErrorResponse::validation(format!(
                "the form has no {missing}: send the earlier frame as the file frame1 and the later as frame2"
            )))
        }
    }
}

/// The frames of a JSON flow request (the body is dropped once they are read).
fn json_frames(body: Bytes) -> Result<(Vec<u8>, Vec<u8>), ErrorResponse> {
    let request: FlowRequest = parse_json(&body)?;
    drop(body);
    let decode = |name: &str, text: &str| {
        decode_base64(text).map_err(|e| ErrorResponse::validation(format!("{name}: {e}")))
    };
    Ok((
        decode("frame1", &request.inputs.frame1)?,
        decode("frame2", &request.inputs.frame2)?,
    ))
}

fn differ_in_size((h1, w1): (u64, u64), (h2, w2): (u64, u64)) -> ErrorResponse {
    ErrorResponse::validation(format!(
        "the frames differ in size: frame1 is {h1}x{w1}, frame2 is {h2}x{w2} (height x width)"
    ))
}

/// The values of the query's parameters `names` (percent-decoded, the last if repeated), in
/// their order; any other parameter is an error.
fn query_parameters<const N: usize>(
    query: Option<&str>,
    names: &[&str; N],
) -> Result<[Option<String>; N], ErrorResponse> {
    let mut found = [const { None }; N];
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(i) = names.iter().position(|name| *name == key) else {
            return Err(ErrorResponse::validation(format!(
                "unknown query parameter {key:?} (only {})",
                names.join(", ")
            )));
        };
        found[i] = Some(value.into_owned());
    }
    Ok(found)
}

/// `max_flow` of the query string, if given: a positive number of pixels.
fn query_max_flow(query: Option<&str>) -> Result<Option<f32>, ErrorResponse> {
    let Some(value) = query_parameter(query, "max_flow")? else {
        return Ok(None);
    };
    match value.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(ErrorResponse::validation(format!(
            "max_flow={value} in the query is not a positive number of pixels"
        ))),
    }
}

/// The value of the query's one parameter `name` (as [`query_parameters`]).
fn query_parameter(query: Option<&str>, name: &str) -> Result<Option<String>, ErrorResponse> {
    let [value] = query_parameters(query, &[name])?;
    Ok(value)
}

/// A classification request's inputs before they are prepared.
enum RawInputs {
    Texts(Vec<String>),
    Files(Vec<Vec<u8>>),
}

impl RawInputs {
    fn len(&self) -> usize {
        match self {
            RawInputs::Texts(t) => t.len(),
            RawInputs::Files(f) => f.len(),
        }
    }
}

/// A base64 image of a JSON body: standard alphabet, padding optional, ASCII whitespace
/// ignored, an optional `data:…;base64,` prefix (what browsers' `FileReader.readAsDataURL`
/// gives).
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let data = match text.strip_prefix("data:") {
        Some(url) => match url.split_once(";base64,") {
            Some((_, data)) => data,
            None => return Err("a data URL must be base64 (data:<type>;base64,<data>)".into()),
        },
        None => text,
    };
    // transformers' load_image decodes with base64.decodebytes, which skips line breaks (Python's
    // base64.encodebytes puts one every 76 characters): whitespace is dropped, in one copy of
    // the text where it has any.
    let data: std::borrow::Cow<[u8]> = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        data.bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect::<Vec<u8>>()
            .into()
    } else {
        data.as_bytes().into()
    };
    let bytes = ENGINE
        .decode(&data)
        .map_err(|e| format!("the image is not valid base64: {e}"))?;
    if bytes.is_empty() {
        return Err("the image is empty".into());
    }
    Ok(bytes)
}

/// The body's media type, lower case, without parameters.
fn media_type(request: &Request) -> Option<String> {
    let value = request.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Whether a body of unstated type is JSON: its first non-blank byte opens an object. No image
/// format starts with `{`.
fn looks_like_json(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `top_k` of the query string, if given.
fn query_top_k(query: Option<&str>) -> Result<Option<usize>, ErrorResponse> {
    query_parameter(query, "top_k")?
        .map(|value| {
            value
                .parse::<usize>()
                .map_err(|_| ErrorResponse::validation(format!("top_k={value} in the query is not a count")))
        })
        .transpose()
}

fn label_prediction(l: LabelScore) -> LabelPrediction {
    LabelPrediction {
        label: l.label,
        score: l.score,
    }
}

/// Waits for each queued input's answer, in order.
async fn answers_of(receivers: Vec<Pending>) -> Result<Vec<Output>, ErrorResponse> {
    let mut outputs = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        outputs.push(
            receiver
                .await
                .map_err(|_| infer_error(InferError::Stopped))?
                .map_err(infer_error)?,
        );
    }
    Ok(outputs)
}

/// The answer to a request whose body arrives once the shutdown's deadline has passed.
fn stopping() -> ErrorResponse {
    infer_error(InferError::Stopped)
}

fn unexpected_output() -> ErrorResponse {
    ErrorResponse::new(
        ErrorType::Backend,
        "the model answered another task (please report)",
    )
}

/// The health check's input for `task`, made for each check: one masked byte, an empty text, a
/// grey image prepared as any image is, one tile of two grey frames, or a black, silent clip's
/// encoding and label.
pub(crate) fn probe_input(task: &Task) -> Result<Input, perceiver::Error> {
    match task {
        Task::FillMask(fill) => Ok(Input::Masked(fill.prepare("[MASK]", false)?)),
        Task::Classifier(classifier) => probe_classifier(classifier),
        Task::Flow(flow) => {
            let (height, width) = flow.tile_size();
            let grey = || Pixels::new(height, width, vec![0.0; 3 * height * width]);
            Ok(Input::FlowTile {
                frames: Arc::new(Frames {
                    pair: FramePair::new(grey()?, grey()?)?,
                    budget: None,
                }),
                tile: Tile { top: 0, left: 0 },
            })
        }
        Task::Autoencoder(autoencoder) => {
            let spec = autoencoder.spec();
            let (height, width) = spec.frame_size();
            let black = || Pixels::new(height, width, vec![0.0; 3 * height * width]);
            let frames = (0..spec.num_frames).map(|_| black()).collect::<Result<_, _>>()?;
            let clip = Clip::new(frames, vec![0.0; spec.audio_samples()], None);
            Ok(Input::ClipPart {
                clip: Arc::new(clip),
                part: ClipPart::Encode(ClipQueries::Label),
            })
        }
    }
}

fn probe_classifier(classifier: &Classifier) -> Result<Input, perceiver::Error> {
    match classifier.image_processor() {
        Some(processor) => {
            let (width, height) = (32, 32);
            let grey = perceiver::image::RgbImage::new(width, height, vec![128; width * height * 3])?;
            Ok(Input::Pixels(processor.preprocess(&grey)?))
        }
        None => Ok(Input::Tokens(classifier.tokenize("")?)),
    }
}

/// Counts a request as cancelled unless emptied first.
struct CountOnDrop<'a>(Option<&'a Metrics>);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.count("cancelled");
        }
    }
}

fn infer_error(e: InferError) -> ErrorResponse {
    match e {
        InferError::Stopped => ErrorResponse::new(ErrorType::Unhealthy, "the service is stopping"),
        InferError::Failed(_) => ErrorResponse::new(ErrorType::Backend, e.to_string()),
    }
}

/// Liveness and readiness: a real forward pass (one masked byte, an empty text, a grey image or
/// one tile of grey frames) through the model thread, ahead of the queued work, whose success
/// is remembered for a few seconds (a flow model's, for 10 times its pass if longer); any
/// successful batch counts as one.
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "The model answers", body = Health),
        (status = 503, description = "The model failed, timed out or is stopping", body = ErrorResponse),
    )
)]
async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ErrorResponse> {
    let ok = || Json(Health { status: "ok".into() });
    let passes = match *state.task {
        Task::Flow(_) | Task::Autoencoder(_) => HEALTH_CACHE_PASSES,
        _ => 0,
    };
    if state.infer.succeeded_within(HEALTH_CACHE, passes) {
        return Ok(ok());
    }
    let _probe = state.health_probe.lock().await;
    if state.infer.succeeded_within(HEALTH_CACHE, passes) {
        return Ok(ok());
    }
    let unhealthy = |why: String| ErrorResponse::new(ErrorType::Unhealthy, why);
    // Made afresh: a clip's parts use up its frames, so a probe input is not run twice.
    let probe = probe_input(&state.task).map_err(|e| unhealthy(e.to_string()))?;
    let receiver = state.infer.probe(probe).map_err(|e| unhealthy(e.to_string()))?;
    match tokio::time::timeout(HEALTH_TIMEOUT, receiver).await {
        Ok(Ok(Ok(_))) => Ok(ok()),
        Ok(Ok(Err(e))) => Err(unhealthy(e.to_string())),
        Ok(Err(_)) => Err(unhealthy(InferError::Stopped.to_string())),
        Err(_) => Err(unhealthy(format!(
            "the health check's forward pass took more than {} s",
            HEALTH_TIMEOUT.as_secs()
        ))),
    }
}

/// The model, its config, the service's limits and version.
#[utoipa::path(
    get,
    path = "/info",
    responses((status = 200, body = Info)),
    security((), ("api_key" = []))
)]
async fn info(State(state): State<Arc<AppState>>) -> Json<Info> {
    Json(state.info.clone())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
    security((), ("api_key" = []))
)]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(State(state): State<Arc<AppState>>, request: Request) -> ErrorResponse {
    let path = request.uri().path();
    if ["/fill-mask", "/classify", "/flow", "/autoencode"].contains(&path) {
        return wrong_task(&state.task, path);
    }
    ErrorResponse::new(ErrorType::NotFound, format!("no route {path}"))
}

async fn method_not_allowed(request: Request) -> ErrorResponse {
    ErrorResponse::new(
        ErrorType::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ErrorResponse::new(ErrorType::Backend, "internal error (please report)").into_response()
}

/// The requests open without the API key: the health check (for probes that hold no secret) and
/// the playground page, which holds no data and asks for the key itself.
const OPEN: [&str; 4] = ["/health", "/", "/playground.css", "/playground.js"];

async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let method = request.method();
    if (method == Method::GET || method == Method::HEAD) && OPEN.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let expected = state.api_key.as_deref().unwrap_or_default();
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => next.run(request).await,
        _ => {
            if request.method() == Method::POST && request.uri().path() == state.task.route() {
                state.metrics.count("unauthorized");
            }
            ErrorResponse::new(
                ErrorType::Unauthorized,
                "missing or wrong API key: send the header Authorization: Bearer <key>",
            )
            .into_response()
        }
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme's case does not
/// matter (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body, within the payload limit and the body timeout: a body may be silent for at most the
/// timeout, and past its first timeout must have arrived at [`MIN_BODY_RATE`] on average.
async fn read_body(request: Request, state: &AppState) -> Result<Bytes, Failure> {
    let too_large = || {
        ErrorResponse::new(
            ErrorType::PayloadTooLarge,
            "the request body is larger than the service's payload limit (see /info)",
        )
    };
    // Refused before a byte is read: a client that asked `Expect: 100-continue` is then
    // never told to send its body (see crate::linger for those that send it anyway).
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.info.limits.payload_limit as u64) {
        return Err(too_large().into());
    }
    // Read frame by frame: the timeout is for silence, and for a body slower on average than
    // MIN_BODY_RATE past its first timeout, so that a large body sent steadily is not cut off.
    let limit = state.info.limits.payload_limit;
    let timeout = state.body_timeout;
    let started = tokio::time::Instant::now();
    let mut body = request.into_body();
    let mut chunks = Vec::new();
    let mut received = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let idle = tokio::time::Instant::now() + timeout;
        let slow = started + timeout + Duration::from_secs_f64(received as f64 / MIN_BODY_RATE as f64);
        match tokio::time::timeout_at(idle.min(slow), next).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len();
                    if received > limit {
                        return Err(too_large().into());
                    }
                    chunks.push(data);
                }
            }
            Ok(Some(Err(e))) if client_left(&e) => return Err(Failure::ClientLeft),
            Ok(Some(Err(e))) => {
                return Err(ErrorResponse::new(
                    ErrorType::InvalidJson,
                    format!("the body could not be read: {e}"),
                )
                .into())
            }
            Err(_) => {
                let why = if idle <= slow {
                    format!(
                        "the request body stalled: no byte arrived for {} s",
                        timeout.as_secs_f64()
                    )
                } else {
                    format!(
                        "the request body arrived at less than {} KiB/s on average past its first {} s",
                        MIN_BODY_RATE >> 10,
                        timeout.as_secs_f64()
                    )
                };
                return Err(ErrorResponse::new(ErrorType::RequestTimeout, why).into());
            }
        }
    }
    Ok(match chunks.len() {
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

/// Whether a body failed because the client closed or reset its connection (rather than, say,
/// sending malformed chunks).
fn client_left(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            );
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message())
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A JSON request, every failure an [`ErrorResponse`] naming the field at fault.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ErrorResponse> {
    let not_json = |e: serde_json::Error| {
        ErrorResponse::new(ErrorType::InvalidJson, format!("the body is not valid JSON: {e}"))
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let place = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                ErrorResponse::validation(format!("{place}{inner}"))
            }
            _ => not_json(inner),
        }
    })?;
    deserializer.end().map_err(not_json)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    /// A BMP file's header (no pixels) stating `width` × `height`.
    fn bmp_header(width: i32, height: i32) -> Vec<u8> {
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&54u32.to_le_bytes()); // file size (unchecked)
        bmp.extend_from_slice(&0u32.to_le_bytes());
        bmp.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
        bmp.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
        bmp.extend_from_slice(&width.to_le_bytes());
        bmp.extend_from_slice(&height.to_le_bytes());
        bmp.extend_from_slice(&1u16.to_le_bytes());
        bmp.extend_from_slice(&24u16.to_le_bytes());
        bmp.extend_from_slice(&[0; 24]);
        bmp
    }

    /// A GIF whose logical screen is 1 x 1 and whose one frame is `width` x `height` (its pixel
    /// data holds a clear code and the end code only: enough for its headers).
    fn gif_bomb(width: u16, height: u16) -> Vec<u8> {
        let mut gif =
            b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x2c\x00\x00\x00\x00".to_vec();
        gif.extend_from_slice(&width.to_le_bytes());
        gif.extend_from_slice(&height.to_le_bytes());
        gif.extend_from_slice(&[0, 2, 2, 0x44, 0x01, 0, 0x3b]);
        gif
    }

    #[test]
    fn a_decode_costs_the_pixels_it_decodes_to() {
        let limits = DecodeLimits::default();
        assert_eq!(
            decode_cost(&bmp_header(10_000, 10_000), &limits).unwrap(),
            100_000_000
        );
        assert_eq!(decode_cost(&bmp_header(3, 2), &limits).unwrap(), 6);
        // The canvas the frame is decoded into, not the 1 x 1 screen its header states.
        assert_eq!(
            decode_cost(&gif_bomb(13_000, 13_000), &limits).unwrap(),
            169_000_000
        );
        assert!(decode_cost(b"not an image", &limits).is_err());
        let small = DecodeLimits { max_pixels: 100 };
        assert!(decode_cost(&bmp_header(11, 10), &small).is_err());
        assert!(decode_cost(&gif_bomb(11, 10), &small).is_err());
    }

    #[tokio::test]
    async fn images_refused_from_their_headers_do_not_wait_for_the_budget() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/classification/tiny_image_conv");
        let classifier = perceiver::Loader::new(dir.to_string_lossy())
            .classifier()
            .unwrap()
            .with_decode_limits(DecodeLimits { max_pixels: 100 });
        let task = Arc::new(Task::Classifier(classifier));
        let budget = PixelBudget::new(100);
        // A decode in flight holds the whole budget.
        let _busy = budget.take(100).await;
        for (file, why) in [
            (b"not an image".to_vec(), "not a JPEG"),
            (
                bmp_header(11, 10),
                "more than the limit of 100 pixels (the service's --max-image-pixels)",
            ),
            (
                gif_bomb(11, 10),
                "more than the limit of 100 pixels (the service's --max-image-pixels)",
            ),
        ] {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                prepare_image(&task, &budget, file, "inputs[0]: ".into(), ()),
            )
            .await
            .expect("an image its headers refuse waited for the budget");
            let Err(e) = answer else {
                panic!("an image over the limits was decoded")
            };
            assert_eq!(e.error_type, ErrorType::Validation);
            assert!(
                e.error.starts_with("inputs[0]: ") && e.error.contains(why),
                "{}",
                e.error
            );
        }
    }

    #[tokio::test]
    async fn decodes_wait_for_the_pixel_budget() {
        let budget = PixelBudget::new(100);
        let first = budget.take(60).await;
        let short = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, budget.take(60)).await.is_err(),
            "two images over the budget decoded at once"
        );
        let small = tokio::time::timeout(short, budget.take(40)).await;
        assert!(small.is_ok(), "an image within what is left waits");
        drop((first, small));
        // More than the whole budget is charged the whole budget, and so is not refused forever.
        let all = tokio::time::timeout(short, budget.take(u64::MAX)).await;
        assert!(all.is_ok());
    }

    #[tokio::test]
    async fn a_decode_holds_its_pixels_and_slot_until_it_ends_though_its_client_left() {
        let budget = PixelBudget::new(100);
        let slots = Arc::new(Semaphore::new(1));
        let slot = Arc::new(slots.clone().try_acquire_owned().unwrap());
        let (started, decoding) = tokio::sync::oneshot::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let mut decode = Box::pin(budget.run(100, slot, move || {
            started.send(()).unwrap();
            finished.recv().ok();
        }));
        tokio::select! {
            _ = &mut decode => panic!("the decode ended before it was told to"),
            started = decoding => started.unwrap(),
        }
        // The client leaves: hyper drops the handler's future, the decode goes on.
        drop(decode);
        assert_eq!(
            budget.pixels.available_permits(),
            0,
            "a running decode's pixels were freed"
        );
        assert_eq!(
            slots.available_permits(),
            0,
            "a running decode's request slot was freed"
        );
        finish.send(()).unwrap();
        let freed = async {
            while budget.pixels.available_permits() < 100 || slots.available_permits() < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), freed)
            .await
            .expect("the pixels and the slot are given back once the decode ends");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k"), Some("k"));
        assert_eq!(bearer_token("bearer k"), Some("k"));
        assert_eq!(bearer_token("BEARER  k"), Some("k"));
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearerk"), None);
    }

    #[test]
    fn flow_answers_follow_the_accept_header() {
        use axum::http::header::ACCEPT;
        use FlowFormat::{Flo, Json, Png};
        let accepted = |values: &[&str]| {
            let mut headers = axum::http::HeaderMap::new();
            for value in values {
                headers.append(ACCEPT, HeaderValue::from_str(value).unwrap());
            }
            FlowFormat::accepted(&headers)
        };
        for (values, expected) in [
            (&[][..], Json),
            (&["*/*"][..], Json),
            (&["application/*"][..], Json),
            (&["text/html"][..], Json),
            (&["image/png"][..], Png),
            (&["IMAGE/PNG"][..], Png),
            (&["image/*"][..], Png),
            (&["*/*, image/png"][..], Png),
            (&["image/png, */*"][..], Png),
            (&["application/json, image/png"][..], Json),
            (&["image/png, application/json"][..], Png),
            (&["application/json;q=0.5, application/octet-stream"][..], Flo),
            (&["image/*;q=0.5, image/png;q=0"][..], Json),
            (&["image/png;Q=0"][..], Json),
            (&["image/png;q=1.5"][..], Json),
            (&["image/png;q=x, application/octet-stream;q=0.1"][..], Flo),
            (&["application/json;q=0.1", "image/png"][..], Png),
        ] {
            assert_eq!(accepted(values), expected, "{values:?}");
        }
    }

    #[test]
    fn openapi_documents_every_route() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for path in ["/fill-mask", "/classify", "/flow", "/health", "/info", "/metrics"] {
            assert!(doc["paths"].get(path).is_some(), "{path} undocumented");
        }
        for schema in [
            "FillMaskRequest",
            "ClassifyRequest",
            "ClassifyResponse",
            "FlowRequest",
            "FlowResponse",
        ] {
            assert!(doc["components"]["schemas"].get(schema).is_some(), "{schema}");
        }
        let body = &doc["paths"]["/classify"]["post"]["requestBody"]["content"];
        for media in ["application/json", "image/*", "application/octet-stream"] {
            assert!(body.get(media).is_some(), "{media} undocumented");
        }
        let flow = &doc["paths"]["/flow"]["post"];
        for media in ["application/json", "multipart/form-data"] {
            assert!(
                flow["requestBody"]["content"].get(media).is_some(),
                "{media} undocumented"
            );
        }
        for media in ["application/json", "image/png", "application/octet-stream"] {
            assert!(
                flow["responses"]["200"]["content"].get(media).is_some(),
                "{media} undocumented"
            );
        }
    }

    #[test]
    fn base64_images_and_query_parameters() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=").unwrap(), b"hi");
        // Line breaks as Python's base64.encodebytes writes them, CRLF, spaces.
        assert_eq!(decode_base64("aGVsbG8g\nd29ybGQ=\n").unwrap(), b"hello world");
        assert_eq!(decode_base64(" aGVs\r\nbG8=\r\n").unwrap(), b"hello");
        assert!(decode_base64(" \n ").unwrap_err().contains("empty"));
        assert!(decode_base64("a$b").unwrap_err().contains("not valid base64"));
        assert!(decode_base64("").unwrap_err().contains("empty"));
        assert!(decode_base64("data:text/plain,hi").is_err());
        assert_eq!(query_top_k(None).unwrap(), None);
        assert_eq!(query_top_k(Some("top_k=3")).unwrap(), Some(3));
        assert!(query_top_k(Some("top_k=x")).is_err());
        assert!(query_top_k(Some("k=3")).is_err());
        // Percent-decoded, as a browser's encodeURIComponent writes them.
        assert_eq!(query_top_k(Some("top_k=%33")).unwrap(), Some(3));
        assert_eq!(query_max_flow(Some("max_flow=1e%2B1")).unwrap(), Some(10.0));
        assert_eq!(query_max_flow(Some("max_flow=0.5")).unwrap(), Some(0.5));
        for refused in [
            "max_flow=0",
            "max_flow=-1",
            "max_flow=1e39",
            "max_flow=NaN",
            "max_flow=",
            "x=1",
        ] {
            assert!(query_max_flow(Some(refused)).is_err(), "{refused}");
        }
        assert!(looks_like_json(b" \n{\"inputs\": 1}"));
        assert!(!looks_like_json(b"\x89PNG"));
    }
}
