//! File content as objects in an S3-compatible bucket (`storage.backend = "s3"`): one object a
//! file at `<prefix>files/<file id>`, one an Uploads API part at
//! `<prefix>uploads/<upload id>/<part id>`; and the `pending_objects` ledger through which the
//! maintainer deletes what a crash left in the bucket (migration 0025).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
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
        // First: an `AWS_*` client option (say `AWS_ALLOW_HTTP`) set below still applies.
        let mut client = ClientOptions::new()
            .with_timeout(Duration::from_secs(settings.request_timeout_secs))
            .with_connect_timeout(Duration::from_secs(settings.request_timeout_secs.min(5)));
        if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")) {
            client = client.with_allow_http(true);
        }
        let mut builder = AmazonS3Builder::new()
            .with_client_options(client)
            .with_retry(RetryConfig {
                retry_timeout: Duration::from_secs(settings.retry_secs),
                ..RetryConfig::default()
            });
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

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Bytes `range` of an object; `None` if it does not exist (deleted).
    pub async fn range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, ObjectError> {
        match self.s3.get_range(&self.path(key), range).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object (and its unfinished multipart upload, if named); deleting what is not
    /// there succeeds.
    pub async fn remove(&self, key: &str, multipart: Option<&str>) -> Result<(), ObjectError> {
        let path = self.path(key);
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

/// The key of a file's object.
pub fn file_key(file: &FileId) -> String {
    format!("files/{file}")
}

/// The key of an Uploads API part's object.
pub fn part_key(upload: &str, part: &str) -> String {
    format!("uploads/{upload}/{part}")
}

/// An object being written: a part of `PART_BYTES` is sent as soon as it fills, so memory
/// holds one part whatever the object weighs. An object smaller than a part is one PUT.
pub struct ObjectWriter {
    key: String,
    path: Path,
    buf: Vec<u8>,
    multipart: Option<(String, Vec<PartId>)>,
    pended: bool,
}

impl ObjectWriter {
    pub fn new(objects: &Objects, key: String) -> Self {
        Self {
            path: objects.path(&key),
            key,
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
            pend(pool, &self.key, WRITE_GRACE_SECS).await?;
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
                record_multipart(pool, &self.key, &id).await?;
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

    /// Gives the object up unfinished (a refused completion): deletes what was sent, then its
    /// ledger entry; on failure the entry stays, due now, for the maintainer.
    pub async fn abandon(self, objects: &Objects, pool: &PgPool) {
        if !self.pended {
            return;
        }
        let multipart = self.multipart.as_ref().map(|(id, _)| id.as_str());
        delete_now(objects, pool, &self.key, multipart).await;
    }

    /// Completes the object, still on the ledger: `settle`, in the transaction that writes the
    /// row that owns it (a file's, a part's), makes it theirs. Returns its key.
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
        Ok(self.key)
    }
}

/// Deletes an object no row will own and takes it off the ledger; if the bucket refuses, the
/// entry stays, due now, for the maintainer.
pub async fn delete_now(objects: &Objects, pool: &PgPool, key: &str, multipart: Option<&str>) {
    let settled = match objects.remove(key, multipart).await {
        Ok(()) => settle(pool, key).await,
        Err(_) => pend(pool, key, 0).await,
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, %key, "an unkept object stays on the ledger until its write would count as abandoned");
    }
}

/// Puts an object on the ledger, to be deleted `after_secs` from now unless a live file (or a
/// pending upload's part) owns it by then.
#[tracing::instrument(skip_all, name = "db.objects.pend")]
pub async fn pend<'c, E>(conn: E, key: &str, after_secs: i64) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query!(
        "INSERT INTO pending_objects (key, delete_after) VALUES ($1, unix_now() + $2)
         ON CONFLICT (key) DO UPDATE SET delete_after = EXCLUDED.delete_after",
        key,
        after_secs,
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all, name = "db.objects.record_multipart")]
async fn record_multipart(pool: &PgPool, key: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE pending_objects SET multipart_id = $2 WHERE key = $1",
        key,
        id
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all, name = "db.objects.settle")]
pub async fn settle<'c, E>(conn: E, key: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query!("DELETE FROM pending_objects WHERE key = $1", key)
        .execute(conn)
        .await?;
    Ok(())
}

/// A ledger entry whose time has come.
pub struct Due {
    pub key: String,
    pub multipart_id: Option<String>,
    /// A live file, or an upload's part, owns the object after all: keep it, drop the entry.
    pub owned: bool,
}

#[tracing::instrument(skip_all, name = "db.objects.due")]
pub async fn due(pool: &PgPool, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as!(
        Due,
        r#"SELECT p.key, p.multipart_id,
                  CASE WHEN p.key LIKE 'files/%'
                       THEN EXISTS (SELECT 1 FROM files f
                                    WHERE f.id = substr(p.key, 7) AND NOT f.purged)
                       ELSE EXISTS (SELECT 1 FROM upload_parts u
                                    WHERE u.id = split_part(p.key, '/', 3))
                  END AS "owned!"
           FROM pending_objects p WHERE p.delete_after <= unix_now()
           ORDER BY p.delete_after LIMIT $1"#,
        limit,
    )
    .fetch_all(pool)
    .await
}
