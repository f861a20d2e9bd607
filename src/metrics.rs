//! Prometheus metrics. Counters and histograms are updated where things happen; gauges that
//! describe the database (batches by status, queue depth) are refreshed by one background task
//! per replica, so a scrape, which anyone who reaches the port may send, costs no query.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

use crate::tasks::{sleep_or_cancelled, CancellationToken};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub idempotent_replays: IntCounter,
    pub idempotency_conflicts: IntCounter,
    pub lines: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub upstream_responses: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub lease_takeovers: IntCounter,
    pub batches_finished: IntCounterVec,
    pub auth_key_queries: IntCounter,
    pub auth_key_reloads: IntCounter,
    pub cluster_replicas: IntGauge,
    pub cluster_joining: IntGauge,
    endpoint_limit: IntGaugeVec,
    endpoint_in_flight: IntGaugeVec,
    endpoint_up: IntGaugeVec,
    endpoint_latency: GaugeVec,
    endpoint_overloaded: IntCounterVec,
    endpoint_server_queue: GaugeVec,
    batches: IntGaugeVec,
    queue: IntGaugeVec,
    pool: IntGaugeVec,
    usage_tokens: IntCounterVec,
    usage_requests: IntCounterVec,
    behind_schedule: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

/// The process-wide metrics (one registry per process, as Prometheus scrapes a process).
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let r = Registry::new_custom(Some("openbatch".to_owned()), None).expect("valid prefix");
        let m = Metrics {
            http_requests: counter_vec(&r, "http_requests_total", "HTTP requests by route template and status.", &["method", "route", "status"]),
            http_duration: histogram_vec(&r, "http_request_duration_seconds", "HTTP request latency by route template.", &["method", "route"]),
            idempotent_replays: counter(&r, "idempotent_replays_total", "Batch creations answered with the batch an idempotency key made earlier."),
            idempotency_conflicts: counter(&r, "idempotency_conflicts_total", "Batch creations refused: key reused with other parameters."),
            lines: counter_vec(&r, "lines_processed_total", "Batch lines executed, by outcome (succeeded: 2xx; failed: anything else).", &["outcome"]),
            upstream_retries: counter(&r, "upstream_retries_total", "Upstream attempts repeated after a transient failure."),
            upstream_responses: counter_vec(&r, "upstream_responses_total", "Upstream attempts by upstream and HTTP status (`error`: no response).", &["upstream", "status"]),
            upstream_duration: histogram_vec(&r, "upstream_request_duration_seconds", "Upstream attempt latency.", &["upstream"]),
            lease_takeovers: counter(&r, "lease_takeovers_total", "Lines claimed again after an earlier claim lapsed (a replica died) or was handed back."),
            batches_finished: counter_vec(&r, "batches_finished_total", "Batches this replica moved to a final status.", &["status"]),
            auth_key_queries: counter(&r, "auth_key_queries_total", "API keys looked up in the database for one request (the in-memory copy was not current)."),
            auth_key_reloads: counter(&r, "auth_key_reloads_total", "Reloads of this replica's in-memory copy of the live API keys."),
            cluster_replicas: {
                let g = IntGauge::new("cluster_replicas", "Live replicas as this replica's last heartbeat counted them (it enforces 1/N of the per-key rate limit).").expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            cluster_joining: {
                let g = IntGauge::new("cluster_joining", "1 while this replica, having joined a running cluster, waits for the others to count it before sending upstream (two heartbeats); else 0.").expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g.set(1); // until the first heartbeat says whether others run
                g
            },
            endpoint_limit: gauge_vec(&r, "upstream_endpoint_limit", "Requests this replica may have outstanding at an upstream endpoint now: its share of max_in_flight, or the adaptive limit when lower.", &["upstream", "endpoint"]),
            endpoint_in_flight: gauge_vec(&r, "upstream_endpoint_in_flight", "Requests this replica has outstanding at an upstream endpoint.", &["upstream", "endpoint"]),
            endpoint_up: gauge_vec(&r, "upstream_endpoint_up", "1 while the endpoint gets lines, 0 while it is taken out (refused, dropped or timed out) and probed.", &["upstream", "endpoint"]),
            endpoint_latency: {
                let g = GaugeVec::new(Opts::new("upstream_endpoint_latency_seconds", "Mean latency of the endpoint's answers over the adaptive limiter's last window."), &["upstream", "endpoint"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            endpoint_overloaded: counter_vec(&r, "upstream_endpoint_overloaded_total", "429 and 503 answers of an endpoint (each pauses it for every line, and lowers its adaptive limit).", &["upstream", "endpoint"]),
            endpoint_server_queue: {
                let g = GaugeVec::new(Opts::new("upstream_endpoint_server_requests", "The endpoint's own vLLM gauges as last read (state: running, waiting), every client's requests."), &["upstream", "endpoint", "state"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            batches: gauge_vec(&r, "batches", "Unfinished batches by status (all replicas, from the database).", &["status"]),
            queue: gauge_vec(&r, "work_queue_lines", "Lines of running batches by state (all replicas, from the database).", &["state"]),
            pool: gauge_vec(&r, "db_pool_connections", "This replica's database connections by state.", &["state"]),
            usage_tokens: counter_vec(&r, "usage_tokens_total", "Tokens of successful batch lines since the start, by project, model and kind (input, cached, output; all replicas, from the database).", &["project", "model", "kind"]),
            usage_requests: counter_vec(&r, "usage_requests_total", "Successful batch lines (model requests) since the start, by project and model (all replicas, from the database).", &["project", "model"]),
            behind_schedule: {
                let g = IntGauge::new("batches_behind_schedule", "Running batches whose pace would not finish them before they expire (all replicas, from the database).").expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            registry: r,
        };
        // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
        for outcome in ["succeeded", "failed"] {
            m.lines.with_label_values(&[outcome]);
        }
        m
    })
}

/// One upstream endpoint's series, looked up once: the labels are the configured upstreams'
/// names and endpoints (without any credentials in their URLs), a closed set.
pub struct EndpointMetrics {
    pub limit: IntGauge,
    pub in_flight: IntGauge,
    pub up: IntGauge,
    pub latency: Gauge,
    pub overloaded: IntCounter,
    pub server_waiting: Gauge,
    pub server_running: Gauge,
}

impl EndpointMetrics {
    pub fn new(upstream: &str, base_url: &str) -> Self {
        let m = get();
        let endpoint = without_credentials(base_url);
        let labels = [upstream, endpoint.as_str()];
        Self {
            limit: m.endpoint_limit.with_label_values(&labels),
            in_flight: m.endpoint_in_flight.with_label_values(&labels),
            up: m.endpoint_up.with_label_values(&labels),
            latency: m.endpoint_latency.with_label_values(&labels),
            overloaded: m.endpoint_overloaded.with_label_values(&labels),
            server_waiting: m.endpoint_server_queue.with_label_values(&[
                upstream,
                endpoint.as_str(),
                "waiting",
            ]),
            server_running: m.endpoint_server_queue.with_label_values(&[
                upstream,
                endpoint.as_str(),
                "running",
            ]),
        }
    }
}

/// A URL as a label: no user name or password, whatever the configuration holds.
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => url.to_owned(),
    }
}

impl Metrics {
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the database-derived gauges; each query reads only unfinished rows, through
    /// partial indexes, with a short timeout so a struggling database cannot stall the task.
    pub async fn refresh(&self, pool: &PgPool) {
        let by_status = tokio::time::timeout(
            Duration::from_secs(2),
            crate::store::gauges::count_unfinished_by_status(pool),
        )
        .await;
        if let Ok(Ok(rows)) = by_status {
            for s in ["validating", "in_progress", "finalizing", "cancelling"] {
                let n = rows.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
                self.batches.with_label_values(&[s]).set(n);
            }
        }
        let queue = tokio::time::timeout(
            Duration::from_secs(2),
            crate::store::chunks::queue_depth(pool),
        )
        .await;
        if let Ok(Ok(rows)) = queue {
            for s in ["pending", "running"] {
                let n = rows.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
                self.queue.with_label_values(&[s]).set(n);
            }
        }
        let usage =
            tokio::time::timeout(Duration::from_secs(2), crate::store::usage::totals(pool)).await;
        if let Ok(Ok(totals)) = usage {
            self.set_usage(&totals);
        }
        let paces = tokio::time::timeout(
            Duration::from_secs(2),
            crate::store::gauges::running_paces(pool),
        )
        .await;
        if let Ok(Ok(paces)) = paces {
            let now = crate::domain::unix_now();
            let behind = (paces.iter())
                .filter(|(started, expires, total, done)| {
                    crate::domain::behind_schedule(now, *started, *expires, *total, *done)
                })
                .count();
            self.behind_schedule.set(behind as i64);
        }
    }

    /// Raises the usage counters to the database's totals. The labels are the (project, model)
    /// pairs of batches that ran, whose model validation accepted: a bounded set.
    fn set_usage(&self, totals: &[crate::store::usage::UsageTotal]) {
        let raise = |c: IntCounter, to: i64| {
            let to = u64::try_from(to).unwrap_or(0);
            c.inc_by(to.saturating_sub(c.get()));
        };
        for t in totals {
            let (p, m) = (t.project_id.as_str(), t.model.as_str());
            raise(self.usage_requests.with_label_values(&[p, m]), t.requests);
            for (kind, n) in [
                ("input", t.input_tokens),
                ("cached", t.cached_tokens),
                ("output", t.output_tokens),
            ] {
                raise(self.usage_tokens.with_label_values(&[p, m, kind]), n);
            }
        }
    }

    /// Renders everything in the text format, with the pool gauges as they are now (no
    /// query) and the database gauges as last refreshed.
    pub fn render(&self, pool: &PgPool) -> String {
        self.pool
            .with_label_values(&["open"])
            .set(i64::from(pool.size()));
        self.pool
            .with_label_values(&["idle"])
            .set(pool.num_idle() as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The one task per replica that keeps the database gauges fresh, every `every`, until `stop`.
pub async fn refresh_until_stopped(pool: PgPool, every: Duration, stop: CancellationToken) {
    loop {
        get().refresh(&pool).await;
        if sleep_or_cancelled(&stop, every).await {
            return;
        }
    }
}
