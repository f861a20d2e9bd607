//! GPU mode (`--gpu-slots`): the server behaves like one vLLM engine, the thing OpenBatch's
//! batches share with interactive users. A fixed number of requests run at once, each for a
//! fixed service time; the rest wait in one FIFO queue (tokio's semaphore hands permits out in
//! the order they were asked for), as vLLM's scheduler does once its batch is full. With
//! `--queue-max` the queue is bounded and a request past it is shed with a 429, like a gateway
//! in front of the server. A request whose client has gone away still takes its turn (vLLM
//! would abort it): the clients under test wait far longer than any queue here lasts.
//!
//! Its load is exported as vLLM exports it (`vllm:num_requests_running` and
//! `vllm:num_requests_waiting` at `GET /metrics`, labelled by model), plus the counters tests and
//! benchmarks need to check what the server saw: the peaks and the totals served and shed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Gpu {
    slots: usize,
    pub service: Duration,
    queue_max: Option<usize>,
    /// The `model_name` label of the gauges (vLLM serves one model per engine).
    model: String,
    sem: Semaphore,
    running: AtomicUsize,
    waiting: AtomicUsize,
    peak_running: AtomicUsize,
    peak_waiting: AtomicUsize,
    /// Running + waiting: what a client-side cap on requests in flight bounds.
    peak_requests: AtomicUsize,
    served: AtomicU64,
    shed: AtomicU64,
}

/// A request holding one of the slots; gives it back (and counts the request served) on drop.
pub struct Slot<'a> {
    gpu: &'a Gpu,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Count before the permit (dropped after this body) wakes the next in the queue.
        self.gpu.running.fetch_sub(1, SeqCst);
        self.gpu.served.fetch_add(1, SeqCst);
    }
}

impl Gpu {
    pub fn new(slots: usize, service_ms: u64, queue_max: Option<usize>, model: &str) -> Self {
        Self {
            slots,
            service: Duration::from_millis(service_ms),
            queue_max,
            model: model.to_owned(),
            sem: Semaphore::new(slots),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            peak_running: AtomicUsize::new(0),
            peak_waiting: AtomicUsize::new(0),
            peak_requests: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// Waits for a slot in arrival order; `None` when the queue is full (the caller answers 429).
    pub async fn admit(&self) -> Option<Slot<'_>> {
        if let Ok(permit) = self.sem.try_acquire() {
            return Some(self.start(permit));
        }
        let queue_max = self.queue_max;
        let joined = self
            .waiting
            .fetch_update(SeqCst, SeqCst, |w| match queue_max {
                Some(max) if w >= max => None,
                _ => Some(w + 1),
            });
        let Ok(before) = joined else {
            self.shed.fetch_add(1, SeqCst);
            return None;
        };
        self.peak_waiting.fetch_max(before + 1, SeqCst);
        self.note_requests();
        let permit = self
            .sem
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // Leave the queue before taking the slot, so running + waiting never counts us twice.
        self.waiting.fetch_sub(1, SeqCst);
        Some(self.start(permit))
    }

    fn start<'a>(&'a self, permit: SemaphorePermit<'a>) -> Slot<'a> {
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.peak_running.fetch_max(now, SeqCst);
        self.note_requests();
        Slot {
            gpu: self,
            _permit: permit,
        }
    }

    fn note_requests(&self) {
        let now = self.running.load(SeqCst) + self.waiting.load(SeqCst);
        self.peak_requests.fetch_max(now, SeqCst);
    }

    /// Restarts the peaks from the current load and zeroes the totals (`POST /stats/reset`).
    pub fn reset(&self) {
        let (running, waiting) = (self.running.load(SeqCst), self.waiting.load(SeqCst));
        self.peak_running.store(running, SeqCst);
        self.peak_waiting.store(waiting, SeqCst);
        self.peak_requests.store(running + waiting, SeqCst);
        self.served.store(0, SeqCst);
        self.shed.store(0, SeqCst);
    }

    /// The `gpu` object of `GET /stats`.
    pub fn stats(&self) -> Value {
        json!({
            "slots": self.slots,
            "service_ms": self.service.as_millis() as u64,
            "queue_max": self.queue_max,
            "running": self.running.load(SeqCst),
            "waiting": self.waiting.load(SeqCst),
            "peak_running": self.peak_running.load(SeqCst),
            "peak_waiting": self.peak_waiting.load(SeqCst),
            "peak_requests": self.peak_requests.load(SeqCst),
            "served": self.served.load(SeqCst),
            "shed": self.shed.load(SeqCst),
        })
    }

    /// `GET /metrics`: Prometheus text. The two gauges carry vLLM's names and labels (V1 adds
    /// `engine`), so a client that parses vLLM's metrics parses these.
    pub fn metrics(&self) -> String {
        let labels = format!("{{engine=\"0\",model_name=\"{}\"}}", self.model);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, labels: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"
            );
        };
        let gauge = |v: &AtomicUsize| format!("{:.1}", v.load(SeqCst) as f64);
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            &labels,
            gauge(&self.running),
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            &labels,
            gauge(&self.waiting),
        );
        let fake = [
            (
                "slots",
                "gauge",
                "Requests served at once (--gpu-slots).",
                self.slots as u64,
            ),
            (
                "peak_running",
                "gauge",
                "Most requests running at once since the last reset.",
                self.peak_running.load(SeqCst) as u64,
            ),
            (
                "peak_waiting",
                "gauge",
                "Most requests waiting at once since the last reset.",
                self.peak_waiting.load(SeqCst) as u64,
            ),
            (
                "peak_requests",
                "gauge",
                "Most requests running or waiting at once since the last reset.",
                self.peak_requests.load(SeqCst) as u64,
            ),
            (
                "served_total",
                "counter",
                "Requests that got a slot and were answered.",
                self.served.load(SeqCst),
            ),
            (
                "shed_total",
                "counter",
                "Requests answered 429 because the queue was full (--queue-max).",
                self.shed.load(SeqCst),
            ),
        ];
        for (name, kind, help, value) in fake {
            metric(
                &format!("fake_upstream_{name}"),
                kind,
                help,
                "",
                value.to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_sheds_and_a_freed_slot_goes_to_the_first_waiter() {
        let gpu = std::sync::Arc::new(Gpu::new(1, 0, Some(1), "m"));
        let first = gpu.admit().await.expect("a free slot");
        let waiter = {
            let gpu = gpu.clone();
            tokio::spawn(async move { gpu.admit().await.is_some() })
        };
        while gpu.waiting.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(gpu.admit().await.is_none(), "past --queue-max is shed");
        drop(first);
        assert!(waiter.await.unwrap());
        let stats = gpu.stats();
        assert_eq!(stats["served"], 2);
        assert_eq!(stats["shed"], 1);
        assert_eq!(stats["peak_running"], 1);
        assert_eq!(stats["peak_requests"], 2);
        let text = gpu.metrics();
        assert!(text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 0.0\n"));
        assert!(text.contains("fake_upstream_shed_total 1\n"));
    }
}
