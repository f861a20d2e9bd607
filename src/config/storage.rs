use serde::{Deserialize, Serialize};

/// Where file content (uploads, output and error files) is kept. Metadata, leases and result
/// groups stay in PostgreSQL either way.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    pub s3: S3Settings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// In the database (`file_chunks`): nothing else to run.
    #[default]
    Postgres,
    /// Objects in an S3-compatible bucket. Credentials, region and endpoint come from the
    /// standard `AWS_*` variables.
    S3,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct S3Settings {
    pub bucket: Option<String>,
    /// Put before every key (`tenant-a/` keeps several deployments in one bucket).
    pub prefix: Option<String>,
    /// One request to the bucket, from connecting to the last byte of its answer.
    pub request_timeout_secs: u64,
    /// How long a failed request is tried again before the caller is told (an API request
    /// answers 503, a chunk is handed back for later).
    pub retry_secs: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: None,
            prefix: None,
            request_timeout_secs: 30,
            retry_secs: 180,
        }
    }
}

impl StorageSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.backend == StorageBackend::S3 {
            anyhow::ensure!(
                self.s3.bucket.as_ref().is_some_and(|b| !b.is_empty()),
                "OPENBATCH__STORAGE__S3__BUCKET must name a bucket when OPENBATCH__STORAGE__BACKEND=s3"
            );
            anyhow::ensure!(
                self.s3.request_timeout_secs > 0,
                "OPENBATCH__STORAGE__S3__REQUEST_TIMEOUT_SECS must be at least 1"
            );
        }
        Ok(())
    }
}
