//! Waking a test when the service announces a change, instead of polling for it: a LISTEN
//! connection on the channel every batch status change is notified on (migration 0018).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::time::Instant;

/// Sent at the commit of every batch status change, with the batch id as payload.
pub const STATUS_CHANNEL: &str = "openbatch_batch_status";

/// How long a wait sleeps without a notification before it checks again anyway: a notification
/// sent while the LISTEN connection was down (killed by a test, say) is lost.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// The status changes of one batch, as they are committed.
pub struct StatusChanges {
    listener: Option<PgListener>,
    id: String,
}

impl StatusChanges {
    /// Listens before the caller first checks the batch, so that no change falls in between.
    /// Without a LISTEN connection every wait lasts the whole fallback.
    pub async fn listen(pool: &PgPool, id: &str) -> Self {
        let listener = match PgListener::connect_with(pool).await {
            Ok(mut l) => l.listen(STATUS_CHANNEL).await.ok().map(|()| l),
            Err(_) => None,
        };
        if listener.is_none() {
            eprintln!("cannot LISTEN on {STATUS_CHANNEL}: polling every {FALLBACK:?}");
        }
        Self {
            listener,
            id: id.to_owned(),
        }
    }

    /// Returns at the batch's next status change, or after `fallback` at the latest.
    pub async fn next(&mut self, fallback: Duration) {
        let until = Instant::now() + fallback;
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep_until(until).await;
            return;
        };
        loop {
            match tokio::time::timeout_at(until, listener.recv()).await {
                Ok(Ok(n)) if n.payload() == self.id => return,
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => {
                    self.listener = None;
                    tokio::time::sleep_until(until).await;
                    return;
                }
                Err(_elapsed) => return,
            }
        }
    }
}
