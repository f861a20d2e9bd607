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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct S3Settings {
    pub bucket: Option<String>,
    /// Put before every key (`tenant-a/` keeps several deployments in one bucket).
    pub prefix: Option<String>,
}

impl StorageSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.backend == StorageBackend::S3 {
            anyhow::ensure!(
                self.s3.bucket.as_ref().is_some_and(|b| !b.is_empty()),
                "OPENBATCH__STORAGE__S3__BUCKET must name a bucket when OPENBATCH__STORAGE__BACKEND=s3"
            );
        }
        Ok(())
    }
}
