//! `POST /v1/batches/{id}/retry` within the limits a creation and an upload respect: it holds
//! no connection while it waits for another (a storm of retries leaves the replica answering
//! everyone), its file counts against the storage quota, and the new batch keeps the origin's
//! `output_expires_after` and metadata, checked against the configured limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{
    batch_body, chat_line, expect_error, spawn_app_with, start_replicas_with, to_jsonl, Expect,
    TestApp, TestDb,
};
use openbatch::jsonl::group::line_id;

/// A batch of `n` requests put straight into `cancelled` as the worker leaves one that never
/// ran: its error file holds every request, with `code(i)` as its error code. `extra` goes into
/// the creation's body. Returns the batch's id and its input.
async fn cancelled_batch(
    app: &TestApp,
    n: usize,
    extra: Value,
    code: impl Fn(usize) -> &'static str,
) -> (String, Vec<u8>) {
    let lines: Vec<Value> = (0..n)
        .map(|i| chat_line(&format!("r{i:05}"), json!({})))
        .collect();
    let input = to_jsonl(&lines);
    let file = app
        .upload("batch", "in.jsonl", input.clone())
        .expect(200)
        .await;
    let mut body = batch_body(file["id"].as_str().unwrap());
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let batch = app.create_batch(&body).expect(200).await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let errors: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": line_id(&id, i as i32),
                "custom_id": format!("r{i:05}"),
                "response": null,
                "error": {"code": code(i), "message": "This request was not run."},
            })
        })
        .collect();
    let error_file = app
        .upload("batch", "errors.jsonl", to_jsonl(&errors))
        .expect(200)
        .await;
    sqlx::query(
        "UPDATE batches SET status = 'cancelled', cancelling_at = unix_now(),
                            cancelled_at = unix_now(), error_file_id = $1
         WHERE id = $2",
    )
    .bind(error_file["id"].as_str().unwrap())
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    (id, input)
}

async fn retries_of(app: &TestApp, origin: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batches WHERE retry_of = $1")
        .bind(origin)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_storm_of_retries_leaves_the_replica_answering_everyone() {
    const RETRIES: usize = 32;
    let db = TestDb::new();
    let replicas = start_replicas_with(
        1,
        &db.url,
        &[
            ("OPENBATCH__WORKER__ENABLED", "false"),
            ("OPENBATCH__DATABASE__MAX_CONNECTIONS", "4"),
        ],
    )
    .await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let (origin, input) = cancelled_batch(&app, 5000, json!({}), |_| "batch_cancelled").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let storming = AtomicBool::new(true);
    let probe = async {
        let mut seen = Vec::new();
        while storming.load(Ordering::SeqCst) {
            for path in ["/v1/batches", "/readyz"] {
                let started = Instant::now();
                let res = client.get(app.url(path)).send().await.unwrap();
                seen.push((path, res.status().as_u16(), started.elapsed()));
            }
        }
        seen
    };
    let storm = async {
        let sends = (0..RETRIES).map(|_| {
            let req = client
                .post(app.url(&format!("/v1/batches/{origin}/retry")))
                .header("Idempotency-Key", "storm");
            async move {
                let started = Instant::now();
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let retry_after = res.headers().get("retry-after").cloned();
                let body: Value = res.json().await.unwrap();
                (status, retry_after, body, started.elapsed())
            }
        });
        let answers = join_all(sends).await;
        storming.store(false, Ordering::SeqCst);
        answers
    };
    let (probes, answers) = futures_util::join!(probe, storm);

    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    let slowest = probes.iter().map(|p| p.2).max();
    eprintln!(
        "retries answered {statuses:?}; {} probes, the slowest {slowest:?}",
        probes.len()
    );
    let bound = Duration::from_secs(10);
    let mut made = None;
    for (status, retry_after, body, took) in &answers {
        assert!(*took < bound, "a retry waited {took:?}: {status} {body}");
        match status {
            200 => {
                let id = body["id"].as_str().unwrap().to_owned();
                assert_eq!(made.get_or_insert(id.clone()), &id, "one key, one batch");
            }
            429 | 503 => assert!(
                retry_after.is_some(),
                "{status} without Retry-After: {body}"
            ),
            _ => panic!("a retry answered {status}: {body}"),
        }
    }
    assert!(made.is_some(), "no retry succeeded: {answers:?}");
    assert!(!probes.is_empty());
    for (path, status, took) in &probes {
        assert_eq!(*status, 200, "{path} answered {status} during the storm");
        assert!(*took < bound, "{path} waited {took:?} during the storm");
    }

    // The storm made one batch, of every request, and the key replays it.
    let again = app
        .post(&format!("/v1/batches/{origin}/retry"))
        .header("Idempotency-Key", "storm")
        .expect(200)
        .await;
    assert_eq!(Some(again["id"].as_str().unwrap()), made.as_deref());
    assert_eq!(retries_of(&app, &origin).await, 1);
    let content = app.content_of(&again["input_file_id"]).await;
    assert_eq!(content.as_slice(), input.as_slice());
    drop(replicas);
}

#[tokio::test]
async fn a_retry_is_held_to_the_quota_and_keeps_the_origins_expiry_and_metadata() {
    const LINES: usize = 200;
    // Every line of the input is the same size, and so is every error line.
    let line_bytes = to_jsonl(&[chat_line("r00000", json!({}))]).len() as u64;
    let error_bytes = to_jsonl(&[json!({
        "id": line_id("batch_", 0),
        "custom_id": "r00000",
        "response": null,
        "error": {"code": "batch_cancelled", "message": "This request was not run."},
    })])
    .len() as u64;
    let input_bytes = line_bytes * LINES as u64;
    // Room for the origin's files (error lines are at most `error_bytes`) and a retry of three
    // quarters of its lines, not of all of them.
    let quota = input_bytes + error_bytes * LINES as u64 + 3 * input_bytes / 4;
    let app = spawn_app_with(|s| {
        s.limits.max_stored_bytes_per_project = quota;
        s.limits.metadata.max_pairs = 2;
    })
    .await;
    let (origin, _) = cancelled_batch(
        &app,
        LINES,
        json!({
            "metadata": {"team": "a"},
            "output_expires_after": {"anchor": "created_at", "seconds": 7200},
        }),
        // Half cancelled, half expired: the filter picks one half.
        |i| {
            if i % 2 == 0 {
                "batch_cancelled"
            } else {
                "batch_expired"
            }
        },
    )
    .await;
    let retry = |body: Value| {
        app.post(&format!("/v1/batches/{origin}/retry"))
            .json(&body)
            .send()
    };

    // Metadata the limits no longer allow (stored before the operator lowered them): refused
    // as a creation would refuse it.
    sqlx::query(
        "UPDATE batches SET metadata = '{\"a\": \"1\", \"b\": \"2\", \"c\": \"3\"}' WHERE id = $1",
    )
    .bind(&origin)
    .execute(&app.pool)
    .await
    .unwrap();
    let err = expect_error(retry(json!({})).await.unwrap(), 400).await;
    assert_eq!(err["param"], "metadata", "{err}");
    sqlx::query("UPDATE batches SET metadata = '{\"team\": \"a\"}' WHERE id = $1")
        .bind(&origin)
        .execute(&app.pool)
        .await
        .unwrap();

    // Every line does not fit in the quota: 403 as an upload gets, and nothing is kept.
    let files_before: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let res = retry(json!({})).await.unwrap();
    let no_retry = res.headers().get("x-should-retry").cloned();
    let err = expect_error(res, 403).await;
    assert_eq!(no_retry.unwrap(), "false");
    assert_eq!(err["code"], "storage_quota_exceeded", "{err}");
    assert_eq!(retries_of(&app, &origin).await, 0);
    let files_after: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(files_after, files_before);

    // Half of them fit; the new batch keeps the origin's output expiry and metadata.
    let res = retry(json!({"error_codes": ["batch_expired"]}))
        .await
        .unwrap();
    let made: Value = crate::helpers::assert_status(res, 200)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(made["metadata"], json!({"team": "a"}));
    let (expiry, input_bytes): (Option<i64>, i64) = sqlx::query_as(
        "SELECT b.output_expires_after_seconds, f.bytes
         FROM batches b JOIN files f ON f.id = b.input_file_id WHERE b.id = $1",
    )
    .bind(made["id"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(expiry, Some(7200));
    assert_eq!(input_bytes as u64, line_bytes * LINES as u64 / 2);
}
