//! A claimed chunk's lease: renewed by its holder's heartbeat, handed back, given up, taken
//! over once it lapses, or closed when its batch ends early.

use sqlx::PgPool;

use crate::domain::BatchId;

/// A chunk this replica is executing.
#[derive(Debug, Clone)]
pub struct Held {
    pub batch_id: String,
    pub idx: i32,
    pub attempt: i32,
}

#[derive(Debug, Clone)]
pub struct Renewed {
    pub batch_id: BatchId,
    pub idx: i32,
    /// The batch still runs; false once it is being cancelled (finish what is in flight, start
    /// nothing new).
    pub live: bool,
}

/// Extends the leases of exactly the chunks this replica is executing, under their tokens.
/// A chunk missing from the answer was taken over or closed: its work must stop.
// Runs every few seconds on every replica: traced only at debug level.
#[tracing::instrument(level = "debug", skip_all, name = "db.chunks.renew")]
pub async fn renew(
    pool: &PgPool,
    held: &[Held],
    lease_secs: u64,
) -> Result<Vec<Renewed>, sqlx::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = held.iter().map(|h| h.batch_id.as_str()).collect();
    let idx: Vec<i32> = held.iter().map(|h| h.idx).collect();
    let attempt: Vec<i32> = held.iter().map(|h| h.attempt).collect();
    sqlx::query_as!(
        Renewed,
        r#"UPDATE batch_chunks c SET lease_until = now() + make_interval(secs => $4)
           FROM UNNEST($1::text[], $2::int[], $3::int[]) AS h(batch_id, idx, attempt), batches b
           WHERE c.batch_id = h.batch_id AND c.idx = h.idx AND c.attempt = h.attempt
             AND c.state = 'running' AND b.id = c.batch_id
           RETURNING c.batch_id AS "batch_id: BatchId", c.idx,
                     b.status = 'in_progress' AS "live!""#,
        &ids as &[&str],
        &idx,
        &attempt,
        lease_secs as f64,
    )
    .fetch_all(pool)
    .await
}

/// Hands this replica's unfinished chunks back at shutdown; their finished lines stay written.
/// An orderly hand-back is not a claim that failed: it does not count towards a crash loop.
#[tracing::instrument(skip_all, name = "db.chunks.release")]
pub async fn release(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE batch_chunks SET state = 'pending', lease_owner = NULL, lease_until = NULL,
                                 idle_claims = greatest(idle_claims - 1, 0)
         WHERE lease_owner = $1 AND state = 'running'",
        owner,
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Hands one chunk back (nothing more of it will run here), if the claim is still ours. A
/// claim that could not read its input (the bucket or the database unreachable) is handed back
/// `uncounted`: like `release`, not a claim that failed, so an outage never adds up to a crash
/// loop.
#[tracing::instrument(skip_all, name = "db.chunks.release_one")]
pub async fn release_one(pool: &PgPool, held: &Held, uncounted: bool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batch_chunks SET state = 'pending', lease_owner = NULL, lease_until = NULL,
                                 idle_claims = CASE WHEN $4 THEN greatest(idle_claims - 1, 0)
                                                    ELSE idle_claims END
         WHERE batch_id = $1 AND idx = $2 AND attempt = $3 AND state = 'running'",
        held.batch_id,
        held.idx,
        held.attempt,
        uncounted,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a chunk up (a crash loop): it is done, and its lines without a result count as failed
/// — finalization writes them to the error file. Only under the claim's token.
#[tracing::instrument(skip_all, name = "db.chunks.give_up")]
pub async fn give_up(pool: &PgPool, held: &Held) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE batch_chunks SET state = 'done', lease_owner = NULL, lease_until = NULL,
                                 failed = line_count - completed
         WHERE batch_id = $1 AND idx = $2 AND attempt = $3 AND state = 'running'",
        held.batch_id,
        held.idx,
        held.attempt,
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Puts chunks whose claim lapsed (their replica died or hung) back in the queue.
#[tracing::instrument(level = "debug", skip_all, name = "db.chunks.requeue_lapsed")]
pub async fn requeue_lapsed(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE batch_chunks SET state = 'pending', lease_owner = NULL, lease_until = NULL
         WHERE state = 'running' AND lease_until < now()"
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Chunks of a batch being executed under a live claim.
#[tracing::instrument(skip_all, name = "db.chunks.running")]
pub async fn running(pool: &PgPool, batch: &BatchId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM batch_chunks
           WHERE batch_id = $1 AND state = 'running' AND lease_until >= now()"#,
        batch.as_str(),
    )
    .fetch_one(pool)
    .await
}

/// Closes every open chunk of a batch (cancellation, expiry): bumping the token fences out any
/// replica still executing one, so nothing more is written. A short statement of its own, so
/// no lock is held while the files are written.
#[tracing::instrument(skip_all, name = "db.chunks.close_open")]
pub async fn close_open(pool: &PgPool, batch: &BatchId) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE batch_chunks SET state = 'done', attempt = attempt + 1, lease_owner = NULL,
                                 lease_until = NULL
         WHERE batch_id = $1 AND state <> 'done'",
        batch.as_str(),
    )
    .execute(pool)
    .await?
    .rows_affected())
}
