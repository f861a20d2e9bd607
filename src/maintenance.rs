//! Cluster-wide chores, independent of HTTP and of the batch worker: whichever replica holds
//! a PostgreSQL advisory lock runs them, so they happen once, not once per replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::domain::BatchStatus;
use crate::store::jobs::{self, GiveUp};
use crate::store::{chunks, compact, files, leader, results, stats, webhooks};
use crate::tasks::{sleep_or_cancelled, CancellationToken};
use crate::worker::validate::LineError;

/// Any key will do as long as it is OpenBatch's alone.
const MAINTAINER_LOCK: i64 = 0x0B0B_A7C4_0001;
/// Rounds (seconds) between prunings of kept live orders: each scans all of them, and one
/// lingering a few seconds after its files costs nothing.
const LIVE_ORDER_ROUNDS: u32 = 10;
/// Rounds (seconds) between sweeps for batches stuck past their completion window: each reads
/// the unfinished batches, and the grace they are given is an hour by default.
const STUCK_ROUNDS: u32 = 5;
/// Stuck batches ended per sweep, each in a short transaction of its own.
const STUCK_PER_SWEEP: i64 = 100;

/// Cluster-wide chores, run by one replica at a time (whichever holds a session advisory lock;
/// a replica that dies drops its connection and with it the lock): requeue chunks whose claim
/// lapsed, analyze tables that outgrew their planner statistics, purge the content of deleted
/// and expired files (and the live orders of batches whose results they were, and give their
/// space back), prune old webhook deliveries, and end batches stuck `stuck_grace_secs` past
/// their completion window (see `end_stuck`). Each chore is short statements on the pool,
/// never a lock a running replica's heartbeat needs.
pub async fn run(
    pool: PgPool,
    stop: CancellationToken,
    webhook_log_retention_secs: u64,
    reindex_slack_bytes: u64,
    stuck_grace_secs: u64,
) {
    let mut lock: Option<PgConnection> = None;
    let mut leader = false;
    let mut round: u32 = 0;
    let mut compactor = Compactor::new(reindex_slack_bytes);
    while !sleep_or_cancelled(&stop, Duration::from_secs(1)).await {
        let conn = match &mut lock {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(c) => lock.insert(c.detach()),
                Err(e) => {
                    tracing::debug!(error = %e, "maintainer: no connection");
                    continue;
                }
            },
        };
        let held = if leader {
            leader::still_held(conn).await
        } else {
            leader::try_lock(conn, MAINTAINER_LOCK).await
        };
        match held {
            Ok(true) => {
                if !leader {
                    tracing::info!("this replica now runs the cluster maintenance");
                }
                leader = true;
            }
            Ok(false) => continue,
            Err(e) => {
                if leader {
                    tracing::warn!(error = %e, "maintainer lost its lock connection");
                }
                leader = false;
                if let Some(c) = lock.take() {
                    let _ = c.close().await;
                }
                continue;
            }
        }
        match chunks::requeue_lapsed(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(chunks = n, "requeued chunks whose claim lapsed"),
            Err(e) => tracing::warn!(error = %e, "requeueing lapsed chunks failed"),
        }
        match stats::refresh_grown(&pool).await {
            Ok(t) if t.is_empty() => {}
            Ok(t) => tracing::info!(tables = ?t, "refreshed planner statistics of grown tables"),
            Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
        }
        match files::purge(&pool, 20).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "purged the content of deleted or expired files"),
            Err(e) => tracing::warn!(error = %e, "purging file content failed"),
        }
        round = round.wrapping_add(1);
        if round.is_multiple_of(LIVE_ORDER_ROUNDS) {
            match results::prune_live_orders(&pool, 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(batches = n, "pruned the live orders of results gone"),
                Err(e) => tracing::warn!(error = %e, "pruning live orders failed"),
            }
        }
        if round.is_multiple_of(STUCK_ROUNDS) {
            match end_stuck(&pool, stuck_grace_secs).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    batches = n,
                    "ended batches stuck past their completion window"
                ),
                Err(e) => tracing::warn!(error = %e, "ending stuck batches failed"),
            }
        }
        compactor.tick(&pool);
        match webhooks::prune(&pool, webhook_log_retention_secs as f64, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "pruned old webhook deliveries from the log"),
            Err(e) => tracing::warn!(error = %e, "pruning the webhook delivery log failed"),
        }
    }
    if let Some(c) = lock {
        let _ = c.close().await;
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
    for b in jobs::stuck(pool, grace, STUCK_PER_SWEEP).await? {
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
        let ending = GiveUp {
            from: b.status,
            to,
            owner: None,
            errors: serde_json::json!({"object": "list", "data": [error]}),
        };
        if jobs::give_up(pool, &b.id, ending).await? {
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

/// Rebuilds the indexes of tables whose purged content left their TOAST index mostly empty
/// (see `store::compact`). A rebuild waits for older transactions to end, so it runs beside the
/// other chores, one at a time, never blocking a lease requeue.
struct Compactor {
    slack: i64,
    running: Option<tokio::task::JoinHandle<()>>,
    /// Each table's TOAST index size right after this replica rebuilt it: no rebuild again
    /// until the index has grown past it, so stale statistics can never cause a rebuild loop.
    rebuilt: Arc<Mutex<HashMap<&'static str, i64>>>,
    ticks: u32,
}

/// Seconds between checks (the check reads only catalog sizes and statistics counters).
const COMPACT_EVERY: u32 = 5;

impl Compactor {
    fn new(slack_bytes: u64) -> Self {
        Self {
            slack: i64::try_from(slack_bytes).unwrap_or(i64::MAX),
            running: Default::default(),
            rebuilt: Default::default(),
            ticks: 0,
        }
    }

    fn tick(&mut self, pool: &PgPool) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.slack == 0 || !self.ticks.is_multiple_of(COMPACT_EVERY) {
            return;
        }
        if self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (pool, slack, rebuilt) = (pool.clone(), self.slack, self.rebuilt.clone());
        self.running = Some(tokio::spawn(async move {
            let bloated = match compact::bloated(&pool, slack).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "checking index bloat failed");
                    return;
                }
            };
            for b in bloated {
                let floor = rebuilt.lock().expect("not poisoned").get(b.table).copied();
                if floor.is_some_and(|f| b.index_bytes <= f) {
                    continue;
                }
                match compact::reindex(&pool, b.table).await {
                    Ok(after) => {
                        tracing::info!(
                            table = b.table,
                            before = b.index_bytes,
                            after,
                            "rebuilt the indexes of a table whose content was purged"
                        );
                        rebuilt.lock().expect("not poisoned").insert(b.table, after);
                    }
                    Err(e) => tracing::warn!(table = b.table, error = %e,
                                             "rebuilding the indexes of a table failed"),
                }
            }
        }));
    }
}
