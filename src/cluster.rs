//! Membership: each replica records a heartbeat and counts the live replicas, so that limits
//! meant for the whole cluster (the per-key request rate, each upstream endpoint's
//! `max_in_flight`: see `upstream::pool::share`) can be split between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::ClusterSettings;

/// Beats every `heartbeat_secs` until `stop`, keeping `live` (at least 1) current; leaves the
/// table on the way out. Should the database be unreachable, the last count stands.
pub async fn run(
    pool: PgPool,
    settings: ClusterSettings,
    live: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let id = format!("replica_{}", uuid::Uuid::new_v4().simple());
    let every = Duration::from_secs(settings.heartbeat_secs);
    // Three missed beats: gone.
    let stale_after = (every * 3).as_secs_f64();
    loop {
        match crate::store::replicas::beat(&pool, &id, stale_after).await {
            Ok(n) => {
                let n = usize::try_from(n).unwrap_or(1).max(1);
                if live.swap(n, Ordering::Relaxed) != n {
                    tracing::info!(replicas = n, "live replicas changed");
                }
                crate::metrics::get().cluster_replicas.set(n as i64);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if crate::worker::sleep_or_stop(&mut stop, every).await {
            break;
        }
    }
    if let Err(e) = crate::store::replicas::leave(&pool, &id).await {
        tracing::debug!(error = %e, "could not leave the replica table");
    }
}
