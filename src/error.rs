//! The one place where failures become the OpenAI wire format:
//! `{"error": {"message", "type", "param", "code"}}` with all four keys present.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::Invalid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Sent as `x-should-retry`; the SDKs retry 409 and 5xx unless told otherwise.
    pub should_retry: Option<bool>,
    /// Seconds sent as `Retry-After` when the caller knows better than the default. Private,
    /// so that an `ApiError` is only ever built by the constructors below.
    retry_after: Option<u64>,
}

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

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            should_retry: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A conflict that no retry can resolve.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message).no_retry()
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message).with_code("payload_too_large")
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).with_code("unsupported_media_type")
    }

    /// A results cursor that is malformed, belongs to another batch, or was taken while the
    /// batch ran and can no longer be honoured exactly (`cursor_expired`: the batch ended
    /// without the order its results were served in being kept).
    pub fn bad_cursor(code: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .with_param("after")
            .with_code(code)
    }

    /// A request the batch cannot take in its present state (retrying one that has not ended,
    /// or with nothing to retry): 409, as OpenAI answers a cancel of an ended batch; the same
    /// request fails the same way until the state changes, so the SDKs are told not to retry.
    pub fn batch_state(code: &str, message: impl Into<String>) -> Self {
        Self::conflict(message).with_code(code).no_retry()
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 408: the client stopped sending its request body.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, message).with_code("request_timeout")
    }

    /// 401 in OpenAI's words; the same key fails the same way, so retrying is pointless.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
            .with_code("invalid_api_key")
            .no_retry()
    }

    /// 403 for a request a browser was led to make (another site's page, a rebound name):
    /// the same request is refused the same way, so retrying is pointless.
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
            .with_code(code)
            .no_retry()
    }

    /// 429; `Retry-After` is 1 s unless `retry_after` says otherwise.
    pub fn too_many_requests(message: impl Into<String>, code: &str) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message).with_code(code)
    }

    /// 403 in OpenAI's words for a project over its file storage quota; deleting files is
    /// the only fix, so retrying is pointless.
    pub fn storage_quota_exceeded(limit: u64, stored: u64, upload: u64) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!(
                "You have exceeded your file storage quota. Projects are limited to {limit} bytes \
                 of files; this project stores {stored} bytes and the upload is {upload} bytes. \
                 Please delete unused files or reduce the file size."
            ),
        )
        .with_param("file")
        .with_code("storage_quota_exceeded")
        .no_retry()
    }

    /// 503 for a creation whose statement was sent but whose answer was lost with the
    /// connection: the batch may exist or not. Retrying is right (and the SDKs do, after
    /// `Retry-After`): with its idempotency key the retry answers the batch if it was made.
    pub fn creation_outcome_unknown() -> Self {
        let mut e = Self::unavailable(
            "The connection to the database was lost while the batch was being created, so it \
             may or may not have been created. Please retry with the same Idempotency-Key, \
             which returns the batch if it was created (a retry without a key may create a \
             second batch).",
        );
        e.should_retry = Some(true);
        e
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn no_retry(mut self) -> Self {
        self.should_retry = Some(false);
        self
    }

    /// How long the client should wait before retrying (a 429 or a 503), when known.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn kind(&self) -> &'static str {
        if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        })
        .expect("the envelope is plain data")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(retry) = self.should_retry {
            res.insert_header(("x-should-retry", if retry { "true" } else { "false" }));
        }
        // The SDKs wait for `Retry-After` before retrying.
        let default_wait = matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
        .then_some(1);
        if let Some(secs) = self.retry_after.or(default_wait) {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(self.to_json())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::bad_request(e.message)
            .with_param(e.param)
            .with_code(e.code)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // The database is down, saturated or restarting, or it aborted the statement for
            // a reason that a retry clears (serialization, deadlock): worth a retry, unlike a bug.
            _ if is_transient(&e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable(
                    "The service is temporarily unable to reach its database. Please retry.",
                )
            }
            // Data exceptions (22xxx: a NUL in text, a bad encoding, a number out of range):
            // the request carried a value PostgreSQL refuses. The same request fails the same
            // way every time, so it is the client's to fix, never a 500 to retry.
            _ if is_data_exception(&e) => {
                tracing::info!(error = %e, "request refused by the database as invalid data");
                ApiError::bad_request(
                    "The request contains a value that cannot be stored (for example a NUL \
                     character, \\u0000, in a string).",
                )
                .with_code("invalid_value")
                .no_retry()
            }
            _ => {
                tracing::error!(error = %e, "database error");
                ApiError::internal()
            }
        }
    }
}

impl From<crate::store::create_queue::CreateError> for ApiError {
    fn from(e: crate::store::create_queue::CreateError) -> Self {
        use crate::store::create_queue::CreateError;
        match e {
            CreateError::Database(e) => e.into(),
            CreateError::OutcomeUnknown => ApiError::creation_outcome_unknown(),
        }
    }
}

/// Failures that say nothing about the request and that a later retry may not meet.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| is_transient_sqlstate(&c)),
        _ => false,
    }
}

/// Connection exceptions (08), insufficient resources (53: too many connections, disk full),
/// serialization failure (40001), deadlock (40P01), statement or lock timeout (57014, 55P03)
/// and the server shutting down or starting (57P01-57P03).
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001" | "40P01" | "57014" | "55P03" | "57P01" | "57P02" | "57P03"
        )
}

/// SQLSTATE class 22, "data exception": the statement's data is at fault, so retrying it as
/// it is cannot succeed.
pub fn is_data_exception(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")))
}

/// Framework-generated errors (unknown route, wrong method, extractor failures) arrive here
/// with a plain-text body; rewrite them into the envelope so clients never see anything else.
pub fn render_framework_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let req = res.request().clone();
    let message = match status {
        StatusCode::NOT_FOUND => format!("Invalid URL ({} {})", req.method(), req.path()),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("Method {} is not allowed on {}", req.method(), req.path())
        }
        _ => status
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_string(),
    };
    let err = ApiError::new(status, message);
    let mut new = err.error_response();
    // Keep headers such as `Allow` that the framework set for a reason.
    for (name, value) in res.response().headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    new.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let new: HttpResponse<BoxBody> = new;
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body::<B>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_hiccups_are_transient_and_bugs_are_not() {
        for code in [
            "40001", "40P01", "57P01", "57P02", "57P03", "57014", "55P03", "08006", "08001",
            "53300", "53100",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "22021", "42P01", "42703", "XX000"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn unavailable_and_throttled_answers_carry_retry_after() {
        let res = ApiError::unavailable("x").error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let res = ApiError::too_many_requests("x", "c").error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let res = ApiError::bad_request("x").error_response();
        assert!(!res.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_known_wait_replaces_the_default_retry_after() {
        let e = ApiError::too_many_requests("slow down", "rate_limit_exceeded").retry_after(42);
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(e.should_retry, None, "the SDKs may retry after the wait");
        let res = e.error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "42");
        assert!(!res.headers().contains_key("x-should-retry"));
        let res = ApiError::unavailable("x").retry_after(5).error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn a_limit_no_retry_can_lift_still_says_so() {
        let res = ApiError::too_many_requests("full", "batch_limit_exceeded")
            .no_retry()
            .error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn a_creation_of_unknown_outcome_is_a_503_the_sdks_retry() {
        use crate::store::create_queue::CreateError;
        let e = ApiError::from(CreateError::OutcomeUnknown);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.to_json()["error"]["type"], "server_error");
        let res = e.error_response();
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "true");
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        // A refused statement keeps its own answer.
        let e = ApiError::from(CreateError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unauthorized_is_an_invalid_key_not_worth_retrying() {
        let e = ApiError::unauthorized("Incorrect API key provided: sk-****.");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(e.param, None);
        let res = e.error_response();
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
        assert!(!res.headers().contains_key(header::RETRY_AFTER));
        let body = e.to_json();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(
            body["error"]["message"],
            "Incorrect API key provided: sk-****."
        );
    }
}
