use secrecy::ExposeSecret;
use serde_json::json;

use crate::helpers::{expect_error, spawn_app, spawn_app_with, Expect};

#[tokio::test]
async fn malformed_bodies_get_clear_4xx_envelopes() {
    let app = spawn_app().await;
    let send = |ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = app.post("/v1/batches").body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    type Case = (Option<&'static str>, Vec<u8>, u16, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            Some("application/json"),
            b"{\"input_file_id\": ".to_vec(),
            400,
            Some("invalid_json"),
        ),
        (
            Some("application/json"),
            b"".to_vec(),
            400,
            Some("invalid_json"),
        ),
        (
            Some("application/json"),
            b"[]".to_vec(),
            400,
            Some("invalid_type"),
        ),
        (
            Some("application/json"),
            b"\"just a string\"".to_vec(),
            400,
            Some("invalid_type"),
        ),
        (
            Some("application/json"),
            b"{\"input_file_id\": \"\xff\xfe\"}".to_vec(),
            400,
            Some("invalid_json"),
        ),
        (
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
        (None, b"{}".to_vec(), 415, Some("unsupported_media_type")),
        (
            Some("application/x-www-form-urlencoded"),
            b"a=b".to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
    ];
    for (ct, body, status, code) in cases {
        let err = expect_error(send(ct, body.clone()).await.unwrap(), status).await;
        assert_eq!(
            err["code"].as_str(),
            code,
            "{ct:?} {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // With charset parameters the content type still counts as JSON.
    let res = app
        .post("/v1/batches")
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.count_batches().await, 1);
}

#[tokio::test]
async fn oversized_json_bodies_are_413() {
    let app = spawn_app_with(|s| s.limits.max_json_body_bytes = 2048).await;
    let body = json!({
        "input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "metadata": {"k": "v".repeat(4000)},
    });
    let err = app.create_batch(&body).expect_error(413).await;
    assert!(err["message"].as_str().unwrap().contains("2048"));
    // Without a Content-Length the limit still holds.
    let stream =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    app.post("/v1/batches")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .expect_error(413)
        .await;
    assert_eq!(app.count_batches().await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let app = spawn_app().await;
    app.get("/v1/nothing-here").expect_error(404).await;
    app.get("/").expect_error(404).await;
    app.client
        .put(app.url("/v1/batches"))
        .expect_error(405)
        .await;
    app.delete("/v1/batches/batch_x").expect_error(405).await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_retryable_503_not_a_crash() {
    let app = spawn_app().await;
    // Point a second server at a port where nothing listens.
    let settings = crate::helpers::settings_for("postgres://postgres@127.0.0.1:1/none");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy(settings.database.url.expose_secret())
        .unwrap();
    let broken = openbatch::startup::Application::build_with_pool(&settings, pool).unwrap();
    let address = format!("http://127.0.0.1:{}", broken.port());
    tokio::spawn(broken.run_until_stopped());

    app.client
        .get(format!("{address}/healthz"))
        .expect_response(200)
        .await;
    app.client
        .get(format!("{address}/readyz"))
        .expect_response(503)
        .await;
    let err = app
        .client
        .post(format!("{address}/v1/batches"))
        .json(&crate::helpers::batch_body("f"))
        .expect_error(503)
        .await;
    assert_eq!(err["type"], "server_error");
}
