//! Expires uploads not completed within their hour and removes their parts (a request naming
//! one sees it expired at once; this gives the space back).

use sqlx::PgPool;

use crate::store::uploads;

/// Rounds between runs.
pub const EVERY: u32 = 10;
/// Uploads expired per run.
const PER_RUN: i64 = 100;

/// Returns how many uploads were expired.
pub async fn run(pool: &PgPool) -> u64 {
    match uploads::expire(pool, PER_RUN).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(
                uploads = n,
                "expired unfinished uploads and removed their parts"
            );
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "expiring unfinished uploads failed");
            0
        }
    }
}
