//! Batch execution, shared by every replica through PostgreSQL: lines are claimed under
//! leases, executed against the upstream, and their results written back in bulk; batch-level
//! work (validation, finalization, cancellation, expiry) is claimed the same way.
//! Nothing here depends on HTTP handling; a replica may run the API, the worker, or both.

mod execute;
mod jobs;
pub mod output;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::WorkerSettings;
use crate::upstream::Upstreams;

/// What the worker's tasks share.
struct Ctx {
    pool: PgPool,
    upstreams: Arc<Upstreams>,
    settings: WorkerSettings,
    /// Identifies this replica's claims.
    owner: String,
    /// Wakes the batch-level loop when lines finish, so a completed batch is finalized at once.
    wake_jobs: Notify,
}

pub struct Worker {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    pub fn start(pool: PgPool, upstreams: Arc<Upstreams>, settings: WorkerSettings) -> Self {
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "openbatch".to_owned()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        tracing::info!(%owner, max_in_flight = settings.max_in_flight, "batch worker starting");
        let ctx = Arc::new(Ctx {
            pool,
            upstreams,
            settings,
            owner,
            wake_jobs: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(execute::run(ctx.clone(), stopped.clone())),
            tokio::spawn(jobs::run(ctx.clone(), stopped.clone())),
            tokio::spawn(progress(ctx.clone(), stopped.clone())),
            tokio::spawn(heartbeat(ctx.clone(), stopped)),
        ];
        Self { ctx, stop, tasks }
    }

    /// Stops claiming, lets in-flight lines finish (up to the grace period) and hands back
    /// whatever is left, so another replica can take it over at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let grace = Duration::from_secs(self.ctx.settings.shutdown_grace_secs);
        let mut tasks = self.tasks;
        let heartbeat = tasks.pop().expect("heartbeat task");
        let drained = tokio::time::timeout(grace, futures_util::future::join_all(tasks)).await;
        if drained.is_err() {
            tracing::warn!("in-flight lines did not finish within the shutdown grace period");
        }
        heartbeat.abort();
        match crate::store::requests::release_leases(&self.ctx.pool, &self.ctx.owner).await {
            Ok(()) => tracing::info!("batch worker stopped; unfinished claims released"),
            Err(e) => tracing::warn!(error = %e, "could not release claims; they will lapse"),
        }
    }
}

/// Keeps this replica's claims alive. A replica that stops heartbeating (killed, partitioned)
/// loses its claims after `lease_secs`, and others take the work over.
async fn heartbeat(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(ctx.settings.lease_secs) / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        // Keep renewing through shutdown until the lines in flight are done; `shutdown`
        // aborts this task at the end.
        if let Err(e) =
            crate::store::requests::renew_leases(&ctx.pool, &ctx.owner, ctx.settings.lease_secs)
                .await
        {
            tracing::warn!(error = %e, "could not renew claims");
        }
    }
}

/// Once a second: requeues lines whose claim lapsed, and brings the `request_counts` of
/// running batches up to date.
async fn progress(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    while !sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
        match crate::store::requests::requeue_lapsed(&ctx.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, "requeued lines whose claim lapsed"),
            Err(e) => tracing::debug!(error = %e, "requeueing lapsed lines failed"),
        }
        if let Err(e) = crate::store::requests::refresh_counts(&ctx.pool).await {
            // Two replicas refreshing at once may deadlock; the next tick fixes it.
            tracing::debug!(error = %e, "refreshing progress counters failed");
        }
    }
}

/// Sleeps, or returns early (true) when asked to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
