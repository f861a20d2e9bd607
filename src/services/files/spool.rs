//! Content on its way to the database (an upload, a retry's input) on local disk until the whole
//! of it is in; only then does it take a database connection, and it copies at disk speed.
//!
//! Why spool rather than write chunks in short transactions: the network-paced part then
//! touches no shared resource but local disk, an abandoned upload leaves nothing in the
//! database to sweep (the spool file is unlinked from the start, so the kernel frees it even
//! when the process is killed), and the quota can be checked before the database sees a byte.
//! The cost is local disk: up to `max_concurrent_uploads x max_upload_bytes` per replica.

use std::io;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::ApiError;

/// An unnamed local file holding one upload's content until it goes to the database.
pub struct Spool {
    file: tokio::fs::File,
    buf: BytesMut,
    bytes: u64,
}

/// Spooled content is written and read back in pieces of this size.
const PIECE: usize = 1024 * 1024;

impl Spool {
    pub async fn create(dir: Option<&str>) -> io::Result<Self> {
        let dir: PathBuf = dir.map_or_else(std::env::temp_dir, PathBuf::from);
        let path = dir.join(format!(
            ".openbatch-upload-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        // Unlinked at once: the kernel frees the space when the handle closes, whether the
        // upload finished, failed, or the process was killed.
        remove(&path).await?;
        Ok(Self {
            file,
            buf: BytesMut::with_capacity(PIECE),
            bytes: 0,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        if self.buf.len() >= PIECE {
            self.file.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Done writing: the content is read back from the start.
    pub async fn rewind(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.file.flush().await?;
        self.file.seek(io::SeekFrom::Start(0)).await?;
        Ok(())
    }

    /// The next piece of the content (up to `max` bytes); empty at the end.
    pub async fn read(&mut self, max: usize) -> io::Result<&[u8]> {
        self.buf.clear();
        self.buf.resize(max, 0);
        let mut filled = 0;
        while filled < max {
            let n = self.file.read(&mut self.buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        self.buf.truncate(filled);
        Ok(&self.buf)
    }
}

async fn remove(path: &Path) -> io::Result<()> {
    tokio::fs::remove_file(path).await
}

/// The spool could not be written (full or unwritable disk): the replica's problem, and
/// another replica, or this one later, may have room.
pub fn spool_failed(e: io::Error) -> ApiError {
    tracing::error!(error = %e, "cannot spool an upload to local disk; check limits.upload_spool_dir");
    ApiError::SpoolFailed
}
