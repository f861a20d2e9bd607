//! Tenancy: API keys, isolation between projects, and the limits that bound abuse.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::helpers::{
    batch_body, expect_error, openbatch_command, spawn_app_with, Expect, TestApp, TestDb,
};
use openbatch::domain::ApiKey;
use openbatch::store::keys;

async fn key_for(app: &TestApp, project: &str) -> String {
    crate::helpers::key_for(&app.pool, project).await
}

async fn secured_app() -> TestApp {
    spawn_app_with(|s| {
        s.auth.enabled = true;
        s.auth.cache_secs = 0;
    })
    .await
}

#[tokio::test]
async fn requests_without_a_valid_key_are_401_with_the_openai_envelope() {
    let app = secured_app().await;
    let good = key_for(&app, "alpha").await;
    let wellformed_unknown = ApiKey::generate().secret;
    let cases: Vec<Option<String>> = vec![
        None,
        Some("Bearer".to_owned()),
        Some("Basic dXNlcjpwYXNz".to_owned()),
        Some("Bearer sk-not-ours".to_owned()),
        Some(format!("Bearer {wellformed_unknown}")),
        Some(format!("Bearer {}x", &good[..good.len() - 1])),
    ];
    for auth in cases {
        for (method, path) in [
            ("GET", "/v1/batches"),
            ("POST", "/v1/batches"),
            ("GET", "/v1/files"),
            ("GET", "/v1/files/file-x/content"),
        ] {
            let mut req = app.request(method, path);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let err = req.expect_error(401).await;
            assert_eq!(err["code"], "invalid_api_key", "{auth:?} {path}");
            assert_eq!(err["type"], "invalid_request_error");
            let msg = err["message"].as_str().unwrap();
            assert!(
                !msg.contains(&wellformed_unknown),
                "the presented key is echoed: {msg}"
            );
        }
    }
    // Health checks stay open for load balancers.
    app.get("/healthz").expect_response(200).await;
    app.get("/v1/batches")
        .bearer_auth(&good)
        .expect_response(200)
        .await;
}

#[tokio::test]
async fn a_revoked_key_stops_working() {
    let app = secured_app().await;
    let key = key_for(&app, "alpha").await;
    app.get("/v1/files")
        .bearer_auth(&key)
        .expect_response(200)
        .await;
    let prefix = ApiKey::parse(&key).unwrap().prefix;
    assert!(keys::revoke(&app.pool, &prefix).await.unwrap());
    app.get("/v1/files")
        .bearer_auth(&key)
        .expect_error(401)
        .await;
    assert!(
        !keys::revoke(&app.pool, &prefix).await.unwrap(),
        "revoking twice"
    );
}

#[tokio::test]
async fn projects_cannot_see_or_touch_each_others_files_and_batches() {
    let app = secured_app().await;
    let a = key_for(&app, "alpha").await;
    let b = key_for(&app, "beta").await;
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"{}\n".to_vec()).file_name("a.jsonl"),
        );
    let file = app
        .post("/v1/files")
        .bearer_auth(&a)
        .multipart(form)
        .expect(200)
        .await;
    let file_id = file["id"].as_str().unwrap().to_owned();
    let mut body = batch_body(&file_id);
    body["idempotency_key"] = json!("shared-key");
    let batch = app
        .post("/v1/batches")
        .bearer_auth(&a)
        .json(&body)
        .expect(200)
        .await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();

    // Every way B could reach A's objects answers exactly as for objects that do not exist.
    let probes = [
        ("GET", format!("/v1/files/{file_id}")),
        ("GET", format!("/v1/files/{file_id}/content")),
        ("DELETE", format!("/v1/files/{file_id}")),
        ("GET", format!("/v1/batches/{batch_id}")),
        ("POST", format!("/v1/batches/{batch_id}/cancel")),
    ];
    for (method, path) in &probes {
        let theirs = app
            .request(method, path)
            .bearer_auth(&b)
            .expect_error(404)
            .await;
        let missing_path = path
            .replace(&file_id, "file-missing")
            .replace(&batch_id, "batch_missing");
        let missing = app
            .request(method, &missing_path)
            .bearer_auth(&b)
            .expect_error(404)
            .await;
        let shape =
            |e: &Value, id: &str, other: &str| e["message"].as_str().unwrap().replace(id, other);
        assert_eq!(
            shape(&theirs, &file_id, "X").replace(&batch_id, "X"),
            shape(&missing, "file-missing", "X").replace("batch_missing", "X")
        );
        assert_eq!(
            (&theirs["param"], &theirs["code"]),
            (&missing["param"], &missing["code"])
        );
    }
    for path in ["/v1/files", "/v1/batches"] {
        let list = app.get(path).bearer_auth(&b).expect(200).await;
        assert_eq!(list["data"], json!([]), "{path}");
    }
    // A cursor from another project is as unknown as a made-up one.
    app.get(&format!("/v1/batches?after={batch_id}"))
        .bearer_auth(&b)
        .expect_error(400)
        .await;

    // Idempotency keys are per project: B's "shared-key" is its own.
    body["input_file_id"] = json!("file-of-beta");
    let theirs = app
        .post("/v1/batches")
        .bearer_auth(&b)
        .json(&body)
        .expect_response(200)
        .await;
    assert!(!theirs.headers().contains_key("idempotent-replayed"));
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["id"], batch["id"]);

    // A's objects are untouched.
    let still = app
        .get(&format!("/v1/batches/{batch_id}"))
        .bearer_auth(&a)
        .expect(200)
        .await;
    assert_eq!(still, batch);
    let content = app
        .get(&format!("/v1/files/{file_id}/content"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(content.bytes().await.unwrap().as_ref(), b"{}\n");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.auth.enabled = true;
        s.limits.requests_per_minute_per_key = 3;
    })
    .await;
    let key = key_for(&app, "alpha").await;
    let other = key_for(&app, "beta").await;
    for _ in 0..3 {
        app.get("/v1/batches")
            .bearer_auth(&key)
            .expect_response(200)
            .await;
    }
    let res = app
        .get("/v1/batches")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    let err = expect_error(res, 429).await;
    assert_eq!(err["code"], "rate_limit_exceeded");
    app.get("/v1/batches")
        .bearer_auth(&other)
        .expect_response(200)
        .await;
}

#[tokio::test]
async fn a_project_may_hold_only_so_many_unfinished_batches() {
    let app = spawn_app_with(|s| s.limits.max_active_batches_per_project = 2).await;
    let mut keyed = batch_body("f");
    keyed["idempotency_key"] = json!("first");
    app.create_batch(&keyed).expect_response(200).await;
    app.create_batch(&batch_body("f"))
        .expect_response(200)
        .await;
    let res = app.create_batch(&batch_body("f")).send().await.unwrap();
    assert_eq!(res.headers()["x-should-retry"], "false");
    let err = expect_error(res, 429).await;
    assert_eq!(err["code"], "batch_limit_exceeded");
    // A replay is not a new batch, so it still answers.
    let replay = app.create_batch(&keyed).expect_response(200).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // Finished batches no longer count.
    sqlx::query("UPDATE batches SET status = 'completed'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.create_batch(&batch_body("f"))
        .expect_response(200)
        .await;
    assert_eq!(app.count_batches().await, 3);
}

#[test]
fn the_keys_cli_prints_a_key_once_and_can_list_and_revoke_it() {
    let db = TestDb::new();
    let url = db.url.clone();
    let run = |args: &[&str]| {
        let out = openbatch_command(&url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["keys", "create", "--project", "team-a"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: the key");
    let key = lines[0];
    let parsed = ApiKey::parse(key).expect("a well-formed key");
    assert!(!stderr.contains(key), "the key leaked to the log");

    let (ok, listing, _) = run(&["keys", "list"]);
    assert!(ok);
    assert!(
        listing.contains(&parsed.prefix)
            && listing.contains("team-a")
            && listing.contains("active")
    );
    assert!(!listing.contains(key));

    let (ok, _, _) = run(&["keys", "revoke", &parsed.prefix]);
    assert!(ok);
    let (_, listing, _) = run(&["keys", "list"]);
    assert!(listing.contains("revoked"));
    let (ok, _, stderr) = run(&["keys", "revoke", &parsed.prefix]);
    assert!(!ok && stderr.contains(&parsed.prefix));
    let (ok, _, _) = run(&["keys", "create", "--project", ""]);
    assert!(!ok);
}
