//! Reading a running batch's finished lines (`batch_results`) for
//! `GET /v1/batches/{id}/results`, and the order they were served in, kept once it has ended
//! (`batch_live_order`).

use sqlx::{PgConnection, PgPool};

use crate::domain::BatchId;

/// The advisory-lock namespace (first key of the two-key form, which never meets the one-key
/// locks used elsewhere) of "the result groups of a batch"; the second key is its id's hash.
pub const LIVE_LOCK: i32 = 0x0b_11;

/// Groups read per page at most, whatever their size.
const MAX_GROUPS: i64 = 1000;

/// The lines one flush stored for one chunk, numbered in commit order (see `live_page`).
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub seq: i64,
    /// As `worker::output::encode` wrote them.
    pub lines: String,
}

/// A running batch's result groups from `from_seq` on (inclusive), in `seq` order, about
/// `budget` bytes of them (always at least one group when there is any).
///
/// `seq` is drawn when a flush writes, but flushes commit in any order: a plain read could see
/// group 12 before group 11 commits, and a reader resuming after 12 would never see 11. Every
/// flush holds a shared advisory lock on its batch from before it draws a `seq` until it
/// commits; this read takes the lock exclusively, so it waits for the flushes in flight and
/// keeps new ones out until it has read. Every group numbered below the highest one read is
/// then visible, and later flushes draw higher numbers.
#[tracing::instrument(skip_all, name = "db.results.live_page")]
pub async fn live_page(
    pool: &PgPool,
    batch: &BatchId,
    from_seq: i64,
    budget: i64,
) -> Result<Vec<StoredGroup>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        LIVE_LOCK,
        batch.as_str(),
    )
    .execute(&mut *tx)
    .await?;
    // `octet_length` of a compressed value reads its header only; the groups past the budget
    // are never decompressed. No index on (batch_id, seq): sorting a batch's groups per page
    // is cheaper than one more index write on every flush.
    let groups = sqlx::query_as!(
        StoredGroup,
        r#"SELECT seq AS "seq!", lines AS "lines!" FROM (
              SELECT seq, lines,
                     sum(octet_length(lines)) OVER (ORDER BY seq) - octet_length(lines) AS before
              FROM batch_results WHERE batch_id = $1 AND seq >= $2
              ORDER BY seq LIMIT $4
           ) g
           WHERE before < $3 ORDER BY seq"#,
        batch.as_str(),
        from_seq,
        budget,
        MAX_GROUPS,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(groups)
}

/// An ended batch's `batch_live_order` row, as stored (see the migration that creates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLiveOrder {
    pub group_seqs: Vec<i64>,
    pub group_starts: Vec<i32>,
    pub ranks: Vec<u8>,
}

/// Keeps the order a batch's lines were served in, in the transaction that ends it. A
/// finalization redone after a crash rewrote nothing, but one redone after a failed commit
/// replaces the row with the same content.
#[tracing::instrument(skip_all, name = "db.results.save_live_order")]
pub async fn save_live_order(
    conn: &mut PgConnection,
    batch: &BatchId,
    order: &StoredLiveOrder,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO batch_live_order (batch_id, group_seqs, group_starts, ranks)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (batch_id) DO UPDATE
         SET group_seqs = $2, group_starts = $3, ranks = $4",
        batch.as_str(),
        &order.group_seqs,
        &order.group_starts,
        &order.ranks,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The order an ended batch's lines were served in while it ran; `None` when it was never
/// kept (nothing was served live, or it ended before this was recorded) or has been pruned.
#[tracing::instrument(skip_all, name = "db.results.live_order")]
pub async fn live_order(
    pool: &PgPool,
    batch: &BatchId,
) -> Result<Option<StoredLiveOrder>, sqlx::Error> {
    sqlx::query_as!(
        StoredLiveOrder,
        "SELECT group_seqs, group_starts, ranks FROM batch_live_order WHERE batch_id = $1",
        batch.as_str(),
    )
    .fetch_optional(pool)
    .await
}

/// Deletes the served orders of batches whose output or error file is gone (deleted, expired
/// or purged): their results cannot be served any more, so neither can their cursors.
#[tracing::instrument(level = "debug", skip_all, name = "db.results.prune_live_orders")]
pub async fn prune_live_orders(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM batch_live_order WHERE batch_id IN (
            SELECT o.batch_id FROM batch_live_order o LEFT JOIN batches b ON b.id = o.batch_id
            WHERE b.id IS NULL OR EXISTS (
                SELECT 1 FROM files f
                WHERE f.id IN (b.output_file_id, b.error_file_id)
                  AND (f.deleted_at IS NOT NULL OR f.purged OR f.expires_at <= unix_now()))
            LIMIT $1)",
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected())
}
