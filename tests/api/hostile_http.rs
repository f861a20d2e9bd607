//! What a client or a web page can send to any replica without a key: junk methods and paths
//! (metric labels), rebound host names and cross-site writes (with authentication off).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{key_for, spawn_app, spawn_app_with, start_replicas, Expect, TestApp, TestDb};

/// The series `/metrics` holds (each sample's name and labels, without its value).
async fn series(address: &str) -> BTreeSet<String> {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').expect("a sample").0.to_owned())
        .collect()
}

/// The series once the database gauges have been read the first time: the replica's refresher
/// sets them on its own schedule, and a first read that timed out on a loaded machine would let
/// them appear between two snapshots.
async fn settled_series(address: &str) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = series(address).await;
        let gauges = [
            "_batches{status=\"validating\"}",
            "_work_queue_lines{state=\"pending\"}",
            "_work_queue_lines{state=\"running\"}",
        ];
        if gauges.iter().all(|g| now.iter().any(|s| s.ends_with(g))) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database gauges never appeared: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn junk_requests(client: &reqwest::Client, address: &str, n: usize) {
    for _ in 0..n {
        let junk = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let method = reqwest::Method::from_bytes(junk.repeat(6).as_bytes()).unwrap();
        let res = client
            .request(method, format!("{address}/v1/files"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        for path in [
            format!("/v1/{junk}"),
            format!("/{junk}/x"),
            format!("/v1/files/{junk}/content/x"),
        ] {
            let res = client.get(format!("{address}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 404, "{path}");
        }
    }
}

/// A replica process of its own: `/metrics` is per process, and tests in this binary share one.
#[tokio::test]
async fn junk_methods_and_unknown_paths_do_not_grow_the_metrics() {
    let db = TestDb::new();
    let replica = &start_replicas(1, &db.url).await[0];
    let client = reqwest::Client::new();
    // The first of each kind may add its series (`OTHER`, `unmatched`); no later one may.
    // So does the first scrape, which is counted after it renders.
    junk_requests(&client, &replica.address, 3).await;
    series(&replica.address).await;
    let before = settled_series(&replica.address).await;
    junk_requests(&client, &replica.address, 300).await;
    let after = series(&replica.address).await;
    let grown: Vec<_> = after.difference(&before).collect();
    assert!(
        grown.is_empty(),
        "new series after junk requests: {grown:?}"
    );
    assert!(
        before.iter().any(|s| s.contains("method=\"OTHER\"")),
        "junk methods are counted as OTHER"
    );
    assert!(before.len() < 400, "{} series", before.len());
}

fn host(app: &TestApp, name: &str) -> String {
    let port = app.address.rsplit_once(':').unwrap().1;
    format!("{name}:{port}")
}

async fn stored_files(app: &TestApp) -> usize {
    let list: Value = app.get_json("/v1/files").await;
    list["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn with_auth_off_a_rebound_host_name_is_refused_and_loopback_names_are_served() {
    let app = spawn_app().await;
    for name in ["attacker.example", "localhost.attacker.example", "10.0.0.5"] {
        let err = app
            .get("/v1/files")
            .header("host", host(&app, name))
            .expect_error(403)
            .await;
        assert_eq!(err["code"], "host_not_allowed", "{name}");
        assert!(
            err["message"].as_str().unwrap().contains("ALLOWED_HOSTS"),
            "{err}"
        );
        // The console and the OpenAPI document are refused as well; probes are not.
        app.get("/console")
            .header("host", host(&app, name))
            .expect_response(403)
            .await;
        app.get("/readyz")
            .header("host", host(&app, name))
            .expect_response(200)
            .await;
    }
    for name in ["localhost", "127.0.0.1", "[::1]"] {
        app.get("/v1/files")
            .header("host", host(&app, name))
            .expect(200)
            .await;
    }
    // A write under a rebound name never reaches the handler.
    app.upload("batch", "a.jsonl", b"{}\n".to_vec())
        .header("host", host(&app, "attacker.example"))
        .expect_error(403)
        .await;
    assert_eq!(stored_files(&app).await, 0);
}

#[tokio::test]
async fn listed_host_names_are_served_with_auth_off() {
    let app = spawn_app_with(|s| s.server.allowed_hosts = vec!["batch.internal".into()]).await;
    app.get("/v1/files")
        .header("host", host(&app, "batch.internal"))
        .expect(200)
        .await;
    let err = app
        .get("/v1/files")
        .header("host", host(&app, "other.internal"))
        .expect_error(403)
        .await;
    assert_eq!(err["code"], "host_not_allowed");
}

#[tokio::test]
async fn with_auth_off_cross_site_writes_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let cross_site = [
        [
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        // Another program's page on this machine is the same site, not the same origin.
        [
            ("sec-fetch-site", "same-site"),
            ("origin", "http://127.0.0.1:3000"),
        ],
    ];
    for headers in &cross_site {
        let mut upload = app.upload("batch", "a.jsonl", b"{}\n".to_vec());
        let mut create = app.create_batch(&crate::helpers::batch_body("file-0"));
        for (k, v) in headers {
            upload = upload.header(*k, *v);
            create = create.header(*k, *v);
        }
        assert_eq!(upload.expect_error(403).await["code"], "cross_site_request");
        assert_eq!(create.expect_error(403).await["code"], "cross_site_request");
    }
    // A browser older than Sec-Fetch-Site still sends Origin on a cross-origin write.
    let err = app
        .upload("batch", "a.jsonl", b"{}\n".to_vec())
        .header("origin", "http://evil.example")
        .expect_error(403)
        .await;
    assert_eq!(err["code"], "cross_site_request");
    assert_eq!(stored_files(&app).await, 0);
    assert_eq!(app.count_batches().await, 0);

    // The console's own requests, and API clients (no browser headers), are served.
    let own_origin = app.address.clone();
    app.upload("batch", "a.jsonl", b"{}\n".to_vec())
        .header("sec-fetch-site", "same-origin")
        .header("origin", own_origin.as_str())
        .expect(200)
        .await;
    app.upload("batch", "b.jsonl", b"{}\n".to_vec())
        .expect(200)
        .await;
    assert_eq!(stored_files(&app).await, 2);
}

#[tokio::test]
async fn with_auth_on_host_and_origin_change_nothing_for_api_clients() {
    let app = spawn_app_with(|s| s.auth.enabled = true).await;
    let key = key_for(&app.pool, "alpha").await;
    app.upload("batch", "a.jsonl", b"{}\n".to_vec())
        .bearer_auth(&key)
        .header("host", host(&app, "batch.example.com"))
        .header("origin", "https://tools.example.com")
        .expect(200)
        .await;
    app.get("/v1/files")
        .bearer_auth(&key)
        .header("host", host(&app, "batch.example.com"))
        .expect(200)
        .await;
}
