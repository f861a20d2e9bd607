//! How much one replica's pipeline holds: upstream slots, unstored lines, unstored bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Result bytes past which a flush no longer waits for stragglers: a statement that large
/// costs the database little per line already, and waiting would only hold more in memory.
pub(super) const WAIT_FLUSH_BYTES: usize = 1 << 20;

/// The limits of one replica's pipeline: `slots`, lines at the upstream (`max_in_flight`), and
/// `unstored`, lines started and not yet stored (twice that). A finished line gives its slot
/// back at once, so a flush that waits for stragglers (`flush_interval_ms`) costs the upstream
/// nothing; `unstored` keeps what a crash can lose bounded, and stops claims while the database
/// cannot take results. No line starts while `WAIT_FLUSH_BYTES` of results wait to be stored,
/// so large responses are held no more than when a slot was held until its result was stored.
pub(super) struct Limits {
    pub(super) slots: Arc<Semaphore>,
    pub(super) unstored: Arc<Semaphore>,
    pub(super) max_in_flight: usize,
    /// Bytes of finished lines' results not yet stored.
    pub(super) backlog: AtomicUsize,
    pub(super) stored: tokio::sync::Notify,
}

impl Limits {
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            unstored: Arc::new(Semaphore::new(2 * max_in_flight)),
            max_in_flight,
            backlog: AtomicUsize::new(0),
            stored: tokio::sync::Notify::new(),
        }
    }

    /// No line is at the upstream: nothing more can finish until another starts.
    pub(super) fn idle(&self) -> bool {
        self.slots.available_permits() == self.max_in_flight
    }

    /// Waits until less than `WAIT_FLUSH_BYTES` of results wait to be stored.
    pub(super) async fn backlog_below_limit(&self) {
        // `notify_one` keeps a permit when nobody waits yet: no wake-up is lost between the
        // check and the wait.
        while self.backlog.load(Ordering::Relaxed) >= WAIT_FLUSH_BYTES {
            self.stored.notified().await;
        }
    }

    pub(super) fn backlog(self: &Arc<Self>, bytes: usize) -> Backlog {
        self.backlog.fetch_add(bytes, Ordering::Relaxed);
        Backlog {
            limits: self.clone(),
            bytes,
        }
    }
}

/// A finished line's share of `Limits::backlog`, given back when its result is stored (or
/// dropped).
pub(super) struct Backlog {
    limits: Arc<Limits>,
    bytes: usize,
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.limits.backlog.fetch_sub(self.bytes, Ordering::Relaxed);
        self.limits.stored.notify_one();
    }
}
