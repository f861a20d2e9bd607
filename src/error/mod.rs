//! The catalogue of every error the API answers: one variant per situation, documented once,
//! carrying only what its message needs. `wire.rs` renders each to the OpenAI wire format
//! `{"error": {"message", "type", "param", "code"}}` (all four keys present) in one place;
//! `docs/errors.md`'s catalogue is generated from these variants (`catalogue.rs`).

#[cfg(test)]
mod catalogue;
mod database;
mod framework;
#[cfg(test)]
mod tests;
mod wire;

use actix_web::http::{Method, StatusCode};

use crate::domain::{BatchId, BatchStatus, FileId, IdempotencyKey, Invalid, UploadStatus};

pub use database::{is_data_exception, is_transient, is_transient_sqlstate};
pub use framework::render_framework_error;
pub use wire::{Envelope, ErrorResponse};

#[derive(Debug, Clone, PartialEq, Eq, strum::EnumMessage, strum::EnumDiscriminants)]
#[strum_discriminants(name(ErrorKind), derive(strum::EnumIter))]
pub enum ApiError {
    // Requests the API refuses as written (400).
    /// A parameter, query field or form part failed validation; its param, code and message
    /// come from the domain rule it broke (see "Compared with OpenAI" below).
    InvalidParameter(Invalid),
    /// The JSON body is empty or only whitespace.
    EmptyBody,
    /// The JSON body is not JSON at all.
    InvalidJson { detail: String },
    /// The JSON body is valid JSON but not an object.
    BodyNotObject,
    /// The JSON object does not fit the request as a whole.
    InvalidBody { detail: String },
    /// A field of the JSON body has the wrong type (param: the field's path).
    InvalidFieldType { path: String, detail: String },
    /// The connection failed while the request body was being read.
    BodyUnreadable { detail: String },
    /// The multipart/form-data body of an upload cannot be parsed.
    MalformedMultipart { detail: String },
    /// An upload's form has more parts than the server reads.
    TooManyParts { max: usize },
    /// A part would take its upload's parts past `limits.max_upload_total_bytes`.
    UploadTooLarge { max: u64, received: u64, part: u64 },
    /// A list's `limit` is not an integer in its range.
    InvalidLimit { max: u32, raw: String },
    /// A list's `after` parses but names nothing in the caller's list.
    UnknownCursor { raw: String },
    /// A results cursor taken while the batch ran, the batch having ended under a version that
    /// did not keep the order its results were served in.
    CursorExpired { batch: BatchId },
    /// A results cursor of a running batch that names its result files (a forged one).
    CursorNotForState,
    /// A project is archived: it cannot be renamed, and gets no new service accounts or keys.
    ProjectArchived { id: String },
    /// Another project has this name (names are unique: the CLI names projects by them).
    ProjectNameTaken { name: String },
    /// The built-in project (what is created with authentication off) cannot be renamed or
    /// archived.
    BuiltInProjectFixed,
    /// A webhook endpoint is registered with `webhooks.max_endpoints_per_project` already.
    WebhookEndpointLimit { max: i64 },
    /// PostgreSQL refused a value of the request as data (SQLSTATE class 22, e.g. a NUL
    /// character): the same request fails the same way.
    UnstorableValue,

    // Who is asking (401, 403).
    /// Authentication is on and the request has no `Authorization` header.
    MissingApiKey,
    /// The API key is wrong, malformed or revoked.
    IncorrectApiKey { masked: String },
    /// Authentication is off and the `Host` is neither loopback nor in
    /// `server.allowed_hosts` (a DNS-rebinding guard).
    HostNotAllowed { host: String },
    /// Authentication is off and another origin's page sent a write.
    CrossSiteRequest,
    /// A project key (or none) on `/v1/organization/*`, which takes an admin key.
    AdminKeyRequired,
    /// An admin key on a route outside `/v1/organization/*`, other than a GET naming a project
    /// in `OpenAI-Project`: it acts for no project.
    ProjectKeyRequired,
    /// An upload or a retry's file would take the project past
    /// `limits.max_stored_bytes_per_project`.
    StorageQuota {
        limit: u64,
        stored: u64,
        upload: u64,
    },

    // What does not exist (404, 405).
    /// No such batch, or another project's.
    BatchNotFound { id: String },
    /// No such file, or another project's.
    FileNotFound { id: String },
    /// No upload with this id in the caller's project.
    UploadNotFound { id: String },
    /// No such webhook endpoint, or another project's.
    WebhookEndpointNotFound { id: String },
    /// No such project.
    ProjectNotFound { id: String },
    /// No such service account in the project (or it was deleted).
    ServiceAccountNotFound { id: String },
    /// No such live API key in the project.
    ApiKeyNotFound { id: String },
    /// No route has this path.
    InvalidUrl { method: Method, path: String },
    /// The route exists but not with this method.
    MethodNotAllowed { method: Method, path: String },

    // What the batch's state forbids (409); the same request fails until the state changes.
    /// An idempotency key is reused with other parameters than the batch it created.
    IdempotencyConflict { key: IdempotencyKey, batch: BatchId },
    /// A cancel of a batch that is `completed`, `failed`, `expired` or `finalizing`.
    CannotCancel { status: BatchStatus },
    /// The upload is completed, cancelled or expired: it takes no parts, and cannot be
    /// completed or cancelled.
    UploadNotPending { id: String, status: UploadStatus },
    /// The results of a batch whose result file was deleted or has expired.
    ResultsUnavailable { file: FileId },
    /// A retry of a batch that has not ended.
    BatchNotFinished { batch: BatchId, status: BatchStatus },
    /// A retry of a batch with no line to retry.
    NothingToRetry { batch: BatchId, reason: NoRetry },
    /// A retry of a batch whose input or error file was deleted or has expired.
    RetryInputUnavailable {
        batch: BatchId,
        role: RetryFile,
        file: FileId,
    },

    // Bodies too large, too slow or of the wrong type (408, 413, 415).
    /// The client stopped sending an upload for `limits.upload_idle_timeout_secs`.
    UploadStalled { idle_secs: u64 },
    /// An upload took longer than `limits.upload_timeout_secs`.
    UploadTooSlow { limit_secs: u64 },
    /// A JSON body over `limits.max_json_body_bytes`.
    BodyTooLarge { limit: usize },
    /// An upload over `limits.max_upload_bytes` (or declaring a `Content-Length` over it plus
    /// the form's allowance, refused before reading).
    FileTooLarge { max: u64 },
    /// An upload's part is over 64 MB.
    PartTooLarge { max: u64 },
    /// An upload form's parts other than the file's content exceed their allowance.
    FormTooLarge { max: u64 },
    /// A JSON endpoint's request whose `Content-Type` is not JSON.
    NotJson { content_type: Option<String> },
    /// An upload whose `Content-Type` is not multipart/form-data.
    NotMultipart { parts: &'static str },

    // Limits that a later retry may pass (429).
    /// An API key over `limits.requests_per_minute_per_key`; `Retry-After` says when.
    RateLimited { per_minute: u32, wait_secs: u64 },
    /// The project has `limits.max_active_batches_per_project` unfinished batches; retrying
    /// at once cannot help.
    BatchLimit { limit: i64 },
    /// The replica's uploads (`limits.max_concurrent_uploads`), or the project's share, are
    /// all being received.
    TooManyUploads(Full),
    /// As `TooManyUploads`, for a retry, whose file is built as an upload.
    TooManyRetryBuilds(Full),
    /// The replica's event streams (`limits.max_event_streams`), or the project's share, are
    /// all open.
    TooManyEventStreams(Full),
    /// The replica's live results responses (`limits.max_live_readers`), or the project's
    /// share, are all being served.
    TooManyResultsReaders(Full),

    // The server's side (5xx).
    /// A bug, or an answer the server cannot give.
    Internal,
    /// The database is unreachable, saturated or hiccuping (SQLSTATE 08xxx, 53xxx, 40001,
    /// 40P01, 57014, 55P03, 57P01-03).
    DatabaseUnavailable,
    /// The database connection dropped after a batch's creation was sent: the batch may
    /// exist. Retrying with the same idempotency key answers it if it does.
    CreationOutcomeUnknown,
    /// The replica cannot spool an upload to its local disk (full or unwritable).
    SpoolFailed,
    /// The object storage holding file content (`storage.backend = "s3"`) is unreachable or
    /// refused the request.
    StorageUnavailable,
    /// Another error the framework produced before a handler ran.
    Framework { status: StatusCode },
}

/// Why a slot of the replica's fair shares (`api::slots`) was refused: said in the 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The project holds its share already (the replica may have room for others).
    Project { share: usize, total: usize },
    /// Every slot of the replica is taken.
    Replica { total: usize },
}

/// Why a retry has no line to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    /// The batch failed validation: none of its lines ran.
    FailedValidation,
    EverythingSucceeded,
    /// No failed line matches the retry's filter.
    NoMatch,
}

/// Which of a batch's files a retry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryFile {
    Input,
    Errors,
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::InvalidParameter(e)
    }
}
