//! Membership: each replica records a heartbeat and counts the live replicas, so that limits
//! meant for the whole cluster (the per-key request rate, each upstream endpoint's
//! `max_in_flight`: see `upstream::pool::share`) can be split between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::config::ClusterSettings;
use crate::tasks::{sleep_or_cancelled, CancellationToken};

/// What the upstream pools see instead of a count while this replica joins a cluster that was
/// already running: it sends nothing upstream until the others have counted it, so that their
/// old shares and its new one never add up past the cap.
pub const JOINING: usize = usize::MAX;

/// Heartbeats a joining replica waits before its first upstream request (see [`run`]).
const JOIN_BEATS: u32 = 2;

/// The live replicas, as the two kinds of cluster-wide limit read them.
#[derive(Clone)]
pub struct Members {
    /// Live replicas, at least 1 (the per-key request rate).
    pub live: Arc<AtomicUsize>,
    /// The same, or [`JOINING`] until this replica's first full heartbeat (the upstream pools).
    pub upstream: Arc<AtomicUsize>,
}

impl Members {
    /// Before the first heartbeat: alone for the request rate, joining for the upstreams (the
    /// worker may be ready to send before the first beat has counted the others).
    pub fn starting() -> Self {
        Self {
            live: Arc::new(AtomicUsize::new(1)),
            upstream: Arc::new(AtomicUsize::new(JOINING)),
        }
    }
}

/// Beats every `heartbeat_secs` until `stop`, keeping `members` current; leaves the table on
/// the way out. Should the database be unreachable, the last count stands.
///
/// A replica that finds others at its first beat sends nothing upstream for [`JOIN_BEATS`]
/// more: after one, each of the others has beaten once more and counts it (and its own count
/// includes every replica that started with it: beats are serialized, so two replicas starting
/// together cannot both see themselves alone); the second gives the requests they sent under
/// their old, larger share a heartbeat to finish.
pub async fn run(
    pool: PgPool,
    settings: ClusterSettings,
    members: Members,
    stop: CancellationToken,
) {
    let id = format!("replica_{}", uuid::Uuid::new_v4().simple());
    let every = Duration::from_secs(settings.heartbeat_secs);
    // Three missed beats: gone.
    let stale_after = (every * 3).as_secs_f64();
    let mut joining: Option<u32> = None;
    loop {
        match crate::store::replicas::beat(&pool, &id, stale_after).await {
            Ok(n) => {
                let n = usize::try_from(n).unwrap_or(1).max(1);
                if members.live.swap(n, Ordering::Relaxed) != n {
                    tracing::info!(replicas = n, "live replicas changed");
                }
                let wait = *joining.get_or_insert(if n > 1 { JOIN_BEATS } else { 0 });
                if wait == JOIN_BEATS {
                    tracing::info!(
                        replicas = n,
                        beats = wait,
                        "joining a running cluster: no upstream request until the others have \
                         counted this replica"
                    );
                }
                members
                    .upstream
                    .store(if wait > 0 { JOINING } else { n }, Ordering::Relaxed);
                joining = Some(wait.saturating_sub(1));
                let metrics = crate::metrics::get();
                metrics.cluster_replicas.set(n as i64);
                metrics.cluster_joining.set(i64::from(wait > 0));
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if sleep_or_cancelled(&stop, every).await {
            break;
        }
    }
    if let Err(e) = crate::store::replicas::leave(&pool, &id).await {
        tracing::debug!(error = %e, "could not leave the replica table");
    }
}
