//! Batch execution, shared by every replica through PostgreSQL: lines are claimed under
//! leases, executed against the upstream, and their results written back in bulk; batch-level
//! work (validation, finalization, cancellation, expiry) is claimed the same way.
//! Nothing here depends on HTTP handling; a replica may run the API, the worker, or both.

mod execute;
mod give_up;
mod jobs;
pub mod output;
mod plan;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{BatchSettings, WorkerSettings};
use crate::domain::BatchId;
use crate::store::{chunks, jobs as job_store};
use crate::upstream::Upstreams;

/// What the worker's tasks share.
struct Ctx {
    pool: PgPool,
    upstreams: Arc<Upstreams>,
    settings: WorkerSettings,
    batches: BatchSettings,
    /// Identifies this replica's claims.
    owner: String,
    /// Wakes the batch-level loop: a batch was created here, or a chunk finished, so a batch
    /// is validated or finalized at once rather than at the next poll.
    wake_jobs: Arc<Notify>,
    /// Wakes an idle dispatcher: some batch has chunks to claim (LISTEN/NOTIFY).
    wake_lines: Notify,
    /// The batch whose batch-level work this replica holds, if any.
    job: Mutex<Option<BatchId>>,
    /// The chunks this replica is executing, by (batch id, chunk index).
    held: Mutex<HashMap<(String, i32), Arc<execute::Running>>>,
}

pub struct Worker {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    pub fn start(
        pool: PgPool,
        upstreams: Arc<Upstreams>,
        settings: WorkerSettings,
        batches: BatchSettings,
    ) -> Self {
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
            batches,
            owner,
            wake_jobs: Arc::new(Notify::new()),
            wake_lines: Notify::new(),
            job: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(execute::run(ctx.clone(), stopped.clone())),
            tokio::spawn(jobs::run(ctx.clone(), stopped.clone())),
            tokio::spawn(listen(ctx.clone(), stopped.clone())),
            tokio::spawn(heartbeat(ctx.clone(), stopped)),
        ];
        Self { ctx, stop, tasks }
    }

    /// Wakes this replica's batch-level loop (a batch was just created here).
    pub fn waker(&self) -> Arc<Notify> {
        self.ctx.wake_jobs.clone()
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
        let job = self.ctx.job.lock().expect("not poisoned").clone();
        let released = async {
            chunks::release(&self.ctx.pool, &self.ctx.owner).await?;
            match job {
                Some(id) => job_store::release(&self.ctx.pool, &id, &self.ctx.owner).await,
                None => Ok(()),
            }
        };
        match released.await {
            Ok(()) => tracing::info!("batch worker stopped; unfinished claims released"),
            Err(e) => tracing::warn!(error = %e, "could not release claims; they will lapse"),
        }
    }
}

/// Keeps this replica's claims alive: exactly the chunks it is executing, under their tokens,
/// and its batch-level work. A replica that stops heartbeating (killed, partitioned) loses its
/// claims after `lease_secs`, and others take the work over.
async fn heartbeat(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(ctx.settings.lease_secs) / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        // Keep renewing through shutdown until the lines in flight are done; `shutdown`
        // aborts this task at the end.
        let held: Vec<Arc<execute::Running>> = ctx
            .held
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        let claims: Vec<chunks::Held> = held.iter().map(|r| r.held.clone()).collect();
        match chunks::renew(&ctx.pool, &claims, ctx.settings.lease_secs).await {
            Ok(renewed) => {
                for r in &held {
                    let h = &r.held;
                    match renewed
                        .iter()
                        .find(|x| x.batch_id.as_str() == h.batch_id && x.idx == h.idx)
                    {
                        Some(x) if x.live => {}
                        // Cancelled: start nothing more of it.
                        Some(_) => r.stop(),
                        // Taken over or closed: nothing of it is ours any more.
                        None => {
                            r.stop();
                            ctx.held.lock().expect("not poisoned").remove(&r.key());
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not renew chunk claims"),
        }
        let job = ctx.job.lock().expect("not poisoned").clone();
        if let Some(id) = job {
            if let Err(e) =
                job_store::renew(&ctx.pool, &id, &ctx.owner, ctx.settings.lease_secs).await
            {
                tracing::warn!(error = %e, "could not renew a batch claim");
            }
        }
    }
}

/// LISTEN/NOTIFY: wakes the dispatcher when a batch gets chunks to claim, and stops starting
/// lines of a batch being cancelled. Polling remains the fallback while the listener is down.
async fn listen(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut listener = match PgListener::connect_with(&ctx.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; polling meanwhile");
                if sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([job_store::WORK_CHANNEL, job_store::CANCEL_CHANNEL])
            .await
        {
            tracing::debug!(error = %e, "LISTEN failed; polling meanwhile");
            if sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
                return;
            }
            continue;
        }
        loop {
            let n = tokio::select! {
                n = listener.try_recv() => n,
                _ = stop.changed() => return,
            };
            match n {
                Ok(Some(n)) if n.channel() == job_store::CANCEL_CHANNEL => {
                    for r in ctx.held.lock().expect("not poisoned").values() {
                        if r.held.batch_id == n.payload() {
                            r.stop();
                        }
                    }
                    ctx.wake_jobs.notify_one();
                }
                Ok(Some(_)) => ctx.wake_lines.notify_one(),
                // The connection dropped (and notifications may have been missed): look for
                // work now, then listen again.
                Ok(None) => ctx.wake_lines.notify_one(),
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Sleeps, or returns early (true) when asked to stop.
pub(crate) async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
