//! Ending a batch that cannot be finished: its batch-level work keeps failing.

use super::lifecycle::errors_object;
use super::Ctx;
use crate::domain::LineError;
use crate::domain::{BatchStatus, Transition};
use crate::store::leases::{self, BatchJob};

/// Ends a batch whose validation or finalization failed `max_job_failures` times in a row
/// (counted across replicas and restarts): a failure that recurs on every try (a stored result
/// that cannot be read, files the database refuses) would otherwise keep it `validating` or
/// `finalizing` for ever. It ends without result files, `failed` — or `expired` when it was
/// being expired, `cancelled` when it was being cancelled, the only ends those allow — with an
/// error that says so.
pub(super) async fn failing(ctx: &Ctx, job: &BatchJob) -> anyhow::Result<()> {
    tracing::error!(batch_id = %job.id, failures = job.failed_attempts, status = job.status.as_str(),
                    "giving a batch up: its batch-level work keeps failing");
    let (from, to) = match job.status {
        BatchStatus::Validating => (BatchStatus::Validating, BatchStatus::Failed),
        BatchStatus::InProgress if job.expired => (BatchStatus::InProgress, BatchStatus::Expired),
        BatchStatus::InProgress => {
            if !leases::begin_finalizing(&ctx.pool, &job.id, &ctx.owner).await? {
                return Ok(());
            }
            (BatchStatus::Finalizing, BatchStatus::Failed)
        }
        BatchStatus::Finalizing => (BatchStatus::Finalizing, BatchStatus::Failed),
        BatchStatus::Cancelling => (BatchStatus::Cancelling, BatchStatus::Cancelled),
        other => anyhow::bail!("claimed a batch in status {other:?}"),
    };
    let (code, work) = match job.status {
        BatchStatus::Validating => ("validation_failed", "validating its input file"),
        _ => ("finalization_failed", "writing its output and error files"),
    };
    let error = LineError::file(
        code,
        None,
        format!(
            "The batch was given up: {work} failed {} times in a row. Its results could not be delivered.",
            job.failed_attempts
        ),
    );
    let Some(change) = Transition::new(&[from], to) else {
        return Ok(());
    };
    let ending = leases::GiveUp {
        change,
        owner: Some(&ctx.owner),
        errors: errors_object(vec![error]),
    };
    if leases::give_up(&ctx.pool, &job.id, ending).await? {
        crate::metrics::get()
            .batches_finished
            .with_label_values(&[to.as_str()])
            .inc();
    }
    Ok(())
}
