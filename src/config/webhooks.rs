use serde::{Deserialize, Serialize};

/// Webhook delivery (an OpenBatch extension; see docs/api.md, "Webhooks").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
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

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            timeout_secs: 10,
            retry_base_ms: 5000,
            retry_max_ms: 3_600_000,
            max_retry_secs: 72 * 3600,
            disable_after_failures: 20,
            rotation_grace_secs: 24 * 3600,
            log_retention_secs: 30 * 24 * 3600,
            poll_interval_ms: 1000,
            max_in_flight: 16,
            max_endpoints_per_project: 100,
        }
    }
}

impl WebhookSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.timeout_secs >= 1 && self.max_in_flight >= 1 && self.disable_after_failures >= 1,
            "OPENBATCH__WEBHOOKS__TIMEOUT_SECS, OPENBATCH__WEBHOOKS__MAX_IN_FLIGHT and \
             OPENBATCH__WEBHOOKS__DISABLE_AFTER_FAILURES must be at least 1"
        );
        anyhow::ensure!(
            self.retry_base_ms >= 1 && self.retry_base_ms <= self.retry_max_ms,
            "OPENBATCH__WEBHOOKS__RETRY_BASE_MS must be at least 1 and at most \
             OPENBATCH__WEBHOOKS__RETRY_MAX_MS"
        );
        Ok(())
    }
}
