//! Creations that arrive together are written in one statement
//! (`services::batches::create_queue`), and each still gets the answer it would have got alone.
//! The tests run on a current-thread runtime: every creation joined below is queued before a
//! writer runs, so they go together.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{spawn_app, TestApp};
use openbatch::domain::{
    BatchId, BatchSpec, CompletionWindow, Endpoint, FileId, IdempotencyKey, ProjectId,
};
use openbatch::services::batches::create_queue::{
    statement_outcome, CreateError, CreateQueue, Outcome,
};
use openbatch::services::batches::Created;
use openbatch::store::batches::NewBatch;

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
        api_key_id: None,
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
) -> Vec<Result<Created, CreateError>> {
    join_all(batches.into_iter().map(|b| queue.create(pool, b))).await
}

fn id(created: &Result<Created, CreateError>) -> String {
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
        Err(CreateError::Database(sqlx::Error::Database(e))) => {
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

/// The backend of the connection whose statement waits for a lock, once it does.
async fn waiting_writer(pool: &PgPool) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%INSERT INTO batches%'",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the insert never waited for the lock"
        );
        // A lock wait is seen only in pg_stat_activity: polled.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_statement_whose_connection_is_lost_is_answered_as_unknown_and_never_run_again() {
    let (app, queue) = app_and_queue(0).await;
    // The project's row, locked: the statement's foreign-key check waits for it, so the
    // statement is surely sent, and running, when its connection is cut.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM projects WHERE id = 'proj_default' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (pool, q) = (app.pool.clone(), queue.clone());
    let creating = tokio::spawn(async move {
        let batches = vec![
            new_batch("proj_default", None, "file-1"),
            new_batch("proj_default", None, "file-1"),
            new_batch("proj_default", Some("lost-1"), "file-1"),
        ];
        create_together(&q, &pool, batches).await
    });
    let writer = waiting_writer(&app.pool).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(writer)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(terminated);
    holder.rollback().await.unwrap();

    let answers = creating.await.unwrap();
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            matches!(answer, Err(CreateError::OutcomeUnknown)),
            "creation {i}: {:?}",
            answer.as_ref().map(|_| "an answer")
        );
    }
    assert_eq!(app.count_batches().await, 0, "no creation was run again");
    // The client's retry with its key: the batch was not made, so now it is, once.
    let again = queue
        .create(
            &app.pool,
            new_batch("proj_default", Some("lost-1"), "file-1"),
        )
        .await;
    assert!(matches!(again, Ok(Created::New(_))));
    assert_eq!(app.count_batches().await, 1);
}

#[tokio::test]
async fn only_errors_postgresql_reports_as_refusals_are_safe_to_run_again() {
    let app = spawn_app().await;
    let url = app.pool.connect_options();
    // An ERROR: the statement (and its implicit transaction) is rolled back.
    let mut conn = PgConnection::connect_with(&url).await.unwrap();
    for refused in [
        "SELECT 1 / 0",
        "INSERT INTO batches (id, project_id) VALUES ('b', 'no_such_project')",
    ] {
        let e = sqlx::query(refused).execute(&mut conn).await.unwrap_err();
        assert_eq!(statement_outcome(&e), Outcome::NotApplied, "{e}");
    }
    // The connection cut while a statement runs: a FATAL, or the socket closing.
    let e = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid()), pg_sleep(5)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(statement_outcome(&e), Outcome::Unknown, "{e:?}");
    // The answer of a statement that succeeded, unreadable (a decoding error): its rows are in.
    let mut conn = PgConnection::connect_with(&url).await.unwrap();
    let e = sqlx::query_scalar::<_, i64>("SELECT 'not a number'::text")
        .fetch_one(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(statement_outcome(&e), Outcome::Unknown, "{e:?}");
    for e in [
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        sqlx::Error::WorkerCrashed,
        sqlx::Error::Protocol("unexpected message".into()),
    ] {
        assert_eq!(statement_outcome(&e), Outcome::Unknown, "{e:?}");
    }
}
