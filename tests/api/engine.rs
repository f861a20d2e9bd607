//! Batches executed end to end against the fake upstream process.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{chat_line, spawn_engine, to_jsonl, Expect, FakeUpstream};

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_endpoint_runs_to_completion_with_ordered_output_and_usage() {
    let upstream = FakeUpstream::start(&["--latency-ms", "5"]);
    let app = spawn_engine(&upstream, |_| {}).await;
    let bodies: [(&str, Value); 5] = [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "two words"}]}),
        ),
        ("/v1/completions", json!({"prompt": "two words"})),
        ("/v1/embeddings", json!({"input": "two words"})),
        ("/v1/responses", json!({"input": "two words"})),
        ("/v1/moderations", json!({"input": "two words"})),
    ];
    for (endpoint, body) in bodies {
        let lines: Vec<Value> = (0..25)
            .map(|i| {
                let mut b = body.clone();
                b["model"] = json!("fake-model");
                json!({"custom_id": format!("req-{i}"), "method": "POST", "url": endpoint, "body": b})
            })
            .collect();
        let id = app.submit(endpoint, to_jsonl(&lines)).await;
        let batch = app.wait_for(&id, &["completed", "failed"]).await;
        assert_eq!(batch["status"], "completed", "{endpoint}: {batch}");
        assert_eq!(batch["model"], "fake-model");
        assert_eq!(
            batch["request_counts"],
            json!({"total": 25, "completed": 25, "failed": 0})
        );
        for stamp in ["in_progress_at", "finalizing_at", "completed_at"] {
            assert!(batch[stamp].as_i64().is_some(), "{stamp} {batch}");
        }
        assert_eq!(batch["error_file_id"], Value::Null);

        let out = app.lines_of(&batch["output_file_id"]).await;
        assert_eq!(
            custom_ids(&out),
            custom_ids(&lines),
            "one line per request, in input order"
        );
        for l in &out {
            assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
            assert_eq!(l["response"]["status_code"], 200);
            assert!(
                l["response"]["body"].is_object(),
                "the body is JSON, not a string"
            );
            assert!(l["response"]["request_id"].is_string());
            assert_eq!(l["error"], Value::Null);
        }
        let file = app
            .get(&format!(
                "/v1/files/{}",
                batch["output_file_id"].as_str().unwrap()
            ))
            .expect(200)
            .await;
        assert_eq!(file["purpose"], "batch_output");

        // Usage is the sum of what the upstream reported.
        let mut input = 0;
        let mut output = 0;
        for l in &out {
            let u = &l["response"]["body"]["usage"];
            input += u
                .get("prompt_tokens")
                .or(u.get("input_tokens"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            output += u
                .get("completion_tokens")
                .or(u.get("output_tokens"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
        }
        assert_eq!(batch["usage"]["input_tokens"], input, "{endpoint}");
        assert_eq!(batch["usage"]["output_tokens"], output, "{endpoint}");
        if endpoint != "/v1/moderations" {
            assert!(input > 0, "{endpoint} reported usage");
        }
    }
}

async fn failed_with(app: &crate::helpers::TestApp, content: Vec<u8>) -> Vec<Value> {
    let id = app.submit("/v1/chat/completions", content).await;
    let batch = app
        .wait_for(&id, &["failed", "in_progress", "completed"])
        .await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].as_i64().is_some());
    assert_eq!(batch["errors"]["object"], "list");
    batch["errors"]["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn invalid_input_files_fail_validation_with_openai_codes() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |_| {}).await;
    let good = |id: &str| chat_line(id, json!({}));
    let with = |mut v: Value, path: &str, x: Value| {
        *v.pointer_mut(path).unwrap() = x;
        v
    };
    let cases: Vec<(Vec<u8>, &str, Option<&str>, usize)> = vec![
        (
            [to_jsonl(&[good("a")]), b"{not json\n".to_vec()].concat(),
            "invalid_json_line",
            Some("line"),
            2,
        ),
        (
            to_jsonl(&[
                good("a"),
                json!({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}),
            ]),
            "missing_required_parameter",
            Some("custom_id"),
            2,
        ),
        (
            to_jsonl(&[with(good("a"), "/url", json!("/v1/embeddings"))]),
            "invalid_url",
            Some("url"),
            1,
        ),
        (
            to_jsonl(&[with(good("a"), "/method", json!("GET"))]),
            "invalid_request",
            Some("method"),
            1,
        ),
        (
            to_jsonl(&[with(good("a"), "/body", json!(null))]),
            "missing_required_parameter",
            Some("body"),
            1,
        ),
        (
            to_jsonl(&[with(good("a"), "/body/model", json!(null))]),
            "missing_required_parameter",
            Some("body.model"),
            1,
        ),
        (
            to_jsonl(&[chat_line("a", json!({"stream": true}))]),
            "streaming_unsupported",
            Some("body.stream"),
            1,
        ),
        (
            to_jsonl(&[with(good("a"), "/body/messages", json!(null))]),
            "missing_required_parameter",
            Some("body.messages"),
            1,
        ),
        (
            to_jsonl(&[good("a"), good("b"), good("a")]),
            "duplicate_custom_id",
            Some("custom_id"),
            3,
        ),
        (
            to_jsonl(&[good("a"), chat_line("b", json!({"model": "other-model"}))]),
            "mixed_models",
            Some("body.model"),
            2,
        ),
    ];
    for (content, code, param, line) in cases {
        let errors = failed_with(&app, content).await;
        let first = &errors[0];
        assert_eq!(first["code"], code, "{errors:?}");
        assert_eq!(first["param"].as_str(), param, "{errors:?}");
        assert_eq!(first["line"], line, "{errors:?}");
        assert!(first["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Blank lines only: nothing to run.
    let errors = failed_with(&app, b"\n  \n".to_vec()).await;
    assert_eq!(errors[0]["code"], "empty_file");

    // More than 50,000 requests.
    let many: Vec<u8> = (0..50_001)
        .flat_map(|i| format!("{{\"custom_id\":\"{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"m\",\"messages\":[]}}}}\n").into_bytes())
        .collect();
    let errors = failed_with(&app, many).await;
    assert_eq!(errors[0]["code"], "too_many_requests");

    // A missing input file, and one of another project, are both "cannot find".
    let mut body = crate::helpers::batch_body("file-nowhere");
    let b: Value = app.create_batch(&body).expect(200).await;
    let batch = app.wait_for(b["id"].as_str().unwrap(), &["failed"]).await;
    let e = &batch["errors"]["data"][0];
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("invalid_request"), Some("input_file_id"))
    );
    assert!(e["message"].as_str().unwrap().contains("file-nowhere"));

    let file: Value = app
        .upload("batch", "x.jsonl", to_jsonl(&[good("a")]))
        .expect(200)
        .await;
    sqlx::query("INSERT INTO projects (id, name) VALUES ('proj_other', 'other')")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE files SET project_id = 'proj_other' WHERE id = $1")
        .bind(file["id"].as_str())
        .execute(&app.pool)
        .await
        .unwrap();
    body["input_file_id"] = file["id"].clone();
    let b: Value = app.create_batch(&body).expect(200).await;
    let batch = app.wait_for(b["id"].as_str().unwrap(), &["failed"]).await;
    assert_eq!(batch["errors"]["data"][0]["code"], "invalid_request");

    // A file uploaded for another purpose is not batch input.
    let file: Value = app
        .upload("user_data", "x.jsonl", to_jsonl(&[good("a")]))
        .expect(200)
        .await;
    body["input_file_id"] = file["id"].clone();
    let b: Value = app.create_batch(&body).expect(200).await;
    let batch = app.wait_for(b["id"].as_str().unwrap(), &["failed"]).await;
    assert_eq!(batch["errors"]["data"][0]["param"], "input_file_id");

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_chunks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a failed validation queues nothing");
    assert_eq!(upstream.executions().await, 0);
}

/// `limits.max_batch_lines` and `limits.max_batch_input_bytes` hold a batch, lowered here (and
/// raised the same way past OpenAI's caps).
#[tokio::test]
async fn a_batch_past_the_configured_lines_or_bytes_fails_validation() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.limits.max_batch_lines = 3;
        s.limits.max_batch_input_bytes = 1000;
    })
    .await;
    let lines = |n: usize| {
        to_jsonl(
            &(0..n)
                .map(|i| chat_line(&format!("l{i}"), json!({})))
                .collect::<Vec<_>>(),
        )
    };
    let errors = failed_with(&app, lines(4)).await;
    assert_eq!(errors[0]["code"], "too_many_requests");
    assert_eq!(
        errors[0]["message"],
        "The input file has more than 3 requests."
    );
    let big = lines(3);
    let padded = [big.clone(), vec![b'\n'; 1000 - big.len() + 1]].concat();
    let errors = failed_with(&app, padded).await;
    assert_eq!(errors[0]["code"], "file_too_large");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("1000-byte"),
        "{errors:?}"
    );
    // At the limits: runs.
    let id = app.submit("/v1/chat/completions", lines(3)).await;
    assert_eq!(
        app.wait_for(&id, &["completed", "failed"]).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn transient_upstream_faults_are_retried_and_permanent_ones_recorded() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.upstream.timeout_secs = 2;
        s.worker.max_attempts = 4;
    })
    .await;
    let lines = vec![
        chat_line("ok", json!({})),
        chat_line("two-500s", json!({"fake": {"fail": [500, 503]}})),
        chat_line("rate-limited", json!({"fake": {"fail": [429, 429]}})),
        chat_line("dropped", json!({"fake": {"fail": ["drop"]}})),
        chat_line("hung", json!({"fake": {"fail": ["hang"]}})),
        chat_line(
            "always-500",
            json!({"fake": {"fail": [500, 500, 500, 500, 500, 500]}}),
        ),
        chat_line(
            "unknown-model",
            json!({"model": "fake-model", "fake": {"fail": [404]}}),
        ),
    ];
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 7, "completed": 5, "failed": 2})
    );

    let out = app.lines_of(&batch["output_file_id"]).await;
    assert_eq!(
        custom_ids(&out),
        ["ok", "two-500s", "rate-limited", "dropped", "hung"]
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(custom_ids(&err), ["always-500", "unknown-model"]);
    assert_eq!(err[0]["response"]["status_code"], 500);
    assert_eq!(err[1]["response"]["status_code"], 404);
    assert!(err[1]["response"]["body"]["error"].is_object());
    assert_eq!(err[1]["error"], Value::Null);

    // The worker's own account, as Prometheus would scrape it.
    let metrics = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "openbatch_upstream_retries_total ",
        "openbatch_upstream_responses_total{status=\"500\",upstream=\"default\"} ",
        "openbatch_upstream_responses_total{status=\"error\",upstream=\"default\"} ",
        "openbatch_upstream_request_duration_seconds_count{upstream=\"default\"} ",
        "openbatch_lines_processed_total{outcome=\"succeeded\"} ",
        "openbatch_batches_finished_total{status=\"completed\"} ",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }

    let stats = upstream.stats().await;
    let runs = |k: &str| stats["by_key"][k].as_u64().unwrap_or(0);
    assert_eq!(runs("ok"), 1);
    assert_eq!(runs("two-500s"), 3);
    assert_eq!(runs("rate-limited"), 3);
    assert_eq!(runs("dropped"), 2);
    assert_eq!(runs("hung"), 2);
    assert_eq!(runs("always-500"), 4, "attempts are bounded");
    assert_eq!(runs("unknown-model"), 1, "a 404 is final");
}

/// An upstream that never answers is not the line's fault: its lines wait (using no attempt)
/// until the batch's completion window ends, then end as `batch_expired` (issue 21; they used
/// to fail as `upstream_unreachable` after `max_attempts`).
#[tokio::test]
async fn an_unreachable_upstream_holds_its_lines_until_the_window_ends() {
    // Nothing listens on port 1.
    let unreachable = FakeUpstream::start(&[]);
    let app = spawn_engine(&unreachable, |s| {
        s.upstream.base_url = "http://127.0.0.1:1/v1".to_owned();
        s.worker.max_attempts = 2;
        s.worker.lease_secs = 3;
        s.batches.expiry_override_secs = Some(4);
    })
    .await;
    let id = app
        .submit(
            "/v1/chat/completions",
            to_jsonl(&[chat_line("a", json!({}))]),
        )
        .await;
    let batch = app.wait_for(&id, &["completed", "expired"]).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err[0]["response"], Value::Null);
    assert_eq!(err[0]["error"]["code"], "batch_expired");
    assert_eq!(batch["output_file_id"], Value::Null);
}

#[tokio::test]
async fn cancel_mid_run_keeps_finished_lines_and_accounts_for_the_rest() {
    let upstream = FakeUpstream::start(&["--latency-ms", "100"]);
    let app = spawn_engine(&upstream, |s| {
        s.worker.max_in_flight = 2;
        s.worker.chunk_lines = 2;
    })
    .await;
    let lines: Vec<Value> = (0..300)
        .map(|i| chat_line(&format!("c{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    // Wait until some lines are done, then cancel.
    app.wait_for_completed(&id, 4).await;
    app.post(&format!("/v1/batches/{id}/cancel"))
        .expect_response(200)
        .await;
    let batch = app.wait_for(&id, &["cancelled"]).await;
    assert!(batch["cancelled_at"].as_i64().is_some());
    let out = app.lines_of(&batch["output_file_id"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert!(
        out.len() >= 4 && out.len() < 300,
        "partial output: {}",
        out.len()
    );
    assert_eq!(out.len() + err.len(), 300, "every line accounted for once");
    let all: HashSet<String> = custom_ids(&out)
        .into_iter()
        .chain(custom_ids(&err))
        .collect();
    assert_eq!(all.len(), 300);
    assert!(err.iter().all(|l| l["error"]["code"] == "batch_cancelled"));
    assert_eq!(batch["request_counts"]["completed"], out.len());
    let executed = upstream.executions().await as usize;
    assert!(
        executed < 300,
        "cancel stopped the claiming ({executed} executed)"
    );
}

#[tokio::test]
async fn a_batch_past_its_window_expires_with_partial_results() {
    let upstream = FakeUpstream::start(&["--latency-ms", "200"]);
    let app = spawn_engine(&upstream, |s| {
        s.batches.expiry_override_secs = Some(3);
        s.worker.max_in_flight = 1;
        s.worker.chunk_lines = 1;
    })
    .await;
    let lines: Vec<Value> = (0..200)
        .map(|i| chat_line(&format!("e{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["expired", "completed"]).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    assert!(batch["expired_at"].as_i64().is_some());
    let out = app.lines_of(&batch["output_file_id"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(out.len() + err.len(), 200);
    assert!(!err.is_empty());
    for l in &err {
        assert_eq!(l["response"], Value::Null);
        assert_eq!(l["error"]["code"], "batch_expired");
        assert_eq!(
            l["error"]["message"],
            "This request could not be executed before the completion window expired."
        );
    }
}

#[tokio::test]
async fn a_batch_cancelled_before_it_runs_ends_cancelled() {
    // The model check holds validation for a while: the cancel lands before any line runs.
    let upstream = FakeUpstream::start(&["--latency-ms", "50", "--models-latency-ms", "1500"]);
    let app = spawn_engine(&upstream, |_| {}).await;
    let lines: Vec<Value> = (0..3000)
        .map(|i| chat_line(&format!("v{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    assert_eq!(app.batch(&id).await["status"], "validating");
    app.post(&format!("/v1/batches/{id}/cancel"))
        .expect_response(200)
        .await;
    let batch = app.wait_for(&id, &["cancelled"]).await;
    assert_eq!(
        upstream.executions().await,
        0,
        "no line may run after a cancel"
    );
    assert_eq!(batch["request_counts"]["completed"], 0, "{batch}");
    assert!(batch["output_file_id"].is_null(), "{batch}");
}

#[tokio::test]
async fn models_are_routed_to_their_own_upstream() {
    let general = FakeUpstream::start(&["--models", "text-embedding-3-small"]);
    let embeddings = FakeUpstream::start(&["--models", "embed-small"]);
    let route_url = embeddings.base_url.clone();
    let app = spawn_engine(&general, move |s| {
        s.routes.insert(
            "embed".to_owned(),
            openbatch::config::UpstreamSettings {
                base_url: route_url,
                base_urls: None,
                api_key: None,
                timeout_secs: 30,
                max_in_flight: 2,
                models: vec!["embed-*".to_owned()],
                max_response_bytes: 16 << 20,
                adaptive: true,
                metrics_url: None,
                priority: None,
            },
        );
    })
    .await;
    let line = |id: &str, model: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings",
               "body": {"model": model, "input": "text", "user": id}})
    };
    let routed: Vec<Value> = (0..6)
        .map(|i| line(&format!("r{i}"), "embed-small"))
        .collect();
    let id = app.submit("/v1/embeddings", to_jsonl(&routed)).await;
    assert_eq!(
        app.wait_for(&id, &["completed"]).await["request_counts"]["completed"],
        6
    );
    let other: Vec<Value> = (0..4)
        .map(|i| line(&format!("d{i}"), "text-embedding-3-small"))
        .collect();
    let id = app.submit("/v1/embeddings", to_jsonl(&other)).await;
    assert_eq!(
        app.wait_for(&id, &["completed"]).await["request_counts"]["completed"],
        4
    );
    assert_eq!(
        embeddings.executions().await,
        6,
        "embed-* went to its route"
    );
    assert_eq!(
        general.executions().await,
        4,
        "everything else to the default upstream"
    );
}
