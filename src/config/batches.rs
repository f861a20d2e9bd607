use crate::domain::CompletionWindow;
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
    /// The `completion_window`s a batch may ask for (`1h`, `24h`, `7d`). A shorter window is
    /// an earlier deadline, and a batch's chunks are run earliest deadline first within its
    /// project's turn.
    pub completion_windows: Vec<String>,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            expiry_override_secs: None,
            stuck_grace_secs: 3600,
            check_models: true,
            models_cache_secs: 60,
            max_line_bytes: 8 * 1024 * 1024,
            completion_windows: ["1h", "24h", "7d"].map(String::from).to_vec(),
        }
    }
}

impl BatchSettings {
    /// The accepted windows, as the settings check has read them.
    pub fn windows(&self) -> Vec<CompletionWindow> {
        (self.completion_windows.iter())
            .filter_map(|w| CompletionWindow::parse(w).ok())
            .collect()
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.completion_windows.is_empty(),
            "OPENBATCH__BATCHES__COMPLETION_WINDOWS must name at least one window (1h, 24h, 7d)"
        );
        for w in &self.completion_windows {
            CompletionWindow::parse(w).map_err(|e| {
                anyhow::anyhow!("OPENBATCH__BATCHES__COMPLETION_WINDOWS: {}", e.message)
            })?;
        }
        anyhow::ensure!(
            self.max_line_bytes >= 1,
            "OPENBATCH__BATCHES__MAX_LINE_BYTES must be at least 1"
        );
        Ok(())
    }
}
