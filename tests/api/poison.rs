//! Poison pills: inputs that would crash or wedge every replica that touches them end as clear
//! errors instead. Each attack runs against two real replicas in the abuse harness
//! ([`Stack`]): both stay ready and within their memory bound, another project's ordinary
//! batches complete meanwhile, the attack ends with its documented error in bounded time, and
//! the attacker's own good lines are accounted for. Two tests of in-process details (a
//! setting's message, the mapping of every data-class SQLSTATE) run against an in-process app.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::abuse::{client_with_key, Stack};
use crate::helpers::{
    batch_body, chat_line, project_and_key, spawn_app, spawn_engine, start_replicas_with, to_jsonl,
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

/// The attacker's ordinary lines still run: a batch of them completes, each line once.
async fn attacker_still_served(app: &TestApp, prefix: &str) {
    let lines: Vec<Value> = (0..3)
        .map(|i| chat_line(&format!("{prefix}{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let batch = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0}),
        "{batch}"
    );
    let out = app.lines_of(&batch["output_file_id"]).await;
    let ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(ids, expected);
}

/// (custom_id, error code) of each line of an error file.
fn codes(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["custom_id"].as_str().unwrap().to_owned(),
                l["error"]["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A line over a configured cap (in-process: the setting's value in the message).
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
        assert_eq!(api.status().as_u16(), 400, "{what}: {api}");
        assert_eq!(api.should_retry(), Some(false), "{what}");
        assert_eq!(api.to_json()["error"]["type"], "invalid_request_error");
    }
}

/// One 96 MB line (numbers, the costliest JSON to parse into a tree) against the default 8 MiB
/// cap: the batch fails as `line_too_long` without any replica ever holding the line (the
/// harness's RSS bound, 100 MiB, is below the line plus an idle replica's ~30 MiB).
#[tokio::test]
async fn a_giant_line_fails_as_too_long_and_costs_a_replica_no_memory() {
    let stack = Stack::start(TestDb::new(), &[]).await;
    let mut giant = br#"{"custom_id":"g","method":"POST","url":"/v1/chat/completions","body":{"model":"fake-model","messages":[],"x":["#.to_vec();
    while giant.len() < 96_000_000 {
        giant.extend_from_slice(b"1,");
    }
    giant.extend_from_slice(b"1]}}\n");
    let content = [to_jsonl(&[chat_line("a", json!({}))]), giant].concat();
    let attacker = &stack.attacker[0];
    stack
        .under_attack(async {
            let errors = errors_of(attacker, content).await;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0]["code"], "line_too_long", "{errors:?}");
            assert_eq!(errors[0]["line"], 2);
            assert_eq!(errors[0]["param"], "line");
            let message = errors[0]["message"].as_str().unwrap();
            assert!(message.contains("8388608 bytes"), "{message}");
        })
        .await;
    attacker_still_served(&stack.attacker[1], "a").await;
    stack.finish().await;
}

/// NUL (`\u0000`, which PostgreSQL's text cannot hold) in a `custom_id` or a model name is a
/// line error at validation, not an insert failing every 2 s until the batch expires.
#[tokio::test]
async fn nul_in_a_custom_id_or_model_is_a_line_error() {
    let stack = Stack::start(TestDb::new(), &[]).await;
    let attacker = &stack.attacker[0];
    stack
        .under_attack(async {
            let nul_id = chat_line("a\u{0}b", json!({}));
            let nul_model = chat_line("b", json!({"model": "fake-model\u{0}"}));
            for (line, param) in [(nul_id, "custom_id"), (nul_model, "body.model")] {
                let content = to_jsonl(&[chat_line("ok", json!({})), line]);
                let errors = errors_of(attacker, content).await;
                assert_eq!(errors.len(), 1, "{errors:?}");
                let e = &errors[0];
                assert_eq!(
                    (&e["code"], &e["param"], &e["line"]),
                    (&json!("invalid_request"), &json!(param), &json!(2)),
                    "{e}"
                );
                assert!(e["message"].as_str().unwrap().contains("NUL"), "{e}");
            }
        })
        .await;
    attacker_still_served(&stack.attacker[1], "ok").await;
    stack.finish().await;
}

/// NUL in a metadata key or value (jsonb refuses it: SQLSTATE 22P05) is a 400 naming the
/// field, not a 500, and stores nothing.
#[tokio::test]
async fn nul_in_metadata_is_a_400_not_a_500() {
    let stack = Stack::start(TestDb::new(), &[]).await;
    let attacker = &stack.attacker[0];
    let file: Value = attacker
        .upload("batch", "in.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .expect(200)
        .await;
    let id = file["id"].as_str().unwrap();
    stack
        .under_attack(async {
            for (i, metadata) in [json!({"team": "a\u{0}"}), json!({"te\u{0}am": "a"})]
                .into_iter()
                .enumerate()
            {
                let mut body = batch_body(id);
                body["metadata"] = metadata.clone();
                let err = stack.attacker[i % 2]
                    .create_batch(&body)
                    .expect_error(400)
                    .await;
                assert_eq!(err["code"], "invalid_value", "{metadata}: {err}");
                assert!(
                    err["param"].as_str().unwrap().starts_with("metadata."),
                    "{err}"
                );
            }
        })
        .await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM batches WHERE project_id = $1")
        .bind(&stack.attacker_project)
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    attacker_still_served(attacker, "a").await;
    stack.finish().await;
}

/// A response over `upstream.max_response_bytes` is abandoned as soon as it passes the cap
/// (announced by `Content-Length`, or found while streaming a body without one), recorded as
/// `response_too_large` in the error file, and not retried.
#[tokio::test]
async fn a_huge_upstream_response_is_a_line_failure() {
    let stack = Stack::start(
        TestDb::new(),
        &[("OPENBATCH__UPSTREAM__MAX_RESPONSE_BYTES", "65536")],
    )
    .await;
    let app = &stack.attacker[0];
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
    let batch = stack
        .under_attack(async {
            let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
            app.wait_for(&id, &["completed", "failed"]).await
        })
        .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(
        codes(&err),
        [
            ("declared".into(), "response_too_large".into()),
            ("streamed".into(), "response_too_large".into())
        ]
    );
    let out = app.lines_of(&batch["output_file_id"]).await;
    let ok: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ok, ["small", "plain"]);
    assert_eq!(
        out[0]["response"]["body"]["padding"]
            .as_str()
            .unwrap()
            .len(),
        1000
    );
    let stats = stack.upstream.stats().await;
    for id in ["declared", "streamed"] {
        assert_eq!(stats["by_key"][id], 1, "{id} was not retried: {stats}");
    }
    stack.finish().await;
}

/// Validation that PostgreSQL refuses for its data (any SQLSTATE 22xxx; here forced by a
/// trigger on the attacker's rows only) fails the batch with a clear error at once, instead of
/// re-reading the file every 2 s until the batch expires.
#[tokio::test]
async fn a_data_exception_during_validation_fails_the_batch() {
    let stack = Stack::start(TestDb::new(), &[]).await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON batch_chunks FOR EACH ROW
         WHEN (NEW.project_id = '{}') EXECUTE FUNCTION refuse();",
        stack.attacker_project
    ))
    .execute(stack.pool())
    .await
    .unwrap();
    let attacker = &stack.attacker[0];
    stack
        .under_attack(async {
            let errors = errors_of(attacker, to_jsonl(&[chat_line("a", json!({}))])).await;
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
        })
        .await;
    stack.finish().await;
}

/// A chunk whose claims keep ending without a stored result (here: its line hangs, and the test
/// takes the claim away each time, as a lapsed lease would after its replica was OOM-killed) is
/// given up after `worker.max_idle_claims` claims: its line goes to the error file as
/// `execution_abandoned`, the rest of the batch completes, and no further replica is handed it.
#[tokio::test]
async fn a_chunk_in_a_crash_loop_is_given_up() {
    let stack = Stack::start(TestDb::new(), &[("OPENBATCH__WORKER__CHUNK_LINES", "1")]).await;
    let app = &stack.attacker[0];
    let hang = json!({"fake": {"fail": ["hang", "hang", "hang", "hang", "hang", "hang"]}});
    let lines = [chat_line("ok", json!({})), chat_line("stuck", hang)];
    let batch = stack
        .under_attack(async {
            let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
            loop {
                let b = app.batch(&id).await;
                if b["status"] == "completed" || b["status"] == "failed" {
                    break b;
                }
                // The replica running chunk 1 "dies": its claim lapses and the chunk is queued
                // again, for either replica.
                sqlx::query(
                    "UPDATE batch_chunks
                     SET state = 'pending', lease_owner = NULL, lease_until = NULL
                     WHERE batch_id = $1 AND idx = 1 AND state = 'running'",
                )
                .bind(&id)
                .execute(&app.pool)
                .await
                .unwrap();
                // Part of the attack: the chunk is requeued every 20 ms.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["custom_id"], "stuck");
    assert_eq!(err[0]["error"]["code"], "execution_abandoned", "{}", err[0]);
    let out = app.lines_of(&batch["output_file_id"]).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["custom_id"], "ok");
    let runs = stack.upstream.stats().await["by_key"]["stuck"]
        .as_u64()
        .unwrap_or(0);
    assert!(runs <= 3, "the stuck line was handed out {runs} times");
    stack.finish().await;
}

/// Batch-level work whose holder keeps vanishing (its lease lapses with the claim still set,
/// as when validation or finalization OOM-kills the replica) is given up on the claim after
/// `worker.max_idle_claims` such lapses: the batch fails with `batch_abandoned`.
#[tokio::test]
async fn a_batch_in_a_crash_loop_is_given_up() {
    let db = TestDb::new();
    // An API-only replica creates the batches, so that nothing works on them yet.
    let mut api = start_replicas_with(
        1,
        &db.url,
        &[
            ("OPENBATCH__WORKER__ENABLED", "false"),
            ("OPENBATCH__AUTH__ENABLED", "true"),
        ],
    )
    .await;
    let mut creator = TestApp::connect(&api[0].address, &db.url).await;
    creator.client = client_with_key(&project_and_key(&creator.pool, "attacker").await.1);
    let file: Value = creator
        .upload("batch", "in.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .expect(200)
        .await;
    let mut ids = Vec::new();
    for status in ["validating", "finalizing"] {
        let batch: Value = creator
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
        .execute(&creator.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    assert!(api[0].terminate(), "the API-only replica stops cleanly");
    creator.pool.close().await;

    let stack = Stack::start(db, &[]).await;
    let app = &stack.attacker[0];
    stack
        .under_attack(async {
            for id in &ids {
                let batch = app
                    .wait_for(id, &["failed", "completed", "in_progress"])
                    .await;
                assert_eq!(batch["status"], "failed", "{batch}");
                let e = &batch["errors"]["data"][0];
                assert_eq!(e["code"], "batch_abandoned", "{batch}");
                assert!(e["message"].as_str().unwrap().contains("3 times"), "{e}");
            }
        })
        .await;
    attacker_still_served(&stack.attacker[1], "a").await;
    stack.finish().await;
}

/// Results the database refuses every time (here a trigger raises "program limit exceeded",
/// as a result past PostgreSQL's limits would) are not retried forever with their slots held:
/// the chunk is given up (its lines go to the error file as `execution_abandoned`), the other
/// chunks complete, and the replicas go on running other batches.
#[tokio::test]
async fn results_the_database_refuses_give_the_chunk_up_and_free_its_slots() {
    let stack = Stack::start(
        TestDb::new(),
        &[
            ("OPENBATCH__WORKER__CHUNK_LINES", "4"),
            ("OPENBATCH__WORKER__MAX_IN_FLIGHT", "4"),
        ],
    )
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
    .execute(stack.pool())
    .await
    .unwrap();
    let app = &stack.attacker[0];
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
    let batch = stack
        .under_attack(async {
            let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
            app.wait_for(&id, &["completed", "failed"]).await
        })
        .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let out = app.lines_of(&batch["output_file_id"]).await;
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(out.len() + err.len(), 12, "every line accounted for");
    let mut all: Vec<&str> = out
        .iter()
        .chain(&err)
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12, "each line exactly once");
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
    // The slots came back: an ordinary batch of 8 runs to completion on the same replicas.
    let next: Vec<Value> = (0..8)
        .map(|i| chat_line(&format!("next-{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&next)).await;
    assert_eq!(
        app.wait_for(&id, &["completed"]).await["request_counts"]["completed"],
        8
    );
    stack.finish().await;
}

/// An upstream that answers 429 with `Retry-After: 1e20` (seconds: a `Duration` that does not
/// exist, which made the line's task panic): to every request of a line whose `user` starts
/// with `always`, and to the first request of any other line. Returns its `/v1` base URL.
async fn hostile_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let runs = runs.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut piece = [0u8; 8192];
                // One request after another on the kept-alive connection.
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match socket.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        match socket.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    }
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                        .unwrap_or_default();
                    buf.drain(..head_end + length);
                    let user = body["user"].as_str().unwrap_or_default().to_owned();
                    let run = {
                        let mut runs = runs.lock().unwrap();
                        let n = runs.entry(user.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let (status, extra, answer) = if user.starts_with("always") || run == 1 {
                        (
                            "429 Too Many Requests",
                            "Retry-After: 1e20\r\n",
                            json!({"error": {"message": "slow down", "type": "requests",
                                             "param": null, "code": "rate_limit_exceeded"}}),
                        )
                    } else {
                        (
                            "200 OK",
                            "",
                            json!({
                                "id": "chatcmpl-hostile", "object": "chat.completion",
                                "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant",
                                                "content": format!("echo: hello {user}")}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                          "total_tokens": 2},
                            }),
                        )
                    };
                    let answer = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}\
                         Content-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}/v1")
}

/// `Retry-After: 1e20` is clamped to `worker.retry_max_ms` (2 s here): a line told so once
/// completes on its next attempt, within seconds, instead of a panicked task whose chunk's
/// lease is renewed until the batch expires. A line told so every time is not failed (a 429 is
/// backpressure, issue 21): it waits, without using up its attempts, until its batch is
/// cancelled.
#[tokio::test]
async fn retry_after_1e20_is_clamped_and_the_line_ends() {
    let base_url = hostile_upstream().await;
    let config =
        std::env::temp_dir().join(format!("ob-hostile-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!("[routes.hostile]\nbase_url = \"{base_url}\"\nmodels = [\"hostile-model\"]\n"),
    )
    .unwrap();
    let stack = Stack::start(
        TestDb::new(),
        &[
            ("OPENBATCH_CONFIG", config.to_str().unwrap()),
            ("OPENBATCH__WORKER__MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let _ = std::fs::remove_file(&config);
    let app = &stack.attacker[0];
    let hostile = |id: &str| chat_line(id, json!({"model": "hostile-model"}));
    let lines = [hostile("once-1"), hostile("always-1"), hostile("once-2")];
    let (batch, took) = stack
        .under_attack(async {
            let started = Instant::now();
            let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
            let running = app
                .wait_for_progress(&id, |b| {
                    let ended = !matches!(b["status"].as_str(), Some("validating" | "in_progress"));
                    b["request_counts"]["completed"] == 2 || ended
                })
                .await;
            assert_eq!(running["status"], "in_progress", "{running}");
            let took = started.elapsed();
            // Longer than `max_attempts` clamped waits: still not failed.
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(app.batch(&id).await["request_counts"]["failed"], 0);
            app.post(&format!("/v1/batches/{id}/cancel"))
                .expect_response(200)
                .await;
            (app.wait_for(&id, &["cancelled"]).await, took)
        })
        .await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1}),
        "{batch}"
    );
    let out = app.lines_of(&batch["output_file_id"]).await;
    let ok: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ok, ["once-1", "once-2"]);
    for l in &out {
        assert_eq!(
            l["response"]["body"]["choices"][0]["message"]["content"],
            format!("echo: hello {}", l["custom_id"].as_str().unwrap())
        );
    }
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0]["custom_id"], "always-1");
    assert_eq!(err[0]["error"]["code"], "batch_cancelled", "{}", err[0]);
    // Two clamped waits of at most 2 s each: the bound is only a hang guard.
    assert!(took < Duration::from_secs(120), "took {took:?}");
    stack.finish().await;
}
