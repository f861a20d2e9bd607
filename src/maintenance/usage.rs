//! Folds the flushes' usage events into per-minute, per-hour and per-day rollups, and deletes
//! minutes older than [`MINUTE_RETENTION_SECS`]: what the Usage API keeps grows with the
//! (project, model, key) combinations in use each minute, never with the lines.

use sqlx::PgPool;

use crate::store::usage;
pub use crate::store::usage::MINUTE_RETENTION_SECS;

/// Rounds between runs: usage reads count unfolded events too, so folding is only upkeep.
pub const EVERY: u32 = 10;

/// Returns the events folded and the minutes deleted.
pub async fn run(pool: &PgPool) -> (u64, u64) {
    match usage::fold(pool, MINUTE_RETENTION_SECS).await {
        Ok(folded) => {
            if folded != (0, 0) {
                tracing::debug!(events = folded.0, old_minutes = folded.1, "folded usage");
            }
            folded
        }
        Err(e) => {
            tracing::warn!(error = %e, "folding usage failed");
            (0, 0)
        }
    }
}
