//! `limits.max_enqueued_tokens_per_project`: a batch whose estimated prompt tokens would take
//! its project past the limit for its model fails validation with OpenAI's
//! `token_limit_exceeded`; the same batch is admitted once another has finished. The estimate
//! is the upstream's own count where it serves `/tokenize` (vLLM), else a quarter of the bytes.

use serde_json::{json, Value};

use crate::helpers::{chat_line, spawn_engine, to_jsonl, FakeUpstream};

/// `n` lines whose answers wait for `gate` (none: answered at once), and the estimate
/// validation makes of them without `/tokenize`: a quarter of the input's bytes.
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
    let upstream = FakeUpstream::start(&["--no-tokenize"]);
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

/// Two replicas queue batches of one project and model at once: the lock on (project, model)
/// makes the second count the first, so exactly one is admitted. Raced in several projects,
/// so that the two validations overlap in some (without the lock, some round admits both).
#[tokio::test]
async fn racing_replicas_cannot_pass_the_limit_together() {
    let upstream = FakeUpstream::start(&["--no-tokenize"]);
    let db = crate::helpers::TestDb::new();
    let (_, est) = input("a", 20, Some("hold"));
    let limit = (2 * est - 1).to_string();
    let env = crate::helpers::engine_env(
        &upstream,
        &[
            (
                "OPENBATCH__LIMITS__MAX_ENQUEUED_TOKENS_PER_PROJECT",
                limit.as_str(),
            ),
            ("OPENBATCH__AUTH__ENABLED", "true"),
        ],
    );
    let replicas = crate::helpers::start_replicas_with(2, &db.url, &env).await;
    for round in 0..6 {
        let admin = crate::helpers::TestApp::connect(&replicas[0].address, &db.url).await;
        let key = crate::helpers::key_for(&admin.pool, &format!("race-{round}")).await;
        let mut apps = Vec::new();
        for r in &replicas {
            apps.push(crate::helpers::TestApp::connect_with_key(&r.address, &db.url, &key).await);
        }
        let (a, _) = input(&format!("a{round}-"), 20, Some("hold"));
        let (b, _) = input(&format!("b{round}-"), 20, Some("hold"));
        let (first, second) = tokio::join!(
            apps[0].submit("/v1/chat/completions", a),
            apps[1].submit("/v1/chat/completions", b)
        );
        let mut statuses = Vec::new();
        for id in [&first, &second] {
            let batch = apps[0].wait_for(id, &["failed", "in_progress"]).await;
            if batch["status"] == "failed" {
                assert_eq!(batch["errors"]["data"][0]["code"], "token_limit_exceeded");
            }
            statuses.push(batch["status"].as_str().unwrap().to_owned());
        }
        statuses.sort();
        assert_eq!(statuses, ["failed", "in_progress"], "round {round}");
    }
    upstream.open_gate("hold").await;
}

/// With `/tokenize` served, the estimate is the upstream's count (the fake counts words, far
/// fewer than a quarter of the bytes): the batch the byte estimate would refuse is admitted.
#[tokio::test]
async fn the_upstream_s_own_token_count_is_used_where_it_serves_one() {
    let upstream = FakeUpstream::start(&[]);
    let (running, by_bytes) = input("held", 20, Some("tok"));
    let (next, _) = input("next", 20, None);
    let limit = by_bytes + by_bytes / 2;
    let app = spawn_engine(&upstream, |s| {
        s.limits.max_enqueued_tokens_per_project = limit as u64;
    })
    .await;
    let held = app.submit("/v1/chat/completions", running).await;
    app.wait_for(&held, &["in_progress"]).await;
    let admitted = app.submit("/v1/chat/completions", next).await;
    let batch = app
        .wait_for(&admitted, &["failed", "in_progress", "completed"])
        .await;
    assert_ne!(batch["status"], "failed", "{batch}");
    let est: i64 = sqlx::query_scalar("SELECT est_tokens FROM batches WHERE id = $1")
        .bind(&held)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        est > 0 && est < by_bytes / 4,
        "counted {est}, a quarter of the bytes {by_bytes}"
    );
    assert!(upstream.stats().await["tokenizations"].as_u64().unwrap() >= 2);
    upstream.open_gate("tok").await;
    assert_eq!(
        app.wait_for(&admitted, &["completed", "failed"]).await["status"],
        "completed"
    );
}
