//! The rules of batches: creation (the project's limit of unfinished batches, and what an
//! idempotency key already used means, decided in [`resolve`] and answered in [`settle`]),
//! reading, listing, cancelling, and retrying an ended batch's failed lines (`retry`).

pub mod create_queue;
pub mod retry;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::LimitSettings;
use crate::domain::{ApiKeyId, BatchId, BatchSpec, IdempotencyKey, ProjectId};
pub use crate::engine::output::BatchUsage;
use crate::error::ApiError;
pub use crate::store::batches::BatchRecord;
use crate::store::batches::{self as store, Cancelled, Inserted, NewBatch};
use crate::store::keyset::Page;
use create_queue::CreateQueue;

/// What a creation came to, before it is answered.
pub enum Created {
    New(BatchRecord),
    /// Same key, same parameters: the batch as it is now.
    Replayed(BatchRecord),
    /// Same key, different parameters.
    Conflict(BatchRecord),
    /// The project has as many unfinished batches as it may.
    LimitReached,
}

impl Created {
    /// What an insert of a batch with parameters `hash` came to.
    pub fn from_insert(inserted: Inserted, hash: &str) -> Self {
        match inserted {
            Inserted::New(batch) => Self::New(batch),
            Inserted::KeyTaken(batch) => resolve(batch, hash),
            Inserted::LimitReached => Self::LimitReached,
        }
    }
}

/// What a creation with parameters `hash` is when its idempotency key already made `existing`:
/// the one place that tells a replay from a conflict.
pub fn resolve(existing: BatchRecord, hash: &str) -> Created {
    if existing.params_hash == hash {
        Created::Replayed(existing)
    } else {
        Created::Conflict(existing)
    }
}

/// A batch a request made, or the one its idempotency key had made already.
pub enum Creation {
    New(BatchRecord),
    Replayed(BatchRecord),
}

/// The answer to a creation (or a retry): the batch, or the error a conflict or the limit is.
fn settle(
    created: Created,
    key: Option<&IdempotencyKey>,
    limit: i64,
) -> Result<Creation, ApiError> {
    match created {
        Created::New(batch) => Ok(Creation::New(batch)),
        Created::Replayed(batch) => {
            crate::metrics::get().idempotent_replays.inc();
            Ok(Creation::Replayed(batch))
        }
        Created::Conflict(batch) => Err(ApiError::IdempotencyConflict {
            key: key.expect("only keyed creations conflict").clone(),
            batch: batch.id,
        }),
        Created::LimitReached => Err(ApiError::BatchLimit { limit }),
    }
}

/// What creating a batch takes of this replica.
pub struct Creator<'a> {
    pub pool: &'a PgPool,
    /// Where a retry's input file is written, and the files it reads.
    pub content: &'a crate::store::content::Content,
    pub creates: &'a CreateQueue,
    pub limits: &'a LimitSettings,
    /// Test-only shortening of the 24-hour completion window.
    pub expiry_override_secs: Option<i64>,
    /// This replica's worker, woken so that a new batch's validation starts at once.
    pub wake_worker: Option<&'a Arc<Notify>>,
    /// The key asking, for usage by key.
    pub api_key_id: Option<ApiKeyId>,
}

impl Creator<'_> {
    /// Seconds until a batch of `spec` expires.
    fn expires_in(&self, spec: &BatchSpec) -> i64 {
        self.expiry_override_secs
            .unwrap_or(spec.completion_window.seconds())
    }

    fn wake_worker(&self) {
        if let Some(worker) = self.wake_worker {
            worker.notify_one();
        }
    }

    /// Creates a batch of `spec` for `project`, or answers the one `key` made earlier.
    pub async fn create(
        &self,
        project: ProjectId,
        spec: BatchSpec,
        key: Option<IdempotencyKey>,
    ) -> Result<Creation, ApiError> {
        let created = self
            .creates
            .create(
                self.pool,
                NewBatch {
                    id: BatchId::generate(),
                    project,
                    hash: spec.fingerprint(),
                    expires_in_secs: self.expires_in(&spec),
                    spec,
                    key: key.clone(),
                    trace_context: crate::telemetry::traceparent(&tracing::Span::current()),
                    api_key_id: self.api_key_id.clone(),
                },
            )
            .await?;
        if let Created::Conflict(_) = created {
            crate::metrics::get().idempotency_conflicts.inc();
        }
        let creation = settle(
            created,
            key.as_ref(),
            self.limits.max_active_batches_per_project,
        )?;
        if let Creation::New(batch) = &creation {
            tracing::Span::current().record("batch_id", batch.id.as_str());
            tracing::info!(batch_id = %batch.id, "batch created");
            self.wake_worker();
        }
        Ok(creation)
    }
}

/// The project's batch `id`.
pub async fn get(
    pool: &PgPool,
    project: &ProjectId,
    id: &BatchId,
) -> Result<BatchRecord, ApiError> {
    store::get(pool, project, id)
        .await?
        .ok_or_else(|| ApiError::BatchNotFound { id: id.to_string() })
}

/// A page of the project's batches, newest first; `None` when `after` names none of them.
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&BatchId>,
    limit: u32,
) -> Result<Option<Page<BatchRecord>>, ApiError> {
    Ok(store::list(pool, project, after, limit).await?)
}

/// Cancels the batch (or finds it cancelling or cancelled already).
pub async fn cancel(
    pool: &PgPool,
    project: &ProjectId,
    id: &BatchId,
) -> Result<BatchRecord, ApiError> {
    match store::cancel(pool, project, id).await? {
        Cancelled::Accepted(batch) => Ok(batch),
        Cancelled::Refused(batch) => Err(ApiError::CannotCancel {
            status: batch.status,
        }),
        Cancelled::NotFound => Err(ApiError::BatchNotFound { id: id.to_string() }),
    }
}
