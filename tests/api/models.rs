//! A batch's model is checked at validation against the model list of the upstream it is routed
//! to (`GET /v1/models` of the fake upstream), as OpenAI fails a batch naming a model it does
//! not serve: `model_not_found`, before any line runs.

use openbatch::config::{Settings, UpstreamSettings};
use openbatch::engine::upstream::Upstreams;
use serde_json::{json, Value};

use crate::helpers::{chat_line, settings_for, spawn_engine, to_jsonl, FakeUpstream};

/// Upstreams as a worker builds them, with the default upstream at `base_url`.
fn upstreams(base_url: &str, tweak: impl FnOnce(&mut Settings)) -> std::sync::Arc<Upstreams> {
    let mut s = settings_for("postgres://unused@127.0.0.1:1/unused");
    s.upstream.base_url = base_url.to_owned();
    tweak(&mut s);
    Upstreams::new(&s).expect("upstreams")
}

fn route(base_url: &str, models: &[&str]) -> UpstreamSettings {
    UpstreamSettings {
        base_url: base_url.to_owned(),
        base_urls: None,
        api_key: None,
        timeout_secs: 30,
        max_in_flight: 2,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        max_response_bytes: 16 << 20,
        adaptive: true,
        metrics_url: None,
        priority: None,
    }
}

async fn model_lists(upstream: &FakeUpstream) -> u64 {
    upstream.stats().await["model_lists"].as_u64().unwrap()
}

/// (code, param, line, message) of each error.
fn summary(errors: &[openbatch::domain::LineError]) -> Vec<(&str, &str, usize, &str)> {
    errors
        .iter()
        .map(|e| {
            (
                e.code,
                e.param.as_deref().unwrap(),
                e.line.unwrap(),
                e.message.as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_model_is_checked_against_the_upstream_it_is_routed_to() {
    let general = FakeUpstream::start(&["--models", "fake-model,routed-b"]);
    let second = FakeUpstream::start(&["--models", "routed-a"]);
    let second_url = second.base_url.clone();
    let up = upstreams(&general.base_url, |s| {
        s.routes.insert(
            "second".to_owned(),
            route(&second_url, &["routed-*", "pinned-model"]),
        );
    });
    let models = [
        ("fake-model", 1),
        ("typo-model", 2),
        ("routed-a", 3),
        // Listed by the default upstream, but routed to `second`, which does not list it.
        ("routed-b", 4),
        // Named exactly in the route's configuration: served, whatever the upstream lists.
        ("pinned-model", 5),
    ];
    let errors = up.unknown_models(models).await;
    assert_eq!(
        summary(&errors),
        [
            (
                "model_not_found",
                "body.model",
                2,
                "The provided model 'typo-model' is not supported by the Batch API."
            ),
            (
                "model_not_found",
                "body.model",
                4,
                "The provided model 'routed-b' is not supported by the Batch API."
            ),
        ]
    );
    // The lists are cached: asking again does not ask the upstreams again.
    assert_eq!(up.unknown_models(models).await, errors);
    assert_eq!(model_lists(&general).await, 1);
    assert_eq!(model_lists(&second).await, 1);
    assert_eq!(general.executions().await + second.executions().await, 0);
}

#[tokio::test]
async fn a_list_older_than_the_cache_time_is_asked_for_again() {
    let upstream = FakeUpstream::start(&[]);
    let up = upstreams(&upstream.base_url, |s| s.batches.models_cache_secs = 0);
    for _ in 0..3 {
        assert_eq!(up.unknown_models([("fake-model", 1)]).await, []);
    }
    assert_eq!(model_lists(&upstream).await, 3);
}

#[tokio::test]
async fn upstreams_that_do_not_list_models_and_a_disabled_check_skip_it() {
    // Answers 404 to GET /v1/models.
    let unlisted = FakeUpstream::start(&["--no-models-endpoint"]);
    let up = upstreams(&unlisted.base_url, |_| {});
    assert_eq!(up.unknown_models([("any-model", 1)]).await, []);

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = upstreams(&format!("http://127.0.0.1:{port}/v1"), |_| {});
    assert_eq!(up.unknown_models([("any-model", 1)]).await, []);

    // The check turned off: the upstream is not even asked.
    let listing = FakeUpstream::start(&[]);
    let up = upstreams(&listing.base_url, |s| s.batches.check_models = false);
    assert_eq!(up.unknown_models([("any-model", 1)]).await, []);
    assert_eq!(model_lists(&listing).await, 0);
}

#[tokio::test]
async fn a_batch_naming_a_model_its_upstream_does_not_serve_fails_before_running_anything() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |_| {}).await;
    let typo = |id: &str| chat_line(id, json!({"model": "fake-modle"}));
    // Line 1 is blank: the error names the first line that uses the model.
    let content = [b"\n".to_vec(), to_jsonl(&[typo("a"), typo("b"), typo("c")])].concat();
    let id = app.submit("/v1/chat/completions", content).await;
    let batch = app
        .wait_for(&id, &["failed", "in_progress", "completed"])
        .await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].as_i64().is_some());
    assert_eq!(
        batch["errors"],
        json!({"object": "list", "data": [{
            "code": "model_not_found",
            "message": "The provided model 'fake-modle' is not supported by the Batch API.",
            "param": "body.model",
            "line": 2,
        }]})
    );
    assert_eq!(batch["request_counts"]["total"], 0);
    assert_eq!(upstream.executions().await, 0, "no line ran");

    // The model it does serve runs.
    let id = app
        .submit(
            "/v1/chat/completions",
            to_jsonl(&[chat_line("ok", json!({}))]),
        )
        .await;
    let batch: Value = app.wait_for(&id, &["failed", "completed"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(upstream.executions().await, 1);
}
