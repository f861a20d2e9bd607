//! Creations that arrive together are written in one statement (`store::create_queue`), and
//! each still gets the answer it would have got alone. The tests run on a current-thread
//! runtime: every creation joined below is queued before a writer runs, so they go together.

use futures_util::future::join_all;
use sqlx::PgPool;

use crate::helpers::{spawn_app, TestApp};
use openbatch::domain::{
    BatchId, BatchSpec, CompletionWindow, Endpoint, FileId, IdempotencyKey, ProjectId,
};
use openbatch::store::batches::{Created, NewBatch};
use openbatch::store::create_queue::CreateQueue;

fn new_batch(project: &str, key: Option<&str>, input: &str) -> NewBatch {
    let spec = BatchSpec {
        input_file_id: FileId::parse("input_file_id", input).unwrap(),
        endpoint: Endpoint::ChatCompletions,
        completion_window: CompletionWindow::Hours24,
        metadata: None,
        output_expires_after: None,
    };
    NewBatch {
        id: BatchId::generate(),
        project: ProjectId::from_db(project.to_owned()),
        key: key.map(|k| {
            IdempotencyKey::from_sources(&[("idempotency_key", Some(k))])
                .unwrap()
                .unwrap()
        }),
        hash: spec.fingerprint(),
        spec,
        expires_in_secs: 86_400,
        trace_context: None,
    }
}

/// A migrated database and a queue of its own on it.
async fn app_and_queue(max_active: i64) -> (TestApp, CreateQueue) {
    let app = spawn_app().await;
    let queue = CreateQueue::start(app.pool.clone(), max_active);
    (app, queue)
}

/// The answers, in the order of `batches`.
async fn create_together(
    queue: &CreateQueue,
    pool: &PgPool,
    batches: Vec<NewBatch>,
) -> Vec<Result<Created, sqlx::Error>> {
    join_all(batches.into_iter().map(|b| queue.create(pool, b))).await
}

fn id(created: &Result<Created, sqlx::Error>) -> String {
    match created {
        Ok(Created::New(b) | Created::Replayed(b) | Created::Conflict(b)) => b.id.to_string(),
        other => panic!("no batch: {:?}", other.as_ref().map(|_| "limit reached")),
    }
}

async fn transactions(app: &TestApp, key_prefix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM batches WHERE idempotency_key LIKE $1 || '%'",
    )
    .bind(key_prefix)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn creations_written_together_each_get_their_own_answer() {
    let (app, queue) = app_and_queue(0).await;
    let answers = create_together(
        &queue,
        &app.pool,
        vec![
            new_batch("proj_default", Some("tg-a"), "file-1"),
            new_batch("proj_default", Some("tg-dup"), "file-1"),
            new_batch("proj_default", Some("tg-b"), "file-1"),
            new_batch("proj_default", Some("tg-dup"), "file-1"),
            new_batch("proj_default", Some("tg-clash"), "file-1"),
            new_batch("proj_default", Some("tg-clash"), "file-2"),
            new_batch("proj_default", None, "file-1"),
            new_batch("proj_default", None, "file-1"),
        ],
    )
    .await;
    let kind = |i: usize| match &answers[i] {
        Ok(Created::New(_)) => "new",
        Ok(Created::Replayed(_)) => "replayed",
        Ok(Created::Conflict(_)) => "conflict",
        Ok(Created::LimitReached) => "limit",
        Err(e) => panic!("creation {i} failed: {e}"),
    };
    assert_eq!(kind(0), "new");
    assert_eq!(kind(2), "new");
    // The same key twice in one statement: one row, and the other creation replays it.
    let mut dup = [kind(1), kind(3)];
    dup.sort();
    assert_eq!(dup, ["new", "replayed"]);
    assert_eq!(id(&answers[1]), id(&answers[3]));
    // The same key with other parameters: one row, and the other creation is refused with it.
    let mut clash = [kind(4), kind(5)];
    clash.sort();
    assert_eq!(clash, ["conflict", "new"]);
    assert_eq!(id(&answers[4]), id(&answers[5]));
    // Without a key, two identical creations are two batches.
    assert_eq!((kind(6), kind(7)), ("new", "new"));
    assert_ne!(id(&answers[6]), id(&answers[7]));

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 6);
    assert_eq!(
        transactions(&app, "tg-").await,
        1,
        "one statement wrote them all"
    );
}

#[tokio::test]
async fn a_creation_that_fails_the_statement_is_tried_alone_and_the_others_are_made() {
    let (app, queue) = app_and_queue(0).await;
    let answers = create_together(
        &queue,
        &app.pool,
        vec![
            new_batch("proj_default", Some("fa-1"), "file-1"),
            // No such project: its row breaks the statement for every row in it.
            new_batch("proj_missing", Some("fa-2"), "file-1"),
            new_batch("proj_default", Some("fa-3"), "file-1"),
        ],
    )
    .await;
    assert!(matches!(answers[0], Ok(Created::New(_))));
    assert!(matches!(answers[2], Ok(Created::New(_))));
    match &answers[1] {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("23503"), "{e}")
        }
        other => panic!("expected a foreign-key error, got {:?}", other.is_ok()),
    }
}

#[tokio::test]
async fn the_active_batch_limit_holds_for_creations_written_together() {
    let (app, queue) = app_and_queue(2).await;
    let five = (0..5)
        .map(|i| new_batch("proj_default", Some(&format!("lim-{i}")), "file-1"))
        .collect();
    let answers = create_together(&queue, &app.pool, five).await;
    let made = answers
        .iter()
        .filter(|a| matches!(a, Ok(Created::New(_))))
        .count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Created::LimitReached)))
        .count();
    assert_eq!((made, refused), (2, 3));

    // A replay in the statement takes no place: the new batch beside it is refused by the
    // statement's count (one active + two new), and then made alone (one active + one).
    let (app, queue) = app_and_queue(2).await;
    let first = queue
        .create(&app.pool, new_batch("proj_default", Some("r-0"), "file-1"))
        .await;
    assert!(matches!(first, Ok(Created::New(_))));
    let answers = create_together(
        &queue,
        &app.pool,
        vec![
            new_batch("proj_default", Some("r-0"), "file-1"),
            new_batch("proj_default", Some("r-1"), "file-1"),
        ],
    )
    .await;
    assert!(matches!(answers[0], Ok(Created::Replayed(_))));
    assert!(matches!(answers[1], Ok(Created::New(_))));
}

#[tokio::test]
async fn a_creation_after_the_writers_stopped_is_made_alone() {
    let app = spawn_app().await;
    // Writers started on a runtime that is then shut down: they are gone, the handle stays.
    let pool = app.pool.clone();
    let orphan = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { CreateQueue::start(pool, 0) })
    })
    .join()
    .unwrap();
    let answer = orphan
        .create(
            &app.pool,
            new_batch("proj_default", Some("gone-1"), "file-1"),
        )
        .await;
    assert!(matches!(answer, Ok(Created::New(_))));
    let again = orphan
        .create(
            &app.pool,
            new_batch("proj_default", Some("gone-1"), "file-1"),
        )
        .await;
    assert!(matches!(again, Ok(Created::Replayed(_))));
}
