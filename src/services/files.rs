//! The file rules: an upload's content spooled and checked as it arrives, then stored within the
//! project's storage quota; a file found, listed, deleted or read back, always within a project.

mod spool;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sqlx::PgPool;

use crate::config::LimitSettings;
use crate::domain::{ExpiresAfter, FileId, Invalid, ProjectId, Purpose, Utf8Check};
use crate::error::{is_transient, ApiError};
use crate::store::content::{Content, ContentError, FileReader};
use crate::store::files::{self as store, Committed, NewFile, Upload, CHUNK_BYTES};

pub use crate::store::files::{FileRecord, ListQuery, Order};
pub use crate::store::keyset::Page;
pub use spool::{spool_failed, Spool};

const MAX_FILENAME_CHARS: usize = 255;

/// An upload's file part on its way in: spooled to local disk (no database connection is held
/// while the client sends it), measured, and checked to be UTF-8.
pub struct Incoming {
    spool: Spool,
    filename: String,
    utf8: Utf8Check,
    max: u64,
    /// Known to be a batch file already: stop at the first bad byte, not after 512 MB.
    batch: bool,
}

impl Incoming {
    /// Refuses a bad file name before a byte of the content is read. `purpose` is the one sent
    /// before the file part, if any.
    pub async fn start(
        limits: &LimitSettings,
        filename: String,
        purpose: Option<Purpose>,
    ) -> Result<Self, ApiError> {
        if filename.chars().count() > MAX_FILENAME_CHARS || filename.chars().any(char::is_control) {
            return Err(Invalid::new(
                "file",
                "invalid_value",
                format!("The file name must be at most {MAX_FILENAME_CHARS} printable characters."),
            )
            .into());
        }
        let spool = Spool::create(limits.upload_spool_dir.as_deref())
            .await
            .map_err(spool_failed)?;
        Ok(Self {
            spool,
            filename,
            utf8: Utf8Check::default(),
            max: limits.max_upload_bytes,
            batch: purpose == Some(Purpose::Batch),
        })
    }

    /// The next piece of the content, as received.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        if self.spool.bytes() + chunk.len() as u64 > self.max {
            return Err(ApiError::FileTooLarge { max: self.max });
        }
        self.utf8.feed(chunk);
        if self.batch && self.utf8.has_failed() {
            return Err(not_jsonl());
        }
        self.spool.write(chunk).await.map_err(spool_failed)
    }
}

fn not_jsonl() -> ApiError {
    Invalid::new(
        "file",
        "invalid_file_format",
        "Invalid file format for Batch API: the file must be UTF-8 encoded JSONL.",
    )
    .into()
}

/// A whole upload, received.
pub struct NewUpload {
    pub file: Incoming,
    pub purpose: Purpose,
    pub expires_after: Option<ExpiresAfter>,
}

/// Stores a received upload. A `batch` file is checked to be UTF-8 here; its lines are checked
/// as JSON requests when a batch using it is validated. Only now is the database involved, at
/// disk speed.
pub async fn upload(
    content: &Content,
    limits: &LimitSettings,
    project: &ProjectId,
    upload: NewUpload,
) -> Result<FileRecord, ApiError> {
    let NewUpload {
        file: mut incoming,
        purpose,
        expires_after,
    } = upload;
    let bytes = incoming.spool.bytes();
    if bytes == 0 {
        return Err(Invalid::new("file", "invalid_value", "The uploaded file is empty.").into());
    }
    if purpose == Purpose::Batch && !incoming.utf8.is_valid() {
        return Err(not_jsonl());
    }
    let quota = storage_quota(limits);
    if let Some(quota) = quota {
        // A cheap early answer; the commit checks again under a lock.
        let stored = store::stored_bytes(content.pool(), project).await?;
        check_quota(quota, stored, bytes)?;
    }
    let upload = copy_in(content, &mut incoming.spool).await?;
    let new = NewFile {
        project,
        filename: &incoming.filename,
        purpose,
        expires_after_seconds: expires_after.map(ExpiresAfter::seconds),
    };
    let file = match upload.commit(new, quota).await? {
        Committed::Stored(file) => file,
        Committed::OverQuota { stored } => {
            return Err(over_quota(quota.unwrap_or_default(), stored, bytes))
        }
    };
    Ok(file)
}

/// `limits.max_stored_bytes_per_project`, if set.
pub(crate) fn storage_quota(limits: &LimitSettings) -> Option<u64> {
    Some(limits.max_stored_bytes_per_project).filter(|&q| q > 0)
}

/// Whether `upload` more bytes keep a project storing `stored` within `quota`.
pub(crate) fn check_quota(quota: u64, stored: i64, upload: u64) -> Result<(), ApiError> {
    if stored as u64 + upload > quota {
        return Err(over_quota(quota, stored, upload));
    }
    Ok(())
}

fn over_quota(limit: u64, stored: i64, upload: u64) -> ApiError {
    ApiError::StorageQuota {
        limit,
        stored: stored.max(0) as u64,
        upload,
    }
}

/// The spooled content written to the database, not yet committed.
async fn copy_in(content: &Content, spool: &mut Spool) -> Result<Upload, ApiError> {
    spool.rewind().await.map_err(spool_failed)?;
    let mut upload = Upload::begin(content).await?;
    loop {
        let piece = spool.read(CHUNK_BYTES).await.map_err(spool_failed)?;
        if piece.is_empty() {
            return Ok(upload);
        }
        upload.write_chunk(piece).await?;
    }
}

/// The project's live file `id`.
pub async fn get(pool: &PgPool, project: &ProjectId, id: &FileId) -> Result<FileRecord, ApiError> {
    store::get(pool, project, id)
        .await?
        .ok_or_else(|| ApiError::FileNotFound { id: id.to_string() })
}

/// The file and its content, read one chunk at a time as it is sent. The first chunk is read
/// before the response's head goes out, so that a database or bucket failing then is a 503 the
/// SDKs retry rather than a 200 cut short; a later chunk's read is retried, since a failure
/// after the head can only cut the response short.
pub async fn content(
    content: &Content,
    project: &ProjectId,
    id: &FileId,
) -> Result<
    (
        FileRecord,
        impl Stream<Item = Result<Bytes, ContentError>> + 'static,
    ),
    ApiError,
> {
    let file = get(content.pool(), project, id).await?;
    let reader = content.open(&file.id).await?;
    let first = reader.chunk(0).await?;
    let total = file.bytes;
    let rest = futures_util::stream::try_unfold(
        (reader, 1_i32, first.as_ref().map_or(0, Vec::len) as i64),
        move |(reader, idx, sent)| async move {
            if sent >= total {
                return Ok(None);
            }
            let data = chunk_retried(&reader, idx).await?;
            Ok::<_, ContentError>(data.map(|d| {
                let sent = sent + d.len() as i64;
                (Bytes::from(d), (reader, idx + 1, sent))
            }))
        },
    );
    let first = futures_util::stream::iter(first.map(|d| Ok(Bytes::from(d))));
    Ok((file, first.chain(rest)))
}

/// A chunk read again after a database failure a retry clears (a pooled connection that was
/// killed, a failover): the bucket's client retries on its own.
async fn chunk_retried(reader: &FileReader, idx: i32) -> Result<Option<Vec<u8>>, ContentError> {
    const TRIES: u32 = 4;
    let mut tried = 1;
    loop {
        match reader.chunk(idx).await {
            Err(ContentError::Database(e)) if tried < TRIES && is_transient(&e) => {
                tracing::warn!(error = %e, tried, "reading a file's content failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tried))).await;
                tried += 1;
            }
            done => return done,
        }
    }
}

/// Deletes the file; its content goes at once unless a running batch still reads it.
pub async fn delete(content: &Content, project: &ProjectId, id: &FileId) -> Result<(), ApiError> {
    if !store::delete(content.pool(), project, id).await? {
        return Err(ApiError::FileNotFound { id: id.to_string() });
    }
    // The object of freed content is on the ledger already: the maintainer deletes it if
    // this does not get to.
    if content.in_objects() {
        if let Err(e) = content.reconcile(16).await {
            tracing::warn!(error = %e, "could not delete a deleted file's object yet");
        }
    }
    Ok(())
}

/// A page of the project's files; a cursor that names none of them is a 400.
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    query: ListQuery<'_>,
) -> Result<Page<FileRecord>, ApiError> {
    let after = query.after.map(FileId::to_string);
    store::list(pool, project, query)
        .await?
        .ok_or_else(|| ApiError::UnknownCursor {
            raw: after.unwrap_or_default(),
        })
}
