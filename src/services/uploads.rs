//! The Uploads API's rules: an upload is created for a declared size, takes parts (each spooled
//! to local disk as it arrives, then written to the database) while pending and within its
//! hour, and is completed into a file from the parts the client names, in its order, checked
//! against the declared size and the client's md5; or cancelled. An expired or cancelled
//! upload's parts are removed.

use md5::{Digest, Md5};
use sqlx::PgPool;

use crate::config::LimitSettings;
use crate::domain::{
    check_part_ids, Invalid, NewUpload, ProjectId, Purpose, UploadId, UploadStatus, Utf8Check,
    MAX_PART_BYTES, UPLOAD_LIFETIME_SECS,
};
use crate::error::ApiError;
use crate::services::files::{check_quota, spool_failed, storage_quota, Spool};
use crate::store::content::{Content, NewContent};
use crate::store::files::{self as files_store, FileRecord, NewFile, CHUNK_BYTES};
use crate::store::uploads::{self as store, PartWriter, StoredPart};

pub use crate::store::uploads::{PartRecord, UploadRecord};

pub async fn create(
    pool: &PgPool,
    limits: &LimitSettings,
    project: &ProjectId,
    new: &NewUpload,
) -> Result<UploadRecord, ApiError> {
    // An early answer for an upload that could never be stored; completion checks again.
    if let Some(quota) = storage_quota(limits) {
        let stored = files_store::stored_bytes(pool, project).await?;
        check_quota(quota, stored, new.bytes as u64)?;
    }
    Ok(store::create(pool, project, new, UPLOAD_LIFETIME_SECS).await?)
}

/// The project's upload `id`, if it still takes parts (checked before a part is read, and
/// again when it is stored).
pub async fn pending(
    pool: &PgPool,
    project: &ProjectId,
    id: &UploadId,
) -> Result<UploadRecord, ApiError> {
    let upload = find(pool, project, id).await?;
    if upload.status != UploadStatus::Pending {
        return Err(not_pending(&upload));
    }
    Ok(upload)
}

async fn find(pool: &PgPool, project: &ProjectId, id: &UploadId) -> Result<UploadRecord, ApiError> {
    let mut conn = pool.acquire().await?;
    store::get(&mut conn, project, id)
        .await?
        .ok_or_else(|| ApiError::UploadNotFound { id: id.to_string() })
}

fn not_pending(upload: &UploadRecord) -> ApiError {
    ApiError::UploadNotPending {
        id: upload.id.to_string(),
        status: upload.status,
    }
}

/// A part on its way in, spooled: at most 64 MB.
pub struct IncomingPart {
    spool: Spool,
}

impl IncomingPart {
    pub async fn start(limits: &LimitSettings) -> Result<Self, ApiError> {
        let spool = Spool::create(limits.upload_spool_dir.as_deref())
            .await
            .map_err(spool_failed)?;
        Ok(Self { spool })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        let bytes = self.spool.bytes() + chunk.len() as u64;
        if bytes > MAX_PART_BYTES {
            return Err(ApiError::PartTooLarge {
                max: MAX_PART_BYTES,
            });
        }
        self.spool.write(chunk).await.map_err(spool_failed)
    }
}

/// Stores a received part, if its upload still takes it: pending, and holding at most
/// `limits.max_upload_total_bytes` with it (parts beyond the declared size are taken, since a
/// client may send one twice; completion names the ones that make the file).
pub async fn add_part(
    content: &Content,
    limits: &LimitSettings,
    project: &ProjectId,
    upload: &UploadRecord,
    mut part: IncomingPart,
) -> Result<PartRecord, ApiError> {
    let bytes = part.spool.bytes();
    if bytes == 0 {
        return Err(Invalid::new("data", "invalid_value", "The part is empty.").into());
    }
    part.spool.rewind().await.map_err(spool_failed)?;
    let pool = content.pool();
    let mut writer = PartWriter::begin(content, &upload.id, bytes as i64).await?;
    loop {
        let piece = part.spool.read(CHUNK_BYTES).await.map_err(spool_failed)?;
        if piece.is_empty() {
            break;
        }
        writer.write_chunk(piece).await?;
    }
    let max = limits.max_upload_total_bytes;
    if let Some(stored) = writer.commit(max as i64).await? {
        return Ok(stored);
    }
    // Completed, cancelled or expired meanwhile, or past the most an upload may hold.
    let now = pending(pool, project, &upload.id).await?;
    Err(ApiError::UploadTooLarge {
        max,
        received: store::received(pool, &now.id).await? as u64,
        part: bytes,
    })
}

/// `POST /v1/uploads/{id}/complete`, checked.
pub struct Completion {
    pub part_ids: Vec<String>,
    pub md5: Option<[u8; 16]>,
}

/// Assembles the upload into a file, in one transaction holding the upload: every part named
/// is the upload's, they hold exactly its declared bytes, and (if given) their md5 matches.
pub async fn complete(
    content: &Content,
    limits: &LimitSettings,
    project: &ProjectId,
    id: &UploadId,
    completion: &Completion,
) -> Result<(UploadRecord, FileRecord), ApiError> {
    check_part_ids(&completion.part_ids)?;
    let mut tx = content.pool().begin().await?;
    let mut upload = store::get(&mut tx, project, id)
        .await?
        .ok_or_else(|| ApiError::UploadNotFound { id: id.to_string() })?;
    if upload.status != UploadStatus::Pending {
        return Err(not_pending(&upload));
    }
    let found = named_parts(&mut tx, &upload, &completion.part_ids).await?;
    // Into a bucket, or from parts in one, the content is copied through here rather than by
    // a statement: read once, checked and copied in the same pass.
    let through_here = content.in_objects() || found.values().any(|p| p.in_object);
    let mut copy = through_here.then(|| content.create());
    let mut checked = Ok(());
    if completion.md5.is_some() || upload.purpose == Purpose::Batch || copy.is_some() {
        let parts = completion.part_ids.iter().map(|id| &found[id]);
        checked = verify(content, &mut tx, &upload, completion, parts, copy.as_mut()).await;
    }
    // Last, so that the project's storage row is locked only briefly.
    if let (Ok(()), Some(quota)) = (&checked, storage_quota(limits)) {
        let stored = files_store::lock_storage(&mut tx, project).await?;
        checked = check_quota(quota, stored, upload.bytes as u64);
    }
    if let Err(e) = checked {
        if let Some(copy) = copy {
            copy.abandon().await;
        }
        return Err(e);
    }
    let file = NewFile {
        project,
        filename: &upload.filename,
        purpose: upload.purpose,
        expires_after_seconds: upload.file_expires_after,
    };
    let file = match copy {
        None => store::assemble(&mut tx, &upload, file, &completion.part_ids).await?,
        Some(copy) => {
            let record = copy.finish(&mut tx, file).await?;
            store::completed(&mut tx, &upload, &record.id).await?;
            record
        }
    };
    tx.commit().await?;
    forget_removed_parts(content).await;
    upload.status = UploadStatus::Completed;
    upload.file_id = Some(file.id.clone());
    Ok((upload, file))
}

/// Reads the parts back in order: their md5 against the client's, and a batch file's UTF-8;
/// each chunk also goes to `copy`, if given.
async fn verify<'p>(
    content: &Content,
    conn: &mut sqlx::PgConnection,
    upload: &UploadRecord,
    completion: &Completion,
    parts: impl Iterator<Item = &'p StoredPart>,
    mut copy: Option<&mut NewContent>,
) -> Result<(), ApiError> {
    let mut md5 = Md5::new();
    let mut utf8 = Utf8Check::default();
    for part in parts {
        let mut idx = 0;
        while let Some(data) = content.part_chunk(conn, part, idx).await? {
            md5.update(&data);
            utf8.feed(&data);
            if let Some(copy) = copy.as_deref_mut() {
                let tx = copy.in_transaction().then_some(&mut *conn);
                copy.write_chunk(tx, &data).await?;
            }
            idx += 1;
        }
    }
    if upload.purpose == Purpose::Batch && !utf8.is_valid() {
        return Err(Invalid::new(
            "part_ids",
            "invalid_file_format",
            "Invalid file format for Batch API: the file must be UTF-8 encoded JSONL.",
        )
        .into());
    }
    if let Some(expected) = completion.md5 {
        let got: [u8; 16] = md5.finalize().into();
        if got != expected {
            return Err(Invalid::new(
                "md5",
                "md5_mismatch",
                format!(
                    "The parts' md5 is {}, not the {} given: bytes were lost or changed on the way.",
                    hex::encode(got),
                    hex::encode(expected)
                ),
            )
            .into());
        }
    }
    Ok(())
}

pub async fn cancel(
    content: &Content,
    project: &ProjectId,
    id: &UploadId,
) -> Result<UploadRecord, ApiError> {
    let pool = content.pool();
    if store::cancel(pool, project, id).await? {
        forget_removed_parts(content).await;
        let mut upload = find(pool, project, id).await?;
        upload.status = UploadStatus::Cancelled;
        return Ok(upload);
    }
    Err(not_pending(&find(pool, project, id).await?))
}

/// Deletes the objects of the parts just removed (they are on the ledger, due now: the
/// maintainer deletes them if this does not get to).
async fn forget_removed_parts(content: &Content) {
    if content.in_objects() {
        if let Err(e) = content.reconcile(64).await {
            tracing::warn!(error = %e, "could not delete removed parts' objects yet");
        }
    }
}

/// The parts `ids` names: each the upload's, together holding exactly its declared bytes.
async fn named_parts(
    conn: &mut sqlx::PgConnection,
    upload: &UploadRecord,
    ids: &[String],
) -> Result<std::collections::HashMap<String, StoredPart>, ApiError> {
    let id = &upload.id;
    let found: std::collections::HashMap<String, StoredPart> = store::parts(conn, id, ids)
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
    if let Some(missing) = ids.iter().find(|p| !found.contains_key(*p)) {
        return Err(Invalid::new(
            "part_ids",
            "invalid_value",
            format!("Part '{missing}' is not a part of upload {id}."),
        )
        .into());
    }
    let total: i64 = found.values().map(|p| p.bytes).sum();
    if total != upload.bytes {
        return Err(Invalid::new(
            "part_ids",
            "invalid_value",
            format!(
                "The parts listed hold {total} bytes; upload {id} was created for {} bytes.",
                upload.bytes
            ),
        )
        .into());
    }
    Ok(found)
}
