//! Cluster-wide chores, independent of HTTP and of the batch worker: whichever replica holds
//! a PostgreSQL advisory lock runs them, so they happen once, not once per replica. The leader
//! runs a round a second; each chore (one module each) runs every `EVERY` rounds.

pub mod compact;
pub mod leases;
pub mod live_orders;
pub mod objects;
pub mod purge;
pub mod statistics;
pub mod stuck;
pub mod uploads;
pub mod usage;
pub mod webhook_log;

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::store::content::Content;
use crate::store::leader;
use crate::tasks::{sleep_or_cancelled, CancellationToken};

/// Any key will do as long as it is OpenBatch's alone. (Public for the tests that run each
/// chore themselves, holding the lock so that no maintainer runs it meanwhile.)
pub const MAINTAINER_LOCK: i64 = 0x0B0B_A7C4_0001;
/// Between rounds.
const ROUND: Duration = Duration::from_secs(1);

/// Cluster-wide chores, run by one replica at a time (whichever holds a session advisory lock;
/// a replica that dies drops its connection and with it the lock): requeue chunks whose claim
/// lapsed, analyze tables that outgrew their planner statistics, purge the content of deleted
/// and expired files (deleting their objects, and any a crash left in the bucket; and the live orders of batches whose results they were, and give their
/// space back), prune old webhook deliveries, fold token usage into rollups, and end batches stuck `stuck_grace_secs` past
/// their completion window (see `stuck`). Each chore is short statements on the pool, never a
/// lock a running replica's heartbeat needs.
pub async fn run(
    content: Content,
    stop: CancellationToken,
    webhook_log_retention_secs: u64,
    reindex_slack_bytes: u64,
    stuck_grace_secs: u64,
) {
    let mut lock = Lock::default();
    let mut chores = Chores {
        round: 0,
        webhook_log_retention_secs,
        stuck_grace_secs,
        compactor: compact::Compactor::new(reindex_slack_bytes),
    };
    while !sleep_or_cancelled(&stop, ROUND).await {
        if lock.held(content.pool()).await {
            chores.run(&content).await;
        }
    }
    lock.release().await;
}

/// The maintainer's advisory lock, on a connection of its own.
#[derive(Default)]
struct Lock {
    conn: Option<PgConnection>,
    leader: bool,
}

impl Lock {
    /// Whether this replica leads now: takes the lock if free, checks it is still held if
    /// taken. A broken connection is dropped (and the lock with it), to try again next round.
    async fn held(&mut self, pool: &PgPool) -> bool {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(c) => self.conn.insert(c.detach()),
                Err(e) => {
                    tracing::debug!(error = %e, "maintainer: no connection");
                    return false;
                }
            },
        };
        let held = if self.leader {
            leader::still_held(conn).await
        } else {
            leader::try_lock(conn, MAINTAINER_LOCK).await
        };
        match held {
            Ok(true) => {
                if !self.leader {
                    tracing::info!("this replica now runs the cluster maintenance");
                }
                self.leader = true;
            }
            Ok(false) => return false,
            Err(e) => {
                if self.leader {
                    tracing::warn!(error = %e, "maintainer lost its lock connection");
                }
                self.leader = false;
                if let Some(c) = self.conn.take() {
                    let _ = c.close().await;
                }
            }
        }
        self.leader
    }

    async fn release(self) {
        if let Some(c) = self.conn {
            let _ = c.close().await;
        }
    }
}

/// The chores and what they need, run by the leader.
struct Chores {
    /// Rounds led so far.
    round: u32,
    webhook_log_retention_secs: u64,
    stuck_grace_secs: u64,
    compactor: compact::Compactor,
}

impl Chores {
    async fn run(&mut self, content: &Content) {
        let pool = content.pool();
        self.round = self.round.wrapping_add(1);
        let due = |every: u32| self.round.is_multiple_of(every);
        if due(leases::EVERY) {
            leases::run(pool).await;
        }
        if due(statistics::EVERY) {
            statistics::run(pool).await;
        }
        if due(purge::EVERY) {
            purge::run(pool).await;
        }
        if due(objects::EVERY) {
            objects::run(content).await;
        }
        if due(live_orders::EVERY) {
            live_orders::run(pool).await;
        }
        if due(stuck::EVERY) {
            stuck::run(pool, self.stuck_grace_secs).await;
        }
        if due(compact::EVERY) {
            self.compactor.start(pool);
        }
        if due(webhook_log::EVERY) {
            webhook_log::run(pool, self.webhook_log_retention_secs).await;
        }
        if due(uploads::EVERY) {
            uploads::run(pool).await;
        }
        if due(usage::EVERY) {
            usage::run(pool).await;
        }
    }
}
