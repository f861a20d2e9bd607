//! One LISTEN connection per replica, fanned out to the parts that want PostgreSQL's
//! notifications (the worker, webhook delivery, the key copy, event streams). Notifications are hints: each
//! subscriber also polls, and when the connection drops it is told so (`Lost`), then told when
//! it listens again (`Resume`), since whatever was announced in between is gone and must be
//! caught up on (the key copy reloads, the worker and webhook delivery look for work).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::tasks::{sleep_or_cancelled, CancellationToken, TaskGroup};

/// Notices a subscriber may fall behind by; further behind, it is sent `Resume` instead.
const BACKLOG: usize = 256;
/// Waits between attempts to listen again, doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A NOTIFY on one of the subscriber's channels.
    Message {
        channel: &'static str,
        payload: String,
    },
    /// The connection dropped: nothing is announced until `Resume`.
    Lost,
    /// Listening (again, or for the first time): what was announced before may have been
    /// missed; catch up. Also sent to a subscriber that fell too far behind.
    Resume,
}

/// What a subscriber receives.
pub struct Subscription {
    notices: broadcast::Receiver<Notice>,
}

impl Subscription {
    /// The next notice. Once the connection's task has stopped, never returns.
    pub async fn recv(&mut self) -> Notice {
        match self.notices.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => Notice::Resume,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// A channel's notices for readers that come and go (one per open event stream): each takes
/// its own `Subscription`, which sees what is announced from then on.
#[derive(Clone)]
pub struct Feed {
    notices: broadcast::Sender<Notice>,
}

impl Feed {
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            notices: self.notices.subscribe(),
        }
    }
}

/// Subscriptions are taken before the connection starts, so none misses the first `Resume`.
#[derive(Default)]
pub struct Notifications {
    subscribers: Vec<(Vec<&'static str>, broadcast::Sender<Notice>)>,
}

impl Notifications {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscribe(&mut self, channels: &[&'static str]) -> Subscription {
        let (tx, notices) = broadcast::channel(BACKLOG);
        self.subscribers.push((channels.to_vec(), tx));
        Subscription { notices }
    }

    /// A [`Feed`] of `channels`, for readers that subscribe later.
    pub fn feed(&mut self, channels: &[&'static str]) -> Feed {
        let (tx, _) = broadcast::channel(BACKLOG);
        self.subscribers.push((channels.to_vec(), tx.clone()));
        Feed { notices: tx }
    }

    /// Listens on every subscribed channel until the group stops.
    pub fn start(self, pool: PgPool, group: &TaskGroup) {
        if self.subscribers.is_empty() {
            return;
        }
        group.spawn(self.run(pool, group.token()));
    }

    fn channels(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = self
            .subscribers
            .iter()
            .flat_map(|(c, _)| c.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn send(&self, notice: &Notice) {
        for (channels, tx) in &self.subscribers {
            let wanted = match notice {
                Notice::Message { channel, .. } => channels.contains(channel),
                Notice::Lost | Notice::Resume => true,
            };
            if wanted {
                // No receiver left: that subscriber has stopped.
                let _ = tx.send(notice.clone());
            }
        }
    }

    async fn run(self, pool: PgPool, stop: CancellationToken) {
        let channels = self.channels();
        let mut retry = RETRY_FIRST;
        loop {
            let mut listener = match listen(&pool, &channels).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, ?channels, "cannot LISTEN for notifications; polling meanwhile, retrying");
                    if sleep_or_cancelled(&stop, retry).await {
                        return;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_FIRST;
            self.send(&Notice::Resume);
            loop {
                let next = tokio::select! {
                    n = listener.try_recv() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Ok(Some(n)) => {
                        if let Some(&channel) = channels.iter().find(|c| **c == n.channel()) {
                            self.send(&Notice::Message {
                                channel,
                                payload: n.payload().to_owned(),
                            });
                        }
                    }
                    // Dropped (and perhaps re-established: either way, notifications may have
                    // been missed): listen afresh and tell the subscribers to catch up.
                    Ok(None) | Err(_) => {
                        tracing::info!("LISTEN connection lost; reconnecting");
                        self.send(&Notice::Lost);
                        break;
                    }
                }
            }
        }
    }
}

async fn listen(pool: &PgPool, channels: &[&'static str]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_subscriber_hears_its_channels_and_every_connection_change() {
        let mut hub = Notifications::new();
        let mut a = hub.subscribe(&["a"]);
        let mut ab = hub.subscribe(&["a", "b"]);
        assert_eq!(hub.channels(), ["a", "b"]);
        let b = |payload: &str| Notice::Message {
            channel: "b",
            payload: payload.into(),
        };
        hub.send(&Notice::Resume);
        hub.send(&b("1"));
        hub.send(&Notice::Lost);
        assert_eq!(a.recv().await, Notice::Resume);
        assert_eq!(a.recv().await, Notice::Lost);
        assert_eq!(ab.recv().await, Notice::Resume);
        assert_eq!(ab.recv().await, b("1"));
        assert_eq!(ab.recv().await, Notice::Lost);
        for i in 0..BACKLOG + 1 {
            hub.send(&b(&i.to_string()));
        }
        // Too far behind: told to catch up.
        assert_eq!(ab.recv().await, Notice::Resume);
    }
}
