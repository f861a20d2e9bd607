//! Batch-level work (validate, finalize, cancel, expire), claimed by one replica at a time
//! under a lease. Every status change is guarded by the expected status and by the claim.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::domain::{BatchId, BatchStatus, Endpoint, FileId, ProjectId, Transition};

/// LISTEN/NOTIFY channel: a batch has chunks to claim (payload: its id).
pub const WORK_CHANNEL: &str = "openbatch_work";
/// LISTEN/NOTIFY channel: a batch is being cancelled (payload: its id).
pub const CANCEL_CHANNEL: &str = "openbatch_cancel";
/// Announces every change of a batch's status (payload: its id), from the trigger of
/// migration 0018, at commit.
pub const STATUS_CHANNEL: &str = "openbatch_batch_status";

#[derive(Debug, Clone)]
pub struct BatchJob {
    pub id: BatchId,
    pub project_id: ProjectId,
    pub status: BatchStatus,
    pub endpoint: Endpoint,
    pub input_file_id: FileId,
    pub cancelling_at: Option<i64>,
    pub output_expires_after_seconds: Option<i64>,
    /// Past `expires_at`, by the database's clock.
    pub expired: bool,
    /// Seconds since cancellation was asked for, by the database's clock.
    pub cancelling_for: Option<i64>,
    /// Claims in a row before this one whose holder vanished without letting go.
    pub lapsed_claims: i32,
    /// Attempts in a row, before this one, whose work failed (see `record_failure`).
    pub failed_attempts: i32,
}

impl BatchJob {
    pub fn project(&self) -> ProjectId {
        self.project_id.clone()
    }
}

/// Claims the oldest batch that needs batch-level work and that no live replica holds:
/// validation, cancellation, a finalization interrupted by a crash, or a running batch that
/// has expired or whose every line is done.
// Runs on every idle poll: traced only at debug level, or idle replicas would flood the collector.
#[tracing::instrument(level = "debug", skip_all, name = "db.jobs.claim")]
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease_secs: u64,
) -> Result<Option<BatchJob>, sqlx::Error> {
    // `unfinished_statuses!()` written out (the query macros take literals only); a unit test
    // in `store` holds the two together.
    sqlx::query_as!(
        BatchJob,
        r#"UPDATE batches SET lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                            lapsed_claims = CASE WHEN lease_owner IS NOT NULL
                                                 THEN lapsed_claims + 1 ELSE 0 END
         WHERE id = (
            SELECT b.id FROM batches b
            WHERE b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
              AND (b.lease_until IS NULL OR b.lease_until < now())
              AND (b.status <> 'in_progress'
                   OR b.expires_at <= unix_now()
                   OR NOT EXISTS (SELECT 1 FROM batch_chunks c
                                  WHERE c.batch_id = b.id AND c.state <> 'done'))
            ORDER BY b.expires_at, b.seq
            LIMIT 1
            FOR UPDATE SKIP LOCKED
         )
         RETURNING id AS "id: BatchId", project_id AS "project_id: ProjectId",
                   status AS "status: BatchStatus", endpoint AS "endpoint: Endpoint",
                   input_file_id AS "input_file_id: FileId", cancelling_at,
                   output_expires_after_seconds, expires_at <= unix_now() AS "expired!",
                   unix_now() - cancelling_at AS cancelling_for, lapsed_claims,
                   failed_attempts"#,
        owner,
        lease_secs as f64,
    )
    .fetch_optional(pool)
    .await
}

/// Gives the job back, not to be picked up again for `secs` (by anyone). A no-op when the
/// claim is no longer ours.
// Runs on every idle poll: traced only at debug level, or idle replicas would flood the collector.
#[tracing::instrument(level = "debug", skip_all, name = "db.jobs.defer")]
pub async fn defer(pool: &PgPool, id: &BatchId, owner: &str, secs: f64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches SET lease_owner = NULL, lease_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2",
        id.as_str(),
        owner,
        secs,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives the job back after its work failed, counting the failure, not to be picked up again
/// for `secs`. A no-op when the claim is no longer ours.
#[tracing::instrument(skip_all, name = "db.jobs.record_failure")]
pub async fn record_failure(
    pool: &PgPool,
    id: &BatchId,
    owner: &str,
    secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches SET lease_owner = NULL, lease_until = now() + make_interval(secs => $3),
                            failed_attempts = failed_attempts + 1
         WHERE id = $1 AND lease_owner = $2",
        id.as_str(),
        owner,
        secs,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// `validating` → `in_progress`: validation queued the chunks.
const START: (&[BatchStatus], BatchStatus) = (&[BatchStatus::Validating], BatchStatus::InProgress);
/// `in_progress` → `finalizing`: every line is done, or the batch is being given up.
const FINALIZE: (&[BatchStatus], BatchStatus) =
    (&[BatchStatus::InProgress], BatchStatus::Finalizing);

/// One of this module's fixed status changes (`every_store_transition_is_allowed` checks that
/// `can_become` allows each).
fn fixed((from, to): (&[BatchStatus], BatchStatus)) -> Transition {
    Transition::new(from, to).expect("a fixed store transition that can_become allows")
}

/// Why a batch is failed, which says from which statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its input file failed validation.
    Validation,
    /// Given up after a crash loop, while validating or writing its result files.
    Abandoned,
}

impl Failure {
    pub const ALL: [Failure; 2] = [Failure::Validation, Failure::Abandoned];

    fn change(self) -> Transition {
        let from: &[BatchStatus] = match self {
            Failure::Validation => &[BatchStatus::Validating],
            Failure::Abandoned => &[BatchStatus::Validating, BatchStatus::Finalizing],
        };
        fixed((from, BatchStatus::Failed))
    }
}

/// `validating` → `in_progress`, in the transaction that queued the chunks; every replica's
/// idle dispatcher is woken when it commits.
#[tracing::instrument(skip_all, name = "db.jobs.start")]
pub async fn start(
    conn: &mut PgConnection,
    id: &BatchId,
    owner: &str,
    model: &str,
    total: i32,
    est_tokens: i64,
) -> Result<bool, sqlx::Error> {
    let change = fixed(START);
    Ok(sqlx::query!(
        "WITH started AS (
            UPDATE batches SET status = $6, in_progress_at = unix_now(), model = $3,
                               request_total = $4, lease_owner = NULL, lease_until = NULL,
                               failed_attempts = 0, est_tokens = $8
            WHERE id = $1 AND lease_owner = $2 AND status = ANY($7)
            RETURNING id
         )
         SELECT pg_notify($5, id) FROM started",
        id.as_str(),
        owner,
        model,
        total,
        WORK_CHANNEL,
        change.to().as_str(),
        &change.from_text() as &[&str],
        est_tokens,
    )
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// → `failed` with OpenAI-style `errors`, from the statuses `why` allows.
#[tracing::instrument(skip_all, name = "db.jobs.fail")]
pub async fn fail<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    id: &BatchId,
    owner: &str,
    errors: Value,
    why: Failure,
) -> Result<bool, sqlx::Error> {
    let change = why.change();
    Ok(sqlx::query!(
        "UPDATE batches SET status = $5, failed_at = unix_now(), errors = $3,
                            lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = ANY($4)",
        id.as_str(),
        owner,
        errors,
        &change.from_text() as &[&str],
        change.to().as_str(),
    )
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// `in_progress` → `finalizing`, visible to clients while the files are written.
#[tracing::instrument(skip_all, name = "db.jobs.begin_finalizing")]
pub async fn begin_finalizing(
    pool: &PgPool,
    id: &BatchId,
    owner: &str,
) -> Result<bool, sqlx::Error> {
    let change = fixed(FINALIZE);
    Ok(sqlx::query!(
        "UPDATE batches SET status = $3, finalizing_at = unix_now()
         WHERE id = $1 AND lease_owner = $2 AND status = ANY($4)",
        id.as_str(),
        owner,
        change.to().as_str(),
        &change.from_text() as &[&str],
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

pub struct Ending<'a> {
    /// To a final status.
    pub change: Transition,
    pub output_file_id: Option<&'a FileId>,
    pub error_file_id: Option<&'a FileId>,
    pub completed: i32,
    pub failed: i32,
    pub usage: Value,
}

/// Moves a batch to its final status with its files, counts and usage, in the transaction
/// that wrote the files. False (and the caller rolls back) if the batch moved meanwhile.
#[tracing::instrument(skip_all, name = "db.jobs.end")]
pub async fn end(
    conn: &mut PgConnection,
    id: &BatchId,
    owner: &str,
    e: Ending<'_>,
) -> Result<bool, sqlx::Error> {
    let stamp = match e.change.to() {
        BatchStatus::Completed => "completed_at",
        BatchStatus::Expired => "expired_at",
        BatchStatus::Cancelled => "cancelled_at",
        BatchStatus::Failed => "failed_at",
        other => unreachable!("{other:?} is not a final status"),
    };
    // Built at run time: the column stamped depends on the final status.
    Ok(sqlx::query(&format!(
        "UPDATE batches SET status = $3, {stamp} = unix_now(), output_file_id = $5, error_file_id = $6,
                            request_completed = $7, request_failed = $8, usage = $9,
                            lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = ANY($4)"
    ))
    .bind(id)
    .bind(owner)
    .bind(e.change.to().as_str())
    .bind(e.change.from_text())
    .bind(e.output_file_id)
    .bind(e.error_file_id)
    .bind(e.completed)
    .bind(e.failed)
    .bind(e.usage)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Extends this replica's claim on a batch's batch-level work.
// Runs every few seconds on every replica: traced only at debug level.
#[tracing::instrument(level = "debug", skip_all, name = "db.jobs.renew")]
pub async fn renew(
    pool: &PgPool,
    id: &BatchId,
    owner: &str,
    lease_secs: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches SET lease_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2",
        id.as_str(),
        owner,
        lease_secs as f64,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Hands back this replica's batch-level work at shutdown.
#[tracing::instrument(skip_all, name = "db.jobs.release")]
pub async fn release(pool: &PgPool, id: &BatchId, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches SET lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2",
        id.as_str(),
        owner,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// How a batch is ended without result files (see `give_up`).
pub struct GiveUp<'a> {
    pub change: Transition,
    /// The claim the batch must still be under; `None` for the maintenance sweep, which ends a
    /// batch whoever holds it.
    pub owner: Option<&'a str>,
    /// OpenAI-style `errors`, saying why.
    pub errors: Value,
}

/// The change `g` makes, without result files, for a batch that cannot be finished: its work failed
/// too often, or it is stuck past its completion window. Its request counts keep what its
/// chunks summed, and its work rows (chunks and stored results) go in the same transaction, so
/// any replica still running a line of it finds its claim gone. False if the batch moved.
#[tracing::instrument(skip_all, name = "db.jobs.give_up")]
pub async fn give_up(pool: &PgPool, id: &BatchId, g: GiveUp<'_>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended = sqlx::query!(
        "UPDATE batches
         SET status = $3,
             failed_at = CASE WHEN $3 = 'failed' THEN unix_now() ELSE failed_at END,
             expired_at = CASE WHEN $3 = 'expired' THEN unix_now() ELSE expired_at END,
             cancelled_at = CASE WHEN $3 = 'cancelled' THEN unix_now() ELSE cancelled_at END,
             errors = $5,
             request_completed = coalesce((SELECT sum(c.completed)::int FROM batch_chunks c
                                           WHERE c.batch_id = $1), request_completed),
             request_failed = coalesce((SELECT sum(c.failed)::int FROM batch_chunks c
                                        WHERE c.batch_id = $1), request_failed),
             lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND status = ANY($2) AND ($4::text IS NULL OR lease_owner = $4)",
        id.as_str(),
        &g.change.from_text() as &[&str],
        g.change.to().as_str(),
        g.owner,
        g.errors,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if ended {
        super::chunks::delete_work(&mut tx, id).await?;
        tx.commit().await?;
    }
    Ok(ended)
}

/// A batch still unfinished `grace_secs` past its completion window.
#[derive(Debug, Clone)]
pub struct Stuck {
    pub id: BatchId,
    pub status: BatchStatus,
}

/// Up to `limit` unfinished batches past their completion window by more than `grace_secs`,
/// oldest first.
#[tracing::instrument(level = "debug", skip_all, name = "db.jobs.stuck")]
pub async fn stuck(pool: &PgPool, grace_secs: i64, limit: i64) -> Result<Vec<Stuck>, sqlx::Error> {
    // `unfinished_statuses!()` written out, as in `claim`.
    sqlx::query_as!(
        Stuck,
        r#"SELECT id AS "id: BatchId", status AS "status: BatchStatus" FROM batches
           WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
             AND expires_at + $1 <= unix_now()
           ORDER BY seq
           LIMIT $2"#,
        grace_secs,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The estimated prompt tokens `project` has enqueued for `model`: what its running batches
/// have not finished of their estimates, each in proportion to its lines not yet done. Takes
/// the (project, model) admission lock to the transaction's end first, so that two replicas
/// queueing batches of one project and model count each other's.
#[tracing::instrument(skip_all, name = "db.jobs.enqueued_tokens")]
pub async fn enqueued_tokens(
    conn: &mut PgConnection,
    project: &ProjectId,
    model: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext('enqueued_tokens'), hashtext($1 || '/' || $2))",
        project.as_str(),
        model,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar!(
        r#"SELECT coalesce(sum(b.est_tokens * greatest(b.request_total - d.done, 0)
                                / greatest(b.request_total, 1)), 0)::bigint AS "enqueued!"
           FROM batches b,
                LATERAL (SELECT coalesce(sum(c.completed + c.failed), 0) AS done
                         FROM batch_chunks c WHERE c.batch_id = b.id) d
           WHERE b.project_id = $1 AND b.model = $2 AND b.status = 'in_progress'
             AND b.est_tokens IS NOT NULL"#,
        project.as_str(),
        model,
    )
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_transition_is_allowed() {
        for (from, to) in [START, FINALIZE] {
            assert!(Transition::new(from, to).is_some(), "{from:?} -> {to:?}");
        }
        for why in Failure::ALL {
            assert_eq!(why.change().to(), BatchStatus::Failed, "{why:?}");
        }
    }
}
