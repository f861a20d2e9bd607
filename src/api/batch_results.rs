//! `GET /v1/batches/{id}/results` (OpenBatch extension): the lines a batch has finished so
//! far, as JSONL, resumable from a cursor; see docs/api.md, "Results while a batch runs".

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batch_object::parse_batch_id;
use super::{AppState, Project};
use crate::domain::BatchStatus;
use crate::error::{ApiError, ErrorResponse};
use crate::services::results as service;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(results);
}

#[derive(Deserialize)]
struct Params {
    after: Option<String>,
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
    // The slot is held by the task serving the response, which ends when the response does:
    // served, its client gone, or cut off after `limits.live_read_idle_timeout_secs`.
    let take_slot = || {
        state
            .live_readers
            .take(&project)
            .map_err(ApiError::TooManyResultsReaders)
    };
    let after = query.after.as_deref();
    let opened = service::open(&state.content, &project, &id, after, take_slot).await?;
    let (status, complete) = (opened.status, opened.complete());
    let idle = Duration::from_secs(state.limits.live_read_idle_timeout_secs);
    let body = service::serve(state.pool.clone(), id, opened, idle);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("OpenBatch-Batch-Status", status.as_str()))
        .insert_header((
            "OpenBatch-Results-Complete",
            if complete { "true" } else { "false" },
        ))
        .streaming(body))
}
