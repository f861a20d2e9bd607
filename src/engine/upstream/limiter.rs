//! The adaptive concurrency limit of one endpoint: how many requests this replica may have
//! outstanding there, learned from the answers' latency, from overload answers (429, 503,
//! timeouts) and, when the server exposes them, from its own queue gauges.
//!
//! A pure type: the caller passes the clock in, so the simulated-server tests drive it in
//! virtual time and the pool pays no syscall for it.
//!
//! # Algorithm: windowed Vegas with AIMD on overload
//!
//! Latency is judged per *window* of about one round trip, never per sample: a window is the
//! answers to requests **sent after** the last decision (an answer whose latency is longer than
//! the window's age measured the old limit), and it closes once it holds a limit's worth of them
//! (16 to 256) *and* their mean is known within 5 % (at most 1,024 answers): LLM answers vary
//! tenfold in length, and a mean of a few says little. A server with `C` slots and a
//! FIFO queue answers in its service time up to `C` requests at once and in `in_flight / C` times
//! it beyond, so the window mean over the *baseline* (the lowest window mean lately) measures the
//! queue, as in TCP Vegas. The baseline keeps that window's standard error: the minimum of many
//! noisy means lies below the truth, so the expected queue-free latency is `min + 2·se`, and a
//! window is queueing when `mean > expected × tolerance + 2·se`. A server with identical service
//! times has `se = 0` and the rule is the plain ratio; one with varied prompts is judged with the
//! slack its own noise calls for instead of being throttled by it.
//! - Queueing (`tolerance` 1.1: 10 % over the expected latency, a queue of a tenth of `C`): the
//!   limit drops to the knee Little's law gives, `in_flight × min / mean`, times `margin` (0.9),
//!   never below half the limit in one step. Landing a little *below* the knee measures a
//!   queue-free window every cycle, which keeps the baseline honest.
//! - Otherwise, if the window used at least half the limit (an idle route proves nothing), the
//!   limit grows: doubling per window until the first decrease (slow start: a fresh endpoint
//!   reaches its knee in a few round trips), then by `max(1, √limit / 4)`, sub-linear so that the
//!   cycle below/above the knee stays about ten windows at any size, and several replicas sharing
//!   one server drift towards equal shares.
//!
//! Overload answers (429, 503, a timeout) cut the limit to `backoff` (0.7) of itself at once:
//! 0.7 rather than TCP's 0.5 (as CUBIC does), because halving leaves a GPU half idle until the
//! limit has grown back, while a gateway's 429 usually means only a little too much.
//!
//! Every decrease starts a hold of one round trip (the last window mean) during which no other
//! decrease happens: the answers arriving then were sent under the old limit, so thirty 429s
//! coming back together are one congestion event, not thirty.
//!
//! # Re-learning the baseline without collapsing throughput
//!
//! Envoy's adaptive filter re-measures the minimum latency by dropping to a tiny concurrency
//! every few seconds, which costs throughput at every sampling. Here the baseline is the lower of
//! the minima of the current and the previous epoch of `relearn_windows` (20) windows, so an old
//! minimum expires after at most 40 windows, while the sawtooth above dips below the knee every
//! few windows and keeps a fresh minimum at hand: a shorter service time is learned at once, by
//! the minimum itself. A longer one (longer prompts) would read as a queue; so each latency
//! decrease is checked against the next window: when cutting in-flight by a quarter or more did
//! not lower the latency by 5 %, the latency was not queueing, the baseline is re-learned from
//! that window and the cut is undone.
//!
//! # Interactive traffic first: the server's queue (vLLM `/metrics`)
//!
//! Latency cannot see the knee from below (it stays flat until the server queues), so without
//! gauges the limit cycles around `0.9·C`..`1.15·C` and the server holds a short queue part of
//! the time. While the pool feeds [`Limiter::on_server_queue`] (at least every `metrics_stale`,
//! 5 s), the gauges steer instead of the latency: they see every client of the server (all
//! replicas and the interactive users) and its queue directly.
//! - The target is a GPU full but for `headroom` (1) slot, so that an interactive request finds
//!   a free one instead of queueing behind batch lines. Once the server has queued, `capacity`
//!   is the `running` it queued at; the *excess* is `waiting + running − (capacity − headroom)`.
//! - An excess in two samples in a row (one could be an interactive burst the server is about to
//!   schedule; in slow start one is enough: the queue is the doubling's own) cuts the limit by
//!   this replica's part of it (`limit / (running + waiting)`, so that N replicas together give
//!   back the excess once, not N times), once per hold.
//! - Room (an excess of −1 or less) is taken in equal parts by the replicas that used at least
//!   half their limit since the last sample (`room / replicas` each, whatever its limit; × 1.5 a
//!   sample in slow start, one a sample while the capacity is unknown). Equal increases and
//!   proportional decreases drift to equal shares, as AIMD flows do.
//! - Pinned at the headroom (no room, no excess), a replica above the equal share
//!   `(capacity − headroom) / replicas` gives one back per sample: otherwise whoever grew first
//!   would keep the GPU, and a replica left with a limit of 1 would crawl through its chunks
//!   long after the others ran out of work.
//! - A server whose capacity grew would never show it behind the headroom: after
//!   `probe_interval` (30 s) pinned there, the capacity is forgotten and the limit grows by one a
//!   sample until the server queues again (a request or two wait for a sample per probe).

//! # Cost
//!
//! No allocation; [`Limiter::on_success`] is a few additions and comparisons plus a square root
//! (12–19 ns per answer in release on a shared 2-core machine: the `cost_per_call` test).

use std::time::{Duration, Instant};

/// The limiter's bounds and constants; [`LimiterConfig::new`] takes the defaults documented in
/// the module comment. `initial`, `min` and `max` are clamped by [`Limiter::new`] so that
/// `1 <= min <= initial <= max` whatever they are.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// The limit before anything is learned.
    pub initial: usize,
    /// The floor (at least 1: an endpoint that gets no request can't show it recovered).
    pub min: usize,
    /// The cap (the endpoint's share of `max_in_flight`).
    pub max: usize,
    /// Window latency over the expected queue-free latency above which the server is queueing.
    pub tolerance: f64,
    /// After a latency decrease, the limit sits at this fraction of the estimated knee.
    pub margin: f64,
    /// The multiplicative decrease on 429, 503 and timeouts.
    pub backoff: f64,
    /// Windows per baseline epoch: the lowest latency is forgotten after two epochs.
    pub relearn_windows: u32,
    /// Server slots the batch leaves free for interactive requests when the gauges are known.
    pub headroom: f64,
    /// Gauges older than this are ignored (the latency alone decides growth again).
    pub metrics_stale: Duration,
    /// How long the limit stays pinned at `capacity − headroom` before probing for more.
    pub probe_interval: Duration,
    /// The round trip assumed for the decrease hold before any answer was measured.
    pub default_rtt: Duration,
}

impl LimiterConfig {
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Self {
            initial,
            min,
            max,
            tolerance: 1.1,
            margin: 0.9,
            backoff: 0.7,
            relearn_windows: 20,
            headroom: 1.0,
            metrics_stale: Duration::from_secs(5),
            probe_interval: Duration::from_secs(30),
            default_rtt: Duration::from_secs(1),
        }
    }
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self::new(8, 1, 256)
    }
}

/// Answers to requests sent since the last decision.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    count: u32,
    rtt_sum: f64,
    rtt_sq_sum: f64,
    in_flight_sum: f64,
    in_flight_max: usize,
}

impl Window {
    fn mean(&self) -> f64 {
        self.rtt_sum / f64::from(self.count)
    }

    /// The standard error of the mean: a rise within it is noise (varied prompts), not a queue.
    fn se(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let (n, mean) = (f64::from(self.count), self.mean());
        ((self.rtt_sq_sum - n * mean * mean).max(0.0) / (n - 1.0) / n).sqrt()
    }

    fn relative_se(&self) -> f64 {
        let mean = self.mean();
        if mean > 0.0 {
            self.se() / mean
        } else {
            0.0
        }
    }
}

/// A window is judged once its mean is known within 5 %: LLM answers vary tenfold in length,
/// and a mean of 16 of them says little. Capped, so that a wild spread still gets decisions; not
/// in slow start, which only looks for the order of magnitude and would crawl at 4 in flight.
const WINDOW_PRECISION: f64 = 0.05;
const MAX_WINDOW: u32 = 1024;

/// The lowest window mean of an epoch, with its standard error: the spread of service times
/// when nothing queues, which tells a lucky window (the minimum of many noisy means lies below
/// the truth) and noise from a queue.
#[derive(Debug, Clone, Copy)]
struct Base {
    mean: f64,
    se: f64,
}

impl Base {
    const NONE: Base = Base {
        mean: f64::INFINITY,
        se: 0.0,
    };

    /// The latency expected with no queue (the minimum corrected for its luck).
    fn expected(self) -> f64 {
        self.mean + 2.0 * self.se
    }
}

/// A latency decrease waiting for the next window to tell whether it lowered the latency.
#[derive(Debug, Clone, Copy)]
struct Cut {
    mean: f64,
    in_flight: f64,
    limit: f64,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    cfg: LimiterConfig,
    /// Kept fractional so that small steps add up; `limit()` rounds down.
    limit: f64,
    slow_start: bool,
    window: Window,
    window_start: Instant,
    /// Lowest window mean (seconds) of this epoch and of the previous one; infinite when none.
    base_now: Base,
    base_prev: Base,
    epoch_windows: u32,
    last_mean: Option<f64>,
    pending_cut: Option<Cut>,
    /// No decrease before this instant: the answers arriving until then measured the old limit.
    hold_until: Instant,
    metrics_at: Option<Instant>,
    over_before: bool,
    /// The most requests outstanding here since the last gauge sample.
    busy: usize,
    /// The server's running count at which it last queued.
    capacity: Option<f64>,
    pinned_since: Option<Instant>,
}

impl Limiter {
    pub fn new(cfg: LimiterConfig, now: Instant) -> Self {
        let mut cfg = cfg;
        cfg.min = cfg.min.max(1);
        cfg.max = cfg.max.max(cfg.min);
        cfg.initial = cfg.initial.clamp(cfg.min, cfg.max);
        Self {
            limit: cfg.initial as f64,
            cfg,
            slow_start: true,
            window: Window::default(),
            window_start: now,
            base_now: Base::NONE,
            base_prev: Base::NONE,
            epoch_windows: 0,
            last_mean: None,
            pending_cut: None,
            hold_until: now,
            metrics_at: None,
            over_before: false,
            busy: 0,
            capacity: None,
            pinned_since: None,
        }
    }

    /// The number of requests that may be outstanding now (min <= limit <= max).
    pub fn limit(&self) -> usize {
        (self.limit.round() as usize).clamp(self.cfg.min, self.cfg.max)
    }

    /// The lowest latency seen lately (the baseline the current latency is judged against).
    pub fn min_rtt(&self) -> Option<Duration> {
        let base = self.baseline();
        base.mean.is_finite().then(|| secs(base.expected()))
    }

    /// The mean latency of the last complete window.
    pub fn latency(&self) -> Option<Duration> {
        self.last_mean.map(secs)
    }

    /// A request that got a usable answer (any status but 429/503), its latency, and how many
    /// were in flight when it started.
    pub fn on_success(&mut self, rtt: Duration, in_flight: usize, now: Instant) {
        self.busy = self.busy.max(in_flight);
        if rtt >= now.saturating_duration_since(self.window_start) {
            return; // sent before the last decision: it measured the old limit
        }
        let w = &mut self.window;
        let rtt = rtt.as_secs_f64();
        w.count += 1;
        w.rtt_sum += rtt;
        w.rtt_sq_sum += rtt * rtt;
        w.in_flight_sum += in_flight as f64;
        w.in_flight_max = w.in_flight_max.max(in_flight);
        if w.count as f64 >= self.limit.clamp(16.0, 256.0)
            && (self.slow_start || w.count >= MAX_WINDOW || w.relative_se() <= WINDOW_PRECISION)
        {
            self.close_window(now);
        }
    }

    /// The server said it is overloaded (429, 503) or a request to a healthy endpoint timed out.
    pub fn on_overload(&mut self, now: Instant) {
        if now >= self.hold_until {
            self.pending_cut = None;
            self.decrease_to(self.limit * self.cfg.backoff, now);
        }
    }

    /// The server's own queue (vLLM's `num_requests_waiting`, `num_requests_running`) as last
    /// sampled, and how many replicas share the server: while these are fresh they steer the
    /// limit instead of the latency (see the module comment).
    pub fn on_server_queue(&mut self, waiting: f64, running: f64, replicas: usize, now: Instant) {
        if !waiting.is_finite() || !running.is_finite() || waiting < 0.0 || running < 0.0 {
            return;
        }
        self.metrics_at = Some(now);
        let busy = std::mem::take(&mut self.busy);
        let replicas = replicas.max(1) as f64;
        if waiting == 0.0 && self.capacity.is_some_and(|c| running > c) {
            self.capacity = None; // more fits than when it last queued
        }
        // A server that queues holds no more than it runs, whatever it held before.
        let capacity = match (self.capacity, waiting > 0.0) {
            (Some(c), true) => c.min(running),
            (None, true) => running,
            (c, false) => c.unwrap_or(f64::INFINITY),
        };
        // What the server holds beyond a full-but-one GPU: the queue and the interactive slot.
        let excess = waiting + running - (capacity - self.cfg.headroom);
        let over = excess > 0.0;
        // One sample over could be an interactive burst about to be scheduled; two are a trend.
        // In slow start the queue is this limiter's own doubling: no need to wait for a second.
        let sustained = std::mem::replace(&mut self.over_before, over) && over;
        if over {
            self.pinned_since = None;
            if sustained || self.slow_start {
                if waiting > 0.0 && running >= 1.0 {
                    self.capacity = Some(running);
                }
                if now >= self.hold_until {
                    // This replica's part of what the server holds: N replicas together give
                    // back the excess once, not N times, each in proportion to its limit.
                    let share = (self.limit / (running + waiting).max(1.0)).min(1.0);
                    let cut = (excess * share).min(self.limit * (1.0 - self.cfg.backoff));
                    self.pending_cut = None;
                    self.decrease_to(self.limit - cut, now);
                }
            }
            return;
        }
        // An idle route proves nothing about the room it would take.
        let used = busy as f64 * 2.0 >= self.limit;
        if excess <= -1.0 || self.capacity.is_none() {
            self.pinned_since = None;
            if used {
                // Additive and equal for every replica (its share of the room, whatever its
                // limit), so that with the proportional cuts above the replicas drift to
                // equal shares, as AIMD flows do.
                let step = match (self.slow_start, self.capacity) {
                    // Half, not double: N replicas doubling together overshoot by as much as
                    // the server holds, and the queue they make is what interactive users wait in.
                    (true, _) => self.limit / 2.0,
                    (false, None) => 1.0,
                    (false, Some(_)) => -excess / replicas,
                };
                self.limit = (self.limit + step).min(self.cfg.max as f64);
            }
            return;
        }
        // Pinned at the headroom. A replica above an equal share gives a slot back, which the
        // others below it take as room: without this, whoever grew first would keep the GPU.
        let fair = (capacity - self.cfg.headroom) / replicas;
        if self.limit > fair + 1.0 {
            self.limit = (self.limit - 1.0).max(self.cfg.min as f64);
        }
        // The server may have grown behind the headroom; probe now and then.
        let since = *self.pinned_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.cfg.probe_interval {
            self.capacity = None;
            self.pinned_since = None;
        }
    }

    fn baseline(&self) -> Base {
        if self.base_now.mean <= self.base_prev.mean {
            self.base_now
        } else {
            self.base_prev
        }
    }

    fn close_window(&mut self, now: Instant) {
        let w = std::mem::take(&mut self.window);
        self.window_start = now;
        let n = w.count as f64;
        let (mean, se) = (w.mean(), w.se());
        let in_flight = w.in_flight_sum / n;
        self.last_mean = Some(mean);

        self.epoch_windows += 1;
        if self.epoch_windows >= self.cfg.relearn_windows.max(1) {
            self.base_prev = self.base_now;
            self.base_now = Base::NONE;
            self.epoch_windows = 0;
        }
        if mean < self.base_now.mean {
            self.base_now = Base { mean, se };
        }

        if let Some(cut) = self.pending_cut.take() {
            // Queueing latency falls with in-flight; a service time that grew does not.
            if in_flight <= cut.in_flight * 0.75 && mean >= cut.mean * 0.95 {
                self.base_prev = Base::NONE;
                self.base_now = Base { mean, se };
                self.limit = self.limit.max(cut.limit); // the cut was a mistake: undo it
            }
        }

        if self.gauges_fresh(now) {
            return; // the server's own queue steers (on_server_queue), not its latency
        }
        let base = self.baseline();
        if mean > base.expected() * self.cfg.tolerance + 2.0 * base.se {
            if now >= self.hold_until {
                // Little's law with the raw minimum: aiming low on purpose, so that the dip
                // lands below the knee and measures a queue-free window.
                let knee = in_flight * base.mean / mean;
                let limit = self.limit;
                self.pending_cut = Some(Cut {
                    mean,
                    in_flight,
                    limit,
                });
                self.decrease_to((knee * self.cfg.margin).max(self.limit / 2.0), now);
            }
        } else if (w.in_flight_max as f64) * 2.0 >= self.limit {
            let step = if self.slow_start {
                self.limit
            } else {
                (self.limit.sqrt() / 4.0).max(1.0)
            };
            self.limit = (self.limit + step).min(self.cfg.max as f64);
        }
    }

    fn gauges_fresh(&self, now: Instant) -> bool {
        self.metrics_at
            .is_some_and(|at| now.saturating_duration_since(at) <= self.cfg.metrics_stale)
    }

    fn decrease_to(&mut self, target: f64, now: Instant) {
        self.limit = target.clamp(self.cfg.min as f64, self.cfg.max as f64);
        self.slow_start = false;
        // Capped so that one absurd latency cannot suspend decreases for good.
        let rtt = self.last_mean.map_or(self.cfg.default_rtt, secs);
        let hold = rtt.min(Duration::from_secs(600));
        self.hold_until = now.checked_add(hold).unwrap_or(now);
        // Answers already in flight measured the old limit; start a fresh window.
        self.window = Window::default();
        self.window_start = now;
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests;
