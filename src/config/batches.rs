use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BatchSettings {
    /// Test-only: expire batches this many seconds after creation instead of 24 hours.
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

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            expiry_override_secs: None,
            stuck_grace_secs: 3600,
            check_models: true,
            models_cache_secs: 60,
            max_line_bytes: 8 * 1024 * 1024,
        }
    }
}

impl BatchSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_line_bytes >= 1,
            "OPENBATCH__BATCHES__MAX_LINE_BYTES must be at least 1"
        );
        Ok(())
    }
}
