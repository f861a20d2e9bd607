//! Completion windows as priorities: `1h`, `24h` and `7d` are accepted (the configured set),
//! each expires on its own window, and a batch with an earlier deadline runs before an
//! earlier batch of the same project with a later one.

use serde_json::{json, Value};

use crate::helpers::{
    batch_body, chat_line, spawn_app_with, spawn_engine, to_jsonl, Expect, FakeUpstream,
};

#[tokio::test]
async fn the_configured_windows_are_accepted_and_each_sets_its_own_expiry() {
    let app =
        spawn_app_with(|s| s.batches.completion_windows = vec!["1h".into(), "24h".into()]).await;
    let file: Value = app
        .upload("batch", "in.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .expect(200)
        .await;
    let id = file["id"].as_str().unwrap();
    for (window, secs) in [("1h", 3600), ("24h", 86_400)] {
        let mut body = batch_body(id);
        body["completion_window"] = json!(window);
        let batch = app.create_batch(&body).expect(200).await;
        assert_eq!(batch["completion_window"], window);
        let expires = batch["expires_at"].as_i64().unwrap() - batch["created_at"].as_i64().unwrap();
        assert_eq!(expires, secs, "{window}");
        assert_eq!(batch["behind_schedule"], false);
    }
    // `7d` is a window OpenBatch knows, but this server was configured without it.
    for window in ["7d", "2h", ""] {
        let mut body = batch_body(id);
        body["completion_window"] = json!(window);
        let err = app.create_batch(&body).expect_error(400).await;
        assert_eq!(err["param"], "completion_window", "{window}");
        assert!(err["message"].as_str().unwrap().contains("'1h'"), "{err}");
    }
}

#[tokio::test]
async fn a_1h_batch_created_after_a_big_24h_batch_of_the_same_project_runs_first() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.worker.max_in_flight = 4;
        s.worker.chunk_lines = 4;
    })
    .await;
    // The big batch's lines wait at the upstream until the gate opens: by then the urgent
    // batch is in progress too, and the next chunk claimed is the earlier deadline's.
    let big: Vec<Value> = (0..40)
        .map(|i| chat_line(&format!("big{i}"), json!({"fake": {"gate": "go"}})))
        .collect();
    let big = app.submit("/v1/chat/completions", to_jsonl(&big)).await;
    app.wait_for(&big, &["in_progress"]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while upstream.executions().await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the big batch's first lines never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let file: Value = app
        .upload(
            "batch",
            "urgent.jsonl",
            to_jsonl(&[chat_line("u0", json!({})), chat_line("u1", json!({}))]),
        )
        .expect(200)
        .await;
    let mut body = batch_body(file["id"].as_str().unwrap());
    body["completion_window"] = json!("1h");
    let urgent = app.create_batch(&body).expect(200).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for(&urgent, &["in_progress"]).await;

    upstream.open_gate("go").await;
    let done = app.wait_for(&urgent, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let behind = app.batch(&big).await;
    let finished = behind["request_counts"]["completed"].as_i64().unwrap()
        + behind["request_counts"]["failed"].as_i64().unwrap();
    assert!(finished < 40, "the 24h batch finished first: {behind}");
    let big_done = app.wait_for(&big, &["completed", "failed"]).await;
    assert_eq!(big_done["request_counts"]["completed"], 40);
}
