use std::time::Duration;

use openbatch::config::StorageBackend;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::helpers::{
    expect_error, s3_pass, spawn_app, spawn_app_on, spawn_app_with, stored_parts, Expect, TestDb,
};

fn jsonl(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"héllo {i}\"}}]}}}}\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn upload_retrieve_download_delete_round_trip() {
    let app = spawn_app().await;
    // Larger than one storage chunk, so content spans several rows.
    let content = jsonl(20_000);
    assert!(content.len() > 2 * 1024 * 1024);
    let res = app
        .upload("batch", "requests.jsonl", content.clone())
        .expect_response(200)
        .await;
    let file: Value = res.json().await.unwrap();
    let id = file["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], content.len() as u64);
    assert_eq!(file["filename"], "requests.jsonl");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["expires_at"], Value::Null);

    let fetched: Value = app.get_json(&format!("/v1/files/{id}")).await;
    assert_eq!(fetched, file);

    let res = app
        .get(&format!("/v1/files/{id}/content"))
        .header("accept", "application/binary")
        .expect_response(200)
        .await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), content.as_slice());

    let deleted = app.delete(&format!("/v1/files/{id}")).expect(200).await;
    assert_eq!(
        deleted,
        serde_json::json!({"id": id, "object": "file", "deleted": true})
    );

    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        let err = app.get(&path).expect_error(404).await;
        assert!(err["message"].as_str().unwrap().contains(&id));
        assert_eq!(err["param"], "id");
    }
    app.delete(&format!("/v1/files/{id}"))
        .expect_error(404)
        .await;
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(chunks, 0, "content is dropped with the file");
}

#[tokio::test]
async fn expires_after_sets_expires_at() {
    let app = spawn_app().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl(1)).file_name("a.jsonl"),
        )
        .text("purpose", "batch")
        .text("expires_after[anchor]", "created_at")
        .text("expires_after[seconds]", "7200");
    let file = app.post("/v1/files").multipart(form).expect(200).await;
    assert_eq!(
        file["expires_at"].as_i64().unwrap(),
        file["created_at"].as_i64().unwrap() + 7200
    );

    for (anchor, seconds, param) in [
        ("created_at", "60", "expires_after.seconds"),
        ("created_at", "soon", "expires_after[seconds]"),
        ("last_used", "7200", "expires_after.anchor"),
    ] {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .text("expires_after[anchor]", anchor)
            .text("expires_after[seconds]", seconds)
            .part(
                "file",
                reqwest::multipart::Part::bytes(jsonl(1)).file_name("a.jsonl"),
            );
        assert_eq!(
            app.post("/v1/files")
                .multipart(form)
                .expect_error(400)
                .await["param"],
            param
        );
    }
}

#[tokio::test]
async fn expired_files_are_gone() {
    let app = spawn_app().await;
    let file: Value = app.upload("batch", "a.jsonl", jsonl(1)).expect(200).await;
    let id = file["id"].as_str().unwrap();
    sqlx::query("UPDATE files SET expires_at = unix_now() - 1 WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.get(&format!("/v1/files/{id}")).expect_error(404).await;
    let list: Value = app.get_json("/v1/files").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn list_filters_orders_and_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let purpose = if i % 2 == 0 { "batch" } else { "user_data" };
        let f: Value = app
            .upload(purpose, &format!("f{i}.jsonl"), jsonl(1))
            .expect(200)
            .await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    let ids_of = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = app.get_json("/v1/files").await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(ids_of(&all), newest_first);
    assert_eq!(all["has_more"], false);

    let asc: Value = app.get_json("/v1/files?order=asc&limit=2").await;
    assert_eq!(ids_of(&asc), ids[..2]);
    assert_eq!(asc["has_more"], true);
    let next = app
        .get(&format!(
            "/v1/files?order=asc&limit=2&after={}",
            asc["last_id"].as_str().unwrap()
        ))
        .expect(200)
        .await;
    assert_eq!(ids_of(&next), ids[2..4]);

    let batch_only: Value = app.get_json("/v1/files?purpose=batch").await;
    assert_eq!(
        ids_of(&batch_only),
        vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );

    // A cursor on a file deleted mid-way still works.
    app.delete(&format!("/v1/files/{}", ids[1]))
        .expect_response(200)
        .await;
    let after_deleted: Value = app
        .get_json(&format!("/v1/files?order=asc&after={}", ids[1]))
        .await;
    assert_eq!(ids_of(&after_deleted), ids[2..]);

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("order=sideways", "order"),
        ("purpose=nope", "purpose"),
        ("after=file-missing", "after"),
    ] {
        assert_eq!(
            app.get(&format!("/v1/files?{query}"))
                .expect_error(400)
                .await["param"],
            param,
            "{query}"
        );
    }
}

#[tokio::test]
async fn bad_uploads_are_rejected_and_leave_nothing_behind() {
    let app = spawn_app_with(|s| s.limits.max_upload_bytes = 4096).await;
    let not_utf8 = vec![b'{', 0xff, 0xfe, b'}', b'\n'];
    let res = app
        .upload("batch", "bad.jsonl", not_utf8.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(res, 400).await["code"], "invalid_file_format");
    // Other purposes may hold any bytes.
    app.upload("user_data", "bin", not_utf8)
        .expect_response(200)
        .await;

    let res = app
        .upload("batch", "big.jsonl", vec![b'a'; 5000])
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 413).await;
    assert!(err["message"].as_str().unwrap().contains("4096"));

    let res = app
        .upload("nonsense", "a.jsonl", jsonl(1))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(res, 400).await["param"], "purpose");
    let res = app
        .upload("batch_output", "a.jsonl", jsonl(1))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(res, 400).await["param"], "purpose");
    let res = app
        .upload("batch", "empty.jsonl", Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(res, 400).await["param"], "file");

    let form = reqwest::multipart::Form::new().text("purpose", "batch");
    let err = app
        .post("/v1/files")
        .multipart(form)
        .expect_error(400)
        .await;
    assert_eq!(
        (err["param"].as_str(), err["code"].as_str()),
        (Some("file"), Some("missing_required_parameter"))
    );

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(jsonl(1)).file_name("a.jsonl"),
    );
    assert_eq!(
        app.post("/v1/files")
            .multipart(form)
            .expect_error(400)
            .await["param"],
        "purpose"
    );

    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl(1)).file_name("a.jsonl"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl(1)).file_name("b.jsonl"),
        );
    assert_eq!(
        app.post("/v1/files")
            .multipart(form)
            .expect_error(400)
            .await["param"],
        "file"
    );

    // A multipart body with no parts at all, and one cut off mid-way.
    for body in [
        "--xyz--\r\n",
        "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
    ] {
        let res = app
            .post("/v1/files")
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(res, 400).await;
    }
    app.post("/v1/files")
        .header("content-type", "multipart/form-data")
        .body("x")
        .expect_error(400)
        .await;
    app.post("/v1/files")
        .json(&serde_json::json!({"purpose": "batch"}))
        .expect_error(415)
        .await;

    let files: Vec<String> = sqlx::query_scalar("SELECT id FROM files")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(files.len(), 1, "only the one accepted upload is stored");
    assert_eq!(stored_parts(&app.pool, &files[0]).await, 1);
    let (chunks, pending): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM file_chunks), (SELECT count(*) FROM pending_objects)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // In the database: the accepted file's one chunk; in a bucket: none there, its object only.
    let expected_chunks = if s3_pass() { 0 } else { 1 };
    assert_eq!(
        (chunks, pending),
        (expected_chunks, 0),
        "no content of a refused upload"
    );
}

/// A download the database fails under is a 503 with `Retry-After` while nothing is sent yet
/// (the SDKs retry it), never a 200 cut short; once under way, a chunk whose read fails is read
/// again, so the body arrives whole. The failures are PostgreSQL's own: `lock_timeout` set on
/// the database, and `file_chunks` locked by another session.
#[tokio::test]
async fn a_download_the_database_fails_under_is_a_503_or_arrives_whole() {
    let db = TestDb::new();
    db.create().await;
    // Connected before the setting, so this session waits for locks as long as it takes.
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "DO $$ BEGIN
           EXECUTE format('ALTER DATABASE %I SET lock_timeout = %L', current_database(), '1s');
         END $$",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let app = spawn_app_on(db, |s| s.storage.backend = StorageBackend::Postgres).await;
    // Far more than the sockets between server and client buffer, so the server is still
    // reading chunks once the table is locked.
    let content: Vec<u8> = (0..450_000)
        .flat_map(|i| format!("line {i:>56}\n").into_bytes())
        .collect();
    assert!(content.len() > 24 * 1024 * 1024);
    let file: Value = app
        .upload("user_data", "big.txt", content.clone())
        .expect(200)
        .await;
    let url = format!("/v1/files/{}/content", file["id"].as_str().unwrap());

    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE file_chunks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let res = app.get(&url).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let err = expect_error(res, 503).await;
    assert_eq!(err["type"], "server_error");
    lock.rollback().await.unwrap();

    let res = app.get(&url).expect_response(200).await;
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE file_chunks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let body = tokio::spawn(res.bytes());
    // Long enough for the server's reads to time out at least once; short of its last retry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    lock.commit().await.unwrap();
    let body = body.await.unwrap().expect("the body arrives whole");
    assert!(body == content, "{} bytes of {}", body.len(), content.len());
}
