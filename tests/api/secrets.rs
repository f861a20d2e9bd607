//! Secrets (the database password, the upstream key, API keys) never reach the logs, even at
//! debug level, through a whole batch's life and failed logins.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    chat_line, openbatch_command, to_jsonl, Expect, FakeUpstream, TestApp, TestDb,
};

#[tokio::test]
async fn no_secret_appears_in_the_logs() {
    const DB_PASSWORD: &str = "hunter2-database-password";
    const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";
    let upstream = FakeUpstream::start(&[]);
    // The local server trusts every login, so the password is carried but never checked.
    let db = TestDb::new();
    let url = db
        .url
        .replace("postgres@", &format!("postgres:{DB_PASSWORD}@"));
    let log_path =
        std::env::temp_dir().join(format!("ob-secrets-{}.log", uuid::Uuid::new_v4().simple()));

    let key_out = openbatch_command(&url)
        .args(["keys", "create", "--project", "secretive"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(key_out.status.success());
    let key = String::from_utf8(key_out.stdout).unwrap().trim().to_owned();
    let mut logs = String::from_utf8_lossy(&key_out.stderr).into_owned();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = openbatch_command(&url)
        .arg("serve")
        .env("RUST_LOG", "debug")
        .env("OPENBATCH__SERVER__PORT", port.to_string())
        .env("OPENBATCH__AUTH__ENABLED", "true")
        .env("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url)
        .env("OPENBATCH__UPSTREAM__API_KEY", UPSTREAM_KEY)
        .env("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .default_headers({
                let mut h = reqwest::header::HeaderMap::new();
                h.insert("authorization", format!("Bearer {key}").parse().unwrap());
                h
            })
            .build()
            .unwrap(),
        pool: sqlx::PgPool::connect(&url).await.unwrap(),
        _db: None,
    };
    for _ in 0..600 {
        if app
            .get("/readyz")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let id = app
        .submit(
            "/v1/chat/completions",
            to_jsonl(&[chat_line("s1", json!({})), chat_line("s2", json!({}))]),
        )
        .await;
    let batch = app.wait_for(&id, &["completed"]).await;
    assert_eq!(batch["request_counts"]["completed"], 2);
    // A near-miss key and a foreign one are refused without being repeated back.
    // Differs from the real key in its last character (whatever that character is).
    let last = if key.ends_with('0') { '1' } else { '0' };
    let near_miss = format!("{}{last}", &key[..key.len() - 1]);
    for wrong in [near_miss.as_str(), "sk-someone-elses-openai-key-987654"] {
        let res = reqwest::Client::new()
            .get(app.url("/v1/batches"))
            .bearer_auth(wrong)
            .expect_response(401)
            .await;
        assert!(!res.text().await.unwrap().contains(wrong));
    }

    child.kill().unwrap();
    child.wait().unwrap();
    logs.push_str(&std::fs::read_to_string(&log_path).unwrap());
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("batch finished"),
        "the log covers the batch's life"
    );
    for secret in [
        DB_PASSWORD,
        UPSTREAM_KEY,
        key.as_str(),
        &key[key.len() - 64..],
        near_miss.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs: {secret}"
        );
    }
}
