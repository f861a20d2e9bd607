//! File content on S3 (`storage.backend = "s3"`), against a real S3 server of the test's own
//! (moto's server mode) and real replica processes: what lands in the bucket and what does not
//! land in the database, objects deleted with their files, what a crash leaves reconciled,
//! and a batch that runs through a 20-second outage of the bucket. (Every other engine and API
//! test also runs on `s3` in the test command's second pass: `helpers::storage`.)

use std::collections::HashSet;
use std::time::{Duration, Instant};

use md5::Digest;
use serde_json::{json, Value};

use crate::helpers::{
    chat_line, expect_error, s3_client, s3_env, start_replicas_with, to_jsonl, Expect,
    FakeUpstream, Replica, S3Server, TestApp, TestDb,
};

struct Stack {
    s3: S3Server,
    _upstream: FakeUpstream,
    _replicas: Vec<Replica>,
    app: TestApp,
    prefix: String,
    // Last: the replicas stop before their database goes.
    _db: TestDb,
}

async fn stack(replicas: usize, latency_ms: &str) -> Stack {
    stack_with(replicas, latency_ms, &[]).await
}

async fn stack_with(replicas: usize, latency_ms: &str, settings: &[(&str, &str)]) -> Stack {
    let s3 = S3Server::start().await;
    let upstream = FakeUpstream::start(&["--latency-ms", latency_ms]);
    let db = TestDb::new();
    let prefix = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut env = s3_env(&s3.endpoint, crate::helpers::TEST_BUCKET, &prefix);
    for (k, v) in [
        ("OPENBATCH__UPSTREAM__BASE_URL", upstream.base_url.as_str()),
        ("OPENBATCH__WORKER__MAX_IN_FLIGHT", "8"),
        ("OPENBATCH__WORKER__LEASE_SECS", "6"),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "100"),
        ("OPENBATCH__WORKER__CHUNK_LINES", "50"),
    ]
    .iter()
    .chain(settings)
    {
        env.push((k.to_string(), v.to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let started = start_replicas_with(replicas, &db.url, &env).await;
    let app = TestApp::connect(&started[0].address, &db.url).await;
    Stack {
        s3,
        _upstream: upstream,
        _replicas: started,
        app,
        prefix,
        _db: db,
    }
}

impl Stack {
    fn key(&self, file: &Value) -> String {
        format!(
            "{}/files/{}",
            self.prefix,
            file.as_str().expect("a file id")
        )
    }

    async fn keys(&self) -> HashSet<String> {
        self.s3.keys(&self.prefix).await.into_iter().collect()
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    /// Waits (polling: the maintainer announces nothing) until `pending_objects` is empty.
    async fn wait_for_no_pending(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.scalar("SELECT count(*) FROM pending_objects").await > 0 {
            assert!(Instant::now() < deadline, "pending objects never settled");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn lines(n: usize, pad: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            chat_line(
                &format!("k{i}"),
                json!({"metadata": {"pad": "x".repeat(pad)}}),
            )
        })
        .collect()
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn content_lives_in_the_bucket_read_in_ranges_and_goes_with_its_file() {
    let s = stack(1, "0").await;
    // Over one 8 MiB part, so the object is written in a multipart upload, and cut into
    // chunks whose ranges split lines.
    let input = lines(1700, 6000);
    let body = to_jsonl(&input);
    assert!(body.len() > 9 << 20);
    let file: Value = s
        .app
        .upload("batch", "big.jsonl", body.clone())
        .expect(200)
        .await;
    assert_eq!(file["bytes"], body.len());
    assert!(s.keys().await.contains(&s.key(&file["id"])));
    let content = s.app.content_of(&file["id"]).await;
    assert!(content == body, "the content read back differs");

    let mut batch_body = crate::helpers::batch_body(file["id"].as_str().unwrap());
    batch_body["endpoint"] = json!("/v1/chat/completions");
    let batch: Value = s.app.create_batch(&batch_body).expect(200).await;
    let id = batch["id"].as_str().unwrap();
    let batch = s.app.wait_for(id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let out = s.app.lines_of(&batch["output_file_id"]).await;
    assert_eq!(custom_ids(&out), custom_ids(&input));
    let keys = s.keys().await;
    assert!(keys.contains(&s.key(&batch["output_file_id"])), "{keys:?}");
    assert_eq!(
        s.scalar("SELECT count(*) FROM file_chunks").await,
        0,
        "no content in the database"
    );
    assert_eq!(
        s.scalar("SELECT count(*) FROM files WHERE storage <> 's3'")
            .await,
        0
    );

    for f in [&file["id"], &batch["output_file_id"]] {
        s.app
            .delete(&format!("/v1/files/{}", f.as_str().unwrap()))
            .expect(200)
            .await;
    }
    s.wait_for_no_pending().await;
    assert!(s.keys().await.is_empty(), "{:?}", s.keys().await);
    assert_eq!(s.s3.unfinished_uploads(&s.prefix).await, 0);
}

#[tokio::test]
async fn the_maintainer_deletes_what_a_crash_left_but_never_a_live_file() {
    let s = stack(1, "0").await;
    let live: Value = s
        .app
        .upload("batch", "a.jsonl", to_jsonl(&lines(3, 0)))
        .expect(200)
        .await;
    // What replicas killed mid-write leave: an object written whose file row never committed,
    // and a multipart upload begun and never completed; each on the ledger.
    let client = s3_client();
    let url = |file: &str| {
        let bucket = crate::helpers::TEST_BUCKET;
        format!("{}/{bucket}/{}/files/{file}", s.s3.endpoint, s.prefix)
    };
    let (orphan, half) = ("file-orphanleftbyacrash", "file-halfwrittenbyacrash");
    client
        .put(url(orphan))
        .body("a whole file")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let begun = client
        .post(format!("{}?uploads", url(half)))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let upload_id = begun
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .unwrap_or_else(|| panic!("an upload id in {begun}"))
        .to_owned();
    assert_eq!(s.s3.unfinished_uploads(&s.prefix).await, 1);
    for (file, multipart) in [
        (orphan, None),
        (half, Some(upload_id.as_str())),
        (live["id"].as_str().unwrap(), None),
    ] {
        sqlx::query(
            "INSERT INTO pending_objects (key, multipart_id, delete_after)
             VALUES ('files/' || $1, $2, unix_now() - 1)",
        )
        .bind(file)
        .bind(multipart)
        .execute(&s.app.pool)
        .await
        .unwrap();
    }
    // Not yet due: left alone.
    let young = "file-stillbeingwritten";
    sqlx::query(
        "INSERT INTO pending_objects (key, delete_after) VALUES ('files/' || $1, unix_now() + 3600)",
    )
    .bind(young)
    .execute(&s.app.pool)
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    while s.scalar("SELECT count(*) FROM pending_objects").await > 1 {
        assert!(Instant::now() < deadline, "the ledger was never reconciled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys = s.keys().await;
    assert!(
        !keys.contains(&s.key(&json!(orphan))),
        "the orphan survived: {keys:?}"
    );
    assert!(
        keys.contains(&s.key(&live["id"])),
        "a live file's object was deleted"
    );
    assert_eq!(s.s3.unfinished_uploads(&s.prefix).await, 0);
    let left: String = sqlx::query_scalar("SELECT key FROM pending_objects")
        .fetch_one(&s.app.pool)
        .await
        .unwrap();
    assert_eq!(left, format!("files/{young}"));
    s.app.content_of(&live["id"]).await;
}

/// A bucket out of reach for longer than the replica tries it: what needs content answers 503
/// `StorageUnavailable` with `Retry-After` (the SDKs retry it), never a 500 or a 200 cut short;
/// what needs none is served; once the bucket is back, so is the content.
#[tokio::test]
async fn requests_that_need_an_unreachable_bucket_answer_503() {
    let s = stack_with(
        1,
        "0",
        &[
            ("OPENBATCH__STORAGE__S3__REQUEST_TIMEOUT_SECS", "1"),
            ("OPENBATCH__STORAGE__S3__RETRY_SECS", "2"),
        ],
    )
    .await;
    let content = b"a line of user data\n".repeat(1000);
    let file: Value = s
        .app
        .upload("user_data", "notes.txt", content.clone())
        .expect(200)
        .await;
    let path = format!("/v1/files/{}/content", file["id"].as_str().unwrap());

    s.s3.pause();
    let unreachable = |res: reqwest::Response| async move {
        assert_eq!(res.headers()["retry-after"], "1");
        let err = expect_error(res, 503).await;
        assert!(
            err["message"].as_str().unwrap().contains("storage"),
            "{err}"
        );
        assert_eq!(err["type"], "server_error", "{err}");
    };
    unreachable(s.app.get(&path).send().await.unwrap()).await;
    unreachable(
        s.app
            .upload("user_data", "more.txt", content.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let listed: Value = s.app.get("/v1/files").expect(200).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    s.s3.resume();

    assert_eq!(&s.app.content_of(&file["id"]).await[..], &content[..]);
}

#[tokio::test]
async fn a_batch_runs_through_a_twenty_second_bucket_outage() {
    // 1,200 lines at 100 ms, 16 at once: about 8 s of work, so that chunks are still to be
    // read (and the files written) when the bucket stops answering.
    const LINES: usize = 1200;
    let s = stack(2, "100").await;
    let input = lines(LINES, 0);
    let id = s.app.submit("/v1/chat/completions", to_jsonl(&input)).await;
    s.app.wait_for_completed(&id, 100).await;
    assert_eq!(s.app.batch(&id).await["status"], "in_progress");
    s.s3.pause();
    // Replicas claim and read chunks meanwhile: each read waits, times out and is retried.
    tokio::time::sleep(Duration::from_secs(20)).await;
    s.s3.resume();

    let batch = s.app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": LINES, "completed": LINES, "failed": 0})
    );
    let out = s.app.lines_of(&batch["output_file_id"]).await;
    assert_eq!(custom_ids(&out), custom_ids(&input), "each line once");
    s.wait_for_no_pending().await;
    let keys = s.keys().await;
    let owned: HashSet<String> = [&batch["input_file_id"], &batch["output_file_id"]]
        .into_iter()
        .map(|f| s.key(f))
        .collect();
    assert_eq!(keys, owned, "no object orphaned");
    assert_eq!(s.s3.unfinished_uploads(&s.prefix).await, 0);
}

#[tokio::test]
async fn upload_parts_are_objects_until_completion_copies_them_into_the_file() {
    let s = stack(1, "0").await;
    // A part over one 8 MiB object part (a multipart upload of its own), and a small one.
    let (first, second) = (to_jsonl(&lines(1500, 6000)), to_jsonl(&lines(10, 0)));
    let whole = [first.clone(), second.clone()].concat();
    let create = |bytes: usize| {
        s.app.post("/v1/uploads").json(&json!({
            "filename": "in.jsonl", "purpose": "batch", "bytes": bytes,
            "mime_type": "application/jsonl",
        }))
    };
    let add = |upload: &str, data: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "data",
            reqwest::multipart::Part::bytes(data).file_name("part"),
        );
        s.app
            .post(&format!("/v1/uploads/{upload}/parts"))
            .multipart(form)
    };
    let upload: Value = create(whole.len()).expect(200).await;
    let id = upload["id"].as_str().unwrap();
    let p2: Value = add(id, second).expect(200).await;
    let p1: Value = add(id, first).expect(200).await;
    let parts = s.s3.keys(&format!("{}/uploads/{id}/", s.prefix)).await;
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(
        s.scalar("SELECT count(*) FROM upload_chunks").await,
        0,
        "no part content in the database"
    );

    let md5 = hex::encode(md5::Md5::digest(&whole));
    let done: Value = s
        .app
        .post(&format!("/v1/uploads/{id}/complete"))
        .json(&json!({"part_ids": [p1["id"], p2["id"]], "md5": md5}))
        .expect(200)
        .await;
    let file = &done["file"]["id"];
    let content = s.app.content_of(file).await;
    assert!(content == whole, "the file is the parts in the order named");
    s.wait_for_no_pending().await;
    let keys = s.keys().await;
    assert_eq!(
        keys,
        HashSet::from([s.key(file)]),
        "the parts' objects are gone"
    );

    // Cancelled: its part's object goes too.
    let other: Value = create(5).expect(200).await;
    let other = other["id"].as_str().unwrap();
    add(other, b"12345".to_vec()).expect(200).await;
    assert_eq!(s.keys().await.len(), 2);
    s.app
        .post(&format!("/v1/uploads/{other}/cancel"))
        .expect(200)
        .await;
    s.wait_for_no_pending().await;
    assert_eq!(s.keys().await, HashSet::from([s.key(file)]));
    assert_eq!(s.s3.unfinished_uploads(&s.prefix).await, 0);
}
