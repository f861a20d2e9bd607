//! Reading a running batch's finished lines (`batch_results`) for
//! `GET /v1/batches/{id}/results`.

use sqlx::PgPool;

use crate::domain::BatchId;

/// The advisory-lock namespace (first key of the two-key form, which never meets the one-key
/// locks used elsewhere) of "the result groups of a batch"; the second key is its id's hash.
pub const LIVE_LOCK: i32 = 0x0b_11;

/// Groups read per page at most, whatever their size.
const MAX_GROUPS: i64 = 1000;

/// The lines one flush stored for one chunk, numbered in commit order (see `live_page`).
#[derive(Debug, Clone, sqlx::FromRow)]
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
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LIVE_LOCK)
        .bind(batch)
        .execute(&mut *tx)
        .await?;
    // `octet_length` of a compressed value reads its header only; the groups past the budget
    // are never decompressed. No index on (batch_id, seq): sorting a batch's groups per page
    // is cheaper than one more index write on every flush.
    let groups = sqlx::query_as(
        "SELECT seq, lines FROM (
            SELECT seq, lines,
                   sum(octet_length(lines)) OVER (ORDER BY seq) - octet_length(lines) AS before
            FROM batch_results WHERE batch_id = $1 AND seq >= $2
            ORDER BY seq LIMIT $4
         ) g
         WHERE before < $3 ORDER BY seq",
    )
    .bind(batch)
    .bind(from_seq)
    .bind(budget)
    .bind(MAX_GROUPS)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(groups)
}
