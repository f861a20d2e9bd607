//! Gives the space of purged content and finished work back (see [`Compactor`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::store::compact;

/// Rounds between checks (the check reads only catalog sizes and statistics counters).
pub const EVERY: u32 = 5;

/// Rebuilds the indexes of tables whose purged content left their TOAST index mostly empty,
/// and of work tables whose finished rows left their indexes so (see `store::compact`). A rebuild waits for older transactions to end, so it runs beside the
/// other chores, one at a time, never blocking a lease requeue.
pub struct Compactor {
    slack: i64,
    running: Option<tokio::task::JoinHandle<()>>,
    /// Each table's TOAST index size right after this replica rebuilt it: no rebuild again
    /// until the index has grown past it, so stale statistics can never cause a rebuild loop.
    rebuilt: Arc<Mutex<HashMap<&'static str, i64>>>,
}

impl Compactor {
    pub fn new(slack_bytes: u64) -> Self {
        Self {
            slack: i64::try_from(slack_bytes).unwrap_or(i64::MAX),
            running: Default::default(),
            rebuilt: Default::default(),
        }
    }

    /// Starts a check (and the rebuilds it calls for) unless one is running or compaction is
    /// off (`reindex_slack_bytes` 0).
    pub fn start(&mut self, pool: &PgPool) {
        if self.slack == 0 {
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
                            "rebuilt the mostly empty indexes of a table"
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
