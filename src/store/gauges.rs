//! What the metrics gauges read of the batches (`crate::metrics`, every refresh): counts and
//! paces of the unfinished ones, through their partial indexes, nothing per line.

use sqlx::PgPool;

/// A running batch's pace: (started, expires_at, lines, lines done), for the behind-schedule
/// gauge. Reads the running batches and their chunks' counters, nothing per line.
#[tracing::instrument(level = "debug", skip_all, name = "db.gauges.running_paces")]
pub async fn running_paces(pool: &PgPool) -> Result<Vec<(i64, i64, i64, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT b.in_progress_at AS "started!", b.expires_at, b.request_total::bigint AS "total!",
                  coalesce(sum(c.completed + c.failed), 0)::bigint AS "done!"
           FROM batches b LEFT JOIN batch_chunks c ON c.batch_id = b.id
           WHERE b.status = 'in_progress' AND b.in_progress_at IS NOT NULL
           GROUP BY b.id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.started, r.expires_at, r.total, r.done))
        .collect())
}

/// Unfinished batches by status, for the metrics gauges (a partial index covers them).
#[tracing::instrument(level = "debug", skip_all, name = "db.gauges.count_unfinished")]
pub async fn count_unfinished_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT status, count(*) AS "count!" FROM batches
           WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
           GROUP BY status"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}
