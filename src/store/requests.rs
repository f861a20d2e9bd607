//! The lines of running batches: claimed by any replica under a lease, results written back in
//! bulk, guarded by the lease so a line taken over by another replica cannot be written twice.

use sqlx::{PgConnection, PgPool};

use crate::domain::BatchId;

/// A validated input line ready to be queued.
pub struct NewLine {
    pub line: i32,
    pub custom_id: String,
    pub model: String,
    pub body: String,
}

#[tracing::instrument(skip_all, name = "db.requests.insert")]
pub async fn insert(
    conn: &mut PgConnection,
    batch: &BatchId,
    lines: &[NewLine],
) -> Result<(), sqlx::Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let (mut idx, mut ids, mut models, mut bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for l in lines {
        idx.push(l.line);
        ids.push(l.custom_id.as_str());
        models.push(l.model.as_str());
        bodies.push(l.body.as_str());
    }
    sqlx::query(
        "INSERT INTO batch_requests (batch_id, line, custom_id, model, body)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[])",
    )
    .bind(batch)
    .bind(idx)
    .bind(ids)
    .bind(models)
    .bind(bodies)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedLine {
    pub batch_id: BatchId,
    pub line: i32,
    pub custom_id: String,
    pub model: String,
    pub body: String,
    pub endpoint: String,
    /// How many times the line has been claimed, this claim included.
    pub attempts: i32,
    /// The `traceparent` of the request that created the batch.
    pub trace_context: Option<String>,
}

/// Claims up to `n` pending lines of running batches. `SKIP LOCKED` lets replicas claim side by
/// side without waiting on each other. Lines whose claim lapsed are made pending again by
/// `requeue_lapsed`.
// Runs on every idle poll: traced only at debug level, or idle replicas would flood the collector.
#[tracing::instrument(level = "debug", skip_all, name = "db.requests.claim")]
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    n: usize,
    lease_secs: u64,
) -> Result<Vec<ClaimedLine>, sqlx::Error> {
    sqlx::query_as(
        "WITH picked AS (
            SELECT r.batch_id, r.line FROM batch_requests r
            WHERE r.state = 'pending'
              AND r.batch_id IN (SELECT id FROM batches
                                 WHERE status = 'in_progress' AND expires_at > unix_now())
            ORDER BY r.batch_id, r.line
            LIMIT $2
            FOR UPDATE OF r SKIP LOCKED
        )
        UPDATE batch_requests r
        SET state = 'running', lease_owner = $1, attempts = r.attempts + 1,
            lease_until = now() + make_interval(secs => $3)
        FROM picked p, batches b
        WHERE r.batch_id = p.batch_id AND r.line = p.line AND b.id = r.batch_id
        RETURNING r.batch_id, r.line, r.custom_id, r.model, r.body, b.endpoint, r.attempts,
                  b.trace_context",
    )
    .bind(owner)
    .bind(n as i64)
    .bind(lease_secs as f64)
    .fetch_all(pool)
    .await
}

/// What became of one line.
#[derive(Debug, Clone)]
pub struct Finished {
    pub batch_id: BatchId,
    pub line: i32,
    pub status_code: Option<i32>,
    /// JSON text of the upstream's response body.
    pub response: Option<String>,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Writes results in one statement. Only lines this replica still holds are written, so a
/// line another replica took over (or a cancellation closed) is never written twice.
/// The batches' live counters are not touched here (see `refresh_counts`): every replica
/// flushing into one batch row would serialise on its lock.
#[tracing::instrument(skip_all, name = "db.requests.store_results")]
pub async fn store_results(
    pool: &PgPool,
    owner: &str,
    results: &[Finished],
) -> Result<(), sqlx::Error> {
    let mut cols = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for r in results {
        cols.0.push(r.batch_id.as_str());
        cols.1.push(r.line);
        cols.2.push(r.status_code);
        cols.3.push(r.response.as_deref());
        cols.4.push(r.request_id.as_deref());
        cols.5.push(r.error_code.as_deref());
        cols.6.push(r.error_message.as_deref());
    }
    sqlx::query(
        "UPDATE batch_requests q
         SET state = 'done', status_code = r.status_code, response = r.response::jsonb,
             request_id = r.request_id, error_code = r.error_code, error_message = r.error_message,
             lease_owner = NULL, lease_until = NULL
         FROM UNNEST($2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[])
              AS r(batch_id, line, status_code, response, request_id, error_code, error_message)
         WHERE q.batch_id = r.batch_id AND q.line = r.line
           AND q.state = 'running' AND q.lease_owner = $1",
    )
    .bind(owner)
    .bind(cols.0)
    .bind(cols.1)
    .bind(cols.2)
    .bind(cols.3)
    .bind(cols.4)
    .bind(cols.5)
    .bind(cols.6)
    .execute(pool)
    .await?;
    Ok(())
}

/// Brings the `request_counts` of running batches up to date from their lines. Rows that
/// did not change are not written.
// Runs every second on every replica: traced only at debug level.
#[tracing::instrument(level = "debug", skip_all, name = "db.requests.refresh_counts")]
pub async fn refresh_counts(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batches b SET request_completed = c.completed, request_failed = c.failed
         FROM (
            SELECT r.batch_id,
                   count(*) FILTER (WHERE r.status_code BETWEEN 200 AND 299)::int AS completed,
                   count(*) FILTER (WHERE r.status_code IS NULL OR r.status_code NOT BETWEEN 200 AND 299)::int AS failed
            FROM batch_requests r
            WHERE r.state = 'done'
              AND r.batch_id IN (SELECT id FROM batches WHERE status = 'in_progress')
            GROUP BY r.batch_id
         ) c
         WHERE b.id = c.batch_id AND b.status = 'in_progress'
           AND (b.request_completed, b.request_failed) IS DISTINCT FROM (c.completed, c.failed)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts lines whose claim lapsed (their replica died or hung) back in the queue; returns how many.
#[tracing::instrument(level = "debug", skip_all, name = "db.requests.requeue_lapsed")]
pub async fn requeue_lapsed(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE batch_requests SET state = 'pending', lease_owner = NULL, lease_until = NULL
         WHERE state = 'running' AND lease_until < now()",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Extends every claim this replica holds, on lines and on batch-level work.
// Runs on every idle poll: traced only at debug level, or idle replicas would flood the collector.
#[tracing::instrument(level = "debug", skip_all, name = "db.requests.renew_leases")]
pub async fn renew_leases(pool: &PgPool, owner: &str, lease_secs: u64) -> Result<(), sqlx::Error> {
    let secs = lease_secs as f64;
    sqlx::query(
        "UPDATE batch_requests SET lease_until = now() + make_interval(secs => $2)
         WHERE lease_owner = $1 AND state = 'running'",
    )
    .bind(owner)
    .bind(secs)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE batches SET lease_until = now() + make_interval(secs => $2) WHERE lease_owner = $1",
    )
    .bind(owner)
    .bind(secs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Hands back this replica's unfinished lines and batch-level work at shutdown.
#[tracing::instrument(skip_all, name = "db.requests.release_leases")]
pub async fn release_leases(pool: &PgPool, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batch_requests SET state = 'pending', lease_owner = NULL, lease_until = NULL
         WHERE lease_owner = $1 AND state = 'running'",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// Lines of a cancelled or cancelling batch still being executed under a live claim.
#[tracing::instrument(skip_all, name = "db.requests.running")]
pub async fn running(pool: &PgPool, batch: &BatchId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM batch_requests
         WHERE batch_id = $1 AND state = 'running' AND lease_until >= now()",
    )
    .bind(batch)
    .fetch_one(pool)
    .await
}

/// Ends every unfinished line of a batch with an error (expiry, cancellation). A replica still
/// executing one will find it no longer running and drop its result.
#[tracing::instrument(skip_all, name = "db.requests.close_open")]
pub async fn close_open(
    conn: &mut PgConnection,
    batch: &BatchId,
    code: &str,
    message: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE batch_requests SET state = 'done', error_code = $2, error_message = $3,
                                   lease_owner = NULL, lease_until = NULL
         WHERE batch_id = $1 AND state <> 'done'",
    )
    .bind(batch)
    .bind(code)
    .bind(message)
    .execute(conn)
    .await?
    .rows_affected())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineResult {
    pub line: i32,
    pub custom_id: String,
    pub status_code: Option<i32>,
    pub response: Option<serde_json::Value>,
    pub request_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Finished lines in input order, a page at a time (keyset on `line`).
#[tracing::instrument(skip_all, name = "db.requests.results_page")]
pub async fn results_page(
    conn: &mut PgConnection,
    batch: &BatchId,
    after_line: i32,
    limit: i64,
) -> Result<Vec<LineResult>, sqlx::Error> {
    sqlx::query_as(
        "SELECT line, custom_id, status_code, response, request_id, error_code, error_message
         FROM batch_requests WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3",
    )
    .bind(batch)
    .bind(after_line)
    .bind(limit)
    .fetch_all(conn)
    .await
}
