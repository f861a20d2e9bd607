//! Writing a finished (or cancelled, expired) batch's output and error files in input order,
//! in the transaction that ends it.

use anyhow::Context;
use futures_util::TryStreamExt;

use crate::domain::{BatchStatus, FileId, Purpose, Transition};
use crate::engine::order::Served;
use crate::engine::output::{self, Usage};
use crate::engine::upstream::Outcome;
use crate::engine::Ctx;
use crate::jsonl::{group, queued, LineSplitter, Piece};
use crate::store::chunks::{self, ChunkSummary};
use crate::store::content::{ContentError, NewContent};
use crate::store::files::{NewFile, CHUNK_BYTES};
use crate::store::leases;
use crate::store::leases::{BatchJob, Ending};

/// Chunks read per query while writing result files.
const CHUNK_PAGE: i64 = 64;
/// Result bytes of one chunk held at once while finalizing. A chunk with more (large
/// responses) is written in several passes over its stored results, each keeping one range of
/// its lines, so memory stays bounded by this (plus one line) whatever the responses weigh.
const FINALIZE_BUDGET: usize = 8 << 20;

/// One result file being written inside the finalizing transaction.
struct ResultFile {
    content: NewContent,
    buf: Vec<u8>,
    lines: usize,
}

impl ResultFile {
    fn new(ctx: &Ctx) -> Self {
        Self {
            content: ctx.content.create(),
            buf: Vec::with_capacity(CHUNK_BYTES),
            lines: 0,
        }
    }

    async fn push(
        &mut self,
        conn: &mut sqlx::PgConnection,
        line: &str,
    ) -> Result<(), ContentError> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.lines += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.content.write_chunk(Some(conn), &self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The file's id, or `None` when it would be empty.
    async fn finish(
        mut self,
        conn: &mut sqlx::PgConnection,
        job: &BatchJob,
        kind: &str,
    ) -> Result<Option<FileId>, ContentError> {
        if self.lines == 0 {
            return Ok(None);
        }
        if !self.buf.is_empty() {
            self.content.write_chunk(Some(conn), &self.buf).await?;
        }
        let project = job.project();
        let filename = format!("{}_{kind}.jsonl", job.id);
        let record = self
            .content
            .finish(
                conn,
                NewFile {
                    project: &project,
                    filename: &filename,
                    purpose: Purpose::BatchOutput,
                    expires_after_seconds: job.output_expires_after_seconds,
                },
            )
            .await?;
        Ok(Some(record.id))
    }
}

/// The statuses a batch is finalized from (each `to` only from those `can_become` allows).
const ENDED_FROM: [BatchStatus; 4] = [
    BatchStatus::Validating,
    BatchStatus::InProgress,
    BatchStatus::Finalizing,
    BatchStatus::Cancelling,
];

/// Writes the output and error files in input order and ends the batch, in one transaction
/// that also deletes the batch's work rows: a crash mid-way leaves no file and the batch
/// claimable again. Results are streamed a chunk at a time, so memory is bounded by one
/// chunk's results, not by the batch.
pub(super) async fn finalize(ctx: &Ctx, job: &BatchJob, to: BatchStatus) -> anyhow::Result<()> {
    let unfinished = unfinished(ctx, to);
    let closed = match to {
        // Fences out every replica still running a line of it, in a statement of its own, so
        // no lock that their heartbeats need is held while the files are written.
        BatchStatus::Expired | BatchStatus::Cancelled => {
            chunks::close_open(&ctx.pool, &job.id).await?
        }
        _ => 0,
    };
    let started = std::time::Instant::now();
    let mut tx = ctx.pool.begin().await?;
    let (mut out, mut err) = (ResultFile::new(ctx), ResultFile::new(ctx));
    let mut usage = Usage::default();
    let mut served = Served::default();
    let mut after = -1;
    loop {
        let page = chunks::page(&mut tx, &job.id, after, CHUNK_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.idx;
        for c in &page {
            usage.merge(Usage::from_array(c.usage()));
            let passes = match passes(&mut tx, job, c, &mut served).await? {
                Passes::Whole(range, stored) => vec![(range, Some(stored))],
                Passes::Split(ranges) => ranges.into_iter().map(|r| (r, None)).collect(),
            };
            for (range, stored) in passes {
                let stored = match stored {
                    Some(stored) => stored,
                    None => stored_lines(&mut tx, job, c.idx, &range).await?,
                };
                for (success, line) in chunk_lines(ctx, job, c, range, stored, &unfinished).await? {
                    let file = if success { &mut out } else { &mut err };
                    file.push(&mut tx, &line).await?;
                }
            }
        }
    }
    let (completed, failed) = (out.lines as i32, err.lines as i32);
    let output_file_id = out.finish(&mut tx, job, "output").await?;
    let error_file_id = err.finish(&mut tx, job, "error").await?;
    // Before the groups go: a cursor its readers took from them must still be honoured.
    served.save(&mut tx, &job.id).await?;
    chunks::delete_work(&mut tx, &job.id).await?;
    let ending = Ending {
        change: Transition::from_any(&ENDED_FROM, to),
        output_file_id: output_file_id.as_ref(),
        error_file_id: error_file_id.as_ref(),
        completed,
        failed,
        usage: usage.to_json(),
    };
    if end(ctx, job, tx, ending).await? {
        tracing::info!(
            status = to.as_str(),
            completed,
            failed,
            closed,
            took_ms = started.elapsed().as_millis() as u64,
            "batch finished"
        );
    }
    Ok(())
}

/// The result of a line that has none when the batch ends `to`.
fn unfinished(ctx: &Ctx, to: BatchStatus) -> Outcome {
    match to {
        BatchStatus::Expired => Outcome::Failure {
            code: "batch_expired",
            message: "This request could not be executed before the completion window expired."
                .to_owned(),
        },
        BatchStatus::Cancelled => Outcome::Failure {
            code: "batch_cancelled",
            message: "This request was not executed: the batch was cancelled.".to_owned(),
        },
        // Only a chunk given up (a crash loop, or results the database refused) ends with
        // lines that have no result.
        _ => Outcome::Failure {
            code: "execution_abandoned",
            message: format!(
                "This request was given up without a result: the replicas running its part of the batch stopped {} times in a row, or the database refused to store its results.",
                ctx.settings.max_idle_claims
            ),
        },
    }
}

/// Ends the batch with its files and commits; false (and rolled back) if it moved meanwhile.
async fn end(
    ctx: &Ctx,
    job: &BatchJob,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ending: Ending<'_>,
) -> anyhow::Result<bool> {
    let to = ending.change.to();
    if !leases::end(&mut tx, &job.id, &ctx.owner, ending).await? {
        return Ok(false);
    }
    tx.commit().await?;
    crate::metrics::get()
        .batches_finished
        .with_label_values(&[to.as_str()])
        .inc();
    Ok(true)
}

/// How a chunk is written: whole, with its stored results read by this first pass (one read of
/// them), unless they weigh more than `FINALIZE_BUDGET`; then in ranges of about that many
/// result bytes each, each read again, the first pass having kept only each line's size.
enum Passes {
    Whole(std::ops::Range<i32>, Vec<(i32, bool, String)>),
    Split(Vec<std::ops::Range<i32>>),
}

async fn passes(
    conn: &mut sqlx::PgConnection,
    job: &BatchJob,
    c: &ChunkSummary,
    served: &mut Served,
) -> anyhow::Result<Passes> {
    let all = c.lines.first_line..c.lines.first_line + c.lines.line_count;
    let mut sizes: Vec<(i32, usize)> = Vec::new();
    let mut lines = Vec::new();
    let mut total = 0;
    let mut groups = chunks::results(&mut *conn, &job.id, c.idx);
    while let Some((seq, group)) = groups.try_next().await? {
        served.add(seq, &group)?;
        for stored in group::decode(&group) {
            let s = stored?;
            sizes.push((s.line, s.file_line.len()));
            total += s.file_line.len();
            if total <= FINALIZE_BUDGET {
                lines.push((s.line, s.success, s.file_line.into_owned()));
            }
        }
    }
    if total <= FINALIZE_BUDGET {
        return Ok(Passes::Whole(all, in_order(lines)));
    }
    drop(lines);
    sizes.sort_unstable();
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (all.start, 0);
    for (line, size) in sizes {
        if bytes > 0 && bytes + size > FINALIZE_BUDGET {
            ranges.push(start..line);
            (start, bytes) = (line, 0);
        }
        bytes += size;
    }
    ranges.push(start..all.end);
    Ok(Passes::Split(ranges))
}

/// Stored results by line, a line stored twice (by a claim that lapsed after its flush)
/// counting once.
fn in_order(mut lines: Vec<(i32, bool, String)>) -> Vec<(i32, bool, String)> {
    lines.sort_by_key(|l| l.0);
    lines.dedup_by_key(|l| l.0);
    lines
}

/// The stored results of a chunk's lines in `range`, in input order (see `in_order`).
async fn stored_lines(
    conn: &mut sqlx::PgConnection,
    job: &BatchJob,
    idx: i32,
    range: &std::ops::Range<i32>,
) -> anyhow::Result<Vec<(i32, bool, String)>> {
    let mut lines = Vec::new();
    let mut groups = chunks::results(conn, &job.id, idx);
    while let Some((_, group)) = groups.try_next().await? {
        for stored in group::decode(&group) {
            let s = stored?;
            if range.contains(&s.line) {
                lines.push((s.line, s.success, s.file_line.into_owned()));
            }
        }
    }
    Ok(in_order(lines))
}

/// The file lines of `range` of a chunk in input order, each with whether it belongs in the
/// output file: the `stored` results, and for lines with none (the batch was cancelled or
/// expired first) `unfinished`'s error, which needs their `custom_id` from the input.
async fn chunk_lines(
    ctx: &Ctx,
    job: &BatchJob,
    c: &ChunkSummary,
    range: std::ops::Range<i32>,
    stored: Vec<(i32, bool, String)>,
    unfinished: &Outcome,
) -> anyhow::Result<Vec<(bool, String)>> {
    let mut lines = stored;
    if lines.len() < range.len() {
        let at = &c.lines;
        let input = ctx
            .content
            .read_range(&at.file_id, at.start(), at.end())
            .await?
            .with_context(|| format!("the content of input file {} is missing", at.file_id))?;
        let have: std::collections::HashSet<i32> = lines.iter().map(|l| l.0).collect();
        let mut ordinal = at.first_line;
        let mut missing = Vec::new();
        let mut take = |piece: Piece<'_>| {
            // Never `Err`: see `LineSplitter::default`.
            let raw = piece.unwrap_or_default();
            if raw.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            if range.contains(&ordinal) && !have.contains(&ordinal) {
                let custom_id = queued(raw).map(|v| v.custom_id).unwrap_or_default();
                let line = output::render(job.id.as_str(), ordinal, &custom_id, unfinished);
                missing.push((ordinal, false, line));
            }
            ordinal += 1;
        };
        let mut splitter = LineSplitter::default();
        splitter.feed(&input, &mut take);
        splitter.finish(&mut take);
        lines.extend(missing);
        lines.sort_by_key(|l| l.0);
    }
    Ok(lines.into_iter().map(|(_, s, l)| (s, l)).collect())
}
