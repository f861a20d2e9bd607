use serde::{Deserialize, Serialize};

use crate::domain::{MetadataLimits, MAX_INPUT_BYTES, MAX_LINES_CEILING, MAX_REQUESTS};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitSettings {
    pub max_upload_bytes: u64,
    /// The largest file the Uploads API assembles (`bytes` of `POST /v1/uploads`; OpenAI's
    /// 8 GB by default). Its parts are at most 64 MB each.
    pub max_upload_total_bytes: u64,
    /// Requests a batch's input file may hold (OpenAI's 50,000 by default; up to 10,000,000).
    pub max_batch_lines: usize,
    /// Bytes a batch's input file may hold (OpenAI's 200 MB by default).
    pub max_batch_input_bytes: u64,
    pub max_json_body_bytes: usize,
    pub metadata: MetadataLimits,
    /// Unfinished batches a project may have; 0 = no limit.
    pub max_active_batches_per_project: i64,
    /// Requests per minute per API key across the cluster (each replica enforces its share of
    /// the live replicas, see `api::RateLimiter`); 0 = no limit.
    pub requests_per_minute_per_key: u32,
    /// Uploads one replica receives at once; more are answered 429 with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// An upload whose client sends nothing for this long is answered 408.
    pub upload_idle_timeout_secs: u64,
    /// An upload still arriving after this long is answered 408 (a client dripping a byte
    /// just inside the idle timeout cannot hold its slot forever).
    pub upload_timeout_secs: u64,
    /// Where uploads are spooled before they go to the database; the system's temporary
    /// directory when unset. Needs room for `max_concurrent_uploads x max_upload_bytes`.
    pub upload_spool_dir: Option<String>,
    /// Bytes of files (not deleted, not purged) a project may store; 0 = no limit.
    pub max_stored_bytes_per_project: u64,
    /// Estimated prompt tokens a project may have enqueued per model (its running batches'
    /// lines not yet finished); a batch that would pass it fails validation with
    /// `token_limit_exceeded`. 0 = no limit.
    pub max_enqueued_tokens_per_project: u64,
    /// Open `GET /v1/batches/{id}/events` streams per replica; more are refused with a 429.
    pub max_event_streams: usize,
    /// Of those, how many one project may hold; half of `max_event_streams` (rounded up) when
    /// unset.
    pub max_event_streams_per_project: Option<usize>,
    /// How often an event stream re-reads its batch for progress (`request_counts`); a status
    /// change is sent at once, woken by its NOTIFY.
    pub event_poll_ms: u64,
    /// Of `max_concurrent_uploads`, how many one project may hold; half (rounded up) when unset.
    pub max_concurrent_uploads_per_project: Option<usize>,
    /// `GET /v1/batches/{id}/results` responses one replica serves at once; more are refused
    /// with a 429.
    pub max_live_readers: usize,
    /// Of those, how many one project may hold; half of `max_live_readers` (rounded up) when
    /// unset.
    pub max_live_readers_per_project: Option<usize>,
    /// A `GET /v1/batches/{id}/results` client that takes nothing of its response for this long
    /// is cut off (the response is aborted) and its slot freed.
    pub live_read_idle_timeout_secs: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: 512 * 1024 * 1024,
            max_upload_total_bytes: 8 * 1024 * 1024 * 1024,
            max_batch_lines: MAX_REQUESTS,
            max_batch_input_bytes: MAX_INPUT_BYTES,
            max_json_body_bytes: 1024 * 1024,
            metadata: MetadataLimits::default(),
            max_active_batches_per_project: 1000,
            requests_per_minute_per_key: 6000,
            max_concurrent_uploads: 8,
            upload_idle_timeout_secs: 30,
            upload_timeout_secs: 3600,
            upload_spool_dir: None,
            // OpenAI's own per-project file storage quota: 2.5 TB.
            max_stored_bytes_per_project: 2_500_000_000_000,
            max_enqueued_tokens_per_project: 0,
            max_event_streams: 256,
            max_event_streams_per_project: None,
            event_poll_ms: 500,
            max_concurrent_uploads_per_project: None,
            max_live_readers: 64,
            max_live_readers_per_project: None,
            live_read_idle_timeout_secs: 30,
        }
    }
}

impl LimitSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_upload_bytes >= 1 && self.max_upload_total_bytes >= 1,
            "OPENBATCH__LIMITS__MAX_UPLOAD_BYTES and OPENBATCH__LIMITS__MAX_UPLOAD_TOTAL_BYTES \
             must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_uploads >= 1
                && self.event_poll_ms >= 1
                && self.upload_idle_timeout_secs >= 1
                && self.upload_timeout_secs >= 1,
            "OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS, OPENBATCH__LIMITS__EVENT_POLL_MS, \
             OPENBATCH__LIMITS__UPLOAD_IDLE_TIMEOUT_SECS and OPENBATCH__LIMITS__UPLOAD_TIMEOUT_SECS \
             must be at least 1"
        );
        for (share, total, name) in [
            (
                self.max_event_streams_per_project,
                self.max_event_streams,
                "MAX_EVENT_STREAMS",
            ),
            (
                self.max_concurrent_uploads_per_project,
                self.max_concurrent_uploads,
                "MAX_CONCURRENT_UPLOADS",
            ),
            (
                self.max_live_readers_per_project,
                self.max_live_readers,
                "MAX_LIVE_READERS",
            ),
        ] {
            anyhow::ensure!(
                share.is_none_or(|s| s >= 1 && s <= total),
                "OPENBATCH__LIMITS__{name}_PER_PROJECT must be between 1 and OPENBATCH__LIMITS__{name}"
            );
        }
        anyhow::ensure!(
            self.live_read_idle_timeout_secs >= 1,
            "OPENBATCH__LIMITS__LIVE_READ_IDLE_TIMEOUT_SECS must be at least 1"
        );
        anyhow::ensure!(
            (1..=MAX_LINES_CEILING).contains(&self.max_batch_lines)
                && self.max_batch_input_bytes >= 1,
            "OPENBATCH__LIMITS__MAX_BATCH_LINES must be from 1 to {MAX_LINES_CEILING}, and \
             OPENBATCH__LIMITS__MAX_BATCH_INPUT_BYTES at least 1"
        );
        anyhow::ensure!(
            self.max_json_body_bytes >= 1024,
            "OPENBATCH__LIMITS__MAX_JSON_BODY_BYTES must be at least 1024"
        );
        Ok(())
    }
}
