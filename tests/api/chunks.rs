//! Engine v2: chunks claimed under fencing tokens, result groups, one finalization per batch,
//! fair scheduling across projects, retention, and the upgrade from the line-per-row engine.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    batch_body, chat_line, engine_env, spawn_app, spawn_app_with, spawn_engine,
    start_replicas_with, stored_parts, to_jsonl, Expect, FakeUpstream, TestApp, TestDb,
};
use openbatch::config::StorageBackend;
use openbatch::domain::BatchId;
use openbatch::store::chunks::{self, Group, Held, NewChunk, Position};

/// A batch put straight into `in_progress` with one chunk of `n` lines, as validation leaves it.
pub async fn running_batch(app: &TestApp, n: usize) -> BatchId {
    let content = to_jsonl(
        &(0..n)
            .map(|i| chat_line(&format!("l{i}"), json!({})))
            .collect::<Vec<_>>(),
    );
    let len = content.len() as i32;
    let file: Value = app.upload("batch", "in.jsonl", content).expect(200).await;
    let file_id = file["id"].as_str().unwrap();
    let b: Value = app.create_batch(&batch_body(file_id)).expect(200).await;
    let id = BatchId::parse("id", b["id"].as_str().unwrap()).unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE batches SET status = 'in_progress', request_total = $2 WHERE id = $1")
        .bind(&id)
        .bind(n as i32)
        .execute(&mut *tx)
        .await
        .unwrap();
    let chunk = NewChunk {
        start: Position::default(),
        end: Position {
            part: 0,
            offset: len,
        },
        first_line: 0,
        line_count: n as i32,
    };
    chunks::insert(&mut tx, &id, file_id, &[chunk])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

fn group(batch: &BatchId, attempt: i32, lines: &[i32]) -> Group {
    let mut g = Group {
        batch_id: batch.as_str().to_owned(),
        idx: 0,
        attempt,
        completed: lines.len() as i32,
        ..Group::default()
    };
    for l in lines {
        openbatch::jsonl::group::encode(&mut g.lines, *l, true, "{}");
    }
    g
}

async fn result_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batch_results")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stale_claim_cannot_write_after_a_takeover() {
    let app = spawn_app().await; // no worker: this test plays both replicas
    let batch = running_batch(&app, 3).await;

    let a = chunks::claim(&app.pool, "replica-a", 30, &[])
        .await
        .unwrap()
        .expect("a pending chunk");
    assert_eq!(a.attempt, 1);
    assert!(chunks::claim(&app.pool, "replica-b", 30, &[])
        .await
        .unwrap()
        .is_none());
    // A writes one line, then stalls past its lease; the chunk is requeued and B takes it.
    let flushed = chunks::flush(&app.pool, &[group(&batch, a.attempt, &[0])])
        .await
        .unwrap();
    assert_eq!(flushed.len(), 1);
    assert!(!flushed[0].done);
    sqlx::query("UPDATE batch_chunks SET lease_until = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(chunks::requeue_lapsed(&app.pool).await.unwrap(), 1);
    let b = chunks::claim(&app.pool, "replica-b", 30, &[])
        .await
        .unwrap()
        .expect("the lapsed chunk");
    assert_eq!((b.idx, b.attempt), (a.idx, 2));
    // B sees what A stored before it stalled, and skips it.
    let stored: Vec<(i64, String)> =
        futures_util::TryStreamExt::try_collect(chunks::results(&app.pool, &batch, 0))
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.starts_with("0\t"));

    // A wakes up: it can neither renew nor write.
    let stale = Held {
        batch_id: batch.as_str().to_owned(),
        idx: 0,
        attempt: a.attempt,
    };
    assert!(chunks::renew(&app.pool, &[stale], 30)
        .await
        .unwrap()
        .is_empty());
    assert!(
        chunks::flush(&app.pool, &[group(&batch, a.attempt, &[1, 2])])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        result_rows(&app.pool).await,
        1,
        "the stale write left nothing"
    );

    // B finishes the chunk; the live count is exact throughout.
    let flushed = chunks::flush(&app.pool, &[group(&batch, b.attempt, &[1, 2])])
        .await
        .unwrap();
    assert!(flushed[0].done);
    let live = app.get_json(&format!("/v1/batches/{batch}")).await;
    assert_eq!(
        live["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    // Once done, even the current token cannot write again.
    assert!(chunks::flush(&app.pool, &[group(&batch, b.attempt, &[2])])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(result_rows(&app.pool).await, 2);
}

#[tokio::test]
async fn closing_a_batch_fences_out_the_replica_still_running_it() {
    let app = spawn_app().await;
    let batch = running_batch(&app, 2).await;
    let a = chunks::claim(&app.pool, "replica-a", 30, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunks::close_open(&app.pool, &batch).await.unwrap(), 1);
    assert!(chunks::flush(&app.pool, &[group(&batch, a.attempt, &[0])])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(result_rows(&app.pool).await, 0);
    assert_eq!(chunks::running(&app.pool, &batch).await.unwrap(), 0);
}

/// Small chunks, so that a few lines already make several.
const SMALL_CHUNKS: (&str, &str) = ("OPENBATCH__WORKER__CHUNK_LINES", "4");

#[tokio::test]
async fn three_replicas_finalize_each_batch_exactly_once_and_keep_nothing_per_line() {
    let upstream = FakeUpstream::start(&["--latency-ms", "5"]);
    let db = TestDb::new();
    let env = engine_env(&upstream, &[SMALL_CHUNKS]);
    let replicas = start_replicas_with(3, &db.url, &env).await;
    let apps = [
        TestApp::connect(&replicas[0].address, &db.url).await,
        TestApp::connect(&replicas[1].address, &db.url).await,
        TestApp::connect(&replicas[2].address, &db.url).await,
    ];
    let mut ids = Vec::new();
    for b in 0..12 {
        let lines: Vec<Value> = (0..10)
            .map(|i| chat_line(&format!("b{b}-{i}"), json!({})))
            .collect();
        ids.push(
            apps[b % 3]
                .submit("/v1/chat/completions", to_jsonl(&lines))
                .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let batch = apps[i % 3].wait_for(id, &["completed", "failed"]).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        let out = apps[0].lines_of(&batch["output_file_id"]).await;
        assert_eq!(out.len(), 10);
        let files: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM files WHERE filename LIKE $1 || '%' AND purpose = 'batch_output'",
        )
        .bind(id)
        .fetch_one(&apps[0].pool)
        .await
        .unwrap();
        assert_eq!(files, 1, "one finalization wrote one output file for {id}");
    }
    let (chunk_rows, result_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM batch_chunks), (SELECT count(*) FROM batch_results)",
    )
    .fetch_one(&apps[0].pool)
    .await
    .unwrap();
    assert_eq!(
        (chunk_rows, result_rows),
        (0, 0),
        "ended batches keep no work rows"
    );
}

fn as_project(app: &TestApp, key: &str) -> TestApp {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    TestApp {
        address: app.address.clone(),
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        pool: app.pool.clone(),
        _db: None,
    }
}

#[tokio::test]
async fn a_small_batch_of_another_project_runs_while_a_big_one_is_running() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.auth.enabled = true;
        s.auth.cache_secs = 0;
        s.worker.max_in_flight = 8;
    })
    .await;
    let a = as_project(&app, &crate::helpers::key_for(&app.pool, "big-a").await);
    let b = as_project(&app, &crate::helpers::key_for(&app.pool, "small-b").await);

    // A's lines take 300 ms each: 20,000 of them need many minutes at 8 in flight.
    let slow = json!({"fake": {"latency_ms": 300}});
    let big: Vec<Value> = (0..20_000)
        .map(|i| chat_line(&format!("a{i}"), slow.clone()))
        .collect();
    let big_id = a.submit("/v1/chat/completions", to_jsonl(&big)).await;
    a.wait_for_completed(&big_id, 16).await;

    let small: Vec<Value> = (0..10)
        .map(|i| chat_line(&format!("b{i}"), json!({})))
        .collect();
    let small_id = b.submit("/v1/chat/completions", to_jsonl(&small)).await;
    let done = b.wait_for(&small_id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let big_now = a.batch(&big_id).await;
    assert_eq!(big_now["status"], "in_progress");
    let big_done = big_now["request_counts"]["completed"].as_i64().unwrap();
    assert!(
        big_done < 2_000,
        "B finished while A had done only {big_done} of 20,000 lines"
    );
    a.post(&format!("/v1/batches/{big_id}/cancel"))
        .expect_response(200)
        .await;
    a.wait_for(&big_id, &["cancelled"]).await;
}

async fn chunk_count(pool: &PgPool, file_id: &str) -> i64 {
    stored_parts(pool, file_id).await
}

/// Waits (for the janitor) until the file is marked purged and its content gone (an object
/// goes a few rounds after its row, from the ledger of objects to delete).
async fn wait_purged(pool: &PgPool, file_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let purged: bool = sqlx::query_scalar("SELECT purged FROM files WHERE id = $1")
            .bind(file_id)
            .fetch_one(pool)
            .await
            .unwrap();
        if purged && chunk_count(pool, file_id).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{file_id}'s content was never purged"
        );
        // The janitor announces nothing: its work is polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expired_and_deleted_files_lose_their_bytes_but_never_under_a_running_batch() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| s.worker.max_in_flight = 2).await;

    // An expired file: the janitor frees it.
    let f: Value = app
        .upload("batch", "old.jsonl", to_jsonl(&[chat_line("x", json!({}))]))
        .expect(200)
        .await;
    let expired = f["id"].as_str().unwrap();
    assert_eq!(chunk_count(&app.pool, expired).await, 1);
    sqlx::query("UPDATE files SET expires_at = unix_now() - 1 WHERE id = $1")
        .bind(expired)
        .execute(&app.pool)
        .await
        .unwrap();
    wait_purged(&app.pool, expired).await;

    // A deleted file that nothing reads: freed at once.
    let f: Value = app
        .upload(
            "batch",
            "gone.jsonl",
            to_jsonl(&[chat_line("y", json!({}))]),
        )
        .expect(200)
        .await;
    let gone = f["id"].as_str().unwrap();
    app.delete(&format!("/v1/files/{gone}"))
        .expect_response(200)
        .await;
    assert_eq!(chunk_count(&app.pool, gone).await, 0);

    // The input of a running batch, deleted mid-run: the batch still completes, then the
    // content goes.
    let slow = json!({"fake": {"latency_ms": 100}});
    let lines: Vec<Value> = (0..40)
        .map(|i| chat_line(&format!("r{i}"), slow.clone()))
        .collect();
    let f: Value = app
        .upload("batch", "in.jsonl", to_jsonl(&lines))
        .expect(200)
        .await;
    let input = f["id"].as_str().unwrap();
    let b: Value = app.create_batch(&batch_body(input)).expect(200).await;
    let id = b["id"].as_str().unwrap();
    app.wait_for_completed(id, 2).await;
    app.delete(&format!("/v1/files/{input}"))
        .expect_response(200)
        .await;
    assert!(chunk_count(&app.pool, input).await > 0, "still being read");
    let batch = app.wait_for(id, &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(app.lines_of(&batch["output_file_id"]).await.len(), 40);
    wait_purged(&app.pool, input).await;
}

#[tokio::test]
async fn a_batch_running_on_the_old_engine_completes_after_the_upgrade() {
    const LINES: i32 = 600;
    const DONE_BEFORE: i32 = 250;
    let db = TestDb::new();
    crate::helpers::migrate_to(&db.url, 7).await; // the line-per-row engine
    let pool = PgPool::connect(&db.url).await.unwrap();
    // What v1 left mid-run: a batch in progress, its lines queued as rows, some done (with a
    // response the upstream would not give now), one running under a lease that will never be
    // renewed, the rest pending.
    sqlx::query(
        "INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status,
                              expires_at, params_hash, request_total, in_progress_at, model)
         VALUES ('batch_v1', 'proj_default', '/v1/chat/completions', 'file-gone', '24h',
                 'in_progress', unix_now() + 3600, 'h', $1, unix_now(), 'fake-model')",
    )
    .bind(LINES)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batch_requests (batch_id, line, custom_id, body, model, state, status_code,
                                     response, request_id, lease_owner, lease_until)
         SELECT 'batch_v1', i, 'v1-' || i,
                json_build_object('model', 'fake-model', 'messages',
                                  json_build_array(json_build_object('role', 'user',
                                                                     'content', 'hi ' || i)))::text,
                'fake-model',
                CASE WHEN i < $2 THEN 'done' WHEN i = $2 THEN 'running' ELSE 'pending' END,
                CASE WHEN i < $2 THEN 200 END,
                CASE WHEN i < $2 THEN jsonb_build_object('from', 'v1', 'usage',
                       jsonb_build_object('prompt_tokens', 2, 'completion_tokens', 3,
                                          'total_tokens', 5)) END,
                CASE WHEN i < $2 THEN 'req_v1' END,
                CASE WHEN i = $2 THEN 'old-replica' END,
                CASE WHEN i = $2 THEN now() + interval '1 hour' END
         FROM generate_series(0, $1 - 1) i",
    )
    .bind(LINES)
    .bind(DONE_BEFORE)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The new version rolls out: its migration converts the batch, its worker finishes it.
    let upstream = FakeUpstream::start(&[]);
    let env = engine_env(&upstream, &[SMALL_CHUNKS]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&replicas[0].address, &db.url).await;
    let batch = app.wait_for("batch_v1", &["completed", "failed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let err = app.lines_of(&batch["error_file_id"]).await;
    assert!(err.is_empty(), "{:?}", &err[..err.len().min(2)]);
    assert_eq!(
        batch["request_counts"],
        json!({"total": LINES, "completed": LINES, "failed": 0})
    );
    let out = app.lines_of(&batch["output_file_id"]).await;
    let ids: Vec<String> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..LINES).map(|i| format!("v1-{i}")).collect();
    assert_eq!(ids, expected, "every line once, in input order");
    for l in &out[..DONE_BEFORE as usize] {
        assert_eq!(l["response"]["body"]["from"], "v1", "kept, not re-run: {l}");
    }
    assert_eq!(
        upstream.executions().await as i32,
        LINES - DONE_BEFORE,
        "only the unfinished lines ran"
    );
    assert!(batch["usage"]["total_tokens"].as_i64().unwrap() >= i64::from(DONE_BEFORE) * 5);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_chunks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // The hidden input rebuilt from the queued rows is freed once the batch has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM file_chunks c JOIN files f ON f.id = c.file_id WHERE f.filename LIKE 'batch_v1_requeued%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if chunks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt input was never purged"
        );
        // The janitor announces nothing: its work is polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Size of the index of `file_chunks`' TOAST table, where purged content leaves empty pages.
async fn toast_index_bytes(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT pg_relation_size(i.indexrelid) FROM pg_class c
         JOIN pg_index i ON i.indrelid = c.reltoastrelid AND i.indisvalid
         WHERE c.relname = 'file_chunks' AND c.relnamespace = current_schema()::regnamespace",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_deleted_files_space_goes_back_to_the_file_system() {
    // The database's own space: content kept there whatever the test pass's backend.
    let app = spawn_app_with(|s| {
        s.database.reindex_slack_bytes = 32 * 1024;
        s.storage.backend = StorageBackend::Postgres;
    })
    .await;
    let empty = toast_index_bytes(&app.pool).await;
    // ~6 MiB in ~3,000 TOAST slices: an index of ~70 KiB, all of it empty once purged.
    let pad = "x".repeat(4000);
    let lines: Vec<Value> = (0..1500)
        .map(|i| chat_line(&format!("r{i}"), json!({ "pad": pad })))
        .collect();
    let f: Value = app
        .upload("batch", "big.jsonl", to_jsonl(&lines))
        .expect(200)
        .await;
    let id = f["id"].as_str().unwrap();
    let grown = toast_index_bytes(&app.pool).await;
    assert!(grown > empty + 32 * 1024, "{empty} -> {grown} bytes");
    app.delete(&format!("/v1/files/{id}"))
        .expect_response(200)
        .await;
    assert_eq!(chunk_count(&app.pool, id).await, 0);
    // The maintainer's next check (every 5 s) finds the index mostly empty and rebuilds it.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = toast_index_bytes(&app.pool).await;
        if now <= empty + 16 * 1024 {
            break;
        }
        if Instant::now() >= deadline {
            let live: (i64, i64) = sqlx::query_as(
                "SELECT n_live_tup, n_dead_tup FROM pg_stat_all_tables WHERE relid =
                 (SELECT reltoastrelid FROM pg_class WHERE relname = 'file_chunks'
                  AND relnamespace = current_schema()::regnamespace)",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            panic!(
                "the TOAST index kept {now} bytes (empty: {empty}, with the file: {grown}; \
                 live and dead slices: {live:?})"
            );
        }
        // The maintainer announces nothing: the index size is polled.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Content stored afterwards is still read back whole.
    let again: Value = app
        .upload("batch", "again.jsonl", to_jsonl(&lines[..10]))
        .expect(200)
        .await;
    let content = app.content_of(&again["id"]).await;
    assert_eq!(&content[..], &to_jsonl(&lines[..10])[..]);
}

/// All index bytes of a table, and how many indexes it has.
async fn index_bytes(pool: &PgPool, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT sum(pg_relation_size(i.indexrelid))::int8, count(*) FROM pg_class c
         JOIN pg_index i ON i.indrelid = c.oid AND i.indisvalid
         WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The work rows a batch leaves (its chunks, its usage events) go once it ends, and so does
/// the space their indexes took: the maintainer rebuilds them once they are mostly empty.
#[tokio::test]
async fn a_finished_batch_leaves_its_work_tables_indexes_empty() {
    const SLACK: i64 = 16 * 1024;
    const LINES: i64 = 3000;
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.database.reindex_slack_bytes = SLACK as u64;
        // A chunk a line: a row of `batch_chunks` each, and a usage event for nearly each.
        s.worker.chunk_lines = 1;
    })
    .await;
    let lines: Vec<Value> = (0..LINES)
        .map(|i| chat_line(&format!("r{i}"), json!({})))
        .collect();
    let id = app.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    app.wait_for_completed(&id, LINES / 2).await;
    // `usage_events` is folded (emptied) as the batch runs, so its indexes may be rebuilt
    // before it ends; the chunks stay until then.
    let grown: Vec<i64> = futures_util::future::join_all(
        ["batch_chunks", "usage_events"].map(|t| index_bytes(&app.pool, t)),
    )
    .await
    .into_iter()
    .map(|(bytes, _)| bytes)
    .collect();
    let (_, indexes) = index_bytes(&app.pool, "batch_chunks").await;
    assert!(
        grown[0] > indexes * 2 * 8192 + SLACK,
        "the batch did not grow batch_chunks' indexes: {} bytes",
        grown[0]
    );
    let done = app.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(done["request_counts"]["completed"], LINES, "{done}");
    for (table, grown) in ["batch_chunks", "usage_events"].into_iter().zip(grown) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (now, indexes) = index_bytes(&app.pool, table).await;
            // Each index's own two pages, and the slack the maintainer allows.
            if now <= indexes * 2 * 8192 + SLACK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{table}'s indexes kept {now} bytes of {grown} ({indexes} indexes)"
            );
            // The maintainer announces nothing: the size is polled.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_rebuild_drops_an_invalid_index_an_interrupted_one_left_behind() {
    let app = spawn_app_with(|s| {
        s.database.reindex_slack_bytes = 0;
        s.storage.backend = StorageBackend::Postgres;
    })
    .await;
    // Two parts of one file: a unique index on `file_id` fails part-way through its concurrent
    // build, leaving an invalid index behind, as an interrupted REINDEX CONCURRENTLY leaves its
    // `_ccnew` copy.
    let pad = "x".repeat(4000);
    let lines: Vec<Value> = (0..400)
        .map(|i| chat_line(&format!("r{i}"), json!({ "pad": pad })))
        .collect();
    app.upload("batch", "two-parts.jsonl", to_jsonl(&lines))
        .expect(200)
        .await;
    let failed = sqlx::raw_sql(
        "CREATE UNIQUE INDEX CONCURRENTLY file_chunks_ccnew ON file_chunks (file_id)",
    )
    .execute(&app.pool)
    .await;
    assert!(failed.is_err(), "two parts of one file share a file_id");
    let invalid = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             WHERE c.relname = 'file_chunks' AND NOT i.indisvalid",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(invalid().await, 1);
    let bytes = openbatch::store::compact::reindex(&app.pool, "file_chunks")
        .await
        .unwrap();
    assert_eq!(invalid().await, 0, "the leftover is dropped");
    assert!(bytes > 0, "the TOAST index is rebuilt, not gone");
}

/// Fair shares are by tokens in flight, not chunks: while a project's chunk of four times the
/// tokens runs, the other's chunks are claimed until it has as many tokens in flight.
#[tokio::test]
async fn projects_share_the_replicas_by_tokens_not_by_chunks() {
    let app = spawn_app().await;
    let mut batches = Vec::new();
    for (project, est_tokens) in [("proj_long", 3200_i64), ("proj_short", 800)] {
        sqlx::query("INSERT INTO projects (id, name) VALUES ($1, $1)")
            .bind(project)
            .execute(&app.pool)
            .await
            .unwrap();
        // One chunk from the helper, seven more of the same lines: 8 chunks of 10 lines.
        let id = running_batch(&app, 10).await;
        let file_id: String = sqlx::query_scalar("SELECT input_file_id FROM batches WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let mut tx = app.pool.begin().await.unwrap();
        let chunk = sqlx::query_as::<_, (i32, i32)>(
            "SELECT end_part, end_offset FROM batch_chunks WHERE batch_id = $1",
        )
        .bind(&id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let more: Vec<NewChunk> = (0..7)
            .map(|_| NewChunk {
                start: Position::default(),
                end: Position {
                    part: chunk.0,
                    offset: chunk.1,
                },
                first_line: 0,
                line_count: 10,
            })
            .collect();
        sqlx::query("DELETE FROM batch_chunks WHERE batch_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut all = more.clone();
        all.push(more[0].clone());
        chunks::insert(&mut tx, &id, &file_id, &all).await.unwrap();
        sqlx::query(
            "UPDATE batches SET project_id = $2, est_tokens = $3, request_total = 80 WHERE id = $1",
        )
        .bind(&id)
        .bind(project)
        .bind(est_tokens)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query("UPDATE batch_chunks SET project_id = $2 WHERE batch_id = $1")
            .bind(&id)
            .bind(project)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        batches.push(id);
    }
    let mut order = String::new();
    for _ in 0..10 {
        let c = chunks::claim(&app.pool, "test", 60, &[])
            .await
            .unwrap()
            .unwrap();
        order.push(if c.project_id.as_str() == "proj_long" {
            'L'
        } else {
            's'
        });
    }
    // Nothing finishes here: 400 tokens a chunk against 100, one long chunk, then four short
    // ones to match it, and again.
    assert_eq!(order, "LssssLssss");
}
