//! The one place where an `ApiError` becomes an HTTP answer: status, type, param, code,
//! message and the retry headers the SDKs obey.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::ToSchema;

use super::{ApiError, Full, NoRetry, RetryFile};

/// An OpenAI error envelope: every error the server answers is one.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
#[serde(deny_unknown_fields)]
pub struct Envelope<'a> {
    #[schema(inline)]
    error: Body<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[schema(min_length = 1)]
    message: &'a str,
    /// `invalid_request_error`, or `server_error` for a 5xx.
    #[serde(rename = "type")]
    kind: &'a str,
    #[schema(required = true)]
    param: Option<&'a str>,
    #[schema(required = true)]
    code: Option<&'a str>,
}

/// An error answer in the OpenAPI document: an OpenAI error envelope
/// (`#/components/responses/Error`).
pub struct ErrorResponse;

impl<'r> utoipa::ToResponse<'r> for ErrorResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(Envelope::name())))
            .build();
        let response = ResponseBuilder::new()
            .description("An OpenAI error envelope")
            .content("application/json", content)
            .build();
        ("Error", response.into())
    }
}

/// What one variant is on the wire.
pub(super) struct Wire {
    pub status: StatusCode,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub message: String,
    /// Sent as `x-should-retry`; the SDKs retry 409, 429 and 5xx unless told otherwise.
    pub should_retry: Option<bool>,
    /// `Retry-After` when the wait is known; 503 and 429 default to 1 s.
    pub retry_after: Option<u64>,
}

fn w(status: u16, param: Option<&str>, code: Option<&'static str>, message: String) -> Wire {
    Wire {
        status: StatusCode::from_u16(status).expect("a valid status"),
        param: param.map(str::to_owned),
        code,
        message,
        should_retry: None,
        retry_after: None,
    }
}

impl Wire {
    /// The same request fails the same way: the SDKs are told not to retry.
    fn final_(mut self) -> Self {
        self.should_retry = Some(false);
        self
    }
}

const SORRY: &str = "The server had an error while processing your request. Sorry about that!";
const RETRY_SHORTLY: &str = "Please retry shortly.";

impl ApiError {
    /// One row per variant, kept a table (rustfmt would leave the long messages as they are).
    #[rustfmt::skip]
    pub(super) fn wire(&self) -> Wire {
        use ApiError::*;
        let s = String::from;
        match self {
            InvalidParameter(e) => w(400, Some(&e.param), Some(e.code), e.message.clone()),
            EmptyBody => w(400, None, Some("invalid_json"), s("The request body is empty; this endpoint expects a JSON object.")),
            InvalidJson { detail } => w(400, None, Some("invalid_json"), format!("We could not parse the JSON body of your request ({detail}). The API expects a JSON object; make sure the body is valid UTF-8 JSON.")),
            BodyNotObject => w(400, None, Some("invalid_type"), s("The request body must be a JSON object.")),
            InvalidBody { detail } => w(400, None, Some("invalid_type"), format!("Invalid request body: {detail}.")),
            InvalidFieldType { path, detail } => w(400, Some(path), Some("invalid_type"), format!("Invalid type for '{path}': {detail}.")),
            BodyUnreadable { detail } => w(400, None, None, format!("Could not read the request body: {detail}")),
            MalformedMultipart { detail } => w(400, None, Some("invalid_multipart"), format!("Malformed multipart/form-data body: {detail}.")),
            TooManyParts { max } => w(400, None, Some("too_many_parts"), format!("Too many parts in the multipart form: at most {max} are accepted.")),
            UploadTooLarge { max, received, part } => w(400, Some("data"), Some("upload_too_large"), format!("This part of {part} bytes would take the upload's parts past {max} bytes, the most an upload may hold ({received} received so far).")).final_(),
            InvalidLimit { max, raw } => w(400, Some("limit"), Some("invalid_value"), format!("Invalid 'limit': expected an integer between 1 and {max}, got '{raw}'.")),
            UnknownCursor { raw } => w(400, Some("after"), Some("invalid_value"), format!("Invalid 'after': '{raw}' is not an object in this list.")),
            CursorExpired { batch } => w(400, Some("after"), Some("cursor_expired"), format!("Batch {batch} ended without a record of the order its results were served in while it ran, so this cursor can no longer be followed. Read its results again without 'after' and skip the records whose 'line' you already have.")),
            CursorNotForState => w(400, Some("after"), Some("invalid_cursor"), s("Invalid 'after': this cursor was not issued for this batch's present state.")),
            ProjectArchived { id } => w(400, Some("project_id"), Some("project_archived"), format!("Project {id} is archived: it cannot be changed, and gets no new service accounts or keys.")).final_(),
            ProjectNameTaken { name } => w(400, Some("name"), Some("project_name_taken"), format!("Another project is named '{name}'; project names are unique.")).final_(),
            BuiltInProjectFixed => w(400, Some("project_id"), Some("built_in_project"), s("The built-in project (proj_default, which holds what was created with authentication off) cannot be renamed or archived.")).final_(),
            WebhookEndpointLimit { max } => w(400, None, Some("webhook_endpoint_limit_exceeded"), format!("This project already has {max} webhook endpoints, the most it may have. Delete one before registering another.")),
            UnstorableValue => w(400, None, Some("invalid_value"), s("The request contains a value that cannot be stored (for example a NUL character, \\u0000, in a string).")).final_(),
            MissingApiKey => w(401, None, Some("invalid_api_key"), s("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")).final_(),
            IncorrectApiKey { masked } => w(401, None, Some("invalid_api_key"), format!("Incorrect API key provided: {masked}.")).final_(),
            HostNotAllowed { host } => w(403, None, Some("host_not_allowed"), format!("This server does not answer to the host name '{host}' while authentication is off. Use a loopback address (127.0.0.1, localhost), list the name in OPENBATCH__SERVER__ALLOWED_HOSTS, or turn authentication on.")).final_(),
            CrossSiteRequest => w(403, None, Some("cross_site_request"), s("A page on another site may not change anything on this server while authentication is off. Send the request from the console or an API client, or turn authentication on.")).final_(),
            AdminKeyRequired => w(403, None, Some("insufficient_permissions"), s("You have insufficient permissions for this operation: /v1/organization/* takes an admin key (made with `openbatch keys create --admin`), not a project key.")).final_(),
            ProjectKeyRequired => w(403, None, Some("insufficient_permissions"), s("Admin keys can only be used on /v1/organization/* endpoints, and to read a project's files and batches with GET and an OpenAI-Project header naming it; use a project's key for this one.")).final_(),
            StorageQuota { limit, stored, upload } => w(403, Some("file"), Some("storage_quota_exceeded"), format!("You have exceeded your file storage quota. Projects are limited to {limit} bytes of files; this project stores {stored} bytes and the upload is {upload} bytes. Please delete unused files or reduce the file size.")).final_(),
            BatchNotFound { id } => w(404, Some("batch_id"), Some("batch_not_found"), format!("No batch found with id '{id}'.")),
            FileNotFound { id } => w(404, Some("id"), None, format!("No such File object: {id}")),
            UploadNotFound { id } => w(404, Some("upload_id"), None, format!("No such Upload object: {id}")),
            WebhookEndpointNotFound { id } => w(404, Some("endpoint_id"), Some("webhook_endpoint_not_found"), format!("No webhook endpoint found with id '{id}'.")),
            ProjectNotFound { id } => w(404, Some("project_id"), Some("project_not_found"), format!("No project found with id '{id}'.")),
            ServiceAccountNotFound { id } => w(404, Some("service_account_id"), Some("service_account_not_found"), format!("No service account found with id '{id}' in this project.")),
            ApiKeyNotFound { id } => w(404, Some("key_id"), Some("api_key_not_found"), format!("No API key found with id '{id}' in this project.")),
            InvalidUrl { method, path } => w(404, None, None, format!("Invalid URL ({method} {path})")),
            MethodNotAllowed { method, path } => w(405, None, None, format!("Method {method} is not allowed on {path}")),
            IdempotencyConflict { key, batch } => w(409, Some("idempotency_key"), Some("idempotency_key_conflict"), format!("Idempotency key conflict: the key '{}' was already used to create batch {batch} with different parameters. Retry with the identical parameters, or use a new key.", key.as_str())).final_(),
            CannotCancel { status } => w(409, None, None, format!("Cannot cancel a batch with status '{}'.", status.as_str())).final_(),
            UploadNotPending { id, status } => w(409, None, Some("upload_not_pending"), format!("Upload {id} is {}: only a pending upload takes parts, or can be completed or cancelled.", status.as_str())).final_(),
            ResultsUnavailable { file } => w(409, None, Some("results_unavailable"), format!("The batch's result file {file} was deleted or has expired; its results can no longer be served.")).final_(),
            BatchNotFinished { batch, status } => w(409, None, Some("batch_not_finished"), format!("Batch {batch} is still {}; only an ended batch (completed, failed, expired or cancelled) can be retried.", status.as_str())).final_(),
            NothingToRetry { batch, reason } => w(409, None, Some("nothing_to_retry"), format!("Batch {batch} has no lines to retry: {}.", reason.says())).final_(),
            RetryInputUnavailable { batch, role, file } => w(409, None, Some("retry_input_unavailable"), format!("Batch {batch} cannot be retried: its {} {file} was deleted or has expired.", role.name())).final_(),
            UploadStalled { idle_secs } => w(408, None, Some("request_timeout"), format!("The upload stalled: nothing was received for {idle_secs} seconds.")),
            UploadTooSlow { limit_secs } => w(408, None, Some("request_timeout"), format!("The upload took longer than the {limit_secs} seconds allowed.")),
            BodyTooLarge { limit } => w(413, None, Some("payload_too_large"), format!("Request body too large: the limit is {limit} bytes.")),
            FileTooLarge { max } => w(413, Some("file"), Some("file_too_large"), format!("File too large: the maximum upload size is {max} bytes.")),
            PartTooLarge { max } => w(413, Some("data"), Some("part_too_large"), format!("Part too large: an upload's part is at most {max} bytes.")),
            FormTooLarge { max } => w(413, None, Some("form_too_large"), format!("The multipart form's parts other than the file's content (preamble, part headers, other parts) exceed {max} bytes.")),
            NotJson { content_type } => w(415, None, Some("unsupported_media_type"), format!("Unsupported Content-Type {}: this endpoint expects 'application/json'.", content_type.as_ref().map_or("(none)".to_owned(), |c| format!("'{c}'")))),
            NotMultipart { parts } => w(415, None, Some("unsupported_media_type"), format!("This endpoint expects a multipart/form-data body with {parts}.")),
            RateLimited { per_minute, wait_secs } => Wire { retry_after: Some(*wait_secs), ..w(429, None, Some("rate_limit_exceeded"), format!("Rate limit reached for this API key: {per_minute} requests per minute. Retry after {wait_secs} s.")) },
            BatchLimit { limit } => w(429, None, Some("batch_limit_exceeded"), format!("This project already has {limit} unfinished batches, the most it may have. Wait for some to finish, or cancel some, before creating more.")).final_(),
            TooManyUploads(full) => w(429, None, Some("too_many_uploads"), slots_full(*full, "uploads being received", RETRY_SHORTLY)),
            TooManyRetryBuilds(full) => w(429, None, Some("too_many_uploads"), slots_full(*full, "uploads being received (or retries being built)", RETRY_SHORTLY)),
            TooManyEventStreams(full) => w(429, None, Some("too_many_event_streams"), slots_full(*full, "open event streams", "Retry later, or poll GET /v1/batches/{batch_id} instead.")),
            TooManyResultsReaders(full) => w(429, None, Some("too_many_results_readers"), slots_full(*full, "results responses being served", "Retry later, or read the batch's result files once it has ended.")),
            Internal => w(500, None, None, s(SORRY)),
            DatabaseUnavailable => w(503, None, None, s("The service is temporarily unable to reach its database. Please retry.")),
            CreationOutcomeUnknown => Wire { should_retry: Some(true), ..w(503, None, None, s("The connection to the database was lost while the batch was being created, so it may or may not have been created. Please retry with the same Idempotency-Key, which returns the batch if it was created (a retry without a key may create a second batch).")) },
            SpoolFailed => w(503, None, None, s("The server could not store the upload temporarily. Please retry.")),
            StorageUnavailable => w(503, None, None, s("The service is temporarily unable to reach the storage that holds file content. Please retry.")),
            Framework { status } => Wire { status: *status, ..w(500, None, None, s(status.canonical_reason().unwrap_or("Request failed"))) },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.wire().status
    }

    pub fn code(&self) -> Option<&'static str> {
        self.wire().code
    }

    pub fn param(&self) -> Option<String> {
        self.wire().param
    }

    pub fn should_retry(&self) -> Option<bool> {
        self.wire().should_retry
    }

    pub fn to_json(&self) -> serde_json::Value {
        to_json(&self.wire())
    }
}

fn to_json(wire: &Wire) -> serde_json::Value {
    let kind = if wire.status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    serde_json::to_value(Envelope {
        error: Body {
            message: &wire.message,
            kind,
            param: wire.param.as_deref(),
            code: wire.code,
        },
    })
    .expect("the envelope is plain data")
}

/// A refused slot: `what` names the slots as in "this server already has 8 {what}"; `advice`
/// ends the message.
fn slots_full(full: Full, what: &str, advice: &str) -> String {
    match full {
        Full::Project { share, total } => format!(
            "This project already has {share} {what} on this server, its share of the \
             server's {total}. {advice}"
        ),
        Full::Replica { total: 0 } => {
            format!("This server is set to allow no {what} (its limit is 0). {advice}")
        }
        Full::Replica { total } => format!(
            "This server already has {total} {what}, as many as it allows for all projects. \
             {advice}"
        ),
    }
}

impl NoRetry {
    fn says(self) -> &'static str {
        match self {
            NoRetry::FailedValidation => "it failed validation, so none of its lines ran (fix the input file and create a new batch)",
            NoRetry::EverythingSucceeded => "every line succeeded",
            NoRetry::NoMatch => "no failed line matches the filter",
        }
    }
}

impl RetryFile {
    fn name(self) -> &'static str {
        match self {
            RetryFile::Input => "input file",
            RetryFile::Errors => "error file",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wire = self.wire();
        write!(f, "{} {}", wire.status.as_u16(), wire.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let wire = self.wire();
        let mut res = HttpResponse::build(wire.status);
        if let Some(retry) = wire.should_retry {
            res.insert_header(("x-should-retry", if retry { "true" } else { "false" }));
        }
        // The SDKs wait for `Retry-After` before retrying.
        let default_wait = matches!(
            wire.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
        .then_some(1);
        if let Some(secs) = wire.retry_after.or(default_wait) {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(to_json(&wire))
    }
}
