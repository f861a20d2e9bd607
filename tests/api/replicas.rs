//! Several real server processes on one database, as in a scaled deployment.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{start_replicas, TestDb};

const REQUESTS: usize = 60;

#[tokio::test]
async fn concurrent_idempotent_creates_across_three_replicas_make_one_batch() {
    let db = TestDb::new();
    let url = db.url.clone();
    // Three processes starting together also race to create and migrate the database.
    let replicas = start_replicas(3, &url).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // Identical requests, one key, spread over the replicas, all in flight at once.
    let body = json!({
        "input_file_id": "file-race",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"run": "race"},
        "idempotency_key": "race-key",
    });
    let sends = (0..REQUESTS).map(|i| {
        let url = format!("{}/v1/batches", replicas[i % replicas.len()].address);
        let req = client.post(url).json(&body);
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let replayed = res.headers().contains_key("idempotent-replayed");
            (status, replayed, res.json::<Value>().await.unwrap())
        }
    });
    let results = join_all(sends).await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(status, _, body)| {
            assert_eq!(*status, 200, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "every response names the same batch");
    let fresh = results.iter().filter(|(_, replayed, _)| !replayed).count();
    assert_eq!(fresh, 1, "exactly one response created the batch");

    // One key, pairwise different parameters: exactly one wins.
    let sends = (0..REQUESTS).map(|i| {
        let url = format!("{}/v1/batches", replicas[i % replicas.len()].address);
        let body = json!({
            "input_file_id": format!("file-{i}"),
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "idempotency_key": "contested-key",
        });
        let req = client.post(url).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (
                res.status().as_u16(),
                res.headers().get("x-should-retry").cloned(),
            )
        }
    });
    let results = join_all(sends).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let conflicts: Vec<_> = results.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!(ok, 1, "{results:?}");
    assert_eq!(conflicts.len(), REQUESTS - 1, "{results:?}");
    assert!(conflicts
        .iter()
        .all(|(_, retry)| retry.as_ref().is_some_and(|v| v == "false")));

    let pool = PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM batches GROUP BY idempotency_key ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("contested-key".to_owned(), 1), ("race-key".to_owned(), 1)]
    );
    drop(replicas);
}
