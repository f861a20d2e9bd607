//! Reading a running batch's finished lines (`batch_results`) for
//! `GET /v1/batches/{id}/results`, and the order they were served in, kept once it has ended
//! (`batch_live_order`).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;

use crate::domain::BatchId;

/// The advisory-lock namespace (first key of the two-key form, which never meets the one-key
/// locks used elsewhere) of "the result groups of a batch"; the second key is its id's hash.
/// Flushes hold it shared; readers never take it (see `live_page`).
pub const LIVE_LOCK: i32 = 0x0b_11;

/// Groups read per page at most, whatever their size.
const MAX_GROUPS: i64 = 1000;

/// How long a page waits for the flushes in flight when it began. A flush is one statement and
/// takes milliseconds; one that waits this long is stuck behind a lock, and the page then
/// serves nothing new rather than hold its reader.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
const FLUSH_POLL: Duration = Duration::from_millis(20);

/// The lines one flush stored for one chunk, numbered in commit order (see `live_page`).
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub seq: i64,
    /// As `jsonl::group::encode` wrote them.
    pub lines: String,
}

/// A running batch's result groups from `from_seq` on (inclusive), in `seq` order, about
/// `budget` bytes of them (always at least one group when there is any).
///
/// The invariant: a reader resuming after `seq` S never misses a group with `seq` <= S that
/// commits later. `seq` is drawn when a flush writes, but flushes commit in any order: a plain
/// read could see group 12 before group 11 commits, and a reader resuming after 12 would never
/// see 11. So a page only serves groups up to a watermark W below which every group that will
/// ever commit already has:
///
/// 1. W is the last `seq` drawn so far (the sequence's own value, which is not transactional,
///    and which the identity column draws one at a time: no backend holds numbers in advance).
/// 2. Every flush holds a shared advisory lock on its batch from before it draws a `seq` until
///    after its commit is visible. A flush that drew a `seq` <= W drew it before step 1, so it
///    either still holds the lock now — it is among the holders read here — or has committed
///    (or rolled back) already.
/// 3. The page waits for those holders' transactions to end (other flushes, started since,
///    draw numbers above W and are not waited for), then reads in a new snapshot, which sees
///    every group numbered up to W that exists.
///
/// The reader never takes the lock, so it never delays a flush: it waits for the flushes in
/// flight, never the other way round.
#[tracing::instrument(skip_all, name = "db.results.live_page")]
pub async fn live_page(
    pool: &PgPool,
    batch: &BatchId,
    from_seq: i64,
    budget: i64,
) -> Result<Vec<StoredGroup>, sqlx::Error> {
    let Some(watermark) = settled_seq(pool, batch).await? else {
        return Ok(Vec::new());
    };
    if watermark < from_seq {
        return Ok(Vec::new());
    }
    // `octet_length` of a compressed value reads its header only; the groups past the budget
    // are never decompressed. No index on (batch_id, seq): sorting a batch's groups per page
    // is cheaper than one more index write on every flush.
    sqlx::query_as!(
        StoredGroup,
        r#"SELECT seq AS "seq!", lines AS "lines!" FROM (
              SELECT seq, lines,
                     sum(octet_length(lines)) OVER (ORDER BY seq) - octet_length(lines) AS before
              FROM batch_results WHERE batch_id = $1 AND seq >= $2 AND seq <= $5
              ORDER BY seq LIMIT $4
           ) g
           WHERE before < $3 ORDER BY seq"#,
        batch.as_str(),
        from_seq,
        budget,
        MAX_GROUPS,
        watermark,
    )
    .fetch_all(pool)
    .await
}

/// The watermark of `live_page` (steps 1 to 3): the last `seq` drawn, once every flush of
/// `batch` that may have drawn one up to it has ended. `None` when no group was ever stored,
/// or when a flush in flight did not end within [`FLUSH_WAIT`].
async fn settled_seq(pool: &PgPool, batch: &BatchId) -> Result<Option<i64>, sqlx::Error> {
    let drawn = sqlx::query_scalar!(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('batch_results', 'seq')::regclass)"
    )
    .fetch_one(pool)
    .await?;
    let Some(drawn) = drawn else {
        return Ok(None);
    };
    // Read after the sequence (a statement of its own, so in that order). A virtual
    // transaction id names one transaction, never reused for the next.
    let mut in_flight = flushing(pool, batch, None).await?;
    let deadline = Instant::now() + FLUSH_WAIT;
    while !in_flight.is_empty() {
        if Instant::now() >= deadline {
            tracing::warn!(batch_id = %batch, "live results: a flush in flight did not end; serving nothing new");
            return Ok(None);
        }
        tokio::time::sleep(FLUSH_POLL).await;
        in_flight = flushing(pool, batch, Some(&in_flight)).await?;
    }
    Ok(Some(drawn))
}

/// The transactions holding `batch`'s live lock (its flushes in flight), among `among` if given.
async fn flushing(
    pool: &PgPool,
    batch: &BatchId,
    among: Option<&[String]>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT virtualtransaction AS "vxid!" FROM pg_locks
           WHERE locktype = 'advisory' AND classid = ($1::int4)::oid
             AND objid = hashtext($2)::oid AND objsubid = 2 AND granted
             AND ($3::text[] IS NULL OR virtualtransaction = ANY($3))"#,
        LIVE_LOCK,
        batch.as_str(),
        among as Option<&[String]>,
    )
    .fetch_all(pool)
    .await
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
