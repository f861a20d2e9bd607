//! Which database failures are the client's, which a retry clears, and which are bugs.

use super::ApiError;
use crate::store::content::ContentError;

impl From<ContentError> for ApiError {
    fn from(e: ContentError) -> Self {
        match e {
            ContentError::Database(e) => e.into(),
            ContentError::Object(e) => {
                tracing::warn!(error = %e, "object storage unavailable");
                ApiError::StorageUnavailable
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // The database is down, saturated or restarting, or it aborted the statement for
            // a reason that a retry clears (serialization, deadlock): worth a retry, unlike a bug.
            _ if is_transient(&e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::DatabaseUnavailable
            }
            // Data exceptions (22xxx: a NUL in text, a bad encoding, a number out of range):
            // the request carried a value PostgreSQL refuses. The same request fails the same
            // way every time, so it is the client's to fix, never a 500 to retry.
            _ if is_data_exception(&e) => {
                tracing::info!(error = %e, "request refused by the database as invalid data");
                ApiError::UnstorableValue
            }
            _ => {
                tracing::error!(error = %e, "database error");
                ApiError::Internal
            }
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
