use serde_json::{json, Value};

use crate::helpers::{batch_body, expect_error, spawn_app, Expect};

const FIELDS: [&str; 22] = [
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
];

#[tokio::test]
async fn a_created_batch_has_every_field_and_waits_in_validating() {
    let app = spawn_app().await;
    let mut body = batch_body("file-does-not-exist");
    body["metadata"] = json!({"team": "search"});
    let res = app.create_batch(&body).expect_response(200).await;
    assert!(res.headers().contains_key("x-request-id"));
    assert!(!res.headers().contains_key("idempotent-replayed"));
    let batch: Value = res.json().await.unwrap();
    for f in FIELDS {
        assert!(batch.get(f).is_some(), "missing {f}");
    }
    assert!(batch["id"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["input_file_id"], "file-does-not-exist");
    assert_eq!(batch["metadata"], json!({"team": "search"}));
    assert_eq!(
        batch["expires_at"].as_i64().unwrap(),
        batch["created_at"].as_i64().unwrap() + 86_400
    );
    assert_eq!(
        batch["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(batch["output_file_id"], Value::Null);

    let fetched = app
        .get(&format!("/v1/batches/{}", batch["id"].as_str().unwrap()))
        .expect(200)
        .await;
    assert_eq!(fetched, batch);
}

#[tokio::test]
async fn unknown_batches_are_404_batch_not_found_naming_the_id() {
    let app = spawn_app().await;
    // A well-formed id that does not exist, and one that could never exist.
    for id in ["batch_nope", "not-a-batch-id"] {
        let retrieve = app.get(&format!("/v1/batches/{id}")).send().await.unwrap();
        let cancel = app
            .post(&format!("/v1/batches/{id}/cancel"))
            .send()
            .await
            .unwrap();
        for res in [retrieve, cancel] {
            let err = expect_error(res, 404).await;
            assert_eq!(err["code"], "batch_not_found", "{err}");
            assert_eq!(err["type"], "invalid_request_error", "{err}");
            let message = err["message"].as_str().unwrap();
            assert!(message.contains(id), "{err}");
            assert!(message.contains("No batch found"), "{err}");
        }
    }
    // Files keep OpenAI's own wording.
    let err = app.get("/v1/files/file-nope").expect_error(404).await;
    assert_eq!(err["message"], "No such File object: file-nope");
    assert_eq!(err["code"], Value::Null);
}

#[tokio::test]
async fn listing_walks_every_batch_newest_first_with_cursors() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let b: Value = app
            .create_batch(&batch_body(&format!("file-{i}")))
            .expect(200)
            .await;
        created.push(b["id"].as_str().unwrap().to_owned());
    }
    created.reverse();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = app.get("/v1/batches").query(&[("limit", "3")]);
        if let Some(a) = &after {
            req = req.query(&[("after", a.as_str())]);
        }
        let page: Value = req.send().await.unwrap().json().await.unwrap();
        assert_eq!(page["object"], "list");
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 3);
        assert_eq!(page["first_id"].as_str(), ids.first().map(String::as_str));
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        seen.extend(ids);
        if !page["has_more"]
            .as_bool()
            .expect("has_more is always a boolean")
        {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, created);

    // Default page size is 20; an empty project still answers with has_more.
    let page: Value = app.get_json("/v1/batches").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 7);
    assert_eq!(page["has_more"], false);
}

#[tokio::test]
async fn list_rejects_bad_limits_and_unknown_cursors() {
    let app = spawn_app().await;
    for limit in ["0", "101", "ten", "-1"] {
        let err = app
            .get("/v1/batches")
            .query(&[("limit", limit)])
            .expect_error(400)
            .await;
        assert_eq!(err["param"], "limit");
    }
    assert_eq!(
        app.get("/v1/batches")
            .query(&[("after", "batch_missing")])
            .expect_error(400)
            .await["param"],
        "after"
    );
}

#[tokio::test]
async fn cancel_moves_a_validating_batch_to_cancelling_and_is_repeatable() {
    let app = spawn_app().await;
    let b: Value = app.create_batch(&batch_body("f")).expect(200).await;
    let id = b["id"].as_str().unwrap();
    // The SDKs send an empty body with a JSON content type.
    let cancelled = app
        .post(&format!("/v1/batches/{id}/cancel"))
        .header("content-type", "application/json")
        .expect(200)
        .await;
    assert_eq!(cancelled["status"], "cancelling");
    assert!(cancelled["cancelling_at"].as_i64().is_some());

    let again = app
        .post(&format!("/v1/batches/{id}/cancel"))
        .expect(200)
        .await;
    assert_eq!(again, cancelled);
}

#[tokio::test]
async fn cancel_of_a_finished_batch_is_a_final_409() {
    let app = spawn_app().await;
    for status in ["completed", "failed", "expired", "finalizing"] {
        let id = app.batch_in_status(status).await;
        let res = app
            .post(&format!("/v1/batches/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-should-retry"], "false");
        let err = expect_error(res, 409).await;
        assert_eq!(
            err["message"],
            format!("Cannot cancel a batch with status '{status}'.")
        );
    }
    let id = app.batch_in_status("cancelled").await;
    assert_eq!(
        app.post(&format!("/v1/batches/{id}/cancel"))
            .expect(200)
            .await["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn creation_validates_each_parameter() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
            "missing_required_parameter",
        ),
        (
            json!({"input_file_id": "f", "completion_window": "24h"}),
            "endpoint",
            "missing_required_parameter",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions"}),
            "completion_window",
            "missing_required_parameter",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/images/generations", "completion_window": "24h"}),
            "endpoint",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "48h"}),
            "completion_window",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "f", "endpoint": 5, "completion_window": "24h"}),
            "endpoint",
            "invalid_type",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"n": 1}}),
            "metadata.n",
            "invalid_type",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": "x"}),
            "metadata",
            "invalid_type",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": "v".repeat(513)}}),
            "metadata.k",
            "string_above_max_length",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k".repeat(65): "v"}}),
            "metadata",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "output_expires_after": {"anchor": "created_at", "seconds": 60}}),
            "output_expires_after.seconds",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "idempotency_key": ""}),
            "idempotency_key",
            "invalid_value",
        ),
        (
            json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h", "idempotency_key": 7}),
            "idempotency_key",
            "invalid_type",
        ),
    ];
    for (body, param, code) in cases {
        let err = app.create_batch(&body).expect_error(400).await;
        assert_eq!(err["param"], param, "{body}");
        assert_eq!(err["code"], code, "{body}");
        assert_eq!(err["type"], "invalid_request_error");
    }
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let mut body = batch_body("f");
    body["metadata"] = Value::Object(many);
    let err = app.create_batch(&body).expect_error(400).await;
    assert_eq!(err["param"], "metadata");
    assert_eq!(
        app.count_batches().await,
        0,
        "nothing written for rejected requests"
    );
}

#[tokio::test]
async fn every_endpoint_is_accepted() {
    let app = spawn_app().await;
    for endpoint in [
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
    ] {
        let mut body = batch_body("f");
        body["endpoint"] = json!(endpoint);
        body["metadata"] = Value::Null;
        let res = app.create_batch(&body).send().await.unwrap();
        assert_eq!(res.status(), 200, "{endpoint}");
        assert_eq!(res.json::<Value>().await.unwrap()["endpoint"], endpoint);
    }
}
