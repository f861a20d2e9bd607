//! The adaptive limit against a server that behaves like a GPU (`fake-upstream --gpu-slots`):
//! a fixed number served at once, a FIFO queue beyond, vLLM's gauges at `/metrics`. With the
//! limit on, a replica allowed 64 at the endpoint keeps the server's queue near empty; off, it
//! fills the queue up to its share — the contrast that shows the limit is what holds it.

use serde_json::{json, Value};

use crate::helpers::{
    chat_line, metric_value, start_replicas_with, to_jsonl, FakeUpstream, Replica, TestApp, TestDb,
};

const SLOTS: usize = 4;
const LINES: usize = 240;

async fn run_batch(adaptive: &str) -> (Value, Value, String) {
    let db = TestDb::new();
    let gpu = FakeUpstream::start(&["--gpu-slots", "4", "--service-ms", "50"]);
    let replicas: Vec<Replica> = start_replicas_with(
        1,
        &db.url,
        &[
            ("OPENBATCH__UPSTREAM__BASE_URL", gpu.base_url.as_str()),
            ("OPENBATCH__UPSTREAM__MAX_IN_FLIGHT", "64"),
            ("OPENBATCH__UPSTREAM__ADAPTIVE", adaptive),
            ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
            ("OPENBATCH__BATCHES__CHECK_MODELS", "false"),
        ],
    )
    .await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("l{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed", "expired"]).await;
    let metrics = reqwest::get(format!("{}/metrics", replicas[0].address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (batch, gpu.gpu().await, metrics)
}

#[tokio::test]
async fn the_adaptive_limit_keeps_a_gpu_s_queue_near_empty_and_fails_nothing() {
    let (batch, gpu, metrics) = run_batch("true").await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], LINES, "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
    // The GPU was kept busy (every slot used) without a long queue: slow start may overshoot
    // the knee for a round trip (8 at once measured on a quiet machine), then the gauges hold
    // it at the slots (but one). The bound leaves room for a loaded machine's noisy latencies
    // and is still a quarter of what the replica sends without the limit (64).
    assert_eq!(gpu["peak_running"], SLOTS, "{gpu}");
    let peak = gpu["peak_requests"].as_u64().unwrap();
    assert!(
        peak <= 4 * SLOTS as u64,
        "the server queued up to {peak}: {gpu}"
    );
    // What the replica says about the endpoint: up, its limit near the slots, the gauges read.
    let series = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("openbatch_{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(series("upstream_endpoint_up"), 1.0);
    let limit = series("upstream_endpoint_limit");
    assert!((1.0..=2.0 * SLOTS as f64).contains(&limit), "limit {limit}");
    assert!(series("upstream_endpoint_latency_seconds") > 0.0);
    assert!(metrics.contains("openbatch_upstream_endpoint_server_requests{"));
}

/// Without the limit the replica sends its whole share at once: the server queues it.
#[tokio::test]
async fn without_the_adaptive_limit_the_share_fills_the_server_s_queue() {
    let (batch, gpu, _) = run_batch("false").await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let peak = gpu["peak_requests"].as_u64().unwrap();
    assert!(peak > 4 * SLOTS as u64, "{gpu}");
}

/// `metric_value` reads a replica's series by name; the endpoint's label is its URL without
/// credentials.
#[tokio::test]
async fn endpoint_series_are_labelled_without_credentials() {
    let db = TestDb::new();
    let replicas = start_replicas_with(
        1,
        &db.url,
        &[
            (
                "OPENBATCH__UPSTREAM__BASE_URL",
                "http://user:secret@127.0.0.1:9/v1",
            ),
            ("OPENBATCH__UPSTREAM__METRICS_URL", "off"),
        ],
    )
    .await;
    let text = reqwest::get(format!("{}/metrics", replicas[0].address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("secret"), "{text}");
    assert!(
        text.contains(r#"endpoint="http://127.0.0.1:9/v1""#),
        "{text}"
    );
    assert_eq!(
        metric_value(&replicas[0].address, "openbatch_upstream_endpoint_up").await,
        1.0
    );
}
