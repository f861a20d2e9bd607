use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Run batch workers in this process (an API-only replica sets false).
    pub enabled: bool,
    /// Threads of the runtime that runs the engine, the maintainer and webhook deliveries (the
    /// API has its own: `server.workers`). One is enough for ~10,000 lines/s, and costs less
    /// CPU per line than several, which wake each other for every line (see bench/RESULTS.md).
    pub threads: usize,
    /// Lines in flight per replica, across all upstreams. A line's slot is freed only once its
    /// result is stored, so a replica that dies loses at most this many executions.
    pub max_in_flight: usize,
    /// The unit of durable work: a chunk holds up to this many consecutive lines...
    pub chunk_lines: usize,
    /// ...or about this many bytes of input, whichever comes first.
    pub chunk_bytes: usize,
    /// How long a claim (of a line or of batch-level work) lives without renewal.
    pub lease_secs: u64,
    /// How often an idle replica looks for work.
    pub poll_interval_ms: u64,
    /// Extra time a finished result may wait to be written with others (0: only those that
    /// finished while the previous write ran).
    pub flush_interval_ms: u64,
    /// HTTP attempts per line (first try included) for retryable failures.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Claims in a row of a chunk that store none of its results (the replicas running it die
    /// or hang) before its remaining lines are failed as `execution_abandoned`.
    pub max_idle_claims: u32,
    /// Attempts in a row of a batch's validation or finalization that fail with an error (not
    /// a lost database connection) before the batch is given up as `failed`
    /// (`validation_failed` / `finalization_failed`) instead of being retried forever.
    pub max_job_failures: u32,
    /// After a cancel, how long in-flight lines may finish before they are abandoned.
    pub cancel_grace_secs: u64,
    /// On SIGTERM, how long in-flight lines may finish before their claims are released.
    pub shutdown_grace_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            threads: 1,
            max_in_flight: 64,
            chunk_lines: 256,
            chunk_bytes: 1024 * 1024,
            lease_secs: 30,
            poll_interval_ms: 250,
            flush_interval_ms: 50,
            max_attempts: 5,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
            max_idle_claims: 3,
            max_job_failures: 5,
            cancel_grace_secs: 5,
            shutdown_grace_secs: 20,
        }
    }
}

impl WorkerSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.threads >= 1
                && self.max_in_flight >= 1
                && self.chunk_lines >= 1
                && self.chunk_bytes >= 1,
            "OPENBATCH__WORKER__THREADS, OPENBATCH__WORKER__MAX_IN_FLIGHT, OPENBATCH__WORKER__CHUNK_LINES and OPENBATCH__WORKER__CHUNK_BYTES must be at least 1"
        );
        anyhow::ensure!(
            self.max_idle_claims >= 1,
            "OPENBATCH__WORKER__MAX_IDLE_CLAIMS must be at least 1"
        );
        anyhow::ensure!(
            self.max_job_failures >= 1,
            "OPENBATCH__WORKER__MAX_JOB_FAILURES must be at least 1"
        );
        anyhow::ensure!(
            self.max_attempts >= 1,
            "OPENBATCH__WORKER__MAX_ATTEMPTS must be at least 1"
        );
        anyhow::ensure!(
            self.lease_secs >= 3,
            "OPENBATCH__WORKER__LEASE_SECS must be at least 3"
        );
        Ok(())
    }
}
