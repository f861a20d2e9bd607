//! Where file content is: written to the configured backend (the database's `file_chunks`, or
//! an object in S3), read from wherever each file's row says it went, so a deployment that
//! changes backend still reads what it stored before.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};

use crate::config::{StorageBackend, StorageSettings};
use crate::domain::FileId;
use crate::store::chunks::Position;
use crate::store::files::{self, FileRecord, NewFile, CHUNK_BYTES};
use crate::store::objects::{self, file_key, part_key, ObjectError, ObjectWriter, Objects};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("object storage: {0}")]
    Object(#[from] ObjectError),
}

/// The content of every file, wherever it is kept; cheap to clone.
#[derive(Clone)]
pub struct Content {
    pool: PgPool,
    objects: Option<Arc<Objects>>,
}

/// One file's content opened for reading (`Content::open`).
pub struct FileReader {
    pool: PgPool,
    objects: Option<Arc<Objects>>,
    id: FileId,
    place: Place,
}

impl FileReader {
    /// One chunk (`CHUNK_BYTES`) of the content, by position; `None` past the end (or if the
    /// content is gone). An object is cut into chunks at every `CHUNK_BYTES`.
    pub async fn chunk(&self, idx: i32) -> Result<Option<Vec<u8>>, ContentError> {
        match (self.place, &self.objects) {
            (Place::Object { bytes }, Some(objects)) => {
                let start = idx as u64 * CHUNK_BYTES as u64;
                if start >= bytes {
                    return Ok(None);
                }
                let end = (start + CHUNK_BYTES as u64).min(bytes);
                Ok(objects
                    .range(&file_key(&self.id), start..end)
                    .await?
                    .map(Vec::from))
            }
            _ => Ok(files::chunk(&self.pool, &self.id, idx).await?),
        }
    }
}

/// Where one file's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Database,
    Object { bytes: u64 },
}

impl Content {
    pub fn new(pool: PgPool, settings: &StorageSettings) -> anyhow::Result<Self> {
        let objects = match settings.backend {
            StorageBackend::Postgres => None,
            StorageBackend::S3 => Some(Arc::new(Objects::connect(&settings.s3)?)),
        };
        Ok(Self { pool, objects })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether new content goes to a bucket.
    pub fn in_objects(&self) -> bool {
        self.objects.is_some()
    }

    /// A new file's content, bound for the configured backend.
    pub fn create(&self) -> NewContent {
        let id = FileId::generate();
        let into = match &self.objects {
            None => Into::Database { next_idx: 0 },
            Some(objects) => {
                Into::Object(ObjectWriter::new(objects, file_key(&id)), objects.clone())
            }
        };
        NewContent {
            id,
            bytes: 0,
            into,
            pool: self.pool.clone(),
        }
    }

    /// Only a deployment with a bucket can hold files there, so only then is a file's place
    /// looked up: the database's own backend costs no extra query.
    async fn place(&self, id: &FileId) -> Result<(Place, Option<&Arc<Objects>>), ContentError> {
        let Some(objects) = &self.objects else {
            return Ok((Place::Database, None));
        };
        let place = files::storage_of(&self.pool, id).await?;
        Ok(match place {
            Some((true, bytes)) => (
                Place::Object {
                    bytes: bytes as u64,
                },
                Some(objects),
            ),
            _ => (Place::Database, None),
        })
    }

    /// A file's content for reading chunk by chunk, its place looked up once.
    pub async fn open(&self, id: &FileId) -> Result<FileReader, ContentError> {
        let (place, objects) = self.place(id).await?;
        Ok(FileReader {
            pool: self.pool.clone(),
            objects: objects.cloned(),
            id: id.clone(),
            place,
        })
    }

    /// The bytes from `start` up to `end` (exclusive); `None` when some of it is missing.
    pub async fn read_range(
        &self,
        id: &FileId,
        start: Position,
        end: Position,
    ) -> Result<Option<Vec<u8>>, ContentError> {
        match self.place(id).await? {
            (Place::Object { .. }, Some(objects)) => {
                let at = |p: Position| p.part as u64 * CHUNK_BYTES as u64 + p.offset as u64;
                let range = at(start)..at(end);
                let want = range.end - range.start;
                let got = objects.range(&file_key(id), range).await?;
                Ok(got.filter(|b| b.len() as u64 == want).map(Vec::from))
            }
            _ => Ok(files::read_range(&self.pool, id, start, end).await?),
        }
    }

    /// Where an Uploads API part being received goes: an object (`Some`), or the database's
    /// `upload_chunks` (`None`, written by `store::uploads::PartWriter`).
    pub fn part_writer(&self, upload: &str, part: &str) -> Option<PartObject> {
        let objects = self.objects.as_ref()?;
        Some(PartObject {
            writer: ObjectWriter::new(objects, part_key(upload, part)),
            objects: objects.clone(),
            pool: self.pool.clone(),
        })
    }

    /// One chunk (`CHUNK_BYTES`) of an Uploads API part of `bytes` bytes, in an object or in the
    /// database; `None` past its end.
    pub async fn part_chunk(
        &self,
        conn: &mut PgConnection,
        part: &crate::store::uploads::StoredPart,
        idx: i32,
    ) -> Result<Option<Vec<u8>>, ContentError> {
        if !part.in_object {
            return Ok(crate::store::uploads::chunk(conn, &part.id, idx).await?);
        }
        let Some(objects) = &self.objects else {
            // Sent while the deployment kept content in a bucket, which it no longer names.
            return Err(ContentError::Object(object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "part {} is in a bucket, and no bucket is configured",
                    part.id
                )
                .into(),
            }));
        };
        let start = idx as u64 * CHUNK_BYTES as u64;
        if start >= part.bytes as u64 {
            return Ok(None);
        }
        let end = (start + CHUNK_BYTES as u64).min(part.bytes as u64);
        let key = part_key(&part.upload_id, &part.id);
        Ok(objects.range(&key, start..end).await?.map(Vec::from))
    }

    /// Deletes the objects of freed content and of writes a crash abandoned (see
    /// `pending_objects`), up to `limit`; returns how many entries were settled.
    pub async fn reconcile(&self, limit: i64) -> Result<u64, ContentError> {
        let due = objects::due(&self.pool, limit).await?;
        for d in &due {
            if !d.owned {
                let Some(objects) = &self.objects else {
                    // Without a bucket configured nothing can be deleted: keep the entry.
                    continue;
                };
                objects.remove(&d.key, d.multipart_id.as_deref()).await?;
            }
            objects::settle(&self.pool, &d.key).await?;
        }
        Ok(due.len() as u64)
    }
}

/// Content being written chunk by chunk. In the database its chunks are rows of the caller's
/// transaction; in a bucket they go out a part at a time, and the transaction that writes the
/// `files` row takes the object off the ledger of objects nobody owns.
pub struct NewContent {
    id: FileId,
    bytes: i64,
    into: Into,
    pool: PgPool,
}

enum Into {
    Database { next_idx: i32 },
    Object(ObjectWriter, Arc<Objects>),
}

impl NewContent {
    pub fn bytes(&self) -> i64 {
        self.bytes
    }

    #[tracing::instrument(skip_all, name = "content.write_chunk")]
    /// `conn`: the transaction the chunk is a row of, when `in_transaction` (an object's parts
    /// need none).
    pub async fn write_chunk(
        &mut self,
        conn: Option<&mut PgConnection>,
        data: &[u8],
    ) -> Result<(), ContentError> {
        match &mut self.into {
            Into::Database { next_idx } => {
                let conn = conn.expect("content for the database is written in a transaction");
                files::write_chunk(conn, &self.id, *next_idx, data).await?;
                *next_idx += 1;
            }
            Into::Object(writer, objects) => writer.write(objects, &self.pool, data).await?,
        }
        self.bytes += data.len() as i64;
        Ok(())
    }

    /// Whether the chunks are rows of the caller's transaction (else, an object's parts, they
    /// need none until `Sealed::finish`).
    pub fn in_transaction(&self) -> bool {
        matches!(self.into, Into::Database { .. })
    }

    /// Not to be kept after all (a refused completion): what a bucket received is deleted.
    pub async fn abandon(self) {
        if let Into::Object(writer, objects) = self.into {
            writer.abandon(&objects, &self.pool).await;
        }
    }

    /// Everything written: an object is completed (it stays on the ledger until its row).
    pub async fn seal(self) -> Result<Sealed, ContentError> {
        let object = match self.into {
            Into::Database { .. } => None,
            Into::Object(writer, objects) => {
                writer.complete(&objects, &self.pool).await?;
                Some(objects)
            }
        };
        Ok(Sealed {
            id: self.id,
            bytes: self.bytes,
            object,
            pool: self.pool,
        })
    }

    /// `seal`, then `Sealed::finish`.
    pub async fn finish(
        self,
        conn: &mut PgConnection,
        file: NewFile<'_>,
    ) -> Result<FileRecord, ContentError> {
        self.seal().await?.finish(conn, file).await
    }
}

/// An Uploads API part on its way into its object.
pub struct PartObject {
    writer: ObjectWriter,
    objects: Arc<Objects>,
    pool: PgPool,
}

impl PartObject {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        self.writer.write(&self.objects, &self.pool, data).await
    }

    /// The object, complete; still on the ledger until the part's row takes it (`settle` in
    /// that transaction). Returns its key.
    pub async fn complete(self) -> Result<String, ContentError> {
        self.writer.complete(&self.objects, &self.pool).await
    }
}

/// Content written in full, waiting for its `files` row.
pub struct Sealed {
    id: FileId,
    bytes: i64,
    /// The bucket holding it, if it is an object.
    object: Option<Arc<Objects>>,
    pool: PgPool,
}

impl Sealed {
    pub fn bytes(&self) -> i64 {
        self.bytes
    }

    /// Writes the `files` row (and takes an object off the ledger); the content is the
    /// file's when the transaction commits.
    pub async fn finish(
        self,
        conn: &mut PgConnection,
        file: NewFile<'_>,
    ) -> Result<FileRecord, ContentError> {
        if self.object.is_some() {
            objects::settle(&mut *conn, &file_key(&self.id)).await?;
        }
        let in_object = self.object.is_some();
        Ok(files::insert(conn, &self.id, file, self.bytes, in_object).await?)
    }

    /// Not to be kept (over quota): an object goes at once rather than when its write would
    /// count as abandoned. Content in the database goes with its rolled-back transaction.
    pub async fn discard(self) {
        if let Some(objects) = self.object {
            objects::delete_now(&objects, &self.pool, &file_key(&self.id), None).await;
        }
    }
}
