//! The endpoints of one upstream (`base_urls`), and which one a line goes to.
//!
//! - **Choice:** the endpoint with the fewest outstanding requests relative to its limit; ties
//!   go round robin (the scan starts one endpoint further each time).
//! - **Limit:** `max_in_flight` is a cap per endpoint for the whole cluster; each replica allows
//!   its share, `max(1, max_in_flight / live replicas)`, counted by the heartbeats of
//!   `crate::cluster` (see [`share`] for the transient bound), or the endpoint's adaptive limit
//!   when lower (`super::limiter`, fed by every answer and by the server's vLLM gauges, read by
//!   [`watch_server_queue`]) — both behind [`Pool::limit`].
//! - **Health:** an endpoint that refuses connections is taken out at once, one whose requests
//!   are dropped or time out [`EJECT_AFTER`] times in a row too; it gets no line until a probe
//!   (`GET <origin>/health`, else `GET <base_url>/models`) finds it back, probes spaced by an
//!   exponential backoff ([`PROBE_BASE`] doubling to [`PROBE_MAX`]).
//! - **Backpressure:** a 429 or 503 pauses the endpoint for every line: for the server's
//!   `Retry-After` / `retry-after-ms`, else an exponential backoff, both bounded by the retry
//!   settings (`worker.retry_base_ms`, `worker.retry_max_ms`).
//!
//! Lines wait in [`Pool::acquire`] while no endpoint can take them; a freed slot wakes one, an
//! endpoint coming back or a pause ending wakes them all. The state is one small std mutex
//! per pool, held for a few comparisons: the hot path allocates nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::limiter::{Limiter, LimiterConfig};
use super::{join, parse_uri, RetryPolicy};
use crate::metrics::EndpointMetrics;

/// Dropped connections or timeouts in a row after which an endpoint is taken out.
pub const EJECT_AFTER: u32 = 3;
/// The first probe of an endpoint taken out comes this long after; each failed one doubles it.
pub const PROBE_BASE: Duration = Duration::from_millis(500);
pub const PROBE_MAX: Duration = Duration::from_secs(10);
/// A waiting line looks again at least this often, whatever woke it or not: the share changes
/// with the live replica count, which sends no wake-up.
const RECHECK: Duration = Duration::from_secs(1);
/// A probe's answer must come within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The adaptive limit of a fresh endpoint; it doubles per round trip until the server queues.
const INITIAL_LIMIT: usize = 4;
/// How often the server's vLLM gauges are read: often enough that a queue an interactive
/// request joined is seen within a request's time, and well inside the limiter's 5 s staleness.
const QUEUE_EVERY: Duration = Duration::from_millis(250);
/// An endpoint without gauges is asked again this seldom (it may be restarted with them).
const NO_QUEUE_EVERY: Duration = Duration::from_secs(60);
/// The limit is logged when it has moved this share from the last logged value (at least 2).
const LOG_LIMIT_CHANGE: f64 = 0.2;

/// One server of a pool.
pub struct Endpoint {
    /// Its `base_url`, without a trailing slash; also its label in logs.
    pub base_url: String,
    /// The URL of each batch endpoint, parsed once rather than per request.
    uris: Vec<(&'static str, http::Uri)>,
    /// Its series in `/metrics`, looked up once.
    metrics: EndpointMetrics,
}

impl Endpoint {
    fn new(upstream: &str, base_url: &str) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let uris = crate::domain::Endpoint::ALL
            .iter()
            .filter_map(|e| {
                let uri = parse_uri(&join(&base_url, e.as_str())).ok()?;
                Some((e.as_str(), uri))
            })
            .collect();
        let metrics = EndpointMetrics::new(upstream, &base_url);
        Self {
            base_url,
            uris,
            metrics,
        }
    }

    pub fn url(&self, endpoint: &str) -> String {
        join(&self.base_url, endpoint)
    }

    pub fn uri(&self, endpoint: &str) -> Result<http::Uri, super::BoxError> {
        match self.uris.iter().find(|(e, _)| *e == endpoint) {
            Some((_, uri)) => Ok(uri.clone()),
            None => parse_uri(&self.url(endpoint)),
        }
    }

    /// `<scheme>://<host>:<port>/health`: vLLM, TGI and most servers answer there.
    fn health_url(&self) -> Option<String> {
        self.at_origin("/health")
    }

    /// `<scheme>://<host>:<port>/metrics`: where vLLM serves its Prometheus gauges.
    pub fn metrics_url(&self) -> Option<String> {
        self.at_origin("/metrics")
    }

    fn at_origin(&self, path: &str) -> Option<String> {
        let url = url::Url::parse(&self.base_url).ok()?;
        Some(format!("{}{path}", url.origin().ascii_serialization()))
    }
}

/// What became of a request sent through a [`Lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server answered, whatever it said (but 429/503): it is alive and not overloaded.
    Answered,
    /// 429 or 503: the server is overloaded; pause it for its hint, or back off.
    Overloaded(Option<Duration>),
    /// No connection could be made: the server is down.
    Refused,
    /// The connection failed before the answer was complete (reset, closed).
    Dropped,
    /// No complete answer in time.
    TimedOut,
}

/// The endpoint's health and load, under the pool's lock.
struct State {
    in_flight: usize,
    /// Follows the endpoint's load below the share (when the upstream is adaptive).
    limiter: Limiter,
    /// The limit last logged.
    logged_limit: usize,
    /// Taken out; a probe task brings it back.
    down: bool,
    /// Dropped connections and timeouts in a row.
    failures: u32,
    /// Times taken out without an answer since: the probes' backoff.
    ejections: u32,
    /// No line is sent before this (429/503).
    paused_until: Option<Instant>,
    /// When the current pause began: only an answer to a request sent after it lengthens the
    /// backoff, so the lines that were already in flight do not all escalate it.
    paused_at: Option<Instant>,
    /// Overloaded answers in a row: the backoff's exponent.
    overloads: u32,
}

impl State {
    fn new(cap: usize, now: Instant) -> Self {
        let limiter = Limiter::new(LimiterConfig::new(INITIAL_LIMIT, 1, cap), now);
        Self {
            in_flight: 0,
            logged_limit: limiter.limit(),
            limiter,
            down: false,
            failures: 0,
            ejections: 0,
            paused_until: None,
            paused_at: None,
            overloads: 0,
        }
    }
}

pub struct Pool {
    /// The upstream's name, for logs.
    name: String,
    endpoints: Box<[Endpoint]>,
    state: Mutex<Box<[State]>>,
    /// A slot was freed (`notify_one`), or an endpoint came back (`notify_waiters`).
    changed: Notify,
    /// Where the next scan starts: ties go round robin.
    next: AtomicUsize,
    /// `max_in_flight`: per endpoint, for the whole cluster.
    cap: usize,
    /// Whether the limiter's limit counts (`upstream.adaptive`).
    adaptive: bool,
    /// Live replicas, kept by `crate::cluster`.
    replicas: Arc<AtomicUsize>,
    /// Bounds of the pauses after 429/503.
    backoff: RetryPolicy,
    /// For probes.
    client: reqwest::Client,
}

/// This replica's share of a cap for the whole cluster: `max(1, cap / replicas)`.
///
/// The count comes from the heartbeats (`cluster.heartbeat_secs`, see `crate::cluster`). A
/// replica that joins a running cluster sends nothing (`replicas` =
/// [`crate::cluster::JOINING`]: a share of 0) until its second beat, by which time the others
/// count it; so the only excess over the cap is what the others still have in flight under
/// their old share when they learn of a newcomer (it finishes within a request's time). A replica that dies is counted for
/// 3 heartbeats more, during which the others stay below the cap. With more replicas than
/// `cap`, each still sends one request at a time, so the endpoint sees up to one per replica.
/// API-only replicas (`worker.enabled=false`) are counted too: the share is then smaller than
/// it could be, never larger.
pub fn share(cap: usize, replicas: usize) -> usize {
    if replicas == crate::cluster::JOINING {
        return 0;
    }
    (cap / replicas.max(1)).max(1)
}

/// A slot at one endpoint, held while a request is outstanding there; given back on drop.
/// [`Lease::finish`] also tells the pool how the request went.
pub struct Lease<'a> {
    pool: &'a Arc<Pool>,
    idx: usize,
    started: Instant,
    /// Outstanding at the endpoint when this was taken, itself included (for the limiter).
    in_flight: usize,
    finished: bool,
}

impl Lease<'_> {
    pub fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoints[self.idx]
    }

    pub fn finish(mut self, verdict: Verdict) {
        self.finished = true;
        self.pool
            .release(self.idx, self.started, self.in_flight, Some(verdict));
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.pool
                .release(self.idx, self.started, self.in_flight, None);
        }
    }
}

impl Pool {
    pub fn new(
        name: &str,
        base_urls: &[&str],
        cap: usize,
        adaptive: bool,
        replicas: Arc<AtomicUsize>,
        backoff: RetryPolicy,
        client: reqwest::Client,
    ) -> Arc<Self> {
        let (cap, now) = (cap.max(1), Instant::now());
        let pool = Arc::new(Self {
            name: name.to_owned(),
            endpoints: base_urls.iter().map(|u| Endpoint::new(name, u)).collect(),
            state: Mutex::new(base_urls.iter().map(|_| State::new(cap, now)).collect()),
            changed: Notify::new(),
            next: AtomicUsize::new(0),
            cap,
            adaptive,
            replicas,
            backoff,
            client,
        });
        {
            let state = pool.state.lock().expect("not poisoned");
            for (e, s) in pool.endpoints.iter().zip(state.iter()) {
                e.metrics.up.set(1);
                e.metrics.limit.set(pool.limit(s) as i64);
            }
        }
        pool
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoints, those not taken out first (each group in configuration order): whom to
    /// ask for the model list.
    pub fn by_health(&self) -> Vec<&Endpoint> {
        let state = self.state.lock().expect("not poisoned");
        let (up, down): (Vec<usize>, Vec<usize>) =
            (0..self.endpoints.len()).partition(|&i| !state[i].down);
        up.into_iter()
            .chain(down)
            .map(|i| &self.endpoints[i])
            .collect()
    }

    /// The requests this replica may have outstanding at one endpoint now: its share of the
    /// cluster's cap, or the endpoint's adaptive limit when lower.
    fn limit(&self, state: &State) -> usize {
        let share = share(self.cap, self.replicas.load(Ordering::Relaxed));
        if self.adaptive {
            share.min(state.limiter.limit())
        } else {
            share
        }
    }

    /// A slot at the best endpoint that can take a request now, waiting as long as none can
    /// (every endpoint full, paused or down). `None` once `stopped` resolves: the line's batch
    /// is cancelled or expired, or its claim lost, and nothing more of it may start.
    pub async fn acquire<'a, F>(self: &'a Arc<Self>, stopped: &mut F) -> Option<Lease<'a>>
    where
        F: std::future::Future<Output = ()> + Unpin,
    {
        // The common case first: a free slot, and no waiter registration to pay for.
        let mut wake_at = match self.pick() {
            Ok(lease) => return Some(lease),
            Err(at) => at,
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking again: a slot freed in between still wakes us.
            notified.as_mut().enable();
            match self.pick() {
                Ok(lease) => return Some(lease),
                Err(at) => wake_at = at.or(wake_at),
            }
            let now = Instant::now();
            let until = wake_at.map_or(now + RECHECK, |at| at.min(now + RECHECK));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = &mut *stopped => return None,
            }
            wake_at = None;
        }
    }

    /// Takes a slot at the endpoint with the lowest load relative to its limit, or tells when
    /// to look again (a pause ending; `None`: when woken).
    fn pick(self: &Arc<Self>) -> Result<Lease<'_>, Option<Instant>> {
        let n = self.endpoints.len();
        let start = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let now = Instant::now();
        let mut state = self.state.lock().expect("not poisoned");
        let mut best: Option<(usize, usize, usize)> = None;
        let mut wake_at: Option<Instant> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let s = &mut state[i];
            if s.down {
                continue;
            }
            if let Some(until) = s.paused_until {
                if until > now {
                    wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
                    continue;
                }
                s.paused_until = None;
            }
            let limit = self.limit(s);
            if s.in_flight >= limit {
                continue;
            }
            // in_flight / limit < best_in_flight / best_limit, without division.
            let better = match best {
                None => true,
                Some((_, f, l)) => s.in_flight * l < f * limit,
            };
            if better {
                best = Some((i, s.in_flight, limit));
            }
        }
        let (idx, _, _) = best.ok_or(wake_at)?;
        state[idx].in_flight += 1;
        let in_flight = state[idx].in_flight;
        self.endpoints[idx].metrics.in_flight.set(in_flight as i64);
        Ok(Lease {
            pool: self,
            idx,
            started: now,
            in_flight,
            finished: false,
        })
    }

    fn release(
        self: &Arc<Self>,
        idx: usize,
        started: Instant,
        in_flight: usize,
        verdict: Option<Verdict>,
    ) {
        let now = Instant::now();
        let metrics = &self.endpoints[idx].metrics;
        let mut eject = false;
        let mut paused = None;
        let (moved, raised);
        {
            let mut state = self.state.lock().expect("not poisoned");
            let s = &mut state[idx];
            let before = self.limit(s);
            s.in_flight -= 1;
            match verdict {
                None => {}
                Some(Verdict::Answered) => {
                    s.failures = 0;
                    s.ejections = 0;
                    s.overloads = 0;
                    s.limiter
                        .on_success(now.saturating_duration_since(started), in_flight, now);
                }
                Some(Verdict::Overloaded(hint)) => {
                    metrics.overloaded.inc();
                    s.limiter.on_overload(now);
                    s.failures = 0;
                    let escalate = s.paused_at.is_none_or(|at| started >= at);
                    if escalate {
                        s.overloads = s.overloads.saturating_add(1);
                    }
                    let until = now + self.backoff.delay(s.overloads, hint);
                    if s.paused_until.is_none_or(|u| u < until) {
                        if s.paused_until.is_none() {
                            paused = Some(until - now);
                        }
                        s.paused_until = Some(until);
                        s.paused_at = Some(now);
                    }
                }
                Some(Verdict::Refused) => eject = !s.down,
                Some(Verdict::Dropped | Verdict::TimedOut) => {
                    if verdict == Some(Verdict::TimedOut) {
                        // Too much asked of a server that is up; a dead one is taken out below.
                        s.limiter.on_overload(now);
                    }
                    s.failures += 1;
                    eject = !s.down && s.failures >= EJECT_AFTER;
                }
            }
            if eject {
                s.down = true;
                s.failures = 0;
                s.ejections = s.ejections.saturating_add(1);
                metrics.up.set(0);
            }
            raised = self.limit(s) > before;
            moved = self.observe(idx, s);
        }
        if let Some((from, to)) = moved {
            tracing::info!(upstream = %self.name, endpoint = %self.endpoints[idx].base_url,
                           from, to, "endpoint limit changed");
        }
        let endpoint = &self.endpoints[idx].base_url;
        if let Some(pause) = paused {
            tracing::info!(upstream = %self.name, %endpoint, ?pause,
                           "the endpoint is overloaded; pausing it for every line");
        }
        if eject {
            tracing::warn!(upstream = %self.name, %endpoint, ?verdict,
                           "taking the endpoint out; probing it until it answers");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(probe_until_up(Arc::downgrade(self), idx));
            }
        }
        self.wake(raised);
    }

    /// After a release: the freed slot is for one waiting line; a raised limit has room for
    /// more, which would otherwise wait for their next look ([`RECHECK`]).
    fn wake(&self, raised: bool) {
        if raised {
            self.changed.notify_waiters();
        } else {
            self.changed.notify_one();
        }
    }

    /// Publishes an endpoint's figures; the limit's move since it was last logged, when large
    /// enough to log (a limit moves by one or two every round trip).
    fn observe(&self, idx: usize, s: &mut State) -> Option<(usize, usize)> {
        let metrics = &self.endpoints[idx].metrics;
        let limit = self.limit(s);
        metrics.in_flight.set(s.in_flight as i64);
        metrics.limit.set(limit as i64);
        if let Some(latency) = s.limiter.latency() {
            metrics.latency.set(latency.as_secs_f64());
        }
        let from = s.logged_limit;
        let step = ((from as f64 * LOG_LIMIT_CHANGE).round() as usize).max(2);
        (limit.abs_diff(from) >= step).then(|| {
            s.logged_limit = limit;
            (from, limit)
        })
    }

    /// The server's own queue, as its vLLM gauges say, for the endpoint's limiter.
    fn server_queue(&self, idx: usize, load: super::vllm::VllmLoad) {
        let metrics = &self.endpoints[idx].metrics;
        metrics.server_waiting.set(load.waiting);
        metrics.server_running.set(load.running);
        let (moved, raised) = {
            let mut state = self.state.lock().expect("not poisoned");
            let s = &mut state[idx];
            let before = self.limit(s);
            let replicas = self.replicas.load(Ordering::Relaxed);
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

/// Reads an endpoint's vLLM gauges every [`QUEUE_EVERY`] while it serves them (every
/// [`NO_QUEUE_EVERY`] while it does not) and hands them to its limiter; ends with the pool.
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
            super::vllm::parse(&res.text().await.ok()?)
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
            QUEUE_EVERY
        } else {
            NO_QUEUE_EVERY
        };
        had = Some(load.is_some());
        drop(p);
        tokio::time::sleep(every).await;
    }
}

/// Probes an endpoint taken out until it answers, backing off; ends with the pool.
async fn probe_until_up(pool: Weak<Pool>, idx: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(urls: &[&str], cap: usize, replicas: usize) -> Arc<Pool> {
        Pool::new(
            "u",
            urls,
            cap,
            false,
            Arc::new(AtomicUsize::new(replicas)),
            RetryPolicy::fixed(5, Duration::from_millis(100), Duration::from_secs(2)),
            reqwest::Client::new(),
        )
    }

    /// What adaptive concurrency adds to a request's way through the pool (take a slot, give
    /// it back with an answer): run in release, `cargo test --release --lib lease_cost --
    /// --ignored --nocapture`. The fleet benchmark's `cpu` scenario measures whole replicas.
    #[test]
    #[ignore = "a measurement: run it in release"]
    fn lease_cost_with_and_without_adaptive() {
        for adaptive in [false, true] {
            let p = Pool::new(
                "u",
                &["http://a/v1", "http://b/v1"],
                64,
                adaptive,
                Arc::new(AtomicUsize::new(3)),
                RetryPolicy::fixed(5, Duration::from_millis(100), Duration::from_secs(2)),
                reqwest::Client::new(),
            );
            let n = 1_000_000u32;
            let started = Instant::now();
            for _ in 0..n {
                let Ok(lease) = p.pick() else {
                    panic!("a free slot")
                };
                lease.finish(Verdict::Answered);
            }
            let per = started.elapsed().as_nanos() as f64 / f64::from(n);
            println!("adaptive {adaptive}: {per:.0} ns per request through the pool");
        }
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[test]
    fn the_share_splits_the_cap_and_never_reaches_zero() {
        assert_eq!(share(6, 1), 6);
        assert_eq!(share(6, 3), 2);
        assert_eq!(share(6, 4), 1);
        assert_eq!(share(6, 10), 1);
        assert_eq!(share(40, 3), 13);
        assert_eq!(share(40, 6), 6);
        assert_eq!(share(5, 0), 5);
        assert_eq!(share(40, crate::cluster::JOINING), 0);
    }

    #[tokio::test]
    async fn lines_go_to_the_least_loaded_endpoint_within_the_share() {
        let p = pool(&["http://a/v1", "http://b/v1"], 4, 2);
        let mut stop = never();
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(p.acquire(&mut stop).await.unwrap());
        }
        let on = |i: usize, l: &[Lease<'_>]| l.iter().filter(|x| x.idx == i).count();
        assert_eq!((on(0, &leases), on(1, &leases)), (2, 2));
        // Both are at their share (4 / 2 replicas): a fifth waits until a slot frees.
        assert!(p.pick().is_err());
        let freed = leases.iter().position(|l| l.idx == 1).unwrap();
        leases.remove(freed);
        let next = p.acquire(&mut stop).await.unwrap();
        assert_eq!(next.idx, 1);
    }

    #[tokio::test]
    async fn the_share_follows_the_live_replicas() {
        let p = pool(&["http://a/v1"], 6, 3);
        let mut stop = never();
        let a = p.acquire(&mut stop).await.unwrap();
        let b = p.acquire(&mut stop).await.unwrap();
        assert!(p.pick().is_err());
        p.replicas.store(1, Ordering::Relaxed);
        let c = p.pick().ok().unwrap();
        drop((a, b, c));
    }

    #[tokio::test]
    async fn a_refused_endpoint_is_taken_out_and_others_get_the_lines() {
        let p = pool(&["http://127.0.0.1:1/v1", "http://b/v1"], 10, 1);
        let mut stop = never();
        let first = p.acquire(&mut stop).await.unwrap();
        assert_eq!(first.idx, 0);
        first.finish(Verdict::Refused);
        for _ in 0..5 {
            let l = p.acquire(&mut stop).await.unwrap();
            assert_eq!(l.idx, 1);
        }
        let order: Vec<&str> = p.by_health().iter().map(|e| e.base_url.as_str()).collect();
        assert_eq!(order, ["http://b/v1", "http://127.0.0.1:1/v1"]);
    }

    #[tokio::test]
    async fn drops_take_an_endpoint_out_only_in_a_row() {
        let p = pool(&["http://a/v1"], 10, 1);
        let mut stop = never();
        for _ in 0..EJECT_AFTER - 1 {
            p.acquire(&mut stop).await.unwrap().finish(Verdict::Dropped);
        }
        p.acquire(&mut stop)
            .await
            .unwrap()
            .finish(Verdict::Answered);
        for _ in 0..EJECT_AFTER - 1 {
            p.acquire(&mut stop)
                .await
                .unwrap()
                .finish(Verdict::TimedOut);
        }
        assert!(p.pick().is_ok());
        p.acquire(&mut stop).await.unwrap().finish(Verdict::Dropped);
        assert!(p.pick().is_err(), "taken out after {EJECT_AFTER} in a row");
    }

    #[tokio::test]
    async fn a_waiting_line_ends_when_its_batch_stops() {
        let p = pool(&["http://a/v1"], 1, 1);
        let mut stop = never();
        let _held = p.acquire(&mut stop).await.unwrap();
        let mut stopped = Box::pin(tokio::time::sleep(Duration::from_millis(50)));
        assert!(p.acquire(&mut stopped).await.is_none());
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_a_waiting_line() {
        let p = pool(&["http://a/v1"], 1, 1);
        let held = p.acquire(&mut never()).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move {
            let started = Instant::now();
            let _l = p2.acquire(&mut never()).await.unwrap();
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        let waited = waiter.await.unwrap();
        // Woken by the release, not by the 1 s re-check.
        assert!(waited < RECHECK, "{waited:?}");
    }

    /// A release that raises the adaptive limit lets every line that fits go at once, not one
    /// (the others would wait for the 1 s re-check).
    #[tokio::test]
    async fn a_raised_limit_wakes_every_line_that_fits() {
        let p = Pool::new(
            "u",
            &["http://a/v1"],
            64,
            true,
            Arc::new(AtomicUsize::new(1)),
            RetryPolicy::fixed(5, Duration::from_millis(1), Duration::from_millis(2)),
            reqwest::Client::new(),
        );
        let limit = |p: &Arc<Pool>| p.limit(&p.state.lock().unwrap()[0]);
        // 15 answers at the full initial limit: one short of the first window of slow start.
        for _ in 0..3 {
            let ls: Vec<_> = (0..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()).collect();
            tokio::time::sleep(Duration::from_millis(2)).await;
            ls.into_iter().for_each(|l| l.finish(Verdict::Answered));
        }
        let mut held: Vec<_> = (0..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(2)).await;
        for l in held.drain(1..) {
            l.finish(Verdict::Answered);
        }
        held.extend((1..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()));
        assert_eq!(limit(&p), INITIAL_LIMIT);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (p, tx) = (p.clone(), tx.clone());
                tokio::spawn(async move {
                    let _lease = p.acquire(&mut never()).await.unwrap();
                    tx.send(()).unwrap();
                    never().await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rx.try_recv().is_err(),
            "the waiters found room before the limit rose"
        );
        // The 16th answer closes the window: slow start doubles the limit.
        held.remove(0).finish(Verdict::Answered);
        assert!(limit(&p) > INITIAL_LIMIT + 3, "{}", limit(&p));
        for _ in 0..3 {
            tokio::time::timeout(RECHECK / 2, rx.recv())
                .await
                .expect("every waiter that fits goes at once")
                .unwrap();
        }
        waiters.iter().for_each(|w| w.abort());
    }

    #[tokio::test]
    async fn an_overloaded_endpoint_is_paused_for_every_line() {
        let p = pool(&["http://a/v1", "http://b/v1"], 10, 1);
        let mut stop = never();
        let l = p.acquire(&mut stop).await.unwrap();
        let paused = l.idx;
        l.finish(Verdict::Overloaded(Some(Duration::from_millis(300))));
        for _ in 0..4 {
            assert_ne!(p.acquire(&mut stop).await.unwrap().idx, paused);
        }
        // The only endpoint paused: lines wait for the pause to end, then go.
        let single = pool(&["http://a/v1"], 10, 1);
        single
            .acquire(&mut stop)
            .await
            .unwrap()
            .finish(Verdict::Overloaded(Some(Duration::from_millis(300))));
        let started = Instant::now();
        let _l = single.acquire(&mut stop).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn answers_to_requests_sent_before_a_pause_do_not_escalate_it() {
        let p = pool(&["http://a/v1"], 10, 1);
        let mut stop = never();
        let early: Vec<Lease<'_>> = vec![
            p.acquire(&mut stop).await.unwrap(),
            p.acquire(&mut stop).await.unwrap(),
            p.acquire(&mut stop).await.unwrap(),
        ];
        for l in early {
            l.finish(Verdict::Overloaded(None));
        }
        assert_eq!(p.state.lock().unwrap()[0].overloads, 1);
    }

    #[test]
    fn an_adaptive_endpoint_starts_low_and_an_overload_lowers_it_below_the_share() {
        let adaptive = Pool::new(
            "u",
            &["http://a:1/v1"],
            64,
            true,
            Arc::new(AtomicUsize::new(1)),
            RetryPolicy::fixed(5, Duration::from_millis(1), Duration::from_millis(2)),
            reqwest::Client::new(),
        );
        let limit = |p: &Arc<Pool>| p.limit(&p.state.lock().unwrap()[0]);
        assert_eq!(limit(&adaptive), INITIAL_LIMIT);
        let leases: Vec<_> = (0..INITIAL_LIMIT)
            .map(|_| adaptive.pick().ok().unwrap())
            .collect();
        assert!(adaptive.pick().is_err(), "past the adaptive limit");
        for l in leases {
            l.finish(Verdict::Overloaded(None));
        }
        assert!(limit(&adaptive) < INITIAL_LIMIT);
        // Off, the share alone.
        let fixed = pool(&["http://a:1/v1"], 64, 1);
        assert_eq!(limit(&fixed), 64);
    }

    #[test]
    fn health_is_asked_at_the_origin() {
        let e = Endpoint::new("u", "http://gpu-1:8000/v1/");
        assert_eq!(e.base_url, "http://gpu-1:8000/v1");
        assert_eq!(e.health_url().unwrap(), "http://gpu-1:8000/health");
        assert_eq!(e.url("/v1/models"), "http://gpu-1:8000/v1/models");
    }
}
