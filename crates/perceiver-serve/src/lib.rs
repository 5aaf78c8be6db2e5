//! `perceiver serve`: an HTTP service for Perceiver IO models, with dynamic batching:
//! fill-mask for the language models, text or image classification for the classifiers,
//! optical flow for the flow model, video autoencoding for the multimodal autoencoder.
//!
//! Layers, after Hugging Face's text-embeddings-inference: [`queue`] (the model on its own
//! thread, fed by a queue that packs the inputs of many clients into one forward pass),
//! [`http`] (routes that only validate, enqueue and format), [`types`] (the JSON: Hugging Face's
//! Inference API shapes), [`metrics`] (Prometheus) and [`error`] (one JSON error body,
//! one place that maps its kind to a status). Its load generator is the developer tool
//! `perceiver-bench serve` (crates/perceiver-bench), so that this library needs no HTTP client.
//!
//! A service runs the one task its model has ([`ServeModel`]; `/info` names it): `POST
//! /fill-mask` for a masked language model, `POST /classify` for a classifier (an image's
//! bytes, or JSON with base64 images or texts), `POST /flow` for an optical-flow model (two
//! frames as a multipart form or base64 JSON; the flow as JSON, a PNG picture or a `.flo`
//! file), `POST /autoencode` for the multimodal autoencoder (a clip's frames and audio in; its
//! labels, and its reconstruction unless only labels are asked); another task's route answers
//! 404 naming the model's task.
//!
//! Routes: the task's route, `GET /health`, `GET /info`, `GET /metrics`, the OpenAPI document
//! at `/api-doc/openapi.json` and Swagger UI at `/docs` (its files come from a crates.io crate:
//! nothing is downloaded at build time), and a [`playground`] page at `/` to try the model in a
//! browser (its files are compiled in). Requests refused before their body was read are
//! answered after the rest of the body is discarded ([`linger`]), so that clients that write
//! their whole body before reading see the answer.
//!
//! # Example
//! ```
//! use perceiver::Loader;
//! use perceiver_serve::{ServeConfig, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The small model built into the library; `Loader` also takes a directory or a hub id.
//! let model = Loader::new("default").load()?;
//! // Port 0: any free port. The listener is open once `bind` returns.
//! let server = Server::bind(ServeConfig { port: 0, ..ServeConfig::new("random-tiny") }, model).await?;
//! let url = format!("http://{}/fill-mask", server.local_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(server.run(async { stopped.await.ok(); }));
//!
//! let answer: serde_json::Value = reqwest::Client::new()
//!     .post(&url)
//!     .json(&serde_json::json!({"inputs": "Hello [MASK]orld", "parameters": {"top_k": 2}}))
//!     .send().await?
//!     .json().await?;
//! assert_eq!(answer.as_array().unwrap().len(), 2);
//!
//! stop.send(()).ok();
//! running.await??;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod http;
pub mod linger;
pub mod metrics;
pub mod playground;
pub mod queue;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use perceiver::tasks::flow::OpticalFlow;
use perceiver::{Autoencoder, Classifier, FillMask, PerceiverModel};
use tokio::net::TcpListener;

/// [`Info::task`] of a fill-mask service (the Hugging Face pipeline name).
pub const FILL_MASK_TASK: &str = "fill-mask";
/// [`Info::task`] of a text classifier's service.
pub const TEXT_CLASSIFICATION_TASK: &str = "text-classification";
/// [`Info::task`] of an image classifier's service.
pub const IMAGE_CLASSIFICATION_TASK: &str = "image-classification";
/// [`Info::task`] of an optical-flow model's service (no Hugging Face pipeline has this task).
pub const OPTICAL_FLOW_TASK: &str = "optical-flow";
/// [`Info::task`] of a multimodal autoencoder's service (no Hugging Face pipeline has it).
pub const AUTOENCODING_TASK: &str = "multimodal-autoencoding";

/// [`ServeConfig::max_batch_wait`]'s default: long enough for concurrent clients' texts to share a
/// pass, short next to a pass, so a lone client does not notice it (the figures behind it are in
/// docs/BENCHMARKS.md).
pub const DEFAULT_MAX_BATCH_WAIT: Duration = Duration::from_micros(500);
/// [`ServeConfig::header_timeout`]'s default (hyper's own).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// [`ServeConfig::body_timeout`]'s default: a minute of silence; a body also has this long plus
/// a second per [`http::MIN_BODY_RATE`] bytes to arrive in full.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// [`ServeConfig::shutdown_timeout`]'s default: within the 30 s a container runtime waits
/// between SIGTERM and SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// The most bytes of a request's line and headers a connection buffers (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// How long, once the last computed answer of a shutdown is handed over, its connection has to
/// write it before it is dropped.
pub const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(1);

pub use error::{ErrorResponse, ErrorType, ServeError};
pub use metrics::Metrics;
pub use queue::{BatchLimits, Infer, Task};
pub use types::{
    ClassifyRequest, ClassifyResponse, FillMaskRequest, FillMaskResponse, FlowFrames, FlowRequest,
    FlowResponse, FlowRows, Info, LabelPrediction, Limits, Prediction, TextAnswer,
};

/// What [`Server::bind`] serves: a model (a classifier is served as one, with transformers'
/// default image settings for an image model; an optical-flow model with the Colab's tiling; a
/// multimodal autoencoder in the Colab's 128 chunks; any other as fill-mask), or a task ready
/// to run (a [`Classifier`] from
/// [`perceiver::Loader::classifier`] carries the model's own `preprocessor_config.json`).
#[derive(Debug)]
pub enum ServeModel {
    /// A loaded model: its architecture decides the task.
    Model(PerceiverModel),
    /// A fill-mask task.
    FillMask(FillMask),
    /// A classifier.
    Classifier(Classifier),
    /// Optical flow (its tiles' overlap set as wanted).
    Flow(OpticalFlow),
    /// Multimodal autoencoding (its chunks set as wanted).
    Autoencoder(Autoencoder),
}

impl From<PerceiverModel> for ServeModel {
    fn from(model: PerceiverModel) -> Self {
        ServeModel::Model(model)
    }
}

impl From<FillMask> for ServeModel {
    fn from(fill: FillMask) -> Self {
        ServeModel::FillMask(fill)
    }
}

impl From<Classifier> for ServeModel {
    fn from(classifier: Classifier) -> Self {
        ServeModel::Classifier(classifier)
    }
}

impl From<OpticalFlow> for ServeModel {
    fn from(flow: OpticalFlow) -> Self {
        ServeModel::Flow(flow)
    }
}

impl From<Autoencoder> for ServeModel {
    fn from(autoencoder: Autoencoder) -> Self {
        ServeModel::Autoencoder(autoencoder)
    }
}

impl ServeModel {
    fn into_task(self) -> Result<Task, ServeError> {
        use perceiver::Architecture;
        Ok(match self {
            ServeModel::Model(model) if model.architecture().is_classifier() => {
                Task::Classifier(Classifier::new(model)?)
            }
            ServeModel::Model(model) if model.architecture() == Architecture::OpticalFlow => {
                Task::Flow(OpticalFlow::new(model)?)
            }
            ServeModel::Model(model) if model.architecture() == Architecture::MultimodalAutoencoding => {
                Task::Autoencoder(Autoencoder::new(model)?)
            }
            ServeModel::Model(model) => Task::FillMask(FillMask::new(model)?),
            ServeModel::FillMask(fill) => Task::FillMask(fill),
            ServeModel::Classifier(classifier) => Task::Classifier(classifier),
            ServeModel::Flow(flow) => Task::Flow(flow),
            ServeModel::Autoencoder(autoencoder) => Task::Autoencoder(autoencoder),
        })
    }
}

/// The largest value each limit of [`ServeConfig`] may take (`perceiver serve` refuses larger
/// flags, and [`Server::bind`] larger fields): far above any useful setting, low enough that no
/// setting turns into unbounded memory or waiting. docs/DESIGN.md lists them with every other
/// bound of the program.
pub mod caps {
    use std::time::Duration;

    /// `max_batch_tokens`: a forward pass's memory grows with the tokens in it. 64 times the
    /// default, and 16 of the longest texts any model may take.
    pub const MAX_BATCH_TOKENS: usize = 1 << 20;
    /// `max_batch_requests`: 32 times the default.
    pub const MAX_BATCH_REQUESTS: usize = 1024;
    /// `max_batch_wait`: how long a batch may be held back, so how long a request may wait
    /// for nothing.
    pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(1);
    /// `max_concurrent_requests`: each holds its body (up to `payload_limit`) and its answer.
    /// 128 times the default.
    pub const MAX_CONCURRENT_REQUESTS: usize = 65536;
    /// `max_connections`: each holds a socket and hyper's buffers (the headers, up to
    /// [`MAX_HEADER_BYTES`](crate::MAX_HEADER_BYTES)). 64 times the default.
    pub const MAX_CONNECTIONS: usize = 65536;
    /// `header_timeout`, `body_timeout` and `shutdown_timeout`: how long a silent client may
    /// hold a connection, or a stopping service wait.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
    /// `max_client_batch_size`: 32 times the default.
    pub const MAX_CLIENT_BATCH_SIZE: usize = 1024;
    /// `max_predictions`: each candidate in the answer carries the whole text, so an answer's
    /// size is about this times the text's length. 16 times the default.
    pub const MAX_PREDICTIONS: usize = 65536;
    /// `payload_limit`: 1 GiB, more than the largest useful request (1024 texts of 65536
    /// bytes, JSON-escaped).
    pub const PAYLOAD_LIMIT: usize = 1 << 30;
    /// `max_image_pixels`: Pillow's limit, above which transformers cannot read an image either
    /// ([`perceiver::image::DecodeLimits::PIL_MAX_PIXELS`]).
    pub const MAX_IMAGE_PIXELS: u64 = perceiver::image::DecodeLimits::PIL_MAX_PIXELS;
}

/// How the service listens and what it accepts. Every field is a `perceiver serve` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The model as the user named it (shown by `/info`).
    pub model_id: String,
    /// Address or host name to listen on (`127.0.0.1`: this machine only).
    pub hostname: String,
    /// Port (0: any free port; see [`Server::local_addr`]).
    pub port: u16,
    /// Most tokens (the texts' lengths summed) in one forward pass; at least the model's
    /// positions. Images count none: their passes are bounded by `max_batch_requests`.
    pub max_batch_tokens: usize,
    /// Most inputs (texts or images) in one forward pass.
    pub max_batch_requests: usize,
    /// Longest a batch is held back for the clients the last forward pass answered, who
    /// usually send again at once (zero: never held). A lone client is never held; see
    /// [`BatchLimits::max_wait`].
    pub max_batch_wait: Duration,
    /// Requests admitted at once, from the moment their body starts to be read until they are
    /// answered; one more is answered 429 at once, before its body is read. Bodies in memory
    /// are so bounded by this times `payload_limit`.
    pub max_concurrent_requests: usize,
    /// Open connections; past it, new ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a connection may take to send a request's line and headers, counted from its
    /// opening or from its previous answer (so also how long a keep-alive connection may stay
    /// idle); past it the connection is closed.
    pub header_timeout: Duration,
    /// How long a request's body may go without sending a byte; past it, 408 and the connection
    /// is closed. A body must also arrive in full within this plus a second per
    /// [`http::MIN_BODY_RATE`] bytes (a least average rate), so that a large body sent steadily
    /// is never cut off and a trickle is. Also how long an answer's write may make no progress (a client that does not
    /// read its answer); past it the connection is closed.
    pub body_timeout: Duration,
    /// On shutdown, how long connections are waited for: past it those that wait on their
    /// client (idle, slow to send or to read) are dropped; requests being computed are still
    /// answered, and those whose body arrives in full past it are answered 503.
    pub shutdown_timeout: Duration,
    /// Most inputs (texts or images) in one request.
    pub max_client_batch_size: usize,
    /// Most candidates (masks × top_k, summed over the texts) one request may ask for: the
    /// answer's size grows with it times the text length. Classification: inputs × labels
    /// answered.
    pub max_predictions: usize,
    /// Largest request body in bytes.
    pub payload_limit: usize,
    /// Largest image (width × height, read from the file's header before any pixel is
    /// decoded) a classifier or flow model takes; a decoded image needs 3 bytes a pixel, and
    /// several times that while it is decoded. Also the pixels decoded at once over all
    /// requests: an image waits for earlier ones to be decoded if it would take the sum past
    /// it. A flow request holds both its frames' pixels until its answer is sent, an
    /// autoencoding request its clip's; a flow model's service needs at least two tiles'
    /// pixels, an autoencoder's one clip's.
    pub max_image_pixels: u64,
    /// If set, every request but `GET /health` and the playground page's (`GET /`,
    /// `/playground.css`, `/playground.js`) requires `Authorization: Bearer <api_key>`. One that
    /// no client could send is refused ([`check_api_key`]).
    pub api_key: Option<String>,
}

/// Errors for an API key no client could send: empty or blank, with whitespace around it (a
/// header's value loses it), or with a character that a header's value read as text cannot hold
/// (anything but visible ASCII, spaces and tabs).
pub fn check_api_key(key: &str) -> Result<(), ServeError> {
    if key.trim().is_empty() {
        return Err(ServeError::EmptyApiKey);
    }
    if key.trim() != key {
        return Err(ServeError::ApiKeyWhitespace);
    }
    if !key.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(ServeError::ApiKeyNotAscii);
    }
    Ok(())
}

impl ServeConfig {
    /// The defaults, for the model named `model_id`.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            hostname: "127.0.0.1".into(),
            port: 8080,
            max_batch_tokens: 16384,
            max_batch_requests: 32,
            max_batch_wait: DEFAULT_MAX_BATCH_WAIT,
            max_concurrent_requests: 512,
            max_connections: 1024,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_client_batch_size: 32,
            max_predictions: 4096,
            payload_limit: 1 << 20,
            max_image_pixels: caps::MAX_IMAGE_PIXELS,
            api_key: None,
        }
    }

    fn check(&self, max_len: usize) -> Result<(), ServeError> {
        for (name, value) in [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_requests", self.max_batch_requests),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_connections", self.max_connections),
            ("header_timeout", self.header_timeout.as_millis().min(1) as usize),
            ("body_timeout", self.body_timeout.as_millis().min(1) as usize),
            ("max_client_batch_size", self.max_client_batch_size),
            ("max_predictions", self.max_predictions),
            ("payload_limit", self.payload_limit),
            ("max_image_pixels", self.max_image_pixels as usize),
        ] {
            if value == 0 {
                return Err(ServeError::ZeroLimit { name });
            }
        }
        for (name, value, max, why) in [
            (
                "max_batch_tokens",
                self.max_batch_tokens,
                caps::MAX_BATCH_TOKENS,
                "a forward pass's memory grows with its tokens",
            ),
            (
                "max_batch_requests",
                self.max_batch_requests,
                caps::MAX_BATCH_REQUESTS,
                "a forward pass's memory grows with its texts",
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                caps::MAX_CONCURRENT_REQUESTS,
                "each request holds its body and its answer",
            ),
            (
                "max_connections",
                self.max_connections,
                caps::MAX_CONNECTIONS,
                "each connection holds a socket and buffers",
            ),
            (
                "max_client_batch_size",
                self.max_client_batch_size,
                caps::MAX_CLIENT_BATCH_SIZE,
                "a request's work grows with its texts",
            ),
            (
                "max_predictions",
                self.max_predictions,
                caps::MAX_PREDICTIONS,
                "each candidate in an answer carries the whole text",
            ),
            (
                "payload_limit",
                self.payload_limit,
                caps::PAYLOAD_LIMIT,
                "larger than any useful request",
            ),
        ] {
            if value > max {
                return Err(ServeError::LimitTooLarge {
                    name,
                    value: value as u64,
                    max: max as u64,
                    why,
                });
            }
        }
        if self.max_image_pixels > caps::MAX_IMAGE_PIXELS {
            return Err(ServeError::LimitTooLarge {
                name: "max_image_pixels",
                value: self.max_image_pixels,
                max: caps::MAX_IMAGE_PIXELS,
                why: "Pillow, and so transformers, refuses larger images",
            });
        }
        if self.max_batch_wait > caps::MAX_BATCH_WAIT {
            return Err(ServeError::LimitTooLarge {
                name: "max_batch_wait (microseconds)",
                value: u64::try_from(self.max_batch_wait.as_micros()).unwrap_or(u64::MAX),
                max: caps::MAX_BATCH_WAIT.as_micros() as u64,
                why: "a batch held back keeps its requests waiting",
            });
        }
        for (name, value) in [
            ("header_timeout (seconds)", self.header_timeout),
            ("body_timeout (seconds)", self.body_timeout),
            ("shutdown_timeout (seconds)", self.shutdown_timeout),
        ] {
            if value > caps::MAX_TIMEOUT {
                return Err(ServeError::LimitTooLarge {
                    name,
                    value: value.as_secs(),
                    max: caps::MAX_TIMEOUT.as_secs(),
                    why: "a silent client would hold its connection that long",
                });
            }
        }
        if let Some(key) = self.api_key.as_deref() {
            check_api_key(key)?;
        }
        if self.max_batch_tokens < max_len {
            return Err(ServeError::BatchTokensBelowMaxLen {
                max_batch_tokens: self.max_batch_tokens,
                max_len,
            });
        }
        Ok(())
    }
}

/// A service whose model thread runs and whose socket listens (connections wait in the
/// backlog until [`Server::run`]).
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    model_thread: JoinHandle<()>,
    computing: Arc<http::Computing>,
    max_connections: usize,
    header_timeout: Duration,
    write_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Server {
    /// Starts the model thread and opens the listening socket. The model is loaded already, so
    /// the port opens only once the service can answer. `model`: a [`PerceiverModel`], or a
    /// task ready to run ([`ServeModel`]).
    pub async fn bind(config: ServeConfig, model: impl Into<ServeModel>) -> Result<Self, ServeError> {
        let task = match model.into().into_task()? {
            Task::Classifier(classifier) => {
                Task::Classifier(classifier.with_decode_limits(perceiver::image::DecodeLimits {
                    max_pixels: config.max_image_pixels,
                }))
            }
            task => task,
        };
        let model = task.model();
        let max_len = model.max_len();
        config.check(max_len)?;
        if let Task::Flow(flow) = &task {
            let (height, width) = flow.tile_size();
            let needed = 2 * (height * width) as u64;
            if config.max_image_pixels < needed {
                return Err(ServeError::PixelsBelowFlowTile {
                    max_image_pixels: config.max_image_pixels,
                    needed,
                    height,
                    width,
                });
            }
        }
        if let Task::Autoencoder(autoencoder) = &task {
            let needed = autoencoder.spec().clip_pixels();
            if config.max_image_pixels < needed {
                return Err(ServeError::PixelsBelowClip {
                    max_image_pixels: config.max_image_pixels,
                    needed,
                });
            }
        }
        let parameters = perceiver::checkpoint::expected_tensors(model.config())
            .map(|tensors| {
                tensors
                    .iter()
                    .map(|(_, shape)| shape.iter().product::<usize>())
                    .sum()
            })
            .unwrap_or(0);
        // The names `--precision` takes, from the one serde spelling.
        let precision = serde_json::to_value(model.precision())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let info = Info {
            model_id: config.model_id.clone(),
            task: task.name().into(),
            labels: match &task {
                Task::Classifier(classifier) => Some(classifier.labels().to_vec()),
                Task::Autoencoder(autoencoder) => Some(autoencoder.labels().to_vec()),
                Task::FillMask(_) | Task::Flow(_) => None,
            },
            tile_size: match &task {
                Task::Flow(flow) => Some(flow.tile_size().into()),
                _ => None,
            },
            clip: match &task {
                Task::Autoencoder(autoencoder) => Some(types::ClipInfo::of(autoencoder)),
                _ => None,
            },
            precision,
            config: serde_json::to_value(model.config()).unwrap_or_default(),
            parameters,
            limits: Limits {
                max_input_length: max_len,
                max_client_batch_size: config.max_client_batch_size,
                max_predictions: config.max_predictions,
                payload_limit: config.payload_limit,
                max_concurrent_requests: config.max_concurrent_requests,
                max_batch_tokens: config.max_batch_tokens,
                max_batch_requests: config.max_batch_requests,
                max_batch_wait_us: config.max_batch_wait.as_micros() as u64,
                max_image_pixels: config.max_image_pixels,
            },
            version: env!("CARGO_PKG_VERSION").into(),
        };
        // The health check's input is made for each check (a clip's is used up by its pass);
        // made once here so that a model whose probe cannot be made is refused at start.
        http::probe_input(&task)?;
        let task = Arc::new(task);
        let metrics = Metrics::for_task(task.name());
        let limits = BatchLimits {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_requests: config.max_batch_requests,
            max_wait: config.max_batch_wait,
        };
        let address = format!("{}:{}", config.hostname, config.port);
        let listener = TcpListener::bind((config.hostname.as_str(), config.port))
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        let (infer, model_thread) = Infer::start(task.clone(), limits, metrics.clone())?;
        let computing = Arc::new(http::Computing::new(&infer));
        let state = Arc::new(http::AppState {
            infer,
            task,
            info,
            metrics,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
            // max_image_pixels is at most Pillow's limit, which fits a u32.
            decode_budget: http::PixelBudget::new(u32::try_from(config.max_image_pixels).unwrap_or(u32::MAX)),
            health_probe: tokio::sync::Mutex::new(()),
            api_key: config.api_key.clone(),
            body_timeout: config.body_timeout,
            computing: computing.clone(),
        });
        Ok(Self {
            listener,
            router: http::router(state, config.payload_limit),
            model_thread,
            computing,
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            write_timeout: config.body_timeout,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address the socket listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting connections, closes the idle
    /// ones, lets the others finish their current request, and waits for the model thread to
    /// finish its queue. Connections still open [`ServeConfig::shutdown_timeout`] later are
    /// dropped, except that requests then being computed are answered first.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::server::graceful::GracefulShutdown;
        use hyper_util::service::TowerToHyperService;

        let Server {
            listener,
            router,
            model_thread,
            computing,
            max_connections,
            header_timeout,
            write_timeout,
            shutdown_timeout,
        } = self;
        let mut http = hyper::server::conn::http1::Builder::new();
        // The timer makes the header timeout work; hyper starts it whenever the connection
        // waits for a request, so it also closes idle keep-alive connections.
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        // hyper's default (~400 KiB) times --max-connections would be the memory of clients
        // that send headers and nothing more; 64 KiB of headers is plenty (beyond: 431). The
        // buffer's cap alone is checked only while headers are incomplete, so both.
        http.max_buf_size(MAX_HEADER_BYTES)
            .max_header_size(MAX_HEADER_BYTES);
        let service = TowerToHyperService::new(router);
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let mut connections = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A slot before accepting: past the limit, connections wait in the backlog.
            let slot = tokio::select! {
                biased;
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) if connection_error(&e) => {
                        tracing::debug!("a connection failed before it was accepted: {e}");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: wait for some to be freed rather
                        // than spin (as axum::serve does).
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            // hyper bounds the wait for a request, not for the client to read its answer: a
            // write that makes no progress for the timeout fails, which ends the connection (one
            // that progresses, however slowly, is never cut).
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_write_timeout(Some(write_timeout));
            let stream = Box::pin(stream);
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
            connections.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection ended: {e}");
                }
                drop(slot);
            });
        }
        drop(listener);
        let open = connections.len();
        if open > 0 {
            tracing::info!("waiting for {open} connections to finish their requests");
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = shutdown_deadline(shutdown_timeout, &computing, SHUTDOWN_WRITE_GRACE) => {
                tracing::warn!(
                    "dropping {} connections still open {} s after the shutdown began",
                    connections.len(),
                    shutdown_timeout.as_secs_f64()
                );
            }
        }
        connections.shutdown().await;
        // The router, and with it every handle on the queue, is gone: the thread ends.
        drop(service);
        let thread = model_thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| ServeError::ModelThreadPanicked)?
            .map_err(|_| ServeError::ModelThreadPanicked)
    }
}

/// Whether an accept failed for that one connection (its client reset or gave up on it while it
/// waited in the backlog), so the next can be accepted at once, as axum::serve does; other errors
/// (EMFILE, ENFILE, ENOMEM, ENOBUFS) are the process's or the system's resources running out.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// Completes when a shutdown stops waiting for its connections: `timeout` after it began, but
/// not before the requests being computed are answered, with `grace` to write their answers.
/// Requests whose body arrives after `timeout` are answered 503 rather than computed.
async fn shutdown_deadline(timeout: Duration, computing: &http::Computing, grace: Duration) {
    tokio::time::sleep(timeout).await;
    // Else a body that arrives during the grace starts a computation nobody waits for.
    computing.close();
    computing.idle().await;
    tokio::time::sleep(grace).await;
}

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called, and returns a future that
/// completes on the first of them. Call it before announcing the listener: a signal that arrives
/// before the server is first polled must not fall through to the default action (death, no drain).
/// Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: finishing the requests in flight"),
                _ = terminate.recv() => tracing::info!("SIGTERM: finishing the requests in flight"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C: finishing the requests in flight");
            } else {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_connection_is_accepted_past_at_once() {
        use std::io::{Error, ErrorKind};
        assert!(connection_error(&Error::from(ErrorKind::ConnectionAborted)));
        assert!(connection_error(&Error::from(ErrorKind::ConnectionReset)));
        #[cfg(target_os = "linux")]
        for resource in [24, 23, 12, 105] {
            // EMFILE, ENFILE, ENOMEM, ENOBUFS: wait for resources to be freed.
            assert!(
                !connection_error(&Error::from_raw_os_error(resource)),
                "{resource}"
            );
        }
    }

    #[tokio::test]
    async fn the_shutdown_deadline_waits_for_requests_being_computed() {
        let computing = Arc::new(http::Computing::default());
        let short = Duration::from_millis(20);
        // Nothing computing: the deadline is the timeout (and the grace).
        tokio::time::timeout(
            Duration::from_secs(5),
            shutdown_deadline(short, &computing, short),
        )
        .await
        .expect("an idle shutdown ends at its deadline");
        assert!(
            computing.start().is_none(),
            "a request starts computing past the deadline, when nobody waits for it"
        );
        // A request being computed holds the deadline past the timeout, until it is answered.
        let computing = Arc::new(http::Computing::default());
        let request = computing.start();
        let mut deadline = std::pin::pin!(shutdown_deadline(short, &computing, short));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), deadline.as_mut())
                .await
                .is_err(),
            "the deadline dropped a request being computed"
        );
        drop(request);
        tokio::time::timeout(Duration::from_secs(5), deadline)
            .await
            .expect("the deadline comes once the request is answered");
    }
}
