//! Every state has a way out: an upstream that pretty-prints its answers, a finalization that
//! fails every time, and a batch that no replica moves on, all end in a terminal status.

use serde_json::{json, Value};

use crate::helpers::*;

/// The body the fake upstream answers a chat line of `custom_id` with, but for its `id` and
/// `created`, which are taken from `got`.
fn echo_body(custom_id: &str, got: &Value) -> Value {
    json!({
        "id": got["id"], "object": "chat.completion", "created": got["created"],
        "model": "fake-model",
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": format!("echo: hello {custom_id}")},
            "logprobs": null, "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    })
}

fn upstream_error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A file's content as served, checked to be JSONL: one JSON object per line, no blank line.
async fn jsonl_of(app: &TestApp, file_id: &Value) -> Vec<Value> {
    let text = String::from_utf8(app.content_of(file_id).await).unwrap();
    assert!(text.ends_with('\n'), "{text}");
    text.trim_end_matches('\n')
        .split('\n')
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// An upstream that pretty-prints every answer (successes, and 4xx/5xx error bodies, as some
/// gateways answer a 429) and a gateway's HTML page: the batch completes, its output and error
/// files are JSONL with one line per request, and every body is the JSON value the upstream
/// sent. The results are stored one line each while the batch runs. (A 429 is backpressure,
/// retried without using up attempts: `e429` ends in the output file.)
#[tokio::test]
async fn a_pretty_printing_upstream_gives_one_line_per_result() {
    let upstream = FakeUpstream::start(&["--pretty"]);
    // The upstream really answers over several lines.
    let raw = reqwest::Client::new()
        .post(format!("{}/chat/completions", upstream.base_url))
        .json(&json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.lines().count() > 5, "{raw}");
    let app = spawn_engine(&upstream, |s| s.worker.max_attempts = 2).await;

    let mut lines: Vec<Value> = (0..14)
        .map(|i| chat_line(&format!("ok-{i}"), json!({})))
        .collect();
    let fail = |id: &str, steps: Value| chat_line(id, json!({"fake": {"fail": steps}}));
    lines.push(fail("e400", json!([400])));
    lines.push(fail("e429", json!([429, 429])));
    lines.push(fail("e500", json!([500, 500])));
    lines.push(fail("html", json!(["html", "html"])));
    lines.push(fail("retried", json!([429])));
    // Holds the batch open, so that its stored results can be looked at.
    lines.push(chat_line("slow", json!({"fake": {"latency_ms": 8000}})));
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;

    app.wait_for_progress(&id, |b| {
        let c = &b["request_counts"];
        c["completed"].as_i64().unwrap_or(0) + c["failed"].as_i64().unwrap_or(0) >= 19
            || !["validating", "in_progress"].contains(&b["status"].as_str().unwrap())
    })
    .await;
    let groups: Vec<String> =
        sqlx::query_scalar("SELECT lines FROM batch_results WHERE batch_id = $1")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        !groups.is_empty(),
        "the batch ended before its results were looked at"
    );
    let entries: Vec<&str> = groups.iter().flat_map(|g| g.lines()).collect();
    assert_eq!(
        entries.len(),
        19,
        "one stored line per result: {entries:#?}"
    );
    for e in entries {
        let mut fields = e.splitn(3, '\t');
        let (line, kind, file_line) = (fields.next(), fields.next(), fields.next());
        assert!(line.unwrap().parse::<u32>().is_ok(), "{e}");
        assert!(matches!(kind, Some("o" | "e")), "{e}");
        serde_json::from_str::<Value>(file_line.unwrap()).unwrap();
    }

    let batch = app.wait_for(&id, &["completed", "failed", "expired"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 17, "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 3, "{batch}");
    let out = jsonl_of(&app, &batch["output_file_id"]).await;
    let err = jsonl_of(&app, &batch["error_file_id"]).await;
    assert_eq!((out.len(), err.len()), (17, 3));
    for line in &out {
        let custom_id = line["custom_id"].as_str().unwrap();
        let body = &line["response"]["body"];
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_eq!(*body, echo_body(custom_id, body), "{line}");
    }
    let by_id = |id: &str| err.iter().find(|l| l["custom_id"] == id).unwrap().clone();
    let expected = [
        (
            "e400",
            400,
            upstream_error(
                "fake-upstream injected a 400",
                "invalid_request_error",
                Value::Null,
            ),
        ),
        (
            "e500",
            500,
            upstream_error("fake-upstream injected a 500", "server_error", Value::Null),
        ),
    ];
    for (custom_id, status, body) in expected {
        let line = by_id(custom_id);
        assert_eq!(line["response"]["status_code"], status, "{line}");
        assert_eq!(line["response"]["body"], body, "{line}");
    }
    // Not JSON: kept as a string, its line breaks escaped.
    let html = by_id("html");
    assert_eq!(html["response"]["status_code"], 502, "{html}");
    let page = html["response"]["body"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(
        page.starts_with("<html>\r\n") && page.contains("502 Bad Gateway"),
        "{html}"
    );
}

/// A batch of a quick line `a` and a 5-second one (which keeps it running), with `group`
/// stored as chunk 0's result group meanwhile, as an earlier version or a damaged row left it.
async fn running_batch_with_stored_group(app: &TestApp, group: &str) -> String {
    let lines = [
        chat_line("a", json!({})),
        chat_line("slow", json!({"fake": {"latency_ms": 5000}})),
    ];
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    sqlx::query("INSERT INTO batch_results (batch_id, chunk_idx, lines) VALUES ($1, 0, $2)")
        .bind(&id)
        .bind(group)
        .execute(&app.pool)
        .await
        .unwrap();
    let batch = app.batch(&id).await;
    assert!(
        ["validating", "in_progress"].contains(&batch["status"].as_str().unwrap()),
        "the batch ended before its stored group was in place: {batch}"
    );
    id
}

/// Results that an earlier version stored over several lines (a pretty-printed body copied as
/// it came), which wedged their batch in `finalizing`, are read whole: the batch completes with
/// one JSONL line per request.
#[tokio::test]
async fn results_stored_over_several_lines_by_an_earlier_version_still_finalize() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |_| {}).await;
    // Line 0 as it was stored before bodies were made one line (its run stores it again: the
    // first stored result of a line is the one kept, whichever it is).
    let old = "0\to\t{\"id\":\"batch_req_0\",\"custom_id\":\"a\",\"response\":{\"status_code\":200,\"request_id\":null,\"body\":{\n  \"object\": \"chat.completion\",\n  \"choices\": [\n    {\"index\": 0}\n  ]\n}},\"error\":null}\n";
    let id = running_batch_with_stored_group(&app, old).await;

    let batch = app.wait_for(&id, &["completed", "failed", "expired"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let out = jsonl_of(&app, &batch["output_file_id"]).await;
    let ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "slow"]);
    assert_eq!(out[0]["response"]["body"]["object"], "chat.completion");
}

/// A finalization that fails every time — here a stored result group that cannot be read, as a
/// bug or a damaged row would leave — is not retried forever: after `worker.max_job_failures`
/// failures, counted in the database, the batch ends `failed` with `finalization_failed`.
#[tokio::test]
async fn a_finalization_that_keeps_failing_ends_the_batch_as_failed() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| s.worker.max_job_failures = 3).await;
    let id = running_batch_with_stored_group(&app, "not a result entry\n").await;

    let batch = app.wait_for(&id, &["failed", "completed", "expired"]).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    let e = &batch["errors"]["data"][0];
    assert_eq!(e["code"], "finalization_failed", "{batch}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("failed 3 times in a row"),
        "{e}"
    );
    assert!(batch["failed_at"].is_i64(), "{batch}");
    assert_eq!(batch["output_file_id"], Value::Null);
    // What the lines came to is still told.
    assert_eq!(batch["request_counts"]["completed"], 2, "{batch}");
    let failures: i32 = sqlx::query_scalar("SELECT failed_attempts FROM batches WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(failures, 3, "tried exactly max_job_failures times");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM batch_results WHERE batch_id = $1)
              + (SELECT count(*) FROM batch_chunks WHERE batch_id = $1)",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "its work rows are gone");
}

/// Batches that no replica moves on (here no replica runs a worker; one is held by a lease a
/// wedged replica keeps renewing) are ended by the maintenance sweep once their completion
/// window and `batches.stuck_grace_secs` have passed: `expired`, or `cancelled` for one being
/// cancelled, with an error saying why, their counts kept and their work rows gone. A batch
/// within its window is left alone.
#[tokio::test]
async fn batches_stuck_past_their_window_and_grace_are_ended() {
    let app = spawn_app_with(|s| {
        s.batches.expiry_override_secs = Some(2);
        s.batches.stuck_grace_secs = 1;
    })
    .await;
    let mut stuck = Vec::new();
    for status in ["validating", "in_progress", "finalizing", "cancelling"] {
        stuck.push((app.batch_in_status(status).await, status));
    }
    let (wedged, _) = &stuck[2];
    // The batch: 20 lines, 18 completed and 2 failed, finalizing for ever under a lease.
    sqlx::query(
        "UPDATE batches SET lease_owner = 'a-wedged-replica',
                            lease_until = now() + interval '1 hour',
                            cancelling_at = CASE WHEN status = 'cancelling' THEN unix_now() END
         WHERE id = ANY($1)",
    )
    .bind(stuck.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batch_chunks (batch_id, idx, project_id, batch_seq, file_id, start_part,
                                   start_offset, end_part, end_offset, first_line, line_count,
                                   state, attempt, lease_owner, lease_until, completed, failed)
         SELECT id, 0, project_id, seq, 'f', 0, 0, 0, 0, 0, 20, 'done', 1, NULL, NULL, 18, 2
         FROM batches WHERE id = $1",
    )
    .bind(wedged)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO batch_results (batch_id, chunk_idx, lines) VALUES ($1, 0, $2)")
        .bind(wedged)
        .bind("0\to\t{\n  \"unreadable\": [\n")
        .execute(&app.pool)
        .await
        .unwrap();
    let within = app.batch_in_status("validating").await;
    sqlx::query("UPDATE batches SET expires_at = unix_now() + 86400 WHERE id = $1")
        .bind(&within)
        .execute(&app.pool)
        .await
        .unwrap();

    for (id, from) in &stuck {
        let batch = app
            .wait_for(id, &["expired", "cancelled", "failed", "completed"])
            .await;
        let to = if *from == "cancelling" {
            "cancelled"
        } else {
            "expired"
        };
        assert_eq!(batch["status"], to, "{from}: {batch}");
        assert!(batch[format!("{to}_at")].is_i64(), "{batch}");
        let e = &batch["errors"]["data"][0];
        assert_eq!(e["code"], "stuck_past_window", "{batch}");
        assert!(e["message"].as_str().unwrap().contains(from), "{from}: {e}");
    }
    let wedged = app.batch(wedged).await;
    assert_eq!(wedged["request_counts"]["completed"], 18, "{wedged}");
    assert_eq!(wedged["request_counts"]["failed"], 2, "{wedged}");
    let (lease, work): (Option<String>, i64) = sqlx::query_as(
        "SELECT lease_owner, (SELECT count(*) FROM batch_results WHERE batch_id = $1)
                           + (SELECT count(*) FROM batch_chunks WHERE batch_id = $1)
         FROM batches WHERE id = $1",
    )
    .bind(wedged["id"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((lease, work), (None, 0), "its lease and work rows are gone");

    // The sweep that ended the others saw it too: it is left alone.
    assert_eq!(app.batch(&within).await["status"], "validating");
}
