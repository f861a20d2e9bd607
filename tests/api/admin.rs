//! The Admin API (OpenAI's `/v1/organization/*`) through real replica processes: an admin key
//! made by the CLI creates a project and a service account, whose key runs a batch on another
//! replica; keys are refused where their scope does not reach; archiving a project or
//! revoking a key stops it on every replica well before the key copy's fallback reload.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{
    admin_key, chat_line, engine_env, expect_error, openbatch_command, start_replicas_with,
    to_jsonl, wait_for_key_status, Expect, FakeUpstream, TestApp, TestDb,
};

/// Hang guard only, far below the key copy's 300 s fallback reload these replicas use: a key
/// that stops working within it was stopped by the NOTIFY.
const DEADLINE: Duration = Duration::from_secs(30);
const NOTIFIED_ONLY: [(&str, &str); 2] = [
    ("OPENBATCH__AUTH__ENABLED", "true"),
    ("OPENBATCH__AUTH__CACHE_SECS", "300"),
];

async fn post_json(app: &TestApp, path: &str, body: Value) -> Value {
    app.post(path).json(&body).expect(200).await
}

#[tokio::test]
async fn an_admin_makes_a_project_whose_service_account_key_runs_a_batch_until_archived() {
    let upstream = FakeUpstream::start(&[]);
    let db = TestDb::new();
    let replicas = start_replicas_with(2, &db.url, &engine_env(&upstream, &NOTIFIED_ONLY)).await;
    let admin = TestApp::connect_with_key(&replicas[0].address, &db.url, &admin_key(&db.url)).await;

    let project = post_json(
        &admin,
        "/v1/organization/projects",
        json!({"name": "team-a"}),
    )
    .await;
    assert_eq!(project["object"], "organization.project");
    assert_eq!(project["status"], "active");
    assert_eq!(project["archived_at"], Value::Null);
    let pid = project["id"].as_str().unwrap().to_owned();
    let made = post_json(
        &admin,
        &format!("/v1/organization/projects/{pid}/service_accounts"),
        json!({"name": "ci"}),
    )
    .await;
    assert_eq!(made["object"], "organization.project.service_account");
    assert_eq!(made["role"], "member");
    assert_eq!(
        made["api_key"]["object"],
        "organization.project.service_account.api_key"
    );
    let secret = made["api_key"]["value"].as_str().unwrap();
    let key_id = made["api_key"]["id"].as_str().unwrap().to_owned();

    // The new key works on the other replica at once, and runs a batch there.
    let user = TestApp::connect_with_key(&replicas[1].address, &db.url, secret).await;
    let lines: Vec<Value> = (0..3)
        .map(|i| chat_line(&format!("r{i}"), json!({})))
        .collect();
    let id = user.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    let done = user.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 3);

    // The key as the Admin API shows it: its owner, and its last use (recorded in the
    // background, so read until it is there).
    let keys_path = format!("/v1/organization/projects/{pid}/api_keys");
    let deadline = Instant::now() + DEADLINE;
    let listed = loop {
        let listed = admin.get_json(&keys_path).await;
        if listed["data"][0]["last_used_at"].is_i64() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["has_more"], false);
    let key = &listed["data"][0];
    assert_eq!(key["object"], "organization.project.api_key");
    assert_eq!(key["id"], key_id.as_str());
    assert_eq!(listed["first_id"], key_id.as_str());
    assert!(secret.starts_with(
        key["redacted_value"]
            .as_str()
            .unwrap()
            .trim_end_matches("_****")
    ));
    assert!(!key["redacted_value"]
        .as_str()
        .unwrap()
        .contains(&secret[17..]));
    assert!(key["last_used_at"].is_i64(), "{key}");
    assert_eq!(key["owner"]["type"], "service_account");
    assert_eq!(key["owner"]["service_account"]["id"], made["id"]);
    let one = admin.get_json(&format!("{keys_path}/{key_id}")).await;
    assert_eq!(&one, key);

    // Scopes: a project key cannot use the Admin API, an admin key nothing else.
    let err = user
        .get("/v1/organization/projects")
        .expect_error(403)
        .await;
    assert_eq!(err["code"], "insufficient_permissions");
    let err = admin.get("/v1/files").expect_error(403).await;
    assert_eq!(err["code"], "insufficient_permissions");

    // Archived: the key stops on every replica (the copy was told), the project stays visible.
    let archived = post_json(
        &admin,
        &format!("/v1/organization/projects/{pid}/archive"),
        json!({}),
    )
    .await;
    assert_eq!(archived["status"], "archived");
    assert!(archived["archived_at"].is_i64());
    wait_for_key_status(&[&user], 401, "a key of an archived project").await;
    let on_first = TestApp::connect_with_key(&replicas[0].address, &db.url, secret).await;
    wait_for_key_status(&[&on_first], 401, "a key of an archived project").await;
    let listed = admin.get_json("/v1/organization/projects").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["id"] != pid.as_str()));
    let listed = admin
        .get_json("/v1/organization/projects?include_archived=true")
        .await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == pid.as_str()));
    // Its data stays, and an admin may read it (never change it) by naming the project.
    let read = admin
        .get(&format!("/v1/batches/{id}"))
        .header("OpenAI-Project", &pid)
        .expect(200)
        .await;
    assert_eq!(read["status"], "completed");
    let out = read["output_file_id"].as_str().unwrap();
    let content = admin
        .get(&format!("/v1/files/{out}/content"))
        .header("OpenAI-Project", &pid)
        .expect_response(200)
        .await;
    assert_eq!(content.text().await.unwrap().lines().count(), 3);
    let err = admin
        .post(&format!("/v1/batches/{id}/cancel"))
        .header("OpenAI-Project", &pid)
        .expect_error(403)
        .await;
    assert_eq!(err["code"], "insufficient_permissions");
    let err = admin
        .get("/v1/files")
        .header("OpenAI-Project", "proj_nope")
        .expect_error(404)
        .await;
    assert_eq!(err["code"], "project_not_found");
    let err = admin
        .post(&format!("/v1/organization/projects/{pid}/service_accounts"))
        .json(&json!({"name": "late"}))
        .expect_error(400)
        .await;
    assert_eq!(err["code"], "project_archived");
    let err = admin
        .post(&format!("/v1/organization/projects/{pid}"))
        .json(&json!({"name": "team-a2"}))
        .expect_error(400)
        .await;
    assert_eq!(err["code"], "project_archived");
}

#[tokio::test]
async fn a_deleted_key_or_service_account_stops_on_every_replica() {
    let db = TestDb::new();
    let env = [
        NOTIFIED_ONLY[0],
        NOTIFIED_ONLY[1],
        ("OPENBATCH__WORKER__ENABLED", "false"),
    ];
    let replicas = start_replicas_with(2, &db.url, &env).await;
    let admin = TestApp::connect_with_key(&replicas[0].address, &db.url, &admin_key(&db.url)).await;
    let pid = post_json(
        &admin,
        "/v1/organization/projects",
        json!({"name": "team-b"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let accounts = format!("/v1/organization/projects/{pid}/service_accounts");
    let first = post_json(&admin, &accounts, json!({"name": "one"})).await;
    let second = post_json(&admin, &accounts, json!({"name": "two"})).await;
    let users: Vec<TestApp> = futures_util::future::join_all([&first, &second].map(|made| {
        TestApp::connect_with_key(
            &replicas[1].address,
            &db.url,
            made["api_key"]["value"].as_str().unwrap(),
        )
    }))
    .await;
    for user in &users {
        wait_for_key_status(&[user], 200, "a new key").await;
    }

    // Pages of one, oldest first, each naming the next by `after`.
    let page = admin.get_json(&format!("{accounts}?limit=1")).await;
    assert_eq!(page["data"][0]["id"], first["id"]);
    assert_eq!(page["has_more"], true);
    let after = page["last_id"].as_str().unwrap();
    let page = admin
        .get_json(&format!("{accounts}?limit=1&after={after}"))
        .await;
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!(page["has_more"], false);

    let key_id = first["api_key"]["id"].as_str().unwrap();
    let gone = admin
        .delete(&format!(
            "/v1/organization/projects/{pid}/api_keys/{key_id}"
        ))
        .expect(200)
        .await;
    assert_eq!(
        gone,
        json!({"object": "organization.project.api_key.deleted", "id": key_id, "deleted": true})
    );
    wait_for_key_status(&[&users[0]], 401, "a deleted key").await;
    admin
        .delete(&format!(
            "/v1/organization/projects/{pid}/api_keys/{key_id}"
        ))
        .expect_error(404)
        .await;

    let sid = second["id"].as_str().unwrap();
    let gone = admin.delete(&format!("{accounts}/{sid}")).expect(200).await;
    assert_eq!(
        gone["object"],
        "organization.project.service_account.deleted"
    );
    wait_for_key_status(&[&users[1]], 401, "a deleted service account's key").await;
    admin
        .get(&format!("{accounts}/{sid}"))
        .expect_error(404)
        .await;
    let left = admin
        .get_json(&format!("/v1/organization/projects/{pid}/api_keys"))
        .await;
    assert_eq!(left["data"], json!([]));
    assert_eq!(left["first_id"], Value::Null);
}

#[tokio::test]
async fn admin_api_errors_are_openai_errors() {
    let db = TestDb::new();
    let env = [
        NOTIFIED_ONLY[0],
        NOTIFIED_ONLY[1],
        ("OPENBATCH__WORKER__ENABLED", "false"),
    ];
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let admin = TestApp::connect_with_key(&replicas[0].address, &db.url, &admin_key(&db.url)).await;
    let anonymous = TestApp::connect(&replicas[0].address, &db.url).await;
    let err = anonymous
        .get("/v1/organization/projects")
        .expect_error(401)
        .await;
    assert_eq!(err["code"], "invalid_api_key");

    let bad_bodies = [
        (json!({}), "missing_required_parameter"),
        (json!({"name": ""}), "invalid_value"),
        (json!({"name": "DEFAULT"}), "invalid_value"),
        (json!({"name": 5}), "invalid_type"),
    ];
    for (body, code) in bad_bodies {
        let err = admin
            .post("/v1/organization/projects")
            .json(&body)
            .expect_error(400)
            .await;
        assert_eq!(err["code"], code, "{body}");
        assert_eq!(err["param"], "name", "{body}");
    }
    post_json(
        &admin,
        "/v1/organization/projects",
        json!({"name": "taken"}),
    )
    .await;
    let err = admin
        .post("/v1/organization/projects")
        .json(&json!({"name": "taken"}))
        .expect_error(400)
        .await;
    assert_eq!(err["code"], "project_name_taken");
    for path in [
        "/v1/organization/projects/proj_default",
        "/v1/organization/projects/proj_default/archive",
    ] {
        let err = admin
            .post(path)
            .json(&json!({"name": "renamed"}))
            .expect_error(400)
            .await;
        assert_eq!(err["code"], "built_in_project", "{path}");
    }
    let missing = [
        ("/v1/organization/projects/proj_nope", "project_not_found"),
        (
            "/v1/organization/projects/proj_nope/api_keys",
            "project_not_found",
        ),
        (
            "/v1/organization/projects/proj_default/service_accounts/svc_acct_nope",
            "service_account_not_found",
        ),
        (
            "/v1/organization/projects/proj_default/api_keys/key_nope",
            "api_key_not_found",
        ),
    ];
    for (path, code) in missing {
        let err = expect_error(admin.get(path).send().await.unwrap(), 404).await;
        assert_eq!(err["code"], code, "{path}");
    }
    let err = admin
        .get("/v1/organization/projects?limit=0")
        .expect_error(400)
        .await;
    assert_eq!(err["param"], "limit");
    let err = admin
        .get("/v1/organization/projects?after=proj_nope")
        .expect_error(400)
        .await;
    assert_eq!(err["param"], "after");
    // The built-in project is listed, first, as OpenAI lists its default project.
    let listed = admin.get_json("/v1/organization/projects").await;
    assert_eq!(listed["data"][0]["id"], "proj_default");
}

/// `openbatch keys …` as a client of the Admin API (`OPENAI_ADMIN_KEY` set): its stdout, or
/// its stderr when it fails.
fn try_keys_via_api(replica: &str, admin: &str, args: &[&str]) -> Result<String, String> {
    let out = openbatch_command("postgres://unused.invalid/none")
        .env("OPENAI_ADMIN_KEY", admin)
        .env("OPENAI_BASE_URL", format!("{replica}/v1"))
        .arg("keys")
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn keys_via_api(replica: &str, admin: &str, args: &[&str]) -> String {
    try_keys_via_api(replica, admin, args).unwrap()
}

#[tokio::test]
async fn the_keys_cli_is_a_client_of_the_admin_api_when_given_an_admin_key() {
    let db = TestDb::new();
    let env = [
        NOTIFIED_ONLY[0],
        NOTIFIED_ONLY[1],
        ("OPENBATCH__WORKER__ENABLED", "false"),
    ];
    let replicas = start_replicas_with(1, &db.url, &env).await;
    let address = &replicas[0].address;
    let admin = admin_key(&db.url);

    // The database URL given is unreachable: everything goes through the API.
    let key = keys_via_api(address, &admin, &["create", "--project", "team-c"]);
    let user = TestApp::connect_with_key(address, &db.url, &key).await;
    wait_for_key_status(&[&user], 200, "a key made through the API").await;
    let again = keys_via_api(address, &admin, &["create", "--project", "team-c"]);
    assert_ne!(again, key, "a second key of the same project");
    let listed = keys_via_api(address, &admin, &["list"]);
    let prefix = &key[..16];
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains("team-c")),
        "{listed}"
    );
    assert!(!listed.contains(&key[17..]), "a secret is listed");

    keys_via_api(address, &admin, &["revoke", prefix]);
    wait_for_key_status(&[&user], 401, "a key revoked through the API").await;
    // What the API cannot do is refused, naming why; a key no project has is not found.
    let refusals = [
        (vec!["create", "--admin"], "made with the database"),
        (vec!["revoke", prefix], "no active key"),
        (vec!["revoke", "key_0123"], "not a key prefix"),
    ];
    for (args, says) in refusals {
        let err = try_keys_via_api(address, &admin, &args).unwrap_err();
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let other = TestApp::connect_with_key(address, &db.url, &again).await;
    wait_for_key_status(&[&other], 200, "the project's other key").await;
}
