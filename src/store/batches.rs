use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::domain::{
    ApiKeyId, BatchId, BatchSpec, BatchStatus, CancelDecision, CompletionWindow, Endpoint, FileId,
    IdempotencyKey, ProjectId,
};

/// A batch row. `FromRow` serves the one statement built at run time (`create`); the others
/// fill it with `query_as!` through `batch_query!`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRecord {
    pub id: BatchId,
    pub endpoint: Endpoint,
    pub input_file_id: FileId,
    pub completion_window: CompletionWindow,
    pub status: BatchStatus,
    pub model: Option<String>,
    pub errors: Option<Value>,
    pub output_file_id: Option<FileId>,
    pub error_file_id: Option<FileId>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_total: i32,
    pub request_completed: i32,
    pub request_failed: i32,
    pub usage: Option<Value>,
    pub metadata: Option<Value>,
    pub params_hash: String,
    /// The batch whose failed lines this one runs again (`POST /v1/batches/{id}/retry`).
    pub retry_of: Option<BatchId>,
    /// The batches retrying this one, oldest first (read by `batch_query!(live ...)` only).
    #[sqlx(default)]
    pub retries: Vec<BatchId>,
}

/// `sqlx::query_as!(BatchRecord, ...)` with the record's columns spliced in (the query macros
/// take literals only, joined with `+`). Every column carries its nullability: one read from a
/// CTE has none the macros could infer.
///
/// `stored: $head, $tail`: `$head SELECT <the row as stored> $tail`.
/// `live: $tail`: `SELECT <the row> FROM batches <live counts> $tail`, for reads. While a batch
/// runs, its counts are summed from its chunks, which every flush keeps exact; once it ends they
/// are the ones finalization stored.
macro_rules! batch_query {
    (stored: $head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            BatchRecord,
            $head
                + r#"SELECT id AS "id!: BatchId", endpoint AS "endpoint!: Endpoint",
                       input_file_id AS "input_file_id!: FileId",
                       completion_window AS "completion_window!: CompletionWindow",
                       status AS "status!: BatchStatus", model AS "model?", errors AS "errors?",
                       output_file_id AS "output_file_id?: FileId",
                       error_file_id AS "error_file_id?: FileId", created_at AS "created_at!",
                       in_progress_at AS "in_progress_at?", expires_at AS "expires_at!",
                       finalizing_at AS "finalizing_at?", completed_at AS "completed_at?",
                       failed_at AS "failed_at?", expired_at AS "expired_at?",
                       cancelling_at AS "cancelling_at?", cancelled_at AS "cancelled_at?",
                       request_total AS "request_total!",
                       request_completed AS "request_completed!",
                       request_failed AS "request_failed!", usage AS "usage?",
                       metadata AS "metadata?", params_hash AS "params_hash!",
                       retry_of AS "retry_of?: BatchId",
                       ARRAY[]::text[] AS "retries!: Vec<BatchId>" "#
                + $tail
            $(, $arg)*
        )
    };
    (live: $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            BatchRecord,
            r#"SELECT id AS "id!: BatchId", endpoint AS "endpoint!: Endpoint",
                       input_file_id AS "input_file_id!: FileId",
                       completion_window AS "completion_window!: CompletionWindow",
                       status AS "status!: BatchStatus", model AS "model?", errors AS "errors?",
                       output_file_id AS "output_file_id?: FileId",
                       error_file_id AS "error_file_id?: FileId", created_at AS "created_at!",
                       in_progress_at AS "in_progress_at?", expires_at AS "expires_at!",
                       finalizing_at AS "finalizing_at?", completed_at AS "completed_at?",
                       failed_at AS "failed_at?", expired_at AS "expired_at?",
                       cancelling_at AS "cancelling_at?", cancelled_at AS "cancelled_at?",
                       request_total AS "request_total!",
                       coalesce(live.completed, request_completed) AS "request_completed!",
                       coalesce(live.failed, request_failed) AS "request_failed!",
                       usage AS "usage?", metadata AS "metadata?", params_hash AS "params_hash!",
                       retry_of AS "retry_of?: BatchId",
                       ARRAY(SELECT r.id FROM batches r WHERE r.retry_of = batches.id
                             ORDER BY r.seq) AS "retries!: Vec<BatchId>"
               FROM batches
               LEFT JOIN LATERAL (
                   SELECT sum(c.completed)::int AS completed, sum(c.failed)::int AS failed
                   FROM batch_chunks c
                   WHERE c.batch_id = batches.id
                     AND batches.status IN ('in_progress', 'finalizing', 'cancelling')
                   HAVING count(*) > 0
               ) live ON true "#
                + $tail
            $(, $arg)*
        )
    };
}

/// The columns of `batch_query!(stored ...)`, for `create`, the one statement built at run time.
const COLUMNS: &str = "id, endpoint, input_file_id, completion_window, status, model, errors, \
    output_file_id, error_file_id, created_at, in_progress_at, expires_at, finalizing_at, \
    completed_at, failed_at, expired_at, cancelling_at, cancelled_at, request_total, \
    request_completed, request_failed, usage, metadata, params_hash, retry_of";

/// What an insert did. Whether a taken key means a replay or a conflict is the services' to
/// decide (`services::batches::resolve`).
pub enum Inserted {
    New(BatchRecord),
    /// Nothing inserted: the key is taken, by this batch.
    KeyTaken(BatchRecord),
    /// Nothing inserted: the project has as many unfinished batches as it may.
    LimitReached,
}

/// How a batch is to be created, besides its parameters.
pub struct Options<'a> {
    pub key: Option<&'a IdempotencyKey>,
    pub expires_in_secs: i64,
    /// Unfinished batches the project may have; 0 = no limit.
    pub max_active: i64,
    /// The creating request's `traceparent`, for the worker's spans to link to.
    pub trace_context: Option<&'a str>,
    /// A retry: the batch it retries.
    pub retry_of: Option<&'a BatchId>,
    /// What idempotency compares: the spec's fingerprint, or for a retry (whose input file is
    /// new every time) that of the origin and the filters.
    pub params_hash: &'a str,
}

/// Inserts a batch, or finds the one holding its idempotency key.
///
/// `INSERT ... ON CONFLICT DO NOTHING` on the per-project unique key; when that inserts
/// nothing, a read of the row that holds the key.
#[tracing::instrument(skip_all, name = "db.batches.create")]
pub async fn create(
    conn: &mut PgConnection,
    project: &ProjectId,
    spec: &BatchSpec,
    opts: Options<'_>,
) -> Result<Inserted, sqlx::Error> {
    let Options {
        key,
        expires_in_secs,
        max_active,
        trace_context,
        retry_of,
        params_hash,
    } = opts;
    let admission = admission("$2", max_active);
    // Built at run time: the admission limit is part of the text (`admission`). A plain insert: the
    // read of an existing row is a second statement, paid only by replays and conflicts (one
    // statement doing both, a CTE and a UNION, cost PostgreSQL ~10 % more per create).
    let sql = format!(
        "INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status,
                             expires_at, metadata, output_expires_after_seconds,
                             idempotency_key, params_hash, trace_context, retry_of)
        SELECT $1, $2, $3, $4, $5, $6, unix_now() + $7, $8, $9, $10, $11, $12, $13
        {admission}
        ON CONFLICT (project_id, idempotency_key) DO NOTHING
        RETURNING {COLUMNS}"
    );
    let inserted: Option<BatchRecord> = sqlx::query_as::<_, BatchRecord>(&sql)
        .bind(BatchId::generate())
        .bind(project)
        .bind(spec.endpoint)
        .bind(&spec.input_file_id)
        .bind(spec.completion_window)
        .bind(BatchStatus::Validating)
        .bind(expires_in_secs)
        .bind(spec.metadata.as_ref().map(|m| m.to_json()))
        .bind(spec.output_expires_after.map(|e| e.seconds()))
        .bind(key.map(IdempotencyKey::as_str))
        .bind(params_hash)
        .bind(trace_context)
        .bind(retry_of)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(batch) = inserted {
        return Ok(Inserted::New(batch));
    }
    // Nothing inserted: the key is taken (ON CONFLICT waited for its inserter to commit, so this
    // fresh statement sees its row), or the project is at its limit.
    let Some(key) = key else {
        return Ok(Inserted::LimitReached);
    };
    Ok(match find_by_key(&mut *conn, project, key).await? {
        Some(batch) => Inserted::KeyTaken(batch),
        None => Inserted::LimitReached,
    })
}

/// The admission check of a one-row insert, as a `WHERE` clause: the project named by `project`
/// (an SQL expression) has fewer than `max_active` unfinished batches; empty when there is no
/// limit. `batch_admission_count` (migration 0016) takes the project's admission lock before it
/// counts, so creations racing on any replicas are admitted one after the other, each counting
/// the ones admitted before it. The limit is written into the SQL rather than bound: it is fixed
/// for the process, so the statement text is too, and PostgreSQL can keep one generic plan for
/// it. Bound, the LIMIT made every execution re-plan (measured: ~0.5 ms of planning per create).
fn admission(project: &str, max_active: i64) -> String {
    if max_active <= 0 {
        return String::new();
    }
    format!("WHERE batch_admission_count({project}, {max_active}) + 1 <= {max_active}")
}

/// A batch to insert together with others (`insert_many`), its parameters owned.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: BatchId,
    pub project: ProjectId,
    pub spec: BatchSpec,
    pub key: Option<IdempotencyKey>,
    /// The fingerprint of `spec`, which a replay must match.
    pub hash: String,
    pub expires_in_secs: i64,
    pub trace_context: Option<String>,
    /// The key that asked for it (for usage by key); none with authentication off.
    pub api_key_id: Option<ApiKeyId>,
}

/// Inserts many batches in one statement and one commit, and returns the rows it inserted. A
/// batch it did not return was not inserted: its key is taken (`by_key` reads the row that holds
/// it; `ON CONFLICT` waited for that row's inserter to commit) or its project is at the limit.
/// The admission check counts the project's earlier rows in the statement as taken, so rows of
/// one project cannot pass the limit together; a row refused only because an earlier one was a
/// replay is refused too, and is to be tried alone.
///
/// Rows go in in (project, key) order: two such statements racing on the same keys then wait for
/// each other's rows in one order, and cannot deadlock; with a limit, they take the projects'
/// admission locks in that order too.
#[tracing::instrument(skip_all, name = "db.batches.insert_many", fields(rows = batches.len()))]
pub async fn insert_many(
    conn: &mut PgConnection,
    batches: &[&NewBatch],
    max_active: i64,
) -> Result<Vec<BatchRecord>, sqlx::Error> {
    let mut order: Vec<&NewBatch> = batches.to_vec();
    order.sort_by_key(|b| {
        (
            b.project.as_str(),
            b.key.as_ref().map(IdempotencyKey::as_str),
        )
    });
    let (active, admitted) = admission_many(max_active);
    let sql = format!(
        "WITH n AS (
            SELECT u.*, row_number() OVER (PARTITION BY u.project_id ORDER BY u.ord) AS nth
            FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                        $8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[],
                        $13::text[])
                 WITH ORDINALITY
                 AS u(id, project_id, endpoint, input_file_id, completion_window, expires_in,
                      metadata, output_expiry, idempotency_key, params_hash, trace_context,
                      api_key_id, ord)
        ){active}
        INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status,
                             expires_at, metadata, output_expires_after_seconds,
                             idempotency_key, params_hash, trace_context, api_key_id)
        SELECT n.id, n.project_id, n.endpoint, n.input_file_id, n.completion_window, $1,
               unix_now() + n.expires_in, n.metadata::jsonb, n.output_expiry,
               n.idempotency_key, n.params_hash, n.trace_context, n.api_key_id
        FROM n {admitted}
        ORDER BY n.ord
        ON CONFLICT (project_id, idempotency_key) DO NOTHING
        RETURNING {COLUMNS}"
    );
    // One array per column: the statement's text, and so its plan, is the same for any count.
    let column = |f: fn(&NewBatch) -> Option<&str>| order.iter().map(|b| f(b)).collect::<Vec<_>>();
    sqlx::query_as::<_, BatchRecord>(&sql)
        .bind(BatchStatus::Validating)
        .bind(column(|b| Some(b.id.as_str())))
        .bind(column(|b| Some(b.project.as_str())))
        .bind(column(|b| Some(b.spec.endpoint.as_str())))
        .bind(column(|b| Some(b.spec.input_file_id.as_str())))
        .bind(column(|b| Some(b.spec.completion_window.as_str())))
        .bind(
            order
                .iter()
                .map(|b| b.expires_in_secs)
                .collect::<Vec<i64>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| b.spec.metadata.as_ref().map(|m| m.to_json().to_string()))
                .collect::<Vec<Option<String>>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| b.spec.output_expires_after.map(|e| e.seconds()))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(column(|b| b.key.as_ref().map(IdempotencyKey::as_str)))
        .bind(column(|b| Some(b.hash.as_str())))
        .bind(column(|b| b.trace_context.as_deref()))
        .bind(column(|b| b.api_key_id.as_ref().map(ApiKeyId::as_str)))
        .fetch_all(conn)
        .await
}

/// The admission check of `insert_many`: with a limit, each project of the statement is counted
/// once, under its admission lock (migration 0016), the projects in ascending order so that
/// statements locking several cannot deadlock; every count is taken before the first row goes
/// in, since the sort by `ord` reads all its input first. A row is admitted when its project's
/// count plus its rank among the project's rows here is within the limit. Returns the `active`
/// CTE and the clause that joins it; both empty without a limit.
fn admission_many(max_active: i64) -> (String, String) {
    if max_active <= 0 {
        return (String::new(), String::new());
    }
    (
        format!(
            ", active AS MATERIALIZED (
                    SELECT p.project_id,
                           batch_admission_count(p.project_id, {max_active}) AS taken
                    FROM (SELECT DISTINCT project_id FROM n ORDER BY project_id) p)"
        ),
        format!(
            "JOIN active a ON a.project_id = n.project_id
                 WHERE a.taken + n.nth <= {max_active}"
        ),
    )
}

/// The batch created under an idempotency key, if any (a retry looks before it builds a file; a
/// creation that inserted nothing, after).
#[tracing::instrument(skip_all, name = "db.batches.by_key")]
pub async fn by_key(
    pool: &PgPool,
    project: &ProjectId,
    key: &IdempotencyKey,
) -> Result<Option<BatchRecord>, sqlx::Error> {
    find_by_key(pool, project, key).await
}

async fn find_by_key<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    project: &ProjectId,
    key: &IdempotencyKey,
) -> Result<Option<BatchRecord>, sqlx::Error> {
    batch_query!(
        stored: "",
        "FROM batches WHERE project_id = $1 AND idempotency_key = $2",
        project.as_str(),
        key.as_str(),
    )
    .fetch_optional(conn)
    .await
}

/// The batch's `output_expires_after` in seconds, if it had one (a retry keeps it).
#[tracing::instrument(skip_all, name = "db.batches.output_expiry")]
pub async fn output_expiry(
    pool: &PgPool,
    project: &ProjectId,
    id: &BatchId,
) -> Result<Option<i64>, sqlx::Error> {
    let seconds: Option<Option<i64>> = sqlx::query_scalar!(
        "SELECT output_expires_after_seconds FROM batches WHERE project_id = $1 AND id = $2",
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(seconds.flatten())
}

#[tracing::instrument(skip_all, name = "db.batches.get")]
pub async fn get(
    pool: &PgPool,
    project: &ProjectId,
    id: &BatchId,
) -> Result<Option<BatchRecord>, sqlx::Error> {
    batch_query!(
        live: "WHERE project_id = $1 AND id = $2",
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await
}

/// Newest first. The cursor is the position (`seq`) of the `after` batch, so pages stay
/// stable while batches are being created. `None` when `after` names no batch of the project.
#[tracing::instrument(skip_all, name = "db.batches.list")]
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&BatchId>,
    limit: u32,
) -> Result<Option<super::keyset::Page<BatchRecord>>, sqlx::Error> {
    let cursor = after.map(|id| {
        sqlx::query_scalar!(
            "SELECT seq FROM batches WHERE project_id = $1 AND id = $2",
            project.as_str(),
            id.as_str(),
        )
        .fetch_optional(pool)
    });
    super::keyset::page(cursor, limit, |after, fetch| {
        batch_query!(
            live: "WHERE project_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            project.as_str(),
            after.unwrap_or(i64::MAX),
            fetch,
        )
        .fetch_all(pool)
    })
    .await
}

pub enum Cancelled {
    /// Now `cancelling`, or already `cancelling`/`cancelled`.
    Accepted(BatchRecord),
    Refused(BatchRecord),
    NotFound,
}

/// Moves a batch to `cancelling` if its status allows; the guarded UPDATE makes a concurrent
/// status change (a worker finishing it, say) win or lose cleanly.
#[tracing::instrument(skip_all, name = "db.batches.cancel")]
pub async fn cancel(
    pool: &PgPool,
    project: &ProjectId,
    id: &BatchId,
) -> Result<Cancelled, sqlx::Error> {
    let cancellable = BatchStatus::cancellable();
    // A status change between the UPDATE and the read is retried; it can happen only a few
    // times, since every status moves forward.
    loop {
        // Replicas running its lines hear of it at once and start no more of them.
        let updated: Option<BatchRecord> = batch_query!(
            stored: "WITH c AS (
                UPDATE batches SET status = $3, cancelling_at = unix_now()
                WHERE project_id = $1 AND id = $2 AND status = ANY($4)
                RETURNING *
             ) ",
            "FROM c, LATERAL (SELECT pg_notify($5, c.id)) n",
            project.as_str(),
            id.as_str(),
            BatchStatus::Cancelling.as_str(),
            &cancellable as &[&str],
            crate::store::leases::CANCEL_CHANNEL,
        )
        .fetch_optional(pool)
        .await?;
        if let Some(batch) = updated {
            return Ok(Cancelled::Accepted(batch));
        }
        let Some(batch) = get(pool, project, id).await? else {
            return Ok(Cancelled::NotFound);
        };
        match batch.status.cancel_decision() {
            CancelDecision::AlreadyDone => return Ok(Cancelled::Accepted(batch)),
            CancelDecision::Refuse => return Ok(Cancelled::Refused(batch)),
            CancelDecision::Begin => continue,
        }
    }
}
