//! Poison pills: inputs that would crash or wedge every replica that touches them end as clear
//! errors instead, and the replica stays up.

use serde_json::{json, Value};

use crate::helpers::{
    batch_body, chat_line, engine_env, spawn_app, spawn_engine, start_replicas_with, to_jsonl,
    Expect, FakeUpstream, TestApp, TestDb,
};

/// A chat line padded to `bytes` bytes by an extra body field.
fn line_of(custom_id: &str, bytes: usize) -> Vec<u8> {
    let base = chat_line(custom_id, json!({"pad": ""})).to_string().len();
    let pad = "x".repeat(bytes.saturating_sub(base));
    chat_line(custom_id, json!({ "pad": pad }))
        .to_string()
        .into_bytes()
}

async fn errors_of(app: &TestApp, content: Vec<u8>) -> Vec<Value> {
    let id = app.submit("/v1/chat/completions", content).await;
    let batch = app
        .wait_for(&id, &["failed", "in_progress", "completed"])
        .await;
    assert_eq!(batch["status"], "failed", "{batch}");
    batch["errors"]["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_line_over_the_cap_fails_validation_with_its_line_number() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| s.batches.max_line_bytes = 4096).await;
    let content = [
        line_of("a", 4000),
        b"\n".to_vec(),
        line_of("b", 300_000),
        b"\n".to_vec(),
        line_of("c", 100),
        b"\n".to_vec(),
    ]
    .concat();
    let errors = errors_of(&app, content).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "line_too_long");
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[0]["param"], "line");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("4096 bytes"),
        "{}",
        errors[0]
    );
    // Lines under the cap still run.
    let ok = [line_of("a", 4000), b"\n".to_vec(), line_of("b", 4000)].concat();
    let id = app.submit("/v1/chat/completions", ok).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
}

/// One 96 MB line (numbers, the costliest JSON to parse into a tree) against the default 8 MiB
/// cap: the replica fails the batch without ever holding the line, and stays up.
#[tokio::test]
async fn a_giant_line_costs_a_replica_no_memory() {
    // Measured 60-81 MiB (the upload, spooled and copied in 1 MiB pieces, included); a replica
    // that held the line would pass 96 MiB plus its idle ~30 MiB.
    const LIMIT_MIB: u64 = 100;
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let env = engine_env(&upstream, &[]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;

    let mut giant = br#"{"custom_id":"g","method":"POST","url":"/v1/chat/completions","body":{"model":"fake-model","messages":[],"x":["#.to_vec();
    while giant.len() < 96_000_000 {
        giant.extend_from_slice(b"1,");
    }
    giant.extend_from_slice(b"1]}}\n");
    let content = [to_jsonl(&[chat_line("a", json!({}))]), giant].concat();
    let errors = errors_of(&app, content).await;
    assert_eq!(errors[0]["code"], "line_too_long", "{errors:?}");
    assert_eq!(errors[0]["line"], 2);

    app.get("/readyz").expect_response(200).await;
    let peak_mib = replicas[0].peak_rss_mib();
    assert!(
        peak_mib < LIMIT_MIB,
        "peak RSS {peak_mib} MiB for a 96 MB line (limit {LIMIT_MIB} MiB)"
    );
}

#[tokio::test]
async fn nul_in_a_custom_id_or_model_is_a_line_error() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |_| {}).await;
    let nul_id = chat_line("a\u{0}b", json!({}));
    let nul_model = chat_line("b", json!({"model": "fake-model\u{0}"}));
    for (line, param) in [(nul_id, "custom_id"), (nul_model, "body.model")] {
        let content = to_jsonl(&[chat_line("ok", json!({})), line]);
        let errors = errors_of(&app, content).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(
            (&e["code"], &e["param"], &e["line"]),
            (&json!("invalid_request"), &json!(param), &json!(2)),
            "{e}"
        );
        assert!(e["message"].as_str().unwrap().contains("NUL"), "{e}");
    }
}

#[tokio::test]
async fn nul_in_metadata_is_a_400_not_a_500() {
    let app = spawn_app().await;
    let file: Value = app
        .upload("batch", "in.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .expect(200)
        .await;
    let id = file["id"].as_str().unwrap();
    for metadata in [json!({"team": "a\u{0}"}), json!({"te\u{0}am": "a"})] {
        let mut body = batch_body(id);
        body["metadata"] = metadata.clone();
        let err = app.create_batch(&body).expect_error(400).await;
        assert_eq!(err["code"], "invalid_value", "{metadata}: {err}");
        assert!(
            err["param"].as_str().unwrap().starts_with("metadata."),
            "{err}"
        );
    }
    assert_eq!(app.count_batches().await, 0);
}

/// Whatever statement PostgreSQL refuses for its data (class 22), the client gets a 400 that
/// says not to retry, never a 500.
#[tokio::test]
async fn data_exceptions_from_postgres_are_client_errors() {
    use openbatch::error::ApiError;
    let app = spawn_app().await;
    let division = sqlx::query("SELECT 1 / 0").execute(&app.pool).await;
    let nul_text = sqlx::query("SELECT $1::text")
        .bind("a\u{0}b")
        .execute(&app.pool)
        .await;
    let nul_jsonb = sqlx::query("SELECT $1::jsonb")
        .bind(r#"{"a": "\u0000"}"#)
        .execute(&app.pool)
        .await;
    let range = sqlx::query("SELECT 99999999999::int4")
        .execute(&app.pool)
        .await;
    for (what, result, sqlstate) in [
        ("division", division, "22012"),
        ("NUL in text", nul_text, "22021"),
        ("NUL in jsonb", nul_jsonb, "22P05"),
        ("out of range", range, "22003"),
    ] {
        let e = result.expect_err(what);
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some(sqlstate), "{what}: {e}");
        assert!(openbatch::error::is_data_exception(&e), "{what}");
        let api = ApiError::from(e);
        assert_eq!(api.status.as_u16(), 400, "{what}: {api}");
        assert_eq!(api.should_retry, Some(false), "{what}");
        assert_eq!(api.to_json()["error"]["type"], "invalid_request_error");
    }
}

/// A response over `upstream.max_response_bytes` is abandoned as soon as it passes the cap
/// (announced by `Content-Length`, or found while streaming a body without one), recorded as
/// `response_too_large` in the error file, and not retried.
#[tokio::test]
async fn a_huge_upstream_response_is_a_line_failure() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| s.upstream.max_response_bytes = 64 * 1024).await;
    let big = |id: &str, no_length: bool| {
        chat_line(
            id,
            json!({"fake": {"pad_bytes": 4 << 20, "no_length": no_length}}),
        )
    };
    let lines = [
        chat_line("small", json!({"fake": {"pad_bytes": 1000}})),
        big("declared", false),
        big("streamed", true),
        chat_line("plain", json!({})),
    ];
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    let failed: Vec<(&str, &str)> = err
        .iter()
        .map(|l| {
            (
                l["custom_id"].as_str().unwrap(),
                l["error"]["code"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            ("declared", "response_too_large"),
            ("streamed", "response_too_large")
        ]
    );
    let out = app.lines_of(&batch["output_file_id"]).await;
    assert_eq!(
        out[0]["response"]["body"]["padding"]
            .as_str()
            .unwrap()
            .len(),
        1000
    );
    let stats = upstream.stats().await;
    for id in ["declared", "streamed"] {
        assert_eq!(stats["by_key"][id], 1, "{id} was not retried: {stats}");
    }
}

/// Validation that PostgreSQL refuses for its data (any SQLSTATE 22xxx; here forced by a
/// trigger) fails the batch with a clear error at once, instead of re-reading the file every
/// 2 s until the batch expires.
#[tokio::test]
async fn a_data_exception_during_validation_fails_the_batch() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |_| {}).await;
    for statement in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON batch_chunks
         FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let errors = errors_of(&app, to_jsonl(&[chat_line("a", json!({}))])).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "invalid_request");
    assert_eq!(errors[0]["param"], "input_file_id");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be stored"),
        "{}",
        errors[0]
    );
}

/// A chunk whose claims keep ending without a stored result (here: its line hangs, and the test
/// takes the claim away each time, as a lapsed lease would after its replica was OOM-killed) is
/// given up after `worker.max_idle_claims` claims: its line goes to the error file as
/// `execution_abandoned`, the rest of the batch completes, and no further replica is handed it.
#[tokio::test]
async fn a_chunk_in_a_crash_loop_is_given_up() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| s.worker.chunk_lines = 1).await;
    let hang = json!({"fake": {"fail": ["hang", "hang", "hang", "hang", "hang", "hang"]}});
    let lines = [chat_line("ok", json!({})), chat_line("stuck", hang)];
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let batch = loop {
        let b = app.batch(&id).await;
        if b["status"] == "completed" || b["status"] == "failed" {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "batch stuck: {b}");
        // The replica running chunk 1 "dies": its claim lapses and the chunk is queued again.
        sqlx::query(
            "UPDATE batch_chunks SET state = 'pending', lease_owner = NULL, lease_until = NULL
             WHERE batch_id = $1 AND idx = 1 AND state = 'running'",
        )
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["custom_id"], "stuck");
    assert_eq!(err[0]["error"]["code"], "execution_abandoned", "{}", err[0]);
    let runs = upstream.stats().await["by_key"]["stuck"]
        .as_u64()
        .unwrap_or(0);
    assert!(runs <= 3, "the stuck line was handed out {runs} times");
}

/// Batch-level work whose holder keeps vanishing (its lease lapses with the claim still set,
/// as when validation or finalization OOM-kills the replica) is given up on the claim after
/// `worker.max_idle_claims` such lapses: the batch fails with `batch_abandoned`.
#[tokio::test]
async fn a_batch_in_a_crash_loop_is_given_up() {
    use openbatch::startup::Application;
    // An API-only server creates the batches, so that nothing works on them yet.
    let api = spawn_app().await;
    let file: Value = api
        .upload("batch", "in.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .expect(200)
        .await;
    let mut ids = Vec::new();
    for status in ["validating", "finalizing"] {
        let batch: Value = api
            .create_batch(&batch_body(file["id"].as_str().unwrap()))
            .expect(200)
            .await;
        let id = batch["id"].as_str().unwrap().to_owned();
        // Two holders vanished already; the next claim is the third in a row.
        sqlx::query(
            "UPDATE batches SET status = $2, lease_owner = 'a-replica-that-died',
                                lease_until = now() - interval '1 second', lapsed_claims = 2
             WHERE id = $1",
        )
        .bind(&id)
        .bind(status)
        .execute(&api.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let upstream = FakeUpstream::start(&[]);
    let mut settings = crate::helpers::settings_for(&api._db.as_ref().unwrap().url);
    settings.worker.enabled = true;
    settings.worker.poll_interval_ms = 50;
    settings.upstream.base_url = upstream.base_url.clone();
    let worker = Application::build(&settings).await.unwrap();
    tokio::spawn(worker.run_until_stopped());
    for id in &ids {
        let batch = api
            .wait_for(id, &["failed", "completed", "in_progress"])
            .await;
        assert_eq!(batch["status"], "failed", "{batch}");
        let e = &batch["errors"]["data"][0];
        assert_eq!(e["code"], "batch_abandoned", "{batch}");
        assert!(e["message"].as_str().unwrap().contains("3 times"), "{e}");
    }
}

/// Results the database refuses every time (here a trigger raises "program limit exceeded",
/// as a result past PostgreSQL's limits would) are not retried forever with their slots held:
/// the chunk is given up (its lines go to the error file as `execution_abandoned`), the other
/// chunks complete, and the replica goes on running other batches.
#[tokio::test]
async fn results_the_database_refuses_give_the_chunk_up_and_free_its_slots() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.worker.chunk_lines = 4;
        s.worker.max_in_flight = 4;
    })
    .await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_results() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.lines LIKE '%refused-result%' THEN
             RAISE EXCEPTION 'result too large' USING ERRCODE = '54000';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_results BEFORE INSERT ON batch_results
           FOR EACH ROW EXECUTE FUNCTION refuse_results();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let lines: Vec<Value> = (0..12)
        .map(|i| {
            let id = if i == 5 {
                "refused-result".to_owned()
            } else {
                format!("ok-{i}")
            };
            chat_line(&id, json!({}))
        })
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let out = app.lines_of(&batch["output_file_id"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(out.len() + err.len(), 12, "every line accounted for");
    // Only the refused line's chunk (lines 4..8) can be lost.
    assert!((1..=4).contains(&err.len()), "{err:?}");
    let refused = err.iter().find(|e| e["custom_id"] == "refused-result");
    let refused = refused.expect("the refused line is in the error file");
    assert_eq!(refused["error"]["code"], "execution_abandoned", "{refused}");
    for e in &err {
        let n: usize = e["custom_id"]
            .as_str()
            .unwrap()
            .trim_start_matches("ok-")
            .parse()
            .unwrap_or(5);
        assert!(
            (4..8).contains(&n),
            "a line outside the refused chunk was lost: {e}"
        );
    }
    // The slots came back: an ordinary batch runs to completion on the same replica.
    let next: Vec<Value> = (0..8)
        .map(|i| chat_line(&format!("next-{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&next)).await;
    assert_eq!(
        app.wait_for(&id, &["completed"]).await["request_counts"]["completed"],
        8
    );
}
