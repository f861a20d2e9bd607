//! Purges the content of deleted and expired files (their rows stay, marked purged).

use sqlx::PgPool;

use crate::store::files;

/// Rounds between runs.
pub const EVERY: u32 = 1;
/// Files purged per run, each in a statement of its own.
const PER_RUN: i64 = 20;

/// Returns how many files were purged.
pub async fn run(pool: &PgPool) -> u64 {
    match files::purge(pool, PER_RUN).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(files = n, "purged the content of deleted or expired files");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "purging file content failed");
            0
        }
    }
}
