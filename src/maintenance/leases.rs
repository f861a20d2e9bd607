//! Requeues chunks whose claim lapsed (their replica died or stalled), so another replica takes
//! them over at once rather than waiting for their batch's window to end.

use sqlx::PgPool;

use crate::store::chunks;

/// Rounds between runs: a lapsed chunk is work no replica is doing.
pub const EVERY: u32 = 1;

/// Returns how many chunks went back to the queue.
pub async fn run(pool: &PgPool) -> u64 {
    match chunks::requeue_lapsed(pool).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(chunks = n, "requeued chunks whose claim lapsed");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "requeueing lapsed chunks failed");
            0
        }
    }
}
