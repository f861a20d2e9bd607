//! Values that can only exist in a valid state: each is built by a `parse` that
//! returns `Invalid` (rendered as a 400 by `crate::error`) for anything else.

mod api_key;
mod batch;
mod cursor;
mod expiry;
mod file;
mod idempotency;
mod ids;
mod metadata;
mod retry;
mod webhook;

pub use api_key::{constant_time_eq, ApiKey, NewKey, PresentedKey};
pub use batch::{BatchSpec, BatchStatus, CancelDecision, CompletionWindow, Endpoint};
pub use cursor::ResultsCursor;
pub use expiry::ExpiresAfter;
pub use file::{Purpose, Utf8Check};
pub use idempotency::IdempotencyKey;
pub use ids::{BatchId, FileId, ProjectId, ProjectName, WebhookEndpointId, BUILT_IN_PROJECT_NAME};
pub use metadata::{Metadata, MetadataLimits};
pub use retry::RetryFilter;
pub use webhook::{is_public, EventType, EventTypes, WebhookSecret, WebhookUrl};

/// A client-supplied value that was rejected, with the OpenAI `param` and `code` to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub param: String,
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            code,
            message: message.into(),
        }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            param,
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
    }

    /// A value outside a fixed set, listing the set as OpenAI does.
    pub fn unsupported(
        param: &str,
        raw: &str,
        supported: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        let listed: Vec<String> = supported.into_iter().map(|s| format!("'{s}'")).collect();
        Self::new(
            param,
            "invalid_value",
            format!(
                "Invalid value: '{raw}'. Supported values are: {}.",
                listed.join(", ")
            ),
        )
    }

    pub fn wrong_type(param: &str, expected: &str) -> Self {
        Self::new(
            param,
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
        )
    }
}
