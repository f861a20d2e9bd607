//! Webhooks (an OpenBatch extension): endpoints per project, signed events for terminal batch
//! statuses from an outbox, retried with backoff, surviving the death of the replica sending
//! them, and never sent into a private network unless the operator allows it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::helpers::{
    batch_body, chat_line, spawn_app_with, spawn_engine, start_replicas_with, to_jsonl, Expect,
    FakeUpstream, TestApp, TestDb, FALLBACK,
};

/// What the receiver does with the next request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// A 302 to another path of this receiver.
    Redirect,
    /// Never answers (until the sender goes away).
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    /// When the script runs out.
    otherwise: Option<u16>,
    received: Vec<Received>,
}

/// The script, and the signal that a request arrived.
#[derive(Default)]
struct Inbox {
    script: Mutex<Script>,
    arrived: Notify,
}

/// A local HTTP server standing in for a user's webhook endpoint.
struct Receiver {
    url: String,
    port: u16,
    inbox: Arc<Inbox>,
}

async fn receive(req: HttpRequest, body: web::Bytes, inbox: web::Data<Inbox>) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = {
        let mut s = inbox.script.lock().unwrap();
        s.received.push(Received {
            path: req.path().to_owned(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let otherwise = Reply::Status(s.otherwise.unwrap_or(200));
        s.replies.pop_front().unwrap_or(otherwise)
    };
    inbox.arrived.notify_waiters();
    match reply {
        Reply::Status(code) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .body(format!("receiver says {code}"))
        }
        Reply::Redirect => HttpResponse::Found()
            .insert_header(("location", "/followed"))
            .finish(),
        Reply::Hang => {
            // The reply under test: a receiver that never answers.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            HttpResponse::Ok().finish()
        }
    }
}

impl Receiver {
    fn start(replies: &[Reply]) -> Self {
        let inbox = Arc::new(Inbox {
            script: Mutex::new(Script {
                replies: replies.iter().copied().collect(),
                ..Script::default()
            }),
            arrived: Notify::new(),
        });
        let data = web::Data::from(inbox.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            inbox,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.inbox.script.lock().unwrap().received.clone()
    }

    fn answer_from_now_on(&self, code: u16) {
        let mut s = self.inbox.script.lock().unwrap();
        s.replies.clear();
        s.otherwise = Some(code);
    }

    /// Waits until `done` holds for what was received, checking again as each request
    /// arrives; the deadline only guards against a hang.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // Registered before the check, so a request arriving in between still wakes it.
            let arrived = self.inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: got {got:?}");
            let _ = tokio::time::timeout(FALLBACK, arrived).await;
        }
    }
}

/// The Standard Webhooks check, written out independently of the server's code.
fn verifies(r: &Received, secret: &str) -> bool {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = B64.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn create_endpoint(app: &TestApp, body: Value) -> Value {
    app.post("/v1/webhook_endpoints")
        .json(&body)
        .expect(200)
        .await
}

async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    app.get_json(&format!("/v1/webhook_endpoints/{endpoint}/deliveries"))
        .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_for_delivery(app: &TestApp, endpoint: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = deliveries(app, endpoint).await;
        if let Some(d) = log.iter().find(|d| done(d)) {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "delivery log: {log:?}");
        // Delivery attempts notify nothing: the log is polled.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn webhook_engine(
    upstream: &FakeUpstream,
    tweak: impl FnOnce(&mut openbatch::config::Settings),
) -> TestApp {
    spawn_engine(upstream, |s| {
        s.webhooks.allow_private_networks = true;
        s.webhooks.retry_base_ms = 50;
        s.webhooks.retry_max_ms = 400;
        s.webhooks.poll_interval_ms = 100;
        tweak(s);
    })
    .await
}

/// A batch that fails at validation: its input file does not exist.
async fn failing_batch(app: &TestApp) -> String {
    let b: Value = app
        .create_batch(&batch_body("file-missing"))
        .expect(200)
        .await;
    b["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn endpoints_are_validated_and_private_addresses_refused() {
    let app = spawn_app_with(|_| {}).await;
    for (url, why) in [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/", "link-local (cloud metadata)"),
        ("http://[::1]/", "IPv6 loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://100.64.1.1/", "CGNAT"),
        ("http://[fd00::1]/", "unique local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://localhost:8080/", "a loopback name"),
        ("ftp://example.com/", "not http(s)"),
        ("example.com/hook", "no scheme"),
    ] {
        let err = app
            .post("/v1/webhook_endpoints")
            .json(&json!({ "url": url }))
            .expect_error(400)
            .await;
        assert_eq!(err["param"], "url", "{why}: {err}");
        assert_eq!(err["code"], "invalid_value", "{why}");
    }
    let err = app
        .post("/v1/webhook_endpoints")
        .json(&json!({}))
        .expect_error(400)
        .await;
    assert_eq!(err["code"], "missing_required_parameter");
    assert_eq!(err["param"], "url");
    for (events, param) in [
        (json!(["batch.completed", "batch.created"]), "events[1]"),
        (json!("batch.completed"), "events"),
        (json!([]), "events"),
        (json!([3]), "events[0]"),
    ] {
        let err = app
            .post("/v1/webhook_endpoints")
            .json(&json!({ "url": "https://example.com/hook", "events": events }))
            .expect_error(400)
            .await;
        assert_eq!(err["param"], param, "{err}");
    }

    // A valid one: the secret only in this answer.
    let created = create_endpoint(
        &app,
        json!({"url": "https://example.com/hook", "events": ["batch.failed"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("we_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["events"], json!(["batch.failed"]));
    assert_eq!(created["status"], "enabled");
    let got = app.get_json(&format!("/v1/webhook_endpoints/{id}")).await;
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], "https://example.com/hook");
    let all = create_endpoint(&app, json!({"url": "https://example.org/"})).await;
    assert_eq!(
        all["events"].as_array().unwrap().len(),
        4,
        "default: every event"
    );

    // Listing pages like the other lists.
    let page = app.get_json("/v1/webhook_endpoints?limit=1").await;
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["id"], all["id"]);
    assert!(page["data"][0].get("secret").is_none());
    let next = app
        .get_json(&format!(
            "/v1/webhook_endpoints?limit=1&after={}",
            all["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next["data"][0]["id"], id);
    assert_eq!(next["has_more"], false);
    assert_eq!(
        app.get("/v1/webhook_endpoints?after=we_nope")
            .expect_error(400)
            .await["param"],
        "after"
    );
    assert_eq!(
        app.get("/v1/webhook_endpoints?limit=0")
            .expect_error(400)
            .await["param"],
        "limit"
    );

    // Rotation: a new secret, shown once; a grace period out of range is refused.
    let rotated = app
        .post(&format!("/v1/webhook_endpoints/{id}/rotate_secret"))
        .expect(200)
        .await;
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"], created["secret"]);
    assert!(rotated["previous_secret_expires_at"].as_i64().unwrap() > 0);
    assert_eq!(
        app.post(&format!("/v1/webhook_endpoints/{id}/rotate_secret"))
            .json(&json!({"grace_period_seconds": -1}))
            .expect_error(400)
            .await["param"],
        "grace_period_seconds"
    );

    // Unknown ids are 404 on every route.
    for (method, path) in [
        ("GET", "/v1/webhook_endpoints/we_nope"),
        ("DELETE", "/v1/webhook_endpoints/we_nope"),
        ("POST", "/v1/webhook_endpoints/we_nope/rotate_secret"),
        ("POST", "/v1/webhook_endpoints/we_nope/enable"),
        ("GET", "/v1/webhook_endpoints/we_nope/deliveries"),
    ] {
        let err = app.request(method, path).expect_error(404).await;
        assert_eq!(err["code"], "webhook_endpoint_not_found", "{method} {path}");
    }

    // Delete: gone afterwards.
    assert_eq!(
        app.delete(&format!("/v1/webhook_endpoints/{id}"))
            .expect(200)
            .await["deleted"],
        true
    );
    app.get(&format!("/v1/webhook_endpoints/{id}"))
        .expect_error(404)
        .await;
}

#[tokio::test]
async fn a_project_may_register_only_so_many_endpoints() {
    let app = spawn_app_with(|s| s.webhooks.max_endpoints_per_project = 2).await;
    for i in 0..2 {
        create_endpoint(&app, json!({ "url": format!("https://example.com/{i}") })).await;
    }
    let err = app
        .post("/v1/webhook_endpoints")
        .json(&json!({ "url": "https://example.com/2" }))
        .expect_error(400)
        .await;
    assert_eq!(err["code"], "webhook_endpoint_limit_exceeded");
    let page = app.get_json("/v1/webhook_endpoints").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_project_cannot_see_or_touch_another_projects_endpoints() {
    let app = spawn_app_with(|s| {
        s.auth.enabled = true;
        s.auth.cache_secs = 0;
    })
    .await;
    let mut secrets = Vec::new();
    for project in ["team-a", "team-b"] {
        secrets.push(crate::helpers::key_for(&app.pool, project).await);
    }
    let (a, b) = (&secrets[0], &secrets[1]);
    let created = app
        .post("/v1/webhook_endpoints")
        .bearer_auth(a)
        .json(&json!({"url": "https://example.com/a"}))
        .expect(200)
        .await;
    let id = created["id"].as_str().unwrap();
    let listed = app
        .get("/v1/webhook_endpoints")
        .bearer_auth(b)
        .expect(200)
        .await;
    assert_eq!(listed["data"], json!([]), "B sees none of A's endpoints");
    for (method, path) in [
        ("GET", format!("/v1/webhook_endpoints/{id}")),
        ("POST", format!("/v1/webhook_endpoints/{id}/rotate_secret")),
        ("GET", format!("/v1/webhook_endpoints/{id}/deliveries")),
        ("DELETE", format!("/v1/webhook_endpoints/{id}")),
    ] {
        app.request(method, &path)
            .bearer_auth(b)
            .expect_error(404)
            .await;
    }
    app.get(&format!("/v1/webhook_endpoints?after={id}"))
        .bearer_auth(b)
        .expect_error(400)
        .await;
    // Still there for A.
    app.get(&format!("/v1/webhook_endpoints/{id}"))
        .bearer_auth(a)
        .expect_response(200)
        .await;
}

#[tokio::test]
async fn a_receiver_that_fails_a_few_times_gets_the_event_again_with_the_same_id() {
    let upstream = FakeUpstream::start(&[]);
    let app = webhook_engine(&upstream, |_| {}).await;
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(503), Reply::Status(404)]);
    let endpoint = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let secret = endpoint["secret"].as_str().unwrap();
    let ep = endpoint["id"].as_str().unwrap();

    let batch = app
        .submit(
            "/v1/chat/completions",
            to_jsonl(&[chat_line("a", json!({}))]),
        )
        .await;
    app.wait_for(&batch, &["completed"]).await;
    let delivered = wait_for_delivery(&app, ep, |d| d["status"] == "delivered").await;
    assert_eq!(delivered["attempts"], 4, "{delivered}");
    assert_eq!(delivered["event_type"], "batch.completed");
    assert_eq!(delivered["batch_id"], batch.as_str());
    assert_eq!(delivered["last_status_code"], 200);
    assert!(delivered["delivered_at"].as_i64().is_some());
    assert_eq!(delivered["next_attempt_at"], Value::Null);

    let got = receiver.received();
    assert_eq!(got.len(), 4, "three failures, one success: {got:?}");
    for r in &got {
        assert_eq!(r.id, got[0].id, "one webhook-id across retries");
        assert_eq!(r.body, got[0].body, "the same bytes every time");
        assert!(verifies(r, secret), "signature of {r:?}");
    }
    let event: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["id"].as_str().unwrap(), got[0].id);
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "batch.completed");
    assert_eq!(event["data"], json!({ "id": batch }));
    assert!(event["created_at"].as_i64().is_some());

    // Nothing more comes for that event: a later event is the next thing received.
    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    let got = receiver
        .wait_until("the batch.failed event", |g| g.len() > 4)
        .await;
    assert_eq!(got.len(), 5, "{got:?}");
    let event: Value = serde_json::from_str(&got[4].body).unwrap();
    assert_eq!(event["type"], "batch.failed");
    assert_eq!(event["data"]["id"], failed.as_str());
    assert_ne!(got[4].id, got[0].id);
    // The endpoint's run of failures was reset by the success.
    let ep_now = app.get_json(&format!("/v1/webhook_endpoints/{ep}")).await;
    assert_eq!(ep_now["consecutive_failures"], 0);
}

#[tokio::test]
async fn only_subscribed_events_are_sent_and_an_endpoint_that_keeps_failing_is_disabled() {
    let upstream = FakeUpstream::start(&[]);
    let app = webhook_engine(&upstream, |s| s.webhooks.disable_after_failures = 3).await;
    let receiver = Receiver::start(&[]);
    receiver.answer_from_now_on(500);
    let only_completed = Receiver::start(&[]);
    let ep = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let ep = ep["id"].as_str().unwrap();
    create_endpoint(
        &app,
        json!({ "url": only_completed.url, "events": ["batch.completed"] }),
    )
    .await;

    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let disabled = loop {
        let e = app.get_json(&format!("/v1/webhook_endpoints/{ep}")).await;
        if e["status"] == "disabled" {
            break e;
        }
        assert!(Instant::now() < deadline, "never disabled: {e}");
        // Disabling an endpoint notifies nothing: it is polled.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("3 delivery attempts in a row failed"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert_eq!(receiver.received().len(), 3);
    let log = deliveries(&app, ep).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0]["status"], "pending",
        "kept for when it is enabled again"
    );
    assert_eq!(log[0]["last_status_code"], 500);
    assert!(log[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("receiver says 500"));

    // Re-enabled (and fixed), the pending event goes out.
    receiver.answer_from_now_on(200);
    let enabled = app
        .post(&format!("/v1/webhook_endpoints/{ep}/enable"))
        .expect(200)
        .await;
    assert_eq!(enabled["status"], "enabled");
    assert_eq!(enabled["disabled_reason"], Value::Null);
    let d = wait_for_delivery(&app, ep, |d| d["status"] == "delivered").await;
    assert_eq!(d["attempts"], 4);
    assert_eq!(
        only_completed.received().len(),
        0,
        "not subscribed to batch.failed"
    );
}

#[tokio::test]
async fn a_host_name_that_resolves_to_loopback_is_refused_at_delivery() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        s.webhooks.retry_base_ms = 50;
        s.webhooks.poll_interval_ms = 100;
    })
    .await;
    let receiver = Receiver::start(&[]);
    // As if the name pointed at a public address when it was registered and was rebound since;
    // and a literal address registered while the operator allowed private networks.
    for (ep, host) in [("we_rebound", "localhost"), ("we_literal", "127.0.0.1")] {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, project_id, url, events, secret)
             VALUES ($1, 'proj_default', $2, ARRAY['batch.failed'], 'whsec_c2VjcmV0')",
        )
        .bind(ep)
        .bind(format!("http://{host}:{}/hook", receiver.port))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    for (ep, expected) in [
        (
            "we_rebound",
            "refused: localhost resolves only to non-public addresses",
        ),
        ("we_literal", "refused: 127.0.0.1 is not a public address"),
    ] {
        let d = wait_for_delivery(&app, ep, |d| d["attempts"].as_i64() >= Some(2)).await;
        let error = d["last_error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
        assert_eq!(d["last_status_code"], Value::Null);
        assert_eq!(d["status"], "pending");
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn a_replica_killed_mid_delivery_costs_only_a_duplicate() {
    let db = TestDb::new();
    let upstream = FakeUpstream::start(&[]);
    let receiver = Receiver::start(&[Reply::Hang]);
    let env = [
        ("OPENBATCH__WORKER__ENABLED", "true"),
        ("OPENBATCH__UPSTREAM__BASE_URL", upstream.base_url.as_str()),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
        ("OPENBATCH__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
        // The lease is the timeout plus 15 s: the killed replica's claim lapses after ~20 s.
        ("OPENBATCH__WEBHOOKS__TIMEOUT_SECS", "5"),
        ("OPENBATCH__WEBHOOKS__POLL_INTERVAL_MS", "200"),
    ];
    let mut first = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&first[0].address, &db.url).await;
    let endpoint = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let ep = endpoint["id"].as_str().unwrap().to_owned();
    let batch = app
        .submit(
            "/v1/chat/completions",
            to_jsonl(&[chat_line("a", json!({}))]),
        )
        .await;
    app.wait_for(&batch, &["completed"]).await;
    // The first attempt is in flight (the receiver holds it): kill the replica sending it.
    receiver
        .wait_until("the first attempt", |g| !g.is_empty())
        .await;
    first[0].kill();

    let second = start_replicas_with(1, &db.url, &env).await;
    let app = TestApp::connect(&second[0].address, &db.url).await;
    let got = receiver
        .wait_until("the attempt of the surviving replica", |g| g.len() >= 2)
        .await;
    assert_eq!(got[1].id, got[0].id, "the same webhook-id");
    assert!(verifies(&got[1], &secret));
    let d = wait_for_delivery(&app, &ep, |d| d["status"] == "delivered").await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_until_the_grace_period_ends() {
    let upstream = FakeUpstream::start(&[]);
    let app = webhook_engine(&upstream, |_| {}).await;
    let receiver = Receiver::start(&[]);
    let created = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let ep = created["id"].as_str().unwrap();
    let old = created["secret"].as_str().unwrap();
    let rotated = app
        .post(&format!("/v1/webhook_endpoints/{ep}/rotate_secret"))
        .expect(200)
        .await;
    let new = rotated["secret"].as_str().unwrap();

    let b1 = failing_batch(&app).await;
    app.wait_for(&b1, &["failed"]).await;
    let got = receiver
        .wait_until("the first event", |g| !g.is_empty())
        .await;
    assert_eq!(got[0].signature.split(' ').count(), 2, "{:?}", got[0]);
    assert!(verifies(&got[0], old), "the old secret still verifies");
    assert!(verifies(&got[0], new), "and so does the new one");

    // Rotate again with no grace: only the newest secret signs from now on.
    let newest = app
        .post(&format!("/v1/webhook_endpoints/{ep}/rotate_secret"))
        .json(&json!({"grace_period_seconds": 0}))
        .expect(200)
        .await;
    assert_eq!(newest["previous_secret_expires_at"], Value::Null);
    let newest = newest["secret"].as_str().unwrap();
    let b2 = failing_batch(&app).await;
    app.wait_for(&b2, &["failed"]).await;
    let got = receiver
        .wait_until("the second event", |g| g.len() >= 2)
        .await;
    assert_eq!(got[1].signature.split(' ').count(), 1);
    assert!(verifies(&got[1], newest));
    assert!(!verifies(&got[1], new));
    assert!(!verifies(&got[1], old));
}

/// Runs the CLI without blocking this test's runtime, which also drives the app under test.
async fn cli(app: &TestApp, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_openbatch"))
        .args(args)
        .env("OPENAI_BASE_URL", app.url("/v1"))
        .env_remove("OPENAI_API_KEY")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the CLI never finished")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_manages_endpoints() {
    let app = spawn_app_with(|s| s.webhooks.allow_private_networks = false).await;
    let (code, stdout, stderr) = cli(
        &app,
        &[
            "webhooks",
            "create",
            "https://example.com/hook",
            "--events",
            "batch.completed,batch.failed",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().starts_with("whsec_"), "{stdout}");
    let id = stderr.split_whitespace().nth(1).unwrap().to_owned();
    assert!(id.starts_with("we_"), "{stderr}");
    let (code, stdout, _) = cli(&app, &["webhooks", "list"]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&id) && stdout.contains("batch.completed,batch.failed"),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&app, &["webhooks", "get", &id, "--json"]).await;
    assert_eq!(code, Some(0));
    let got: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(got["url"], "https://example.com/hook");
    let (code, stdout, _) = cli(&app, &["webhooks", "rotate", &id]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.trim().starts_with("whsec_"));
    let (code, _, stderr) = cli(&app, &["webhooks", "deliveries", &id]).await;
    assert_eq!(code, Some(0));
    assert!(stderr.contains("no deliveries"));
    let (code, _, stderr) = cli(&app, &["webhooks", "create", "http://10.0.0.1/"]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("non-public") && stderr.contains("HTTP 400"),
        "{stderr}"
    );
    let (code, _, _) = cli(&app, &["webhooks", "delete", &id]).await;
    assert_eq!(code, Some(0));
    let (code, _, stderr) = cli(&app, &["webhooks", "get", &id]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("webhook_endpoint_not_found"), "{stderr}");
}

#[tokio::test]
async fn the_openapi_document_marks_every_webhook_route_as_an_extension() {
    let app = spawn_app_with(|_| {}).await;
    let spec = app.get_json("/openapi.json").await;
    let paths = spec["paths"].as_object().unwrap();
    let ours: Vec<_> = paths
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/webhook_endpoints"))
        .collect();
    assert_eq!(ours.len(), 5, "{:?}", paths.keys());
    let mut operations = 0;
    for (path, item) in ours {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "delete"].contains(&method.as_str()) {
                assert_eq!(op["x-openbatch-extension"], true, "{method} {path}");
                operations += 1;
            }
        }
    }
    assert_eq!(operations, 7);
}

#[tokio::test]
async fn an_event_not_delivered_within_the_retry_window_is_given_up() {
    let upstream = FakeUpstream::start(&[]);
    // A window of 0 s: the first failed attempt is also the last.
    let app = webhook_engine(&upstream, |s| s.webhooks.max_retry_secs = 0).await;
    let receiver = Receiver::start(&[]);
    receiver.answer_from_now_on(503);
    let ep = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let ep = ep["id"].as_str().unwrap();
    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    let d = wait_for_delivery(&app, ep, |d| d["status"] != "pending").await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 503);
    assert_eq!(d["next_attempt_at"], Value::Null);
    assert_eq!(d["delivered_at"], Value::Null);
    // A later event still goes out: giving up on one event does not stop the endpoint.
    receiver.answer_from_now_on(200);
    let second = failing_batch(&app).await;
    app.wait_for(&second, &["failed"]).await;
    wait_for_delivery(&app, ep, |d| {
        d["batch_id"] == second.as_str() && d["status"] == "delivered"
    })
    .await;
    assert_eq!(
        receiver.received().len(),
        2,
        "the given-up event was not sent again"
    );
}

#[tokio::test]
async fn the_maintainer_prunes_finished_deliveries_but_never_pending_ones() {
    let upstream = FakeUpstream::start(&[]);
    let app = webhook_engine(&upstream, |s| {
        s.webhooks.log_retention_secs = 0;
        s.webhooks.retry_base_ms = 3_600_000;
        s.webhooks.retry_max_ms = 3_600_000;
    })
    .await;
    let ok = Receiver::start(&[]);
    let failing = Receiver::start(&[]);
    failing.answer_from_now_on(500);
    let ok_ep = create_endpoint(&app, json!({ "url": ok.url })).await;
    let failing_ep = create_endpoint(&app, json!({ "url": failing.url })).await;
    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    ok.wait_until("the event", |g| !g.is_empty()).await;
    failing.wait_until("the event", |g| !g.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !deliveries(&app, ok_ep["id"].as_str().unwrap())
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the delivered entry was never pruned"
        );
        // Pruning announces nothing: the log is polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = deliveries(&app, failing_ep["id"].as_str().unwrap()).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["status"], "pending");
}

#[tokio::test]
async fn an_attempt_times_out_and_a_redirect_is_a_failure_not_followed() {
    let upstream = FakeUpstream::start(&[]);
    let app = webhook_engine(&upstream, |s| s.webhooks.timeout_secs = 1).await;
    let receiver = Receiver::start(&[Reply::Hang, Reply::Redirect]);
    let ep = create_endpoint(&app, json!({ "url": receiver.url })).await;
    let ep = ep["id"].as_str().unwrap();
    let failed = failing_batch(&app).await;
    app.wait_for(&failed, &["failed"]).await;
    let d = wait_for_delivery(&app, ep, |d| d["status"] == "delivered").await;
    assert_eq!(d["attempts"], 3, "a timeout, a redirect, a success: {d}");
    let got = receiver.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter().all(|r| r.path == "/hook"),
        "the redirect was not followed: {got:?}"
    );
}
