//! The Usage API (OpenAI's `/v1/organization/usage/*`) through a real replica process: a batch
//! run with a service account's key shows its exact token sums, from its lines' own `usage`, in
//! the right bucket and group, before and after the maintainer folds the events into rollups,
//! and after the batch's files are deleted.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::helpers::{
    admin_key, chat_line, engine_env, start_replicas_with, to_jsonl, Expect, FakeUpstream, TestApp,
    TestDb,
};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The sums of the successful lines' `usage`, as the output file holds them.
fn sums(lines: &[Value]) -> (i64, i64, i64) {
    let mut s = (0, 0, 0);
    for l in lines.iter().filter(|l| l["response"]["status_code"] == 200) {
        let u = &l["response"]["body"]["usage"];
        s.0 += u["prompt_tokens"].as_i64().unwrap();
        s.1 += u["completion_tokens"].as_i64().unwrap();
        s.2 += 1;
    }
    s
}

#[tokio::test]
async fn usage_shows_a_batch_s_exact_tokens_by_project_model_and_key_and_outlives_its_files() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let env = engine_env(&upstream, &[("OPENBATCH__AUTH__ENABLED", "true")]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let address = &replicas[0].address;
    let admin = TestApp::connect_with_key(address, &db.url, &admin_key(&db.url)).await;
    let project = admin
        .post("/v1/organization/projects")
        .json(&json!({"name": "metered"}))
        .expect(200)
        .await;
    let pid = project["id"].as_str().unwrap();
    let made = admin
        .post(&format!("/v1/organization/projects/{pid}/service_accounts"))
        .json(&json!({"name": "ci"}))
        .expect(200)
        .await;
    let key_id = made["api_key"]["id"].as_str().unwrap();
    let user =
        TestApp::connect_with_key(address, &db.url, made["api_key"]["value"].as_str().unwrap())
            .await;

    let started = now();
    let mut lines: Vec<Value> = (0..6)
        .map(|i| {
            chat_line(
                &format!("r{i}"),
                json!({"messages": [{"role": "user", "content": "word ".repeat(i + 1)}]}),
            )
        })
        .collect();
    // A line the upstream refuses uses nothing.
    lines.push(chat_line("bad", json!({"fake": {"fail": [400]}})));
    let id = user.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let done = user.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = user.lines_of(&done["output_file_id"]).await;
    let (input, output_tokens, requests) = sums(&output);
    assert_eq!(requests, 6);
    assert_eq!(
        done["usage"]["input_tokens"], input,
        "the batch's own usage agrees"
    );
    let model = done["model"].as_str().unwrap().to_owned();

    let query = format!(
        "/v1/organization/usage/completions?start_time={}&group_by=project_id&group_by[]=model,api_key_id",
        started - 60
    );
    let expected = json!({
        "object": "organization.usage.completions.result",
        "input_tokens": input, "output_tokens": output_tokens, "input_cached_tokens": 0,
        "input_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": requests,
        "project_id": pid, "user_id": null, "api_key_id": key_id, "model": model,
        "batch": null, "service_tier": null,
    });
    let results = |page: &Value| -> Vec<Value> {
        (page["data"].as_array().unwrap().iter())
            .flat_map(|b| b["results"].as_array().unwrap().clone())
            .collect()
    };
    // Unfolded: the flushes' events.
    let page = admin.get_json(&query).await;
    assert_eq!(page["object"], "page");
    assert_eq!(page["data"][0]["object"], "bucket");
    assert_eq!(page["data"][0]["start_time"], started - 60);
    assert_eq!(results(&page), std::slice::from_ref(&expected));

    // Folded into minutes, the batch's files deleted: the same.
    openbatch::maintenance::usage::run(&admin.pool).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&admin.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    for file in [
        &done["output_file_id"],
        &done["error_file_id"],
        &done["input_file_id"],
    ] {
        user.delete(&format!("/v1/files/{}", file.as_str().unwrap()))
            .expect(200)
            .await;
    }
    assert_eq!(results(&admin.get_json(&query).await), [expected]);

    // Minute buckets: the usage sits in the minute (or two) the lines finished in.
    let minutes = admin
        .get_json(&format!(
            "/v1/organization/usage/completions?start_time={}&bucket_width=1m&limit=10&batch=true",
            started - started % 60
        ))
        .await;
    let used: Vec<&Value> = (minutes["data"].as_array().unwrap().iter())
        .filter(|b| !b["results"].as_array().unwrap().is_empty())
        .collect();
    assert!(!used.is_empty() && used.len() <= 2, "{minutes}");
    let total: i64 = used
        .iter()
        .map(|b| b["results"][0]["input_tokens"].as_i64().unwrap())
        .sum();
    assert_eq!(total, input);
    assert!(used.iter().all(|b| b["results"][0]["project_id"].is_null()));

    // The same totals in `/metrics`, per project and model (refreshed every 5 s by default).
    let series = format!(
        "openbatch_usage_tokens_total{{kind=\"input\",model=\"{model}\",project=\"{pid}\"}} {input}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = reqwest::get(format!("{address}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == series) {
            let requests = format!(
                "openbatch_usage_requests_total{{model=\"{model}\",project=\"{pid}\"}} {requests}"
            );
            assert!(text.lines().any(|l| l == requests), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {series} in {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Filters: another project, another model, or outside batches: nothing.
    for filter in [
        "project_ids[]=proj_other",
        "models=other-model",
        "batch=false",
        "user_ids=user_x",
    ] {
        let page = admin
            .get_json(&format!(
                "/v1/organization/usage/completions?start_time={}&{filter}",
                started - 60
            ))
            .await;
        assert!(results(&page).is_empty(), "{filter}: {page}");
    }
    // Embeddings are another endpoint's usage.
    let page = admin
        .get_json(&format!(
            "/v1/organization/usage/embeddings?start_time={}",
            started - 60
        ))
        .await;
    assert!(results(&page).is_empty(), "{page}");
}

#[tokio::test]
async fn usage_pages_and_errors_are_openai_s() {
    let db = TestDb::new();
    let env = [
        ("OPENBATCH__AUTH__ENABLED", "true"),
        ("OPENBATCH__WORKER__ENABLED", "false"),
    ];
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let admin = TestApp::connect_with_key(&replicas[0].address, &db.url, &admin_key(&db.url)).await;
    let base = "/v1/organization/usage/completions";

    // 3 days in 1d buckets, 2 a page: the first from start_time, the rest on midnights UTC.
    let start = 1_700_000_000;
    let end = start + 3 * 86_400;
    let first = admin
        .get_json(&format!("{base}?start_time={start}&end_time={end}&limit=2"))
        .await;
    let buckets = first["data"].as_array().unwrap();
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0]["start_time"], start);
    assert_eq!(buckets[0]["end_time"], start - start % 86_400 + 86_400);
    assert_eq!(buckets[1]["start_time"], buckets[0]["end_time"]);
    assert_eq!(buckets[0]["results"], json!([]));
    assert_eq!(first["has_more"], true);
    let next = first["next_page"].as_str().unwrap();
    let second = admin
        .get_json(&format!(
            "{base}?start_time={start}&end_time={end}&limit=2&page={next}"
        ))
        .await;
    let rest = second["data"].as_array().unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1]["end_time"], end);
    assert_eq!(
        (second["has_more"].clone(), second["next_page"].clone()),
        (json!(false), Value::Null)
    );

    let bad = [
        (base.to_owned(), "start_time"),
        (
            format!("{base}?start_time=1&bucket_width=1w"),
            "bucket_width",
        ),
        (
            format!("{base}?start_time=1&bucket_width=1h&limit=0"),
            "limit",
        ),
        (format!("{base}?start_time=1&group_by=colour"), "group_by"),
        (format!("{base}?start_time=1&page=page_0"), "page"),
        (
            "/v1/organization/usage/embeddings?start_time=1&batch=true".to_owned(),
            "batch",
        ),
    ];
    for (path, param) in bad {
        let err = admin.get(&path).expect_error(400).await;
        assert_eq!(err["param"], param, "{path}");
        assert_eq!(err["type"], "invalid_request_error");
    }
    let key = crate::helpers::key_for(&admin.pool, "plain").await;
    let user = TestApp::connect_with_key(&replicas[0].address, &db.url, &key).await;
    let err = user
        .get(&format!("{base}?start_time=1"))
        .expect_error(403)
        .await;
    assert_eq!(err["code"], "insufficient_permissions");
}

/// Usage recorded before migration 0023 (rollups naming their combination in every row, hours
/// only past the minutes' retention) reads the same after it, in minutes, hours and days.
#[tokio::test]
async fn usage_rolled_up_before_the_upgrade_reads_the_same_after_it() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    crate::helpers::migrate_to(&db.url, 22).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let day = now() - now() % 86_400 - 86_400;
    let old_day = day - 40 * 86_400;
    // Yesterday: two minutes of one key and a minute without one. 40 days ago: an hour.
    for (table, start, key, tokens) in [
        ("usage_minutes", day + 600, "key_a", 10),
        ("usage_minutes", day + 660, "key_a", 20),
        ("usage_minutes", day + 7200, "", 40),
        ("usage_hours", old_day + 3600, "key_a", 80),
    ] {
        sqlx::query(&format!(
            "INSERT INTO {table} (start, project_id, endpoint, model, api_key_id, requests,
                                  input_tokens, cached_tokens, output_tokens)
             VALUES ($1, 'proj_default', '/v1/chat/completions', 'm', $2, 1, $3, 1, 2)"
        ))
        .bind(start)
        .bind(key)
        .bind(tokens)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let env = engine_env(&upstream, &[("OPENBATCH__AUTH__ENABLED", "true")]);
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let admin = TestApp::connect_with_key(&replicas[0].address, &db.url, &admin_key(&db.url)).await;
    let report = |start: i64, width: &'static str, limit: u32| {
        let admin = &admin;
        async move {
            let page: Value = admin
                .get_json(&format!(
                    "/v1/organization/usage/completions?start_time={start}&end_time={}&bucket_width={width}&limit={limit}&group_by=api_key_id",
                    start + 86_400
                ))
                .await;
            (page["data"].as_array().unwrap().iter())
                .flat_map(|b| {
                    (b["results"].as_array().unwrap().iter()).map(|r| {
                        (
                            b["start_time"].as_i64().unwrap(),
                            r["api_key_id"].clone(),
                            r["input_tokens"].as_i64().unwrap(),
                        )
                    })
                })
                .collect::<Vec<_>>()
        }
    };
    let key_a = json!("key_a");
    assert_eq!(
        report(day, "1d", 1).await,
        [(day, Value::Null, 40), (day, key_a.clone(), 30)]
    );
    assert_eq!(
        report(day, "1h", 24).await,
        [(day, key_a.clone(), 30), (day + 7200, Value::Null, 40)]
    );
    assert_eq!(
        report(day, "1m", 1440).await,
        [
            (day + 600, key_a.clone(), 10),
            (day + 660, key_a.clone(), 20),
            (day + 7200, Value::Null, 40)
        ]
    );
    assert_eq!(
        report(old_day, "1d", 1).await,
        [(old_day, key_a.clone(), 80)]
    );
    assert_eq!(
        report(old_day, "1h", 24).await,
        [(old_day + 3600, key_a, 80)]
    );
}
