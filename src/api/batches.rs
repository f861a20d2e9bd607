use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pagination::{list_page, PageParams};
use super::{body, record_path_id, AppState, Project};
use crate::domain::{
    BatchId, BatchSpec, CompletionWindow, Endpoint, ExpiresAfter, FileId, IdempotencyKey, Invalid,
    Metadata, MetadataLimits,
};
use crate::error::ApiError;
use crate::store::batches::{self as store, BatchRecord, Cancelled, Created};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/batches")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(web::resource("/batches/{batch_id}").route(web::get().to(retrieve)))
    .service(web::resource("/batches/{batch_id}/cancel").route(web::post().to(cancel)));
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    /// Kept raw so `Metadata` can report OpenAI-style errors (`metadata.<key>`).
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    output_expires_after: Value,
    idempotency_key: Option<String>,
    /// The name the user's first integration used; still accepted.
    idem_tok: Option<String>,
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
    let mut conn = state.pool.acquire().await?;
    let created = store::create(
        &mut conn,
        &project,
        &spec,
        store::Options {
            key: key.as_ref(),
            expires_in_secs: expires_in,
            max_active: limit,
            trace_context: trace.as_deref(),
            retry_of: None,
            params_hash: None,
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
            Ok(HttpResponse::Ok().json(batch_object(&batch)))
        }
        Created::Replayed(batch) => {
            crate::metrics::get().idempotent_replays.inc();
            Ok(HttpResponse::Ok()
                .insert_header(("Idempotent-Replayed", "true"))
                .json(batch_object(&batch)))
        }
        Created::Conflict(batch) => {
            crate::metrics::get().idempotency_conflicts.inc();
            let key = key.expect("only keyed creations conflict");
            Err(ApiError::conflict(format!(
                "Idempotency key conflict: the key '{}' was already used to create batch {} with \
                 different parameters. Retry with the identical parameters, or use a new key.",
                key.as_str(),
                batch.id
            ))
            .with_param("idempotency_key")
            .with_code("idempotency_key_conflict"))
        }
        Created::LimitReached => Err(limit_reached(limit)),
    }
}

pub(super) fn limit_reached(limit: i64) -> ApiError {
    // Retrying at once cannot help; the SDKs would otherwise retry a 429.
    ApiError::too_many_requests(
        format!(
            "This project already has {limit} unfinished batches, the most it may have. \
             Wait for some to finish, or cancel some, before creating more."
        ),
        "batch_limit_exceeded",
    )
    .no_retry()
}

/// OpenAI's answer for a batch it does not know (files keep OpenAI's `No such File object`).
/// Another project's batch gets the same answer: it does not exist for the caller.
pub(super) fn batch_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No batch found with id '{id}'."))
        .with_param("batch_id")
        .with_code("batch_not_found")
}

pub(super) fn parse_batch_id(raw: &str) -> Result<BatchId, ApiError> {
    let id = BatchId::parse("batch_id", raw).map_err(|_| batch_not_found(raw))?;
    record_path_id("batch_id", id.as_str());
    Ok(id)
}

async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    let batch = store::get(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| batch_not_found(id.as_str()))?;
    Ok(HttpResponse::Ok().json(batch_object(&batch)))
}

async fn cancel(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    // The SDKs send no body (with a JSON content type); there is nothing to read.
    let id = parse_batch_id(&path)?;
    match store::cancel(&state.pool, &project, &id).await? {
        Cancelled::Accepted(batch) => Ok(HttpResponse::Ok().json(batch_object(&batch))),
        Cancelled::Refused(batch) => Err(ApiError::conflict(format!(
            "Cannot cancel a batch with status '{}'.",
            batch.status.as_str()
        ))),
        Cancelled::NotFound => Err(batch_not_found(id.as_str())),
    }
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

async fn list(
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| BatchId::parse("after", raw))?;
    let found = store::list(&state.pool, &project, page.after.as_ref(), page.limit)
        .await?
        .ok_or_else(|| query.unknown_cursor())?;
    let data = found.batches.iter().map(batch_object).collect();
    Ok(HttpResponse::Ok().json(list_page(data, found.has_more)))
}

/// The OpenAI Batch object; every field present, `null` where unknown.
pub(super) fn batch_object(b: &BatchRecord) -> Value {
    json!({
        "id": b.id.as_str(),
        "object": "batch",
        "endpoint": b.endpoint.as_str(),
        "model": b.model,
        "errors": b.errors,
        "input_file_id": b.input_file_id.as_str(),
        "completion_window": b.completion_window.as_str(),
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id.as_ref().map(FileId::as_str),
        "error_file_id": b.error_file_id.as_ref().map(FileId::as_str),
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.request_total,
            "completed": b.request_completed,
            "failed": b.request_failed,
        },
        "usage": b.usage,
        "metadata": b.metadata,
        // OpenBatch extensions (the SDKs keep unknown fields): retry links.
        "retry_of": b.retry_of.as_ref().map(BatchId::as_str),
        "retries": b.retries.iter().map(BatchId::as_str).collect::<Vec<_>>(),
    })
}
