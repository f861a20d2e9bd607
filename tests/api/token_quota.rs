//! `limits.max_enqueued_tokens_per_project`: a batch whose estimated prompt tokens would take
//! its project past the limit for its model fails validation with OpenAI's
//! `token_limit_exceeded`; the same batch is admitted once another has finished.

use serde_json::{json, Value};

use crate::helpers::{chat_line, spawn_engine, to_jsonl, FakeUpstream};

/// `n` lines whose answers wait for `gate` (none: answered at once), and the estimate
/// validation makes of them: a quarter of the input's bytes.
fn input(prefix: &str, n: usize, gate: Option<&str>) -> (Vec<u8>, i64) {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            let fake = gate.map_or(json!({}), |g| json!({"fake": {"gate": g}}));
            chat_line(&format!("{prefix}{i}"), fake)
        })
        .collect();
    let bytes = to_jsonl(&lines);
    let est = (bytes.len() as i64 + 3) / 4;
    (bytes, est)
}

#[tokio::test]
async fn a_batch_past_the_enqueued_token_limit_fails_until_another_finishes() {
    let upstream = FakeUpstream::start(&[]);
    let (running, running_est) = input("held", 20, Some("go"));
    let (next, next_est) = input("next", 20, None);
    // Room for either batch alone, not for both.
    let limit = running_est + next_est - 1;
    let app = spawn_engine(&upstream, |s| {
        s.limits.max_enqueued_tokens_per_project = limit as u64;
    })
    .await;

    let held = app.submit("/v1/chat/completions", running).await;
    app.wait_for(&held, &["in_progress"]).await;
    let refused = app.submit("/v1/chat/completions", next.clone()).await;
    let failed = app.wait_for(&refused, &["failed", "in_progress"]).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = &failed["errors"]["data"][0];
    assert_eq!(error["code"], "token_limit_exceeded", "{failed}");
    let message = error["message"].as_str().unwrap();
    let model = app.batch(&held).await["model"].as_str().unwrap().to_owned();
    assert!(message.contains(&model), "{message}");
    assert!(message.contains(&format!("Limit: {limit} ")), "{message}");

    // The held batch finishes: its tokens are no longer enqueued, and the same input runs.
    upstream.open_gate("go").await;
    let done = app.wait_for(&held, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let admitted = app.submit("/v1/chat/completions", next).await;
    let done = app.wait_for(&admitted, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 20);
}
