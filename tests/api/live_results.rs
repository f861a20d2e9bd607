//! `GET /v1/batches/{id}/results` and `GET /v1/batches/{id}/events` through a real replica and
//! the fake upstream: results read while the batch runs, resumed from cursors, and served from
//! the files once it has ended; progress pushed as Server-Sent Events until the final status.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::helpers::{
    chat_line, engine_env, expect_error, start_replicas_with, to_jsonl, FakeUpstream, TestApp,
    TestDb,
};

const LINES: usize = 40;
/// Lines `r0..r29` answer at once, `r30..r32` with a final 400, `r33..r39` hang until the
/// upstream timeout and succeed when retried: the batch stays running for a while with most
/// of its lines done, whatever the machine's load.
fn input() -> Vec<u8> {
    let lines: Vec<Value> = (0..LINES)
        .map(|i| {
            let id = format!("r{i}");
            match i {
                0..=29 => chat_line(&id, json!({})),
                30..=32 => chat_line(&id, json!({"fake": {"fail": [400]}})),
                _ => chat_line(&id, json!({"fake": {"fail": ["hang"]}})),
            }
        })
        .collect();
    to_jsonl(&lines)
}

/// One replica running [`input`]: the quick lines and the 400s are done, the hanging ones
/// are not. Fields drop in order: the replica stops before its database is dropped.
struct Running {
    app: TestApp,
    id: String,
    _replicas: Vec<crate::helpers::Replica>,
    _db: TestDb,
    _upstream: FakeUpstream,
}

impl Running {
    async fn start() -> Self {
        let upstream = FakeUpstream::start(&[]);
        let db = TestDb::new();
        let mut env = engine_env(&upstream, &[]);
        env.extend([
            ("OPENBATCH__UPSTREAM__TIMEOUT_SECS", "12"),
            ("OPENBATCH__WORKER__RETRY_BASE_MS", "50"),
            ("OPENBATCH__WORKER__CHUNK_LINES", "8"),
        ]);
        let replicas = start_replicas_with(1, &db.url, &env).await;
        let app = TestApp::connect(&replicas[0].address, &db.url).await;
        let id = app.submit("/v1/chat/completions", input()).await;
        app.wait_for_progress(&id, |b| {
            let c = &b["request_counts"];
            c["completed"].as_i64().unwrap_or(0) + c["failed"].as_i64().unwrap_or(0) >= 33
        })
        .await;
        Running {
            app,
            id,
            _replicas: replicas,
            _db: db,
            _upstream: upstream,
        }
    }
}

/// The records of one call, and the headers that matter.
#[derive(Debug)]
struct Page {
    status: String,
    complete: bool,
    records: Vec<Value>,
}

/// One call; `Err` with the status and error object when the server refuses it (400 for a
/// cursor, 409 for results that can no longer be served).
async fn try_results(app: &TestApp, id: &str, after: Option<&str>) -> Result<Page, (u16, Value)> {
    let mut req = app.get(&format!("/v1/batches/{id}/results"));
    if let Some(after) = after {
        req = req.query(&[("after", after)]);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    if status != 200 {
        assert!(status == 400 || status == 409, "{status}");
        return Err((status, expect_error(res, status).await));
    }
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let status = res.headers()["openbatch-batch-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let complete = res.headers()["openbatch-results-complete"] == "true";
    let text = res.text().await.unwrap();
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Ok(Page {
        status,
        complete,
        records,
    })
}

async fn results(app: &TestApp, id: &str, after: Option<&str>) -> Page {
    try_results(app, id, after)
        .await
        .unwrap_or_else(|e| panic!("results refused: {e:?}"))
}

/// A record without the three members the endpoint adds: the file line itself.
fn file_line(record: &Value) -> Value {
    let mut o = record.as_object().unwrap().clone();
    for k in ["line", "cursor", "file"] {
        assert!(o.remove(k).is_some(), "record without {k}: {record}");
    }
    Value::Object(o)
}

fn check_record(r: &Value) {
    let line = r["line"].as_u64().unwrap();
    assert_eq!(
        r["custom_id"],
        format!("r{}", line - 1),
        "line numbers: {r}"
    );
    let ok = r["response"]["status_code"] == 200;
    assert_eq!(r["file"], if ok { "output" } else { "error" }, "{r}");
    assert!(r["cursor"].as_str().is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn results_are_read_while_the_batch_runs_and_resumed_across_its_end() {
    let run = Running::start().await;
    let (app, id) = (&run.app, &run.id);
    let first = results(app, id, None).await;
    assert_eq!(first.status, "in_progress");
    assert!(!first.complete);
    let lines: Vec<u64> = first
        .records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lines.iter().copied().collect::<HashSet<_>>(),
        (1..=33).collect::<HashSet<u64>>(),
        "the finished lines, each once: {lines:?}"
    );
    assert_eq!(lines.len(), 33);
    first.records.iter().for_each(check_record);
    assert_eq!(
        first
            .records
            .iter()
            .filter(|r| r["file"] == "error")
            .count(),
        3
    );

    // Resuming from any record's cursor gives exactly the records after it.
    let cut = &first.records[10]["cursor"];
    let rest = results(app, id, cut.as_str()).await;
    let mut seen: Vec<Value> = first.records[..11].to_vec();
    seen.extend(rest.records.iter().cloned());
    let mut live_cursor = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();

    // Keep reading from the last cursor until the stream says it is complete, across the
    // batch's end wherever it falls: each line exactly once.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let page = results(app, id, Some(&live_cursor)).await;
        if let Some(last) = page.records.last() {
            live_cursor = last["cursor"].as_str().unwrap().to_owned();
        }
        seen.extend(page.records);
        if page.complete {
            assert_eq!(page.status, "completed");
            break;
        }
        assert!(Instant::now() < deadline, "batch stuck");
        // Part of the test: a reader following the batch live, at its own pace.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = app.batch(id).await;
    let mut by_line = BTreeMap::new();
    for r in &seen {
        check_record(r);
        assert!(
            by_line
                .insert(r["line"].as_u64().unwrap(), r.clone())
                .is_none(),
            "line {} served twice",
            r["line"]
        );
    }
    assert_eq!(
        by_line.keys().copied().collect::<Vec<_>>(),
        (1..=LINES as u64).collect::<Vec<_>>(),
        "every line, none lost"
    );
    let end = results(app, id, Some(&live_cursor)).await;
    assert!(end.complete && end.records.is_empty(), "{end:?}");

    // From the start: every line, in input order, each exactly as its file holds it, and the
    // records served while it ran were those same file lines.
    let all = results(app, id, None).await;
    assert!(all.complete);
    assert_eq!(all.status, "completed");
    let numbers: Vec<u64> = all
        .records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=LINES as u64).collect::<Vec<_>>());
    all.records.iter().for_each(check_record);
    let output = app.lines_of(&ended["output_file_id"]).await;
    let errors = app.lines_of(&ended["error_file_id"]).await;
    assert_eq!((output.len(), errors.len()), (37, 3));
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    for l in output.iter().chain(errors.iter()) {
        files.insert(l["custom_id"].as_str().unwrap().to_owned(), l.clone());
    }
    for r in &all.records {
        assert_eq!(file_line(r), files[r["custom_id"].as_str().unwrap()]);
    }
    for (line, r) in &by_line {
        assert_eq!(file_line(r), file_line(&all.records[*line as usize - 1]));
    }

    // Resuming the file-backed stream: the rest, with no gap and no repeat.
    let tail = results(app, id, all.records[24]["cursor"].as_str()).await;
    assert!(tail.complete);
    let tail_lines: Vec<u64> = tail
        .records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(tail_lines, (26..=LINES as u64).collect::<Vec<_>>());
    let end = results(app, id, all.records.last().unwrap()["cursor"].as_str()).await;
    assert!(end.complete && end.records.is_empty());
    drop(run);
}

fn lines_of(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect()
}

fn cursor_of(record: &Value) -> String {
    record["cursor"].as_str().unwrap().to_owned()
}

/// A cursor of `id` the server never issued in this state, built as it builds them.
fn forged(id: &str, cursor: openbatch::domain::ResultsCursor) -> String {
    cursor.encode(&openbatch::domain::BatchId::parse("batch_id", id).unwrap())
}

async fn live_orders(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batch_live_order WHERE batch_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The lines of `1..=total` not in `read`, in input order.
fn unread(total: u64, read: &[Value]) -> Vec<u64> {
    let read: HashSet<u64> = lines_of(read).into_iter().collect();
    (1..=total).filter(|l| !read.contains(l)).collect()
}

#[tokio::test]
async fn a_live_cursor_gets_exactly_the_unread_lines_once_the_batch_has_ended() {
    let run = Running::start().await;
    let (app, id) = (&run.app, &run.id);
    let live = results(app, id, None).await;
    assert!(!live.complete);
    assert!(live.records.len() > 11, "{live:?}");
    app.wait_for(id, &["completed"]).await;
    assert_eq!(live_orders(app, id).await, 1, "the served order is kept");

    // Part of the live stream read: the rest, in input order, with the lines the files wrote
    // after it.
    let cut = &live.records[..11];
    let rest = results(app, id, Some(&cursor_of(&cut[10]))).await;
    assert!(rest.complete);
    assert_eq!(rest.status, "completed");
    assert_eq!(lines_of(&rest.records), unread(LINES as u64, cut));
    rest.records.iter().for_each(check_record);

    // Resuming mid-way through those pages: exactly what follows.
    for k in [0, rest.records.len() / 2, rest.records.len() - 1] {
        let tail = results(app, id, Some(&cursor_of(&rest.records[k]))).await;
        assert!(tail.complete);
        assert_eq!(lines_of(&tail.records), lines_of(&rest.records[k + 1..]));
        for (a, b) in tail.records.iter().zip(&rest.records[k + 1..]) {
            assert_eq!(a, b, "the same record and cursor on every reading");
        }
    }

    // All of the live stream read: only the lines finished after it.
    let rest = results(app, id, Some(&cursor_of(live.records.last().unwrap()))).await;
    assert!(rest.complete);
    assert_eq!(lines_of(&rest.records), unread(LINES as u64, &live.records));

    // A batch that ended without its served order kept (by an earlier version): its live
    // cursors are refused, never half-honoured; a cursor from the files still works.
    let from_files = results(app, id, None).await;
    sqlx::query("DELETE FROM batch_live_order WHERE batch_id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    for cursor in [cursor_of(&cut[10]), cursor_of(&rest.records[0])] {
        let (status, err) = try_results(app, id, Some(&cursor)).await.unwrap_err();
        assert_eq!(
            (status, &err["code"]),
            (400, &json!("cursor_expired")),
            "{err}"
        );
        assert_eq!(err["param"], "after");
    }
    let tail = results(app, id, Some(&cursor_of(&from_files.records[29]))).await;
    assert_eq!(
        lines_of(&tail.records),
        (31..=LINES as u64).collect::<Vec<_>>()
    );
    drop(run);
}

#[tokio::test]
async fn a_live_cursor_gets_the_unread_and_the_cancelled_lines_after_a_cancel() {
    const QUICK: usize = 30;
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let mut env = engine_env(&upstream, &[]);
    env.extend([
        // The hanging lines stay in flight until the cancel gives them up.
        ("OPENBATCH__UPSTREAM__TIMEOUT_SECS", "600"),
        ("OPENBATCH__WORKER__CANCEL_GRACE_SECS", "1"),
        ("OPENBATCH__WORKER__CHUNK_LINES", "8"),
    ]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let lines: Vec<Value> = (0..LINES)
        .map(|i| {
            let fake = if i < QUICK {
                json!({})
            } else {
                json!({"fake": {"fail": ["hang"]}})
            };
            chat_line(&format!("r{i}"), fake)
        })
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for_progress(&id, |b| {
        b["request_counts"]["completed"].as_i64().unwrap_or(0) >= QUICK as i64
    })
    .await;
    let live = results(&app, &id, None).await;
    assert_eq!(live.records.len(), QUICK, "{live:?}");

    // A cursor of the files is refused while the batch runs.
    for cursor in [
        openbatch::domain::ResultsCursor::Resumed { seen: 3, next: 4 },
        openbatch::domain::ResultsCursor::Final { next: 4 },
    ] {
        let (status, err) = try_results(&app, &id, Some(&forged(&id, cursor)))
            .await
            .unwrap_err();
        assert_eq!(
            (status, &err["code"]),
            (400, &json!("invalid_cursor")),
            "{err}"
        );
    }

    let res = app
        .post(&format!("/v1/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.wait_for(&id, &["cancelled"]).await;

    let cut = &live.records[..20];
    let rest = results(&app, &id, Some(&cursor_of(&cut[19]))).await;
    assert!(rest.complete);
    assert_eq!(rest.status, "cancelled");
    assert_eq!(lines_of(&rest.records), unread(LINES as u64, cut));
    for r in &rest.records {
        check_record(r);
        if r["line"].as_u64().unwrap() > QUICK as u64 {
            assert_eq!(r["error"]["code"], "batch_cancelled", "{r}");
        }
    }
    let mid = results(&app, &id, Some(&cursor_of(&rest.records[12]))).await;
    assert_eq!(lines_of(&mid.records), lines_of(&rest.records[13..]));
    drop(replicas);
}

#[tokio::test]
async fn results_refuse_unknown_batches_and_bad_cursors() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let replicas = start_replicas_with(1, &db.url, &engine_env(&upstream, &[])).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let lines: Vec<Value> = (0..3)
        .map(|i| chat_line(&format!("r{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let other = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for(&id, &["completed"]).await;
    app.wait_for(&other, &["completed"]).await;

    for path in [
        "/v1/batches/batch_nope/results",
        "/v1/batches/batch_nope/events",
    ] {
        let err = expect_error(app.get(path).send().await.unwrap(), 404).await;
        assert_eq!(err["code"], "batch_not_found");
    }
    let page = results(&app, &other, None).await;
    let foreign = page.records[0]["cursor"].as_str().unwrap().to_owned();
    for bad in ["nonsense", "l1_2_00000000", foreign.as_str()] {
        let err = expect_error(
            app.get(&format!("/v1/batches/{id}/results"))
                .query(&[("after", bad)])
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert_eq!(err["code"], "invalid_cursor", "{bad}: {err}");
        assert_eq!(err["param"], "after");
    }

    // A result file deleted by its owner: said so, not served short, whatever the cursor;
    // the order its lines were served in goes with it.
    assert_eq!(live_orders(&app, &id).await, 1);
    let b = app.batch(&id).await;
    let out = b["output_file_id"].as_str().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/v1/files/{out}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let live_cursor = forged(
        &id,
        openbatch::domain::ResultsCursor::Live { seq: 1, taken: 1 },
    );
    for after in [None, Some(live_cursor.as_str())] {
        let (status, err) = try_results(&app, &id, after).await.unwrap_err();
        assert_eq!(
            (status, &err["code"]),
            (409, &json!("results_unavailable")),
            "{err}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while live_orders(&app, &id).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the live order outlived its files"
        );
        // Pruning announces nothing: the orders are polled.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads Server-Sent Events until the stream ends; returns the batch objects they carried.
/// `opened` is notified once the stream has answered.
async fn read_events(app: &TestApp, id: &str, opened: &Notify) -> Vec<Value> {
    let res = app
        .get(&format!("/v1/batches/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    opened.notify_one();
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            Ok(None) => break,
            Err(_) => panic!("the event stream did not end: {text}"),
        }
    }
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        if block.starts_with(':') {
            continue; // keep-alive comment
        }
        let mut lines = block.lines();
        assert_eq!(lines.next(), Some("event: batch"), "{block}");
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        events.push(serde_json::from_str(data).unwrap());
    }
    events
}

#[tokio::test]
async fn events_push_progress_and_end_after_the_final_status() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let mut env = engine_env(&upstream, &[]);
    env.extend([
        ("OPENBATCH__UPSTREAM__TIMEOUT_SECS", "6"),
        ("OPENBATCH__WORKER__RETRY_BASE_MS", "50"),
        ("OPENBATCH__LIMITS__MAX_EVENT_STREAMS", "1"),
    ]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let id = app.submit("/v1/chat/completions", input()).await;

    let opened = Notify::new();
    let (events, refused) = tokio::join!(read_events(&app, &id, &opened), async {
        // The one stream this replica allows is open (the batch runs for seconds yet): a
        // second is refused.
        app.wait_for(&id, &["in_progress"]).await;
        opened.notified().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let res = app
                .get(&format!("/v1/batches/{id}/events"))
                .send()
                .await
                .unwrap();
            if res.status() == 429 {
                return expect_error(res, 429).await;
            }
            // The first stream answered, so its slot is taken; this retry is only a guard.
            drop(res);
            assert!(Instant::now() < deadline, "no 429 for a second stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(refused["code"], "too_many_event_streams");

    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed", "ends after the final status");
    assert_eq!(last["request_counts"]["completed"], 37);
    assert_eq!(last["request_counts"]["failed"], 3);
    assert!(events.iter().all(|e| e["id"] == id.as_str()));
    // Progress while it ran: a running batch with some lines done and some not.
    assert!(
        events.iter().any(|e| {
            let done = e["request_counts"]["completed"].as_i64().unwrap()
                + e["request_counts"]["failed"].as_i64().unwrap();
            e["status"] == "in_progress" && done > 0 && done < LINES as i64
        }),
        "no progress event: {events:?}"
    );
    let done: Vec<i64> = events
        .iter()
        .map(|e| {
            e["request_counts"]["completed"].as_i64().unwrap()
                + e["request_counts"]["failed"].as_i64().unwrap()
        })
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    for pair in events.windows(2) {
        assert_ne!(pair[0], pair[1], "an event repeats the previous one");
    }

    // The slot is given back when a stream ends: an ended batch's stream is its final state.
    let again = read_events(&app, &id, &Notify::new()).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["status"], "completed");
}

/// Reads a results stream to its end without keeping it; returns (records, last cursor).
async fn drain(
    app: &TestApp,
    id: &str,
    after: Option<&str>,
) -> Result<(usize, Option<String>), Value> {
    let mut req = app.get(&format!("/v1/batches/{id}/results"));
    if let Some(after) = after {
        req = req.query(&[("after", after)]);
    }
    let res = req.send().await.unwrap();
    if res.status() != 200 {
        return Err(expect_error(res, 400).await);
    }
    let mut body = res.bytes_stream();
    let (mut n, mut pending, mut last) = (0, Vec::new(), None);
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.unwrap());
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let record: Value = serde_json::from_slice(&pending[..end]).unwrap();
            last = Some(record["cursor"].as_str().unwrap().to_owned());
            n += 1;
            pending.drain(..=end);
        }
    }
    Ok((n, last))
}

#[tokio::test]
async fn reading_100_mb_of_results_keeps_a_replica_small() {
    const LINES: usize = 2_000;
    const PAD: usize = 50_000;
    // Well under the 100 MB served: a reader that held them could not pass.
    const LIMIT_MIB: u64 = 90;
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    // One replica runs the batch; the results are read through another, API-only one, whose
    // memory is then what serving them cost (idle: ~25 MiB).
    let _worker = start_replicas_with(1, &db.url, &engine_env(&upstream, &[])).await;
    let reader = start_replicas_with(1, &db.url, &[("OPENBATCH__WORKER__ENABLED", "false")]).await;
    let app = TestApp::connect(&reader[0].address, &db.url).await;
    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("m{i}"), json!({"fake": {"pad_bytes": PAD}})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;

    // Follow it live and across its end, then read the whole of it from the files.
    let mut cursor: Option<String> = None;
    let (mut live, mut followed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running = app.batch(&id).await["status"] != "completed";
        let (n, last) = drain(&app, &id, cursor.as_deref()).await.unwrap();
        followed += n;
        if running {
            live += n;
        }
        cursor = last.or(cursor);
        if !running {
            break;
        }
        assert!(Instant::now() < deadline, "batch stuck");
        // Part of the test: a reader following the batch live, at its own pace.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(live > 0, "nothing read while it ran");
    assert_eq!(followed, LINES, "each line once, following it");
    let (all, _) = drain(&app, &id, None).await.unwrap();
    assert_eq!(all, LINES);

    let peak_mib = reader[0].peak_rss_mib();
    eprintln!("reader peak RSS {peak_mib} MiB; {live} records read live, {all} from the files");
    assert!(
        peak_mib < LIMIT_MIB,
        "peak RSS {peak_mib} MiB serving {} MB of results (limit {LIMIT_MIB} MiB)",
        LINES * PAD / 1_000_000
    );
}

/// A status change reaches an open stream when it is announced, not at the next poll: with a
/// poll of an hour, only the NOTIFY can carry the cancel to the client within the test's wait.
#[tokio::test]
async fn events_carry_a_status_change_without_waiting_for_the_poll() {
    let app = crate::helpers::spawn_app_with(|s| s.limits.event_poll_ms = 3_600_000).await;
    // No worker here: the batch stays `validating` until it is cancelled.
    let id = app.submit("/v1/chat/completions", input()).await;
    let res = app
        .get(&format!("/v1/batches/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut next_event = async || loop {
        if let Some((event, rest)) = text.split_once("\n\n") {
            let event = event.to_owned();
            text = rest.to_owned();
            if let Some(data) = event.strip_prefix("event: batch\ndata: ") {
                return serde_json::from_str::<Value>(data).unwrap();
            }
            continue; // a keep-alive comment
        }
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("an event within a minute: the change was not announced")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    };
    assert_eq!(next_event().await["status"], "validating");
    app.post(&format!("/v1/batches/{id}/cancel"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    assert_eq!(next_event().await["status"], "cancelling");
}
