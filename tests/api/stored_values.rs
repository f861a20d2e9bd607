//! Values read back from the database go through the domain types' own parsers: a row holding
//! something a type cannot hold (written by hand, or by a bug) is an error, answered 500 like any
//! database fault, never an invalid value handed on and never a panic.

use serde_json::{json, Value};

use crate::helpers::{batch_body, chat_line, spawn_app, to_jsonl, Expect, TestApp};
use openbatch::domain::{BatchId, FileId, ProjectId, WebhookEndpointId};
use openbatch::store;

async fn batch(app: &TestApp) -> BatchId {
    let content = to_jsonl(&[chat_line("a", json!({}))]);
    let file: Value = app.upload("batch", "in.jsonl", content).expect(200).await;
    let b: Value = app
        .create_batch(&batch_body(file["id"].as_str().unwrap()))
        .expect(200)
        .await;
    BatchId::parse("id", b["id"].as_str().unwrap()).unwrap()
}

/// A decode error naming the type that refused the value.
fn assert_decode_error(err: sqlx::Error, type_name: &str) {
    assert!(
        matches!(err, sqlx::Error::ColumnDecode { .. }),
        "expected a decode error, got {err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("invalid {type_name} in the database")),
        "{shown}"
    );
}

#[tokio::test]
async fn a_batch_row_that_no_batch_can_hold_is_an_error() {
    let app = spawn_app().await;
    let project = ProjectId::built_in();
    for (column, bad, type_name) in [
        ("endpoint", "/v1/images/generations", "Endpoint"),
        ("completion_window", "48h", "CompletionWindow"),
        ("input_file_id", "file-\u{7}bell", "FileId"),
        ("output_file_id", "", "FileId"),
        ("retry_of", "batch_\n", "BatchId"),
    ] {
        let id = batch(&app).await;
        let good = store::batches::get(&app.pool, &project, &id).await.unwrap();
        assert!(good.is_some(), "{column}: the batch reads back before");

        sqlx::query(&format!("UPDATE batches SET {column} = $2 WHERE id = $1"))
            .bind(id.as_str())
            .bind(bad)
            .execute(&app.pool)
            .await
            .unwrap();
        let err = store::batches::get(&app.pool, &project, &id)
            .await
            .unwrap_err();
        assert_decode_error(err, type_name);
        assert!(store::batches::list(&app.pool, &project, None, 100)
            .await
            .is_err());

        // Through HTTP: a 500 in the OpenAI envelope, and the server goes on serving.
        let e = app
            .get(&format!("/v1/batches/{id}"))
            .expect_error(500)
            .await;
        assert_eq!(e["type"], "server_error", "{column}: {e}");
        app.get("/v1/files").expect(200).await;

        sqlx::query("DELETE FROM batches WHERE id = $1")
            .bind(id.as_str())
            .execute(&app.pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_file_row_with_an_unknown_purpose_is_an_error() {
    let app = spawn_app().await;
    let file: Value = app
        .upload("batch", "in.jsonl", b"{}\n".to_vec())
        .expect(200)
        .await;
    let id = FileId::parse("id", file["id"].as_str().unwrap()).unwrap();
    sqlx::query("UPDATE files SET purpose = 'fine_tune' WHERE id = $1")
        .bind(id.as_str())
        .execute(&app.pool)
        .await
        .unwrap();
    let err = store::files::get(&app.pool, &ProjectId::built_in(), &id)
        .await
        .unwrap_err();
    assert_decode_error(err, "Purpose");
    app.get(&format!("/v1/files/{id}")).expect_error(500).await;
}

#[tokio::test]
async fn a_delivery_of_an_unknown_event_type_is_an_error() {
    let app = spawn_app().await;
    let endpoint = WebhookEndpointId::generate();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, project_id, url, events, secret)
         VALUES ($1, 'proj_default', 'https://example.com/hook', '{batch.completed}', 'whsec_x')",
    )
    .bind(endpoint.as_str())
    .execute(&app.pool)
    .await
    .unwrap();
    for (event_type, readable) in [("batch.completed", true), ("batch.exploded", false)] {
        sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, batch_id, payload)
             VALUES ($1, 'evt_' || $2, $2, 'batch_x', '{}')",
        )
        .bind(endpoint.as_str())
        .bind(event_type)
        .execute(&app.pool)
        .await
        .unwrap();
        let read = store::webhooks::deliveries(&app.pool, &endpoint, None, 10).await;
        match read {
            Ok(page) if readable => assert_eq!(page.unwrap().items.len(), 1),
            Err(err) if !readable => assert_decode_error(err, "EventType"),
            other => panic!("{event_type}: {:?}", other.map(|p| p.map(|p| p.items))),
        }
    }
}
