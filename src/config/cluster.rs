use serde::{Deserialize, Serialize};

/// How replicas learn of each other (a heartbeat table in PostgreSQL).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// How often a replica records that it is alive; one unseen for 3 intervals is gone.
    pub heartbeat_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self { heartbeat_secs: 2 }
    }
}

impl ClusterSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.heartbeat_secs >= 1,
            "OPENBATCH__CLUSTER__HEARTBEAT_SECS must be at least 1"
        );
        Ok(())
    }
}
