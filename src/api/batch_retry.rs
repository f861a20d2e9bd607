//! `POST /v1/batches/{id}/retry` (OpenBatch extension): a new batch made of the requests of an
//! ended batch that failed, expired or were cancelled, optionally filtered; idempotent like
//! batch creation.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batches::{parse_batch_id, BatchObject, IdempotencyKeyHeader};
use super::spool::{spool_failed, Spool};
use super::{body, AppState, Project};
use crate::domain::{
    BatchId, BatchSpec, BatchStatus, ExpiresAfter, FileId, IdempotencyKey, Invalid, Metadata,
    Purpose, RetryFilter,
};
use crate::error::{ApiError, ErrorResponse, NoRetry, RetryFile};
use crate::results::retry::RetryInput;
use crate::results::FileLines;
use crate::store::batches::{self as store, BatchRecord, Created};
use crate::store::files::{self, Finished, NewFile, Upload, CHUNK_BYTES};

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
        super::batches::idempotency_key(
            req,
            self.idempotency_key.as_deref(),
            self.idem_tok.as_deref(),
        )
    }
}

fn conflict(key: &IdempotencyKey, existing: &BatchRecord) -> ApiError {
    ApiError::IdempotencyConflict {
        key: key.clone(),
        batch: existing.id.clone(),
    }
}

fn replayed(batch: &BatchRecord) -> HttpResponse {
    crate::metrics::get().idempotent_replays.inc();
    HttpResponse::Ok()
        .insert_header(("Idempotent-Replayed", "true"))
        .json(BatchObject::new(batch))
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
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    let body: RetryBody =
        body::optional_json(&req, payload, state.limits.max_json_body_bytes).await?;
    let filter = RetryFilter::from_json(&body.error_codes, &body.status_codes)?;
    let key = body.idempotency_key(&req)?;
    let origin = store::get(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| ApiError::BatchNotFound { id: id.to_string() })?;
    let hash = filter.fingerprint(&id);
    // A replay answers before any file is built.
    if let Some(key) = &key {
        if let Some(existing) = store::by_key(&state.pool, &project, key).await? {
            if existing.params_hash != hash {
                return Err(conflict(key, &existing));
            }
            return Ok(replayed(&existing));
        }
    }
    if !origin.status.is_terminal() {
        return Err(ApiError::BatchNotFinished {
            batch: id,
            status: origin.status,
        });
    }
    let nothing = |reason| ApiError::NothingToRetry {
        batch: id.clone(),
        reason,
    };
    let Some(error_file) = origin.error_file_id.clone() else {
        return Err(nothing(if origin.status == BatchStatus::Failed {
            NoRetry::FailedValidation
        } else {
            NoRetry::EverythingSucceeded
        }));
    };
    // The new batch's parameters are checked as a creation checks them: the limits may have
    // changed since the origin was created.
    let metadata = Metadata::from_json_within(
        origin.metadata.as_ref().unwrap_or(&Value::Null),
        state.limits.metadata,
    )?;
    let output_expires_after = store::output_expiry(&state.pool, &project, &id)
        .await?
        .map(|s| ExpiresAfter::new("output_expires_after", ExpiresAfter::ANCHOR, s))
        .transpose()?;
    // Building the file is an upload made by the server: it takes one of the project's upload
    // slots on this replica, so that any number of retries at once hold no more of the pool and
    // the disk than uploads may, and one project's retries leave the others room.
    let _slot = state
        .uploads
        .take(&project)
        .map_err(ApiError::TooManyRetryBuilds)?;
    let unavailable = |role, file: &FileId| ApiError::RetryInputUnavailable {
        batch: id.clone(),
        role,
        file: file.clone(),
    };
    let stored = |what: RetryFile, file: FileId| {
        let state = state.clone();
        let project = project.clone();
        async move {
            let rec = files::get(&state.pool, &project, &file)
                .await?
                .ok_or_else(|| unavailable(what, &file))?;
            Ok::<_, ApiError>(FileLines::new(rec.id, rec.bytes))
        }
    };
    let errors = stored(RetryFile::Errors, error_file).await?;
    let input = stored(RetryFile::Input, origin.input_file_id.clone()).await?;
    let (mut spool, lines) = select(&state, &id, input, errors, &filter).await?;
    if lines == 0 {
        return Err(nothing(NoRetry::NoMatch));
    }
    let bytes = spool.bytes();
    let quota = Some(state.limits.max_stored_bytes_per_project).filter(|&q| q > 0);
    if let Some(quota) = quota {
        // A cheap early answer; `finish` checks again under a lock.
        let stored = files::stored_bytes(&state.pool, &project).await?;
        if stored as u64 + bytes > quota {
            return Err(ApiError::StorageQuota {
                limit: quota,
                stored: stored as u64,
                upload: bytes,
            });
        }
    }
    // Only now is a connection held, by one transaction, at disk speed.
    spool.rewind().await.map_err(spool_failed)?;
    let mut upload = Upload::begin(&state.pool).await?;
    loop {
        let piece = spool.read(CHUNK_BYTES).await.map_err(spool_failed)?;
        if piece.is_empty() {
            break;
        }
        upload.write_chunk(piece).await?;
    }
    let finished = upload
        .finish(
            NewFile {
                project: &project,
                filename: &format!("{id}_retry.jsonl"),
                purpose: Purpose::Batch,
                expires_after_seconds: None,
            },
            quota,
        )
        .await?;
    let (file, mut tx) = match finished {
        Finished::Stored(file, tx) => (file, tx),
        Finished::OverQuota { stored } => {
            return Err(ApiError::StorageQuota {
                limit: quota.unwrap_or_default(),
                stored: stored.max(0) as u64,
                upload: bytes,
            })
        }
    };
    let spec = BatchSpec {
        input_file_id: file.id,
        endpoint: origin.endpoint,
        completion_window: origin.completion_window,
        metadata,
        output_expires_after,
    };
    let trace = crate::telemetry::traceparent(&tracing::Span::current());
    let created = store::create(
        &mut tx,
        &project,
        &spec,
        store::Options {
            key: key.as_ref(),
            expires_in_secs: state
                .expiry_override_secs
                .unwrap_or(spec.completion_window.seconds()),
            max_active: state.limits.max_active_batches_per_project,
            trace_context: trace.as_deref(),
            retry_of: Some(&id),
            params_hash: Some(&hash),
        },
    )
    .await?;
    match created {
        Created::New(batch) => {
            tx.commit().await?;
            tracing::info!(batch_id = %batch.id, retry_of = %id, lines, "retry batch created");
            if let Some(worker) = &state.wake_worker {
                worker.notify_one();
            }
            Ok(HttpResponse::Ok().json(BatchObject::new(&batch)))
        }
        // A concurrent retry with the same key won; its file is the one kept.
        Created::Replayed(batch) => Ok(replayed(&batch)),
        Created::Conflict(batch) => Err(conflict(key.as_ref().expect("keyed"), &batch)),
        Created::LimitReached => Err(ApiError::BatchLimit {
            limit: state.limits.max_active_batches_per_project,
        }),
    }
}

/// Reads the requests to run again into a local spool, one short statement per file part:
/// nothing is held in the database while the files are read. Returns the spool and how many
/// requests it holds.
async fn select(
    state: &AppState,
    id: &BatchId,
    input: FileLines,
    errors: FileLines,
    filter: &RetryFilter,
) -> Result<(Spool, usize), ApiError> {
    let failed = |e: anyhow::Error| match e.downcast::<sqlx::Error>() {
        // The database is busy or away: the caller may retry.
        Ok(e) => ApiError::from(e),
        Err(e) => {
            tracing::error!(batch_id = %id, error = format!("{e:#}"), "building a retry failed");
            ApiError::Internal
        }
    };
    let mut spool = Spool::create(state.limits.upload_spool_dir.as_deref())
        .await
        .map_err(spool_failed)?;
    let mut requests = RetryInput::new(id, input, errors, filter);
    let mut lines = 0;
    while let Some(line) = requests.next(&state.pool).await.map_err(failed)? {
        spool.write(&line).await.map_err(spool_failed)?;
        spool.write(b"\n").await.map_err(spool_failed)?;
        lines += 1;
    }
    Ok((spool, lines))
}
