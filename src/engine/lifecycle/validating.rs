//! A `validating` batch: its input file checked line by line and planned into chunks, queued
//! in the transaction that moves it to `in_progress` (or failed with the errors found).

use anyhow::Context;

use super::fail;
use crate::domain::{Endpoint, FileId, LineError, Purpose};
use crate::engine::chunking::ChunkPlanner;
use crate::engine::validation::FileCheck;
use crate::engine::Ctx;
use crate::jsonl::Piece;
use crate::store::chunks::{self, NewChunk};
use crate::store::files::{self, FileRecord};
use crate::store::leases::{self, BatchJob};

/// Streams the input file once: checks every line and queues the valid ones, all in one
/// transaction that also moves the batch to `in_progress`, so a crash leaves it `validating`.
pub(super) async fn validate(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let endpoint = job.endpoint;
    let file = match input_file(ctx, job).await? {
        Ok(file) => file,
        Err(error) => return fail(ctx, job, vec![error]).await,
    };
    let mut scan = InputScan::new(ctx, endpoint);
    scan.read(ctx, &file.id).await?;
    let InputScan { planner, lines } = scan;
    let samples = lines.samples;
    let mut check = lines.check;
    let total = check.requests;
    if check.errors.is_empty() {
        let unknown = ctx.upstreams.unknown_models(check.models()).await;
        check.errors.extend(unknown);
    }
    let chunks = planner.chunks;
    match check.finish() {
        Err(errors) => fail(ctx, job, errors).await,
        Ok(model) => {
            let plan = Plan {
                file: &file,
                chunks: &chunks,
                model: &model,
                total,
                samples: &samples,
            };
            queue(ctx, job, plan, started).await
        }
    }
}

/// What validation found: the chunks to queue, the batch's one model, its request count, and
/// its first lines (for the upstream to count the tokens of).
struct Plan<'a> {
    file: &'a FileRecord,
    chunks: &'a [NewChunk],
    model: &'a str,
    total: usize,
    samples: &'a [(serde_json::Value, usize)],
}

impl Plan<'_> {
    /// The batch's prompt tokens. With an enqueued-token limit to hold, as the upstream counts
    /// them (vLLM's `/tokenize` over the first lines, scaled to the input's bytes); else, or
    /// when it cannot count, a quarter of the input's bytes (the ~4 characters a token of
    /// English text, applied to whole request bodies: high by the JSON around the prompt).
    async fn est_tokens(&self, ctx: &Ctx) -> i64 {
        let bytes = self.file.bytes;
        if ctx.limits.max_enqueued_tokens > 0 {
            if let Some(per_byte) = ctx
                .upstreams
                .tokens_per_byte(self.model, self.samples)
                .await
            {
                return (per_byte * bytes as f64).ceil() as i64;
            }
        }
        (bytes + 3) / 4
    }
}

/// Queues the chunks of a file that passed and moves the batch to `in_progress`, at once, if
/// its project's enqueued tokens for the model leave room for it.
async fn queue(
    ctx: &Ctx,
    job: &BatchJob,
    plan: Plan<'_>,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let total = i32::try_from(plan.total).context("request count")?;
    let est = plan.est_tokens(ctx).await;
    let mut tx = ctx.pool.begin().await?;
    if let Some(error) = token_room(ctx, &mut tx, job, plan.model, est).await? {
        drop(tx);
        return fail(ctx, job, vec![error]).await;
    }
    chunks::insert(&mut tx, &job.id, plan.file.id.as_str(), plan.chunks).await?;
    if leases::start(&mut tx, &job.id, &ctx.owner, plan.model, total, est).await? {
        tx.commit().await?;
        tracing::info!(
            requests = total,
            chunks = plan.chunks.len(),
            model = %plan.model,
            est_tokens = est,
            took_ms = started.elapsed().as_millis() as u64,
            "batch validated"
        );
    }
    // Otherwise the batch was cancelled meanwhile: the rollback drops the chunks.
    Ok(())
}

/// `None` when the batch fits under `limits.max_enqueued_tokens_per_project`; else the error
/// that fails it, OpenAI's `token_limit_exceeded`. The count holds the (project, model) lock
/// until `tx` ends, so racing replicas cannot both pass the limit.
async fn token_room(
    ctx: &Ctx,
    tx: &mut sqlx::PgConnection,
    job: &BatchJob,
    model: &str,
    est: i64,
) -> anyhow::Result<Option<LineError>> {
    let limit = i64::try_from(ctx.limits.max_enqueued_tokens).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(None);
    }
    let enqueued = leases::enqueued_tokens(tx, &job.project(), model).await?;
    if enqueued.saturating_add(est) <= limit {
        return Ok(None);
    }
    Ok(Some(LineError::file(
        "token_limit_exceeded",
        None,
        format!(
            "Enqueued token limit reached for {model} in project {}. Limit: {limit} enqueued \
             tokens; this batch is estimated at {est}, and {enqueued} are enqueued by the \
             project's running batches. Please try again once some in_progress batches have \
             been completed.",
            job.project().as_str()
        ),
    )))
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
    let max = ctx.limits.max_input_bytes;
    if file.bytes as u64 > max {
        return Ok(Err(file_error(
            "file_too_large",
            format!("The input file is larger than the {max}-byte limit for a batch."),
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
    /// The first lines' request bodies and lengths, for the upstream to count tokens of.
    samples: Vec<(serde_json::Value, usize)>,
    /// How many to keep: none without an enqueued-token limit, whose estimate alone asks.
    sample_lines: usize,
}

/// Lines whose tokens the upstream counts, for a batch's estimate.
const TOKEN_SAMPLES: usize = 16;

impl NumberedCheck {
    fn take(&mut self, piece: Piece<'_>) {
        self.line_no += 1;
        if let Ok(raw) = &piece {
            if self.samples.len() < self.sample_lines && !raw.iter().all(u8::is_ascii_whitespace) {
                if let Ok(mut line) = serde_json::from_slice::<serde_json::Value>(raw) {
                    self.samples.push((line["body"].take(), raw.len()));
                }
            }
        }
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
                check: FileCheck::new(endpoint).with_max_requests(ctx.limits.max_lines),
                line_no: 0,
                samples: Vec::new(),
                sample_lines: if ctx.limits.max_enqueued_tokens > 0 {
                    TOKEN_SAMPLES
                } else {
                    0
                },
            },
        }
    }

    /// Reads the file's stored parts in order, stopping early once the batch is sure to fail.
    async fn read(&mut self, ctx: &Ctx, file: &FileId) -> anyhow::Result<()> {
        let reader = ctx.content.open(file).await?;
        for idx in 0.. {
            let Some(part) = reader.chunk(idx).await? else {
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
