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
use std::sync::{Arc, Mutex};
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
/// The adaptive limit of a fresh endpoint; it grows fast until the server queues (`limiter`).
const INITIAL_LIMIT: usize = 4;
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

    /// `<scheme>://<host>:<port>/tokenize`: where vLLM counts a prompt's tokens.
    pub fn tokenize_url(&self) -> Option<String> {
        self.at_origin("/tokenize")
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
}

mod watch;

use watch::probe_until_up;
pub use watch::watch_server_queue;

#[cfg(test)]
mod tests;
