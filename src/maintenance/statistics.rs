//! Analyzes the tables that outgrew their planner statistics, so that a table that filled up
//! fast (a first big batch) is not planned as if it were still empty.

use sqlx::PgPool;

use crate::store::stats;

/// Rounds between runs (each reads only the statistics counters).
pub const EVERY: u32 = 1;

/// Returns the tables analyzed.
pub async fn run(pool: &PgPool) -> Vec<&'static str> {
    match stats::refresh_grown(pool).await {
        Ok(t) if t.is_empty() => t,
        Ok(t) => {
            tracing::info!(tables = ?t, "refreshed planner statistics of grown tables");
            t
        }
        Err(e) => {
            tracing::warn!(error = %e, "refreshing planner statistics failed");
            Vec::new()
        }
    }
}
