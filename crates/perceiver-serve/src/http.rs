//! Routes: validate, enqueue, format. Nothing here runs the model.
//!
//! Every error a client can cause is a 4xx [`ErrorResponse`] with a JSON body, including the
//! ones axum would answer in plain text (malformed JSON, oversized bodies, unknown routes, wrong
//! methods); a handler that panics answers a JSON 500 and the service carries on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use perceiver::tokenizer::VOCAB_SIZE;
use perceiver::{FillMask, MaskedText};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ErrorResponse, ErrorType};
use crate::metrics::Metrics;
use crate::queue::{Infer, InferError};
use crate::types::{
    FillMaskRequest, FillMaskResponse, Health, Info, Inputs, Limits, Parameters, Prediction, TextAnswer,
};

/// Candidates per mask when the request does not say (transformers' pipeline default).
pub const DEFAULT_TOP_K: usize = 5;
/// How long a successful forward pass vouches for `/health`.
pub const HEALTH_CACHE: Duration = Duration::from_secs(5);
/// How long `/health` waits for its own forward pass.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler shares.
pub(crate) struct AppState {
    pub infer: Infer,
    /// Used here only to tokenize and check inputs; the model thread has its own handle.
    pub fill: Arc<FillMask>,
    pub info: Info,
    pub metrics: Metrics,
    pub permits: Arc<Semaphore>,
    /// One health probe at a time; the others wait for its verdict.
    pub health_probe: tokio::sync::Mutex<()>,
    pub api_key: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "perceiver serve",
        description = "Fill-mask with Perceiver IO byte-level language models (Hugging Face Inference API shape)",
        license(name = "Apache-2.0")
    ),
    paths(fill_mask, health, info, metrics),
    components(schemas(
        FillMaskRequest,
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
    let mut guarded = Router::new()
        .route("/fill-mask", post(fill_mask))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/api-doc/openapi.json", openapi()));
    if state.api_key.is_some() {
        guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    }
    Router::new()
        .route("/health", get(health))
        // The page holds no data (it asks /info, with the key the user types), so it is open.
        .merge(crate::playground::routes())
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(payload_limit))
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
        (status = 413, description = "The body is too large", body = ErrorResponse),
        (status = 422, description = "Not a valid request (no mask, too long, too many inputs, ...)", body = ErrorResponse),
        (status = 429, description = "Too many requests queued or running", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
async fn fill_mask(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<FillMaskRequest>, ErrorResponse>,
) -> Response {
    let start = Instant::now();
    // If the client leaves first, hyper drops this future: the guard counts it as cancelled.
    let mut cancelled = CountOnDrop(Some(&state.metrics));
    let result = match body {
        Ok(JsonBody(request)) => state.fill_mask(request).await,
        Err(e) => Err(e),
    };
    cancelled.0 = None;
    state.metrics.count_result(&result);
    match result {
        Ok(answer) => {
            let response = Json(answer).into_response();
            state
                .metrics
                .request_duration
                .observe(start.elapsed().as_secs_f64());
            response
        }
        Err(e) => e.into_response(),
    }
}

impl AppState {
    async fn fill_mask(&self, request: FillMaskRequest) -> Result<FillMaskResponse, ErrorResponse> {
        let (texts, single) = match request.inputs {
            Inputs::Single(text) => (vec![text], true),
            Inputs::Batch(texts) => (texts, false),
        };
        let limits = &self.info.limits;
        if texts.is_empty() {
            return Err(ErrorResponse::validation("inputs is an empty list"));
        }
        if texts.len() > limits.max_client_batch_size {
            return Err(ErrorResponse::validation(format!(
                "{} inputs in one request, at most {}",
                texts.len(),
                limits.max_client_batch_size
            )));
        }
        let parameters = request.parameters.unwrap_or_default();
        let top_k = parameters.top_k.unwrap_or(DEFAULT_TOP_K);
        if top_k == 0 || top_k > VOCAB_SIZE {
            return Err(ErrorResponse::validation(format!(
                "parameters.top_k is {top_k}, it must be between 1 and {VOCAB_SIZE}"
            )));
        }
        let add_special_tokens = parameters.add_special_tokens.unwrap_or(false);
        let inputs: Vec<MaskedText> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                self.fill.prepare(text, add_special_tokens).map_err(|e| {
                    let place = if single {
                        String::new()
                    } else {
                        format!("inputs[{i}]: ")
                    };
                    ErrorResponse::validation(format!("{place}{e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let predictions: usize = inputs.iter().map(|i| i.mask_positions.len() * top_k).sum();
        if predictions > limits.max_predictions {
            return Err(ErrorResponse::validation(format!(
                "the request asks for {predictions} candidates (masks × top_k), at most {}",
                limits.max_predictions
            )));
        }

        let _permit = self.permit()?;
        let receivers = self.infer.submit(inputs, top_k).map_err(infer_error)?;
        let mut answers = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let answer = receiver
                .await
                .map_err(|_| infer_error(InferError::Stopped))?
                .map_err(infer_error)?;
            answers.push(TextAnswer::from_answer(&answer));
        }
        Ok(if single {
            FillMaskResponse::Single(answers.pop().expect("one input, one answer"))
        } else {
            FillMaskResponse::Batch(answers)
        })
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

/// Counts a fill-mask request as cancelled unless emptied first.
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

/// Liveness and readiness: a real forward pass (one masked byte) through the model thread,
/// ahead of the queued work, whose success is remembered for a few seconds; any successful
/// batch counts as one.
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
    if state.infer.succeeded_within(HEALTH_CACHE) {
        return Ok(ok());
    }
    let _probe = state.health_probe.lock().await;
    if state.infer.succeeded_within(HEALTH_CACHE) {
        return Ok(ok());
    }
    let unhealthy = |why: String| ErrorResponse::new(ErrorType::Unhealthy, why);
    let input = state
        .fill
        .prepare("[MASK]", false)
        .map_err(|e| unhealthy(e.to_string()))?;
    let receiver = state.infer.probe(input).map_err(|e| unhealthy(e.to_string()))?;
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

async fn not_found(request: Request) -> ErrorResponse {
    ErrorResponse::new(ErrorType::NotFound, format!("no route {}", request.uri().path()))
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

async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let expected = state.api_key.as_deref().unwrap_or_default();
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => next.run(request).await,
        _ => {
            if request.uri().path() == "/fill-mask" {
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

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body whose every failure is an [`ErrorResponse`]: unlike axum's `Json`, it answers
/// in JSON, ignores the content type (clients of the Inference API do not always set it), and
/// names the field at fault.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ErrorResponse;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
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
            return Err(too_large());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ErrorResponse::new(ErrorType::InvalidJson, rejection.body_text())
            }
        })?;
        let not_json = |e: serde_json::Error| {
            ErrorResponse::new(ErrorType::InvalidJson, format!("the body is not valid JSON: {e}"))
        };
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
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
        Ok(JsonBody(value))
    }
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

    #[test]
    fn openapi_documents_every_route() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for path in ["/fill-mask", "/health", "/info", "/metrics"] {
            assert!(doc["paths"].get(path).is_some(), "{path} undocumented");
        }
        assert!(doc["components"]["schemas"].get("FillMaskRequest").is_some());
    }
}
