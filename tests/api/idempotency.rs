use serde_json::{json, Value};

use crate::helpers::{batch_body, expect_error, spawn_app, Expect};

#[tokio::test]
async fn a_retry_with_the_same_key_returns_the_same_batch() {
    let app = spawn_app().await;
    let mut first = batch_body("file-1");
    first["metadata"] = json!({"a": "1", "b": "2"});
    first["idempotency_key"] = json!("retry-me");
    let res = app.create_batch(&first).expect_response(200).await;
    let original: Value = res.json().await.unwrap();

    // Metadata in another order, key in the other body field and in the header.
    let mut second = batch_body("file-1");
    second["metadata"] = json!({"b": "2", "a": "1"});
    second["idem_tok"] = json!("retry-me");
    for req in [
        app.post("/v1/batches").json(&first),
        app.post("/v1/batches").json(&second),
        app.post("/v1/batches")
            .header("Idempotency-Key", "retry-me")
            .json(&{
                let mut b = second.clone();
                b.as_object_mut().unwrap().remove("idem_tok");
                b
            }),
    ] {
        let res = req.expect_response(200).await;
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        let replay: Value = res.json().await.unwrap();
        assert_eq!(replay, original);
    }
    assert_eq!(app.count_batches().await, 1);
}

#[tokio::test]
async fn a_replay_shows_the_batch_as_it_is_now() {
    let app = spawn_app().await;
    let mut body = batch_body("f");
    body["idempotency_key"] = json!("k");
    let b: Value = app.create_batch(&body).expect(200).await;
    app.post(&format!("/v1/batches/{}/cancel", b["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    let replay: Value = app.create_batch(&body).expect(200).await;
    assert_eq!(replay["id"], b["id"]);
    assert_eq!(replay["status"], "cancelling");
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_a_final_conflict() {
    let app = spawn_app().await;
    let mut body = batch_body("file-1");
    body["metadata"] = json!({"t": "1"});
    body["idempotency_key"] = json!("conflicted-key");
    let original: Value = app.create_batch(&body).expect(200).await;

    let mut variants = Vec::new();
    for (field, value) in [
        ("input_file_id", json!("file-2")),
        ("endpoint", json!("/v1/embeddings")),
        ("metadata", json!({"t": "2"})),
        ("metadata", Value::Null),
        (
            "output_expires_after",
            json!({"anchor": "created_at", "seconds": 3600}),
        ),
    ] {
        let mut v = body.clone();
        v[field] = value;
        variants.push(v);
    }
    for v in variants {
        let res = app.create_batch(&v).send().await.unwrap();
        assert_eq!(res.headers()["x-should-retry"], "false");
        let err = expect_error(res, 409).await;
        let msg = err["message"].as_str().unwrap();
        assert!(msg.to_lowercase().contains("conflict"), "{msg}");
        assert!(msg.contains("conflicted-key"), "{msg}");
        assert_eq!(err["type"], "invalid_request_error");
    }
    let now = app
        .get(&format!("/v1/batches/{}", original["id"].as_str().unwrap()))
        .expect(200)
        .await;
    assert_eq!(now, original);
    assert_eq!(app.count_batches().await, 1);
}

#[tokio::test]
async fn different_keys_in_one_request_are_rejected() {
    let app = spawn_app().await;
    let mut body = batch_body("f");
    body["idempotency_key"] = json!("a");
    let err = app
        .post("/v1/batches")
        .header("Idempotency-Key", "b")
        .json(&body)
        .expect_error(400)
        .await;
    assert_eq!(err["param"], "Idempotency-Key");

    body["idem_tok"] = json!("c");
    app.create_batch(&body).expect_error(400).await;
    assert_eq!(app.count_batches().await, 0);

    // The same value in every place is one key.
    body["idem_tok"] = json!("a");
    app.post("/v1/batches")
        .header("Idempotency-Key", "a")
        .json(&body)
        .expect_response(200)
        .await;
}

#[tokio::test]
async fn without_a_key_identical_requests_make_distinct_batches() {
    let app = spawn_app().await;
    let a: Value = app.create_batch(&batch_body("f")).expect(200).await;
    let b: Value = app.create_batch(&batch_body("f")).expect(200).await;
    assert_ne!(a["id"], b["id"]);
    let mut keyed = batch_body("f");
    keyed["idempotency_key"] = json!("k1");
    let c: Value = app.create_batch(&keyed).expect(200).await;
    keyed["idempotency_key"] = json!("k2");
    let d: Value = app.create_batch(&keyed).expect(200).await;
    assert_ne!(c["id"], d["id"]);
    assert_eq!(app.count_batches().await, 4);
}
