//! Batch-level work: validate an input file into queued lines; write the output and error
//! files of a batch whose lines are all done, cancelled or expired.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::output::{self, Usage};
use super::validate::{FileCheck, LineError, MAX_INPUT_BYTES};
use super::{sleep_or_stop, Ctx};
use crate::domain::{BatchStatus, Endpoint, FileId, Purpose};
use crate::store::files::{self, NewContent, NewFile, CHUNK_BYTES};
use crate::store::jobs::{self, BatchJob, Ending};
use crate::store::requests::{self, NewLine};

/// Lines queued per INSERT while validating.
const INSERT_ROWS: usize = 1000;
/// Lines read per query while writing result files.
const RESULT_PAGE: i64 = 2000;

pub(super) async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(ctx.settings.poll_interval_ms);
    loop {
        if *stop.borrow() {
            return;
        }
        match jobs::claim(&ctx.pool, &ctx.owner, ctx.settings.lease_secs).await {
            Ok(Some(job)) => {
                let id = job.id.clone();
                // A job that moved the batch on has already let go of it; one that did not
                // (a failure, or a status that changed under it) must let go explicitly,
                // since the heartbeat would otherwise renew the claim forever.
                let retry_in = match handle(&ctx, job).await {
                    Ok(()) => 0.0,
                    Err(e) => {
                        tracing::warn!(batch_id = %id, error = format!("{e:#}"), "batch job failed; will retry");
                        2.0
                    }
                };
                if let Err(e) = jobs::defer(&ctx.pool, &id, &ctx.owner, retry_in).await {
                    tracing::warn!(batch_id = %id, error = %e, "could not release a batch claim; it will lapse");
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = ctx.wake_jobs.notified() => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming batch work failed");
                if sleep_or_stop(&mut stop, poll * 4).await {
                    return;
                }
            }
        }
    }
}

async fn handle(ctx: &Ctx, job: BatchJob) -> anyhow::Result<()> {
    let span = tracing::info_span!("batch_job", batch_id = %job.id, status = job.status.as_str());
    let _enter = span.enter();
    match job.status {
        BatchStatus::Validating if job.expired => finalize(ctx, &job, BatchStatus::Expired).await,
        BatchStatus::Validating => validate(ctx, &job).await,
        BatchStatus::InProgress if job.expired => finalize(ctx, &job, BatchStatus::Expired).await,
        BatchStatus::InProgress => {
            if jobs::begin_finalizing(&ctx.pool, &job.id, &ctx.owner).await? {
                finalize(ctx, &job, BatchStatus::Completed).await
            } else {
                Ok(())
            }
        }
        // A finalization interrupted by a crash: redo it, it writes the same files.
        BatchStatus::Finalizing => finalize(ctx, &job, BatchStatus::Completed).await,
        BatchStatus::Cancelling => {
            let grace = ctx.settings.cancel_grace_secs as i64;
            let in_flight = requests::running(&ctx.pool, &job.id).await?;
            if in_flight > 0 && job.cancelling_for.unwrap_or(i64::MAX) < grace {
                // Let the lines in flight land in the output file; look again shortly.
                jobs::defer(&ctx.pool, &job.id, &ctx.owner, 0.5).await?;
                return Ok(());
            }
            finalize(ctx, &job, BatchStatus::Cancelled).await
        }
        other => anyhow::bail!("claimed a batch in status {other:?}"),
    }
}

fn errors_object(errors: Vec<LineError>) -> Value {
    json!({"object": "list", "data": errors})
}

async fn fail(ctx: &Ctx, job: &BatchJob, errors: Vec<LineError>) -> anyhow::Result<()> {
    tracing::info!(errors = errors.len(), "batch failed validation");
    if jobs::fail(&ctx.pool, &job.id, &ctx.owner, errors_object(errors)).await? {
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
    let endpoint = Endpoint::parse(&job.endpoint).map_err(|e| anyhow::anyhow!(e.message))?;
    let missing = || {
        vec![LineError::file(
            "invalid_request",
            Some("input_file_id"),
            format!("Cannot find file {}.", job.input_file_id),
        )]
    };
    let Ok(file_id) = FileId::parse("input_file_id", &job.input_file_id) else {
        return fail(ctx, job, missing()).await;
    };
    // Another project's file is, for this batch, a file that does not exist.
    let Some(file) = files::get(&ctx.pool, &job.project(), &file_id).await? else {
        return fail(ctx, job, missing()).await;
    };
    if file.purpose != Purpose::Batch {
        let msg = format!(
            "File {} has purpose '{}'; a batch's input file must have purpose 'batch'.",
            file.id,
            file.purpose.as_str()
        );
        return fail(
            ctx,
            job,
            vec![LineError::file(
                "invalid_request",
                Some("input_file_id"),
                msg,
            )],
        )
        .await;
    }
    if file.bytes as u64 > MAX_INPUT_BYTES {
        let msg =
            format!("The input file is larger than the {MAX_INPUT_BYTES}-byte limit for a batch.");
        return fail(
            ctx,
            job,
            vec![LineError::file(
                "file_too_large",
                Some("input_file_id"),
                msg,
            )],
        )
        .await;
    }

    let mut tx = ctx.pool.begin().await?;
    let mut check = FileCheck::new(endpoint);
    let mut splitter = super::validate::LineSplitter::default();
    let mut queued: Vec<NewLine> = Vec::with_capacity(INSERT_ROWS);
    let mut line_no = 0_usize;
    let mut ordinal = 0_i32;
    let mut take = |raw: &[u8], check: &mut FileCheck, queued: &mut Vec<NewLine>| {
        line_no += 1;
        if let Some(v) = check.line(raw, line_no) {
            queued.push(NewLine {
                line: ordinal,
                custom_id: v.custom_id,
                model: v.model,
                body: v.body,
            });
            ordinal += 1;
        }
    };
    for idx in 0.. {
        let Some(chunk) = files::chunk(&ctx.pool, &file.id, idx).await? else {
            break;
        };
        splitter.feed(&chunk, |raw| take(raw, &mut check, &mut queued));
        if !check.errors.is_empty() {
            // The batch fails; keep reading only to report more problems.
            queued.clear();
            if check.is_saturated() {
                break;
            }
        } else if queued.len() >= INSERT_ROWS {
            requests::insert(&mut tx, &job.id, &queued).await?;
            queued.clear();
        }
    }
    splitter.finish(|raw| take(raw, &mut check, &mut queued));
    let total = check.requests;
    if check.errors.is_empty() {
        let unknown = ctx.upstreams.unknown_models(check.models()).await;
        check.errors.extend(unknown);
    }
    match check.finish() {
        Err(errors) => {
            drop(tx);
            fail(ctx, job, errors).await
        }
        Ok(model) => {
            requests::insert(&mut tx, &job.id, &queued).await?;
            let total = i32::try_from(total).context("request count")?;
            if jobs::start(&mut tx, &job.id, &ctx.owner, &model, total).await? {
                tx.commit().await?;
                tracing::info!(requests = total, %model, "batch validated");
            }
            // Otherwise the batch was cancelled meanwhile: the rollback drops the lines.
            Ok(())
        }
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

/// Writes the output and error files in input order and ends the batch, in one transaction:
/// a crash mid-way leaves no file and the batch claimable again.
async fn finalize(ctx: &Ctx, job: &BatchJob, to: BatchStatus) -> anyhow::Result<()> {
    let mut tx = ctx.pool.begin().await?;
    let closed = match to {
        BatchStatus::Expired => {
            requests::close_open(
                &mut tx,
                &job.id,
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
            .await?
        }
        BatchStatus::Cancelled => {
            requests::close_open(
                &mut tx,
                &job.id,
                "batch_cancelled",
                "This request was not executed: the batch was cancelled.",
            )
            .await?
        }
        _ => 0,
    };
    let (mut out, mut err) = (ResultFile::new(), ResultFile::new());
    let mut usage = Usage::default();
    let mut after = -1;
    loop {
        let page = requests::results_page(&mut tx, &job.id, after, RESULT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.line;
        for r in &page {
            let line = output::render(job.id.as_str(), r);
            if output::is_success(r) {
                if let Some(body) = &r.response {
                    usage.add(body);
                }
                out.push(&mut tx, &line).await?;
            } else {
                err.push(&mut tx, &line).await?;
            }
        }
    }
    let (completed, failed) = (out.lines as i32, err.lines as i32);
    let output_file_id = out.finish(&mut tx, job, "output").await?;
    let error_file_id = err.finish(&mut tx, job, "error").await?;
    let ended = jobs::end(
        &mut tx,
        &job.id,
        &ctx.owner,
        Ending {
            from: &[
                BatchStatus::Validating,
                BatchStatus::InProgress,
                BatchStatus::Finalizing,
                BatchStatus::Cancelling,
            ],
            to,
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
            "batch finished"
        );
    }
    Ok(())
}
