//! A batch's prompt tokens as its upstream counts them: a sample of its lines through the
//! upstream's `POST /tokenize` (vLLM's, at the server's root), as tokens per input byte.

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};

use super::Upstreams;

/// The longest one count is waited for: an estimate is not worth holding a validation up.
const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(5);

impl Upstreams {
    /// Tokens per byte of input line over `samples` (each a line's request body and the line's
    /// length), counted by the upstream `model` is routed to; `None` when it serves no
    /// `/tokenize` (or answers anything but a count), and then the caller estimates.
    pub async fn tokens_per_byte(&self, model: &str, samples: &[(Value, usize)]) -> Option<f64> {
        let upstream = self.route(model);
        let url = upstream.pool.by_health().first()?.tokenize_url()?;
        let (mut tokens, mut bytes) = (0_u64, 0_usize);
        for (body, len) in samples {
            let mut req = self
                .client
                .post(&url)
                .timeout(TOKENIZE_TIMEOUT.min(upstream.timeout))
                .json(&tokenize_request(model, body));
            if let Some(auth) = &upstream.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let res = req.send().await.ok()?;
            if !res.status().is_success() {
                tracing::debug!(upstream = %upstream.name, status = res.status().as_u16(),
                    "the upstream does not count tokens; estimating");
                return None;
            }
            tokens += res.json::<Value>().await.ok()?["count"].as_u64()?;
            bytes += len;
        }
        (bytes > 0).then(|| tokens as f64 / bytes as f64)
    }
}

/// vLLM's two request shapes: a chat's `messages`, or a `prompt` (a completion's `prompt`, an
/// embedding's or a response's `input`).
fn tokenize_request(model: &str, body: &Value) -> Value {
    match body.get("messages") {
        Some(messages) => json!({"model": model, "messages": messages}),
        None => {
            let prompt = body.get("prompt").or_else(|| body.get("input"));
            json!({"model": model, "prompt": prompt.cloned().unwrap_or(Value::Null)})
        }
    }
}
