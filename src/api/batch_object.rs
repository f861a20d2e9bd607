//! What every batch route shares: the batch as they answer it (the OpenAI Batch object), the
//! path's batch id, the idempotency key of a creation or a retry, the answer to either, and
//! what the batch services need of this replica.

use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::Required;
use utoipa::ToSchema;

use super::{record_path_id, AppState, UsedKey};
use crate::domain::{
    behind_schedule, BatchId, BatchStatus, CompletionWindow, Endpoint, IdempotencyKey, Invalid,
};
use crate::error::ApiError;
use crate::services::batches::{BatchRecord, Creation, Creator};

/// What the batch services need of this replica (and of the asking key) to create a batch.
pub(super) fn creator(state: &AppState, key: UsedKey) -> Creator<'_> {
    Creator {
        pool: &state.pool,
        content: &state.content,
        creates: &state.creates,
        limits: &state.limits,
        expiry_override_secs: state.expiry_override_secs,
        wake_worker: state.wake_worker.as_ref(),
        api_key_id: key.0,
    }
}

/// The answer to a creation or a retry: the batch, marked `Idempotent-Replayed` when the key
/// had made it already.
pub(super) fn created(creation: Creation) -> HttpResponse {
    match creation {
        Creation::New(batch) => HttpResponse::Ok().json(BatchObject::new(&batch)),
        Creation::Replayed(batch) => HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(BatchObject::new(&batch)),
    }
}

/// The path's batch id; one that cannot be an id is a batch not found.
pub(super) fn parse_batch_id(raw: &str) -> Result<BatchId, ApiError> {
    let id = BatchId::parse("batch_id", raw)
        .map_err(|_| ApiError::BatchNotFound { id: raw.to_owned() })?;
    record_path_id("batch_id", id.as_str());
    Ok(id)
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

tag!(BatchTag = "batch");

/// The OpenAI Batch object; every field present, `null` where unknown.
#[derive(Serialize, PartialEq, ToSchema)]
#[schema(as = Batch)]
pub(super) struct BatchObject {
    pub(super) id: String,
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
    #[schema(required = true, value_type = Option<crate::services::batches::BatchUsage>)]
    usage: Option<Value>,
    #[schema(required = true, value_type = Option<HashMap<String, String>>)]
    metadata: Option<Value>,
    /// OpenBatch extension: the batch whose failed lines this one runs again.
    #[schema(required = true)]
    retry_of: Option<String>,
    /// OpenBatch extension: batches retrying this one, oldest first.
    retries: Vec<String>,
    /// OpenBatch extension: `true` while the batch runs at a pace that would not finish before
    /// `expires_at` (see `openbatch_batches_behind_schedule` in `/metrics`).
    behind_schedule: bool,
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
            behind_schedule: b.status == BatchStatus::InProgress
                && b.in_progress_at.is_some_and(|started| {
                    let done = b.request_completed + b.request_failed;
                    behind_schedule(
                        crate::domain::unix_now(),
                        started,
                        b.expires_at,
                        b.request_total.into(),
                        done.into(),
                    )
                }),
        }
    }
}
