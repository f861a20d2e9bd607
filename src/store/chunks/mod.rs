//! The work of running batches: chunks of consecutive input lines, claimed by any replica under
//! a lease and a fencing token, and the groups of results written back for them. PostgreSQL
//! does a constant amount of work per chunk and per flush, never per line.

mod leases;

use sqlx::{PgConnection, PgPool};

use crate::domain::{BatchId, Endpoint, FileId, ProjectId};

pub use leases::{
    close_open, give_up, release, release_one, renew, requeue_lapsed, running, Held, Renewed,
};

/// Lines are addressed by byte position in a file's content: (part index, offset in that part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub part: i32,
    pub offset: i32,
}

/// A chunk found by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChunk {
    pub start: Position,
    /// Exclusive.
    pub end: Position,
    pub first_line: i32,
    pub line_count: i32,
}

/// Queues a validated batch's chunks, all read from `file_id`.
#[tracing::instrument(skip_all, name = "db.chunks.insert")]
pub async fn insert(
    conn: &mut PgConnection,
    batch: &BatchId,
    file_id: &str,
    chunks: &[NewChunk],
) -> Result<(), sqlx::Error> {
    let mut cols: [Vec<i32>; 6] = Default::default();
    for c in chunks {
        for (col, v) in cols.iter_mut().zip([
            c.start.part,
            c.start.offset,
            c.end.part,
            c.end.offset,
            c.first_line,
            c.line_count,
        ]) {
            col.push(v);
        }
    }
    let [sp, so, ep, eo, first, count] = cols;
    sqlx::query!(
        "INSERT INTO batch_chunks (batch_id, idx, project_id, batch_seq, file_id, start_part,
                                   start_offset, end_part, end_offset, first_line, line_count)
         SELECT b.id, c.ord - 1, b.project_id, b.seq, $2, c.sp, c.so, c.ep, c.eo, c.first, c.n
         FROM batches b,
              UNNEST($3::int[], $4::int[], $5::int[], $6::int[], $7::int[], $8::int[])
                  WITH ORDINALITY AS c(sp, so, ep, eo, first, n, ord)
         WHERE b.id = $1",
        batch.as_str(),
        file_id,
        &sp,
        &so,
        &ep,
        &eo,
        &first,
        &count,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Where a chunk's lines are, and which lines of the batch they are.
#[derive(Debug, Clone)]
pub struct Lines {
    pub file_id: FileId,
    pub start_part: i32,
    pub start_offset: i32,
    pub end_part: i32,
    pub end_offset: i32,
    /// The ordinal of its first request in the batch.
    pub first_line: i32,
    pub line_count: i32,
}

#[derive(Debug, Clone)]
pub struct ClaimedChunk {
    pub batch_id: BatchId,
    pub project_id: ProjectId,
    pub idx: i32,
    /// The fencing token every write of this claim must carry.
    pub attempt: i32,
    /// Claims in a row, this one included, that stored no result of the chunk.
    pub idle_claims: i32,
    pub lines: Lines,
    pub endpoint: Endpoint,
    /// The `traceparent` of the request that created the batch.
    pub trace_context: Option<String>,
}

impl Lines {
    pub fn start(&self) -> Position {
        Position {
            part: self.start_part,
            offset: self.start_offset,
        }
    }

    pub fn end(&self) -> Position {
        Position {
            part: self.end_part,
            offset: self.end_offset,
        }
    }
}

/// Claims the next pending chunk: from the project with the fewest estimated tokens in flight
/// (its running chunks' lines not yet done; round robin among equals, the project served
/// longest ago first), its batch with the earliest deadline first (a `1h` batch before a `24h` one
/// created earlier; the oldest first among equal deadlines), in line order. `SKIP LOCKED` lets replicas claim side by
/// side; the claim bumps the chunk's fencing token. Chunks of the `except` projects are left
/// alone (a busy replica looks only for other projects' work).
// Runs on every idle poll: traced only at debug level, or idle replicas would flood the collector.
#[tracing::instrument(level = "debug", skip_all, name = "db.chunks.claim")]
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease_secs: u64,
    except: &[String],
) -> Result<Option<ClaimedChunk>, sqlx::Error> {
    let claimed = sqlx::query!(
        r#"WITH in_flight AS (
            -- Each project's estimated tokens at the upstreams now: its running chunks' lines
            -- not yet done, at their batch's tokens a line (a few rows: the chunks held).
            SELECT r.project_id,
                   sum(coalesce(rb.est_tokens, rb.request_total)
                       * greatest(r.line_count - r.completed - r.failed, 0)
                       / greatest(rb.request_total, 1)) AS tokens
            FROM batch_chunks r JOIN batches rb ON rb.id = r.batch_id
            WHERE r.state = 'running'
            GROUP BY r.project_id
        ), pick AS (
            SELECT c.batch_id, c.idx, c.project_id
            FROM batch_chunks c
            JOIN projects p ON p.id = c.project_id
            JOIN batches b ON b.id = c.batch_id
            LEFT JOIN in_flight f ON f.project_id = c.project_id
            WHERE c.state = 'pending' AND b.status = 'in_progress' AND b.expires_at > unix_now()
              AND c.project_id <> ALL($3)
            ORDER BY coalesce(f.tokens, 0), p.served_at NULLS FIRST, b.expires_at, c.batch_seq,
                     c.idx
            LIMIT 1
            FOR UPDATE OF c SKIP LOCKED
        ), served AS (
            UPDATE projects SET served_at = clock_timestamp()
            WHERE id = (SELECT project_id FROM pick)
        )
        UPDATE batch_chunks c
        SET state = 'running', attempt = c.attempt + 1, lease_owner = $1,
            lease_until = now() + make_interval(secs => $2),
            idle_claims = CASE WHEN c.completed + c.failed > c.progress_mark THEN 1
                               ELSE c.idle_claims + 1 END,
            progress_mark = c.completed + c.failed
        FROM pick, batches b
        WHERE c.batch_id = pick.batch_id AND c.idx = pick.idx AND b.id = c.batch_id
        RETURNING c.batch_id AS "batch_id: BatchId", c.project_id AS "project_id: ProjectId",
                  c.idx, c.attempt, c.idle_claims, c.file_id AS "file_id: FileId", c.start_part,
                  c.start_offset, c.end_part, c.end_offset, c.first_line, c.line_count,
                  b.endpoint AS "endpoint: Endpoint", b.trace_context"#,
        owner,
        lease_secs as f64,
        except,
    )
    .fetch_optional(pool)
    .await?;
    Ok(claimed.map(|r| ClaimedChunk {
        batch_id: r.batch_id,
        project_id: r.project_id,
        idx: r.idx,
        attempt: r.attempt,
        idle_claims: r.idle_claims,
        lines: Lines {
            file_id: r.file_id,
            start_part: r.start_part,
            start_offset: r.start_offset,
            end_part: r.end_part,
            end_offset: r.end_offset,
            first_line: r.first_line,
            line_count: r.line_count,
        },
        endpoint: r.endpoint,
        trace_context: r.trace_context,
    }))
}

/// The result groups already written for a chunk, as (`seq`, lines as stored: see
/// `Group::lines`), one row at a time: a chunk's results may weigh far more than a replica
/// should hold.
pub fn results<'c, E>(
    conn: E,
    batch: &'c BatchId,
    idx: i32,
) -> futures_util::stream::BoxStream<'c, Result<(i64, String), sqlx::Error>>
where
    E: sqlx::PgExecutor<'c> + 'c,
{
    use futures_util::{StreamExt, TryStreamExt};
    sqlx::query!(
        "SELECT seq, lines FROM batch_results WHERE batch_id = $1 AND chunk_idx = $2 ORDER BY seq",
        batch.as_str(),
        idx,
    )
    .fetch(conn)
    .map_ok(|r| (r.seq, r.lines))
    .boxed()
}

/// The results of one flush for one claimed chunk.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub batch_id: String,
    pub idx: i32,
    pub attempt: i32,
    pub completed: i32,
    pub failed: i32,
    /// Each finished line as `"<line>\t<o|e>\t<file line JSON>\n"`, `o` for the output file.
    pub lines: String,
    /// Token usage of the successful lines: input, cached, output, reasoning, total.
    pub usage: [i64; 5],
}

/// What became of a group.
#[derive(Debug, Clone)]
pub struct Flushed {
    pub batch_id: BatchId,
    pub idx: i32,
    /// The chunk has a result for every line now.
    pub done: bool,
}

/// Writes result groups and the chunks' live counters in one statement. A group whose claim is
/// no longer current (lapsed and taken over, or closed by a cancellation or expiry) is not
/// written and is missing from the answer.
#[tracing::instrument(skip_all, name = "db.chunks.flush")]
pub async fn flush(pool: &PgPool, groups: &[Group]) -> Result<Vec<Flushed>, sqlx::Error> {
    let mut ids = Vec::with_capacity(groups.len());
    let mut ints: [Vec<i32>; 4] = Default::default();
    let mut usage: [Vec<i64>; 5] = Default::default();
    let mut lines = Vec::with_capacity(groups.len());
    for g in groups {
        ids.push(g.batch_id.as_str());
        for (col, v) in ints
            .iter_mut()
            .zip([g.idx, g.attempt, g.completed, g.failed])
        {
            col.push(v);
        }
        for (col, v) in usage.iter_mut().zip(g.usage) {
            col.push(v);
        }
        lines.push(g.lines.as_str());
    }
    let [idx, attempt, completed, failed] = ints;
    let [it, ct, ot, rt, tt] = usage;
    sqlx::query_as!(
        Flushed,
        r#"WITH g AS (
            SELECT g.* FROM UNNEST($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::text[],
                                   $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[])
                AS g(batch_id, idx, attempt, completed, failed, lines, it, ct, ot, rt, tt),
                -- Held to commit, taken before the group's `seq` is drawn: see `results::live_page`.
                LATERAL (SELECT pg_advisory_xact_lock_shared($12, hashtext(g.batch_id))) lk
        ), upd AS (
            UPDATE batch_chunks c
            SET completed = c.completed + g.completed, failed = c.failed + g.failed,
                input_tokens = c.input_tokens + g.it, cached_tokens = c.cached_tokens + g.ct,
                output_tokens = c.output_tokens + g.ot,
                reasoning_tokens = c.reasoning_tokens + g.rt,
                total_tokens = c.total_tokens + g.tt,
                state = CASE WHEN c.completed + c.failed + g.completed + g.failed >= c.line_count
                             THEN 'done' ELSE c.state END,
                lease_owner = CASE WHEN c.completed + c.failed + g.completed + g.failed >= c.line_count
                                   THEN NULL ELSE c.lease_owner END
            FROM g
            WHERE c.batch_id = g.batch_id AND c.idx = g.idx AND c.attempt = g.attempt
              AND c.state = 'running'
            RETURNING c.batch_id, c.idx, c.state = 'done' AS done, g.lines
        ), ins AS (
            INSERT INTO batch_results (batch_id, chunk_idx, lines)
            SELECT batch_id, idx, lines FROM upd WHERE lines <> ''
        ), used AS (
            -- Usage as the lines are stored, insert-only (migration 0020).
            INSERT INTO usage_events (project_id, endpoint, model, api_key_id, requests,
                                      input_tokens, cached_tokens, output_tokens)
            SELECT b.project_id, b.endpoint, coalesce(b.model, ''), b.api_key_id, g.completed,
                   g.it, g.ct, g.ot
            FROM upd JOIN g ON g.batch_id = upd.batch_id AND g.idx = upd.idx
                     JOIN batches b ON b.id = upd.batch_id
            WHERE g.completed > 0
        )
        SELECT batch_id AS "batch_id!: BatchId", idx AS "idx!", done AS "done!" FROM upd"#,
        &ids as &[&str],
        &idx,
        &attempt,
        &completed,
        &failed,
        &lines as &[&str],
        &it,
        &ct,
        &ot,
        &rt,
        &tt,
        super::results::LIVE_LOCK,
    )
    .fetch_all(pool)
    .await
}

/// A chunk as finalization sees it.
#[derive(Debug, Clone)]
pub struct ChunkSummary {
    pub idx: i32,
    pub lines: Lines,
    pub completed: i32,
    pub failed: i32,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
}

impl ChunkSummary {
    /// Token usage of its successful lines: input, cached, output, reasoning, total.
    pub fn usage(&self) -> [i64; 5] {
        [
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.total_tokens,
        ]
    }
}

/// A batch's chunks in order, a page at a time (keyset on `idx`).
#[tracing::instrument(skip_all, name = "db.chunks.page")]
pub async fn page(
    conn: &mut PgConnection,
    batch: &BatchId,
    after_idx: i32,
    limit: i64,
) -> Result<Vec<ChunkSummary>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT idx, file_id AS "file_id: FileId", start_part, start_offset, end_part,
                  end_offset, first_line, line_count, completed, failed, input_tokens,
                  cached_tokens, output_tokens, reasoning_tokens, total_tokens
           FROM batch_chunks WHERE batch_id = $1 AND idx > $2 ORDER BY idx LIMIT $3"#,
        batch.as_str(),
        after_idx,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ChunkSummary {
            idx: r.idx,
            lines: Lines {
                file_id: r.file_id,
                start_part: r.start_part,
                start_offset: r.start_offset,
                end_part: r.end_part,
                end_offset: r.end_offset,
                first_line: r.first_line,
                line_count: r.line_count,
            },
            completed: r.completed,
            failed: r.failed,
            input_tokens: r.input_tokens,
            cached_tokens: r.cached_tokens,
            output_tokens: r.output_tokens,
            reasoning_tokens: r.reasoning_tokens,
            total_tokens: r.total_tokens,
        })
        .collect())
}

/// Drops a batch's work rows, in the transaction that writes its files.
#[tracing::instrument(skip_all, name = "db.chunks.delete_work")]
pub async fn delete_work(conn: &mut PgConnection, batch: &BatchId) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM batch_results WHERE batch_id = $1",
        batch.as_str()
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM batch_chunks WHERE batch_id = $1",
        batch.as_str()
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Lines not yet finished, by chunk state (`pending`, `running`), for the metrics.
pub async fn queue_depth(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT state, sum(line_count - completed - failed)::int8 AS "lines!" FROM batch_chunks
           WHERE state <> 'done' GROUP BY state"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.lines)).collect())
}
