//! fake-upstream's GPU mode, which the engine's GPU-aware tests and bench/fleet.sh stand on: a
//! fixed number of requests at once, a FIFO queue beyond, optionally bounded with 429s, and
//! vLLM's gauges at /metrics.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::FakeUpstream;

fn chat(n: usize) -> Value {
    json!({"model": "fake-model", "messages": [{"role": "user", "content": format!("hello {n}")}]})
}

/// The value of one vLLM gauge in Prometheus text, summed over its label sets.
fn gauge(text: &str, name: &str) -> f64 {
    (text.lines())
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// `n` chat requests sent at once, each answering its status.
fn send_chats(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<reqwest::StatusCode>> {
    (0..n)
        .map(|n| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let resp = reqwest::Client::new().post(url).json(&chat(n)).send().await;
                resp.unwrap().status()
            })
        })
        .collect()
}

/// Polls until `cond` holds on the upstream's `gpu` stats (30 s at most).
async fn wait_for_gpu(upstream: &FakeUpstream, what: &str, cond: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gpu = upstream.gpu().await;
        if cond(&gpu) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {gpu}"
        );
        // The fake's stats are polled: it announces nothing.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_past_the_slots_wait_in_line_and_are_served_in_waves() {
    let upstream = FakeUpstream::start(&["--gpu-slots", "4", "--service-ms", "200"]);
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", upstream.base_url);
    let started = Instant::now();
    let requests = (0..12).map(|n| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let resp = client.post(url).json(&chat(n)).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            started.elapsed()
        })
    });
    let mut took = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        took.push(request.await.unwrap());
    }
    // 12 requests through 4 slots of 200 ms: three waves, so the last one took 600 ms.
    let last = took.iter().max().unwrap();
    assert!(
        *last >= Duration::from_millis(550),
        "the last took {last:?}"
    );
    let gpu = upstream.gpu().await;
    assert_eq!(gpu["peak_running"], 4, "{gpu}");
    assert_eq!(gpu["served"], 12, "{gpu}");
    assert_eq!(
        (gpu["running"].clone(), gpu["waiting"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(upstream.executions().await, 12);
    let health = reqwest::get(format!("{}/health", upstream.origin()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn metrics_show_vllm_gauges_of_the_requests_running_and_waiting() {
    let upstream = FakeUpstream::start(&["--gpu-slots", "1", "--service-ms", "1500"]);
    let url = format!("{}/chat/completions", upstream.base_url);
    let requests = send_chats(&url, 3);
    wait_for_gpu(&upstream, "1 running and 2 waiting", |g| {
        g["running"] == 1 && g["waiting"] == 2
    })
    .await;
    let text = upstream.metrics().await;
    // vLLM's names and its model_name label, which a client reading vLLM's metrics relies on.
    assert!(
        text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"fake-model\"} 2"),
        "{text}"
    );
    assert_eq!(gauge(&text, "vllm:num_requests_running"), 1.0, "{text}");
    assert_eq!(gauge(&text, "vllm:num_requests_waiting"), 2.0, "{text}");
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let text = upstream.metrics().await;
    assert_eq!(gauge(&text, "vllm:num_requests_waiting"), 0.0, "{text}");
    assert!(text.contains("\nfake_upstream_served_total 3\n"), "{text}");
    assert!(text.contains("\nfake_upstream_peak_requests 3\n"), "{text}");
}

#[tokio::test]
async fn a_bounded_queue_sheds_the_request_past_it_with_429_and_retry_after() {
    let upstream = FakeUpstream::start(&[
        "--gpu-slots",
        "1",
        "--service-ms",
        "1500",
        "--queue-max",
        "1",
    ]);
    let url = format!("{}/chat/completions", upstream.base_url);
    let requests = send_chats(&url, 2);
    wait_for_gpu(&upstream, "1 running and 1 waiting", |g| {
        g["running"] == 1 && g["waiting"] == 1
    })
    .await;
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&chat(2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    for request in requests {
        assert_eq!(
            request.await.unwrap(),
            200,
            "the queued requests are served"
        );
    }
    let gpu = upstream.gpu().await;
    assert_eq!(
        (gpu["served"].clone(), gpu["shed"].clone()),
        (json!(2), json!(1)),
        "{gpu}"
    );
}
