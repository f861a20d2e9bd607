//! The pool's background work on its endpoints: reading a server's vLLM gauges for its
//! limiter, and probing an endpoint taken out until it answers again.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{share, Pool, PROBE_BASE, PROBE_MAX, PROBE_TIMEOUT};

/// How often the server's vLLM gauges are read while they steer the limit: often enough that a
/// queue an interactive request joined is seen within a request's time, and well inside the
/// limiter's 5 s staleness. Each reading costs the replica about half a millisecond of CPU.
const QUEUE_EVERY: Duration = Duration::from_millis(250);
/// ... and while the share bounds the limit (the server has room for all of it): they still
/// tell when the server starts queueing, at a quarter of the cost.
const QUEUE_IDLE_EVERY: Duration = Duration::from_secs(1);
/// An endpoint without gauges is asked again this seldom (it may be restarted with them).
const NO_QUEUE_EVERY: Duration = Duration::from_secs(60);
impl Pool {
    /// The server's own queue, as its vLLM gauges say, for the endpoint's limiter.
    fn server_queue(&self, idx: usize, load: crate::engine::upstream::vllm::VllmLoad) {
        let metrics = &self.endpoints[idx].metrics;
        metrics.server_waiting.set(load.waiting);
        metrics.server_running.set(load.running);
        let (moved, raised) = {
            let mut state = self.state.lock().expect("not poisoned");
            let s = &mut state[idx];
            let before = self.limit(s);
            // While joining this replica sends nothing; its limiter learns as if alone.
            let replicas = match self.replicas.load(Ordering::Relaxed) {
                crate::cluster::JOINING => 1,
                n => n,
            };
            s.limiter
                .on_server_queue(load.waiting, load.running, replicas, Instant::now());
            (self.observe(idx, s), self.limit(s) > before)
        };
        if let Some((from, to)) = moved {
            tracing::info!(upstream = %self.name, endpoint = %self.endpoints[idx].base_url,
                           from, to, waiting = load.waiting, running = load.running,
                           "endpoint limit changed");
        }
        // Only a higher limit lets waiting lines go; four times a second is too often to wake them
        // all for nothing.
        if raised {
            self.changed.notify_waiters();
        }
    }

    /// How soon to read the endpoint's gauges again: seldom while the share bounds the limit
    /// and lines use it (the gauges cannot raise it), often otherwise (an idle endpoint too, so
    /// that the first lines of a batch ramp up on fresh readings).
    fn gauges_every(&self, idx: usize) -> Duration {
        let state = self.state.lock().expect("not poisoned");
        let s = &state[idx];
        let share = share(self.cap, self.replicas.load(Ordering::Relaxed));
        if s.in_flight > 0 && s.limiter.limit() >= share {
            QUEUE_IDLE_EVERY
        } else {
            QUEUE_EVERY
        }
    }

    /// Takes an endpoint back in and wakes every waiting line.
    fn restore(&self, idx: usize) {
        {
            let mut state = self.state.lock().expect("not poisoned");
            state[idx].down = false;
            state[idx].failures = 0;
        }
        self.endpoints[idx].metrics.up.set(1);
        tracing::info!(upstream = %self.name, endpoint = %self.endpoints[idx].base_url,
                       "the endpoint answers again; sending it lines");
        self.changed.notify_waiters();
    }

    /// Whether the endpoint answers: `GET <origin>/health` 2xx, or, when that is missing or
    /// not 2xx, any answer but a server error from `GET <base_url>/models`.
    async fn probe(&self, idx: usize) -> bool {
        let endpoint = &self.endpoints[idx];
        let get = |url: String| self.client.get(url).timeout(PROBE_TIMEOUT).send();
        if let Some(health) = endpoint.health_url() {
            match get(health).await {
                Ok(res) if res.status().is_success() => return true,
                Ok(_) => {}
                // Not even a connection: no need to ask for the models.
                Err(e) if e.is_connect() || e.is_timeout() => return false,
                Err(_) => {}
            }
        }
        get(endpoint.url("/v1/models"))
            .await
            .is_ok_and(|res| !res.status().is_server_error())
    }
}

/// Reads an endpoint's vLLM gauges while it serves them (every [`QUEUE_EVERY`] or
/// [`QUEUE_IDLE_EVERY`]; every [`NO_QUEUE_EVERY`] while it does not) and hands them to its
/// limiter; ends with the pool.
/// `url`: the configured `metrics_url`, else the endpoint's origin + `/metrics`.
pub async fn watch_server_queue(pool: Weak<Pool>, idx: usize, url: String) {
    let mut had = None;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let load = async {
            let res = p
                .client
                .get(&url)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await
                .ok()?;
            if !res.status().is_success() {
                return None;
            }
            crate::engine::upstream::vllm::parse(&res.text().await.ok()?)
        }
        .await;
        let endpoint = &p.endpoints[idx].base_url;
        match (load, had) {
            (Some(load), _) => {
                if had != Some(true) {
                    tracing::info!(upstream = %p.name, %endpoint, %url,
                                   "reading the server's vLLM gauges: batch lines keep its queue empty");
                }
                p.server_queue(idx, load);
            }
            (None, None | Some(true)) => tracing::info!(upstream = %p.name, %endpoint, %url,
                "no vLLM gauges at this address: the endpoint's limit follows latency alone"),
            (None, Some(false)) => {}
        }
        let every = if load.is_some() {
            p.gauges_every(idx)
        } else {
            NO_QUEUE_EVERY
        };
        had = Some(load.is_some());
        drop(p);
        tokio::time::sleep(every).await;
    }
}

/// Probes an endpoint taken out until it answers, backing off; ends with the pool.
pub(super) async fn probe_until_up(pool: Weak<Pool>, idx: usize) {
    let mut delay = {
        let Some(pool) = pool.upgrade() else { return };
        let n = pool.state.lock().expect("not poisoned")[idx].ejections;
        PROBE_BASE
            .saturating_mul(2_u32.saturating_pow(n.saturating_sub(1).min(16)))
            .min(PROBE_MAX)
    };
    loop {
        tokio::time::sleep(delay).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.probe(idx).await {
            pool.restore(idx);
            return;
        }
        delay = (delay * 2).min(PROBE_MAX);
    }
}
