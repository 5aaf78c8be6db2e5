//! A load generator for a running service: `concurrency` clients send fill-mask requests back to
//! back until `requests` are done or `duration` has passed; throughput and latency percentiles
//! come out, and the mean batch size the server formed (from its `/metrics`).
//!
//! Used by `perceiver-bench serve`. It is a benchmark, not a test: its numbers depend on the
//! machine and its load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use perceiver_serve::Info;

/// One load level.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    /// Clients sending at once.
    pub concurrency: usize,
    /// Stop after this many requests ...
    pub requests: usize,
    /// ... or after this long, whichever comes first.
    pub duration: Duration,
    /// `parameters.top_k` of every request.
    pub top_k: usize,
}

/// What one load level measured.
#[derive(Debug, Clone)]
pub struct LevelReport {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered otherwise, or that failed in transport.
    pub errors: usize,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Texts per forward pass on the server during this level (from `/metrics`), if exposed.
    pub mean_batch_size: Option<f64>,
}

impl LevelReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the successful requests' latencies (nearest rank).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }
}

/// A client of one service.
#[derive(Clone)]
pub struct BenchClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl BenchClient {
    /// `base_url` such as `http://127.0.0.1:8080`.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorize(self.http.get(format!("{}{path}", self.base_url)))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The service's `/info`.
    pub async fn info(&self) -> Result<Info> {
        let what = || format!("GET {}/info", self.base_url);
        let response = self.get("/info").send().await.with_context(what)?;
        if !response.status().is_success() {
            bail!("{} answered {}", what(), response.status());
        }
        response.json().await.with_context(what)
    }

    /// `(sum, count)` of the server's batch-size histogram, if it exposes one.
    async fn batch_totals(&self) -> Option<(f64, f64)> {
        let text = self.get("/metrics").send().await.ok()?.text().await.ok()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        Some((
            value("perceiver_batch_size_sum ")?,
            value("perceiver_batch_size_count ")?,
        ))
    }

    /// Sends one request; `Ok(())` for a 200 whose body was read.
    async fn fill_mask(&self, text: &str, top_k: usize) -> Result<(), String> {
        let body = serde_json::json!({"inputs": text, "parameters": {"top_k": top_k}});
        let response = self
            .authorize(self.http.post(format!("{}/fill-mask", self.base_url)))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("transport: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }

    /// Runs one load level over `texts` (taken in turn). `concurrency` warm-up requests go
    /// first and are not counted.
    pub async fn run_level(&self, texts: Arc<Vec<String>>, level: Level) -> Result<LevelReport> {
        if texts.is_empty() || level.concurrency == 0 {
            bail!("no texts or no clients");
        }
        let warm_up: Vec<_> = (0..level.concurrency)
            .map(|i| {
                let (client, texts) = (self.clone(), texts.clone());
                tokio::spawn(async move { client.fill_mask(&texts[i % texts.len()], level.top_k).await })
            })
            .collect();
        for task in warm_up {
            task.await?.map_err(|e| anyhow!("warm-up request failed: {e}"))?;
        }

        let before = self.batch_totals().await;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + level.duration;
        let clients: Vec<_> = (0..level.concurrency)
            .map(|_| {
                let (client, texts, next) = (self.clone(), texts.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= level.requests || Instant::now() >= deadline {
                            break;
                        }
                        let sent = Instant::now();
                        match client.fill_mask(&texts[i % texts.len()], level.top_k).await {
                            Ok(()) => latencies.push(sent.elapsed()),
                            Err(e) => errors.push(e),
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        for task in clients {
            let (l, e) = task.await?;
            latencies.extend(l);
            errors.extend(e);
        }
        let elapsed = start.elapsed();
        let after = self.batch_totals().await;
        latencies.sort();
        let mean_batch_size = match (before, after) {
            (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
            _ => None,
        };
        Ok(LevelReport {
            ok: latencies.len(),
            errors: errors.len(),
            first_error: errors.into_iter().next(),
            elapsed,
            latencies,
            mean_batch_size,
        })
    }
}

/// `count` varied masked texts of 24 to `max_len.min(160)` bytes, one word of each masked with
/// `[MASK:n]` (its leading space included), the same for the same `seed`.
pub fn synthetic_texts(count: usize, max_len: usize, seed: u64) -> Vec<String> {
    const WORDS: [&str; 48] = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "perceiver",
        "reads",
        "bytes",
        "and",
        "latents",
        "attend",
        "to",
        "every",
        "input",
        "while",
        "decoder",
        "queries",
        "only",
        "masked",
        "positions",
        "model",
        "predicts",
        "missing",
        "words",
        "from",
        "context",
        "this",
        "sentence",
        "is",
        "an",
        "example",
        "with",
        "some",
        "letters",
        "hidden",
        "in",
        "middle",
        "batching",
        "packs",
        "many",
        "clients",
        "into",
        "one",
        "forward",
        "pass",
    ];
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| {
        // xorshift64*: deterministic and good enough to vary lengths and words.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound.max(1)
    };
    let longest = max_len.min(160);
    let shortest = 24.min(longest);
    (0..count)
        .map(|_| {
            let target = shortest + next(longest - shortest + 1);
            let mut words: Vec<&str> = Vec::new();
            let mut len = 0;
            loop {
                let word = WORDS[next(WORDS.len())];
                let added = word.len() + usize::from(!words.is_empty());
                if !words.is_empty() && len + added > target {
                    break;
                }
                words.push(word);
                len += added;
                if len >= target {
                    break;
                }
            }
            // A lone word longer than the model takes: cut it.
            if len > longest {
                words[0] = &words[0][..longest];
            }
            let masked = if words.len() > 1 {
                1 + next(words.len() - 1)
            } else {
                0
            };
            let mut text = String::new();
            for (i, word) in words.iter().enumerate() {
                let space = if i > 0 { " " } else { "" };
                if i == masked {
                    text.push_str(&format!("[MASK:{}]", space.len() + word.len()));
                } else {
                    text.push_str(space);
                    text.push_str(word);
                }
            }
            text
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use perceiver::BytesTokenizer;

    #[test]
    fn synthetic_texts_fit_and_have_one_masked_word() {
        for max_len in [8, 64, 2048] {
            let texts = synthetic_texts(200, max_len, 7);
            assert_eq!(texts, synthetic_texts(200, max_len, 7), "deterministic");
            for text in &texts {
                let input = BytesTokenizer.encode_masked(text, false).unwrap();
                assert!(input.ids.len() <= max_len.min(160), "{text}");
                assert!(!input.mask_positions.is_empty(), "{text}");
                assert_eq!(text.matches("[MASK:").count(), 1, "{text}");
            }
            let lengths: std::collections::BTreeSet<usize> = texts.iter().map(|t| t.len()).collect();
            assert!(lengths.len() > 3, "lengths vary: {lengths:?}");
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let report = LevelReport {
            ok: 100,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(Duration::from_millis).collect(),
            mean_batch_size: None,
        };
        assert_eq!(report.percentile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(report.percentile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(report.throughput(), 50.0);
    }
}
