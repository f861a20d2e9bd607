//! A simulated GPU in virtual time: `C` slots, a service time `S` (±5 % by default, so that
//! slots do not run in lock-step; optionally exact, wider, or exponential), a FIFO queue beyond
//! (optionally answering 429 past `Q` waiting), and closed-loop clients that always keep
//! `limit()` requests outstanding. Deterministic: the clock is a counter of nanoseconds and the
//! spread comes from a fixed-seed generator.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::super::{Limiter, LimiterConfig};

pub(super) const MS: u64 = 1_000_000;

pub(super) struct Server {
    /// When each slot is next free; a new request takes the earliest, which is FIFO.
    pub(super) slots: BinaryHeap<Reverse<u64>>,
    pub(super) service: u64,
    /// Service time spread, ± this fraction (uniform), from a fixed-seed generator.
    pub(super) jitter: f64,
    /// Exponential service times instead (mean `service`): prompts and answers of every length.
    pub(super) exponential: bool,
    pub(super) max_waiting: Option<usize>,
    /// (start, end) of every accepted request not yet finished.
    pub(super) jobs: Vec<(u64, u64)>,
    pub(super) rng: u64,
}

impl Server {
    pub(super) fn new(slots: usize, service: u64) -> Self {
        Self {
            slots: (0..slots).map(|_| Reverse(0)).collect(),
            service,
            jitter: 0.05,
            exponential: false,
            max_waiting: None,
            jobs: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub(super) fn prune(&mut self, now: u64) {
        self.jobs.retain(|&(_, end)| end > now);
    }

    pub(super) fn waiting(&mut self, now: u64) -> usize {
        self.prune(now);
        self.jobs.iter().filter(|&&(start, _)| start > now).count()
    }

    pub(super) fn running(&mut self, now: u64) -> usize {
        self.prune(now);
        self.jobs.iter().filter(|&&(start, _)| start <= now).count()
    }

    pub(super) fn service_time(&mut self) -> u64 {
        if self.jitter == 0.0 && !self.exponential {
            return self.service;
        }
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        if self.exponential {
            return (self.service as f64 * -(1.0 - u).ln()) as u64;
        }
        (self.service as f64 * (1.0 + self.jitter * (2.0 * u - 1.0))) as u64
    }

    /// The time the answer comes back, or `None` for an immediate 429.
    pub(super) fn submit(&mut self, now: u64) -> Option<u64> {
        let Reverse(free) = self.slots.pop().expect("at least one slot");
        if let Some(q) = self.max_waiting {
            if free > now && self.waiting(now) >= q {
                self.slots.push(Reverse(free));
                return None;
            }
        }
        let start = free.max(now);
        let end = start + self.service_time();
        self.slots.push(Reverse(end));
        self.jobs.push((start, end));
        Some(end)
    }

    /// Requests already placed keep their times; only new ones see the new slot count.
    pub(super) fn set_slots(&mut self, slots: usize, now: u64) {
        let mut free: Vec<u64> = self.slots.drain().map(|Reverse(t)| t).collect();
        free.sort_unstable();
        free.resize(slots, now);
        self.slots = free.into_iter().map(Reverse).collect();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Event {
    Answer {
        client: usize,
        sent: u64,
        in_flight: usize,
        ok: bool,
    },
    /// One client reads the gauges (each on its own clock, as replicas do).
    Gauges(usize),
    Sample,
}

pub(super) struct Client {
    pub(super) limiter: Limiter,
    pub(super) in_flight: usize,
    /// Has lines to send (a replica whose chunks ran out sends nothing).
    pub(super) active: bool,
}

pub(super) struct Sim {
    t0: Instant,
    pub(super) now: u64,
    pub(super) server: Server,
    pub(super) clients: Vec<Client>,
    pub(super) events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    pub(super) seq: u64,
    pub(super) gauges_every: Option<u64>,
    pub(super) sample_every: u64,
    /// (time, sum of the clients' limits) every `sample_every`.
    pub(super) samples: Vec<(u64, usize)>,
    /// (time, waiting, running) at every gauge sample.
    pub(super) gauges: Vec<(u64, usize, usize)>,
    pub(super) answered: Vec<u64>,
    pub(super) rejected: Vec<u64>,
}

impl Sim {
    pub(super) fn new(server: Server, clients: usize, cfg: LimiterConfig) -> Self {
        let t0 = Instant::now();
        let sample_every = (server.service / 4).max(MS);
        let mut sim = Self {
            t0,
            now: 0,
            server,
            clients: (0..clients)
                .map(|_| Client {
                    limiter: Limiter::new(cfg.clone(), t0),
                    in_flight: 0,
                    active: true,
                })
                .collect(),
            events: BinaryHeap::new(),
            seq: 0,
            gauges_every: None,
            sample_every,
            samples: Vec::new(),
            gauges: Vec::new(),
            answered: Vec::new(),
            rejected: Vec::new(),
        };
        sim.push(0, Event::Sample);
        sim
    }

    pub(super) fn one(slots: usize, service_ms: u64) -> Self {
        Self::new(
            Server::new(slots, service_ms * MS),
            1,
            LimiterConfig::new(4, 1, 1000),
        )
    }

    pub(super) fn with_gauges(mut self, every: u64) -> Self {
        self.gauges_every = Some(every);
        // Replicas read the gauges independently: spread their readings over the period.
        let n = self.clients.len() as u64;
        for client in 0..self.clients.len() {
            self.push(every * client as u64 / n, Event::Gauges(client));
        }
        self
    }

    pub(super) fn at(&self, t: u64) -> Instant {
        self.t0 + Duration::from_nanos(t)
    }

    pub(super) fn push(&mut self, t: u64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, e)));
    }

    pub(super) fn fill(&mut self) {
        for client in 0..self.clients.len() {
            while self.clients[client].active
                && self.clients[client].in_flight < self.clients[client].limiter.limit()
            {
                self.clients[client].in_flight += 1;
                let in_flight = self.clients[client].in_flight;
                let sent = self.now;
                let (t, ok) = match self.server.submit(sent) {
                    Some(end) => (end, true),
                    None => (sent + 5 * MS, false), // a gateway answers 429 at once
                };
                self.push(
                    t,
                    Event::Answer {
                        client,
                        sent,
                        in_flight,
                        ok,
                    },
                );
            }
        }
    }

    pub(super) fn run_until(&mut self, end: u64) {
        loop {
            self.fill();
            match self.events.peek() {
                Some(Reverse((t, _, _))) if *t <= end => {}
                _ => break,
            }
            let Reverse((t, _, event)) = self.events.pop().expect("peeked");
            self.now = t;
            let now = self.at(t);
            match event {
                Event::Answer {
                    client,
                    sent,
                    in_flight,
                    ok,
                } => {
                    let c = &mut self.clients[client];
                    c.in_flight -= 1;
                    if ok {
                        c.limiter
                            .on_success(Duration::from_nanos(t - sent), in_flight, now);
                        self.answered.push(t);
                    } else {
                        c.limiter.on_overload(now);
                        self.rejected.push(t);
                    }
                }
                Event::Gauges(client) => {
                    let (waiting, running) = (self.server.waiting(t), self.server.running(t));
                    self.gauges.push((t, waiting, running));
                    let replicas = self.clients.len();
                    self.clients[client].limiter.on_server_queue(
                        waiting as f64,
                        running as f64,
                        replicas,
                        now,
                    );
                    let every = self.gauges_every.expect("gauges on");
                    self.push(t + every, Event::Gauges(client));
                }
                Event::Sample => {
                    let total = self.clients.iter().map(|c| c.limiter.limit()).sum();
                    self.samples.push((t, total));
                    self.push(t + self.sample_every, Event::Sample);
                }
            }
        }
        self.now = end;
    }

    pub(super) fn limits(&self, from: u64, to: u64) -> impl Iterator<Item = usize> + '_ {
        self.samples
            .iter()
            .filter(move |(t, _)| (from..to).contains(t))
            .map(|&(_, l)| l)
    }

    /// (lowest, mean, highest) total limit over [from, to).
    pub(super) fn limit_stats(&self, from: u64, to: u64) -> (usize, f64, usize) {
        let (mut lo, mut hi, mut sum, mut n) = (usize::MAX, 0, 0, 0);
        for l in self.limits(from, to) {
            lo = lo.min(l);
            hi = hi.max(l);
            sum += l;
            n += 1;
        }
        (lo, sum as f64 / n as f64, hi)
    }

    /// Answers per second over [from, to) as a fraction of `slots / service`.
    pub(super) fn throughput(&self, from: u64, to: u64, slots: usize, service: u64) -> f64 {
        let n = self
            .answered
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count() as f64;
        let capacity = slots as f64 * (to - from) as f64 / service as f64;
        n / capacity
    }

    pub(super) fn rejected_in(&self, from: u64, to: u64) -> usize {
        self.rejected
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count()
    }
}
