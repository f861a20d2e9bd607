//! File content as objects in an S3-compatible bucket (`storage.backend = "s3"`), one object a
//! file at `<prefix>files/<file id>`, and the `pending_objects` ledger through which the
//! maintainer deletes what a crash left in the bucket (migration 0025).

use std::ops::Range;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use sqlx::PgPool;

use crate::config::S3Settings;
use crate::domain::FileId;

/// Bytes sent per multipart part: S3 takes at least 5 MiB for every part but the last, and at
/// most 10,000 parts (so an object of up to 80 GiB). Each writer holds one part in memory.
pub const PART_BYTES: usize = 8 << 20;

/// How long a write may take before the maintainer counts its object as left by a crash.
/// Far longer than any upload or finalization takes; an orphan still goes within the day.
pub const WRITE_GRACE_SECS: i64 = 6 * 3600;

pub struct Objects {
    s3: AmazonS3,
    prefix: String,
}

/// Anything the bucket answered that was not the object: unreachable, refused, throttled.
pub type ObjectError = object_store::Error;

impl Objects {
    /// The bucket from `settings`; credentials, region and endpoint from the standard `AWS_*`
    /// variables (`AWS_ENDPOINT_URL` for a service other than AWS; plain `http://` is
    /// allowed when the endpoint names it). As with every setting, an empty variable counts
    /// as unset (`AmazonS3Builder::from_env` would take an empty endpoint as one).
    pub fn connect(settings: &S3Settings) -> anyhow::Result<Self> {
        let mut builder = AmazonS3Builder::new();
        for (key, value) in std::env::vars() {
            if key.starts_with("AWS_") && !value.is_empty() {
                if let Ok(key) = key.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, value);
                }
            }
        }
        if let Some(bucket) = &settings.bucket {
            builder = builder.with_bucket_name(bucket);
        }
        if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let prefix = settings
            .prefix
            .as_deref()
            .unwrap_or_default()
            .trim_matches('/');
        Ok(Self {
            s3: builder.build()?,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    fn path(&self, file: &str) -> Path {
        Path::from(format!("{}files/{file}", self.prefix))
    }

    /// Bytes `range` of a file's object; `None` if it does not exist (deleted).
    pub async fn range(
        &self,
        file: &FileId,
        range: Range<u64>,
    ) -> Result<Option<Bytes>, ObjectError> {
        match self.s3.get_range(&self.path(file.as_str()), range).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a file's object (and its unfinished multipart upload, if named); deleting what
    /// is not there succeeds.
    pub async fn remove(&self, file: &str, multipart: Option<&str>) -> Result<(), ObjectError> {
        let path = self.path(file);
        if let Some(id) = multipart {
            match self.s3.abort_multipart(&path, &id.to_owned()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match self.s3.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A file's object being written: a part of `PART_BYTES` is sent as soon as it fills, so memory
/// holds one part whatever the file weighs. A file smaller than a part is one PUT.
pub struct ObjectWriter {
    file: String,
    path: Path,
    buf: Vec<u8>,
    multipart: Option<(String, Vec<PartId>)>,
    pended: bool,
}

impl ObjectWriter {
    pub fn new(objects: &Objects, file: &FileId) -> Self {
        Self {
            file: file.as_str().to_owned(),
            path: objects.path(file.as_str()),
            buf: Vec::new(),
            multipart: None,
            pended: false,
        }
    }

    pub async fn write(
        &mut self,
        objects: &Objects,
        pool: &PgPool,
        data: &[u8],
    ) -> Result<(), super::content::ContentError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PART_BYTES {
            self.send_part(objects, pool).await?;
        }
        Ok(())
    }

    /// Before anything is in the bucket, the ledger says it may be, committed on its own.
    async fn pend(&mut self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if !self.pended {
            pend(pool, &self.file, WRITE_GRACE_SECS).await?;
            self.pended = true;
        }
        Ok(())
    }

    async fn send_part(
        &mut self,
        objects: &Objects,
        pool: &PgPool,
    ) -> Result<(), super::content::ContentError> {
        self.pend(pool).await?;
        let (id, parts) = match &mut self.multipart {
            Some((id, parts)) => (id.clone(), parts),
            None => {
                let id = objects.s3.create_multipart(&self.path).await?;
                record_multipart(pool, &self.file, &id).await?;
                let (_, parts) = self.multipart.insert((id.clone(), Vec::new()));
                (id, parts)
            }
        };
        let data = PutPayload::from(std::mem::take(&mut self.buf));
        let part = objects
            .s3
            .put_part(&self.path, &id, parts.len(), data)
            .await?;
        parts.push(part);
        Ok(())
    }

    /// Completes the object, still on the ledger: `settle`, in the transaction that writes its
    /// `files` row, makes it the file's. Returns the file id.
    pub async fn complete(
        mut self,
        objects: &Objects,
        pool: &PgPool,
    ) -> Result<String, super::content::ContentError> {
        self.pend(pool).await?;
        match self.multipart.take() {
            None => {
                let data = PutPayload::from(std::mem::take(&mut self.buf));
                objects.s3.put(&self.path, data).await?;
            }
            Some((id, mut parts)) => {
                if !self.buf.is_empty() {
                    let data = PutPayload::from(std::mem::take(&mut self.buf));
                    parts.push(
                        objects
                            .s3
                            .put_part(&self.path, &id, parts.len(), data)
                            .await?,
                    );
                }
                objects
                    .s3
                    .complete_multipart(&self.path, &id, parts)
                    .await?;
            }
        }
        Ok(self.file)
    }
}

/// Puts a file's object on the ledger, to be deleted `after_secs` from now unless a live file
/// owns it by then.
#[tracing::instrument(skip_all, name = "db.objects.pend")]
pub async fn pend<'c, E>(conn: E, file: &str, after_secs: i64) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query!(
        "INSERT INTO pending_objects (file_id, delete_after) VALUES ($1, unix_now() + $2)
         ON CONFLICT (file_id) DO UPDATE SET delete_after = EXCLUDED.delete_after",
        file,
        after_secs,
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all, name = "db.objects.record_multipart")]
async fn record_multipart(pool: &PgPool, file: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE pending_objects SET multipart_id = $2 WHERE file_id = $1",
        file,
        id
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all, name = "db.objects.settle")]
pub async fn settle<'c, E>(conn: E, file: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query!("DELETE FROM pending_objects WHERE file_id = $1", file)
        .execute(conn)
        .await?;
    Ok(())
}

/// A ledger entry whose time has come.
pub struct Due {
    pub file_id: String,
    pub multipart_id: Option<String>,
    /// A live file owns the object after all: keep it, drop the entry.
    pub owned: bool,
}

#[tracing::instrument(skip_all, name = "db.objects.due")]
pub async fn due(pool: &PgPool, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as!(
        Due,
        r#"SELECT p.file_id, p.multipart_id,
                  EXISTS (SELECT 1 FROM files f WHERE f.id = p.file_id AND NOT f.purged)
                      AS "owned!"
           FROM pending_objects p WHERE p.delete_after <= unix_now()
           ORDER BY p.delete_after LIMIT $1"#,
        limit,
    )
    .fetch_all(pool)
    .await
}
