//! The one HTTP client to OpenAI-compatible inference servers: routing by model, a pool of
//! endpoints per upstream (`pool`: choice, health, cluster-wide limit, backpressure), a timeout
//! per attempt, and retries with backoff for a line's own transient failures; and, for
//! validation, which models each upstream serves (`models`).

mod answer;
mod client;
pub mod limiter;
mod models;
pub mod pool;
mod retry;
mod tokenize;
pub mod vllm;

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use tracing::Instrument;

use client::SendError;
use pool::{Lease, Pool, Verdict};

use crate::config::{MetricsSource, Secret, Settings, UpstreamSettings};
pub use retry::RetryPolicy;

/// One configured upstream: a pool of servers that share its key, timeout and models.
pub struct Upstream {
    pub name: String,
    pool: Arc<Pool>,
    /// The `Authorization` header, when the upstream has a key.
    auth: Option<reqwest::header::HeaderValue>,
    timeout: Duration,
    max_response_bytes: usize,
    /// vLLM's `priority`, put in every line's body (`upstream.priority`).
    priority: Option<i64>,
    models: Vec<String>,
    catalogue: models::Catalogue,
}

impl Upstream {
    fn new(
        name: &str,
        s: &UpstreamSettings,
        replicas: Arc<AtomicUsize>,
        backoff: RetryPolicy,
        client: reqwest::Client,
    ) -> Self {
        let pool = Pool::new(
            name,
            &s.endpoints(),
            s.max_in_flight,
            s.adaptive,
            replicas,
            backoff,
            client,
        );
        // The gauges steer the adaptive limit only; without a runtime (unit tests) no one reads.
        if let (true, Ok(rt)) = (s.adaptive, tokio::runtime::Handle::try_current()) {
            for (idx, endpoint) in pool.endpoints().iter().enumerate() {
                let url = match s.metrics_source() {
                    MetricsSource::Off => None,
                    MetricsSource::At(url) => Some(url.to_owned()),
                    MetricsSource::Discover => endpoint.metrics_url(),
                };
                if let Some(url) = url {
                    rt.spawn(pool::watch_server_queue(Arc::downgrade(&pool), idx, url));
                }
            }
        }
        Self {
            name: name.to_owned(),
            pool,
            auth: authorization(name, s.api_key.as_ref()),
            timeout: Duration::from_secs(s.timeout_secs),
            max_response_bytes: s.max_response_bytes,
            priority: s.priority,
            models: s.models.clone(),
            catalogue: models::Catalogue::default(),
        }
    }

    fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => m == model,
        })
    }

    /// The pool's endpoints, in configuration order.
    pub fn endpoints(&self) -> &[pool::Endpoint] {
        self.pool.endpoints()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read as a URL first, which percent-encodes what a URI may not hold (a space in the path, say),
/// as reqwest did when it sent the lines.
fn parse_uri(url: &str) -> Result<http::Uri, BoxError> {
    Ok(url::Url::parse(url)?.as_str().parse()?)
}

/// `Bearer <key>`, marked sensitive so that no debug output or HTTP/2 header table holds it in
/// the clear; none for a missing or empty key.
fn authorization(upstream: &str, key: Option<&Secret>) -> Option<reqwest::header::HeaderValue> {
    let key = key.filter(|k| !k.expose_secret().is_empty())?;
    match reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())) {
        Ok(mut value) => {
            value.set_sensitive(true);
            Some(value)
        }
        Err(_) => {
            tracing::warn!(
                upstream,
                "the upstream's api_key is not a valid header value; sent without it"
            );
            None
        }
    }
}

/// `base_url` carries the version (`…/v1`); batch endpoints do too (`/v1/…`).
fn join(base_url: &str, endpoint: &str) -> String {
    format!(
        "{base_url}{}",
        endpoint.strip_prefix("/v1").unwrap_or(endpoint)
    )
}

/// What a line's execution came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream answered (any status); `body` is its JSON object, kept as text on one line
    /// (see `crate::jsonl::compact`): it is copied into the result file, never rebuilt as a tree.
    Response {
        status: u16,
        request_id: Option<String>,
        body: Box<RawValue>,
    },
    /// No usable answer, even after retries.
    Failure { code: &'static str, message: String },
}

impl Outcome {
    /// The one definition of a line that succeeded: the upstream answered 2xx.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status, .. } if (200..300).contains(status))
    }
}

pub struct Upstreams {
    /// For the model listings.
    client: reqwest::Client,
    /// For batch lines.
    lines: client::LineClient,
    default: Upstream,
    routes: Vec<Upstream>,
    retry: RetryPolicy,
    /// Check batches' models against the upstreams' model lists at validation.
    check_models: bool,
    /// How long a model list is trusted.
    models_ttl: Duration,
}

impl Upstreams {
    /// For one replica alone; see `in_cluster`.
    pub fn new(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        Self::in_cluster(settings, Arc::new(AtomicUsize::new(1)))
    }

    /// Upstreams whose `max_in_flight` is shared with the `replicas` live replicas (a count
    /// `crate::cluster` keeps current).
    pub fn in_cluster(
        settings: &Settings,
        replicas: Arc<AtomicUsize>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            // A redirect would send the line (and the upstream's key, to the same host) where
            // no one configured: a 3xx is recorded as the answer instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the upstream HTTP client")?;
        let retry = RetryPolicy::from_settings(&settings.worker);
        let upstream = |name: &str, s: &UpstreamSettings| {
            Upstream::new(name, s, replicas.clone(), retry.clone(), client.clone())
        };
        let mut routes: Vec<Upstream> = settings
            .routes
            .iter()
            .map(|(name, s)| upstream(name, s))
            .collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for name in routes.iter().map(|u| u.name.as_str()).chain(["default"]) {
            crate::metrics::get()
                .upstream_duration
                .with_label_values(&[name]);
        }
        Ok(Arc::new(Self {
            lines: client::LineClient::new().context("building the upstream HTTP client")?,
            default: upstream("default", &settings.upstream),
            client,
            routes,
            retry,
            check_models: settings.batches.check_models,
            models_ttl: Duration::from_secs(settings.batches.models_cache_secs),
        }))
    }

    pub fn route(&self, model: &str) -> &Upstream {
        self.routes
            .iter()
            .find(|u| u.serves(model))
            .unwrap_or(&self.default)
    }

    /// Sends one batch line through its upstream's pool, retrying transient failures.
    /// `traceparent` links the upstream's traces to the batch.
    ///
    /// Attempts (`worker.max_attempts`) count the line's own errors only: a 5xx other than 503,
    /// a malformed answer, a timeout. A 429 or 503 pauses the endpoint and the line waits for
    /// a slot again; a connection refused sends it to another endpoint; a connection dropped
    /// before the answer too, up to `max_attempts` times (beyond, a line that keeps losing its
    /// connection is suspect itself, and its drops count as attempts). None of those ends a
    /// line: it waits, as long as it takes, until `stopped` resolves (its batch cancelled or
    /// expired, or its claim lost) — then `None`, and the line is left without a result.
    pub async fn execute(
        &self,
        endpoint: &str,
        model: &str,
        body: &bytes::Bytes,
        traceparent: &str,
        stopped: impl Future<Output = ()>,
    ) -> Option<Outcome> {
        let upstream = self.route(model);
        tokio::pin!(stopped);
        let mut attempt = 1;
        let mut drops = 0;
        loop {
            let lease = upstream.pool.acquire(&mut stopped).await?;
            let (outcome, verdict, retry_after) = self
                .send(upstream, &lease, endpoint, body, traceparent, attempt)
                .await;
            lease.finish(verdict);
            let free = match verdict {
                Verdict::Overloaded(_) | Verdict::Refused => true,
                Verdict::Dropped => {
                    drops += 1;
                    drops <= self.retry.max_attempts
                }
                Verdict::Answered | Verdict::TimedOut => false,
            };
            if free {
                tracing::debug!(upstream = %upstream.name, ?verdict, "sending the line again");
                crate::metrics::get().upstream_retries.inc();
                continue;
            }
            let retryable = match &outcome {
                Outcome::Response { status, .. } => RetryPolicy::retryable_status(*status),
                // The same request would get the same huge answer.
                Outcome::Failure { code, .. } => *code != answer::RESPONSE_TOO_LARGE,
            };
            if !retryable || attempt >= self.retry.max_attempts {
                return Some(outcome);
            }
            let delay = self.retry.delay(attempt, retry_after);
            tracing::debug!(upstream = %upstream.name, attempt, ?delay, ?outcome, "retrying upstream call");
            crate::metrics::get().upstream_retries.inc();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stopped => return None,
            }
            attempt += 1;
        }
    }

    /// One request to the endpoint of `lease`, traced and measured.
    async fn send(
        &self,
        upstream: &Upstream,
        lease: &Lease<'_>,
        endpoint: &str,
        body: &bytes::Bytes,
        traceparent: &str,
        attempt: u32,
    ) -> (Outcome, Verdict, Option<Duration>) {
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "upstream_request",
            otel.name = %format!("POST {endpoint}"),
            otel.kind = "client",
            upstream = %upstream.name,
            http.request.method = "POST",
            server.address = %lease.endpoint().base_url,
            attempt,
            http.response.status_code = tracing::field::Empty,
        );
        let traceparent =
            crate::telemetry::traceparent(&span).unwrap_or_else(|| traceparent.to_owned());
        let result = self
            .attempt(upstream, lease.endpoint(), endpoint, body, &traceparent)
            .instrument(span.clone())
            .await;
        if let Outcome::Response { status, .. } = &result.0 {
            span.record("http.response.status_code", i64::from(*status));
        }
        let m = crate::metrics::get();
        m.upstream_duration
            .with_label_values(&[upstream.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let status = match &result.0 {
            Outcome::Response { status, .. } => status.to_string(),
            Outcome::Failure { .. } => "error".to_owned(),
        };
        m.upstream_responses
            .with_label_values(&[upstream.name.as_str(), status.as_str()])
            .inc();
        result
    }

    async fn attempt(
        &self,
        upstream: &Upstream,
        to: &pool::Endpoint,
        endpoint: &str,
        body: &bytes::Bytes,
        traceparent: &str,
    ) -> (Outcome, Verdict, Option<Duration>) {
        let uri = match to.uri(endpoint) {
            Ok(uri) => uri,
            Err(e) => {
                let e = SendError::Transport(e);
                return (answer::transport_failure(&e), Verdict::Answered, None);
            }
        };
        let body = match upstream.priority {
            Some(priority) => with_priority(body, priority),
            None => body.clone(),
        };
        let answer = self
            .lines
            .post(
                uri,
                body,
                traceparent,
                upstream.auth.as_ref(),
                upstream.timeout,
                upstream.max_response_bytes,
            )
            .await;
        match answer {
            Ok(a) => answer::read(a.status, &a.headers, &a.body),
            Err(e) => answer::failed(e, upstream.max_response_bytes),
        }
    }
}

/// A line's body (a JSON object, as validation checked) with vLLM's `priority` member put first:
/// a `priority` the line sets itself comes later in the object and wins, as the last of
/// duplicate members does in vLLM's parser (and most others).
fn with_priority(body: &bytes::Bytes, priority: i64) -> bytes::Bytes {
    let Some(rest) = body.strip_prefix(b"{") else {
        return body.clone();
    };
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'}');
    let head = format!("{{\"priority\":{priority}{}", if empty { "" } else { "," });
    let mut out = Vec::with_capacity(head.len() + rest.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(rest);
    out.into()
}

/// The trace id of a batch's upstream calls when tracing is off, derived from the batch so that
/// they all land in one trace; computed once per chunk rather than per line.
pub fn trace_id_for(batch_id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(batch_id.as_bytes())[..16])
}

/// A W3C `traceparent` in the trace `trace_id` (from `trace_id_for`), with a new span id.
pub fn traceparent_in(trace_id: &str) -> String {
    let span: [u8; 8] = rand::random();
    format!("00-{trace_id}-{}-01", hex::encode(span))
}

#[cfg(test)]
mod tests;
