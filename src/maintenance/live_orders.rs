//! Prunes the kept served orders of batches whose result files are gone.

use sqlx::PgPool;

use crate::store::results;

/// Rounds between runs: each scans all the kept orders, and one lingering a few seconds after
/// its files costs nothing.
pub const EVERY: u32 = 10;
/// Orders pruned per run.
const PER_RUN: i64 = 1000;

/// Returns how many batches' orders were pruned.
pub async fn run(pool: &PgPool) -> u64 {
    match results::prune_live_orders(pool, PER_RUN).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(batches = n, "pruned the live orders of results gone");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "pruning live orders failed");
            0
        }
    }
}
