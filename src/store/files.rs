use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::{FileId, ProjectId, Purpose};
use crate::store::chunks::Position;
use crate::store::content::{Content, ContentError, NewContent};
use crate::store::keyset::{self, Page};

#[derive(Debug, Clone)]
pub struct FileRecord {
    pub id: FileId,
    pub filename: String,
    pub purpose: Purpose,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

// The statements below write out the columns of `FileRecord`, and which files are visible
// (neither deleted nor past their expiry: `deleted_at IS NULL AND (expires_at IS NULL OR
// expires_at > unix_now())`), in full: the query macros take literals only.

/// Content is stored in chunks of about this size.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// An upload in progress: chunks are written inside one transaction and the `files` row last,
/// so an aborted upload leaves nothing behind.
pub struct Upload {
    pool: PgPool,
    /// Held while the content is written only when the content is rows of it: an object's
    /// upload holds no connection until its `files` row is written.
    tx: Option<Transaction<'static, Postgres>>,
    content: NewContent,
}

pub struct NewFile<'a> {
    pub project: &'a ProjectId,
    pub filename: &'a str,
    pub purpose: Purpose,
    pub expires_after_seconds: Option<i64>,
}

/// One chunk of content written in the caller's transaction.
#[tracing::instrument(skip_all, name = "db.files.write_chunk")]
pub async fn write_chunk(
    conn: &mut PgConnection,
    id: &FileId,
    idx: i32,
    data: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO file_chunks (file_id, idx, data) VALUES ($1, $2, $3)",
        id.as_str(),
        idx,
        data,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the file's content is an object (else in `file_chunks`), and its size.
#[tracing::instrument(skip_all, name = "db.files.storage_of")]
pub async fn storage_of(pool: &PgPool, id: &FileId) -> Result<Option<(bool, i64)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT storage = 's3' AS \"object!\", bytes FROM files WHERE id = $1",
        id.as_str()
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.object, r.bytes)))
}

/// The `files` row of content written under `id` in the caller's transaction.
#[tracing::instrument(skip_all, name = "db.files.finish")]
pub async fn insert(
    conn: &mut PgConnection,
    id: &FileId,
    file: NewFile<'_>,
    bytes: i64,
    in_object: bool,
) -> Result<FileRecord, sqlx::Error> {
    sqlx::query_as!(
        FileRecord,
        r#"INSERT INTO files (id, project_id, filename, purpose, bytes, expires_at, storage)
           VALUES ($1, $2, $3, $4, $5, unix_now() + $6,
                   CASE WHEN $7 THEN 's3' ELSE 'postgres' END)
           RETURNING id AS "id: FileId", filename, purpose AS "purpose: Purpose", bytes,
                     created_at, expires_at"#,
        id.as_str(),
        file.project.as_str(),
        file.filename,
        file.purpose.as_str(),
        bytes,
        file.expires_after_seconds,
        in_object,
    )
    .fetch_one(conn)
    .await
}

/// The bytes the project stores, its storage row locked until the caller's transaction ends:
/// uploads racing on any replicas cannot overshoot the quota together.
#[tracing::instrument(skip_all, name = "db.files.lock_storage")]
pub async fn lock_storage(
    conn: &mut PgConnection,
    project: &ProjectId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO project_storage AS s (project_id) VALUES ($1)
         ON CONFLICT (project_id) DO UPDATE SET stored_bytes = s.stored_bytes
         RETURNING stored_bytes",
        project.as_str(),
    )
    .fetch_one(conn)
    .await
}

impl Upload {
    #[tracing::instrument(skip_all, name = "db.files.begin")]
    pub async fn begin(content: &Content) -> Result<Self, sqlx::Error> {
        let new = content.create();
        Ok(Self {
            pool: content.pool().clone(),
            tx: match new.in_transaction() {
                true => Some(content.pool().begin().await?),
                false => None,
            },
            content: new,
        })
    }

    pub async fn write_chunk(&mut self, data: &[u8]) -> Result<(), ContentError> {
        self.content.write_chunk(self.tx.as_deref_mut(), data).await
    }

    /// Writes the `files` row and commits, unless the project would then store more than
    /// `quota` bytes (then nothing is kept).
    #[tracing::instrument(skip_all, name = "db.files.commit")]
    pub async fn commit(
        self,
        file: NewFile<'_>,
        quota: Option<u64>,
    ) -> Result<Committed, ContentError> {
        Ok(match self.finish(file, quota).await? {
            Finished::Stored(record, tx) => {
                tx.commit().await?;
                Committed::Stored(record)
            }
            Finished::OverQuota { stored } => Committed::OverQuota { stored },
        })
    }

    /// Writes the `files` row, unless the project would then store more than `quota` bytes,
    /// and hands back the transaction for the caller to write what goes with the file (a
    /// retry's batch) and commit. The project's storage row is locked from the check to the
    /// commit, so uploads racing on any replicas cannot overshoot the quota together; the lock
    /// is taken last, once the content is written, so it is held only briefly.
    #[tracing::instrument(skip_all, name = "db.files.finish")]
    pub async fn finish(
        self,
        file: NewFile<'_>,
        quota: Option<u64>,
    ) -> Result<Finished, ContentError> {
        let sealed = self.content.seal().await?;
        let mut tx = match self.tx {
            Some(tx) => tx,
            None => self.pool.begin().await?,
        };
        if let Some(quota) = quota {
            let stored = lock_storage(&mut tx, file.project).await?;
            if stored.saturating_add(sealed.bytes()) > quota as i64 {
                drop(tx);
                sealed.discard().await;
                return Ok(Finished::OverQuota { stored });
            }
        }
        let record = sealed.finish(&mut tx, file).await?;
        Ok(Finished::Stored(record, tx))
    }
}

pub enum Committed {
    Stored(FileRecord),
    /// The upload would take the project past its quota; it stores `stored` bytes already.
    OverQuota {
        stored: i64,
    },
}

pub enum Finished {
    /// The file, visible once the transaction commits (dropped, it rolls back).
    Stored(FileRecord, Transaction<'static, Postgres>),
    /// As `Committed::OverQuota`; nothing is kept.
    OverQuota { stored: i64 },
}

/// Bytes the project's files take (neither deleted nor purged), as the quota counts them.
#[tracing::instrument(skip_all, name = "db.files.stored_bytes")]
pub async fn stored_bytes(pool: &PgPool, project: &ProjectId) -> Result<i64, sqlx::Error> {
    let stored: Option<i64> = sqlx::query_scalar!(
        "SELECT stored_bytes FROM project_storage WHERE project_id = $1",
        project.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(stored.unwrap_or(0))
}

#[tracing::instrument(skip_all, name = "db.files.get")]
pub async fn get(
    pool: &PgPool,
    project: &ProjectId,
    id: &FileId,
) -> Result<Option<FileRecord>, sqlx::Error> {
    sqlx::query_as!(
        FileRecord,
        r#"SELECT id AS "id: FileId", filename, purpose AS "purpose: Purpose", bytes, created_at,
                  expires_at
           FROM files
           WHERE project_id = $1 AND id = $2
             AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > unix_now())"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

pub struct ListQuery<'a> {
    pub purpose: Option<Purpose>,
    pub after: Option<&'a FileId>,
    pub limit: u32,
    pub order: Order,
}

/// Keyset pagination on `(project_id, seq)`. `None` when `after` names no file of the project
/// (deleted files keep their position, so a listing survives deletions mid-way).
#[tracing::instrument(skip_all, name = "db.files.list")]
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    q: ListQuery<'_>,
) -> Result<Option<Page<FileRecord>>, sqlx::Error> {
    let cursor = q.after.map(|id| {
        sqlx::query_scalar!(
            "SELECT seq FROM files WHERE project_id = $1 AND id = $2",
            project.as_str(),
            id.as_str(),
        )
        .fetch_optional(pool)
    });
    let purpose = q.purpose.map(Purpose::as_str);
    keyset::page(cursor, q.limit, |after, fetch| {
        rows(pool, project, purpose, q.order, after, fetch)
    })
    .await
}

// One statement per direction, so that both are checked at compile time.
async fn rows(
    pool: &PgPool,
    project: &ProjectId,
    purpose: Option<&str>,
    order: Order,
    after: Option<i64>,
    fetch: i64,
) -> Result<Vec<FileRecord>, sqlx::Error> {
    match order {
        Order::Asc => {
            sqlx::query_as!(
                FileRecord,
                r#"SELECT id AS "id: FileId", filename, purpose AS "purpose: Purpose", bytes,
                          created_at, expires_at
                   FROM files
                   WHERE project_id = $1
                     AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > unix_now())
                     AND seq > $2 AND ($3::text IS NULL OR purpose = $3)
                   ORDER BY seq ASC LIMIT $4"#,
                project.as_str(),
                after.unwrap_or(i64::MIN),
                purpose,
                fetch,
            )
            .fetch_all(pool)
            .await
        }
        Order::Desc => {
            sqlx::query_as!(
                FileRecord,
                r#"SELECT id AS "id: FileId", filename, purpose AS "purpose: Purpose", bytes,
                          created_at, expires_at
                   FROM files
                   WHERE project_id = $1
                     AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > unix_now())
                     AND seq < $2 AND ($3::text IS NULL OR purpose = $3)
                   ORDER BY seq DESC LIMIT $4"#,
                project.as_str(),
                after.unwrap_or(i64::MAX),
                purpose,
                fetch,
            )
            .fetch_all(pool)
            .await
        }
    }
}

// A file's content is kept, after the file is deleted or expires, while a batch still reads
// it (`in_use` below, in `delete` and `purge`): one being validated, or one whose chunks point
// into it.

/// Marks the file deleted and frees its content at once, unless a running batch still reads it
/// (then the janitor frees it when that batch ends). False when there was no such live file.
#[tracing::instrument(skip_all, name = "db.files.delete")]
pub async fn delete(pool: &PgPool, project: &ProjectId, id: &FileId) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let in_use: Option<bool> = sqlx::query_scalar!(
        r#"UPDATE files SET deleted_at = unix_now()
           WHERE project_id = $1 AND id = $2
             AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > unix_now())
           RETURNING (EXISTS (SELECT 1 FROM batch_chunks c WHERE c.file_id = files.id)
                      OR EXISTS (SELECT 1 FROM batches b
                                 WHERE b.input_file_id = files.id AND b.status = 'validating'))
                     AS "in_use!""#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if in_use == Some(false) {
        sqlx::query!("DELETE FROM file_chunks WHERE file_id = $1", id.as_str())
            .execute(&mut *tx)
            .await?;
        mark_purged(&mut *tx, id).await?;
    }
    tx.commit().await?;
    Ok(in_use.is_some())
}

/// Parts deleted per transaction by the janitor (each up to `CHUNK_BYTES`), so no purge holds
/// a transaction open long enough to pin vacuum.
const PURGE_PARTS: i64 = 16;

/// Frees the content of deleted and expired files that no batch reads any more, in small
/// transactions; returns how many files were finished.
#[tracing::instrument(level = "debug", skip_all, name = "db.files.purge")]
pub async fn purge(pool: &PgPool, max_files: i64) -> Result<u64, sqlx::Error> {
    let ids: Vec<FileId> = sqlx::query_scalar!(
        r#"SELECT id AS "id: FileId" FROM files
           WHERE NOT purged AND coalesce(deleted_at, expires_at) <= unix_now()
             AND NOT (EXISTS (SELECT 1 FROM batch_chunks c WHERE c.file_id = files.id)
                      OR EXISTS (SELECT 1 FROM batches b
                                 WHERE b.input_file_id = files.id AND b.status = 'validating'))
           ORDER BY coalesce(deleted_at, expires_at) LIMIT $1"#,
        max_files,
    )
    .fetch_all(pool)
    .await?;
    for id in &ids {
        loop {
            let n = sqlx::query!(
                "DELETE FROM file_chunks WHERE file_id = $1 AND idx IN (
                    SELECT idx FROM file_chunks WHERE file_id = $1 ORDER BY idx LIMIT $2)",
                id.as_str(),
                PURGE_PARTS,
            )
            .execute(pool)
            .await?
            .rows_affected();
            if n == 0 {
                break;
            }
        }
        mark_purged(pool, id).await?;
    }
    Ok(ids.len() as u64)
}

/// The file's content is gone; an object of it goes on the ledger of objects to delete now
/// (the caller's `Content::reconcile`, or the maintainer's, deletes it).
async fn mark_purged<'c, E>(conn: E, id: &FileId) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query!(
        "WITH purged AS (
            UPDATE files SET purged = true WHERE id = $1 RETURNING id, storage
         )
         INSERT INTO pending_objects (key, delete_after)
         SELECT 'files/' || id, unix_now() FROM purged WHERE storage = 's3'
         ON CONFLICT (key) DO UPDATE SET delete_after = EXCLUDED.delete_after",
        id.as_str()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The bytes of a file's content from `start` up to `end` (exclusive); `None` when some of it
/// is missing.
#[tracing::instrument(skip_all, name = "db.files.read_range")]
pub async fn read_range(
    pool: &PgPool,
    id: &FileId,
    start: Position,
    end: Position,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    // substring() of uncompressed (EXTERNAL) content reads only the slices it needs.
    let parts: Vec<Vec<u8>> = sqlx::query_scalar!(
        r#"SELECT CASE WHEN idx = $2 AND idx = $4 THEN substring(data FROM $3 + 1 FOR $5 - $3)
                       WHEN idx = $2 THEN substring(data FROM $3 + 1)
                       WHEN idx = $4 THEN substring(data FROM 1 FOR $5)
                       ELSE data END AS "data!"
           FROM file_chunks WHERE file_id = $1 AND idx BETWEEN $2 AND $4 ORDER BY idx"#,
        id.as_str(),
        start.part,
        start.offset,
        end.part,
        end.offset,
    )
    .fetch_all(pool)
    .await?;
    if parts.len() != (end.part - start.part + 1) as usize {
        return Ok(None);
    }
    Ok(Some(parts.concat()))
}

/// One chunk of a file's content, by position; `None` past the end (or if it was deleted).
#[tracing::instrument(skip_all, name = "db.files.chunk")]
pub async fn chunk(pool: &PgPool, id: &FileId, idx: i32) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT data FROM file_chunks WHERE file_id = $1 AND idx = $2",
        id.as_str(),
        idx,
    )
    .fetch_optional(pool)
    .await
}
