//! Layered settings: built-in defaults < `config/openbatch.toml` (or the file named by
//! `OPENBATCH_CONFIG`) < `OPENBATCH__SECTION__KEY` environment variables. `DATABASE_URL` is
//! honoured when `OPENBATCH__DATABASE__URL` is not set.

use std::collections::HashMap;
use std::fmt;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub upstream: UpstreamSettings,
    /// Named upstreams chosen by model name; any model no route claims goes to `upstream`.
    #[serde(default)]
    pub routes: HashMap<String, UpstreamSettings>,
    pub worker: WorkerSettings,
    pub batches: BatchSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    pub cluster: ClusterSettings,
    pub webhooks: WebhookSettings,
}

/// Webhook delivery (an OpenBatch extension; see docs/api.md, "Webhooks").
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Let endpoints point at loopback, private, link-local... addresses (tests, trusted networks).
    pub allow_private_networks: bool,
    /// Per delivery attempt, connection included.
    pub timeout_secs: u64,
    /// Backoff before the second attempt, doubled per attempt (with jitter) up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// An event not delivered this long after it happened is given up.
    pub max_retry_secs: u64,
    /// Failed attempts in a row (across events) after which an endpoint is disabled.
    pub disable_after_failures: i32,
    /// How long the old secret still signs after a rotation.
    pub rotation_grace_secs: u64,
    /// Finished deliveries stay in the delivery log this long.
    pub log_retention_secs: u64,
    /// Due deliveries are looked for this often (NOTIFY wakes the deliverer sooner).
    pub poll_interval_ms: u64,
    /// Deliveries in flight per replica.
    pub max_in_flight: usize,
    /// Endpoints a project may register (each one multiplies every event).
    pub max_endpoints_per_project: i64,
}

/// How replicas learn of each other (a heartbeat table in PostgreSQL).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// How often a replica records that it is alive; one unseen for 3 intervals is gone.
    pub heartbeat_secs: u64,
}

/// OpenTelemetry export. The standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_SERVICE_NAME` win over these.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// Off when unset.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `grpc`.
    pub otlp_protocol: String,
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Require `Authorization: Bearer <key>` on every `/v1` route. Off: one built-in project.
    pub enabled: bool,
    /// How often each replica reloads its in-memory copy of the live keys even without a
    /// change notification (the fallback should a NOTIFY be lost). 0: no copy, every request
    /// asks the database.
    pub cache_secs: u64,
    /// Database lookups a second (per replica) for keys the in-memory copy does not hold: a
    /// key used before its creation's notification arrives still works, and a flood of
    /// made-up keys costs at most this many queries a second.
    pub unknown_key_lookups_per_sec: u32,
    /// Serve with authentication off on a non-loopback address. Off by default: anyone who
    /// reaches the port would read every file and spend the upstream's key.
    pub allow_anonymous: bool,
}

/// An OpenAI-compatible inference server, or a pool of them serving the same models.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    /// Including the version prefix, e.g. `http://127.0.0.1:8000/v1`: a pool of one. Empty
    /// when not set; the default upstream then uses `DEFAULT_UPSTREAM_URL` unless `base_urls`
    /// is set. Setting both is refused: which one wins would be a guess.
    #[serde(default)]
    pub base_url: String,
    /// The endpoints of a pool (each like `base_url`); comma-separated in the environment.
    #[serde(default)]
    pub base_urls: Option<Vec<String>>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Per HTTP attempt.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_secs: u64,
    /// Requests in flight at each endpoint of this upstream from the whole cluster: each replica
    /// allows `max(1, max_in_flight / live replicas)` (see `upstream::pool`).
    #[serde(default = "default_upstream_in_flight")]
    pub max_in_flight: usize,
    /// Model names routed here (routes only); `*` at the end matches a prefix.
    #[serde(default)]
    pub models: Vec<String>,
    /// A longer response body is not read further: the line fails as `response_too_large`.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Below the cap, each endpoint's limit follows its load (`upstream::limiter`); off: the
    /// replica's share of the cap alone.
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
    /// Where vLLM's Prometheus gauges are read (`vllm:num_requests_waiting`, `…_running`), to
    /// keep the server's queue empty for interactive users. Unset: each endpoint's origin +
    /// `/metrics`, given up (asked again every minute) while it has none; `off`: never. A URL
    /// is for a pool of one.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// vLLM's request `priority`, added to every batch line, for servers started with
    /// `--scheduling-policy priority` (a larger value runs later); none by default. A line
    /// that sets its own keeps it.
    #[serde(default)]
    pub priority: Option<i64>,
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
    fn check(&self, name: &str, env: &str) -> anyhow::Result<()> {
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

fn default_max_response_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_upstream_timeout() -> u64 {
    600
}

fn default_upstream_in_flight() -> usize {
    64
}

fn default_adaptive() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Run batch workers in this process (an API-only replica sets false).
    pub enabled: bool,
    /// Threads of the runtime that runs the engine, the maintainer and webhook deliveries (the
    /// API has its own: `server.workers`). One is enough for ~10,000 lines/s, and costs less
    /// CPU per line than several, which wake each other for every line (see bench/RESULTS.md).
    pub threads: usize,
    /// Lines in flight per replica, across all upstreams. A line's slot is freed only once its
    /// result is stored, so a replica that dies loses at most this many executions.
    pub max_in_flight: usize,
    /// The unit of durable work: a chunk holds up to this many consecutive lines...
    pub chunk_lines: usize,
    /// ...or about this many bytes of input, whichever comes first.
    pub chunk_bytes: usize,
    /// How long a claim (of a line or of batch-level work) lives without renewal.
    pub lease_secs: u64,
    /// How often an idle replica looks for work.
    pub poll_interval_ms: u64,
    /// Extra time a finished result may wait to be written with others (0: only those that
    /// finished while the previous write ran).
    pub flush_interval_ms: u64,
    /// HTTP attempts per line (first try included) for retryable failures.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Claims in a row of a chunk that store none of its results (the replicas running it die
    /// or hang) before its remaining lines are failed as `execution_abandoned`.
    pub max_idle_claims: u32,
    /// Attempts in a row of a batch's validation or finalization that fail with an error (not
    /// a lost database connection) before the batch is given up as `failed`
    /// (`validation_failed` / `finalization_failed`) instead of being retried forever.
    pub max_job_failures: u32,
    /// After a cancel, how long in-flight lines may finish before they are abandoned.
    pub cancel_grace_secs: u64,
    /// On SIGTERM, how long in-flight lines may finish before their claims are released.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchSettings {
    /// Test-only: expire batches this many seconds after creation instead of 24 hours.
    #[serde(default)]
    pub expiry_override_secs: Option<i64>,
    /// A batch still unfinished (validating, in progress, finalizing or cancelling) this long
    /// after its completion window ended is ended by the maintenance sweep, without result
    /// files: `expired`, or `cancelled` when it was being cancelled.
    pub stuck_grace_secs: u64,
    /// Fail a batch at validation when its routed upstream's `GET /models` does not list the
    /// batch's model (`model_not_found`), instead of running every line into a 404.
    pub check_models: bool,
    /// How long one upstream's model list is trusted before it is asked again.
    pub models_cache_secs: u64,
    /// A longer input line fails validation (`line_too_long`) and is never held in memory.
    pub max_line_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// `host:port` serving `/metrics` alone; when set, the public port does not serve it.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// How often one background task refreshes the database-derived gauges (scrapes read
    /// the cached values, so a scrape costs no query).
    #[serde(default = "default_metrics_refresh_secs")]
    pub metrics_refresh_secs: u64,
    /// With authentication off, host names (besides loopback ones) this server answers to;
    /// `*` answers any. Other names are refused, so a rebound name cannot reach it.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_metrics_refresh_secs() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    /// Create the database named in `url` when it does not exist.
    pub create_if_missing: bool,
    /// A TOAST index holding this many bytes more than its live content needs is rebuilt to
    /// give the space of purged content back (0: never).
    pub reindex_slack_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_upload_bytes: u64,
    pub max_json_body_bytes: usize,
    pub metadata: crate::domain::MetadataLimits,
    /// Unfinished batches a project may have; 0 = no limit.
    pub max_active_batches_per_project: i64,
    /// Requests per minute per API key, per replica; 0 = no limit.
    pub requests_per_minute_per_key: u32,
    /// Uploads one replica receives at once; more are answered 429 with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// An upload whose client sends nothing for this long is answered 408.
    pub upload_idle_timeout_secs: u64,
    /// An upload still arriving after this long is answered 408 (a client dripping a byte
    /// just inside the idle timeout cannot hold its slot forever).
    pub upload_timeout_secs: u64,
    /// Where uploads are spooled before they go to the database; the system's temporary
    /// directory when unset. Needs room for `max_concurrent_uploads x max_upload_bytes`.
    #[serde(default)]
    pub upload_spool_dir: Option<String>,
    /// Bytes of files (not deleted, not purged) a project may store; 0 = no limit.
    pub max_stored_bytes_per_project: u64,
    /// Open `GET /v1/batches/{id}/events` streams per replica; more are refused with a 429.
    pub max_event_streams: usize,
    /// Of those, how many one project may hold; half of `max_event_streams` (rounded up) when
    /// unset.
    #[serde(default)]
    pub max_event_streams_per_project: Option<usize>,
    /// Of `max_concurrent_uploads`, how many one project may hold; half (rounded up) when unset.
    #[serde(default)]
    pub max_concurrent_uploads_per_project: Option<usize>,
    /// `GET /v1/batches/{id}/results` responses one replica serves at once; more are refused
    /// with a 429.
    pub max_live_readers: usize,
    /// Of those, how many one project may hold; half of `max_live_readers` (rounded up) when
    /// unset.
    #[serde(default)]
    pub max_live_readers_per_project: Option<usize>,
    /// A `GET /v1/batches/{id}/results` client that takes nothing of its response for this long
    /// is cut off (the response is aborted) and its slot freed.
    pub live_read_idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `openbatch=debug,sqlx=warn`; `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that never prints: the database URL carries a password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/openbatch";

impl Settings {
    pub fn load() -> anyhow::Result<Settings> {
        Self::load_from(std::env::vars().collect())
    }

    /// The environment is injected so tests can load settings without touching the process's.
    pub fn load_from(vars: HashMap<String, String>) -> anyhow::Result<Settings> {
        let env = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        let mut builder = config::Config::builder()
            .set_default("server.host", "127.0.0.1")?
            .set_default("server.port", 8080)?
            .set_default("server.workers", 0)?
            .set_default("database.url", DEFAULT_DATABASE_URL)?
            .set_default("database.max_connections", 16)?
            .set_default("database.min_connections", 0)?
            .set_default("database.connect_timeout_secs", 10)?
            .set_default("database.acquire_timeout_secs", 10)?
            .set_default("database.create_if_missing", true)?
            .set_default("limits.max_upload_bytes", 512_u64 * 1024 * 1024)?
            .set_default("limits.max_json_body_bytes", 1024 * 1024)?
            .set_default("limits.metadata.max_pairs", 16)?
            .set_default("limits.metadata.max_key_chars", 64)?
            .set_default("limits.metadata.max_value_chars", 512)?
            .set_default("limits.max_active_batches_per_project", 1000)?
            .set_default("limits.requests_per_minute_per_key", 6000)?
            .set_default("limits.max_concurrent_uploads", 8)?
            .set_default("limits.upload_idle_timeout_secs", 30)?
            .set_default("limits.upload_timeout_secs", 3600)?
            // OpenAI's own per-project file storage quota: 2.5 TB.
            .set_default("limits.max_stored_bytes_per_project", 2_500_000_000_000_u64)?
            .set_default("limits.max_event_streams", 256)?
            .set_default("limits.max_live_readers", 64)?
            .set_default("limits.live_read_idle_timeout_secs", 30)?
            .set_default("auth.enabled", false)?
            .set_default("auth.cache_secs", 10)?
            .set_default("auth.allow_anonymous", false)?
            .set_default("auth.unknown_key_lookups_per_sec", 10)?
            .set_default("cluster.heartbeat_secs", 2)?
            .set_default("telemetry.otlp_endpoint", None::<String>)?
            .set_default("telemetry.otlp_protocol", "http/protobuf")?
            .set_default("telemetry.service_name", "openbatch")?
            .set_default("log.format", "text")?
            .set_default("log.level", "info")?
            .set_default("upstream.timeout_secs", default_upstream_timeout())?
            .set_default(
                "upstream.max_in_flight",
                default_upstream_in_flight() as u64,
            )?
            .set_default(
                "upstream.max_response_bytes",
                default_max_response_bytes() as u64,
            )?
            .set_default("database.reindex_slack_bytes", 1024 * 1024)?
            .set_default("worker.enabled", true)?
            .set_default("worker.threads", 1)?
            .set_default("worker.max_in_flight", 64)?
            .set_default("worker.chunk_lines", 256)?
            .set_default("worker.chunk_bytes", 1024 * 1024)?
            .set_default("worker.lease_secs", 30)?
            .set_default("worker.poll_interval_ms", 250)?
            .set_default("worker.flush_interval_ms", 50)?
            .set_default("worker.max_attempts", 5)?
            .set_default("worker.retry_base_ms", 500)?
            .set_default("worker.retry_max_ms", 30_000)?
            .set_default("worker.max_idle_claims", 3)?
            .set_default("worker.max_job_failures", 5)?
            .set_default("worker.cancel_grace_secs", 5)?
            .set_default("worker.shutdown_grace_secs", 20)?
            .set_default("batches.expiry_override_secs", None::<i64>)?
            .set_default("batches.stuck_grace_secs", 3600)?
            .set_default("batches.check_models", true)?
            .set_default("batches.models_cache_secs", 60)?
            .set_default("batches.max_line_bytes", 8_u64 * 1024 * 1024)?
            .set_default("webhooks.allow_private_networks", false)?
            .set_default("webhooks.timeout_secs", 10)?
            .set_default("webhooks.retry_base_ms", 5000)?
            .set_default("webhooks.retry_max_ms", 3_600_000)?
            .set_default("webhooks.max_retry_secs", 72 * 3600)?
            .set_default("webhooks.disable_after_failures", 20)?
            .set_default("webhooks.rotation_grace_secs", 24 * 3600)?
            .set_default("webhooks.log_retention_secs", 30 * 24 * 3600)?
            .set_default("webhooks.poll_interval_ms", 1000)?
            .set_default("webhooks.max_in_flight", 16)?
            .set_default("webhooks.max_endpoints_per_project", 100)?;
        builder = match env("OPENBATCH_CONFIG") {
            Some(path) => builder.add_source(config::File::with_name(&path).required(true)),
            None => builder.add_source(config::File::with_name("config/openbatch").required(false)),
        };
        let ours: config::Map<String, String> = vars
            .iter()
            .filter(|(k, v)| k.starts_with("OPENBATCH__") && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut environment = config::Environment::with_prefix("OPENBATCH")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            // Lists are comma-separated in the environment (only these keys: a comma in
            // any other value, such as a URL's query, stays as it is).
            .list_separator(",")
            .with_list_parse_key("server.allowed_hosts");
        // Each route's lists too (its pool, its models): the crate matches list keys exactly,
        // so the routes named in the environment are registered one by one.
        for key in ours.keys() {
            let key = key.to_lowercase();
            if key.ends_with("__base_urls")
                || (key.starts_with("openbatch__routes__") && key.ends_with("__models"))
            {
                let path = key.trim_start_matches("openbatch__").replace("__", ".");
                environment = environment.with_list_parse_key(&path);
            }
        }
        builder = builder.add_source(environment.source(Some(ours)));
        for (standard, ours) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "telemetry.otlp_protocol"),
            ("OTEL_SERVICE_NAME", "telemetry.service_name"),
        ] {
            if let Some(v) = env(standard) {
                builder = builder.set_override(ours, v)?;
            }
        }
        if env("OPENBATCH__DATABASE__URL").is_none() {
            if let Some(url) = env("DATABASE_URL") {
                builder = builder.set_override("database.url", url)?;
            }
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .context(
                "invalid configuration; settings come from config/openbatch.toml (or OPENBATCH_CONFIG) \
                 and OPENBATCH__SECTION__KEY environment variables, e.g. OPENBATCH__SERVER__PORT=8080",
            )?;
        if settings.upstream.base_url.is_empty() && settings.upstream.base_urls.is_none() {
            settings.upstream.base_url = DEFAULT_UPSTREAM_URL.to_owned();
        }
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        let db = &self.database;
        anyhow::ensure!(
            db.max_connections >= 1,
            "OPENBATCH__DATABASE__MAX_CONNECTIONS must be at least 1"
        );
        anyhow::ensure!(
            db.min_connections <= db.max_connections,
            "OPENBATCH__DATABASE__MIN_CONNECTIONS must not exceed OPENBATCH__DATABASE__MAX_CONNECTIONS"
        );
        anyhow::ensure!(
            self.limits.max_upload_bytes >= 1,
            "OPENBATCH__LIMITS__MAX_UPLOAD_BYTES must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_concurrent_uploads >= 1
                && self.limits.upload_idle_timeout_secs >= 1
                && self.limits.upload_timeout_secs >= 1,
            "OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS, OPENBATCH__LIMITS__UPLOAD_IDLE_TIMEOUT_SECS \
             and OPENBATCH__LIMITS__UPLOAD_TIMEOUT_SECS must be at least 1"
        );
        let l = &self.limits;
        for (share, total, name) in [
            (
                l.max_event_streams_per_project,
                l.max_event_streams,
                "MAX_EVENT_STREAMS",
            ),
            (
                l.max_concurrent_uploads_per_project,
                l.max_concurrent_uploads,
                "MAX_CONCURRENT_UPLOADS",
            ),
            (
                l.max_live_readers_per_project,
                l.max_live_readers,
                "MAX_LIVE_READERS",
            ),
        ] {
            anyhow::ensure!(
                share.is_none_or(|s| s >= 1 && s <= total),
                "OPENBATCH__LIMITS__{name}_PER_PROJECT must be between 1 and OPENBATCH__LIMITS__{name}"
            );
        }
        anyhow::ensure!(
            l.live_read_idle_timeout_secs >= 1,
            "OPENBATCH__LIMITS__LIVE_READ_IDLE_TIMEOUT_SECS must be at least 1"
        );
        anyhow::ensure!(
            self.server.metrics_refresh_secs >= 1,
            "OPENBATCH__SERVER__METRICS_REFRESH_SECS must be at least 1"
        );
        anyhow::ensure!(
            self.batches.max_line_bytes >= 1,
            "OPENBATCH__BATCHES__MAX_LINE_BYTES must be at least 1"
        );
        let w = &self.worker;
        // Finalizing a cancelled or expired batch reads the input of its lines that never ran on
        // a second connection while its transaction holds the first: with one it would wait for
        // itself until the acquire timeout, on every retry.
        anyhow::ensure!(
            !w.enabled || db.max_connections >= 2,
            "OPENBATCH__DATABASE__MAX_CONNECTIONS must be at least 2 on a replica that runs batch workers (OPENBATCH__WORKER__ENABLED)"
        );
        anyhow::ensure!(
            w.threads >= 1 && w.max_in_flight >= 1 && w.chunk_lines >= 1 && w.chunk_bytes >= 1,
            "OPENBATCH__WORKER__THREADS, OPENBATCH__WORKER__MAX_IN_FLIGHT, OPENBATCH__WORKER__CHUNK_LINES and OPENBATCH__WORKER__CHUNK_BYTES must be at least 1"
        );
        anyhow::ensure!(
            w.max_idle_claims >= 1,
            "OPENBATCH__WORKER__MAX_IDLE_CLAIMS must be at least 1"
        );
        anyhow::ensure!(
            w.max_job_failures >= 1,
            "OPENBATCH__WORKER__MAX_JOB_FAILURES must be at least 1"
        );
        anyhow::ensure!(
            w.max_attempts >= 1,
            "OPENBATCH__WORKER__MAX_ATTEMPTS must be at least 1"
        );
        anyhow::ensure!(
            w.lease_secs >= 3,
            "OPENBATCH__WORKER__LEASE_SECS must be at least 3"
        );
        self.upstream.check("upstream", "OPENBATCH__UPSTREAM")?;
        for (name, up) in &self.routes {
            up.check(
                &format!("routes.{name}"),
                &format!("OPENBATCH__ROUTES__{}", name.to_uppercase()),
            )?;
        }
        let wh = &self.webhooks;
        anyhow::ensure!(
            wh.timeout_secs >= 1 && wh.max_in_flight >= 1 && wh.disable_after_failures >= 1,
            "OPENBATCH__WEBHOOKS__TIMEOUT_SECS, OPENBATCH__WEBHOOKS__MAX_IN_FLIGHT and \
             OPENBATCH__WEBHOOKS__DISABLE_AFTER_FAILURES must be at least 1"
        );
        anyhow::ensure!(
            wh.retry_base_ms >= 1 && wh.retry_base_ms <= wh.retry_max_ms,
            "OPENBATCH__WEBHOOKS__RETRY_BASE_MS must be at least 1 and at most \
             OPENBATCH__WEBHOOKS__RETRY_MAX_MS"
        );
        anyhow::ensure!(
            self.cluster.heartbeat_secs >= 1,
            "OPENBATCH__CLUSTER__HEARTBEAT_SECS must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_json_body_bytes >= 1024,
            "OPENBATCH__LIMITS__MAX_JSON_BODY_BYTES must be at least 1024"
        );
        Ok(())
    }
}

impl Settings {
    /// What only `serve` needs: anonymous access is refused on an address others can reach.
    pub fn check_serving(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.auth.enabled || self.auth.allow_anonymous || is_loopback(&self.server.host),
            "refusing to serve with authentication off on {host}, which other machines can reach: \
             anyone could read every file and spend the upstream's key. Set \
             OPENBATCH__AUTH__ENABLED=true (and create keys with `openbatch keys create`), or \
             OPENBATCH__AUTH__ALLOW_ANONYMOUS=true if this really is meant to be open, or \
             OPENBATCH__SERVER__HOST=127.0.0.1",
            host = self.server.host
        );
        Ok(())
    }
}

/// Whether `host` (a name or address, IPv6 in brackets or not) names this machine's loopback.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Query parameters of a PostgreSQL URL whose values are secret.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile", "sslkey"];

/// The URL with its password (in the authority or a query parameter) masked, for messages.
/// Parsed, not split: a password may hold `@`, `:` or `/`. Anything that does not parse is
/// hidden whole.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw.split_once("://").map_or("", |(s, _)| s);
        return format!("{scheme}://***");
    };
    if url.password().is_some() {
        // Cannot fail: the URL has a host, since it has a password.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        Settings::load_from(
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = load(&[]).unwrap();
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.database.url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(s.limits.max_upload_bytes, 512 * 1024 * 1024);
        assert!(!s.webhooks.allow_private_networks);
        assert_eq!(s.webhooks.max_retry_secs, 72 * 3600);
    }

    #[test]
    fn webhook_settings_from_the_environment() {
        let s = load(&[
            ("OPENBATCH__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
            ("OPENBATCH__WEBHOOKS__RETRY_BASE_MS", "20"),
        ])
        .unwrap();
        assert!(s.webhooks.allow_private_networks);
        assert_eq!(s.webhooks.retry_base_ms, 20);
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__WEBHOOKS__RETRY_BASE_MS", "0")]).unwrap_err()
        );
        assert!(err.contains("OPENBATCH__WEBHOOKS__RETRY_BASE_MS"), "{err}");
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = load(&[
            ("OPENBATCH__SERVER__PORT", "9999"),
            ("OPENBATCH__SERVER__HOST", "0.0.0.0"),
            ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
            ("OPENBATCH__LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(s.server.port, 9999);
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.database.url.expose(), "postgres://a@b/c");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn allowed_hosts_are_a_comma_separated_list_and_other_values_keep_their_commas() {
        assert!(load(&[]).unwrap().server.allowed_hosts.is_empty());
        let s = load(&[
            (
                "OPENBATCH__SERVER__ALLOWED_HOSTS",
                "batch.internal,10.0.0.5",
            ),
            ("OPENBATCH__DATABASE__URL", "postgres://x@y/z?options=a,b"),
        ])
        .unwrap();
        assert_eq!(s.server.allowed_hosts, ["batch.internal", "10.0.0.5"]);
        assert_eq!(s.database.url.expose(), "postgres://x@y/z?options=a,b");
    }

    #[test]
    fn metrics_url_is_discovered_off_or_one_server_s_url() {
        use super::MetricsSource;
        let s = load(&[]).unwrap();
        assert!(s.upstream.adaptive);
        assert_eq!(s.upstream.metrics_source(), MetricsSource::Discover);
        assert_eq!(s.upstream.priority, None);
        let off = load(&[("OPENBATCH__UPSTREAM__METRICS_URL", "off")]).unwrap();
        assert_eq!(off.upstream.metrics_source(), MetricsSource::Off);
        let at = (
            "OPENBATCH__UPSTREAM__METRICS_URL",
            "http://gpu:8000/metrics",
        );
        assert!(load(&[at]).is_ok());
        let two = (
            "OPENBATCH__UPSTREAM__BASE_URLS",
            "http://a:1/v1,http://b:1/v1",
        );
        let err = format!("{:#}", load(&[at, two]).unwrap_err());
        assert!(err.contains("OPENBATCH__UPSTREAM__METRICS_URL"), "{err}");
        let bad = ("OPENBATCH__UPSTREAM__METRICS_URL", "gpu:8000/metrics");
        let err = format!("{:#}", load(&[bad]).unwrap_err());
        assert!(err.contains("OPENBATCH__UPSTREAM__METRICS_URL"), "{err}");
        let p = load(&[("OPENBATCH__UPSTREAM__PRIORITY", "10")]).unwrap();
        assert_eq!(p.upstream.priority, Some(10));
    }

    #[test]
    fn database_url_is_a_fallback_only() {
        let s = load(&[("DATABASE_URL", "postgres://x@y/z")]).unwrap();
        assert_eq!(s.database.url.expose(), "postgres://x@y/z");
        let s = load(&[
            ("DATABASE_URL", "postgres://x@y/z"),
            ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
        ])
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgres://a@b/c");
    }

    #[test]
    fn a_bad_setting_names_itself() {
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__SERVER__PORT", "eighty")]).unwrap_err()
        );
        assert!(err.contains("server.port"), "{err}");
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__DATABASE__MAX_CONNECTIONS", "0")]).unwrap_err()
        );
        assert!(
            err.contains("OPENBATCH__DATABASE__MAX_CONNECTIONS"),
            "{err}"
        );
    }

    #[test]
    fn a_replica_running_workers_needs_two_connections() {
        let one = ("OPENBATCH__DATABASE__MAX_CONNECTIONS", "1");
        let err = format!("{:#}", load(&[one]).unwrap_err());
        assert!(err.contains("at least 2"), "{err}");
        let api_only = load(&[one, ("OPENBATCH__WORKER__ENABLED", "false")]).unwrap();
        assert_eq!(api_only.database.max_connections, 1);
    }

    #[test]
    fn an_upstream_base_url_must_be_a_url() {
        for bad in ["127.0.0.1:8000/v1", "http://exa mple/v1", "https://"] {
            let err = format!(
                "{:#}",
                load(&[("OPENBATCH__UPSTREAM__BASE_URL", bad)]).unwrap_err()
            );
            assert!(
                err.contains("OPENBATCH__UPSTREAM__BASE_URL"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_engine_runs_on_one_thread_unless_told_otherwise() {
        assert_eq!(load(&[]).unwrap().worker.threads, 1);
        let s = load(&[("OPENBATCH__WORKER__THREADS", "4")]).unwrap();
        assert_eq!(s.worker.threads, 4);
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__WORKER__THREADS", "0")]).unwrap_err()
        );
        assert!(err.contains("OPENBATCH__WORKER__THREADS"), "{err}");
    }

    #[test]
    fn upload_and_metrics_settings_must_be_positive() {
        let s = load(&[]).unwrap();
        assert_eq!(s.limits.max_concurrent_uploads, 8);
        assert_eq!(s.limits.max_stored_bytes_per_project, 2_500_000_000_000);
        assert_eq!(s.server.metrics_address, None);
        for (name, value) in [
            ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS", "0"),
            ("OPENBATCH__LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "0"),
            ("OPENBATCH__SERVER__METRICS_REFRESH_SECS", "0"),
        ] {
            let err = format!("{:#}", load(&[(name, value)]).unwrap_err());
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn per_project_shares_default_to_unset_and_stay_within_their_totals() {
        let s = load(&[]).unwrap();
        assert_eq!(s.limits.max_event_streams_per_project, None);
        assert_eq!(s.limits.max_live_readers, 64);
        assert_eq!(s.limits.live_read_idle_timeout_secs, 30);
        let s = load(&[("OPENBATCH__LIMITS__MAX_LIVE_READERS_PER_PROJECT", "3")]).unwrap();
        assert_eq!(s.limits.max_live_readers_per_project, Some(3));
        for (name, value) in [
            ("OPENBATCH__LIMITS__MAX_EVENT_STREAMS_PER_PROJECT", "257"),
            ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS_PER_PROJECT", "0"),
            ("OPENBATCH__LIMITS__MAX_LIVE_READERS_PER_PROJECT", "65"),
            ("OPENBATCH__LIMITS__LIVE_READ_IDLE_TIMEOUT_SECS", "0"),
        ] {
            let err = format!("{:#}", load(&[(name, value)]).unwrap_err());
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn upstream_settings_and_routes() {
        let s = load(&[
            ("OPENBATCH__UPSTREAM__BASE_URL", "http://vllm:8000/v1"),
            ("OPENBATCH__UPSTREAM__API_KEY", "sk-upstream"),
            ("OPENBATCH__ROUTES__EMBED__BASE_URL", "http://tei:80/v1"),
            ("OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT", "8"),
        ])
        .unwrap();
        assert_eq!(s.upstream.base_url, "http://vllm:8000/v1");
        assert_eq!(s.upstream.api_key.as_ref().unwrap().expose(), "sk-upstream");
        assert_eq!(s.routes["embed"].max_in_flight, 8);
        assert!(!format!("{s:?}").contains("sk-upstream"));
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__UPSTREAM__BASE_URL", "vllm:8000")]).unwrap_err()
        );
        assert!(err.contains("OPENBATCH__UPSTREAM__BASE_URL"), "{err}");
    }

    #[test]
    fn pools_are_lists_in_the_environment_for_the_default_upstream_and_each_route() {
        let s = load(&[]).unwrap();
        assert_eq!(s.upstream.endpoints(), [DEFAULT_UPSTREAM_URL]);
        let s = load(&[
            (
                "OPENBATCH__UPSTREAM__BASE_URLS",
                "http://gpu-1:8000/v1,http://gpu-2:8000/v1",
            ),
            (
                "OPENBATCH__ROUTES__EMBED__BASE_URLS",
                "http://tei-1/v1,http://tei-2/v1",
            ),
            ("OPENBATCH__ROUTES__EMBED__MODELS", "embed-*"),
            ("OPENBATCH__ROUTES__Chat_Big__BASE_URLS", "http://big/v1"),
            (
                "OPENBATCH__ROUTES__SMALL__BASE_URL",
                "http://small/v1?x=a,b",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.upstream.endpoints(),
            ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"]
        );
        assert_eq!(
            s.routes["embed"].endpoints(),
            ["http://tei-1/v1", "http://tei-2/v1"]
        );
        assert_eq!(s.routes["chat_big"].endpoints(), ["http://big/v1"]);
        // A single URL keeps its commas.
        assert_eq!(s.routes["small"].endpoints(), ["http://small/v1?x=a,b"]);
    }

    #[test]
    fn pools_in_the_configuration_file() {
        let path = std::env::temp_dir().join(format!(
            "openbatch-pools-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(
            &path,
            "[upstream]\nbase_urls = [\"http://a/v1\", \"http://b/v1/\"]\nmax_in_flight = 40\n\
             [routes.embed]\nbase_url = \"http://e/v1\"\nmodels = [\"embed-*\"]\n\
             [routes.empty]\nbase_urls = []\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let err = format!("{:#}", load(&[("OPENBATCH_CONFIG", file)]).unwrap_err());
        assert!(err.contains("routes.empty.base_urls"), "{err}");
        assert!(err.contains("OPENBATCH__ROUTES__EMPTY__BASE_URLS"), "{err}");
        std::fs::write(
            &path,
            "[upstream]\nbase_urls = [\"http://a/v1\", \"http://b/v1/\"]\nmax_in_flight = 40\n\
             [routes.embed]\nbase_url = \"http://e/v1\"\nmodels = [\"embed-*\"]\n",
        )
        .unwrap();
        let s = load(&[("OPENBATCH_CONFIG", file)]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(s.upstream.endpoints(), ["http://a/v1", "http://b/v1/"]);
        assert_eq!(s.upstream.max_in_flight, 40);
        assert_eq!(s.routes["embed"].endpoints(), ["http://e/v1"]);
    }

    #[test]
    fn a_bad_pool_stops_the_process_naming_the_setting() {
        for (vars, named) in [
            (
                vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,,http://b/v1")],
                "OPENBATCH__UPSTREAM__BASE_URLS",
            ),
            (
                vec![("OPENBATCH__UPSTREAM__BASE_URLS", ",")],
                "OPENBATCH__UPSTREAM__BASE_URLS",
            ),
            (
                vec![(
                    "OPENBATCH__UPSTREAM__BASE_URLS",
                    "http://a/v1,gpu-2:8000/v1",
                )],
                "OPENBATCH__UPSTREAM__BASE_URLS",
            ),
            (
                vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,ftp://b/v1")],
                "OPENBATCH__UPSTREAM__BASE_URLS",
            ),
            (
                vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,http://a/v1/")],
                "twice",
            ),
            (
                vec![(
                    "OPENBATCH__ROUTES__EMBED__BASE_URLS",
                    "http://a/v1,not a url",
                )],
                "OPENBATCH__ROUTES__EMBED__BASE_URLS",
            ),
            (
                vec![
                    ("OPENBATCH__UPSTREAM__BASE_URL", "http://a/v1"),
                    ("OPENBATCH__UPSTREAM__BASE_URLS", "http://b/v1"),
                ],
                "OPENBATCH__UPSTREAM__BASE_URL, OPENBATCH__UPSTREAM__BASE_URLS",
            ),
            (
                vec![("OPENBATCH__ROUTES__EMBED__MODELS", "embed-*")],
                "OPENBATCH__ROUTES__EMBED__BASE_URL",
            ),
            (
                vec![("OPENBATCH__UPSTREAM__MAX_IN_FLIGHT", "0")],
                "OPENBATCH__UPSTREAM__MAX_IN_FLIGHT",
            ),
            (
                vec![
                    ("OPENBATCH__ROUTES__EMBED__BASE_URLS", "http://a/v1"),
                    ("OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT", "0"),
                ],
                "OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT",
            ),
        ] {
            let err = format!("{:#}", load(&vars).unwrap_err());
            assert!(err.contains(named), "{vars:?}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load(&[("OPENBATCH__DATABASE__URL", "postgres://u:hunter2@h/d")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            redact_url("postgres://u:hunter2@h/d"),
            "postgres://u:***@h/d"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn redaction_parses_the_url() {
        for (raw, secret) in [
            ("postgres://u:p@ss:w/rd@h:5432/d", "p@ss"),
            ("postgres://u:p%40ss@h/d", "p%40ss"),
            (
                "postgres://u@h/d?password=hunter2&sslmode=require",
                "hunter2",
            ),
            (
                "postgres://u@h/d?sslmode=verify-full&sslpassword=keypass",
                "keypass",
            ),
            ("postgres://u:hunter2@h1,h2:5433/d", "hunter2"),
            ("postgres://u:hunter2@[::1]:5432/d?PASSWORD=again", "again"),
            ("not a url u:hunter2@h", "hunter2"),
        ] {
            let shown = redact_url(raw);
            assert!(!shown.contains(secret), "{raw} -> {shown}");
            assert!(!shown.contains("hunter2"), "{raw} -> {shown}");
        }
        assert_eq!(
            redact_url("postgres://u:p@ss@h:5432/d?sslmode=require&password=x"),
            "postgres://u:***@h:5432/d?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://u:hunter2@h1,h2/db"),
            "postgres://u:***@h1,h2/db"
        );
    }

    #[test]
    fn anonymous_serving_only_on_loopback_unless_allowed() {
        let ok = |vars: &[(&str, &str)]| load(vars).unwrap().check_serving();
        assert!(ok(&[]).is_ok());
        assert!(ok(&[("OPENBATCH__SERVER__HOST", "::1")]).is_ok());
        assert!(ok(&[("OPENBATCH__SERVER__HOST", "localhost")]).is_ok());
        for host in ["0.0.0.0", "::", "10.1.2.3", "openbatch.example"] {
            let err = ok(&[("OPENBATCH__SERVER__HOST", host)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("OPENBATCH__AUTH__ALLOW_ANONYMOUS"), "{err}");
            assert!(ok(&[
                ("OPENBATCH__SERVER__HOST", host),
                ("OPENBATCH__AUTH__ENABLED", "true")
            ])
            .is_ok());
            assert!(ok(&[
                ("OPENBATCH__SERVER__HOST", host),
                ("OPENBATCH__AUTH__ALLOW_ANONYMOUS", "true")
            ])
            .is_ok());
        }
    }
}
