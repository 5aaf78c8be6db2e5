//! Errors, in two layers: [`ServeError`] for starting and running the service (the caller's
//! problem), and [`ErrorResponse`] for one request (the client's answer). [`ErrorType::status`]
//! is the one place an error becomes an HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What can stop the service from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A limit of [`crate::ServeConfig`] set to zero.
    #[error("{name} must be at least 1")]
    ZeroLimit {
        /// The field of [`crate::ServeConfig`] that is zero.
        name: &'static str,
    },

    /// A limit of [`crate::ServeConfig`] above its cap in [`crate::caps`].
    #[error("{name} is {value}, at most {max} ({why})")]
    LimitTooLarge {
        /// The flag or field.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Its cap.
        max: u64,
        /// Why the cap is where it is.
        why: &'static str,
    },

    /// An API key that is empty or only whitespace: no client could send it.
    #[error("the API key is empty: it would refuse every client (leave it unset to serve without a key)")]
    EmptyApiKey,

    /// An API key that starts or ends with whitespace: a header's value loses it, so no client
    /// could send the key.
    #[error("the API key starts or ends with whitespace, which no Authorization header can carry")]
    ApiKeyWhitespace,

    /// An API key with a character outside visible ASCII (and spaces and tabs): a header's value
    /// holding it cannot be read as text, so no client could send the key.
    #[error(
        "the API key holds a character other than visible ASCII, which no Authorization header can carry"
    )]
    ApiKeyNotAscii,

    /// A batch token budget that the model's longest input would not fit.
    #[error(
        "max_batch_tokens ({max_batch_tokens}) is below the model's {max_len} positions: \
         the longest text would never fit a batch"
    )]
    BatchTokensBelowMaxLen {
        /// The configured tokens per forward pass.
        max_batch_tokens: usize,
        /// The model's positions: the longest input, in tokens.
        max_len: usize,
    },

    /// A pixel limit under which no pair of frames an optical-flow model takes would fit.
    #[error(
        "max_image_pixels ({max_image_pixels}) is below the {needed} pixels of two frames of the \
         model's {height}x{width} tile: every flow request would be refused"
    )]
    PixelsBelowFlowTile {
        /// The configured limit.
        max_image_pixels: u64,
        /// Two tiles' pixels: the least a flow request holds.
        needed: u64,
        /// The tile's height.
        height: usize,
        /// The tile's width.
        width: usize,
    },

    /// A pixel limit under which no clip a multimodal autoencoder takes would fit.
    #[error(
        "max_image_pixels ({max_image_pixels}) is below the {needed} pixels of one clip of the \
         model's frames: every autoencoding request would be refused"
    )]
    PixelsBelowClip {
        /// The configured limit.
        max_image_pixels: u64,
        /// A clip's pixels: its frames' together.
        needed: u64,
    },

    /// The listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The `host:port` it tried.
        address: String,
        /// Why the socket could not be opened.
        #[source]
        source: std::io::Error,
    },

    /// The model cannot be served (not a masked language model, for instance).
    #[error("cannot serve the model: {0}")]
    Model(#[from] perceiver::Error),

    /// The model thread could not be started.
    #[error("cannot start the model thread: {0}")]
    ModelThread(#[source] std::io::Error),

    /// The model thread ended with a panic (a bug: batches catch their own panics).
    #[error("the model thread panicked")]
    ModelThreadPanicked,

    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
}

/// The kind of a failed request; each kind has one HTTP status ([`ErrorType::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorType {
    /// 400: the body is not JSON (syntax error, empty body, trailing characters).
    InvalidJson,
    /// 422: well-formed JSON that is not a valid request (missing or mistyped field, a text
    /// with no mask or too long, too many inputs, top_k out of range, …).
    Validation,
    /// 413: the body is larger than the service's payload limit.
    PayloadTooLarge,
    /// 401: `--api-key` is set and the request has no matching `Authorization: Bearer` header.
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists for another method.
    MethodNotAllowed,
    /// 408: the body went silent for the service's body timeout, or arrived too slowly on average.
    RequestTimeout,
    /// 429: `max_concurrent_requests` requests are already queued or running.
    Overloaded,
    /// 503: the health check's forward pass failed or timed out, or the service is stopping.
    Unhealthy,
    /// 500: the model failed on a valid request (a bug or a resource problem, never the
    /// client's input).
    Backend,
}

impl ErrorType {
    /// The HTTP status every error of this kind is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorType::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Backend => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `snake_case` name, as in the JSON body and the metrics' `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::InvalidJson => "invalid_json",
            ErrorType::Validation => "validation",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::RequestTimeout => "request_timeout",
            ErrorType::Overloaded => "overloaded",
            ErrorType::Unhealthy => "unhealthy",
            ErrorType::Backend => "backend",
        }
    }

    /// Every kind, for pre-registering metric labels.
    pub const ALL: [ErrorType; 10] = [
        ErrorType::InvalidJson,
        ErrorType::Validation,
        ErrorType::PayloadTooLarge,
        ErrorType::Unauthorized,
        ErrorType::NotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::RequestTimeout,
        ErrorType::Overloaded,
        ErrorType::Unhealthy,
        ErrorType::Backend,
    ];
}

/// The body of every error answer: `{"error": "...", "error_type": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": "inputs[1]: the text has no mask: mark masked bytes with [MASK] (one byte) or [MASK:n] (n bytes)", "error_type": "validation"}))]
pub struct ErrorResponse {
    /// What went wrong, in one line.
    pub error: String,
    /// The kind, which decides the status.
    pub error_type: ErrorType,
}

impl ErrorResponse {
    /// An answer of kind `error_type` with the message `error`.
    pub fn new(error_type: ErrorType, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            error_type,
        }
    }

    /// A 422 [`ErrorType::Validation`] answer with the message `error`.
    pub fn validation(error: impl Into<String>) -> Self {
        Self::new(ErrorType::Validation, error)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = self.error_type.status();
        let kind = self.error_type;
        let mut response = (status, Json(self)).into_response();
        if kind == ErrorType::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if kind == ErrorType::RequestTimeout {
            // The rest of a body that came too slowly is not waited for: hyper closes.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_serde_names() {
        for kind in ErrorType::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    #[test]
    fn client_mistakes_are_4xx() {
        for kind in ErrorType::ALL {
            let server_side = matches!(kind, ErrorType::Backend | ErrorType::Unhealthy);
            assert_eq!(kind.status().is_client_error(), !server_side, "{kind:?}");
        }
    }
}
