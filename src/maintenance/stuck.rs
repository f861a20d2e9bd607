//! Ends batches stuck past their completion window (see [`end_stuck`]).

use sqlx::PgPool;

use crate::domain::LineError;
use crate::domain::{BatchStatus, Transition};
use crate::store::leases::{self, GiveUp};

/// Rounds between runs: each reads the unfinished batches, and the grace they are given is an
/// hour by default.
pub const EVERY: u32 = 5;
/// Stuck batches ended per run, each in a short transaction of its own.
const PER_RUN: i64 = 100;

/// Returns how many batches were ended.
pub async fn run(pool: &PgPool, grace_secs: u64) -> u64 {
    match end_stuck(pool, grace_secs).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::warn!(
                batches = n,
                "ended batches stuck past their completion window"
            );
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "ending stuck batches failed");
            0
        }
    }
}

/// Ends the batches still unfinished `grace_secs` after their completion window, whatever
/// holds them there (a finalization that fails every time, a lease renewed by a replica that
/// makes no progress, work no replica can take): `expired`, as OpenAI ends a batch that ran out
/// of time, or `cancelled` for one being cancelled, without result files — writing them may be
/// what keeps failing — and with an error that says so. Each change is guarded by the status
/// the batch was read in; its leases and work rows go with it.
async fn end_stuck(pool: &PgPool, grace_secs: u64) -> Result<u64, sqlx::Error> {
    // Keeps `expires_at + grace` far from overflowing in SQL.
    let grace = grace_secs.min(100 * 365 * 86_400) as i64;
    let mut ended = 0;
    for b in leases::stuck(pool, grace, PER_RUN).await? {
        let to = match b.status {
            BatchStatus::Cancelling => BatchStatus::Cancelled,
            _ => BatchStatus::Expired,
        };
        let error = LineError::file(
            "stuck_past_window",
            None,
            format!(
                "The batch was still {} {grace} seconds after its completion window ended; it was ended without result files.",
                b.status.as_str()
            ),
        );
        let Some(change) = Transition::new(&[b.status], to) else {
            continue;
        };
        let ending = GiveUp {
            change,
            owner: None,
            errors: crate::domain::BatchErrors::json(vec![error]),
        };
        if leases::give_up(pool, &b.id, ending).await? {
            tracing::warn!(batch_id = %b.id, from = b.status.as_str(), to = to.as_str(),
                           "ended a batch stuck past its completion window");
            crate::metrics::get()
                .batches_finished
                .with_label_values(&[to.as_str()])
                .inc();
            ended += 1;
        }
    }
    Ok(ended)
}
