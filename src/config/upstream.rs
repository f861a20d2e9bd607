use serde::{Deserialize, Serialize};

use super::secret::{serialize_key, Secret};

/// An OpenAI-compatible inference server, or a pool of them serving the same models.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamSettings {
    /// Including the version prefix, e.g. `http://127.0.0.1:8000/v1`: a pool of one. Empty
    /// when not set; the default upstream then uses `DEFAULT_UPSTREAM_URL` unless `base_urls`
    /// is set. Setting both is refused: which one wins would be a guess.
    pub base_url: String,
    /// The endpoints of a pool (each like `base_url`); comma-separated in the environment.
    pub base_urls: Option<Vec<String>>,
    #[serde(serialize_with = "serialize_key")]
    pub api_key: Option<Secret>,
    /// Per HTTP attempt.
    pub timeout_secs: u64,
    /// Requests in flight at each endpoint of this upstream from the whole cluster: each replica
    /// allows `max(1, max_in_flight / live replicas)` (see `upstream::pool`).
    pub max_in_flight: usize,
    /// Model names routed here (routes only); `*` at the end matches a prefix.
    pub models: Vec<String>,
    /// A longer response body is not read further: the line fails as `response_too_large`.
    pub max_response_bytes: usize,
    /// Below the cap, each endpoint's limit follows its load (`upstream::limiter`); off: the
    /// replica's share of the cap alone.
    pub adaptive: bool,
    /// Where vLLM's Prometheus gauges are read (`vllm:num_requests_waiting`, `…_running`), to
    /// keep the server's queue empty for interactive users. Unset: each endpoint's origin +
    /// `/metrics`, given up (asked again every minute) while it has none; `off`: never. A URL
    /// is for a pool of one.
    pub metrics_url: Option<String>,
    /// vLLM's request `priority`, added to every batch line, for servers started with
    /// `--scheduling-policy priority` (a larger value runs later); none by default. A line
    /// that sets its own keeps it.
    pub priority: Option<i64>,
}

/// A route's fields left out take these; the default upstream's `base_url` is filled in by
/// `load` (with `DEFAULT_UPSTREAM_URL`) only when `base_urls` is not set either.
impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            base_urls: None,
            api_key: None,
            timeout_secs: 600,
            max_in_flight: 64,
            models: Vec::new(),
            max_response_bytes: 16 * 1024 * 1024,
            adaptive: true,
            metrics_url: None,
            priority: None,
        }
    }
}

impl UpstreamSettings {
    /// The pool's endpoints: `base_urls`, or `base_url` as a pool of one.
    pub fn endpoints(&self) -> Vec<&str> {
        match &self.base_urls {
            Some(urls) => urls.iter().map(String::as_str).collect(),
            None => vec![self.base_url.as_str()],
        }
    }

    /// What `Settings::check` refuses in one upstream's settings; `name` is `upstream` or
    /// `routes.<name>`, `env` the matching `OPENBATCH__…` prefix.
    pub(super) fn check(&self, name: &str, env: &str) -> anyhow::Result<()> {
        match &self.base_urls {
            Some(_) if !self.base_url.is_empty() => anyhow::bail!(
                "{name}.base_url and {name}.base_urls are both set ({env}__BASE_URL, \
                 {env}__BASE_URLS): set base_urls alone for a pool, base_url alone for one server"
            ),
            Some(urls) => anyhow::ensure!(
                !urls.is_empty() && urls.iter().all(|u| !u.trim().is_empty()),
                "{name}.base_urls ({env}__BASE_URLS) must list at least one URL, without empty entries"
            ),
            None => anyhow::ensure!(
                !self.base_url.is_empty(),
                "{name} needs base_url or base_urls ({env}__BASE_URL or {env}__BASE_URLS)"
            ),
        }
        let setting = if self.base_urls.is_some() {
            "base_urls"
        } else {
            "base_url"
        };
        let endpoints = self.endpoints();
        for (i, url) in endpoints.iter().enumerate() {
            anyhow::ensure!(
                (url.starts_with("http://") || url.starts_with("https://"))
                    && url::Url::parse(url).is_ok_and(|u| u.has_host()),
                "{name}.{setting} ({env}__{upper}) must hold http(s) URLs such as \
                 http://127.0.0.1:8000/v1, not {url:?}",
                upper = setting.to_uppercase(),
            );
            anyhow::ensure!(
                !endpoints[..i]
                    .iter()
                    .any(|u| u.trim_end_matches('/') == url.trim_end_matches('/')),
                "{name}.base_urls ({env}__BASE_URLS) lists {url} twice"
            );
        }
        anyhow::ensure!(
            self.max_in_flight >= 1,
            "{name}.max_in_flight ({env}__MAX_IN_FLIGHT) must be at least 1"
        );
        anyhow::ensure!(
            self.timeout_secs >= 1,
            "{name}.timeout_secs ({env}__TIMEOUT_SECS) must be at least 1"
        );
        if let MetricsSource::At(url) = self.metrics_source() {
            anyhow::ensure!(
                url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
                "{name}.metrics_url ({env}__METRICS_URL) must be an http(s) URL such as \
                 http://127.0.0.1:8000/metrics, or `off`, not {url:?}"
            );
            anyhow::ensure!(
                endpoints.len() == 1,
                "{name}.metrics_url ({env}__METRICS_URL) names one server's metrics, but {name} \
                 has {} endpoints: leave it unset (each endpoint's own /metrics is read) or `off`",
                endpoints.len()
            );
        }
        Ok(())
    }

    pub fn metrics_source(&self) -> MetricsSource<'_> {
        match self.metrics_url.as_deref().map(str::trim) {
            None | Some("") => MetricsSource::Discover,
            Some(off) if off.eq_ignore_ascii_case("off") => MetricsSource::Off,
            Some(url) => MetricsSource::At(url),
        }
    }
}

/// Where an upstream's vLLM gauges are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsSource<'a> {
    /// Each endpoint's origin + `/metrics`, while it has them.
    Discover,
    Off,
    At(&'a str),
}

/// The default upstream's URL when neither `upstream.base_url` nor `upstream.base_urls` is set.
pub const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:8000/v1";
