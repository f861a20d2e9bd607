//! The line pipeline of one replica: claim a chunk → execute its lines → write their results in
//! groups, continuously. A free slot is refilled as soon as one line's result is stored, so a
//! slow line never holds back others; a new chunk is claimed when the claimed ones have no line
//! left to start.

mod claim;
mod execute;
mod flusher;
mod limits;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use self::flusher::Done;
use self::limits::Limits;
use super::Ctx;
use crate::domain::{Endpoint, ProjectId};
use crate::store::chunks::{self, Held};
use crate::tasks::{sleep_or_cancelled, CancellationToken};

/// A chunk this replica has claimed and is executing.
pub(super) struct Running {
    pub held: Held,
    project_id: ProjectId,
    endpoint: Endpoint,
    trace_context: Option<String>,
    /// The trace id of upstream calls when tracing is off (`trace_id_for` the batch).
    trace_id: String,
    /// False once nothing more of it may start: its batch is being cancelled, or the claim was
    /// lost (taken over, or closed by the batch's cancellation or expiry). Lines already at the
    /// upstream still finish (and are written only if the claim holds); lines waiting for one
    /// (every endpoint down, paused or full) or for a retry stop waiting (`stopped`).
    live: AtomicBool,
    /// Wakes the lines waiting in `Upstreams::execute` when `live` turns false.
    stopped: tokio::sync::Notify,
    /// Its lines not yet stored or dropped; at zero the chunk is let go.
    outstanding: AtomicUsize,
}

impl Running {
    pub fn key(&self) -> (String, i32) {
        (self.held.batch_id.clone(), self.held.idx)
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.live.store(false, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    /// Resolves once the chunk is stopped.
    async fn until_stopped(&self) {
        loop {
            let notified = self.stopped.notified();
            tokio::pin!(notified);
            // Registered before the check: a `stop` in between still wakes us.
            notified.as_mut().enable();
            if !self.is_live() {
                return;
            }
            notified.await;
        }
    }
}

struct Line {
    chunk: Arc<Running>,
    line: i32,
    custom_id: String,
    model: String,
    /// Shared, so that no attempt copies it.
    body: bytes::Bytes,
}

pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let limits = Arc::new(Limits::new(ctx.settings.max_in_flight));
    let (tx, rx) = mpsc::channel::<Done>(2 * ctx.settings.max_in_flight);
    let flusher = tokio::spawn(flusher::flush(ctx.clone(), rx, limits.clone()));
    dispatch(ctx, stop, tx, limits).await;
    // The flusher ends when the last in-flight line has sent its result.
    let _ = flusher.await;
}

/// Lines waiting for a slot, one queue per claimed chunk, served round robin: a chunk claimed
/// later (another project's) does not wait behind all the lines of an earlier one.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<VecDeque<Line>>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn push(&mut self, lines: Vec<Line>) {
        if !lines.is_empty() {
            self.chunks.push_back(lines.into());
        }
    }

    fn next(&mut self) -> Option<Line> {
        let mut front = self.chunks.pop_front()?;
        let line = front.pop_front();
        if !front.is_empty() {
            self.chunks.push_back(front);
        }
        line
    }

    /// The projects whose lines are waiting here.
    fn projects(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .chunks
            .iter()
            .filter_map(|q| q.front().map(|l| l.chunk.project_id.as_str().to_owned()))
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Takes out the waiting lines of chunks that may no longer run, with how many there were.
    fn drop_stopped(&mut self) -> Vec<(Arc<Running>, usize)> {
        let mut dropped = Vec::new();
        self.chunks.retain(|q| match q.front() {
            Some(l) if !l.chunk.is_live() => {
                dropped.push((l.chunk.clone(), q.len()));
                false
            }
            _ => true,
        });
        dropped
    }
}

async fn dispatch(
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    results: mpsc::Sender<Done>,
    limits: Arc<Limits>,
) {
    let poll = Duration::from_millis(ctx.settings.poll_interval_ms);
    let mut queue = Queue::default();
    let mut last_claim = Instant::now();
    let mut failures = 0_u32;
    loop {
        let slot = tokio::select! {
            p = take(&limits) => p,
            _ = stop.cancelled() => return,
        };
        if stop.is_cancelled() {
            return;
        }
        for (chunk, n) in queue.drop_stopped() {
            let_go(&ctx, &chunk, n).await;
        }
        // Idle, claim at once; busy, look now and then for another project's work, so that a
        // small batch never waits for a big one's lines to drain.
        if queue.is_empty() || last_claim.elapsed() >= poll {
            last_claim = Instant::now();
            match claim::claim(&ctx, &queue.projects()).await {
                Ok(Some(lines)) => {
                    failures = 0;
                    queue.push(lines);
                }
                Ok(None) if queue.is_empty() => {
                    drop(slot);
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = ctx.wake_lines.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    failures += 1;
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "claiming a chunk failed; retrying"
                    );
                    if queue.is_empty() {
                        drop(slot);
                        let backoff = poll * 2_u32.saturating_pow(failures.min(5));
                        if sleep_or_cancelled(&stop, backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        }
        match queue.next() {
            Some(line) => {
                let (slot, unstored) = slot;
                tokio::select! {
                    _ = limits.backlog_below_limit() => {}
                    _ = stop.cancelled() => return,
                }
                let permits = (slot, unstored, limits.clone());
                tokio::spawn(execute::execute_line(
                    ctx.clone(),
                    line,
                    permits,
                    results.clone(),
                ));
            }
            // A claimed chunk whose lines all had results already.
            None => drop(slot),
        }
    }
}

/// A permit to start a line: room among the unstored lines, then an upstream slot.
async fn take(limits: &Limits) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    let unstored = limits.unstored.clone().acquire_owned().await;
    let slot = limits.slots.clone().acquire_owned().await;
    (slot.expect("never closed"), unstored.expect("never closed"))
}

/// Stops tracking a chunk here.
fn forget(ctx: &Ctx, running: &Running) {
    ctx.held
        .lock()
        .expect("not poisoned")
        .remove(&running.key());
}

/// Accounts for `n` lines that will not be stored; once none is outstanding, a chunk that is
/// not finished is handed back at once (cancelled batch, or a failure reading it).
async fn let_go(ctx: &Ctx, running: &Arc<Running>, n: usize) {
    let left = running.outstanding.fetch_sub(n, Ordering::Relaxed) - n;
    if left == 0 {
        forget(ctx, running);
        if let Err(e) = chunks::release_one(&ctx.pool, &running.held, false).await {
            tracing::warn!(error = %e, "could not hand a chunk back; its lease will lapse");
        }
    }
}
