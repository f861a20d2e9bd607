//! Crash safety with real processes: a replica killed with SIGKILL mid-batch, and PostgreSQL
//! stopped and started under a running batch.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::helpers::{chat_line, start_replicas_with, to_jsonl, FakeUpstream, TestApp, TestDb};

const IN_FLIGHT: usize = 8;

fn worker_env(upstream: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENBATCH__UPSTREAM__BASE_URL", upstream.base_url.clone()),
        ("OPENBATCH__WORKER__MAX_IN_FLIGHT", IN_FLIGHT.to_string()),
        ("OPENBATCH__WORKER__LEASE_SECS", "6".to_owned()),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "100".to_owned()),
    ]
}

/// Every custom_id exactly once across the output and error files.
async fn assert_each_line_once(app: &TestApp, batch: &Value, total: usize) {
    let out = app.lines_of(&batch["output_file_id"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(
        out.len() + err.len(),
        total,
        "{} output + {} error lines",
        out.len(),
        err.len()
    );
    let ids: HashSet<&str> = out
        .iter()
        .chain(err.iter())
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total);
}

#[tokio::test]
async fn a_replica_killed_mid_batch_loses_at_most_its_in_flight_lines() {
    const LINES: usize = 2000;
    let upstream = FakeUpstream::start(&["--latency-ms", "40"]);
    let db = TestDb::new();
    let url = db.url.clone();
    let env = worker_env(&upstream);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut replicas = start_replicas_with(3, &url, &env).await;
    let app = TestApp::connect(&replicas[1].address, &url).await;

    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("k{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for_completed(&id, 300).await;
    let in_progress = app.batch(&id).await;
    assert_eq!(
        in_progress["status"], "in_progress",
        "killed mid-way, not after the end"
    );
    replicas[0].kill();

    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": LINES, "completed": LINES, "failed": 0})
    );
    assert_each_line_once(&app, &batch, LINES).await;
    let executions = upstream.executions().await as usize;
    assert!(
        // What a replica can lose: its lines at the upstream and those finished but not yet
        // stored, at most twice `max_in_flight` in all.
        (LINES..=LINES + 2 * IN_FLIGHT).contains(&executions),
        "{executions} upstream executions for {LINES} lines"
    );
}

#[tokio::test]
async fn postgresql_restarted_mid_batch_and_the_batch_still_completes() {
    const LINES: usize = 600;
    let cluster = Cluster::start();
    let base = cluster.url();
    let url = format!("{}/ob_restart", base.rsplit_once('/').unwrap().0);
    let upstream = FakeUpstream::start(&["--latency-ms", "40"]);
    let env = worker_env(&upstream);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("OPENBATCH__WORKER__MAX_IN_FLIGHT", "4"));
    env.push(("OPENBATCH__DATABASE__ACQUIRE_TIMEOUT_SECS", "2"));
    let replicas = start_replicas_with(1, &url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &url).await;

    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("p{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for_completed(&id, 50).await;
    app.pool.close().await;
    cluster.stop();
    // While the database is down the API says so (once it notices) instead of hanging or
    // crashing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        if res.status() == 503 {
            break;
        }
        assert_eq!(res.status(), 200, "readyz must answer 200 or 503");
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never said 503"
        );
        // The replica's view of the database is seen only by asking it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start_again();

    let app = TestApp::connect(&replicas[0].address, &url).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_each_line_once(&app, &batch, LINES).await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_lines_and_hands_back_the_rest() {
    const LINES: usize = 400;
    let upstream = FakeUpstream::start(&["--latency-ms", "100"]);
    let db = TestDb::new();
    let url = db.url.clone();
    let env = worker_env(&upstream);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut replicas = start_replicas_with(2, &url, &env).await;
    let app = TestApp::connect(&replicas[1].address, &url).await;

    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("t{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for_completed(&id, 40).await;
    assert!(replicas[0].terminate(), "clean exit on SIGTERM");

    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_each_line_once(&app, &batch, LINES).await;
    // The stopped replica finished what it had started and released nothing half-done, so
    // no line ran twice.
    assert_eq!(upstream.executions().await as usize, LINES);
}
