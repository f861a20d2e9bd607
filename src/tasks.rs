//! How background tasks start and stop. Tasks that stop together form a [`TaskGroup`]: a
//! cancellation token they watch and a tracker that knows when they have all ended. Stopping a
//! group cancels its token, then waits for its tasks. Groups nest through their tokens: a child
//! group stops with its parent, and can be stopped on its own first (the worker drains its
//! lines before the rest of the replica stops, see `startup`).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct TaskGroup {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl TaskGroup {
    pub fn new() -> Self {
        Self::default()
    }

    /// A group cancelled with this one, or on its own; its tasks are waited for on their own.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// What this group's tasks watch to know they must stop.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Asks every task to stop, and waits until they have.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Like [`stop`](Self::stop), waiting at most `grace`: false if some task was still
    /// running then (it is left to end on its own).
    pub async fn stop_within(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.stop()).await.is_ok()
    }
}

/// Sleeps for `d`, or less if `token` is cancelled: true if it was (before or during the sleep).
pub async fn sleep_or_cancelled(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        biased;
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_stops_on_its_own_or_with_its_parent() {
        let parent = TaskGroup::new();
        let child = parent.child();
        let (p, c) = (parent.token(), child.token());
        parent.spawn(async move { p.cancelled().await });
        child.spawn(async move { c.cancelled().await });
        child.stop().await;
        assert!(!parent.token().is_cancelled());
        let other = parent.child();
        parent.stop().await;
        assert!(other.token().is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_will_not_stop_is_given_its_grace_only() {
        let group = TaskGroup::new();
        group.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        assert!(!group.stop_within(Duration::from_millis(20)).await);
        let token = CancellationToken::new();
        assert!(!sleep_or_cancelled(&token, Duration::from_millis(5)).await);
        token.cancel();
        assert!(sleep_or_cancelled(&token, Duration::from_secs(3600)).await);
    }
}
