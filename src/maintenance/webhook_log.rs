//! Prunes finished webhook deliveries older than `webhooks.log_retention_secs` from the
//! delivery log (pending ones are never pruned).

use sqlx::PgPool;

use crate::store::webhooks;

/// Rounds between runs.
pub const EVERY: u32 = 1;
/// Deliveries pruned per run.
const PER_RUN: i64 = 1000;

/// Returns how many deliveries were pruned.
pub async fn run(pool: &PgPool, retention_secs: u64) -> u64 {
    match webhooks::prune(pool, retention_secs as f64, PER_RUN).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(deliveries = n, "pruned old webhook deliveries from the log");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "pruning the webhook delivery log failed");
            0
        }
    }
}
