//! Secrets (the database password, the upstream key, API keys) never reach the logs, even at
//! debug level, through a whole batch's life and failed logins — on a real replica in the
//! abuse harness ([`Stack`]), which also checks that it stays ready and bounded and that
//! another project's batches complete meanwhile.

use serde_json::json;

use crate::abuse::Stack;
use crate::helpers::{chat_line, openbatch_command, to_jsonl, Expect, TestDb};

#[tokio::test]
async fn no_secret_appears_in_the_logs() {
    const DB_PASSWORD: &str = "hunter2-database-password";
    const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";
    // The local server trusts every login, so the password is carried but never checked.
    let mut db = TestDb::new();
    db.url = db
        .url
        .replace("postgres@", &format!("postgres:{DB_PASSWORD}@"));
    let url = db.url.clone();
    let log_path =
        std::env::temp_dir().join(format!("ob-secrets-{}.log", uuid::Uuid::new_v4().simple()));
    // One replica, so that the whole life of every batch is in its log.
    let stack = Stack::start_inner(
        Some(db),
        &url,
        &[("OPENBATCH__UPSTREAM__API_KEY", UPSTREAM_KEY)],
        &[&[("RUST_LOG", "debug")]],
        Some(&log_path),
    )
    .await;

    let key_out = openbatch_command(&url)
        .args(["keys", "create", "--project", "secretive"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(key_out.status.success());
    let key = String::from_utf8(key_out.stdout).unwrap().trim().to_owned();
    let mut logs = String::from_utf8_lossy(&key_out.stderr).into_owned();
    let mut app = crate::helpers::TestApp::connect(&stack.replicas[0].address, &url).await;
    app.client = crate::abuse::client_with_key(&key);

    // Differs from the real key in its last character (whatever that character is).
    let last = if key.ends_with('0') { '1' } else { '0' };
    let near_miss = format!("{}{last}", &key[..key.len() - 1]);
    stack
        .under_attack(async {
            let id = app
                .submit(
                    "/v1/chat/completions",
                    to_jsonl(&[chat_line("s1", json!({})), chat_line("s2", json!({}))]),
                )
                .await;
            let batch = app.wait_for(&id, &["completed"]).await;
            assert_eq!(batch["request_counts"]["completed"], 2);
            // A near-miss key and a foreign one are refused without being repeated back.
            for wrong in [near_miss.as_str(), "sk-someone-elses-openai-key-987654"] {
                let res = reqwest::Client::new()
                    .get(app.url("/v1/batches"))
                    .bearer_auth(wrong)
                    .expect_response(401)
                    .await;
                assert!(!res.text().await.unwrap().contains(wrong));
            }
        })
        .await;
    let (attacker_key, victim_key) = (stack.attacker_key.clone(), stack.victim_key.clone());
    stack.finish().await;

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
        attacker_key.as_str(),
        victim_key.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs: {secret}"
        );
    }
}
