//! `/v1/batches`: create, retrieve, cancel and list batches.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batch_object::{
    created, creator, idempotency_key, parse_batch_id, BatchObject, IdempotencyKeyHeader,
};
use super::pagination::{list_type, PageParams, PageQuery};
use super::{body, AppState, Project, UsedKey};
use crate::domain::{
    id_schema, BatchId, BatchSpec, CompletionWindow, Endpoint, ExpiresAfter, FileId,
    IdempotencyKey, Invalid, Metadata, MetadataLimits,
};
use crate::error::{ApiError, ErrorResponse};
use crate::services::batches;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(retrieve)
        .service(cancel);
}

// Fields are read leniently (absent, `null` or of the wrong type) so that `spec` can answer
// OpenAI's errors; the schema says what is valid.
/// The parameters of a new batch.
#[derive(Deserialize, ToSchema)]
#[schema(as = CreateBatchRequest)]
struct CreateBatch {
    #[schema(required = true, schema_with = id_schema)]
    input_file_id: Option<String>,
    #[schema(required = true, value_type = Endpoint)]
    endpoint: Option<String>,
    #[schema(required = true, value_type = CompletionWindow)]
    completion_window: Option<String>,
    // Kept raw so `Metadata` can report OpenAI-style errors (`metadata.<key>`).
    #[serde(default)]
    #[schema(schema_with = Metadata::request_schema)]
    metadata: Value,
    #[serde(default)]
    #[schema(value_type = Option<ExpiresAfter>)]
    output_expires_after: Value,
    /// OpenBatch extension: makes the creation safe to retry.
    #[schema(schema_with = IdempotencyKey::schema)]
    idempotency_key: Option<String>,
    // The name the user's first integration used; still accepted.
    /// Older name of `idempotency_key`.
    #[schema(schema_with = IdempotencyKey::schema)]
    idem_tok: Option<String>,
}

fn required<'a>(value: &'a Option<String>, param: &str) -> Result<&'a str, Invalid> {
    value.as_deref().ok_or_else(|| Invalid::missing(param))
}

impl CreateBatch {
    fn spec(
        &self,
        limits: MetadataLimits,
        windows: &[CompletionWindow],
    ) -> Result<BatchSpec, Invalid> {
        Ok(BatchSpec {
            input_file_id: FileId::parse(
                "input_file_id",
                required(&self.input_file_id, "input_file_id")?,
            )?,
            endpoint: Endpoint::parse(required(&self.endpoint, "endpoint")?)?,
            completion_window: CompletionWindow::parse_among(
                required(&self.completion_window, "completion_window")?,
                windows,
            )?,
            metadata: Metadata::from_json_within(&self.metadata, limits)?,
            output_expires_after: ExpiresAfter::from_json(
                "output_expires_after",
                &self.output_expires_after,
            )?,
        })
    }

    fn idempotency_key(&self, req: &HttpRequest) -> Result<Option<IdempotencyKey>, Invalid> {
        idempotency_key(
            req,
            self.idempotency_key.as_deref(),
            self.idem_tok.as_deref(),
        )
    }
}

#[utoipa::path(
    operation_id = "createBatch",
    tag = "batches",
    summary = "Create a batch",
    params(IdempotencyKeyHeader),
    request_body = CreateBatch,
    responses(
        (status = 200,
            description = "The new batch, or (with `Idempotent-Replayed`) the one the key created earlier",
            body = BatchObject,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key had \
                created this batch already")),
            links(
                ("batchResults" = (operation_id = "batchResults",
                    parameters(("batch_id" = "$response.body#/id")))),
                ("retryBatch" = (operation_id = "retryBatch",
                    parameters(("batch_id" = "$response.body#/id")))),
            )),
        (status = 400, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/batches")]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
    used: UsedKey,
) -> Result<HttpResponse, ApiError> {
    let body: CreateBatch = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let spec = body.spec(state.limits.metadata, &state.completion_windows)?;
    let key = body.idempotency_key(&req)?;
    let creation = creator(&state, used).create(project, spec, key).await?;
    Ok(created(creation))
}

#[utoipa::path(
    operation_id = "retrieveBatch",
    tag = "batches",
    summary = "A batch",
    params(("batch_id" = String, Path)),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/batches/{batch_id}")]
async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    let batch = batches::get(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(BatchObject::new(&batch)))
}

#[utoipa::path(
    operation_id = "cancelBatch",
    tag = "batches",
    summary = "Cancel a batch",
    params(("batch_id" = String, Path)),
    responses(
        (status = 200, description = "The batch, now cancelling (or already cancelled)",
            body = BatchObject),
        (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
    )
)]
#[post("/batches/{batch_id}/cancel")]
async fn cancel(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    // The SDKs send no body (with a JSON content type); there is nothing to read.
    let id = parse_batch_id(&path)?;
    let batch = batches::cancel(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(BatchObject::new(&batch)))
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[utoipa::path(
    operation_id = "listBatches",
    tag = "batches",
    summary = "The project's batches, newest first",
    params(PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of batches, newest first", body = BatchList),
        (status = 400, response = ErrorResponse),
    )
)]
#[get("/batches")]
async fn list(
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| BatchId::parse("after", raw))?;
    let found = batches::list(&state.pool, &project, page.after.as_ref(), page.limit)
        .await?
        .ok_or_else(|| query.unknown_cursor())?;
    let data = found.items.iter().map(BatchObject::new).collect();
    Ok(HttpResponse::Ok().json(BatchList::new(data, found.has_more)))
}

list_type!(BatchList, BatchObject, "A page of batches.");
