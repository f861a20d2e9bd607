//! Batch-level work: validate an input file into queued chunks; write the output and error
//! files of a batch whose lines are all done, cancelled or expired.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use serde_json::{json, Value};

use super::chunking::ChunkPlanner;
use super::order::Served;
use super::output::{self, Usage};
use super::validation::FileCheck;
use super::Ctx;
use crate::domain::{BatchStatus, Endpoint, FileId, Purpose, Transition};
use crate::domain::{LineError, MAX_INPUT_BYTES};
use crate::engine::upstream::Outcome;
use crate::jsonl::{group, queued, LineSplitter, Piece};
use crate::store::chunks::{self, ChunkSummary, NewChunk};
use crate::store::files::{self, FileRecord, NewContent, NewFile, CHUNK_BYTES};
use crate::store::leases::{self, BatchJob, Ending, Failure};
use crate::tasks::{sleep_or_cancelled, CancellationToken};

/// Chunks read per query while writing result files.
const CHUNK_PAGE: i64 = 64;
/// Result bytes of one chunk held at once while finalizing. A chunk with more (large
/// responses) is written in several passes over its stored results, each keeping one range of
/// its lines, so memory stays bounded by this (plus one line) whatever the responses weigh.
const FINALIZE_BUDGET: usize = 8 << 20;

pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let poll = Duration::from_millis(ctx.settings.poll_interval_ms);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match leases::claim(&ctx.pool, &ctx.owner, ctx.settings.lease_secs).await {
            Ok(Some(job)) => {
                let id = job.id.clone();
                *ctx.job.lock().expect("not poisoned") = Some(id.clone());
                // A job that moved the batch on has already let go of it; one that did not
                // (a failure, or a status that changed under it) must let go explicitly,
                // since the heartbeat would otherwise renew the claim forever.
                let outcome = if job.lapsed_claims >= ctx.settings.max_idle_claims as i32 {
                    abandon(&ctx, &job).await
                } else if job.failed_attempts >= ctx.settings.max_job_failures as i32 {
                    super::give_up::failing(&ctx, &job).await
                } else {
                    handle(&ctx, &job).await
                };
                let retry_in = match outcome {
                    Ok(()) => 0.0,
                    Err(e) if job.status == BatchStatus::Validating && is_data_exception(&e) => {
                        // PostgreSQL refused something of the input as data: every retry would
                        // re-read the whole file and fail the same way.
                        tracing::warn!(batch_id = %id, error = format!("{e:#}"), "batch input refused by the database; failing the batch");
                        let error = LineError::file(
                            "invalid_request",
                            Some("input_file_id"),
                            "The input file holds a value that cannot be stored (for example a NUL character, \\u0000, in a string).",
                        );
                        match fail(&ctx, &job, vec![error]).await {
                            Ok(()) => 0.0,
                            Err(_) => 2.0,
                        }
                    }
                    // The database is unreachable or overloaded: no fault of the batch's, not
                    // counted (the stuck-batch sweep still bounds how long this can last).
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(batch_id = %id, error = format!("{e:#}"), "batch job failed; will retry");
                        2.0
                    }
                    Err(e) => {
                        let failures = job.failed_attempts + 1;
                        tracing::warn!(batch_id = %id, error = format!("{e:#}"), failures,
                                       "batch job failed; will retry");
                        // Counted, so that a failure that recurs every time ends the batch after
                        // `max_job_failures` of them, whichever replicas try (see
                        // `give_up::failing`); backing off meanwhile.
                        let retry_in = 2.0 * 2_f64.powi(job.failed_attempts.clamp(0, 5));
                        if let Err(e) =
                            leases::record_failure(&ctx.pool, &id, &ctx.owner, retry_in).await
                        {
                            tracing::warn!(batch_id = %id, error = %e, "could not record a batch job's failure");
                        }
                        retry_in
                    }
                };
                // A no-op after `record_failure`, which let go already.
                if let Err(e) = leases::defer(&ctx.pool, &id, &ctx.owner, retry_in).await {
                    tracing::warn!(batch_id = %id, error = %e, "could not release a batch claim; it will lapse");
                }
                *ctx.job.lock().expect("not poisoned") = None;
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = ctx.wake_jobs.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming batch work failed");
                if sleep_or_cancelled(&stop, poll * 4).await {
                    return;
                }
            }
        }
    }
}

/// A database error anywhere in the error's chain that a later try may not meet (see
/// `crate::error::is_transient`).
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .any(crate::error::is_transient)
}

/// A data exception (SQLSTATE 22xxx) anywhere in the error's chain.
fn is_data_exception(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .any(crate::error::is_data_exception)
}

async fn handle(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<()> {
    let span = tracing::info_span!("batch_job", batch_id = %job.id, status = job.status.as_str());
    let _enter = span.enter();
    match job.status {
        BatchStatus::Validating if job.expired => finalize(ctx, job, BatchStatus::Expired).await,
        BatchStatus::Validating => validate(ctx, job).await,
        BatchStatus::InProgress if job.expired => finalize(ctx, job, BatchStatus::Expired).await,
        BatchStatus::InProgress => {
            if leases::begin_finalizing(&ctx.pool, &job.id, &ctx.owner).await? {
                finalize(ctx, job, BatchStatus::Completed).await
            } else {
                Ok(())
            }
        }
        // A finalization interrupted by a crash: redo it, it writes the same files.
        BatchStatus::Finalizing => finalize(ctx, job, BatchStatus::Completed).await,
        BatchStatus::Cancelling => {
            let grace = ctx.settings.cancel_grace_secs as i64;
            let in_flight = chunks::running(&ctx.pool, &job.id).await?;
            if in_flight > 0 && job.cancelling_for.unwrap_or(i64::MAX) < grace {
                // Let the lines in flight land in the output file; look again shortly.
                leases::defer(&ctx.pool, &job.id, &ctx.owner, 0.5).await?;
                return Ok(());
            }
            finalize(ctx, job, BatchStatus::Cancelled).await
        }
        other => anyhow::bail!("claimed a batch in status {other:?}"),
    }
}

/// Gives a batch up whose batch-level work keeps losing its replica (every holder vanished
/// without letting go, `max_idle_claims` times in a row): whatever kills them would kill the next
/// one too. A batch being cancelled is left to its cancellation.
async fn abandon(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<()> {
    tracing::error!(batch_id = %job.id, claims = job.lapsed_claims, status = job.status.as_str(),
                    "giving a batch up: its batch-level work keeps losing its replica");
    match job.status {
        BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {}
        _ => return handle(ctx, job).await,
    }
    if job.status == BatchStatus::InProgress
        && !leases::begin_finalizing(&ctx.pool, &job.id, &ctx.owner).await?
    {
        return Ok(());
    }
    let error = LineError::file(
        "batch_abandoned",
        None,
        format!(
            "The batch was given up: the replicas working on it stopped {} times in a row without finishing ({}).",
            job.lapsed_claims,
            if job.status == BatchStatus::Validating { "validation" } else { "writing its result files" }
        ),
    );
    let mut tx = ctx.pool.begin().await?;
    chunks::delete_work(&mut tx, &job.id).await?;
    if leases::fail(
        &mut *tx,
        &job.id,
        &ctx.owner,
        errors_object(vec![error]),
        Failure::Abandoned,
    )
    .await?
    {
        tx.commit().await?;
        crate::metrics::get()
            .batches_finished
            .with_label_values(&["failed"])
            .inc();
    }
    Ok(())
}

pub(super) fn errors_object(errors: Vec<LineError>) -> Value {
    json!({"object": "list", "data": errors})
}

async fn fail(ctx: &Ctx, job: &BatchJob, errors: Vec<LineError>) -> anyhow::Result<()> {
    tracing::info!(errors = errors.len(), "batch failed validation");
    if leases::fail(
        &ctx.pool,
        &job.id,
        &ctx.owner,
        errors_object(errors),
        Failure::Validation,
    )
    .await?
    {
        crate::metrics::get()
            .batches_finished
            .with_label_values(&["failed"])
            .inc();
    }
    Ok(())
}

/// Streams the input file once: checks every line and queues the valid ones, all in one
/// transaction that also moves the batch to `in_progress`, so a crash leaves it `validating`.
async fn validate(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let endpoint = job.endpoint;
    let file = match input_file(ctx, job).await? {
        Ok(file) => file,
        Err(error) => return fail(ctx, job, vec![error]).await,
    };
    let mut scan = InputScan::new(ctx, endpoint);
    scan.read(ctx, &file.id).await?;
    let InputScan { planner, lines } = scan;
    let mut check = lines.check;
    let total = check.requests;
    if check.errors.is_empty() {
        let unknown = ctx.upstreams.unknown_models(check.models()).await;
        check.errors.extend(unknown);
    }
    match check.finish() {
        Err(errors) => fail(ctx, job, errors).await,
        Ok(model) => queue(ctx, job, &file.id, &planner.chunks, &model, total, started).await,
    }
}

/// Queues the chunks of a file that passed and moves the batch to `in_progress`, at once.
async fn queue(
    ctx: &Ctx,
    job: &BatchJob,
    file: &FileId,
    planned: &[NewChunk],
    model: &str,
    total: usize,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let total = i32::try_from(total).context("request count")?;
    let mut tx = ctx.pool.begin().await?;
    chunks::insert(&mut tx, &job.id, file.as_str(), planned).await?;
    if leases::start(&mut tx, &job.id, &ctx.owner, model, total).await? {
        tx.commit().await?;
        tracing::info!(
            requests = total,
            chunks = planned.len(),
            %model,
            took_ms = started.elapsed().as_millis() as u64,
            "batch validated"
        );
    }
    // Otherwise the batch was cancelled meanwhile: the rollback drops the chunks.
    Ok(())
}

/// The batch's input file, or the error that fails the batch before a line is read.
async fn input_file(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<Result<FileRecord, LineError>> {
    let file_error = |code, message| LineError::file(code, Some("input_file_id"), message);
    let missing = || {
        file_error(
            "invalid_request",
            format!("Cannot find file {}.", job.input_file_id),
        )
    };
    // Another project's file is, for this batch, a file that does not exist.
    let Some(file) = files::get(&ctx.pool, &job.project(), &job.input_file_id).await? else {
        return Ok(Err(missing()));
    };
    if file.purpose != Purpose::Batch {
        return Ok(Err(file_error(
            "invalid_request",
            format!(
                "File {} has purpose '{}'; a batch's input file must have purpose 'batch'.",
                file.id,
                file.purpose.as_str()
            ),
        )));
    }
    if file.bytes as u64 > MAX_INPUT_BYTES {
        return Ok(Err(file_error(
            "file_too_large",
            format!("The input file is larger than the {MAX_INPUT_BYTES}-byte limit for a batch."),
        )));
    }
    Ok(Ok(file))
}

/// One pass over an input file: every line is checked and placed in a chunk. The checks are
/// a field apart from the planner so that the planner's callback can borrow them while the
/// planner itself is borrowed.
struct InputScan {
    planner: ChunkPlanner,
    lines: NumberedCheck,
}

/// The file-level checks, fed the lines in order.
struct NumberedCheck {
    check: FileCheck,
    /// The number of the last line seen, blank ones included, as errors name lines.
    line_no: usize,
}

impl NumberedCheck {
    fn take(&mut self, piece: Piece<'_>) {
        self.line_no += 1;
        self.check.piece(piece, self.line_no);
    }
}

impl InputScan {
    fn new(ctx: &Ctx, endpoint: Endpoint) -> Self {
        Self {
            planner: ChunkPlanner::new(
                ctx.settings.chunk_lines,
                ctx.settings.chunk_bytes,
                ctx.batches.max_line_bytes,
            ),
            lines: NumberedCheck {
                check: FileCheck::new(endpoint),
                line_no: 0,
            },
        }
    }

    /// Reads the file's stored parts in order, stopping early once the batch is sure to fail.
    async fn read(&mut self, ctx: &Ctx, file: &FileId) -> anyhow::Result<()> {
        for idx in 0.. {
            let Some(part) = files::chunk(&ctx.pool, file, idx).await? else {
                break;
            };
            self.planner
                .feed(idx, &part, |piece| self.lines.take(piece));
            if self.lines.check.is_saturated() {
                // The batch fails; enough problems are reported already.
                break;
            }
        }
        self.planner.finish(|piece| self.lines.take(piece));
        Ok(())
    }
}

/// One result file being written inside the finalizing transaction.
struct ResultFile {
    content: NewContent,
    buf: Vec<u8>,
    lines: usize,
}

impl ResultFile {
    fn new() -> Self {
        Self {
            content: NewContent::new(),
            buf: Vec::with_capacity(CHUNK_BYTES),
            lines: 0,
        }
    }

    async fn push(&mut self, conn: &mut sqlx::PgConnection, line: &str) -> Result<(), sqlx::Error> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.lines += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.content.write_chunk(conn, &self.buf).await?;
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
    ) -> Result<Option<FileId>, sqlx::Error> {
        if self.lines == 0 {
            return Ok(None);
        }
        if !self.buf.is_empty() {
            self.content.write_chunk(conn, &self.buf).await?;
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

/// Writes the output and error files in input order and ends the batch, in one transaction
/// that also deletes the batch's work rows: a crash mid-way leaves no file and the batch
/// claimable again. Results are streamed a chunk at a time, so memory is bounded by one
/// chunk's results, not by the batch.
async fn finalize(ctx: &Ctx, job: &BatchJob, to: BatchStatus) -> anyhow::Result<()> {
    let unfinished = match to {
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
    };
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
    let (mut out, mut err) = (ResultFile::new(), ResultFile::new());
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
    let ended = leases::end(
        &mut tx,
        &job.id,
        &ctx.owner,
        Ending {
            change: Transition::from_any(
                &[
                    BatchStatus::Validating,
                    BatchStatus::InProgress,
                    BatchStatus::Finalizing,
                    BatchStatus::Cancelling,
                ],
                to,
            ),
            output_file_id: output_file_id.as_ref(),
            error_file_id: error_file_id.as_ref(),
            completed,
            failed,
            usage: usage.to_json(),
        },
    )
    .await?;
    if ended {
        tx.commit().await?;
        crate::metrics::get()
            .batches_finished
            .with_label_values(&[to.as_str()])
            .inc();
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
        let input = files::read_range(&ctx.pool, &at.file_id, at.start(), at.end())
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
