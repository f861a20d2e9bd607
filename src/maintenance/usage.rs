//! Folds the flushes' usage events into per-minute rollups, and minutes older than
//! [`MINUTE_RETENTION_SECS`] into per-hour ones: what the Usage API keeps grows with the
//! (project, model, key) combinations in use each minute, never with the lines.

use sqlx::PgPool;

use crate::store::usage;

/// Rounds between runs: usage reads count unfolded events too, so folding is only upkeep.
pub const EVERY: u32 = 10;
/// How long usage is kept to the minute (`bucket_width=1m`); past that, to the hour. OpenAI's
/// Usage API pages 1m buckets a day at a time; a month and a bit covers any month's report.
pub const MINUTE_RETENTION_SECS: i64 = 35 * 24 * 3600;

/// Returns the minute rows and the hour rows written.
pub async fn run(pool: &PgPool) -> (u64, u64) {
    match usage::fold(pool, MINUTE_RETENTION_SECS).await {
        Ok(folded) => {
            if folded != (0, 0) {
                tracing::debug!(events = folded.0, minutes = folded.1, "folded usage");
            }
            folded
        }
        Err(e) => {
            tracing::warn!(error = %e, "folding usage failed");
            (0, 0)
        }
    }
}
