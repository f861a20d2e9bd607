//! The active-batch limit (`limits.max_active_batches_per_project`) is exact however the
//! creations race: many at once, on several replicas, each replica writing them together.

use futures_util::future::join_all;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{batch_body, start_replicas_with, TestDb};

#[tokio::test]
async fn replicas_racing_to_create_make_exactly_the_limit() {
    const LIMIT: usize = 5;
    const CREATES: usize = 60;
    let db = TestDb::new();
    let limit = LIMIT.to_string();
    let replicas = start_replicas_with(
        3,
        &db.url,
        &[
            ("OPENBATCH__WORKER__ENABLED", "false"),
            ("OPENBATCH__LIMITS__MAX_ACTIVE_BATCHES_PER_PROJECT", &limit),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // Keyless: each creation is a batch of its own, if admitted.
    let sends = (0..CREATES).map(|i| {
        let req = client
            .post(format!(
                "{}/v1/batches",
                replicas[i % replicas.len()].address
            ))
            .json(&batch_body("file-abc"));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let retry = res.headers().get("x-should-retry").cloned();
            let body: Value = res.json().await.unwrap();
            (status, retry, body)
        }
    });
    let answers = join_all(sends).await;
    let made = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(made, LIMIT, "{answers:?}");
    assert_eq!(refused.len(), CREATES - LIMIT, "{answers:?}");
    for (_, retry, body) in refused {
        assert_eq!(body["error"]["code"], "batch_limit_exceeded", "{body}");
        assert_eq!(retry.as_ref().unwrap(), "false");
    }

    let pool = PgPool::connect(&db.url).await.unwrap();
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM batches
         WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(active, LIMIT as i64);
    pool.close().await;
    drop(replicas);
}
