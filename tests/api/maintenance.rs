//! Each maintenance chore run once, by the test, on an app whose maintainer never leads (the
//! test holds its lock). The chores' effect through the running maintainer is tested where
//! the behaviour lives: purging and reindexing in `chunks`, live orders in `live_results`,
//! stuck batches in `wedge`, the webhook log in `webhooks`; compaction (its rebuild runs in
//! the background, one at a time) only there.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};

use crate::chunks::running_batch;
use crate::helpers::{chat_line, settings_for, to_jsonl, Expect, TestApp, TestDb};
use openbatch::maintenance::{self, leases, live_orders, purge, statistics, stuck, webhook_log};
use openbatch::startup::Application;
use openbatch::store::chunks;

/// An app (no worker) and the connection that holds the maintainer's lock while it lives.
async fn app_without_maintainer() -> (TestApp, PgConnection) {
    let db = TestDb::new();
    let settings = settings_for(&db.url);
    let pool = openbatch::store::connect(&settings.database).await.unwrap();
    openbatch::store::migrate(&pool).await.unwrap();
    let mut lock = PgConnection::connect(&db.url).await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(maintenance::MAINTAINER_LOCK)
        .fetch_one(&mut lock)
        .await
        .unwrap();
    assert!(locked);
    let app = Application::build_with_pool(&settings, pool).unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        pool: PgPool::connect(&db.url).await.unwrap(),
        _db: Some(db),
    };
    (app, lock)
}

#[tokio::test]
async fn lapsed_claims_are_requeued() {
    let (app, _lock) = app_without_maintainer().await;
    running_batch(&app, 2).await;
    let a = chunks::claim(&app.pool, "replica-a", 30, &[])
        .await
        .unwrap()
        .expect("a pending chunk");
    assert_eq!(leases::run(&app.pool).await, 0, "the claim is alive");
    sqlx::query("UPDATE batch_chunks SET lease_until = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(leases::run(&app.pool).await, 1);
    let b = chunks::claim(&app.pool, "replica-b", 30, &[])
        .await
        .unwrap()
        .expect("the requeued chunk");
    assert_eq!((b.idx, b.attempt), (a.idx, a.attempt + 1));
}

#[tokio::test]
async fn expired_files_lose_their_content() {
    let (app, _lock) = app_without_maintainer().await;
    let f: Value = app
        .upload("batch", "old.jsonl", to_jsonl(&[chat_line("x", json!({}))]))
        .expect(200)
        .await;
    let id = f["id"].as_str().unwrap();
    assert_eq!(purge::run(&app.pool).await, 0, "nothing has expired");
    sqlx::query("UPDATE files SET expires_at = unix_now() - 1 WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(purge::run(&app.pool).await, 1);
    let purged: bool = sqlx::query_scalar("SELECT purged FROM files WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(purged);
    assert_eq!(purge::run(&app.pool).await, 0);
}

#[tokio::test]
async fn batches_past_their_window_and_grace_are_ended() {
    let (app, _lock) = app_without_maintainer().await;
    let id = running_batch(&app, 1).await;
    assert_eq!(stuck::run(&app.pool, 0).await, 0, "within its window");
    sqlx::query("UPDATE batches SET expires_at = unix_now() - 100 WHERE id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(stuck::run(&app.pool, 3600).await, 0, "within its grace");
    assert_eq!(stuck::run(&app.pool, 10).await, 1);
    let b = app.get_json(&format!("/v1/batches/{id}")).await;
    assert_eq!(b["status"], "expired");
    assert_eq!(b["errors"]["data"][0]["code"], "stuck_past_window");
}

#[tokio::test]
async fn a_table_that_outgrew_its_statistics_is_analyzed() {
    let (app, _lock) = app_without_maintainer().await;
    sqlx::query(
        "INSERT INTO api_keys (prefix, project_id, key_hash)
         SELECT 'obk_' || i, 'proj_default', '\\x00' FROM generate_series(1, 3000) i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Row counts reach the statistics a moment after the commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if statistics::run(&app.pool).await.contains(&"api_keys") {
            break;
        }
        assert!(Instant::now() < deadline, "api_keys was never analyzed");
        // The statistics announce nothing: polled.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!statistics::run(&app.pool).await.contains(&"api_keys"));
}

#[tokio::test]
async fn the_orders_of_results_gone_are_pruned() {
    let (app, _lock) = app_without_maintainer().await;
    let running = running_batch(&app, 1).await;
    sqlx::query(
        "INSERT INTO batch_live_order (batch_id, group_seqs, group_starts, ranks)
         VALUES ($1, '{}', '{}', ''), ('batch_gone', '{}', '{}', '')",
    )
    .bind(&running)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(live_orders::run(&app.pool).await, 1);
    let kept: Vec<String> = sqlx::query_scalar("SELECT batch_id FROM batch_live_order")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, [running.as_str()]);
}

#[tokio::test]
async fn finished_deliveries_leave_the_log_after_their_retention() {
    let (app, _lock) = app_without_maintainer().await;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, project_id, url, events, secret)
         VALUES ('we_1', 'proj_default', 'https://example.com/', '{}', 's')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries
             (endpoint_id, event_id, event_type, batch_id, payload, state, finished_at)
         VALUES ('we_1', 'old', 'batch.completed', 'b', '{}', 'delivered', now() - interval '2 minutes'),
                ('we_1', 'new', 'batch.completed', 'b', '{}', 'failed', now()),
                ('we_1', 'due', 'batch.completed', 'b', '{}', 'pending', now() - interval '2 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(webhook_log::run(&app.pool, 60).await, 1);
    let mut kept: Vec<String> = sqlx::query_scalar("SELECT event_id FROM webhook_deliveries")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    kept.sort();
    assert_eq!(kept, ["due", "new"]);
}

#[tokio::test]
async fn usage_events_fold_into_minutes_hours_and_days_and_old_minutes_go() {
    let (app, _lock) = app_without_maintainer().await;
    let now: i64 = sqlx::query_scalar("SELECT unix_now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let old = now - maintenance::usage::MINUTE_RETENTION_SECS - 7200;
    let old_hour = old - old % 3600;
    // Two events of one minute and key, one of another key; two old minutes of one hour.
    for (at, key, tokens) in [
        (now, Some("key_a"), 5),
        (now, Some("key_a"), 7),
        (now, None, 11),
        (old_hour + 60, None, 100),
        (old_hour + 120, None, 100),
    ] {
        sqlx::query(
            "INSERT INTO usage_events (at, project_id, endpoint, model, api_key_id, requests,
                                       input_tokens, cached_tokens, output_tokens)
             VALUES ($1, 'proj_default', '/v1/chat/completions', 'm', $2, 1, $3, 0, 1)",
        )
        .bind(at)
        .bind(key)
        .bind(tokens)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    // Three hours from `start`, or (`start` negative) from `-start` to now.
    let report = |start: i64, width: &str| {
        let range = match start {
            s if s < 0 => format!("start_time={}", -s),
            s => format!("start_time={s}&end_time={}", s + 3 * 3600),
        };
        let path = format!(
            "/v1/organization/usage/completions?{range}&bucket_width={width}&limit=168&group_by=api_key_id"
        );
        let app = &app;
        async move {
            let page: Value = app.get_json(&path).await;
            // Per key over the whole report, whatever buckets it falls in.
            let mut sums = std::collections::BTreeMap::<String, (Value, i64, i64)>::new();
            for r in (page["data"].as_array().unwrap().iter())
                .flat_map(|b| b["results"].as_array().unwrap().clone())
            {
                let sum = (sums.entry(r["api_key_id"].to_string())).or_insert((
                    r["api_key_id"].clone(),
                    0,
                    0,
                ));
                sum.1 += r["input_tokens"].as_i64().unwrap();
                sum.2 += r["num_model_requests"].as_i64().unwrap();
            }
            sums.into_values().collect::<Vec<_>>()
        }
    };
    let recent = now - now % 3600 - 3600;
    let mut before = Vec::new();
    // Each width from each start: a mid-hour start makes ragged edges read from minutes.
    let today = now - now % 86400;
    let starts = [
        recent,
        old_hour,
        now - 90,
        old_hour + 30,
        -today,
        -(now - 90),
        -recent,
    ];
    for start in starts {
        for width in ["1m", "1h", "1d"] {
            before.push(report(start, width).await);
        }
    }
    assert_eq!(before[1], [(json!("key_a"), 12, 2), (Value::Null, 11, 1)]);
    assert_eq!(before[4], [(Value::Null, 200, 2)]);

    assert_eq!(maintenance::usage::run(&app.pool).await, (5, 2));
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM usage_minutes),
                (SELECT count(*) FROM usage_hours), (SELECT count(*) FROM usage_days)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        counts,
        (0, 2, 3, 3),
        "events folded by minute, hour and day and key; the old minutes deleted"
    );
    let mut after = Vec::new();
    for start in starts {
        for width in ["1m", "1h", "1d"] {
            after.push(report(start, width).await);
        }
    }
    assert_eq!(after, before);
    assert_eq!(
        maintenance::usage::run(&app.pool).await,
        (0, 0),
        "nothing twice"
    );
}
