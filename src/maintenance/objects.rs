//! Deletes the objects of freed file content, and those a crash left in the bucket half
//! written, once their time on the `pending_objects` ledger is up (`store::objects`).

use crate::store::content::Content;

/// Rounds between runs.
pub const EVERY: u32 = 5;
/// Ledger entries settled per run.
const PER_RUN: i64 = 100;

/// Returns how many entries were settled.
pub async fn run(content: &Content) -> u64 {
    match content.reconcile(PER_RUN).await {
        Ok(0) => 0,
        Ok(n) => {
            tracing::info!(objects = n, "deleted objects no file owns");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "deleting objects no file owns failed");
            0
        }
    }
}
