//! The Uploads API's tables (migration 0024): uploads, their parts, and the parts' content in
//! chunks until completion copies it, in the order the client names, into a file.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::{FileId, NewUpload, ProjectId, Purpose, UploadId, UploadPartId, UploadStatus};
use crate::store::content::{Content, ContentError, PartObject};
use crate::store::files::{self, FileRecord, NewFile};
use crate::store::objects;

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: UploadId,
    pub filename: String,
    pub purpose: Purpose,
    pub bytes: i64,
    /// `pending` past its hour reads `expired`, whether or not the maintainer has swept it.
    pub status: UploadStatus,
    pub created_at: i64,
    pub expires_at: i64,
    pub file_expires_after: Option<i64>,
    pub file_id: Option<FileId>,
}

#[derive(Debug, Clone)]
pub struct PartRecord {
    pub id: UploadPartId,
    pub upload_id: UploadId,
    pub created_at: i64,
}

#[tracing::instrument(skip_all, name = "db.uploads.create")]
pub async fn create(
    pool: &PgPool,
    project: &ProjectId,
    new: &NewUpload,
    lifetime_secs: i64,
) -> Result<UploadRecord, sqlx::Error> {
    let id = UploadId::generate();
    sqlx::query_as!(
        UploadRecord,
        r#"INSERT INTO uploads (id, project_id, filename, purpose, bytes, mime_type, expires_at,
                               file_expires_after)
           VALUES ($1, $2, $3, $4, $5, $6, unix_now() + $7, $8)
           RETURNING id AS "id: UploadId", filename, purpose AS "purpose: Purpose", bytes,
                     status AS "status: UploadStatus", created_at, expires_at,
                     file_expires_after, file_id AS "file_id: FileId""#,
        id.as_str(),
        project.as_str(),
        new.filename,
        new.purpose.as_str(),
        new.bytes,
        new.mime_type,
        lifetime_secs,
        new.expires_after.map(|e| e.seconds()),
    )
    .fetch_one(pool)
    .await
}

/// The project's upload `id`, its row locked until `conn`'s transaction ends (at once, on a
/// pool): a part being written does not hold it up (its row's key lock does not conflict),
/// but its commit waits, and then finds the upload no longer pending.
#[tracing::instrument(skip_all, name = "db.uploads.get")]
pub async fn get(
    conn: &mut PgConnection,
    project: &ProjectId,
    id: &UploadId,
) -> Result<Option<UploadRecord>, sqlx::Error> {
    sqlx::query_as!(
        UploadRecord,
        r#"SELECT id AS "id: UploadId", filename, purpose AS "purpose: Purpose", bytes,
                  CASE WHEN status = 'pending' AND expires_at <= unix_now() THEN 'expired'
                       ELSE status END AS "status!: UploadStatus",
                  created_at, expires_at, file_expires_after, file_id AS "file_id: FileId"
           FROM uploads WHERE project_id = $1 AND id = $2
           FOR NO KEY UPDATE"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(conn)
    .await
}

/// A part being written. In the database: its chunks inside one transaction, the upload's
/// count of received bytes last (so that the upload's row is locked only briefly, and parts may
/// arrive at once). In a bucket: its object first, holding no connection, then its row and the
/// count in one short transaction.
pub struct PartWriter {
    into: PartInto,
    part: UploadPartId,
    upload: UploadId,
    bytes: i64,
    pool: PgPool,
}

enum PartInto {
    Database {
        tx: Transaction<'static, Postgres>,
        next_idx: i32,
    },
    Object(PartObject),
}

impl PartWriter {
    #[tracing::instrument(skip_all, name = "db.uploads.begin_part")]
    pub async fn begin(
        content: &Content,
        upload: &UploadId,
        bytes: i64,
    ) -> Result<Self, sqlx::Error> {
        let part = UploadPartId::generate();
        let into = match content.part_writer(upload.as_str(), part.as_str()) {
            Some(object) => PartInto::Object(object),
            None => {
                let mut tx = content.pool().begin().await?;
                insert_part(&mut tx, &part, upload, bytes, false).await?;
                PartInto::Database { tx, next_idx: 0 }
            }
        };
        Ok(Self {
            into,
            part,
            upload: upload.clone(),
            bytes,
            pool: content.pool().clone(),
        })
    }

    #[tracing::instrument(skip_all, name = "db.uploads.write_chunk")]
    pub async fn write_chunk(&mut self, data: &[u8]) -> Result<(), ContentError> {
        match &mut self.into {
            PartInto::Database { tx, next_idx } => {
                sqlx::query!(
                    "INSERT INTO upload_chunks (part_id, idx, data) VALUES ($1, $2, $3)",
                    self.part.as_str(),
                    *next_idx,
                    data,
                )
                .execute(&mut **tx)
                .await?;
                *next_idx += 1;
            }
            PartInto::Object(object) => object.write(data).await?,
        }
        Ok(())
    }

    /// Counts the part in its upload and commits, if the upload is still pending and its
    /// parts then hold at most `max` bytes; otherwise nothing is kept (an object goes on the
    /// ledger, due now), and `None`.
    #[tracing::instrument(skip_all, name = "db.uploads.commit_part")]
    pub async fn commit(self, max: i64) -> Result<Option<PartRecord>, ContentError> {
        let (mut tx, key) = match self.into {
            PartInto::Database { tx, .. } => (tx, None),
            PartInto::Object(object) => {
                let key = object.complete().await?;
                let mut tx = self.pool.begin().await?;
                insert_part(&mut tx, &self.part, &self.upload, self.bytes, true).await?;
                objects::settle(&mut *tx, &key).await?;
                (tx, Some(key))
            }
        };
        let counted = sqlx::query!(
            "UPDATE uploads SET received = received + $2
             WHERE id = $1 AND status = 'pending' AND expires_at > unix_now()
               AND received + $2 <= $3",
            self.upload.as_str(),
            self.bytes,
            max,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if counted == 0 {
            drop(tx);
            if let Some(key) = key {
                objects::pend(&self.pool, &key, 0).await?;
            }
            return Ok(None);
        }
        let part = sqlx::query_as!(
            PartRecord,
            r#"SELECT id AS "id: UploadPartId", upload_id AS "upload_id: UploadId", created_at
               FROM upload_parts WHERE id = $1"#,
            self.part.as_str(),
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(part))
    }
}

async fn insert_part(
    conn: &mut PgConnection,
    part: &UploadPartId,
    upload: &UploadId,
    bytes: i64,
    in_object: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO upload_parts (id, upload_id, bytes, in_object) VALUES ($1, $2, $3, $4)",
        part.as_str(),
        upload.as_str(),
        bytes,
        in_object,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The bytes the upload has received in parts so far.
#[tracing::instrument(skip_all, name = "db.uploads.received")]
pub async fn received(pool: &PgPool, id: &UploadId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!("SELECT received FROM uploads WHERE id = $1", id.as_str())
        .fetch_one(pool)
        .await
}

/// A part as completion reads it.
#[derive(Debug, Clone)]
pub struct StoredPart {
    pub id: String,
    pub upload_id: String,
    pub bytes: i64,
    /// Its content is an object (else `upload_chunks` rows).
    pub in_object: bool,
}

/// Of `ids`, the upload's parts (in no particular order).
#[tracing::instrument(skip_all, name = "db.uploads.parts")]
pub async fn parts(
    conn: &mut PgConnection,
    upload: &UploadId,
    ids: &[String],
) -> Result<Vec<StoredPart>, sqlx::Error> {
    sqlx::query_as!(
        StoredPart,
        "SELECT id, upload_id, bytes, in_object FROM upload_parts
         WHERE upload_id = $1 AND id = ANY($2)",
        upload.as_str(),
        ids,
    )
    .fetch_all(conn)
    .await
}

/// One chunk of a part's content, `None` past its last.
#[tracing::instrument(skip_all, name = "db.uploads.chunk")]
pub async fn chunk(
    conn: &mut PgConnection,
    part: &str,
    idx: i32,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT data FROM upload_chunks WHERE part_id = $1 AND idx = $2",
        part,
        idx,
    )
    .fetch_optional(conn)
    .await
}

/// Assembles the parts, in `part_ids` order, into a new file of the project; the upload
/// becomes `completed`, and every part of it (listed or not) is removed. In the caller's
/// transaction, which holds the upload's row.
#[tracing::instrument(skip_all, name = "db.uploads.assemble")]
pub async fn assemble(
    conn: &mut PgConnection,
    upload: &UploadRecord,
    file: NewFile<'_>,
    part_ids: &[String],
) -> Result<FileRecord, sqlx::Error> {
    let id = FileId::generate();
    let record = files::insert(&mut *conn, &id, file, upload.bytes, false).await?;
    sqlx::query!(
        "INSERT INTO file_chunks (file_id, idx, data)
         SELECT $1, (row_number() OVER (ORDER BY p.ord, c.idx) - 1)::int, c.data
         FROM unnest($2::text[]) WITH ORDINALITY AS p (part_id, ord)
         JOIN upload_chunks c ON c.part_id = p.part_id",
        id.as_str(),
        part_ids,
    )
    .execute(&mut *conn)
    .await?;
    completed(conn, upload, &id).await?;
    Ok(record)
}

/// The upload is `completed` as file `file` (written in the caller's transaction), and every
/// part of it is removed.
#[tracing::instrument(skip_all, name = "db.uploads.completed")]
pub async fn completed(
    conn: &mut PgConnection,
    upload: &UploadRecord,
    file: &FileId,
) -> Result<(), sqlx::Error> {
    remove_parts(&mut *conn, &upload.id).await?;
    sqlx::query!(
        "UPDATE uploads SET status = 'completed', file_id = $2 WHERE id = $1",
        upload.id.as_str(),
        file.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes every part of the upload (their chunks go with them); the objects of parts kept in
/// a bucket go on the ledger, to be deleted now.
async fn remove_parts(conn: &mut PgConnection, upload: &UploadId) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH gone AS (
            DELETE FROM upload_parts WHERE upload_id = $1 RETURNING id, upload_id, in_object
         )
         INSERT INTO pending_objects (key, delete_after)
         SELECT 'uploads/' || upload_id || '/' || id, unix_now() FROM gone WHERE in_object
         ON CONFLICT (key) DO UPDATE SET delete_after = EXCLUDED.delete_after",
        upload.as_str()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels a pending upload (within its hour) and removes its parts; `false` if it is not
/// pending.
#[tracing::instrument(skip_all, name = "db.uploads.cancel")]
pub async fn cancel(
    pool: &PgPool,
    project: &ProjectId,
    id: &UploadId,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let cancelled = sqlx::query!(
        "UPDATE uploads SET status = 'cancelled'
         WHERE project_id = $1 AND id = $2 AND status = 'pending' AND expires_at > unix_now()",
        project.as_str(),
        id.as_str(),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if cancelled {
        remove_parts(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(cancelled)
}

/// Marks up to `limit` pending uploads past their hour `expired` and removes their parts (an
/// object's goes on the ledger, for the maintainer's next round of deletions).
/// Returns how many.
#[tracing::instrument(skip_all, name = "db.uploads.expire")]
pub async fn expire(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let expired = sqlx::query_scalar!(
        r#"WITH expired AS (
            UPDATE uploads SET status = 'expired'
            WHERE id IN (SELECT id FROM uploads
                         WHERE status = 'pending' AND expires_at <= unix_now() LIMIT $1)
            RETURNING id
         ), gone AS (
            DELETE FROM upload_parts WHERE upload_id IN (SELECT id FROM expired)
            RETURNING id, upload_id, in_object
         ), objects AS (
            INSERT INTO pending_objects (key, delete_after)
            SELECT 'uploads/' || upload_id || '/' || id, unix_now() FROM gone WHERE in_object
            ON CONFLICT (key) DO UPDATE SET delete_after = EXCLUDED.delete_after
         )
         SELECT count(*) AS "n!" FROM expired"#,
        limit,
    )
    .fetch_one(pool)
    .await?;
    Ok(expired as u64)
}
