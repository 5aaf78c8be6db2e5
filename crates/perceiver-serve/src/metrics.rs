//! Prometheus metrics of one service instance, in its own registry (no process-wide state, so
//! several servers can live in one process, as in the tests and the benchmark).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::error::ErrorResponse;

/// The outcomes of a request to the task's route (`/fill-mask` or `/classify`): answered, the
/// client left first, or an error kind.
pub const OUTCOMES: [&str; 10] = [
    "success",
    "cancelled",
    "invalid_json",
    "validation",
    "payload_too_large",
    "request_timeout",
    "unauthorized",
    "overloaded",
    "unhealthy",
    "backend",
];

/// The service's metrics. Names follow Prometheus conventions (`_seconds`, `_total`).
///
/// A service runs one task, so only the request counter names it (`task`, as `/info` does):
/// the batch and duration families are the one task's.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    task: &'static str,
    /// `perceiver_requests_total{outcome,task}`: requests to the task's route by outcome (one
    /// of [`OUTCOMES`]).
    pub(crate) requests: IntCounterVec,
    /// `perceiver_request_duration_seconds`: a successful request to the task's route, body
    /// read to answer formatted.
    pub(crate) request_duration: Histogram,
    /// `perceiver_queue_duration_seconds`: one input, from enqueued to its batch starting.
    pub(crate) queue_duration: Histogram,
    /// `perceiver_inference_duration_seconds`: one batch's forward pass and ranking.
    pub(crate) inference_duration: Histogram,
    /// `perceiver_batch_size`: inputs per forward pass.
    pub(crate) batch_size: Histogram,
    /// `perceiver_batch_tokens`: tokens (the inputs' lengths summed) per forward pass of texts
    /// (passes of images are not observed: they count no tokens).
    pub(crate) batch_tokens: Histogram,
    /// `perceiver_queue_depth`: inputs waiting for a batch.
    pub(crate) queue_depth: IntGauge,
    /// `perceiver_inputs_dropped_total`: queued inputs skipped because the client went away
    /// (a health check that timed out has gone away too, and counts).
    pub(crate) inputs_dropped: IntCounter,
}

impl Metrics {
    /// A fresh registry for a fill-mask service.
    pub fn new() -> Self {
        Self::for_task(crate::FILL_MASK_TASK)
    }

    /// A fresh registry with every metric registered (each outcome's count present at zero),
    /// for a service of `task` (the Hugging Face pipeline name, as `/info` gives it).
    pub fn for_task(task: &'static str) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "perceiver_requests_total",
                "Requests to the task's route by outcome",
            ),
            &["outcome", "task"],
        )
        .expect("valid metric");
        for outcome in OUTCOMES {
            requests.with_label_values(&[outcome, task]);
        }
        // 0.5 ms .. ~35 min: a tiny model on a fast machine to a flow request of many tiles
        // (seconds each) on a busy CPU.
        let seconds = || exponential_buckets(0.0005, 2.0, 23).expect("valid buckets");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
        };
        let metrics = Self {
            requests,
            request_duration: histogram(
                "perceiver_request_duration_seconds",
                "Successful requests to the task's route, end to end",
                seconds(),
            ),
            queue_duration: histogram(
                "perceiver_queue_duration_seconds",
                "Time an input waits in the queue for its batch",
                seconds(),
            ),
            inference_duration: histogram(
                "perceiver_inference_duration_seconds",
                "Forward pass and ranking of one batch",
                seconds(),
            ),
            batch_size: histogram(
                "perceiver_batch_size",
                "Inputs per forward pass",
                exponential_buckets(1.0, 2.0, 10).expect("valid buckets"),
            ),
            batch_tokens: histogram(
                "perceiver_batch_tokens",
                "Tokens (input lengths summed) per forward pass",
                exponential_buckets(16.0, 2.0, 14).expect("valid buckets"),
            ),
            queue_depth: IntGauge::new("perceiver_queue_depth", "Inputs waiting for a batch")
                .expect("valid metric"),
            inputs_dropped: IntCounter::new(
                "perceiver_inputs_dropped_total",
                "Queued inputs skipped because their client went away (timed-out health checks included)",
            )
            .expect("valid metric"),
            registry,
            task,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.queue_duration.clone()),
            Box::new(metrics.inference_duration.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.batch_tokens.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.inputs_dropped.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are distinct");
        }
        metrics
    }

    /// Counts one request's outcome (one of [`OUTCOMES`]).
    pub(crate) fn count(&self, outcome: &str) {
        debug_assert!(OUTCOMES.contains(&outcome), "{outcome}");
        self.requests.with_label_values(&[outcome, self.task]).inc();
    }

    /// Counts a request's result.
    pub(crate) fn count_result<T>(&self, result: &Result<T, ErrorResponse>) {
        self.count(match result {
            Ok(_) => "success",
            Err(e) => e.error_type.name(),
        });
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fill_mask_error_kind_is_an_outcome() {
        use crate::ErrorType;
        for kind in ErrorType::ALL {
            let route_level = matches!(kind, ErrorType::NotFound | ErrorType::MethodNotAllowed);
            assert_eq!(OUTCOMES.contains(&kind.name()), !route_level, "{kind:?}");
        }
    }

    #[test]
    fn every_metric_is_exposed() {
        let metrics = Metrics::new();
        metrics.count("success");
        metrics.count_result::<()>(&Err(ErrorResponse::new(crate::ErrorType::Overloaded, "busy")));
        metrics.batch_size.observe(3.0);
        let text = metrics.render();
        for needle in [
            "perceiver_requests_total{outcome=\"success\",task=\"fill-mask\"} 1",
            "perceiver_requests_total{outcome=\"overloaded\",task=\"fill-mask\"} 1",
            "perceiver_requests_total{outcome=\"validation\",task=\"fill-mask\"} 0",
            "perceiver_requests_total{outcome=\"cancelled\",task=\"fill-mask\"} 0",
            "perceiver_request_duration_seconds_bucket",
            "perceiver_queue_duration_seconds_count 0",
            "perceiver_inference_duration_seconds_sum",
            "perceiver_batch_size_sum 3",
            "perceiver_batch_tokens_count 0",
            "perceiver_queue_depth 0",
            "perceiver_inputs_dropped_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
