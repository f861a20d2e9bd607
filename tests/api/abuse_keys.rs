//! Attacks on keys, defaults and secrets, each against real replicas in the abuse harness
//! ([`Stack`]): the attack ends with the documented clear error within a bounded time, every
//! replica stays ready and within its memory bound, and another project's ordinary batches
//! complete meanwhile, none of them lost.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::abuse::Stack;
use crate::helpers::{
    chat_line, engine_env, expect_error, metric_value, openbatch_command, start_replicas_with,
    to_jsonl, wait_for_key_status, Expect, TestApp, TestDb,
};

/// Hang guard only: nothing asserts how fast a protection acts, and each deadline is far
/// below the fallback (`auth.cache_secs` = 300 in these tests) it must beat.
const DEADLINE: Duration = Duration::from_secs(30);

/// `openbatch keys ARGS…` against the database; its stdout on success.
fn keys_cli(database_url: &str, args: &[&str]) -> Result<String, String> {
    let out = openbatch_command(database_url)
        .arg("keys")
        .args(args)
        .output()
        .expect("run openbatch keys");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn create_key(database_url: &str, project: &str) -> String {
    keys_cli(database_url, &["create", "--project", project]).expect("keys create")
}

fn prefix_of(key: &str) -> &str {
    &key[..16]
}

/// A key copy refreshed only by notifications: the 300 s fallback never fires during a test.
const NOTIFIED_ONLY: (&str, &str) = ("OPENBATCH__AUTH__CACHE_SECS", "300");

#[tokio::test]
async fn anonymous_serving_on_a_public_address_is_refused_unless_allowed() {
    // The harness's replicas themselves listen on 0.0.0.0, with auth on.
    let stack = Stack::start(
        TestDb::new(),
        &[NOTIFIED_ONLY, ("OPENBATCH__SERVER__HOST", "0.0.0.0")],
    )
    .await;
    stack
        .under_attack(async {
            let out = openbatch_command(&stack.url)
                .env("OPENBATCH__SERVER__HOST", "0.0.0.0")
                .env("OPENBATCH__SERVER__PORT", "0")
                .arg("serve")
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert!(!out.status.success(), "served anonymously on 0.0.0.0");
            let stderr = String::from_utf8_lossy(&out.stderr);
            for named in [
                "authentication off",
                "OPENBATCH__AUTH__ENABLED=true",
                "OPENBATCH__AUTH__ALLOW_ANONYMOUS=true",
            ] {
                assert!(stderr.contains(named), "{named} not in: {stderr}");
            }
            for r in &stack.replicas {
                let anonymous = TestApp::connect(&r.address, &stack.url).await;
                anonymous.get("/v1/batches").expect_error(401).await;
            }

            // Said explicitly, it serves (and so do the loopback replicas other tests start).
            let open = start_replicas_with(
                1,
                &stack.url,
                &engine_env(
                    &stack.upstream,
                    &[
                        ("OPENBATCH__SERVER__HOST", "0.0.0.0"),
                        ("OPENBATCH__AUTH__ALLOW_ANONYMOUS", "true"),
                        // The harness's replicas run the batches: this one, stopped at the
                        // end, then holds no claim that would delay the victim's.
                        ("OPENBATCH__WORKER__ENABLED", "false"),
                    ],
                ),
            )
            .await;
            let anonymous = TestApp::connect(&open[0].address, &stack.url).await;
            let id = anonymous
                .submit(
                    "/v1/chat/completions",
                    to_jsonl(&[chat_line("open-1", json!({}))]),
                )
                .await;
            let batch = anonymous.wait_for(&id, &["completed", "failed"]).await;
            assert_eq!(batch["request_counts"]["completed"], 1, "{batch}");
        })
        .await;
    stack.finish().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_replica_at_once() {
    let stack = Stack::start(TestDb::new(), &[NOTIFIED_ONLY]).await;
    let leaked = create_key(&stack.url, "leaky");
    let apps = [
        TestApp::connect_with_key(&stack.replicas[0].address, &stack.url, &leaked).await,
        TestApp::connect_with_key(&stack.replicas[1].address, &stack.url, &leaked).await,
    ];
    wait_for_key_status(&[&apps[0], &apps[1]], 200, "a new key").await;

    stack
        .under_attack(async {
            keys_cli(&stack.url, &["revoke", prefix_of(&leaked)]).expect("revoke");
            // Far sooner than the 300 s reload: each replica heard the revocation.
            wait_for_key_status(&[&apps[0], &apps[1]], 401, "a revoked key").await;
            for app in &apps {
                let err = app.get("/v1/files").expect_error(401).await;
                assert_eq!(err["code"], "invalid_api_key");
            }
        })
        .await;
    stack.finish().await;
}

#[tokio::test]
async fn a_lost_listen_connection_reloads_the_keys() {
    let stack = Stack::start(TestDb::new(), &[NOTIFIED_ONLY]).await;
    let leaked = create_key(&stack.url, "leaky");
    let apps = [
        TestApp::connect_with_key(&stack.replicas[0].address, &stack.url, &leaked).await,
        TestApp::connect_with_key(&stack.replicas[1].address, &stack.url, &leaked).await,
    ];
    wait_for_key_status(&[&apps[0], &apps[1]], 200, "a new key").await;

    stack
        .under_attack(async {
            // A revocation whose notification is lost (written behind the servers' back): the
            // in-memory copies still hold the key, which is what a lost NOTIFY would leave.
            sqlx::query("UPDATE api_keys SET revoked_at = unix_now() WHERE prefix = $1")
                .bind(prefix_of(&leaked))
                .execute(stack.pool())
                .await
                .unwrap();
            for app in &apps {
                assert_eq!(app.key_status().await, 200, "the copy is what answers");
            }

            // The LISTEN connections drop; no replica may trust its copy after that.
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND query LIKE '%LISTEN%openbatch_keys%'",
            )
            .fetch_all(stack.pool())
            .await
            .unwrap();
            assert_eq!(killed, [true, true], "one key listener per replica");
            wait_for_key_status(
                &[&apps[0], &apps[1]],
                401,
                "a key revoked while the listener was down",
            )
            .await;
        })
        .await;
    stack.finish().await;
}

#[tokio::test]
async fn a_flood_of_bad_keys_costs_no_query_and_a_new_key_works_at_once() {
    const LOOKUPS_PER_SEC: f64 = 2.0;
    let stack = Stack::start(
        TestDb::new(),
        &[
            NOTIFIED_ONLY,
            ("OPENBATCH__AUTH__UNKNOWN_KEY_LOOKUPS_PER_SEC", "2"),
        ],
    )
    .await;
    let real = create_key(&stack.url, "flooded");
    // Each replica has loaded its copy of the keys (the real one and the victim's included),
    // so that only the flood's keys are unknown to it.
    for r in &stack.replicas {
        let app = TestApp::connect_with_key(&r.address, &stack.url, &real).await;
        wait_for_key_status(&[&app], 200, "the real key").await;
    }
    wait_for_key_status(
        &[&stack.victim[0], &stack.victim[1]],
        200,
        "the victim's key",
    )
    .await;
    let addresses: Vec<&str> = stack.replicas.iter().map(|r| r.address.as_str()).collect();

    stack
        .under_attack(async {
            let before: Vec<f64> = futures_util::future::join_all(
                addresses
                    .iter()
                    .map(|a| metric_value(a, "openbatch_auth_key_queries_total")),
            )
            .await;
            // Well-formed keys with unknown prefixes, the real prefix with wrong secrets,
            // garbage.
            let bad: Vec<String> = (0..300)
                .map(|i| match i % 3 {
                    0 => format!(
                        "obk_{}_{}{}",
                        &uuid::Uuid::new_v4().simple().to_string()[..12],
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    ),
                    1 => format!(
                        "{}_{}{}",
                        prefix_of(&real),
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    ),
                    _ => format!("sk-{}", uuid::Uuid::new_v4().simple()),
                })
                .collect();
            let http = reqwest::Client::new();
            let started = Instant::now();
            let answers = futures_util::future::join_all(bad.iter().enumerate().map(|(i, key)| {
                let req = http
                    .get(format!("{}/v1/batches", addresses[i % 2]))
                    .bearer_auth(key);
                async move { req.send().await.unwrap() }
            }))
            .await;
            for res in answers {
                let err = expect_error(res, 401).await;
                assert_eq!(err["code"], "invalid_api_key");
            }
            let after: Vec<f64> = futures_util::future::join_all(
                addresses
                    .iter()
                    .map(|a| metric_value(a, "openbatch_auth_key_queries_total")),
            )
            .await;
            // Keys the copy does not hold may be looked up at LOOKUPS_PER_SEC (a burst of as
            // many): a bound that does not grow with the flood (150 bad keys per replica).
            let bound = LOOKUPS_PER_SEC * (1.0 + started.elapsed().as_secs_f64()).ceil();
            for (b, a) in before.iter().zip(&after) {
                assert!(
                    a - b <= bound,
                    "{} bad keys of 150 were looked up in the database (bound {bound})",
                    a - b
                );
            }
        })
        .await;

    // A key created after the flood works on both replicas without waiting for the reload.
    let fresh = create_key(&stack.url, "late-comer");
    for r in &stack.replicas {
        let app = TestApp::connect_with_key(&r.address, &stack.url, &fresh).await;
        wait_for_key_status(&[&app], 200, "a key created after the flood").await;
    }
    stack.finish().await;
}

#[tokio::test]
async fn the_per_key_rate_limit_holds_for_the_cluster() {
    const PER_MINUTE: usize = 40;
    // The victim's key is limited too (its own 40 a minute): the harness retries its 429s as
    // an SDK would, so its batches complete, only later.
    let stack = Stack::start(
        TestDb::new(),
        &[
            NOTIFIED_ONLY,
            ("OPENBATCH__LIMITS__REQUESTS_PER_MINUTE_PER_KEY", "40"),
            ("OPENBATCH__CLUSTER__HEARTBEAT_SECS", "1"),
        ],
    )
    .await;
    // Both replicas count each other before the burst.
    let deadline = Instant::now() + DEADLINE;
    for r in &stack.replicas {
        while metric_value(&r.address, "openbatch_cluster_replicas").await != 2.0 {
            assert!(
                Instant::now() < deadline,
                "{} never saw 2 replicas",
                r.address
            );
            // Heartbeats notify nothing: the count is read from /metrics.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let hot = create_key(&stack.url, "hot");
    let apps = [
        TestApp::connect_with_key(&stack.replicas[0].address, &stack.url, &hot).await,
        TestApp::connect_with_key(&stack.replicas[1].address, &stack.url, &hot).await,
    ];
    // The key's first request on each replica may come before its copy knows the key.
    wait_for_key_status(&[&apps[0], &apps[1]], 200, "a new key").await;

    stack
        .under_attack(async {
            let started = Instant::now();
            let (mut admitted, mut refused) = (2, 0);
            let mut last_refusal = None;
            for i in 0..2 * PER_MINUTE {
                let res = apps[i % 2].get("/v1/batches").send().await.unwrap();
                match res.status().as_u16() {
                    200 => admitted += 1,
                    429 => {
                        refused += 1;
                        last_refusal = Some(res);
                    }
                    s => panic!("unexpected {s}"),
                }
            }
            // Tokens refill at PER_MINUTE a minute across the cluster while the burst runs.
            let refill =
                (PER_MINUTE as f64 * started.elapsed().as_secs_f64() / 60.0).ceil() as usize;
            assert!(
                admitted <= PER_MINUTE + refill + 1,
                "{admitted} requests admitted in a burst; the cluster's limit is {PER_MINUTE} a minute"
            );
            assert!(
                admitted >= PER_MINUTE,
                "each replica admits its share: {admitted}"
            );
            assert!(refused > 0);
            let res = last_refusal.unwrap();
            assert!(res.headers().contains_key("retry-after"));
            let err = expect_error(res, 429).await;
            assert_eq!(err["code"], "rate_limit_exceeded");
        })
        .await;
    // Another key has its own budget: the victim's batches completed.
    stack.finish().await;
}

#[tokio::test]
async fn the_default_project_name_is_reserved() {
    let stack = Stack::start(TestDb::new(), &[NOTIFIED_ONLY]).await;
    stack
        .under_attack(async {
            for name in ["default", " Default ", "DEFAULT"] {
                let err = keys_cli(&stack.url, &["create", "--project", name]).unwrap_err();
                assert!(err.contains("reserved"), "{err}");
            }
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM projects WHERE lower(name) LIKE '%default%' ORDER BY name",
            )
            .fetch_all(stack.pool())
            .await
            .unwrap();
            assert_eq!(
                names,
                ["default"],
                "only the built-in project has that name"
            );
            // On purpose, an operator can still reach the built-in project's data.
            let built_in = keys_cli(&stack.url, &["create", "--built-in"]).unwrap();
            let project: String =
                sqlx::query_scalar("SELECT project_id FROM api_keys WHERE prefix = $1")
                    .bind(prefix_of(&built_in))
                    .fetch_one(stack.pool())
                    .await
                    .unwrap();
            assert_eq!(project, "proj_default");
        })
        .await;
    stack.finish().await;
}

#[tokio::test]
async fn raw_ids_from_urls_cannot_forge_log_lines() {
    let log = std::env::temp_dir().join(format!("ob-abuse-{}.log", uuid::Uuid::new_v4().simple()));
    let stack = Stack::start_logging(
        TestDb::new(),
        &[],
        &[("RUST_LOG", "info,openbatch=debug")],
        &log,
    )
    .await;
    let app = &stack.attacker[0];
    stack
        .under_attack(async {
            for path in [
                "/v1/files/file-abc%0Aforged%20line%20file",
                "/v1/files/file-abc%0Aforged%20line%20content/content",
                "/v1/batches/batch_abc%0Aforged%20line%20batch",
                "/v1/batches/batch_abc%0D%0Aforged%20line%20cancel/cancel",
            ] {
                let res = if path.ends_with("/cancel") {
                    app.post(path).send().await.unwrap()
                } else {
                    app.get(path).send().await.unwrap()
                };
                let err = expect_error(res, 404).await;
                // The id reached the handler decoded, newline and all: the attack is real.
                assert!(err["message"].as_str().unwrap().contains('\n'), "{err}");
            }
        })
        .await;
    stack.finish().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("%0Aforged"),
        "the requests are in the log, percent-encoded:\n{text}"
    );
    // The decoded ids (`forged line …`: a real newline before, a space inside) are not
    // recorded at all, neither raw nor escaped: only validated ids reach spans and logs.
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains("forged line")).collect();
    assert!(
        leaked.is_empty(),
        "raw ids reached the log:\n{}",
        leaked.join("\n")
    );
}

#[tokio::test]
async fn upstream_errors_reach_tenants_without_the_upstream_address_or_redirects() {
    // An upstream that drops every connection, at a URL tenants must not learn. (One that
    // refuses them is taken out, and its lines wait for it until their window ends: pools.rs.)
    let dropper = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = dropper.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in dropper.incoming() {
            drop(conn);
        }
    });
    let config =
        std::env::temp_dir().join(format!("ob-abuse-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!(
            "[routes.hidden]\nbase_url = \"http://127.0.0.1:{closed}/v1/private-route-7f3a\"\n\
             models = [\"hidden-model\"]\n"
        ),
    )
    .unwrap();
    let stack = Stack::start(
        TestDb::new(),
        &[
            ("OPENBATCH_CONFIG", config.to_str().unwrap()),
            ("OPENBATCH__WORKER__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let _ = std::fs::remove_file(&config);
    let app = &stack.attacker[0];
    stack
        .under_attack(async {
            let mut hidden_line = chat_line("hidden", json!({}));
            hidden_line["body"]["model"] = json!("hidden-model");
            let id = app
                .submit("/v1/chat/completions", to_jsonl(&[hidden_line]))
                .await;
            let batch = app.wait_for(&id, &["completed", "failed"]).await;
            let errors = app.lines_of(&batch["error_file_id"]).await;
            assert_eq!(errors.len(), 1, "{batch}");
            let text = errors[0].to_string();
            assert_eq!(
                errors[0]["error"]["message"], "Could not get a response from the upstream.",
                "{text}"
            );
            for secret in ["private-route", &closed.to_string(), "127.0.0.1"] {
                assert!(
                    !text.contains(secret),
                    "{secret} reached the error file: {text}"
                );
            }

            // A redirect is an answer, not an instruction: the line is not sent again
            // elsewhere.
            let redirected = chat_line("redirected", json!({"fake": {"fail": ["redirect"]}}));
            let id = app
                .submit("/v1/chat/completions", to_jsonl(&[redirected]))
                .await;
            let batch = app.wait_for(&id, &["completed", "failed"]).await;
            let errors = app.lines_of(&batch["error_file_id"]).await;
            assert_eq!(errors.len(), 1, "{batch}");
            assert_eq!(errors[0]["response"]["status_code"], 307, "{}", errors[0]);
            let stats = stack.upstream.stats().await;
            assert_eq!(
                stats["by_key"]["redirected"], 1,
                "the redirect was followed: {stats}"
            );
        })
        .await;
    stack.finish().await;
}
