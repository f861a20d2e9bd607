use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::Required;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::{body, record_path_id, AppState, Project};
use crate::domain::{
    id_schema, BatchId, BatchSpec, BatchStatus, CompletionWindow, Endpoint, ExpiresAfter, FileId,
    IdempotencyKey, Invalid, Metadata, MetadataLimits,
};
use crate::error::{ApiError, ErrorResponse};
use crate::store::batches::{self as store, BatchRecord, Cancelled, Created};

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

/// The `Idempotency-Key` header, for the OpenAPI document.
pub(super) struct IdempotencyKeyHeader;

impl utoipa::IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes the creation safe to retry (or `idempotency_key` in the body).",
            ))
            .schema(Some({
                // A header value is visible ASCII (the server refuses other bytes), and HTTP
                // drops its leading and trailing spaces.
                let mut key = IdempotencyKey::schema();
                key.pattern = Some("^[!-~]([ -~]*[!-~])?$".to_owned());
                key
            }))
            .build()]
    }
}

fn required<'a>(value: &'a Option<String>, param: &str) -> Result<&'a str, Invalid> {
    value.as_deref().ok_or_else(|| Invalid::missing(param))
}

impl CreateBatch {
    fn spec(&self, limits: MetadataLimits) -> Result<BatchSpec, Invalid> {
        Ok(BatchSpec {
            input_file_id: FileId::parse(
                "input_file_id",
                required(&self.input_file_id, "input_file_id")?,
            )?,
            endpoint: Endpoint::parse(required(&self.endpoint, "endpoint")?)?,
            completion_window: CompletionWindow::parse(required(
                &self.completion_window,
                "completion_window",
            )?)?,
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

/// The request's idempotency key, from the body's `idempotency_key` or `idem_tok` or the
/// `Idempotency-Key` header (at most one of them), as batch creation and retry take it.
pub(super) fn idempotency_key(
    req: &HttpRequest,
    idempotency_key: Option<&str>,
    idem_tok: Option<&str>,
) -> Result<Option<IdempotencyKey>, Invalid> {
    let header = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Invalid::new(
                "Idempotency-Key",
                "invalid_value",
                "The Idempotency-Key header must be printable ASCII.",
            )
        })?),
    };
    IdempotencyKey::from_sources(&[
        ("idempotency_key", idempotency_key),
        ("idem_tok", idem_tok),
        ("Idempotency-Key", header),
    ])
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
) -> Result<HttpResponse, ApiError> {
    let body: CreateBatch = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let spec = body.spec(state.limits.metadata)?;
    let key = body.idempotency_key(&req)?;
    let expires_in = state
        .expiry_override_secs
        .unwrap_or(spec.completion_window.seconds());
    let limit = state.limits.max_active_batches_per_project;
    let trace = crate::telemetry::traceparent(&tracing::Span::current());
    let hash = spec.fingerprint();
    let created = state
        .creates
        .create(
            &state.pool,
            store::NewBatch {
                id: BatchId::generate(),
                project,
                spec,
                key: key.clone(),
                hash,
                expires_in_secs: expires_in,
                trace_context: trace,
            },
        )
        .await?;
    match created {
        Created::New(batch) => {
            tracing::Span::current().record("batch_id", batch.id.as_str());
            tracing::info!(batch_id = %batch.id, "batch created");
            if let Some(worker) = &state.wake_worker {
                worker.notify_one();
            }
            Ok(HttpResponse::Ok().json(BatchObject::new(&batch)))
        }
        Created::Replayed(batch) => {
            crate::metrics::get().idempotent_replays.inc();
            Ok(HttpResponse::Ok()
                .insert_header(("Idempotent-Replayed", "true"))
                .json(BatchObject::new(&batch)))
        }
        Created::Conflict(batch) => {
            crate::metrics::get().idempotency_conflicts.inc();
            let key = key.expect("only keyed creations conflict");
            Err(ApiError::IdempotencyConflict {
                key,
                batch: batch.id,
            })
        }
        Created::LimitReached => Err(ApiError::BatchLimit { limit }),
    }
}

pub(super) fn parse_batch_id(raw: &str) -> Result<BatchId, ApiError> {
    let id = BatchId::parse("batch_id", raw)
        .map_err(|_| ApiError::BatchNotFound { id: raw.to_owned() })?;
    record_path_id("batch_id", id.as_str());
    Ok(id)
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
    let batch = store::get(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| ApiError::BatchNotFound { id: id.to_string() })?;
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
    match store::cancel(&state.pool, &project, &id).await? {
        Cancelled::Accepted(batch) => Ok(HttpResponse::Ok().json(BatchObject::new(&batch))),
        Cancelled::Refused(batch) => Err(ApiError::CannotCancel {
            status: batch.status,
        }),
        Cancelled::NotFound => Err(ApiError::BatchNotFound { id: id.to_string() }),
    }
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
    let found = store::list(&state.pool, &project, page.after.as_ref(), page.limit)
        .await?
        .ok_or_else(|| query.unknown_cursor())?;
    let data = found.batches.iter().map(BatchObject::new).collect();
    Ok(HttpResponse::Ok().json(BatchList::new(data, found.has_more)))
}

tag!(BatchTag = "batch");

/// The OpenAI Batch object; every field present, `null` where unknown.
#[derive(Serialize, PartialEq, ToSchema)]
#[schema(as = Batch)]
pub(super) struct BatchObject {
    id: String,
    #[schema(inline)]
    object: BatchTag,
    endpoint: Endpoint,
    #[schema(required = true)]
    model: Option<String>,
    /// Why the batch failed validation.
    #[schema(required = true, value_type = Option<crate::domain::BatchErrors>)]
    errors: Option<Value>,
    input_file_id: String,
    completion_window: CompletionWindow,
    status: BatchStatus,
    #[schema(required = true)]
    output_file_id: Option<String>,
    #[schema(required = true)]
    error_file_id: Option<String>,
    created_at: i64,
    #[schema(required = true)]
    in_progress_at: Option<i64>,
    expires_at: i64,
    #[schema(required = true)]
    finalizing_at: Option<i64>,
    #[schema(required = true)]
    completed_at: Option<i64>,
    #[schema(required = true)]
    failed_at: Option<i64>,
    #[schema(required = true)]
    expired_at: Option<i64>,
    #[schema(required = true)]
    cancelling_at: Option<i64>,
    #[schema(required = true)]
    cancelled_at: Option<i64>,
    #[schema(inline)]
    request_counts: RequestCounts,
    /// Tokens used by the successful requests, once the batch has ended.
    #[schema(required = true, value_type = Option<crate::engine::output::BatchUsage>)]
    usage: Option<Value>,
    #[schema(required = true, value_type = Option<HashMap<String, String>>)]
    metadata: Option<Value>,
    /// OpenBatch extension: the batch whose failed lines this one runs again.
    #[schema(required = true)]
    retry_of: Option<String>,
    /// OpenBatch extension: batches retrying this one, oldest first.
    retries: Vec<String>,
}

#[derive(Serialize, PartialEq, ToSchema)]
struct RequestCounts {
    total: i32,
    completed: i32,
    failed: i32,
}

impl BatchObject {
    pub(super) fn new(b: &BatchRecord) -> Self {
        Self {
            id: b.id.as_str().to_owned(),
            object: BatchTag::Tag,
            endpoint: b.endpoint,
            model: b.model.clone(),
            errors: b.errors.clone(),
            input_file_id: b.input_file_id.as_str().to_owned(),
            completion_window: b.completion_window,
            status: b.status,
            output_file_id: b.output_file_id.as_ref().map(|f| f.as_str().to_owned()),
            error_file_id: b.error_file_id.as_ref().map(|f| f.as_str().to_owned()),
            created_at: b.created_at,
            in_progress_at: b.in_progress_at,
            expires_at: b.expires_at,
            finalizing_at: b.finalizing_at,
            completed_at: b.completed_at,
            failed_at: b.failed_at,
            expired_at: b.expired_at,
            cancelling_at: b.cancelling_at,
            cancelled_at: b.cancelled_at,
            request_counts: RequestCounts {
                total: b.request_total,
                completed: b.request_completed,
                failed: b.request_failed,
            },
            usage: b.usage.clone(),
            metadata: b.metadata.clone(),
            retry_of: b.retry_of.as_ref().map(|id| id.as_str().to_owned()),
            retries: b.retries.iter().map(|id| id.as_str().to_owned()).collect(),
        }
    }
}

list_type!(BatchList, BatchObject, "A page of batches.");
