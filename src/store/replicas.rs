//! The heartbeat table: which replicas are alive.

use sqlx::PgPool;

/// Records that replica `id` is alive, forgets replicas unseen for `stale_after_secs`, and
/// returns how many are alive, this one included.
#[tracing::instrument(skip_all, name = "db.replicas.beat")]
pub async fn beat(pool: &PgPool, id: &str, stale_after_secs: f64) -> Result<i64, sqlx::Error> {
    // One statement: the CTEs see the table as it was, hence `1 +` for this replica.
    sqlx::query_scalar!(
        r#"WITH up AS (
            INSERT INTO replicas (id, seen_at) VALUES ($1, clock_timestamp())
            ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at
        ), gone AS (
            DELETE FROM replicas
            WHERE id <> $1 AND seen_at < clock_timestamp() - make_interval(secs => $2)
        )
        SELECT 1 + count(*) AS "alive!" FROM replicas
        WHERE id <> $1 AND seen_at >= clock_timestamp() - make_interval(secs => $2)"#,
        id,
        stale_after_secs,
    )
    .fetch_one(pool)
    .await
}

/// An orderly exit: the others take up its share at their next heartbeat.
#[tracing::instrument(skip_all, name = "db.replicas.leave")]
pub async fn leave(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM replicas WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(())
}
