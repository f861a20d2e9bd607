//! OpenAI's Uploads API: parts in any order assembled in the order completion names, and every
//! refusal (a missing part, a wrong md5, a part over 64 MB, an upload past its maximum, an
//! expired or cancelled upload, another project's upload) a clear OpenAI error that stores
//! nothing.

use md5::{Digest, Md5};
use serde_json::{json, Value};

use crate::helpers::{
    key_for, s3_pass, spawn_app, spawn_app_with, stored_part_content, Expect, TestApp,
};

fn part(data: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "data",
        reqwest::multipart::Part::bytes(data).file_name("upload"),
    )
}

async fn create(app: &TestApp, bytes: usize, purpose: &str) -> String {
    let upload = app
        .post("/v1/uploads")
        .json(
            &json!({"filename": "in.jsonl", "purpose": purpose, "bytes": bytes,
                      "mime_type": "application/jsonl"}),
        )
        .expect(200)
        .await;
    assert_eq!(upload["object"], "upload");
    assert_eq!(upload["status"], "pending");
    assert_eq!(upload["bytes"], bytes);
    assert!(upload["file"].is_null());
    assert_eq!(
        upload["expires_at"].as_i64().unwrap() - upload["created_at"].as_i64().unwrap(),
        3600
    );
    upload["id"].as_str().unwrap().to_owned()
}

async fn add(app: &TestApp, upload: &str, data: &[u8]) -> String {
    let p = app
        .post(&format!("/v1/uploads/{upload}/parts"))
        .multipart(part(data.to_vec()))
        .expect(200)
        .await;
    assert_eq!(p["object"], "upload.part");
    assert_eq!(p["upload_id"], upload);
    p["id"].as_str().unwrap().to_owned()
}

/// (parts, pieces of part content, files) once what is being removed is gone: part objects
/// in a bucket are deleted after the rows that owned them (at once by the request that removed
/// them, else by the maintainer within seconds), so a difference is waited out, within a limit.
async fn stored(app: &TestApp) -> (i64, i64, i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (parts, files): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM upload_parts), (SELECT count(*) FROM files)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let content = stored_part_content(&app.pool).await;
        // In the database, chunks go with their parts' rows; in a bucket, each part is one
        // object, deleted after its row.
        if !s3_pass() || content == parts || std::time::Instant::now() > deadline {
            return (parts, content, files);
        }
        // Deletions from the bucket announce nothing: polled.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn lines(n: usize, tag: &str) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"custom_id\":\"{tag}{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"m\",\"messages\":[]}}}}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn parts_sent_out_of_order_make_the_file_in_the_order_completion_names() {
    let app = spawn_app().await;
    // Parts over one storage chunk (1 MiB), so that each spans several rows.
    let (first, second) = (lines(30_000, "a"), lines(12_000, "b"));
    let whole = [first.clone(), second.clone()].concat();
    let id = create(&app, whole.len(), "batch").await;
    let p2 = add(&app, &id, &second).await;
    let p1 = add(&app, &id, &first).await;
    let md5 = hex::encode(Md5::digest(&whole));

    let done = app
        .post(&format!("/v1/uploads/{id}/complete"))
        .json(&json!({"part_ids": [p1, p2], "md5": md5}))
        .expect(200)
        .await;
    assert_eq!(done["status"], "completed");
    let file = &done["file"];
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], whole.len());
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "in.jsonl");
    let content = app.content_of(&file["id"]).await;
    assert!(content == whole, "the parts in completion's order");
    assert_eq!(stored(&app).await, (0, 0, 1), "the parts are gone");

    // Completed: it takes no parts, and cannot be completed or cancelled again.
    for (path, body) in [
        ("parts", None),
        ("complete", Some(json!({"part_ids": ["part_x"]}))),
        ("cancel", None),
    ] {
        let req = app.post(&format!("/v1/uploads/{id}/{path}"));
        let req = match body {
            Some(b) => req.json(&b),
            None if path == "parts" => req.multipart(part(b"x".to_vec())),
            None => req,
        };
        let e = req.expect_error(409).await;
        assert_eq!(e["code"], "upload_not_pending", "{path}");
        assert!(e["message"].as_str().unwrap().contains("completed"), "{e}");
    }
}

#[tokio::test]
async fn a_completion_that_does_not_add_up_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let id = create(&app, 10, "user_data").await;
    let a = add(&app, &id, b"01234").await;
    let b = add(&app, &id, b"56789").await;
    let complete = |body: Value| app.post(&format!("/v1/uploads/{id}/complete")).json(&body);
    let refusals = [
        (
            json!({"part_ids": [a, "part_missing"]}),
            "part_ids",
            "part_missing",
        ),
        (json!({"part_ids": [a]}), "part_ids", "5 bytes"),
        (json!({"part_ids": [a, a]}), "part_ids", "more than once"),
        (json!({"part_ids": []}), "part_ids", "in order"),
        (json!({}), "part_ids", "Missing"),
        (
            json!({"part_ids": [a, b], "md5": hex::encode(Md5::digest(b"5678901234"))}),
            "md5",
            "not the",
        ),
        (
            json!({"part_ids": [a, b], "md5": "nope"}),
            "md5",
            "MD5 digest",
        ),
    ];
    for (body, param, says) in refusals {
        let e = complete(body.clone()).expect_error(400).await;
        assert_eq!(e["param"], param, "{body}");
        assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
        assert_eq!(
            stored(&app).await,
            (2, 2, 0),
            "{body}: nothing stored, nothing lost"
        );
    }
    // Still pending: the right completion (md5 in base64 this time) goes through.
    use base64::Engine;
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"0123456789"));
    let done = complete(json!({"part_ids": [a, b], "md5": md5}))
        .expect(200)
        .await;
    assert_eq!(done["file"]["bytes"], 10);
}

#[tokio::test]
async fn a_batch_upload_must_be_utf8() {
    let app = spawn_app().await;
    let id = create(&app, 4, "batch").await;
    let p = add(&app, &id, &[0xff, 0xfe, b'{', b'}']).await;
    let e = app
        .post(&format!("/v1/uploads/{id}/complete"))
        .json(&json!({"part_ids": [p]}))
        .expect_error(400)
        .await;
    assert_eq!(e["code"], "invalid_file_format");
    assert_eq!(stored(&app).await, (1, 1, 0));
}

#[tokio::test]
async fn parts_and_uploads_past_their_limits_are_refused() {
    let app = spawn_app_with(|s| s.limits.max_upload_total_bytes = 100 << 20).await;
    // Declared past the maximum.
    let e = app
        .post("/v1/uploads")
        .json(
            &json!({"filename": "f", "purpose": "batch", "bytes": (100 << 20) + 1,
                      "mime_type": "application/jsonl"}),
        )
        .expect_error(400)
        .await;
    assert_eq!(e["param"], "bytes");
    // A part over 64 MiB, declared so (refused before it is read) or not (cut off as it arrives).
    let id = create(&app, 100 << 20, "user_data").await;
    let big = vec![b'x'; (64 << 20) + 1];
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .multipart(part(big.clone()))
        .expect_error(413)
        .await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("part_too_large"), Some("data"))
    );
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(
        [part_prefix(), big, part_suffix()].map(Ok::<_, std::io::Error>),
    ));
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(chunked)
        .expect_error(413)
        .await;
    assert_eq!(e["code"], "part_too_large");
    assert_eq!(stored(&app).await, (0, 0, 0));
    // Parts past the upload's maximum.
    add(&app, &id, &vec![b'x'; 60 << 20]).await;
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .multipart(part(vec![b'y'; 41 << 20]))
        .expect_error(400)
        .await;
    assert_eq!(e["code"], "upload_too_large");
    assert_eq!(stored(&app).await.0, 1, "the refused part is not kept");
    // Not a form; a form without `data`; an empty part.
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .json(&json!({}))
        .expect_error(415)
        .await;
    assert!(e["message"].as_str().unwrap().contains("'data'"), "{e}");
    let form = reqwest::multipart::Form::new().text("other", "x");
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .multipart(form)
        .expect_error(400)
        .await;
    assert_eq!(e["param"], "data");
    let e = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .multipart(part(Vec::new()))
        .expect_error(400)
        .await;
    assert_eq!(e["param"], "data");
}

const BOUNDARY: &str = "openbatch-test-boundary";

fn part_prefix() -> Vec<u8> {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"upload\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes()
}

fn part_suffix() -> Vec<u8> {
    format!("\r\n--{BOUNDARY}--\r\n").into_bytes()
}

#[tokio::test]
async fn bad_creations_are_refused_field_by_field() {
    let app = spawn_app().await;
    let ok = json!({"filename": "f", "purpose": "batch", "bytes": 5, "mime_type": "text/jsonl"});
    for (field, value, param) in [
        ("filename", Value::Null, "filename"),
        ("purpose", json!("batch_output"), "purpose"),
        ("bytes", json!(0), "bytes"),
        ("bytes", Value::Null, "bytes"),
        ("mime_type", json!(""), "mime_type"),
        (
            "expires_after",
            json!({"anchor": "created_at", "seconds": 10}),
            "expires_after",
        ),
    ] {
        let mut body = ok.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value;
        }
        let e = app.post("/v1/uploads").json(&body).expect_error(400).await;
        assert!(
            e["param"].as_str().unwrap().starts_with(param),
            "{body}: {e}"
        );
    }
    let e = app
        .post("/v1/uploads/upload_nope/parts")
        .multipart(part(b"x".to_vec()))
        .expect_error(404)
        .await;
    assert_eq!(e["param"], "upload_id");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_cancelled_or_expired_upload_takes_nothing_more_and_loses_its_parts() {
    let app = spawn_app().await;
    let cancelled = create(&app, 10, "user_data").await;
    add(&app, &cancelled, b"01234").await;
    let c = app
        .post(&format!("/v1/uploads/{cancelled}/cancel"))
        .expect(200)
        .await;
    assert_eq!(c["status"], "cancelled");
    assert_eq!(stored(&app).await, (0, 0, 0));
    for path in ["parts", "cancel"] {
        let req = app.post(&format!("/v1/uploads/{cancelled}/{path}"));
        let req = if path == "parts" {
            req.multipart(part(b"x".to_vec()))
        } else {
            req
        };
        let e = req.expect_error(409).await;
        assert!(e["message"].as_str().unwrap().contains("cancelled"), "{e}");
    }

    let expired = create(&app, 10, "user_data").await;
    let p = add(&app, &expired, b"0123456789").await;
    sqlx::query("UPDATE uploads SET expires_at = unix_now() - 1 WHERE id = $1")
        .bind(&expired)
        .execute(&app.pool)
        .await
        .unwrap();
    // Expired at once for requests, before the maintainer sweeps it.
    let e = app
        .post(&format!("/v1/uploads/{expired}/complete"))
        .json(&json!({"part_ids": [p]}))
        .expect_error(409)
        .await;
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(openbatch::maintenance::uploads::run(&app.pool).await, 1);
    assert_eq!(stored(&app).await, (0, 0, 0), "its parts removed");
    let status: String = sqlx::query_scalar("SELECT status FROM uploads WHERE id = $1")
        .bind(&expired)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "expired");
    assert_eq!(openbatch::maintenance::uploads::run(&app.pool).await, 0);
}

#[tokio::test]
async fn another_project_s_upload_is_not_found() {
    let app = spawn_app_with(|s| {
        s.auth.enabled = true;
        s.auth.cache_secs = 0;
    })
    .await;
    let (a, b) = (
        key_for(&app.pool, "alpha").await,
        key_for(&app.pool, "beta").await,
    );
    let upload = app
        .post("/v1/uploads")
        .bearer_auth(&a)
        .json(&json!({"filename": "f", "purpose": "user_data", "bytes": 1, "mime_type": "text/plain"}))
        .expect(200)
        .await;
    let id = upload["id"].as_str().unwrap();
    let theirs = app
        .post(&format!("/v1/uploads/{id}/parts"))
        .bearer_auth(&a)
        .multipart(part(b"x".to_vec()))
        .expect(200)
        .await;
    for (path, req) in [
        (
            "parts",
            app.post(&format!("/v1/uploads/{id}/parts"))
                .multipart(part(b"y".to_vec())),
        ),
        (
            "complete",
            app.post(&format!("/v1/uploads/{id}/complete"))
                .json(&json!({"part_ids": [theirs["id"]]})),
        ),
        ("cancel", app.post(&format!("/v1/uploads/{id}/cancel"))),
    ] {
        let e = req.bearer_auth(&b).expect_error(404).await;
        assert_eq!(
            e["message"],
            format!("No such Upload object: {id}"),
            "{path}"
        );
    }
    assert_eq!(stored(&app).await, (1, 1, 0));
    app.post(&format!("/v1/uploads/{id}/complete"))
        .bearer_auth(&a)
        .json(&json!({"part_ids": [theirs["id"]]}))
        .expect(200)
        .await;
}

#[tokio::test]
async fn parts_sent_at_once_are_all_kept() {
    let app = spawn_app().await;
    // Four: a project's share of the replica's upload slots (limits.max_concurrent_uploads).
    let pieces: Vec<Vec<u8>> = (0..4).map(|i| lines(5_000, &format!("p{i}-"))).collect();
    let whole = pieces.concat();
    let id = create(&app, whole.len(), "batch").await;
    let ids = futures_util::future::join_all(pieces.iter().map(|p| add(&app, &id, p))).await;
    let done = app
        .post(&format!("/v1/uploads/{id}/complete"))
        .json(&json!({"part_ids": ids, "md5": hex::encode(Md5::digest(&whole))}))
        .expect(200)
        .await;
    assert_eq!(done["file"]["bytes"], whole.len());
}

/// The project's storage quota refuses an upload that could never fit when it is created, and
/// one that no longer fits when it is completed (a file stored meanwhile); nothing is stored.
#[tokio::test]
async fn the_storage_quota_holds_at_creation_and_at_completion() {
    let app = spawn_app_with(|s| s.limits.max_stored_bytes_per_project = 100).await;
    let e = app
        .post("/v1/uploads")
        .json(
            &json!({"filename": "f", "purpose": "user_data", "bytes": 101,
                      "mime_type": "text/plain"}),
        )
        .expect_error(403)
        .await;
    assert_eq!(e["code"], "storage_quota_exceeded");
    let id = create(&app, 60, "user_data").await;
    let p = add(&app, &id, &[b'x'; 60]).await;
    app.upload("user_data", "other.txt", vec![b'y'; 50])
        .expect(200)
        .await;
    let e = app
        .post(&format!("/v1/uploads/{id}/complete"))
        .json(&json!({"part_ids": [p]}))
        .expect_error(403)
        .await;
    assert_eq!(e["code"], "storage_quota_exceeded");
    assert_eq!(
        stored(&app).await,
        (1, 1, 1),
        "the part kept, no file made of it"
    );
}
