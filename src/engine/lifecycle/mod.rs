//! Batch-level work: validate an input file into queued chunks; write the output and error
//! files of a batch whose lines are all done, cancelled or expired.

mod finalizing;
mod validating;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use self::finalizing::finalize;
use self::validating::validate;
use super::Ctx;
use crate::domain::{BatchStatus, LineError};
use crate::store::chunks;
use crate::store::leases::{self, BatchJob, Failure};
use crate::tasks::{sleep_or_cancelled, CancellationToken};

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
    crate::domain::BatchErrors::json(errors)
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
