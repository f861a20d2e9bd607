//! `POST /v1/batches/{id}/retry` (OpenBatch extension): a new batch made of the requests of an
//! ended batch that failed, expired or were cancelled, optionally filtered; idempotent like
//! batch creation.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batch_object::{
    created, creator, idempotency_key, parse_batch_id, BatchObject, IdempotencyKeyHeader,
};
use super::{body, AppState, Project, UsedKey};
use crate::domain::{IdempotencyKey, Invalid, RetryFilter};
use crate::error::{ApiError, ErrorResponse};
use crate::services::batches::retry::RetryRequest;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(retry_batch);
}

/// The (optional) body of a retry: which failed lines to run again (all when both lists are
/// empty or absent). Also accepted: `idempotency_key` / `idem_tok` (as for batch creation), in
/// place of the Idempotency-Key header.
// The keys are left out of the schema: generated requests would send three different ones,
// which is a 400 every time.
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RetryRequest)]
struct RetryBody {
    /// Retry the lines whose `error.code` is one of these.
    #[serde(default)]
    #[schema(schema_with = RetryFilter::error_codes_schema)]
    error_codes: Value,
    /// Retry the lines whose `response.status_code` is one of these.
    #[serde(default)]
    #[schema(schema_with = RetryFilter::status_codes_schema)]
    status_codes: Value,
    #[schema(ignore)]
    idempotency_key: Option<String>,
    #[schema(ignore)]
    idem_tok: Option<String>,
}

impl RetryBody {
    fn idempotency_key(&self, req: &HttpRequest) -> Result<Option<IdempotencyKey>, Invalid> {
        idempotency_key(
            req,
            self.idempotency_key.as_deref(),
            self.idem_tok.as_deref(),
        )
    }
}

#[utoipa::path(
    operation_id = "retryBatch",
    tag = "batches",
    summary = "A new batch of the failed lines of an ended batch (OpenBatch extension)",
    description = "Copies, in input order and byte for byte, the input lines of the requests in \
                   the batch's error file (upstream errors, requests that got no answer, and \
                   expired or cancelled ones), optionally only those whose `error.code` is in \
                   `error_codes` or whose `response.status_code` is in `status_codes`, into a new \
                   `batch` file, and creates a batch from it with the same endpoint, metadata and \
                   `output_expires_after`. The file counts against the storage quota, and \
                   building it takes one of the replica's upload slots \
                   (limits.max_concurrent_uploads; 429 too_many_uploads when all are taken). \
                   The new batch has `retry_of`; the origin lists it in `retries`. Idempotent \
                   like batch creation (`Idempotency-Key` header, or `idempotency_key` / \
                   `idem_tok` in the body): the same key and filters answer the same batch, other \
                   filters 409.",
    params(("batch_id" = String, Path), IdempotencyKeyHeader),
    request_body = Option<RetryBody>,
    responses(
        (status = 200,
            description = "The new batch (or, replayed, the one created earlier with this key)",
            body = BatchObject,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key had \
                created this batch already"))),
        (status = 400, response = ErrorResponse),
        (status = 403, description = "The new input file would take the project past its file \
            storage quota (limits.max_stored_bytes_per_project): code storage_quota_exceeded",
            body = crate::error::Envelope),
        (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[post("/batches/{batch_id}/retry")]
async fn retry_batch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
    used: UsedKey,
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    let body: RetryBody =
        body::optional_json(&req, payload, state.limits.max_json_body_bytes).await?;
    let request = RetryRequest {
        filter: RetryFilter::from_json(&body.error_codes, &body.status_codes)?,
        key: body.idempotency_key(&req)?,
    };
    let take_slot = || {
        state
            .uploads
            .take(&project)
            .map_err(ApiError::TooManyRetryBuilds)
    };
    let creation = creator(&state, used)
        .retry(&project, &id, request, take_slot)
        .await?;
    Ok(created(creation))
}
