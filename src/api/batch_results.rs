//! `GET /v1/batches/{id}/results` (OpenBatch extension): the lines a batch has finished so
//! far, as JSONL, resumable from a cursor; see docs/api.md, "Results while a batch runs".

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batches::parse_batch_id;

use super::{AppState, Project};
use crate::domain::{BatchId, BatchStatus, FileId, ProjectId, ResultsCursor};
use crate::engine::order::LiveOrder;
use crate::error::{ApiError, ErrorResponse};
use crate::results::live::{self, ReadLive, Source};
use crate::results::{FileLines, FinishedLines};
use crate::store::batches as store;
use crate::store::files;
use crate::store::results as results_store;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(results);
}

#[derive(Deserialize)]
struct Params {
    after: Option<String>,
}

/// A result file of an ended batch, ready to be read; `None` when the batch has none.
async fn result_file(
    state: &AppState,
    project: &ProjectId,
    id: Option<&FileId>,
) -> Result<Option<FileLines>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    let missing = || ApiError::ResultsUnavailable { file: id.clone() };
    let file = files::get(&state.pool, project, id)
        .await?
        .ok_or_else(missing)?;
    Ok(Some(FileLines::new(file.id, file.bytes)))
}

/// The order an ended batch's lines were served in while it ran, which a cursor taken then
/// needs; refused when it was not kept (the batch ended before this version kept it).
async fn live_order(state: &AppState, id: &BatchId) -> Result<LiveOrder, ApiError> {
    let stored = results_store::live_order(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::CursorExpired { batch: id.clone() })?;
    LiveOrder::from_stored(stored).map_err(|e| {
        tracing::error!(batch_id = %id, error = format!("{e:#}"), "unreadable live order");
        ApiError::Internal
    })
}

/// Which result file a record comes from.
#[derive(ToSchema)]
#[allow(dead_code)]
enum ResultFile {
    #[schema(rename = "output")]
    Output,
    #[schema(rename = "error")]
    Error,
}

// The lines are the result files' own, with `line`, `cursor` and `file` put first; this type
// only documents them.
/// One line of `GET /v1/batches/{batch_id}/results`: a result-file line with `line`, `cursor`
/// and `file` added.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ResultRecord {
    /// 1-based number of the request among the input file's requests.
    line: i64,
    /// Pass it as `after` to resume after this record.
    cursor: String,
    #[schema(inline)]
    file: ResultFile,
    id: String,
    custom_id: String,
    #[schema(required = true, value_type = Option<Object>)]
    response: Option<()>,
    #[schema(required = true, value_type = Option<Object>)]
    error: Option<()>,
}

#[utoipa::path(
    operation_id = "batchResults",
    tag = "batches",
    summary = "The lines a batch has finished so far, as JSONL (OpenBatch extension)",
    description = "While the batch runs: the lines finished since `after`, in the order they were \
                   stored. Once it has ended: its output and error files merged in input order, \
                   from `after`. Each line is a result-file line exactly as its file holds it, \
                   with `line` (1-based request number), `cursor` (pass it as `after` to resume \
                   after this record) and `file` (`output` or `error`) added as its first members \
                   (a `ResultRecord`). A cursor taken while the batch ran stays valid after it \
                   has ended: it then gets, from the files in input order, exactly the lines its \
                   reader has not had (none twice, none lost), with cursors that continue from \
                   there. 400 `cursor_expired` only for a live cursor of a batch that ended \
                   without its served order recorded (it ended under a version that did not \
                   keep it). A client that takes nothing of the response for \
                   `limits.live_read_idle_timeout_secs` is cut off (the response ends in an \
                   error; resume from the last cursor read). At most `limits.max_live_readers` \
                   responses at once per replica, `limits.max_live_readers_per_project` per \
                   project (429 `too_many_results_readers` beyond).",
    params(
        ("batch_id" = String, Path),
        ("after" = Option<String>, Query, description = "A record's `cursor`: resume after that \
            record. Any cursor the endpoint issued stays valid while the batch's result files \
            exist, across the batch's end: one taken while it ran then means the lines not yet \
            read, served in input order."),
    ),
    responses(
        (status = 200, description = "Records, one JSON object per line (each a ResultRecord)",
            content(("application/x-ndjson")),
            headers(
                ("OpenBatch-Batch-Status" = BatchStatus,
                    description = "The batch's status when the response started."),
                ("OpenBatch-Results-Complete" = bool,
                    description = "`true`: the batch had ended, and this response holds every \
                    result after `after`."),
            )),
        (status = 400, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[get("/batches/{batch_id}/results")]
async fn results(
    path: web::Path<String>,
    query: web::Query<Params>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    let batch = store::get(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| ApiError::BatchNotFound { id: id.to_string() })?;
    // Held by the producer below, which ends when the response does: served, its client gone,
    // or cut off after `limits.live_read_idle_timeout_secs` without reading.
    let slot = state
        .live_readers
        .take(&project)
        .map_err(ApiError::TooManyResultsReaders)?;
    let cursor = match query.after.as_deref().filter(|a| !a.is_empty()) {
        Some(raw) => Some(ResultsCursor::parse(&id, raw)?),
        None => None,
    };
    // A batch's status and its stored groups change in one transaction (finalization writes
    // the files and deletes the groups), so the status read here says where its results are.
    let ended = batch.status.is_terminal();
    let source = match (ended, cursor) {
        (false, None) => Source::Live { seq: 0, taken: 0 },
        (false, Some(ResultsCursor::Live { seq, taken })) => Source::Live { seq, taken },
        (false, Some(ResultsCursor::Final { .. } | ResultsCursor::Resumed { .. })) => {
            return Err(ApiError::CursorNotForState)
        }
        (true, cursor) => {
            // Both files first: results that are gone are said so whatever the cursor.
            let output = result_file(&state, &project, batch.output_file_id.as_ref()).await?;
            let errors = result_file(&state, &project, batch.error_file_id.as_ref()).await?;
            let (next, read_live) = match cursor {
                // No result file (a batch that failed): nothing to serve, whatever was read.
                _ if output.is_none() && errors.is_none() => (0, None),
                None => (0, None),
                Some(ResultsCursor::Final { next }) => (next, None),
                Some(ResultsCursor::Live { seq, taken }) => {
                    let order = live_order(&state, &id).await?;
                    let position = order.position(seq, taken);
                    (0, Some(ReadLive { order, position }))
                }
                Some(ResultsCursor::Resumed { seen, next }) => {
                    let order = live_order(&state, &id).await?;
                    let read = ReadLive {
                        order,
                        position: seen,
                    };
                    (next, Some(read))
                }
            };
            Source::Final {
                lines: Box::new(FinishedLines::new(id.clone(), output, errors)),
                next,
                read_live,
            }
        }
    };
    let (out, body) = live::outbox(Duration::from_secs(
        state.limits.live_read_idle_timeout_secs,
    ));
    let pool = state.pool.clone();
    let batch_id = id.clone();
    actix_web::rt::spawn(async move {
        let _slot = slot;
        if let Err(e) = live::produce(pool, batch_id.clone(), source, &out).await {
            tracing::error!(batch_id = %batch_id, error = format!("{e:#}"), "serving results failed");
            out.abort();
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("OpenBatch-Batch-Status", batch.status.as_str()))
        .insert_header((
            "OpenBatch-Results-Complete",
            if ended { "true" } else { "false" },
        ))
        .streaming(body))
}
