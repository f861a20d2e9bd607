//! The heartbeat table: which replicas are alive.

use sqlx::PgPool;

/// The advisory lock the heartbeats take turns on (beside the maintainer's `0x0B0B_A7C4_0001`).
const BEAT_LOCK: i64 = 0x0B0B_A7C4_0002;

/// Records that replica `id` is alive, forgets replicas unseen for `stale_after_secs`, and
/// returns how many are alive, this one included. Beats take turns (a transaction-scoped
/// advisory lock): two replicas starting at once then see each other, one of them at least.
#[tracing::instrument(skip_all, name = "db.replicas.beat")]
pub async fn beat(pool: &PgPool, id: &str, stale_after_secs: f64) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", BEAT_LOCK)
        .execute(&mut *tx)
        .await?;
    // One statement: the CTEs see the table as it was, hence `1 +` for this replica.
    let alive = sqlx::query_scalar!(
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
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(alive)
}

/// An orderly exit: the others take up its share at their next heartbeat.
#[tracing::instrument(skip_all, name = "db.replicas.leave")]
pub async fn leave(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM replicas WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(())
}
