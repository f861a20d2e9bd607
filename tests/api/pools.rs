//! Upstream pools (issue 21): lines spread over several endpoints, fail over when one dies,
//! wait while all are down, ride out 429/503 storms without using up their attempts, and
//! `max_in_flight` holds for the whole cluster, not per replica.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{
    chat_line, metric_value, spawn_engine, start_replicas_with, to_jsonl, Expect, FakeUpstream,
    TestApp, TestDb,
};

fn lines(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| chat_line(&format!("{prefix}{i}"), json!({})))
        .collect()
}

fn pool_of(upstreams: &[&FakeUpstream]) -> Vec<String> {
    upstreams.iter().map(|u| u.base_url.clone()).collect()
}

/// Every line in the output exactly once, none in the error file.
async fn assert_each_line_once(app: &TestApp, batch: &Value, n: usize) {
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
    let out = app.lines_of(&batch["output_file_id"]).await;
    let ids: HashSet<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (out.len(), ids.len()),
        (n, n),
        "each custom_id exactly once"
    );
    assert!(app.lines_of(&batch["error_file_id"]).await.is_empty());
}

#[tokio::test]
async fn lines_spread_over_the_endpoints_of_a_pool() {
    let a = FakeUpstream::start(&["--latency-ms", "30"]);
    let b = FakeUpstream::start(&["--latency-ms", "30"]);
    let c = FakeUpstream::start(&["--latency-ms", "30"]);
    let urls = pool_of(&[&a, &b, &c]);
    let app = spawn_engine(&a, move |s| {
        s.upstream.base_url = String::new();
        s.upstream.base_urls = Some(urls);
        s.upstream.max_in_flight = 4;
        s.worker.max_in_flight = 12;
    })
    .await;
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("s", 90)))
        .await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_each_line_once(&app, &batch, 90).await;
    let seen = [
        a.executions().await,
        b.executions().await,
        c.executions().await,
    ];
    assert_eq!(seen.iter().sum::<u64>(), 90, "{seen:?}");
    assert!(
        seen.iter().all(|n| *n > 0),
        "every endpoint gets lines: {seen:?}"
    );
}

/// One endpoint of three is killed mid-batch: its lines in flight are dropped and sent to the
/// others without using an attempt (`max_attempts=1`: any attempt used would fail the line).
/// At most its slots' worth of lines run twice: those it was executing when it died.
#[tokio::test]
async fn a_killed_endpoint_fails_over_without_failing_or_repeating_lines() {
    const CAP: usize = 4;
    let a = FakeUpstream::start(&["--latency-ms", "100"]);
    let mut b = FakeUpstream::start(&["--latency-ms", "100"]);
    let c = FakeUpstream::start(&["--latency-ms", "100"]);
    let urls = pool_of(&[&a, &b, &c]);
    let app = spawn_engine(&a, move |s| {
        s.upstream.base_url = String::new();
        s.upstream.base_urls = Some(urls);
        s.upstream.max_in_flight = CAP;
        s.worker.max_in_flight = 3 * CAP;
        s.worker.max_attempts = 1;
    })
    .await;
    let n = 200;
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("f", n)))
        .await;
    app.wait_for_completed(&id, 30).await;
    let before_kill = b.executions().await;
    b.kill();
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_each_line_once(&app, &batch, n).await;
    let executions = a.executions().await + c.executions().await + before_kill;
    assert!(
        executions as usize <= n + CAP,
        "{executions} executions for {n} lines: only those in flight at the dead endpoint run twice"
    );
}

/// Every endpoint down for 20 s: the lines wait (the batch stays in progress, nothing fails),
/// and run once the servers are back on the same addresses.
#[tokio::test]
async fn a_pool_down_for_20_seconds_holds_its_lines_and_completes_when_back() {
    let mut a = FakeUpstream::start(&["--latency-ms", "100"]);
    let mut b = FakeUpstream::start(&["--latency-ms", "100"]);
    let urls = pool_of(&[&a, &b]);
    let ports = [a.port().to_string(), b.port().to_string()];
    let app = spawn_engine(&a, move |s| {
        s.upstream.base_url = String::new();
        s.upstream.base_urls = Some(urls);
        s.upstream.max_in_flight = 2;
        s.worker.max_attempts = 1;
    })
    .await;
    let n = 100;
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("d", n)))
        .await;
    app.wait_for_completed(&id, 8).await;
    a.kill();
    b.kill();
    let down_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < down_until {
        let batch = app.batch(&id).await;
        assert_eq!(batch["status"], "in_progress", "{batch}");
        assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
        // Part of the test: the batch holds, unfailed, for all 20 s of the outage.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _a = FakeUpstream::start(&["--latency-ms", "100", "--port", &ports[0]]);
    let _b = FakeUpstream::start(&["--latency-ms", "100", "--port", &ports[1]]);
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_each_line_once(&app, &batch, n).await;
}

/// 429 and 503 say the server is busy, not that the line is wrong: five in a row with
/// `max_attempts=2` still end in success. A 500 is the line's own error and uses attempts.
#[tokio::test]
async fn a_429_and_503_storm_fails_no_line_and_uses_no_attempt() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.worker.max_attempts = 2;
        s.worker.retry_max_ms = 500;
    })
    .await;
    let storm = |id: &str, status: u16| {
        chat_line(
            id,
            json!({"fake": {"fail": [status, status, status, status, status]}}),
        )
    };
    let lines = [
        storm("storm-429", 429),
        storm("storm-503", 503),
        chat_line("own-500", json!({"fake": {"fail": [500, 500, 500]}})),
        chat_line("plain", json!({})),
    ];
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 3, "failed": 1}),
        "{batch}"
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["custom_id"], "own-500");
    let stats = upstream.stats().await;
    let runs = |k: &str| stats["by_key"][k].as_u64().unwrap_or(0);
    assert_eq!(runs("storm-429"), 6);
    assert_eq!(runs("storm-503"), 6);
    assert_eq!(
        runs("own-500"),
        2,
        "attempts still bound the line's own errors"
    );
}

/// The model check asks the endpoints of a pool in turn: the first being down does not turn
/// the check off.
#[tokio::test]
async fn the_model_list_comes_from_an_endpoint_that_answers() {
    let live = FakeUpstream::start(&["--models", "fake-model"]);
    let mut s = crate::helpers::settings_for("postgres://unused@127.0.0.1:1/unused");
    s.upstream.base_url = String::new();
    s.upstream.base_urls = Some(vec![
        format!("http://127.0.0.1:{}/v1", closed_port()),
        live.base_url.clone(),
    ]);
    let up = openbatch::engine::upstream::Upstreams::new(&s).unwrap();
    let errors = up
        .unknown_models([("fake-model", 1), ("typo-model", 2)])
        .await;
    let codes: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.code, e.line)).collect();
    assert_eq!(codes, [("model_not_found", Some(2))]);
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An engine with two line slots whose route `dead-*` points where nothing listens: its lines
/// wait for the route to come back, holding the slots.
async fn engine_with_a_dead_route(
    upstream: &FakeUpstream,
    tweak: impl FnOnce(&mut openbatch::config::Settings) + 'static,
) -> TestApp {
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    spawn_engine(upstream, move |s| {
        s.worker.max_in_flight = 2;
        s.worker.cancel_grace_secs = 1;
        s.worker.lease_secs = 3;
        s.routes.insert(
            "dead".to_owned(),
            openbatch::config::UpstreamSettings {
                base_url: dead,
                base_urls: None,
                api_key: None,
                timeout_secs: 5,
                max_in_flight: 8,
                models: vec!["dead-*".to_owned()],
                max_response_bytes: 1 << 20,
                adaptive: true,
                metrics_url: None,
                priority: None,
            },
        );
        tweak(s);
    })
    .await
}

fn dead_lines(n: usize) -> Vec<u8> {
    let lines: Vec<Value> = (0..n)
        .map(|i| chat_line(&format!("dead{i}"), json!({"model": "dead-model"})))
        .collect();
    to_jsonl(&lines)
}

/// The replica's slots are free again: a batch on a healthy upstream completes.
async fn slots_are_free(app: &TestApp) {
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("after", 3)))
        .await;
    let b = tokio::time::timeout(Duration::from_secs(60), app.wait_for(&id, &["completed"]))
        .await
        .unwrap_or_else(|_| panic!("the waiting lines still hold the replica's slots"));
    assert_eq!(b["request_counts"]["completed"], 3, "{b}");
}

#[tokio::test]
async fn lines_waiting_for_a_dead_pool_end_when_their_batch_is_cancelled() {
    let upstream = FakeUpstream::start(&[]);
    let app = engine_with_a_dead_route(&upstream, |_| {}).await;
    let id = app.submit("/v1/chat/completions", dead_lines(4)).await;
    app.wait_for(&id, &["in_progress"]).await;
    // Part of the test: 2 s for the lines to reach the dead pool and wait there, none failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.batch(&id).await["request_counts"]["failed"], 0);
    app.post(&format!("/v1/batches/{id}/cancel"))
        .expect_response(200)
        .await;
    let batch = app.wait_for(&id, &["cancelled"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 4, "{err:?}");
    assert!(err.iter().all(|l| l["error"]["code"] == "batch_cancelled"));
    slots_are_free(&app).await;
}

#[tokio::test]
async fn lines_waiting_for_a_dead_pool_end_when_their_batch_expires() {
    let upstream = FakeUpstream::start(&[]);
    let app = engine_with_a_dead_route(&upstream, |s| {
        s.batches.expiry_override_secs = Some(4);
    })
    .await;
    let id = app.submit("/v1/chat/completions", dead_lines(4)).await;
    let batch = app.wait_for(&id, &["expired", "completed"]).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 4, "{err:?}");
    assert!(err.iter().all(|l| l["error"]["code"] == "batch_expired"));
    slots_are_free(&app).await;
}

/// A tiny inference server that counts the requests it holds at once: each is answered after
/// `latency`. Returns its base URL and the peak.
async fn counting_upstream(latency: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = peak.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (now, peak) = (now.clone(), peak.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0; 16 * 1024];
                loop {
                    // One request: its head, then its body by Content-Length.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let inference = head.starts_with("post ");
                    buf.drain(..head_end + length);
                    let body = if inference {
                        let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(at_once, Ordering::SeqCst);
                        // The fake's latency.
                        tokio::time::sleep(latency).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#
                    } else {
                        r#"{"status":"ok"}"#
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{address}/v1"), seen)
}

/// `max_in_flight` is per endpoint for the whole cluster: three replicas with a cap of 6 never
/// hold more than 6 requests at the endpoint at once (each allows 6 / 3 = 2), where each
/// alone would send 6.
#[tokio::test]
async fn three_replicas_share_one_cap_at_the_endpoint() {
    let (base_url, peak) = counting_upstream(Duration::from_millis(150)).await;
    let db = TestDb::new();
    let replicas = start_replicas_with(
        3,
        &db.url,
        &[
            ("OPENBATCH__UPSTREAM__BASE_URLS", base_url.as_str()),
            ("OPENBATCH__UPSTREAM__MAX_IN_FLIGHT", "6"),
            ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
            ("OPENBATCH__WORKER__CHUNK_LINES", "10"),
            ("OPENBATCH__CLUSTER__HEARTBEAT_SECS", "1"),
            ("OPENBATCH__BATCHES__CHECK_MODELS", "false"),
        ],
    )
    .await;
    // Every replica counts the three before the batch starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in &replicas {
        while metric_value(&r.address, "openbatch_cluster_replicas").await != 3.0 {
            assert!(
                Instant::now() < deadline,
                "{} never saw 3 replicas",
                r.address
            );
            // Heartbeats notify nothing: the count is read from /metrics.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let n = 240;
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("k", n)))
        .await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_each_line_once(&app, &batch, n).await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 6, "the endpoint saw {peak} requests at once");
    assert!(peak >= 2, "the replicas ran lines side by side: {peak}");
    drop(replicas);
}

/// Replicas that join a running batch wait until the others have counted them before sending:
/// two replicas with a cap of 8 send 4 each; two more joining mid-batch must not add their
/// share (2 each) before the first two have dropped to theirs, so the endpoint never holds
/// more than 8. The joiners then take part (they are not simply left idle).
#[tokio::test]
async fn replicas_joining_mid_batch_never_push_the_endpoint_past_the_cap() {
    let (base_url, peak) = counting_upstream(Duration::from_millis(100)).await;
    let db = TestDb::new();
    let env = [
        ("OPENBATCH__UPSTREAM__BASE_URLS", base_url.as_str()),
        ("OPENBATCH__UPSTREAM__MAX_IN_FLIGHT", "8"),
        ("OPENBATCH__UPSTREAM__ADAPTIVE", "false"),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
        ("OPENBATCH__WORKER__CHUNK_LINES", "10"),
        ("OPENBATCH__CLUSTER__HEARTBEAT_SECS", "1"),
        ("OPENBATCH__BATCHES__CHECK_MODELS", "false"),
    ];
    let first = start_replicas_with(2, &db.url, &env).await;
    let app = TestApp::connect(&first[0].address, &db.url).await;
    // 8 at once × 100 ms: 80 lines a second, so 800 lines outlast the joiners' wait.
    let n = 800;
    let id = app
        .submit("/v1/chat/completions", to_jsonl(&lines("j", n)))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.batch(&id).await["request_counts"]["completed"]
        .as_u64()
        .unwrap_or(0)
        < 80
    {
        assert!(Instant::now() < deadline, "the batch never got going");
        // Progress notifies nothing (flushes do not NOTIFY): polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 8, "two replicas fill the cap");
    let joined = start_replicas_with(2, &db.url, &env).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_each_line_once(&app, &batch, n).await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 8,
        "the endpoint saw {peak} requests at once (cap 8)"
    );
    let by_joiners = {
        let mut sum = 0.0;
        for r in &joined {
            sum += metric_value(&r.address, "openbatch_lines_processed_total").await;
        }
        sum
    };
    assert!(by_joiners > 0.0, "the joining replicas ran no line");
    drop((first, joined));
}
