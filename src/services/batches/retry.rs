//! A retry: a new batch made of the requests of an ended batch that failed, expired or were
//! cancelled (those its filter keeps), its input file built by the server as an upload would
//! be; idempotent like a creation.

use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{get, resolve, settle, Created, Creation, Creator};
use crate::domain::{
    BatchId, BatchSpec, BatchStatus, ExpiresAfter, FileId, IdempotencyKey, Metadata, ProjectId,
    Purpose, RetryFilter,
};
use crate::error::{ApiError, NoRetry, RetryFile};
use crate::services::files::{spool_failed, Spool};
use crate::services::results::retry::RetryInput;
use crate::services::results::FileLines;
use crate::store::batches::{self as store, BatchRecord, Options};
use crate::store::files::{self, FileRecord, Finished, NewFile, Upload, CHUNK_BYTES};

/// What a retry asks for besides the batch it retries.
pub struct RetryRequest {
    pub filter: RetryFilter,
    pub key: Option<IdempotencyKey>,
}

/// The parameters the new batch keeps of its origin, and the origin's error file.
struct Kept {
    error_file: FileId,
    metadata: Option<Metadata>,
    output_expires_after: Option<ExpiresAfter>,
}

impl Creator<'_> {
    /// Retries the project's ended batch `id`. Building the input file is an upload made by the
    /// server: `take_slot` takes one of the project's upload slots on this replica (held until
    /// the batch is created), so that any number of retries at once hold no more of the pool and
    /// the disk than uploads may, and one project's retries leave the others room.
    pub async fn retry<S>(
        &self,
        project: &ProjectId,
        id: &BatchId,
        request: RetryRequest,
        take_slot: impl FnOnce() -> Result<S, ApiError>,
    ) -> Result<Creation, ApiError> {
        let RetryRequest { filter, key } = request;
        let origin = get(self.pool, project, id).await?;
        let hash = filter.fingerprint(id);
        // A replay answers before any file is built.
        if let Some(key) = &key {
            if let Some(existing) = store::by_key(self.pool, project, key).await? {
                return settle(resolve(existing, &hash), Some(key), self.max_active());
            }
        }
        let kept = self.kept(project, &origin).await?;
        let _slot = take_slot()?;
        let (spool, lines) = self
            .select(project, &origin, &kept.error_file, &filter)
            .await?;
        let (file, mut tx) = self.store_input(project, id, spool).await?;
        let spec = BatchSpec {
            input_file_id: file.id,
            endpoint: origin.endpoint,
            completion_window: origin.completion_window,
            metadata: kept.metadata,
            output_expires_after: kept.output_expires_after,
        };
        let created = self
            .insert(&mut tx, project, &spec, key.as_ref(), id, &hash)
            .await?;
        let creation = settle(created, key.as_ref(), self.max_active())?;
        if let Creation::New(batch) = &creation {
            tx.commit().await?;
            tracing::info!(batch_id = %batch.id, retry_of = %id, lines, "retry batch created");
            self.wake_worker();
        }
        // Else a concurrent retry with the same key won; its file is the one kept.
        Ok(creation)
    }

    fn max_active(&self) -> i64 {
        self.limits.max_active_batches_per_project
    }

    /// What the new batch keeps of its origin, checked as a creation checks it: the limits may
    /// have changed since the origin was created.
    async fn kept(&self, project: &ProjectId, origin: &BatchRecord) -> Result<Kept, ApiError> {
        let id = &origin.id;
        if !origin.status.is_terminal() {
            return Err(ApiError::BatchNotFinished {
                batch: id.clone(),
                status: origin.status,
            });
        }
        let Some(error_file) = origin.error_file_id.clone() else {
            return Err(ApiError::NothingToRetry {
                batch: id.clone(),
                reason: if origin.status == BatchStatus::Failed {
                    NoRetry::FailedValidation
                } else {
                    NoRetry::EverythingSucceeded
                },
            });
        };
        let metadata = Metadata::from_json_within(
            origin.metadata.as_ref().unwrap_or(&Value::Null),
            self.limits.metadata,
        )?;
        let output_expires_after = store::output_expiry(self.pool, project, id)
            .await?
            .map(|s| ExpiresAfter::new("output_expires_after", ExpiresAfter::ANCHOR, s))
            .transpose()?;
        Ok(Kept {
            error_file,
            metadata,
            output_expires_after,
        })
    }

    /// One of the origin's files, ready to be read.
    async fn stored(
        &self,
        project: &ProjectId,
        origin: &BatchId,
        role: RetryFile,
        file: &FileId,
    ) -> Result<FileLines, ApiError> {
        let rec = files::get(self.pool, project, file).await?.ok_or_else(|| {
            ApiError::RetryInputUnavailable {
                batch: origin.clone(),
                role,
                file: file.clone(),
            }
        })?;
        Ok(FileLines::new(self.content.clone(), rec.id, rec.bytes))
    }

    /// Reads the requests to run again into a local spool, one short statement per file part:
    /// nothing is held in the database while the files are read. Returns the spool and how many
    /// requests it holds (at least one).
    async fn select(
        &self,
        project: &ProjectId,
        origin: &BatchRecord,
        error_file: &FileId,
        filter: &RetryFilter,
    ) -> Result<(Spool, usize), ApiError> {
        let id = &origin.id;
        let errors = self
            .stored(project, id, RetryFile::Errors, error_file)
            .await?;
        let input = self
            .stored(project, id, RetryFile::Input, &origin.input_file_id)
            .await?;
        let failed = |e: anyhow::Error| match e.downcast::<sqlx::Error>() {
            // The database is busy or away: the caller may retry.
            Ok(e) => ApiError::from(e),
            Err(e) => {
                tracing::error!(batch_id = %id, error = format!("{e:#}"), "building a retry failed");
                ApiError::Internal
            }
        };
        let mut spool = Spool::create(self.limits.upload_spool_dir.as_deref())
            .await
            .map_err(spool_failed)?;
        let mut requests = RetryInput::new(id, input, errors, filter);
        let mut lines = 0;
        while let Some(line) = requests.next().await.map_err(failed)? {
            spool.write(&line).await.map_err(spool_failed)?;
            spool.write(b"\n").await.map_err(spool_failed)?;
            lines += 1;
        }
        if lines == 0 {
            return Err(ApiError::NothingToRetry {
                batch: id.clone(),
                reason: NoRetry::NoMatch,
            });
        }
        Ok((spool, lines))
    }

    /// Stores the spooled input as a new `batch` file, within the project's storage quota; the
    /// file is visible once the returned transaction commits.
    async fn store_input(
        &self,
        project: &ProjectId,
        origin: &BatchId,
        mut spool: Spool,
    ) -> Result<(FileRecord, Transaction<'static, Postgres>), ApiError> {
        let bytes = spool.bytes();
        let quota = Some(self.limits.max_stored_bytes_per_project).filter(|&q| q > 0);
        let over = |limit: u64, stored: u64| ApiError::StorageQuota {
            limit,
            stored,
            upload: bytes,
        };
        if let Some(quota) = quota {
            // A cheap early answer; `finish` checks again under a lock.
            let stored = files::stored_bytes(self.pool, project).await?;
            if stored as u64 + bytes > quota {
                return Err(over(quota, stored as u64));
            }
        }
        // Only now is a connection held, by one transaction, at disk speed.
        spool.rewind().await.map_err(spool_failed)?;
        let mut upload = Upload::begin(self.content).await?;
        loop {
            let piece = spool.read(CHUNK_BYTES).await.map_err(spool_failed)?;
            if piece.is_empty() {
                break;
            }
            upload.write_chunk(piece).await?;
        }
        let file = NewFile {
            project,
            filename: &format!("{origin}_retry.jsonl"),
            purpose: Purpose::Batch,
            expires_after_seconds: None,
        };
        match upload.finish(file, quota).await? {
            Finished::Stored(file, tx) => Ok((file, tx)),
            Finished::OverQuota { stored } => {
                Err(over(quota.unwrap_or_default(), stored.max(0) as u64))
            }
        }
    }

    /// Inserts the retry batch in the transaction that stored its input.
    async fn insert(
        &self,
        tx: &mut PgConnection,
        project: &ProjectId,
        spec: &BatchSpec,
        key: Option<&IdempotencyKey>,
        origin: &BatchId,
        hash: &str,
    ) -> Result<Created, ApiError> {
        let trace = crate::telemetry::traceparent(&tracing::Span::current());
        let options = Options {
            key,
            expires_in_secs: self.expires_in(spec),
            max_active: self.max_active(),
            trace_context: trace.as_deref(),
            retry_of: Some(origin),
            params_hash: hash,
        };
        let inserted = store::create(tx, project, spec, options).await?;
        Ok(Created::from_insert(inserted, hash))
    }
}
