//! `perceiver serve`: flags to a [`perceiver_serve::ServeConfig`], then the service.

use anyhow::{Context, Result};
use clap::Args;
use perceiver_serve::{caps, ServeConfig, ServeModel, Server};

use crate::model::{EngineArgs, ModelArgs};
use crate::numbers::whole;

#[derive(Args)]
#[command(
    after_help = "Routes: GET / (a playground page to try the model in a browser), POST /fill-mask \
(masked language models), POST /classify (classifiers), POST /flow (optical flow) or POST /autoencode \
(the multimodal autoencoder), GET /health, GET /info, GET /metrics, /docs (Swagger UI), \
/api-doc/openapi.json.\n\
Examples:\n  curl -s localhost:8080/fill-mask -H 'Content-Type: application/json' \\\n    \
-d '{\"inputs\": \"This is an incomplete sentence where some words are[MASK:9]\"}'\n  \
curl -s 'localhost:8080/classify?top_k=3' -H 'Content-Type: image/jpeg' --data-binary @cat.jpg\n  \
curl -s localhost:8080/flow -H 'Accept: image/png' -F frame1=@a.png -F frame2=@b.png -o flow.png\n  \
curl -s 'localhost:8080/autoencode?reconstruct=false' -F video=@clip.y4m -F audio=@clip.wav"
)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    engine: EngineArgs,

    #[command(flatten)]
    service: ServiceArgs,
}

/// The service's flags.
#[derive(Args, Clone)]
pub struct ServiceArgs {
    /// Address or host name to listen on (0.0.0.0: every interface).
    #[arg(long, env = "PERCEIVER_HOSTNAME", default_value = "127.0.0.1")]
    pub hostname: String,

    /// Port to listen on (0: any free port, printed at start).
    #[arg(short, long, env = "PERCEIVER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Most tokens (the texts' lengths summed; the engine does not pad) in one forward pass.
    #[arg(long, env = "PERCEIVER_MAX_BATCH_TOKENS", default_value_t = 16384, value_parser = whole::<u32>(1, caps::MAX_BATCH_TOKENS as u64))]
    pub max_batch_tokens: u32,

    /// Most inputs (texts or images) in one forward pass (1: no batching).
    #[arg(long, env = "PERCEIVER_MAX_BATCH_REQUESTS", default_value_t = 32, value_parser = whole::<u32>(1, caps::MAX_BATCH_REQUESTS as u64))]
    pub max_batch_requests: u32,

    /// Longest a batch is held back, in microseconds, for the clients the last forward pass
    /// answered (busy clients come straight back; a lone client is never held). 0: never.
    #[arg(long, env = "PERCEIVER_MAX_BATCH_WAIT_US", default_value_t = perceiver_serve::DEFAULT_MAX_BATCH_WAIT.as_micros() as u64, value_parser = whole::<u64>(0, caps::MAX_BATCH_WAIT.as_micros() as u64))]
    pub max_batch_wait_us: u64,

    /// Requests admitted at once, from the start of their body to their answer (so bodies in
    /// memory stay under this times --payload-limit); beyond, 429 at once.
    #[arg(long, env = "PERCEIVER_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = whole::<u32>(1, caps::MAX_CONCURRENT_REQUESTS as u64))]
    pub max_concurrent_requests: u32,

    /// Open connections at once; beyond, new ones wait in the listen backlog.
    #[arg(long, env = "PERCEIVER_MAX_CONNECTIONS", default_value_t = 1024, value_parser = whole::<u32>(1, caps::MAX_CONNECTIONS as u64))]
    pub max_connections: u32,

    /// Seconds a connection may take to send a request's headers, from its opening or its
    /// previous answer (so also how long an idle keep-alive connection stays open); then it is
    /// closed.
    #[arg(long, env = "PERCEIVER_HEADER_TIMEOUT_S", default_value_t = perceiver_serve::DEFAULT_HEADER_TIMEOUT.as_secs(), value_parser = whole::<u64>(1, caps::MAX_TIMEOUT.as_secs()))]
    pub header_timeout_s: u64,

    /// Seconds a request's body may go without sending a byte; then 408 and the connection is
    /// closed. A body must also arrive within this plus 1 s per 16 KiB (a least average rate).
    /// Also how long an answer may wait for its client to read any of it; then the connection is
    /// closed.
    #[arg(long, env = "PERCEIVER_BODY_TIMEOUT_S", default_value_t = perceiver_serve::DEFAULT_BODY_TIMEOUT.as_secs(), value_parser = whole::<u64>(1, caps::MAX_TIMEOUT.as_secs()))]
    pub body_timeout_s: u64,

    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for open connections; then those waiting on
    /// their client are dropped (requests being computed are still answered).
    #[arg(long, env = "PERCEIVER_SHUTDOWN_TIMEOUT_S", default_value_t = perceiver_serve::DEFAULT_SHUTDOWN_TIMEOUT.as_secs(), value_parser = whole::<u64>(0, caps::MAX_TIMEOUT.as_secs()))]
    pub shutdown_timeout_s: u64,

    /// Most inputs (texts or images) in one request.
    #[arg(long, env = "PERCEIVER_MAX_CLIENT_BATCH_SIZE", default_value_t = 32, value_parser = whole::<u32>(1, caps::MAX_CLIENT_BATCH_SIZE as u64))]
    pub max_client_batch_size: u32,

    /// Most candidates (masks × top_k over its texts) in one request.
    #[arg(long, env = "PERCEIVER_MAX_PREDICTIONS", default_value_t = 4096, value_parser = whole::<u32>(1, caps::MAX_PREDICTIONS as u64))]
    pub max_predictions: u32,

    /// Largest request body, in bytes (a pair of large frames for flow, or a clip for the
    /// autoencoder, often needs more than the default 1 MiB).
    #[arg(long, env = "PERCEIVER_PAYLOAD_LIMIT", default_value_t = 1 << 20, value_parser = whole::<u32>(1, caps::PAYLOAD_LIMIT as u64))]
    pub payload_limit: u32,

    /// Largest image a classifier or flow model takes, in pixels (width × height, read from the
    /// file's header before decoding); larger ones are answered 422. Also the pixels decoded at
    /// once over all requests (an image waits for others to finish), and for flow the pixels of
    /// both frames, for autoencoding a clip's, held until the answer is sent. Default: Pillow's
    /// limit.
    #[arg(long, env = "PERCEIVER_MAX_IMAGE_PIXELS", default_value_t = caps::MAX_IMAGE_PIXELS, value_parser = whole::<u64>(1, caps::MAX_IMAGE_PIXELS))]
    pub max_image_pixels: u64,

    /// Require `Authorization: Bearer <KEY>` on every request but GET /health and the playground
    /// page (GET /, /playground.css, /playground.js), unknown routes included.
    #[arg(long, env = "PERCEIVER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ServiceArgs {
    pub fn config(&self, model_id: &str) -> ServeConfig {
        ServeConfig {
            model_id: model_id.to_string(),
            hostname: self.hostname.clone(),
            port: self.port,
            max_batch_tokens: self.max_batch_tokens as usize,
            max_batch_requests: self.max_batch_requests as usize,
            max_batch_wait: std::time::Duration::from_micros(self.max_batch_wait_us),
            max_concurrent_requests: self.max_concurrent_requests as usize,
            max_connections: self.max_connections as usize,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_s),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_s),
            shutdown_timeout: std::time::Duration::from_secs(self.shutdown_timeout_s),
            max_client_batch_size: self.max_client_batch_size as usize,
            max_predictions: self.max_predictions as usize,
            payload_limit: self.payload_limit as usize,
            max_image_pixels: self.max_image_pixels,
            api_key: self.api_key.clone(),
        }
    }
}

/// Logs to stderr, `RUST_LOG` deciding what (default: the service's own messages at info).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

pub fn run(args: ServeArgs) -> Result<()> {
    init_logging();
    let config = args.service.config(&args.model.model);
    // A key no client could send is refused before the model loads; checked here rather than by
    // clap, whose message would quote the key.
    if let Some(key) = &config.api_key {
        perceiver_serve::check_api_key(key).context("--api-key")?;
    }
    // The model loads before the port opens: a client never sees a service that cannot answer.
    let model = args.model.load_engine(args.engine.precision)?;
    let model: ServeModel = if model.architecture().is_classifier() {
        // Loaded again with its image processor (preprocessor_config.json); the weights are
        // memory-mapped, so the second load reads little.
        drop(model);
        args.model.load_classifier(args.engine.precision)?.into()
    } else {
        model.into()
    };
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(async {
            // Signals are caught from here on, before the port is announced.
            let shutdown = perceiver_serve::shutdown_signal().context("cannot listen for signals")?;
            let server = Server::bind(config, model).await?;
            tracing::info!(
                "listening on http://{} (open it in a browser to try the model)",
                server.local_addr()
            );
            server.run(shutdown).await?;
            tracing::info!("stopped");
            anyhow::Ok(())
        })
}
