//! The one HTTP client to OpenAI-compatible inference servers: routing by model, a concurrency
//! limit per upstream, a timeout per attempt, and retries with backoff for transient failures;
//! and, for validation, which models each upstream serves (`models`).

mod client;
mod compact;
pub mod limiter;
mod models;
mod retry;
pub mod vllm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::HeaderMap;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tracing::Instrument;

use client::SendError;

use crate::config::{Secret, Settings, UpstreamSettings};
pub use compact::compact_json;
pub use retry::RetryPolicy;

/// One configured upstream server.
pub struct Upstream {
    pub name: String,
    base_url: String,
    /// The URL of each batch endpoint, parsed once rather than per request.
    uris: Vec<(&'static str, http::Uri)>,
    /// The `Authorization` header, when the upstream has a key.
    auth: Option<reqwest::header::HeaderValue>,
    timeout: Duration,
    max_response_bytes: usize,
    limit: Semaphore,
    models: Vec<String>,
    catalogue: models::Catalogue,
}

impl Upstream {
    fn new(name: &str, s: &UpstreamSettings) -> Self {
        let base_url = s.base_url.trim_end_matches('/').to_owned();
        let uris = crate::domain::Endpoint::ALL
            .iter()
            .filter_map(|e| {
                let uri = parse_uri(&join(&base_url, e.as_str())).ok()?;
                Some((e.as_str(), uri))
            })
            .collect();
        Self {
            name: name.to_owned(),
            base_url,
            uris,
            auth: authorization(name, s.api_key.as_ref()),
            timeout: Duration::from_secs(s.timeout_secs),
            max_response_bytes: s.max_response_bytes,
            limit: Semaphore::new(s.max_in_flight),
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

    fn url(&self, endpoint: &str) -> String {
        join(&self.base_url, endpoint)
    }

    fn uri(&self, endpoint: &str) -> Result<http::Uri, BoxError> {
        match self.uris.iter().find(|(e, _)| *e == endpoint) {
            Some((_, uri)) => Ok(uri.clone()),
            None => parse_uri(&self.url(endpoint)),
        }
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
    let key = key.filter(|k| !k.expose().is_empty())?;
    match reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose())) {
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
    /// (see `compact`): it is copied into the result file, never rebuilt as a tree.
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
    pub fn new(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            // A redirect would send the line (and the upstream's key, to the same host) where
            // no one configured: a 3xx is recorded as the answer instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the upstream HTTP client")?;
        let mut routes: Vec<Upstream> = settings
            .routes
            .iter()
            .map(|(name, s)| Upstream::new(name, s))
            .collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for name in routes.iter().map(|u| u.name.as_str()).chain(["default"]) {
            crate::metrics::get()
                .upstream_duration
                .with_label_values(&[name]);
        }
        Ok(Arc::new(Self {
            client,
            lines: client::LineClient::new().context("building the upstream HTTP client")?,
            default: Upstream::new("default", &settings.upstream),
            routes,
            retry: RetryPolicy::from_settings(&settings.worker),
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

    /// Sends one batch line, retrying transient failures. `traceparent` links the upstream's
    /// traces to the batch.
    pub async fn execute(
        &self,
        endpoint: &str,
        model: &str,
        body: &bytes::Bytes,
        traceparent: &str,
    ) -> Outcome {
        let upstream = self.route(model);
        let mut attempt = 1;
        loop {
            let (outcome, retry_after) = {
                // The slot is held for the attempt only, not during backoff.
                let _slot = upstream.limit.acquire().await.expect("never closed");
                let started = std::time::Instant::now();
                let span = tracing::info_span!(
                    "upstream_request",
                    otel.name = %format!("POST {endpoint}"),
                    otel.kind = "client",
                    upstream = %upstream.name,
                    http.request.method = "POST",
                    server.address = %upstream.base_url,
                    attempt,
                    http.response.status_code = tracing::field::Empty,
                );
                let traceparent =
                    crate::telemetry::traceparent(&span).unwrap_or_else(|| traceparent.to_owned());
                let result = self
                    .attempt(upstream, endpoint, body, &traceparent)
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
            };
            let retryable = match &outcome {
                Outcome::Response { status, .. } => RetryPolicy::retryable_status(*status),
                // The same request would get the same huge answer.
                Outcome::Failure { code, .. } => *code != RESPONSE_TOO_LARGE,
            };
            if !retryable || attempt >= self.retry.max_attempts {
                return outcome;
            }
            let delay = self.retry.delay(attempt, retry_after);
            tracing::debug!(upstream = %upstream.name, attempt, ?delay, ?outcome, "retrying upstream call");
            crate::metrics::get().upstream_retries.inc();
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        upstream: &Upstream,
        endpoint: &str,
        body: &bytes::Bytes,
        traceparent: &str,
    ) -> (Outcome, Option<Duration>) {
        let uri = match upstream.uri(endpoint) {
            Ok(uri) => uri,
            Err(e) => return (transport_failure(&SendError::Transport(e)), None),
        };
        let answer = self
            .lines
            .post(
                uri,
                body.clone(),
                traceparent,
                upstream.auth.as_ref(),
                upstream.timeout,
                upstream.max_response_bytes,
            )
            .await;
        let (status, headers, bytes) = match answer {
            Ok(a) => (a.status, a.headers, a.body),
            Err(SendError::TooLarge) => return (too_large(upstream.max_response_bytes), None),
            Err(e) => return (transport_failure(&e), None),
        };
        let retry_after = retry::retry_after(&headers);
        let request_id = header_str(&headers, "x-request-id");
        let body = match serde_json::from_slice::<Box<RawValue>>(&bytes) {
            // Whatever its formatting: the stored results and the result files are one line
            // per result.
            Ok(v) if v.get().starts_with('{') => compact::compact(v),
            _ if (200..300).contains(&status) => {
                return (
                    Outcome::Failure {
                        code: "invalid_upstream_response",
                        message: format!(
                            "The upstream answered {status} with a body that is not a JSON object."
                        ),
                    },
                    None,
                )
            }
            // Keep a non-JSON error body readable in the error file, but short: an HTML error
            // page or a proxy's dump has no business filling tenants' files.
            _ => serde_json::value::to_raw_value(
                &serde_json::json!({"error": {"message": non_json_message(&bytes)}}),
            )
            .expect("a JSON value serialises"),
        };
        (
            Outcome::Response {
                status,
                request_id,
                body,
            },
            retry_after,
        )
    }
}

const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn too_large(limit: usize) -> Outcome {
    Outcome::Failure {
        code: RESPONSE_TOO_LARGE,
        message: format!(
            "The upstream's response was larger than the limit of {limit} bytes; it was not kept."
        ),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// At most this many characters of a non-JSON error body reach the error file.
const NON_JSON_BODY_CHARS: usize = 512;

fn non_json_message(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text.chars().take(NON_JSON_BODY_CHARS).collect();
    if shown.len() < text.len() {
        shown.push_str(&format!("… ({} bytes in all)", bytes.len()));
    }
    shown
}

/// The error file is read by tenants: it gets a generic message, never the upstream's URL or
/// address (the HTTP stack's messages name them). The detail goes to the server's log.
fn transport_failure(e: &SendError) -> Outcome {
    let timeout = matches!(e, SendError::Timeout);
    match e {
        SendError::Transport(e) => {
            tracing::warn!(error = error_chain(e.as_ref()), "upstream call failed")
        }
        _ => tracing::warn!(timeout, "upstream call failed"),
    }
    if timeout {
        Outcome::Failure {
            code: "upstream_timeout",
            message: "The upstream did not answer in time.".to_owned(),
        }
    } else {
        Outcome::Failure {
            code: "upstream_unreachable",
            message: "Could not get a response from the upstream.".to_owned(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
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
mod tests {
    use super::*;

    fn upstream(models: &[&str]) -> Upstream {
        Upstream::new(
            "u",
            &UpstreamSettings {
                base_url: "http://h:1/v1/".into(),
                api_key: None,
                timeout_secs: 1,
                max_in_flight: 1,
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                max_response_bytes: 1024,
            },
        )
    }

    #[test]
    fn line_uris_are_read_as_urls() {
        let uri = parse_uri("http://h:1/my models/v1/chat/completions").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://h:1/my%20models/v1/chat/completions"
        );
        assert!(parse_uri("http://exa mple/v1").is_err());
    }

    #[test]
    fn urls_join_without_doubling_the_version() {
        assert_eq!(
            upstream(&[]).url("/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        assert!(upstream(&[]).auth.is_none());
        assert!(authorization("u", Some(&Secret::new(""))).is_none());
        let value = authorization("u", Some(&Secret::new("sk-secret"))).unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("sk-secret"));
        assert!(authorization("u", Some(&Secret::new("bad\nkey"))).is_none());
    }

    #[test]
    fn non_json_error_bodies_are_truncated() {
        assert_eq!(non_json_message(b"Bad Gateway"), "Bad Gateway");
        let page = "<html>".repeat(10_000);
        let shown = non_json_message(page.as_bytes());
        assert!(shown.chars().count() < NON_JSON_BODY_CHARS + 40, "{shown}");
        assert!(shown.ends_with("(60000 bytes in all)"), "{shown}");
        // Cut on a character, not inside one.
        let shown = non_json_message("é".repeat(1000).as_bytes());
        assert!(shown.starts_with(&"é".repeat(NON_JSON_BODY_CHARS)));
    }

    #[test]
    fn model_patterns() {
        let u = upstream(&["llama-*", "gpt-4o"]);
        assert!(u.serves("llama-3-8b"));
        assert!(u.serves("gpt-4o"));
        assert!(!u.serves("gpt-4o-mini"));
    }

    #[test]
    fn traceparent_shape() {
        let t = traceparent_in(&trace_id_for("batch_1"));
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(
            parts[1],
            traceparent_in(&trace_id_for("batch_1"))
                .split('-')
                .nth(1)
                .unwrap()
        );
    }
}
