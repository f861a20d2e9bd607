//! Layered settings: built-in defaults < `config/openbatch.toml` (or the file named by
//! `OPENBATCH_CONFIG`) < `OPENBATCH__SECTION__KEY` environment variables. `DATABASE_URL` is
//! honoured when `OPENBATCH__DATABASE__URL` is not set.
//!
//! Each section is a struct in its own module whose `Default` is the built-in layer; the
//! loader (`load`) knows no setting by name. docs/configuration.md's table is checked
//! against these defaults (`docs_table`).

mod auth;
mod batches;
mod cluster;
mod database;
#[cfg(test)]
mod docs_table;
mod limits;
mod load;
mod log;
mod secret;
mod server;
mod storage;
mod telemetry;
#[cfg(test)]
mod tests;
mod upstream;
mod webhooks;
mod worker;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use auth::AuthSettings;
pub use batches::BatchSettings;
pub use cluster::ClusterSettings;
pub use database::{redact_url, DatabaseSettings, DEFAULT_DATABASE_URL};
pub use limits::LimitSettings;
pub use log::{LogFormat, LogSettings};
pub use secret::Secret;
pub use server::{is_loopback, ServerSettings};
pub use storage::{S3Settings, StorageBackend, StorageSettings};
pub use telemetry::TelemetrySettings;
pub use upstream::{MetricsSource, UpstreamSettings, DEFAULT_UPSTREAM_URL};
pub use webhooks::WebhookSettings;
pub use worker::WorkerSettings;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub upstream: UpstreamSettings,
    /// Named upstreams chosen by model name; any model no route claims goes to `upstream`.
    pub routes: HashMap<String, UpstreamSettings>,
    pub worker: WorkerSettings,
    pub batches: BatchSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    pub cluster: ClusterSettings,
    pub webhooks: WebhookSettings,
    pub storage: StorageSettings,
}

impl Settings {
    /// The default upstream is `DEFAULT_UPSTREAM_URL` unless `base_url` or `base_urls` says
    /// otherwise (a default `base_url` would make setting `base_urls` alone a conflict).
    fn with_default_upstream(mut self) -> Self {
        if self.upstream.base_url.is_empty() && self.upstream.base_urls.is_none() {
            self.upstream.base_url = DEFAULT_UPSTREAM_URL.to_owned();
        }
        self
    }

    fn check(&self) -> anyhow::Result<()> {
        self.database.check()?;
        self.limits.check()?;
        self.server.check()?;
        self.batches.check()?;
        // Finalizing a cancelled or expired batch reads the input of its lines that never ran on
        // a second connection while its transaction holds the first: with one it would wait for
        // itself until the acquire timeout, on every retry.
        anyhow::ensure!(
            !self.worker.enabled || self.database.max_connections >= 2,
            "OPENBATCH__DATABASE__MAX_CONNECTIONS must be at least 2 on a replica that runs batch workers (OPENBATCH__WORKER__ENABLED)"
        );
        self.worker.check()?;
        self.upstream.check("upstream", "OPENBATCH__UPSTREAM")?;
        for (name, up) in &self.routes {
            up.check(
                &format!("routes.{name}"),
                &format!("OPENBATCH__ROUTES__{}", name.to_uppercase()),
            )?;
        }
        self.webhooks.check()?;
        self.storage.check()?;
        self.cluster.check()
    }

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
