//! `POST /v1/batches/{id}/retry` through a real replica and the fake upstream: a new batch of
//! exactly the failed lines (filtered or not), linked both ways, idempotent like create.

use serde_json::{json, Value};

use crate::helpers::{
    chat_line, engine_env, expect_error, spawn_app, start_replicas_with, to_jsonl, FakeUpstream,
    TestApp, TestDb,
};

/// `r0..r9`: r2 and r7 fail with 400, r4 with 422, the rest succeed. The fake upstream answers
/// a failing body's second execution normally, so the retry succeeds.
fn input() -> Vec<Value> {
    (0..10)
        .map(|i| {
            let id = format!("r{i}");
            match i {
                2 | 7 => chat_line(&id, json!({"fake": {"fail": [400]}})),
                4 => chat_line(&id, json!({"fake": {"fail": [422]}})),
                _ => chat_line(&id, json!({})),
            }
        })
        .collect()
}

async fn content(app: &TestApp, file_id: &str) -> Vec<u8> {
    app.get(&format!("/v1/files/{file_id}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn retry(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/v1/batches/{id}/retry"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn retry_runs_exactly_the_failed_lines_again_and_links_both_batches() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let replicas = start_replicas_with(1, &db.url, &engine_env(&upstream, &[])).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let lines = input();
    let origin = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let done = app.wait_for(&origin, &["completed"]).await;
    assert_eq!(done["request_counts"]["failed"], 3);

    // Not finished, unknown, bad filters: clear answers, nothing created.
    let err = expect_error(retry(&app, "batch_nope", json!({})).await, 404).await;
    assert_eq!(err["code"], "batch_not_found");
    for (body, param) in [
        (json!({"status_codes": [99]}), "status_codes[0]"),
        (json!({"status_codes": "400"}), "status_codes"),
        (json!({"error_codes": [""]}), "error_codes[0]"),
    ] {
        let err = expect_error(retry(&app, &origin, body).await, 400).await;
        assert_eq!(err["param"], param);
    }
    let res = retry(&app, &origin, json!({"error_codes": ["batch_expired"]})).await;
    assert_eq!(res.headers()["x-should-retry"], "false");
    let err = expect_error(res, 409).await;
    assert_eq!(err["code"], "nothing_to_retry");

    // Every failed line, byte for byte, in input order.
    let res = app
        .post(&format!("/v1/batches/{origin}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a retry needs no body");
    let all: Value = res.json().await.unwrap();
    assert_eq!(all["retry_of"], origin.as_str());
    assert_eq!(all["endpoint"], "/v1/chat/completions");
    let file: Value = app
        .get_json(&format!(
            "/v1/files/{}",
            all["input_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(file["purpose"], "batch");
    assert_eq!(
        content(&app, all["input_file_id"].as_str().unwrap()).await,
        to_jsonl(&[lines[2].clone(), lines[4].clone(), lines[7].clone()])
    );

    // Filtered by upstream status.
    let only_400: Value = retry(&app, &origin, json!({"status_codes": [400]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        content(&app, only_400["input_file_id"].as_str().unwrap()).await,
        to_jsonl(&[lines[2].clone(), lines[7].clone()])
    );

    // The origin lists its retries; the retry runs and its lines now succeed.
    let o = app.batch(&origin).await;
    assert_eq!(o["retries"], json!([all["id"], only_400["id"]]));
    assert_eq!(o["retry_of"], Value::Null);
    let id = all["id"].as_str().unwrap();
    let finished = app.wait_for(id, &["completed"]).await;
    assert_eq!(
        finished["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    let out = app.lines_of(&finished["output_file_id"]).await;
    let ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r2", "r4", "r7"]);
    let listed: Value = app.get_json("/v1/batches").await;
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == origin.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["retries"], o["retries"]);

    // A batch whose every line succeeded has nothing to retry.
    let err = expect_error(retry(&app, id, json!({})).await, 409).await;
    assert_eq!(err["code"], "nothing_to_retry");
}

#[tokio::test]
async fn retry_is_idempotent_like_create() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let replicas = start_replicas_with(1, &db.url, &engine_env(&upstream, &[])).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let origin = app.submit("/v1/chat/completions", to_jsonl(&input())).await;
    app.wait_for(&origin, &["completed"]).await;
    let files_before = app.get_json("/v1/files?purpose=batch").await["data"]
        .as_array()
        .unwrap()
        .len();

    let keyed = |body: Value| {
        app.post(&format!("/v1/batches/{origin}/retry"))
            .header("Idempotency-Key", "retry-1")
            .json(&body)
            .send()
    };
    let first = keyed(json!({"status_codes": [422, 400]})).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // Same key, same filter (in another order): the same batch, no second file.
    let again = keyed(json!({"status_codes": [400, 422, 400]}))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["created_at"], first["created_at"]);
    // Same key in the body.
    let body_key: Value = retry(
        &app,
        &origin,
        json!({"status_codes": [400, 422], "idempotency_key": "retry-1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body_key["id"], first["id"]);
    // Same key, other parameters: 409, never retried by the SDKs.
    let res = keyed(json!({"status_codes": [400]})).await.unwrap();
    assert_eq!(res.headers()["x-should-retry"], "false");
    let err = expect_error(res, 409).await;
    assert_eq!(err["code"], "idempotency_key_conflict");
    // A key used for a plain create conflicts with a retry too.
    let res = app
        .post("/v1/batches")
        .header("Idempotency-Key", "retry-1")
        .json(&crate::helpers::batch_body(
            first["input_file_id"].as_str().unwrap(),
        ))
        .send()
        .await
        .unwrap();
    expect_error(res, 409).await;

    let files_after = app.get_json("/v1/files?purpose=batch").await["data"]
        .as_array()
        .unwrap()
        .len();
    // (The retry itself may have run meanwhile: its output file is not counted.)
    assert_eq!(files_after, files_before + 1, "one retry input file");
}

#[tokio::test]
async fn an_expired_batch_retries_the_lines_that_never_ran() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let env = engine_env(
        &upstream,
        &[
            ("OPENBATCH__BATCHES__EXPIRY_OVERRIDE_SECS", "4"),
            ("OPENBATCH__UPSTREAM__TIMEOUT_SECS", "600"),
        ],
    );
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let lines: Vec<Value> = (0..6)
        .map(|i| {
            let id = format!("r{i}");
            if i % 2 == 0 {
                chat_line(&id, json!({"fake": {"fail": ["hang"]}}))
            } else {
                chat_line(&id, json!({}))
            }
        })
        .collect();
    let origin = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let ended = app.wait_for(&origin, &["expired"]).await;
    let errors = app.lines_of(&ended["error_file_id"]).await;
    let expired: Vec<&str> = errors
        .iter()
        .filter(|l| l["error"]["code"] == "batch_expired")
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    for hung in ["r0", "r2", "r4"] {
        assert!(expired.contains(&hung), "{hung} never answered: {errors:?}");
    }
    let res = retry(&app, &origin, json!({"error_codes": ["batch_expired"]})).await;
    assert_eq!(res.status(), 200);
    let b: Value = res.json().await.unwrap();
    let want: Vec<Value> = lines
        .iter()
        .filter(|l| expired.contains(&l["custom_id"].as_str().unwrap()))
        .cloned()
        .collect();
    assert_eq!(
        content(&app, b["input_file_id"].as_str().unwrap()).await,
        to_jsonl(&want)
    );
}

#[tokio::test]
async fn a_batch_still_running_or_failed_in_validation_cannot_be_retried() {
    let app = spawn_app().await;
    for (status, code) in [
        ("in_progress", "batch_not_finished"),
        ("validating", "batch_not_finished"),
        ("failed", "nothing_to_retry"),
    ] {
        let id = app.batch_in_status(status).await;
        let res = retry(&app, &id, json!({})).await;
        let err = expect_error(res, 409).await;
        assert_eq!(err["code"], code, "{status}: {err}");
    }
}

#[tokio::test]
async fn another_projects_batch_is_not_found_on_the_extensions() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.auth.enabled = true;
        s.auth.cache_secs = 0;
    })
    .await;
    let mut secrets = Vec::new();
    for project in ["team-a", "team-b"] {
        secrets.push(crate::helpers::key_for(&app.pool, project).await);
    }
    let (a, b) = (&secrets[0], &secrets[1]);
    let batch: Value = app
        .post("/v1/batches")
        .bearer_auth(a)
        .json(&crate::helpers::batch_body("file-abc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = batch["id"].as_str().unwrap();
    let requests = |key: &str| {
        [
            app.get(&format!("/v1/batches/{id}/results"))
                .bearer_auth(key),
            app.get(&format!("/v1/batches/{id}/events"))
                .bearer_auth(key),
            app.post(&format!("/v1/batches/{id}/retry"))
                .bearer_auth(key),
        ]
    };
    for req in requests(b) {
        let err = expect_error(req.send().await.unwrap(), 404).await;
        assert_eq!(err["code"], "batch_not_found");
    }
    // Its own project sees it: no results yet, and not retryable before it ends.
    let [results, _, retry] = requests(a);
    let res = results.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "");
    let err = expect_error(retry.send().await.unwrap(), 409).await;
    assert_eq!(err["code"], "batch_not_finished");
}
