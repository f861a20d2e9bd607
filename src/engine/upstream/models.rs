//! Which models each upstream serves, as its `GET /models` lists them, cached briefly: validation
//! fails a batch naming a model its upstream does not serve (OpenAI's `model_not_found`) before
//! any line runs, instead of sending every line into a 404.
//!
//! The check only ever refuses on a positive answer: an upstream that does not list models (a
//! 404, an error, no answer in time, an empty or non-list body) is not second-guessed, and a
//! model a route names exactly in its configuration is served by definition.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use tokio::sync::Mutex;

use super::answer::error_chain;
use super::{Upstream, Upstreams};
use crate::domain::{LineError, MAX_REPORTED_ERRORS};

/// The longest a validation waits for a model list (on a cache miss only).
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What an upstream's `GET /models` said.
#[derive(Debug, PartialEq, Eq)]
enum Listing {
    /// The ids it lists.
    Models(HashSet<String>),
    /// It does not list models: no model is refused on its account.
    Unlisted,
}

/// One upstream's model list. One validation fetches it while the others wait for that answer,
/// so a burst of batches asks the upstream once.
#[derive(Default)]
pub(super) struct Catalogue {
    cached: Mutex<Option<(Instant, Arc<Listing>)>>,
}

impl Upstreams {
    /// `model_not_found` errors for the models (each with the first line that names it) that
    /// the upstream they are routed to does not serve; empty when all are served, when the check
    /// is off, or when their upstream does not list models.
    pub async fn unknown_models<'a>(
        &self,
        models: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Vec<LineError> {
        let mut errors = Vec::new();
        if !self.check_models {
            return errors;
        }
        for (model, line) in models {
            let upstream = self.route(model);
            if upstream.names(model) {
                continue;
            }
            let listing = self.listing(upstream).await;
            if matches!(&*listing, Listing::Models(ids) if !ids.contains(model)) {
                errors.push(model_not_found(model, line));
                if errors.len() >= MAX_REPORTED_ERRORS {
                    break;
                }
            }
        }
        errors
    }

    async fn listing(&self, upstream: &Upstream) -> Arc<Listing> {
        let mut cached = upstream.catalogue.cached.lock().await;
        if let Some((at, listing)) = &*cached {
            if at.elapsed() < self.models_ttl {
                return listing.clone();
            }
        }
        let listing = Arc::new(self.fetch_listing(upstream).await);
        *cached = Some((Instant::now(), listing.clone()));
        listing
    }

    async fn fetch_listing(&self, upstream: &Upstream) -> Listing {
        // The endpoints of a pool serve the same models: the first that answers (those not
        // taken out asked first) speaks for all.
        let mut answer = None;
        for endpoint in upstream.pool.by_health() {
            let mut req = self
                .client
                .get(endpoint.url("/v1/models"))
                .timeout(LIST_TIMEOUT.min(upstream.timeout));
            if let Some(auth) = &upstream.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let got = match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    res.bytes().await.map(|body| (status, body))
                }
                Err(e) => Err(e),
            };
            let unreachable = got.is_err();
            answer = Some(got);
            if !unreachable {
                break;
            }
        }
        let (status, body) = match answer.expect("a pool has an endpoint") {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(upstream = %upstream.name, error = error_chain(&e),
                    "could not list the upstream's models; batches are not checked against them for now");
                return Listing::Unlisted;
            }
        };
        let listing = parse_listing(status, &body);
        match &listing {
            Listing::Models(ids) => {
                tracing::debug!(upstream = %upstream.name, models = ids.len(), "listed the upstream's models")
            }
            Listing::Unlisted => {
                tracing::info!(upstream = %upstream.name, status,
                    "the upstream does not list its models; batches are not checked against them")
            }
        }
        listing
    }
}

impl Upstream {
    /// Whether the configuration names `model` exactly (not by a `*` prefix) for this upstream.
    fn names(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

/// OpenAI's error for a batch whose model it does not serve.
fn model_not_found(model: &str, line: usize) -> LineError {
    LineError {
        code: "model_not_found",
        message: format!("The provided model '{model}' is not supported by the Batch API."),
        param: Some("body.model".to_owned()),
        line: Some(line),
    }
}

/// An OpenAI model list (`{"object": "list", "data": [{"id": …}, …]}`) from a 2xx answer; any
/// other answer, or a list with no ids, means the upstream does not list its models.
fn parse_listing(status: u16, body: &[u8]) -> Listing {
    if !(200..300).contains(&status) {
        return Listing::Unlisted;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Listing::Unlisted;
    };
    let Some(data) = value.get("data").and_then(Value::as_array) else {
        return Listing::Unlisted;
    };
    let ids: HashSet<String> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        Listing::Unlisted
    } else {
        Listing::Models(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(ids: &[&str]) -> Listing {
        Listing::Models(ids.iter().map(|m| (*m).to_owned()).collect())
    }

    #[test]
    fn an_openai_model_list_is_a_listing() {
        let body = br#"{"object": "list", "data": [
            {"id": "llama-3-8b", "object": "model", "owned_by": "vllm"},
            {"id": "bge-small", "object": "model"}]}"#;
        assert_eq!(
            parse_listing(200, body),
            models(&["llama-3-8b", "bge-small"])
        );
    }

    #[test]
    fn anything_else_means_the_upstream_does_not_list_models() {
        for (status, body) in [
            (
                404,
                &br#"{"error": {"message": "Invalid URL (GET /v1/models)"}}"#[..],
            ),
            (500, br#"{"object": "list", "data": [{"id": "m"}]}"#),
            (401, br#"{"object": "list", "data": [{"id": "m"}]}"#),
            (200, b"<html>not json</html>"),
            (200, br#"{"models": ["m"]}"#),
            (200, br#"{"object": "list", "data": {"id": "m"}}"#),
            (200, br#"{"object": "list", "data": []}"#),
            (200, br#"{"object": "list", "data": [{"name": "m"}, 7]}"#),
        ] {
            assert_eq!(
                parse_listing(status, body),
                Listing::Unlisted,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_error_is_openai_s() {
        let e = model_not_found("gpt-typo", 3);
        assert_eq!(
            (e.code, e.param.as_deref(), e.line),
            ("model_not_found", Some("body.model"), Some(3))
        );
        assert_eq!(
            e.message,
            "The provided model 'gpt-typo' is not supported by the Batch API."
        );
    }
}
