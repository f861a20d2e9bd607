//! Batch execution, shared by every replica through PostgreSQL: lines are claimed under
//! leases, executed against the upstream, and their results written back in bulk; batch-level
//! work (validation, finalization, cancellation, expiry) is claimed the same way.
//! Nothing here depends on HTTP handling; a replica may run the API, the worker, or both.

mod chunking;
mod give_up;
mod lifecycle;
mod line_pipeline;
pub mod order;
pub mod output;
pub mod upstream;
pub mod validation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::{BatchSettings, WorkerSettings};
use crate::domain::BatchId;
use crate::engine::upstream::Upstreams;
use crate::notify::{Notice, Notifications, Subscription};
use crate::store::content::Content;
use crate::store::{chunks, leases};
use crate::tasks::{CancellationToken, TaskGroup};

/// What the worker's tasks share.
struct Ctx {
    pool: PgPool,
    /// Input files are read, and result files written, through this.
    content: Content,
    upstreams: Arc<Upstreams>,
    settings: WorkerSettings,
    batches: BatchSettings,
    limits: BatchLimits,
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
    held: Mutex<HashMap<(String, i32), Arc<line_pipeline::Running>>>,
}

/// The limits validation holds a batch to (`limits.*`).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_lines: usize,
    pub max_input_bytes: u64,
    /// `limits.max_enqueued_tokens_per_project` (0: none), checked as a batch is queued.
    pub max_enqueued_tokens: u64,
}

impl BatchLimits {
    pub fn of(limits: &crate::config::LimitSettings) -> Self {
        Self {
            max_lines: limits.max_batch_lines,
            max_input_bytes: limits.max_batch_input_bytes,
            max_enqueued_tokens: limits.max_enqueued_tokens_per_project,
        }
    }
}

pub struct Worker {
    ctx: Arc<Ctx>,
    /// Everything but the heartbeat, which keeps the claims alive while these drain.
    draining: TaskGroup,
    /// The heartbeat; the parent of `draining`.
    tasks: TaskGroup,
}

impl Worker {
    /// Runs in `tasks` (stopped by [`shutdown`](Self::shutdown), or with its parent group),
    /// woken by the work and cancellation channels of `notices`.
    pub fn start(
        content: Content,
        upstreams: Arc<Upstreams>,
        settings: WorkerSettings,
        batches: BatchSettings,
        limits: BatchLimits,
        notices: &mut Notifications,
        tasks: TaskGroup,
    ) -> Self {
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "openbatch".to_owned()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        tracing::info!(%owner, max_in_flight = settings.max_in_flight, "batch worker starting");
        let ctx = Arc::new(Ctx {
            pool: content.pool().clone(),
            content,
            upstreams,
            settings,
            batches,
            limits,
            owner,
            wake_jobs: Arc::new(Notify::new()),
            wake_lines: Notify::new(),
            job: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        });
        let draining = tasks.child();
        let notices = notices.subscribe(&[leases::WORK_CHANNEL, leases::CANCEL_CHANNEL]);
        draining.spawn(line_pipeline::run(ctx.clone(), draining.token()));
        draining.spawn(lifecycle::run(ctx.clone(), draining.token()));
        draining.spawn(listen(ctx.clone(), notices, draining.token()));
        tasks.spawn(heartbeat(ctx.clone(), draining.token(), tasks.token()));
        Self {
            ctx,
            draining,
            tasks,
        }
    }

    /// Wakes this replica's batch-level loop (a batch was just created here).
    pub fn waker(&self) -> Arc<Notify> {
        self.ctx.wake_jobs.clone()
    }

    /// Stops claiming, lets in-flight lines finish (up to the grace period) and hands back
    /// whatever is left, so another replica can take it over at once.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.ctx.settings.shutdown_grace_secs);
        if !self.draining.stop_within(grace).await {
            tracing::warn!("in-flight lines did not finish within the shutdown grace period");
        }
        self.tasks.stop().await;
        let job = self.ctx.job.lock().expect("not poisoned").clone();
        let released = async {
            chunks::release(&self.ctx.pool, &self.ctx.owner).await?;
            match job {
                Some(id) => leases::release(&self.ctx.pool, &id, &self.ctx.owner).await,
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
async fn heartbeat(ctx: Arc<Ctx>, draining: CancellationToken, stop: CancellationToken) {
    let every = Duration::from_secs(ctx.settings.lease_secs) / 3;
    // Renewed at once when the drain starts, then as usual until the lines in flight are
    // done; stopped wherever it is then.
    let mut drain_seen = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = draining.cancelled(), if !drain_seen => drain_seen = true,
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = renew(&ctx) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Renews exactly the chunks this replica is executing, under their tokens, and its
/// batch-level work; lets go of the chunks that were cancelled or taken over.
async fn renew(ctx: &Ctx) {
    let held: Vec<Arc<line_pipeline::Running>> = ctx
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
        if let Err(e) = leases::renew(&ctx.pool, &id, &ctx.owner, ctx.settings.lease_secs).await {
            tracing::warn!(error = %e, "could not renew a batch claim");
        }
    }
}

/// LISTEN/NOTIFY: wakes the dispatcher when a batch gets chunks to claim, and stops starting
/// lines of a batch being cancelled. Polling remains the fallback while the listener is down.
async fn listen(ctx: Arc<Ctx>, mut notices: Subscription, stop: CancellationToken) {
    loop {
        let notice = tokio::select! {
            n = notices.recv() => n,
            _ = stop.cancelled() => return,
        };
        match notice {
            Notice::Message { channel, payload } if channel == leases::CANCEL_CHANNEL => {
                for r in ctx.held.lock().expect("not poisoned").values() {
                    if r.held.batch_id == payload {
                        r.stop();
                    }
                }
                ctx.wake_jobs.notify_one();
            }
            Notice::Message { .. } => ctx.wake_lines.notify_one(),
            // Notifications may have been missed: look for work now.
            Notice::Resume => ctx.wake_lines.notify_one(),
            Notice::Lost => {}
        }
    }
}
